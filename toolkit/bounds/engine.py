"""Bound methods: a method is a choice of intermediate bounds and of lower-line slopes, over one pass.

| method       | intermediate bounds                         | final pass (lower slope)                  |
|--------------|---------------------------------------------|-------------------------------------------|
| ibp          | IBP                                         | IBP with C merged (§3.1)                  |
| crown-ibp    | IBP                                         | backward, CROWN adaptive (§3.2)           |
| fastlin (CP) | backward, Fast-Lin slopes (= Wong–Kolter)   | backward, Fast-Lin                        |
| crown        | backward, CROWN adaptive                    | backward, CROWN adaptive                  |
| alpha-crown  | CROWN's, re-bounded with optimised slopes   | backward, slopes optimised (Adam), best   |
|              | (``alpha_scope="all"``, see ``alpha.py``)   | per spec kept                             |
| cp-proj      | forward Fast-Lin with Cauchy projections    | backward, Fast-Lin (exact)                |

``cp-proj`` is probabilistic (Wong et al. 2018 random projections, §8): for training only; its result is
flagged and ``certified()`` refuses it.
"""
from __future__ import annotations

import math

import torch

from toolkit.errors import BadInputError
from toolkit.ir import INPUT
from toolkit.spec import InputSet, margin_spec, scatter_margins

from .alpha import ALPHA_ELEMS, SCOPES, optimise_alpha
from .backward import BackwardContext, backward_pass, concretize, unit_specs
from .forward import forward_bounds
from .ibp import exact_on_box, ibp_bounds, ibp_spec_bound
from .ops import rule_for
from .result import BoundResult, LayerOptimum

METHODS = ("ibp", "crown-ibp", "fastlin", "crown", "alpha-crown", "cp-proj")
#: (intermediate bounds, final lower-slope rule)
_PLAN = {"ibp": ("ibp", None), "crown-ibp": ("ibp", "crown"), "fastlin": ("fastlin", "fastlin"),
         "crown": ("crown", "crown"), "alpha-crown": ("crown", "crown"), "cp-proj": ("proj", "fastlin")}
#: Default working-set size (elements) for one chunk of intermediate-bound specs.
CHUNK_ELEMS = 2 ** 25


def needs_bounds(graph) -> list:
    """Keys whose bounds a relaxation needs: the inputs of nonlinear nodes, in topological order."""
    need = {graph.edges[k][0] for k, node, _ in graph if rule_for(node).needs_bounds}
    return [k for k in graph.order if k in need]


def neuron_bounds(graph, key, inp, bounds, shapes, rule, chunk_elems, only=None):
    """Bounds of the neurons of ``key`` (all, or the flat indices ``only``) by backward passes with
    identity specs, in chunks. Returns flat (N, M') lower and upper bounds.

    Fast-Lin's lines are parallel, so +e_j alone gives both bounds (upper = g·mid + |g|·rad + const +
    Σ|ν|·b̄); other rules need ±e_j (2 specs per neuron)."""
    n, shape = inp.lo.shape[0], shapes[key]
    m = math.prod(shape)
    idx = torch.arange(m, device=inp.lo.device) if only is None else only
    symmetric = rule == "fastlin" and all(rule_for(nd).parallel_lines for _, nd, _ in graph)
    per_spec = 1 if symmetric else 2
    widest = max(math.prod(shapes[k]) for k in graph.order[:graph.order.index(key) + 1])
    chunk = max(1, min(m, chunk_elems // max(1, per_spec * n * widest)))
    lows, ups = [], []
    for start in range(0, idx.numel(), chunk):
        rows = idx[start:start + chunk]
        c = rows.numel()
        A = unit_specs(rows, shape, n, inp.lo, both=not symmetric)
        ctx = BackwardContext(rule, rule, symmetric=symmetric)
        g, const = backward_pass(graph, key, A, bounds, shapes, ctx)
        lb = concretize(g, const, inp.lo, inp.hi)
        if symmetric:
            lows.append(lb)
            ups.append(concretize(g, const + ctx.sym_extra, inp.lo, inp.hi, upper=True))
        else:
            lows.append(lb[:, :c])
            ups.append(-lb[:, c:])
        del g, A  # free this chunk's coefficients before the next chunk allocates its own
    return torch.cat(lows, 1), torch.cat(ups, 1)


def _has_relu(graph):
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


def _final_pass(graph, inp, C, bounds, shapes, method, rule, alphas=None, record=True):
    n, s = C.shape[:2]
    A = C.reshape(n, s, *shapes[graph.output])
    ctx = BackwardContext(method, rule, alphas=alphas, recording=record)
    g, const = backward_pass(graph, graph.output, A, bounds, shapes, ctx)
    return concretize(g, const, inp.lo, inp.hi), g, ctx.records


def compute_bounds(graph, inp: InputSet, C: torch.Tensor | None = None, method: str = "crown", *,
                   labels=None, bound_upper: bool = False, alpha_iters: int = 20, alpha_lr: float = 0.1,
                   proj: int = 50, generator=None, chunk_elems: int = CHUNK_ELEMS,
                   intersect_ibp: bool = False, bounds: dict | None = None,
                   fastlin_form: str = "forward", optimum: bool = True, alpha_scope: str | None = None,
                   alpha_budget: int = ALPHA_ELEMS, alpha_deadline: float | None = None) -> BoundResult:
    """Sound lower bounds of C·f(x') for all x' in ``inp`` (and the relaxation's optimum).

    C: (N, S, K) spec matrix; default: margins e_y − e_j from ``labels``. Device and dtype follow ``inp``.
    ``bounds`` lets a caller pass precomputed intermediate bounds (e.g. IBP bounds shared with CROWN-IBP's
    β mixing). Differentiable w.r.t. the graph parameters (masks and line choices are constants).
    ``alpha_scope`` (α-CROWN): "all" re-bounds the intermediate layers with slopes of their own, jointly
    optimised for the final bound; "final" optimises the final pass only (``toolkit.bounds.alpha``); default
    "all", or "final" when the caller passes ``bounds`` (they are then kept as they are); samples
    run in sub-batches of at most ``alpha_budget`` elements of slopes and autograd graph, and a sample that
    alone needs more gets the final pass only (``res.alpha_scope``: "all", "partial" or "final");
    ``alpha_deadline`` (``time.monotonic()``) stops the iterations early, keeping the best bounds so far.
    ``optimum=False`` skips recording the per-layer optimum (``res.layers``, what the regularizers read):
    certification does not need it, and without it and without autograd the final pass runs in the
    low-memory form (``ops.ReLURule``). ``res.g`` and ``res.z0`` are there either way.
    """
    if method not in METHODS:
        raise BadInputError(f"unknown bound method {method!r}; choose from {', '.join(METHODS)}")
    if isinstance(alpha_iters, bool) or int(alpha_iters) < 0:
        raise BadInputError(f"alpha iterations must be >= 0, got {alpha_iters}")
    if alpha_scope is not None and alpha_scope not in SCOPES:
        raise BadInputError(f"unknown alpha scope {alpha_scope!r}; choose from {', '.join(SCOPES)}")
    if C is None:
        if labels is None:
            raise BadInputError("compute_bounds needs a spec matrix C or labels")
        C = margin_spec(labels, graph.output_size(), dtype=inp.lo.dtype).to(inp.lo.device)
    C = C.to(dtype=inp.lo.dtype, device=inp.lo.device)
    shapes = graph.shapes(dtype=inp.lo.dtype)
    mode, rule = _PLAN[method]
    ibp = ibp_bounds(graph, inp.lo, inp.hi) if (bounds is None or method == "ibp") else None
    caller_bounds = bounds is not None
    if bounds is None:
        bounds = intermediate_bounds(graph, inp, mode, shapes, ibp, chunk_elems, intersect_ibp, proj, generator,
                                     fastlin_form)
    if method == "ibp":
        res = BoundResult(method, ibp_spec_bound(graph, ibp, C), C, x=inp.x, bounds=bounds)
        if bound_upper:
            res.upper = -ibp_spec_bound(graph, ibp, -C)
        return _sanitize(res, graph)
    lower, g, records = _final_pass(graph, inp, C, bounds, shapes, method, rule, record=optimum)
    scope_ran = None
    if method == "alpha-crown" and alpha_iters > 0 and _has_relu(graph):
        # By default caller-given bounds (branch and bound's split domains, CROWN-IBP's shared IBP bounds)
        # stay fixed; an explicit "all" re-bounds the layers inside them.
        scope = alpha_scope or ("final" if caller_bounds else "all")
        opt = optimise_alpha(graph, inp, C, bounds, shapes, needs_bounds(graph), alpha_iters, alpha_lr,
                             scope=scope, budget=alpha_budget, deadline=alpha_deadline)
        bounds = opt.bounds
        lower_a, g, records = _final_pass(graph, inp, C, bounds, shapes, method, rule, opt.alphas, record=optimum)
        # Every candidate is sound: CROWN's, the best of the iterations, and the best slopes re-run.
        lower, scope_ran = torch.maximum(torch.maximum(lower_a, opt.lower), lower), opt.scope
    res = BoundResult(method, lower, C, g=g, x=inp.x, box=(inp.lo, inp.hi),
                      bounds=bounds, probabilistic=(method == "cp-proj"), alpha_scope=scope_ran)
    res.layers = {k: LayerOptimum(pre=graph.edges[k][0], l=bounds[graph.edges[k][0]][0],
                                  u=bounds[graph.edges[k][0]][1], unstable=r["relax"].unstable,
                                  upper_line=r["upper_line"], lower_slope=r["relax"].lower_slope,
                                  upper_slope=r["relax"].upper_slope,
                                  upper_intercept=r["relax"].upper_intercept, nu=r["nu"])
                  for k, r in records.items()}
    if bound_upper:
        res.upper = -_final_pass(graph, inp, -C, bounds, shapes, method, rule, record=False)[0]
    return _sanitize(res, graph)


def _sanitize(res: BoundResult, graph) -> BoundResult:
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


def margin_lower_bound(graph, inp: InputSet, labels, method: str = "crown", **kw) -> torch.Tensor:
    """(N, K): lower bound of min f_y(x') − f_j(x') per class j, 0 in column y.

    For certification the intermediate bounds are intersected with IBP's by default (``intersect_ibp``):
    still sound, never looser, and neurons IBP proves stable skip their backward passes."""
    kw.setdefault("intersect_ibp", True)
    kw.setdefault("optimum", False)
    labels = torch.as_tensor(labels, device=inp.lo.device).long()
    k = graph.output_size()
    res = compute_bounds(graph, inp, None, method, labels=labels, **kw)
    return scatter_margins(res.lower, labels, k, fill=0.0)
