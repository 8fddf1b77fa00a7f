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
from toolkit.ir import nodes as N

from .relu import chord


def cauchy(shape, like: torch.Tensor, generator=None) -> torch.Tensor:
    u = torch.rand(shape, dtype=like.dtype, device=like.device, generator=generator)
    return torch.tan(math.pi * (u - 0.5))


def _cl(t: torch.Tensor) -> torch.Tensor:
    """Channels-last on CPU: oneDNN's convolution is ~3× faster on it for the generator blocks. Conv outputs
    stay channels-last, and the element-wise steps below keep that layout (``_like``), so only the first
    conv and the final Flatten convert."""
    return t.contiguous(memory_format=torch.channels_last) if t.device.type == "cpu" and t.dim() == 4 else t


def _like(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """(N, *shape) ``t`` in the layout of ``ref``'s trailing (C, H, W) block, so broadcasting stays fast."""
    if t.dim() == 4 and ref.dim() >= 4 and ref.stride(-3) == 1 and ref.shape[-3] > 1:
        return t.contiguous(memory_format=torch.channels_last)
    return t


def _linear_part(node, P: torch.Tensor) -> torch.Tensor:
    """Apply the node's linear part (no bias / shift / pad value) to the k projected columns (N, k, ...)."""
    n, k = P.shape[:2]
    flat = P.reshape(n * k, *P.shape[2:])
    if isinstance(node, N.Linear):
        out = F.linear(flat, node.weight)
    elif isinstance(node, N.Conv2d):
        out = _cl(F.conv2d(_cl(flat), node.weight, None, node.stride, node.padding, node.dilation, node.groups))
    elif isinstance(node, (N.Normalize, N.BatchNorm)):
        scale, _ = node.scale_shift()
        if flat.dim() == 2 and scale.dim() == 3:
            scale = scale.flatten()
        out = flat * scale
    elif isinstance(node, N.Pad):
        out = F.pad(flat, node.pads, mode="constant", value=0.0)
    elif isinstance(node, (N.Reshape, N.Transpose, N.AvgPool2d)):
        out = node(flat)
    else:
        raise UnsupportedOpError(node.op, node.onnx_name, method="cp-proj")
    return out.reshape(n, k, *out.shape[1:])


def _relu_form(f, l, u, key, k, generator):
    """The ReLU's form: slopes times the input form, plus its intercept generators δ = b̄/2 + (b̄/2)·e
    (§1.5). Exact mode keeps one generator per (sample, unstable neuron) as a sparse block (T rows, each
    owned by one sample — as convex_adversarial does), not a dense (N, |∪ unstable|) block."""
    unstable, slope, intercept = chord(l, u)
    half = intercept / 2
    full = f.full()
    s5 = _like(slope, full).unsqueeze(1)
    # full() made a fresh tensor when the form has a column scale: scale it in place (no second large
    # allocation) unless autograd needs its value.
    G = full.mul_(s5) if (f.scale is not None and not torch.is_grad_enabled()) else s5 * full
    if k is not None:  # projected: a fresh Cauchy projection of diag(b̄/2), summed into the k columns
        return _Form(slope * f.c + half, G + cauchy(G.shape, G, generator) * half.unsqueeze(1))
    n = l.shape[0]
    flat_slope = slope.reshape(n, -1)
    sparse = {kk: (g * flat_slope[owner].reshape(g.shape), owner) for kk, (g, owner) in f.sparse.items()}
    owner, j = unstable.reshape(n, -1).nonzero(as_tuple=True)
    if owner.numel() == 0:  # no unstable neuron in the batch: no new generators
        return _Form(slope * f.c + half, G, None, sparse)
    rows = l.new_zeros(owner.numel(), l[0].numel())
    rows[torch.arange(owner.numel(), device=l.device), j] = half.reshape(n, -1)[owner, j]
    sparse[key] = (rows.reshape(owner.numel(), *l.shape[1:]), owner)
    return _Form(slope * f.c + half, G, None, sparse)


class _Form:
    """c + G·e over independent generators e ∈ [−1, 1].

    G: the input block, dense (N, m, ...) or — exact mode — shared across the batch, (1, d, ...) with a
    per-sample column scale (N, d) (true G[n] = G[0]·diag(scale[n])), so the first affine layers run once on
    the identity instead of once per sample; it is materialised at the first ReLU.
    sparse: ReLU key -> (rows (T, ...), owner (T,)): that ReLU's intercept generators, one row per
    (sample, unstable neuron), owned by sample ``owner``."""

    def __init__(self, c, G, scale=None, sparse=None):
        self.c, self.G, self.scale, self.sparse = c, G, scale, dict(sparse or {})

    def full(self):
        if self.scale is None:
            return self.G
        n, d = self.scale.shape
        return self.G * self.scale.reshape(n, d, *([1] * (self.G.dim() - 2)))

    def affine(self, node):
        sparse = {k: (_linear_part(node, g.unsqueeze(1)).squeeze(1), o) for k, (g, o) in self.sparse.items()}
        return _Form(node(self.c), _linear_part(node, self.G), self.scale, sparse)

    def __add__(self, other):
        if self.scale is not None and self.scale is other.scale:
            G, scale = self.G + other.G, self.scale
        else:
            G, scale = self.full() + other.full(), None
        sparse = dict(self.sparse)
        for k, (g, o) in other.sparse.items():  # the same ReLU's block reached by two paths: same rows
            sparse[k] = (sparse[k][0] + g, o) if k in sparse else (g, o)
        return _Form(self.c + other.c, G, scale, sparse)

    def radius(self, k):
        if self.scale is not None:  # Σ_j |G_j| rad_j as one matrix product
            d = self.G.shape[1]
            r = (self.scale @ self.G.abs().reshape(d, -1)).reshape(self.c.shape)
        else:
            r = self.G.abs().median(dim=1).values if k is not None else torch.linalg.vector_norm(self.G, 1, dim=1)
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
        if isinstance(node, N.Add):
            forms[key] = ins[0] + ins[1]
        elif isinstance(node, N.ReLU):
            l, u = bounds[graph.edges[key][0]]
            forms[key] = _relu_form(ins[0], l, u, key, k, generator)
        elif node.affine:
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
