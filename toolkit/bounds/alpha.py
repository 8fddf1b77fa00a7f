"""α-CROWN (Xu et al. 2021, "Fast and complete"): CROWN's lower-line slopes of unstable ReLUs optimised by
projected gradient ascent on the final bound.

Every lower line through the origin with slope α ∈ [0, 1] is sound (paper-spec §1.4), so any α gives a sound
bound and the best over the iterations is kept per spec (never looser than CROWN, the starting point).

Two scopes:
- ``"final"``: one slope per (sample, final spec, neuron); intermediate bounds stay CROWN's.
- ``"all"`` (default): in addition every intermediate layer's bounds are recomputed in each iteration
  with slopes of their own, one per (sample, neuron spec of that layer, earlier neuron), and the gradient of
  the final bound flows through them (the joint optimisation of α-CROWN). Each iteration's intermediate
  bounds are sound, so they are intersected with the best so far, neuron by neuron.

Samples are independent (the objective is a sum over samples and Adam works element-wise), so the batch is
split into sub-batches whose slopes and autograd graph fit ``budget`` elements; the result is the same.
A sample that alone does not fit gets the final pass only (``scope`` says which ran).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from toolkit.spec import InputSet

from . import kernels
from .backward import BackwardContext, backward_pass, concretize
from .engine import _patch_windows, patch_chain, patch_geometry, unit_spec_bounds
from .ibp import exact_on_box
from .ops import rule_for
from .patches import unit_patches, window_values
from .relu import relax

SCOPES = ("all", "final")
#: Default working set of one sub-batch (elements; 1 GiB of float32): one MNIST "Small" sample needs ~0.4 GiB.
ALPHA_ELEMS = 2 ** 28


@dataclass
class AlphaResult:
    lower: torch.Tensor   # (N, S) best final bound over the iterations
    bounds: dict          # node key -> (l, u): CROWN's, tightened neuron by neuron when scope == "all"
    alphas: dict          # ReLU key -> (N, S, *shape) final-pass slopes of the best bound per spec
    scope: str            # the scope that ran: "all", "final", or "partial" (some samples did not fit)


def optimise_alpha(graph, inp: InputSet, C, bounds, shapes, needs, iters, lr, scope="all", budget=ALPHA_ELEMS,
                   deadline=None):
    """α-CROWN over ``bounds`` (CROWN's intermediate bounds of the keys ``needs``). ``deadline`` (a
    ``time.monotonic()`` value) ends the iterations early: every iteration's bounds are sound, so stopping
    only costs tightness (the first, CROWN's own slopes, always runs)."""
    bounds = {k: (l.detach(), u.detach()) for k, (l, u) in bounds.items()}
    plan = _plan(graph, bounds, shapes, needs, C.shape[1], budget, scope == "all")
    parts = [_optimise(graph, inp[i:j], C[i:j], _rows(bounds, i, j), shapes, layers, iters, lr, deadline)
             for i, j, layers, _ in plan]
    lower = torch.cat([p[0] for p in parts])
    merged = {k: tuple(torch.cat([p[1][k][j] for p in parts]) for j in range(2)) for k in bounds}
    alphas = {k: torch.cat([p[2][k] for p in parts]) for k in parts[0][2]}
    fell_back = {too_big for *_, too_big in plan}
    ran = "final" if scope == "final" or fell_back == {True} else "partial" if True in fell_back else "all"
    return AlphaResult(lower, merged, alphas, ran)


def _plan(graph, bounds, shapes, needs, n_final, budget, intermediate):
    """Sub-batches (start, stop, layers to re-bound, fell back) in sample order, each within
    ``kernels.alpha_group_elems`` (≤ ``budget``) elements for the union of its samples' unstable neurons; a
    sample that alone needs more runs alone when it fits ``budget``, else with the final pass only."""
    first = next(iter(bounds.values()))[0]
    n, plan, start = first.shape[0], [], 0
    group = kernels.alpha_group_elems(first.device, budget)
    layers_of = lambda i, j: _layers(graph, _rows(bounds, i, j), needs) if intermediate else []  # noqa: E731
    cost = lambda i, j, layers: (j - i) * _cost(graph, shapes, layers, n_final)  # noqa: E731
    while start < n:
        stop, layers = start + 1, layers_of(start, start + 1)
        if cost(start, stop, layers) > budget:
            plan.append((start, stop, [], True))
        else:
            while stop < n and cost(start, stop + 1, grown := layers_of(start, stop + 1)) <= group:
                stop, layers = stop + 1, grown
            plan.append((start, stop, layers, False))
        start = stop
    return plan


def _rows(bounds, start, stop):
    return {k: (l[start:stop], u[start:stop]) for k, (l, u) in bounds.items()}


def _layers(graph, bounds, needs):
    """(key, flat indices) of the intermediate layers to re-bound: the neurons unstable in any sample of
    layers that are not exact on the input box (their bounds are IBP's and already tightest)."""
    exact, out = exact_on_box(graph), []
    for key in needs:
        if key in exact:
            continue
        l, u = (b.reshape(b.shape[0], -1) for b in bounds[key])
        rows = ((l < 0) & (u > 0)).any(0).nonzero().flatten()
        if rows.numel():
            out.append((key, rows))
    return out


def _ancestor_relus(graph, key):
    """ReLU keys that a backward pass from ``key`` crosses."""
    seen, stack = set(), [key]
    while stack:
        k = stack.pop()
        for j in graph.edges.get(k, ()):
            if j not in seen and j in graph.nodes:
                seen.add(j)
                stack.append(j)
    return [k for k in graph.order if k in seen and rule_for(graph.nodes[k]).relu]


def _cost(graph, shapes, layers, n_final):
    """Elements per sample that one iteration holds: slopes (with Adam's two moments) and the coefficient
    tensors autograd keeps along each backward pass (≈ specs × the sizes of the nodes it crosses; a layer on
    window coefficients: × its windows)."""
    total = 0
    for key, specs in [(k, 2 * rows.numel()) for k, rows in layers] + [(graph.output, n_final)]:
        chain = patch_chain(graph, key, shapes) if key != graph.output else None
        if chain is not None:
            windows = _patch_windows(graph, chain, shapes)
            slopes = sum(w for k, w in zip(chain[1:], windows) if rule_for(graph.nodes[k]).relu)
            crossed = sum(windows)
        else:
            slopes = sum(math.prod(shapes[r]) for r in _ancestor_relus(graph, key))
            crossed = sum(math.prod(shapes[k]) for k in graph.order[:graph.order.index(key) + 1])
        total += specs * (3 * slopes + 4 * crossed)  # calibrated on MNIST Small: 96 M elements, 377 MiB peak
    return total


@dataclass
class _Slopes:
    """The slopes of one backward pass's ReLUs, kept only for the neurons unstable in some sample of the
    sub-batch (``index``, flat): a stable neuron's lower line ignores α (``BackwardContext.relaxation``), and
    bounds only tighten during the optimisation, so no neuron turns unstable later. Adam's moments, its
    update and the clamp then scale with the unstable neurons instead of the whole layer (auto_LiRPA's sparse
    α); ``dense`` scatters them into the (N, S, *shape) tensors a backward pass reads."""

    values: dict  # ReLU key -> (N, S, k) leaf tensor
    index: dict   # ReLU key -> (k,) flat neuron indices
    shapes: dict  # ReLU key -> the layer's shape

    def dense(self) -> dict:
        """Per ReLU: (N, S, *shape), or a window layer's (N, S, C, h, w) slopes as they are (no ``index``)."""
        out = {}
        for r, v in self.values.items():
            if r not in self.index:
                out[r] = v
                continue
            n, s, _ = v.shape
            full = v.new_zeros(n, s, math.prod(self.shapes[r])).index_copy(2, self.index[r], v)
            out[r] = full.reshape(n, s, *self.shapes[r])
        return out


def _start_slopes(graph, bounds, relus, n, s) -> _Slopes:
    """CROWN's adaptive lower slopes (§1.4) as the starting point, one per (sample, spec, unstable neuron)."""
    slopes = _Slopes({}, {}, {})
    for r in relus:
        l, u = bounds[graph.edges[r][0]]
        slope = relax(l, u, "crown").lower_slope.reshape(n, 1, -1)  # (N, 1, neurons)
        idx = ((l < 0) & (u > 0)).reshape(n, -1).any(0).nonzero().flatten()
        slopes.values[r] = slope[:, :, idx].expand(n, s, idx.numel()).clone().requires_grad_(True)
        slopes.index[r], slopes.shapes[r] = idx, tuple(l.shape[1:])
    return slopes


def _start_window_slopes(graph, bounds, chain, rows, shapes, like) -> _Slopes:
    """CROWN's adaptive lower slopes as the starting point of a layer bounded on window coefficients
    (``engine.patch_chain``): one per (sample, spec, cell of the spec's window at each ReLU), (N, S, C, h, w).
    A spec's coefficients vanish outside its window, so these are all the slopes its bound can depend on."""
    corner = unit_patches(rows, shapes[chain[0]], 1, like).corner
    slopes = _Slopes({}, {}, {})
    for k, c, hw in patch_geometry(graph, chain, corner)[:-1]:
        if rule_for(graph.nodes[k]).relu:
            l, u = bounds[graph.edges[k][0]]
            start = window_values(relax(l, u, "crown").lower_slope.squeeze(1), c, hw)
            slopes.values[k] = start.clone().requires_grad_(True)
    return slopes


def _sweep(graph, inp, C, best, shapes, layers, alphas, gathers=None):
    """One differentiable CROWN pass with slopes ``alphas``: the re-bounded layers in topological order, each
    intersected with the best bounds so far, then the final specs. Returns (final lower (N, S), bounds, the
    final pass's dense slopes). ``gathers``: the window-gather cache shared by the iterations
    (``BackwardContext.gathers``)."""
    n, b = len(inp), dict(best)
    for key, rows in layers:
        ctx = BackwardContext("alpha-crown", "crown", alphas[key].dense(), gathers=gathers)
        lb, _ = unit_spec_bounds(graph, key, patch_chain(graph, key, shapes), rows, inp, b, shapes, ctx)
        c = rows.numel()
        l0, u0 = (t.reshape(n, -1) for t in best[key])
        l, u = l0.clone(), u0.clone()
        # Value: the intersection with the best so far (sound, never looser). Gradient: the new bound's own, as
        # if not intersected: through torch.maximum it would be 0 wherever an earlier iteration was tighter,
        # freezing those neurons' slopes (mnist_256x2, 10 samples, 20 iterations: mean −0.533 frozen, −0.430
        # straight through; auto_LiRPA, which intersects with CROWN's start only, −0.435).
        l[:, rows] = _kept_straight_through(lb[:, :c], l0[:, rows], torch.gt)
        u[:, rows] = _kept_straight_through(-lb[:, c:], u0[:, rows], torch.lt)
        b[key] = (l.reshape(best[key][0].shape), u.reshape(best[key][1].shape))
    A = C.reshape(n, C.shape[1], *shapes[graph.output])
    final = alphas[graph.output].dense()
    g, const = backward_pass(graph, graph.output, A, b, shapes,
                             BackwardContext("alpha-crown", "crown", final, gathers=gathers))
    return concretize(g, const, inp.lo, inp.hi), b, final


def _optimise(graph, inp, C, bounds, shapes, layers, iters, lr, deadline=None):
    """Adam on every slope of one sub-batch; returns (best lower, best bounds, best final slopes)."""
    n, s = C.shape[:2]
    with torch.enable_grad():
        alphas = {key: _start_window_slopes(graph, bounds, chain, rows, shapes, inp.lo)
                  if (chain := patch_chain(graph, key, shapes)) is not None
                  else _start_slopes(graph, bounds, _ancestor_relus(graph, key), n, 2 * rows.numel())
                  for key, rows in layers}
        alphas[graph.output] = _start_slopes(graph, bounds, _ancestor_relus(graph, graph.output), n, s)
        params = [a for per_key in alphas.values() for a in per_key.values.values()]
        # fused: one kernel per step instead of a pass per Adam operation (same numbers; ~10-20 % of α on Small)
        opt = torch.optim.Adam(params, lr=lr, fused=True)
        best, best_lower, best_final, gathers = dict(bounds), None, {}, {}
        for it in range(iters + 1):
            if it and deadline is not None and time.monotonic() >= deadline:
                break
            lower, swept, final = _sweep(graph, inp, C, best, shapes, layers, alphas, gathers)
            low = lower.detach()
            better = torch.ones_like(low, dtype=torch.bool) if best_lower is None else low > best_lower
            best_lower = low if best_lower is None else torch.where(better, low, best_lower)
            for k, a in final.items():
                m = better.reshape(n, s, *([1] * (a.dim() - 2)))
                best_final[k] = torch.where(m, a.detach(), best_final.get(k, a.detach()))
            best = {k: _tighter(best[k], swept[k]) for k in best}
            # autograd.grad, not backward(): the graph's own .grad fields must stay untouched.
            grads = torch.autograd.grad(-lower[torch.isfinite(lower)].sum(), params, allow_unused=True)
            for a, gr in zip(params, grads):
                a.grad = gr
            opt.step()
            with torch.no_grad():
                for a in params:
                    a.clamp_(0, 1)
    return best_lower, best, best_final


def _kept(new, best, tighter):
    """The tighter of ``new`` and ``best`` per neuron (``tighter``: ``torch.gt`` for lower bounds, ``torch.lt``
    for upper ones); a NaN ``new`` keeps ``best``."""
    return torch.where(tighter(new, best), new, best)


def _kept_straight_through(new, best, tighter):
    """``_kept`` in value (an infinite ``new`` keeps ``best`` too), with ``new``'s gradient wherever it is finite
    (``_sweep``)."""
    kept = _kept(new, best, tighter)
    return torch.where(torch.isfinite(new), new + (kept - new).detach(), kept)


def _tighter(old, new):
    """Neuron-wise intersection of two sound bounds (NaN never replaces a finite bound); ``old`` itself when
    ``new`` is the same pair (a layer the sweep did not re-bound keeps its tensors, so cached gathers stay valid)."""
    if new[0] is old[0] and new[1] is old[1]:
        return old
    return _kept(new[0].detach(), old[0], torch.gt), _kept(new[1].detach(), old[1], torch.lt)
