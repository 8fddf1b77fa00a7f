"""Forward-mode Fast-Lin bounds, exact or with Cauchy random projections (paper-spec §2.4, §8).

Each node's value is an affine form  c + Σ_m G_m e_m  of independent generators e_m ∈ [−1, 1]: the input
box (G = diag(rad)) and, per unstable ReLU, the intercept δ ∈ [0, b̄] = b̄/2 + (b̄/2)·e (§1.5, "adversaries").
Its bounds are c ± ‖G‖₁ (row-wise), i.e. exactly the Fast-Lin forward form of §2.4. Instead of G we carry
P = G·R with R i.i.d. standard Cauchy (k columns): every entry of P is Cauchy(0, ‖G_row‖₁) because the
Cauchy law is 1-stable, so ‖G_row‖₁ ≈ median_k |P| (§8). New generators add their own fresh Cauchy
projection into the same k columns (a sum of independent Cauchy variables is Cauchy with the summed scale).

The estimate is random: these bounds are NOT sound (relative std ≈ 0.22 at k = 50). They are for training
only; the final spec pass stays exact (§8), and ``BoundResult.probabilistic`` is set. Simplification vs
Wong's code: the projection is used for every layer, also where the exact form would be smaller (n₀ ≤ k).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from toolkit.errors import UnsupportedOpError
from toolkit.ir import INPUT

from .ops import rule_for
from .relu import chord


def cauchy(shape, like: torch.Tensor, generator=None) -> torch.Tensor:
    u = torch.rand(shape, dtype=like.dtype, device=like.device, generator=generator)
    return torch.tan(math.pi * (u - 0.5))


def _like(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """(N, *shape) ``t`` in the layout of ``ref``'s trailing (C, H, W) block, so broadcasting stays fast."""
    if t.dim() == 4 and ref.dim() >= 4 and ref.stride(-3) == 1 and ref.shape[-3] > 1:
        return t.contiguous(memory_format=torch.channels_last)
    return t


def _linear_part(node, P: torch.Tensor) -> torch.Tensor:
    """Apply the node's linear part (no bias / shift / pad value) to the k projected columns (N, k, ...)."""
    n, k = P.shape[:2]
    out = rule_for(node, "fastlin (forward)").forward_linear(node, P.reshape(n * k, *P.shape[2:]))
    return out.reshape(n, k, *out.shape[1:])


def _relu_form(f, l, u, key, k, generator):
    """The ReLU's form: slopes times the input form, plus its intercept generators δ = b̄/2 + (b̄/2)·e
    (§1.5). Exact mode keeps one generator per (sample, unstable neuron) as a sparse block (T rows, each
    owned by one sample — as convex_adversarial does), not a dense (N, |∪ unstable|) block, and leaves the
    slopes as the form's pending output scale: the next Linear folds them into its weight (no pass over the
    (N, d, M) block), any other node applies them once."""
    unstable, slope, intercept = chord(l, u)
    half = intercept / 2
    c = slope * f.c + half
    if k is not None:  # projected: a fresh Cauchy projection of diag(b̄/2), summed into the k columns
        full = f.full()
        s5 = _like(slope, full).unsqueeze(1)
        # full() made a fresh tensor when the form has a factor: scale it in place (no second large
        # allocation) unless autograd needs its value.
        factored = f.scale is not None or f.oscale is not None
        G = full.mul_(s5) if (factored and not torch.is_grad_enabled()) else s5 * full
        return _Form(c, G + cauchy(G.shape, G, generator) * half.unsqueeze(1))
    n = l.shape[0]
    flat_slope = slope.reshape(n, -1)
    sparse = {kk: (g * flat_slope[owner].reshape(g.shape), owner) for kk, (g, owner) in f.sparse.items()}
    oscale = slope if f.oscale is None else f.oscale * slope
    owner, j = unstable.reshape(n, -1).nonzero(as_tuple=True)
    if owner.numel():  # else no unstable neuron in the batch: no new generators
        rows = l.new_zeros(owner.numel(), l[0].numel())
        rows[torch.arange(owner.numel(), device=l.device), j] = half.reshape(n, -1)[owner, j]
        sparse[key] = (rows.reshape(owner.numel(), *l.shape[1:]), owner)
    return _Form(c, f.G, f.scale, sparse, oscale)


def _fold_linear(G, oscale, weight):
    """G·diag(oscale)·Wᵀ per sample as one batched product with the scaled weight (N, M, M'): the (N, d, M)
    block is read once by the GEMM instead of being scaled first (paper-spec §2.4, exact forward form)."""
    n, (m_out, m) = oscale.shape[0], weight.shape
    if G.shape[0] > 1:
        return torch.bmm(G.reshape(n, -1, m), oscale.reshape(n, m, 1) * weight.t().unsqueeze(0))
    # Shared G: one GEMM [W·diag(s_1); …; W·diag(s_N)]·G[0]ᵀ (a broadcast matmul copies G per sample in its
    # backward), stored generator-axis last (N, M', d) and returned as its (N, d, M') transpose view, so
    # element-wise passes and the radius product read it in memory order.
    out = (oscale.reshape(n, 1, m) * weight.unsqueeze(0)).reshape(n * m_out, m) @ G[0].reshape(-1, m).t()
    return out.reshape(n, m_out, -1).transpose(1, 2)


class _WeightedL1(torch.autograd.Function):
    """r[n, m] = Σ_i scale[n, i]·|G[n, i, m]| (the forward form's radius, §2.4) with a backward that works in
    place in G's own memory order: sign(G)·scale·∂r, three passes and one allocation, where autograd's
    abs/bmm chain materialises the outer product ∂r ⊗ scale and two more tensors of G's size."""

    @staticmethod
    def forward(ctx, G, scale):
        Ga = G.abs()
        ctx.save_for_backward(G, Ga if ctx.needs_input_grad[1] else None, scale)
        if G.stride(1) == 1:  # generator axis last in memory (``_fold_linear``): a GEMV per sample in that order
            return torch.bmm(Ga.transpose(1, 2), scale.unsqueeze(2)).squeeze(2)
        return torch.bmm(scale.unsqueeze(1), Ga).squeeze(1)

    @staticmethod
    def backward(ctx, grad):
        G, Ga, scale = ctx.saved_tensors
        grad_G = grad_scale = None
        if ctx.needs_input_grad[0]:
            grad_G = G.sign().mul_(scale.unsqueeze(2)).mul_(grad.unsqueeze(1))
        if ctx.needs_input_grad[1]:
            grad_scale = torch.bmm(Ga, grad.unsqueeze(2)).squeeze(2)
        return grad_G, grad_scale


class _Form:
    """c + G·e over independent generators e ∈ [−1, 1].

    G: the input block, dense (N, m, ...) or — exact mode — shared across the batch (1, d, ...) until the
    first sample-dependent step. Two optional per-sample factors stay unapplied (exact mode), so the large
    block is not rescaled pass after pass: ``scale`` (N, d), a generator-axis scale (the input radii), and
    ``oscale`` (N, *shape), an output-axis scale (ReLU slopes not yet applied): the true block is
    G[n] = diag(scale[n])·G[0 or n]·diag(oscale[n]).
    sparse: ReLU key -> (rows (T, ...), owner (T,)): that ReLU's intercept generators, one row per
    (sample, unstable neuron), owned by sample ``owner``."""

    def __init__(self, c, G, scale=None, sparse=None, oscale=None):
        self.c, self.G, self.scale, self.sparse, self.oscale = c, G, scale, dict(sparse or {}), oscale

    def dense(self):
        """G with the output scale applied (the generator-axis scale stays a factor)."""
        if self.oscale is None:
            return self.G
        return self.G * _like(self.oscale, self.G).unsqueeze(1)

    def full(self):
        G = self.dense()
        if self.scale is None:
            return G
        n, d = self.scale.shape
        return G * self.scale.reshape(n, d, *([1] * (G.dim() - 2)))

    def affine(self, node):
        sparse = {k: (_linear_part(node, g.unsqueeze(1)).squeeze(1), o) for k, (g, o) in self.sparse.items()}
        rule = rule_for(node)
        weight = rule.dense_weight(node)
        if self.oscale is not None and weight is not None:
            return _Form(node(self.c), _fold_linear(self.G, self.oscale, weight), self.scale, sparse)
        if self.oscale is not None and rule.cell_moving:  # the factor moves with the cells
            return _Form(node(self.c), _linear_part(node, self.G), self.scale, sparse, node(self.oscale))
        return _Form(node(self.c), _linear_part(node, self.dense()), self.scale, sparse)

    def __add__(self, other):
        a, b = self._applied(), other._applied()
        if a.scale is not None and a.scale is b.scale:
            G, scale = a.G + b.G, a.scale
        else:
            G, scale = a.full() + b.full(), None
        sparse = dict(a.sparse)
        for k, (g, o) in b.sparse.items():  # the same ReLU's block reached by two paths: same rows
            sparse[k] = (sparse[k][0] + g, o) if k in sparse else (g, o)
        return _Form(a.c + b.c, G, scale, sparse)

    def _applied(self):
        return self if self.oscale is None else _Form(self.c, self.dense(), self.scale, self.sparse)

    def radius(self, k):
        if k is not None:
            r = self.full().abs().median(dim=1).values
        elif self.scale is not None:  # Σ_j rad_j |G_j| as a (batched) matrix product
            d = self.G.shape[1]
            if self.G.shape[0] == 1:
                r = self.scale @ self.G.abs().reshape(d, -1)
            else:
                r = _WeightedL1.apply(self.G.reshape(self.G.shape[0], d, -1), self.scale)
            r = r.reshape(self.c.shape)
        else:
            r = torch.linalg.vector_norm(self.G, 1, dim=1)
        if self.oscale is not None:  # ReLU slopes are >= 0: |G·diag(s)| = |G|·diag(s)
            r = r * self.oscale
        for g, owner in self.sparse.values():
            r = _like(r, g).index_add(0, owner, g.abs())
        return r


def forward_bounds(graph, inp, shapes, needed, k: int | None = None, generator=None) -> dict:
    """Fast-Lin bounds for the ``needed`` node keys (inputs of ReLUs): exact when ``k`` is None, else
    estimated with k Cauchy projections (not sound)."""
    lo, hi = inp.lo, inp.hi
    n = lo.shape[0]
    rad = (hi - lo) / 2
    if k is None:
        d = rad[0].numel()
        eye = torch.eye(d, dtype=lo.dtype, device=lo.device).reshape(1, d, *lo.shape[1:])
        first = _Form((hi + lo) / 2, eye, rad.reshape(n, d))
    else:
        first = _Form((hi + lo) / 2, rad.unsqueeze(1) * cauchy((n, k, *lo.shape[1:]), lo, generator))
    forms = {INPUT: first}
    bounds = {INPUT: (lo, hi)}
    needed = set(needed)
    last_use = {i: max(graph.order.index(c) for c in graph.order if i in graph.edges[c])
                for i in [INPUT, *graph.order] if any(i in graph.edges[c] for c in graph.order)}
    last_needed = max((graph.order.index(k) for k in needed), default=-1)
    for pos, key in enumerate(graph.order[:last_needed + 1]):  # nothing after the last needed node
        node = graph.nodes[key]
        ins = [forms[i] for i in graph.edges[key]]
        form = rule_for(node).forward_form
        if form == "add":
            forms[key] = ins[0] + ins[1]
        elif form == "relu":
            l, u = bounds[graph.edges[key][0]]
            forms[key] = _relu_form(ins[0], l, u, key, k, generator)
        elif form == "linear":
            forms[key] = ins[0].affine(node)
        else:
            raise UnsupportedOpError(node.op, node.onnx_name, method="fastlin (forward)" if k is None else "cp-proj")
        if key in needed:
            r = forms[key].radius(k)
            bounds[key] = (forms[key].c - r, forms[key].c + r)
        for i in graph.edges[key]:  # free forms no later node reads
            if last_use.get(i, -1) <= pos:
                forms.pop(i, None)
    return bounds
