"""The bound engine's machinery: intermediate bounds and the final backward pass.

What a method *is* (which intermediate bounds, which final relaxation, which options) lives in
``methods.py``; this module computes the pieces: ``intermediate_bounds`` for each intermediate-bound mode
("ibp", "fastlin" forward or backward form, "crown", "proj" with Cauchy projections), the per-neuron passes
behind them on dense or, for conv layers over a chain of window-capable ops, window coefficients
(``patch_chain``, ``patches.py``), ``final_pass`` (one backward pass of the specs with a lower-slope rule)
and ``sanitize`` (NaN/inf is never certified).
"""
from __future__ import annotations

import math

import torch

from toolkit.ir import INPUT

from .backward import BackwardContext, backward_pass, concretize, unit_specs
from .forward import forward_bounds
from .ibp import exact_on_box, ibp_bounds
from .ops import rule_for
from .patches import concretize_patches, unit_patches
from .result import BoundResult

#: Default working-set size (elements) for one chunk of intermediate-bound specs.
CHUNK_ELEMS = 2 ** 25


def needs_bounds(graph) -> list:
    """Keys whose bounds a relaxation needs: the inputs of nonlinear nodes, in topological order."""
    need = {graph.edges[k][0] for k, node, _ in graph if rule_for(node).needs_bounds}
    return [k for k in graph.order if k in need]


def patch_chain(graph, key, shapes) -> list | None:
    """The nodes from ``key`` down to the input when every one is a single-input op whose rule carries window
    coefficients (``Rule.patches``) on (C, H, W) maps and the windows hold under half the cells of the dense
    maps along the way (else dense passes are as cheap); None otherwise."""
    chain, k = [], key
    while k != INPUT:
        node, ins = graph.nodes[k], graph.edges[k]
        if len(ins) != 1 or len(shapes[k]) != 3 or not rule_for(node).patches_for(node):
            return None
        chain.append(k)
        k = ins[0]
    if len(shapes[INPUT]) != 3:
        return None
    windows, dense = _patch_windows(graph, chain, shapes), [math.prod(shapes[graph.edges[k][0]]) for k in chain]
    return chain if 2 * sum(windows) <= sum(dense) else None


def patch_geometry(graph, chain, corner) -> list:
    """(key, corner, (h, w)) of the window on the output map of each node of ``chain``, then on the input's,
    for specs starting as 1×1 windows at ``corner`` on the chain's first node."""
    hw, out = (1, 1), []
    for k in chain:
        out.append((k, corner, hw))
        node = graph.nodes[k]
        corner, hw = rule_for(node).patch_geometry(node, corner, hw)
    return out + [(INPUT, corner, hw)]


def _patch_windows(graph, chain, shapes) -> list:
    """Cells of each spec's window on the input map of every node of ``chain`` (per sample and spec)."""
    geometry = patch_geometry(graph, chain, torch.zeros(1, 2, dtype=torch.long))
    return [shapes[k][0] * hw[0] * hw[1] for k, _, hw in geometry[1:]]


def _patch_pass(graph, chain, P, bounds, shapes, ctx):
    """``backward_pass`` on window coefficients along ``chain``: (Patches on the input, constant)."""
    const = 0.0
    for k in chain:
        node, ins = graph.nodes[k], graph.edges[k]
        ctx.key = k
        rule = rule_for(node, ctx.method)
        (P,), c = rule.patch_backward(node, P, [bounds.get(ins[0])] if rule.needs_bounds else None,
                                      [shapes[ins[0]]], ctx)
        if c is not None:
            const = const + c
    return P, const


def _box_through_tail(graph, chain, inp):
    """(``chain`` without the ops next to the input that map a box exactly onto a box by an affine map (a
    Normalize, a folded BatchNorm), the input box through them). Concretizing the coefficients on their
    output against that box is the same bound as carrying the coefficients back through them, without a
    pass over every window (on cifar_base_kw, Normalize's two products were a quarter of CROWN's time)."""
    lo, hi, end = inp.lo, inp.hi, len(chain)
    while end and all(getattr(rule_for(graph.nodes[chain[end - 1]]), f) for f in ("box_preserving", "tight_on_box")):
        end -= 1
    for k in reversed(chain[end:]):
        lo, hi = rule_for(graph.nodes[k]).ibp(graph.nodes[k], (lo, hi))
    return chain[:end], (lo, hi)


def unit_spec_bounds(graph, key, chain, rows, inp, bounds, shapes, ctx):
    """Lower bounds (N, S) of the unit specs of the flat neurons ``rows`` of ``key`` (+e_j, then −e_j unless
    ``ctx.symmetric``), by one backward pass on window coefficients along ``chain`` (``patch_chain``) or, when it
    is None, on dense ones; and for Fast-Lin's symmetric pass their upper bounds (else None)."""
    n, shape, both = inp.lo.shape[0], shapes[key], not ctx.symmetric
    if chain is not None:
        chain, (lo, hi) = _box_through_tail(graph, chain, inp)
        P, const = _patch_pass(graph, chain, unit_patches(rows, shape, n, inp.lo, both=both), bounds, shapes, ctx)
        at = lambda extra, upper: concretize_patches(P, const + extra, lo, hi, upper)  # noqa: E731
    else:
        g, const = backward_pass(graph, key, unit_specs(rows, shape, n, inp.lo, both=both), bounds, shapes, ctx)
        at = lambda extra, upper: concretize(g, const + extra, inp.lo, inp.hi, upper)  # noqa: E731
    return at(0.0, False), (at(ctx.sym_extra, True) if ctx.symmetric else None)


def neuron_bounds(graph, key, inp, bounds, shapes, rule, chunk_elems, only=None):
    """Bounds of the neurons of ``key`` (all, or the flat indices ``only``) by backward passes with
    identity specs, in chunks. Returns flat (N, M') lower and upper bounds.

    Fast-Lin's lines are parallel, so +e_j alone gives both bounds (upper = g·mid + |g|·rad + const +
    Σ|ν|·b̄); other rules need ±e_j (2 specs per neuron). A conv layer over a chain of window-capable ops
    (``patch_chain``) carries each spec's receptive field only (``patches.py``): the same numbers, without
    the zeros of the dense maps."""
    n, shape = inp.lo.shape[0], shapes[key]
    m = math.prod(shape)
    idx = torch.arange(m, device=inp.lo.device) if only is None else only
    symmetric = rule == "fastlin" and all(rule_for(nd).parallel_lines for _, nd, _ in graph)
    per_spec = 1 if symmetric else 2
    chain = patch_chain(graph, key, shapes)
    if chain is not None:
        # the window temporaries (gathered slopes, bounds, products) are a few times the coefficients
        widest = 4 * max(_patch_windows(graph, chain, shapes) + [shape[0]])
    else:
        widest = max(math.prod(shapes[k]) for k in graph.order[:graph.order.index(key) + 1])
    chunk = max(1, min(m, chunk_elems // max(1, per_spec * n * widest)))
    back = None
    if chain is not None:   # neurons of one cell (one window) side by side: concretize_patches' runs
        order = torch.argsort(idx % (shape[1] * shape[2]), stable=True)
        idx, back = idx[order], torch.argsort(order)
    lows, ups = [], []
    for start in range(0, idx.numel(), chunk):
        rows = idx[start:start + chunk]
        c = rows.numel()
        ctx = BackwardContext(rule, rule, symmetric=symmetric)
        lb, ub = unit_spec_bounds(graph, key, chain, rows, inp, bounds, shapes, ctx)
        lows.append(lb if symmetric else lb[:, :c])
        ups.append(ub if symmetric else -lb[:, c:])
    lows, ups = torch.cat(lows, 1), torch.cat(ups, 1)
    return (lows, ups) if back is None else (lows[:, back], ups[:, back])


def has_relu(graph):
    return any(rule_for(nd).relu for _, nd, _ in graph)


def _forward_form_applies(graph):
    return all(rule_for(nd).forward_form for _, nd, _ in graph)


def _forward_exact_chunked(graph, inp, shapes, chunk_elems, intersect_ibp, ibp):
    """Exact Fast-Lin forward form (§2.4) over sub-batches sized so the generator tensors stay bounded."""
    need = needs_bounds(graph)
    cols = math.prod(shapes[INPUT]) + sum(math.prod(shapes[k]) for k in need)
    widest = max(math.prod(s) for s in shapes.values())
    sub = max(1, (4 * chunk_elems) // (cols * widest))
    parts = [forward_bounds(graph, inp[i:i + sub], shapes, need) for i in range(0, len(inp), sub)]
    bounds = {k: tuple(torch.cat([p[k][j] for p in parts]) for j in range(2)) for k in parts[0]}
    if intersect_ibp:
        for k in need:
            bounds[k] = (torch.maximum(bounds[k][0], ibp[k][0]), torch.minimum(bounds[k][1], ibp[k][1]))
    return bounds


def intermediate_bounds(graph, inp, mode, shapes, ibp=None, chunk_elems=CHUNK_ELEMS, intersect_ibp=False,
                        proj=50, generator=None, fastlin_form="forward"):
    """Bounds for every node a relaxation needs. ``mode``: "ibp", "fastlin", "crown" or "proj".

    Fast-Lin's intermediate bounds come from the forward form by default (§2.4; one pass gives every
    neuron's bounds, as in convex_adversarial); ``fastlin_form="backward"`` gives the same numbers from
    per-neuron backward passes (a cross-check, and the path for graphs with non-ReLU nonlinearities)."""
    ibp = ibp if ibp is not None else ibp_bounds(graph, inp.lo, inp.hi)
    if mode == "ibp":
        return dict(ibp)
    need, exact = needs_bounds(graph), exact_on_box(graph)
    # The forward forms pay off only past the first layer: when every needed node is a first layer (§2.5),
    # the loop below takes IBP's (exact) bounds instead of pushing the d input generators through it (on a
    # conv layer an (N, d, C, H, W) block).
    forward = not set(need) <= exact
    if mode == "proj" and forward:
        return forward_bounds(graph, inp, shapes, need, k=proj, generator=generator)
    if mode == "fastlin" and forward and fastlin_form == "forward" and _forward_form_applies(graph):
        return _forward_exact_chunked(graph, inp, shapes, chunk_elems, intersect_ibp, ibp)
    bounds = {INPUT: (inp.lo, inp.hi)}
    for key in need:
        if key in exact:  # first layer: identical for every method (§2.5)
            bounds[key] = ibp[key]
            continue
        shape = shapes[key]
        if intersect_ibp:
            # Neurons IBP proves stable are stable: their relaxation is exact whatever l and u are, so
            # only the neurons IBP leaves unstable (in any sample) get a backward pass.
            l_ibp, u_ibp = (b.reshape(b.shape[0], -1) for b in ibp[key])
            only = ((l_ibp < 0) & (u_ibp > 0)).any(0).nonzero().flatten()
            l, u = l_ibp.clone(), u_ibp.clone()
            if only.numel():
                lo_u, up_u = neuron_bounds(graph, key, inp, bounds, shapes, mode, chunk_elems, only)
                l[:, only] = torch.maximum(lo_u, l_ibp[:, only])
                u[:, only] = torch.minimum(up_u, u_ibp[:, only])
        else:
            l, u = neuron_bounds(graph, key, inp, bounds, shapes, mode, chunk_elems)
        bounds[key] = (l.reshape(-1, *shape), u.reshape(-1, *shape))
    return bounds


def final_pass(graph, inp, C, bounds, shapes, method, rule, alphas=None, record=True):
    n, s = C.shape[:2]
    A = C.reshape(n, s, *shapes[graph.output])
    ctx = BackwardContext(method, rule, alphas=alphas, recording=record)
    g, const = backward_pass(graph, graph.output, A, bounds, shapes, ctx)
    return concretize(g, const, inp.lo, inp.hi), g, ctx.records


def sanitize(res: BoundResult, graph) -> BoundResult:
    """NaN/inf anywhere in a sample's bounds → that sample's lower bounds become −inf (never certified)."""
    n = res.lower.shape[0]
    bad = ~torch.isfinite(res.lower)
    for key in needs_bounds(graph):
        if key in res.bounds:
            l, u = res.bounds[key]
            bad = bad | ~(torch.isfinite(l) & torch.isfinite(u)).reshape(n, -1).all(1, keepdim=True)
    if bad.any():
        res.lower = torch.where(bad, torch.full_like(res.lower, -math.inf), res.lower)
        if res.upper is not None:
            res.upper = torch.where(bad, torch.full_like(res.upper, math.inf), res.upper)
    return res
