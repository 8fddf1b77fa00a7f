"""The backward (linear-relaxation) pass over the IR DAG (paper-spec §2.1).

Starting from coefficients A on one node's output, walk the graph in reverse topological order, turning
coefficients on each node's output into coefficients on its inputs (summed where a tensor feeds several
nodes: residual Add), and collecting constants. At the graph input the coefficients are g (§2.1) and the
bound over the box is  const + g·mid − |g|·rad  (ℓ∞ ball ∩ box, §2.1 "bounded input").
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from toolkit.ir import INPUT

from .ops import rule_for
from .relu import relax

#: Largest coefficient tensor (elements) seen by any backward pass; the speed benchmark reads and resets it.
STATS = {"max_coeff_elems": 0}


@dataclass
class BackwardContext:
    """What a backward pass needs besides the graph: the method's lower-slope rule, optional α per ReLU
    (shape (N, S, *shape)), and whether to record line choices (for the relaxation's optimum)."""

    method: str
    slope_rule: str
    alphas: dict | None = None
    recording: bool = False
    records: dict = field(default_factory=dict)
    key: str = ""
    #: Fast-Lin only: lower and upper lines are parallel, so one pass with +A serves both bounds; the
    #: upper bound's extra constant Σ|ν|·b̄ is accumulated here (see ``symmetric_bounds``).
    symmetric: bool = False
    sym_extra: torch.Tensor | float = 0.0
    #: Set by ``backward_pass`` per node: the rule may overwrite A in place (no autograd, no record, and no
    #: other live coefficient or the caller's start tensor shares A's memory). Keeps peak memory near one
    #: coefficient tensor (issue 4's memory target).
    overwrite: bool = False
    #: α-CROWN's sweeps share one dict over all iterations: window gathers of a ReLU's relaxation whose bounds
    #: did not change (the same tensors: layers exact on the input box, or not re-bounded) are reused instead
    #: of gathered again each iteration (``cached_gather``).
    gathers: dict | None = None

    @property
    def low_memory(self) -> bool:
        """Whole-tensor temporaries are only needed for autograd (training) and for the recorded optimum."""
        return not (torch.is_grad_enabled() or self.recording)

    def relaxation(self, node, l, u):
        rel = relax(l, u, self.slope_rule)
        if self.alphas is not None and self.key in self.alphas:
            active = (l >= 0).to(u.dtype).unsqueeze(1)
            rel.lower_slope = torch.where(rel.unstable.unsqueeze(1), self.alpha_slope(), active)
        return rel

    def alpha_slope(self):
        """α-CROWN's slopes of the current ReLU (``key``): value clamped to [0, 1] (any such slope is a valid
        lower line), gradient passed straight through (CROWN's starting slopes sit exactly on 0 or 1, where
        clamp's gradient is 0). None without α for this ReLU."""
        a = self.alphas.get(self.key) if self.alphas is not None else None
        return None if a is None else a + (a.clamp(0, 1) - a).detach()

    def cached_gather(self, l, u, P, make):
        """``make()`` (a gather of maps computed from the bounds ``l``, ``u`` at the windows of ``P``), reused
        from an earlier sweep when the bounds are the same tensors and the windows the same cells. Bounds that
        carry autograd history are never kept (they change each iteration)."""
        if self.gathers is None or l.requires_grad or u.requires_grad:
            return make()
        tag = (self.key, self.slope_rule, self.alphas is not None and self.key in self.alphas, tuple(P.window),
               P.corner.shape[0])
        hit = self.gathers.get(tag)
        if hit is not None and hit[0] is l and hit[1] is u and torch.equal(hit[2], P.corner):
            return hit[3]
        out = make()
        self.gathers[tag] = (l, u, P.corner, out)
        return out

    def add_sym_extra(self, extra):
        self.sym_extra = self.sym_extra + extra

    def record(self, node, rel, A, negative):
        # The optimum sits on the upper line exactly where the coefficient is negative (§4.2).
        self.records[self.key] = dict(relax=rel, nu=A.detach(), upper_line=negative & rel.unstable.unsqueeze(1))


def concretize(g: torch.Tensor, const: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
               upper: bool = False) -> torch.Tensor:
    """min over the box of g·z + const: g·mid − |g|·rad (§2.1); the max (g·mid + |g|·rad) when ``upper``."""
    n, s = g.shape[:2]
    mid, rad = ((hi + lo) / 2).reshape(n, -1, 1), ((hi - lo) / 2).reshape(n, -1, 1)
    gf = g.reshape(n, s, -1)
    sign = 1.0 if upper else -1.0
    if mid.requires_grad or rad.requires_grad:  # a box that depends on parameters: plain autograd
        mid_r, rad_r = mid.transpose(1, 2), rad.transpose(1, 2)
        return const + (gf * mid_r).sum(-1) + sign * (gf.abs() * rad_r).sum(-1)
    if gf.requires_grad:
        # Autograd through g only (α-CROWN, CROWN-IBP training): a function that keeps sgn(g) in one byte per
        # element instead of g itself and the |g|, sgn and product temporaries of the element-wise form.
        return const + _Concretize.apply(gf, mid, rad, sign)
    return const + _concretize_slices(gf, mid, rad, sign)


def _concretize_slices(gf, mid, rad, sign, sgn_out=None):
    """g·mid + sign·|g|·rad, element-wise a slice of specs at a time: temporaries of one slice (about a MiB,
    cache-sized) instead of three of g's size. ``sgn_out`` (int8, g's shape) receives sgn(g) when given."""
    n, s, d = gf.shape
    mid_r, rad_r = mid.transpose(1, 2), rad.transpose(1, 2)
    out = gf.new_empty(n, s)
    step = max(1, 2 ** 18 // max(1, n * d))
    for i in range(0, s, step):
        part = gf[:, i:i + step]
        sg = torch.sign(part)
        if sgn_out is not None:
            sgn_out[:, i:i + step] = sg
        out[:, i:i + step] = (part * mid_r).sum(-1) + sign * (sg.mul_(part).mul_(rad_r)).sum(-1)
    return out


class _Concretize(torch.autograd.Function):
    """g·mid + sign·|g|·rad with the gradient mid + sign·sgn(g)·rad with respect to g (the box is constant).
    Same values and (sub)gradients as the element-wise expression, including sgn(0) = 0."""

    @staticmethod
    def forward(ctx, gf, mid, rad, sign):
        sgn = torch.empty(gf.shape, dtype=torch.int8, device=gf.device)
        out = _concretize_slices(gf, mid, rad, sign, sgn)
        ctx.save_for_backward(sgn, mid, rad)
        ctx.sign = sign
        return out

    @staticmethod
    def backward(ctx, grad):
        sgn, mid, rad = ctx.saved_tensors
        # one tensor of g's size: sgn · (sign·rad) + mid, times the incoming gradient, in place
        dg = sgn.to(grad.dtype).mul_((ctx.sign * rad).transpose(1, 2)).add_(mid.transpose(1, 2))
        return dg.mul_(grad.unsqueeze(-1)), None, None, None


def unit_specs(rows: torch.Tensor, shape, n: int, like: torch.Tensor, both: bool = True) -> torch.Tensor:
    """Specs e_j for the flat neuron indices ``rows`` of a node of ``shape`` (then −e_j too when ``both``),
    expanded over the batch without copying: (N, c or 2c, *shape). The lower bound of e_j is the neuron's
    lower bound, that of −e_j minus its upper bound."""
    m = math.prod(shape)
    E = torch.zeros(rows.numel(), m, dtype=like.dtype, device=like.device)
    E[torch.arange(rows.numel(), device=like.device), rows] = 1.0
    specs = torch.cat([E, -E]) if both else E
    return specs.reshape(1, specs.shape[0], *shape).expand(n, specs.shape[0], *shape)


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def _exclusive(A_out, A_start, live) -> bool:
    """True when nothing else can see A_out's memory: not the caller's tensor, no other pending coefficient
    (residual Add hands the same tensor to both branches), no stride-0 (expanded) axis."""
    if A_out.requires_grad or torch.is_grad_enabled():
        return False
    if any(st == 0 and sz > 1 for st, sz in zip(A_out.stride(), A_out.shape)):
        return False
    ptr = _storage(A_out)
    return ptr != _storage(A_start) and all(_storage(t) != ptr for t in live)


def backward_pass(graph, start: str, A: torch.Tensor, bounds: dict, shapes: dict, ctx: BackwardContext):
    """Propagate A (N, S, *shape(start)) back to the input. Returns (g (N,S,*in_shape), const (N,S))."""
    n, s = A.shape[:2]
    coeffs = {start: A}
    const = torch.zeros(n, s, dtype=A.dtype, device=A.device)
    stop = graph.order.index(start)
    for key in reversed(graph.order[:stop + 1]):
        if key not in coeffs:
            continue
        A_out = coeffs.pop(key)
        STATS["max_coeff_elems"] = max(STATS["max_coeff_elems"], A_out.numel())
        node, in_keys = graph.nodes[key], graph.edges[key]
        ctx.key = key
        ctx.overwrite = _exclusive(A_out, A, coeffs.values())
        rule = rule_for(node, ctx.method)
        in_bounds = [bounds.get(k) for k in in_keys] if rule.needs_bounds else None
        A_ins, c = rule.backward(node, A_out, in_bounds, [shapes[k] for k in in_keys], ctx)
        if c is not None:
            const = const + c
        for k, A_in in zip(in_keys, A_ins):
            coeffs[k] = coeffs[k] + A_in if k in coeffs else A_in
    g = coeffs.pop(INPUT, None)
    if g is None:  # output does not depend on the input
        g = torch.zeros(n, s, *shapes[INPUT], dtype=A.dtype, device=A.device)
    return g, const
