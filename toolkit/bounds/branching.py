"""Bounds on split domains for branch and bound (the VNN-LIB solver's ReLU splitting; Wang et al. 2021).

``domain_bounds``: intermediate bounds of a batch of domains (IBP ∩ CROWN layer by layer, clamped to the
domains' fixed ReLU signs, reusing the parent domains' bounds where a layer's inputs did not change);
``beta_bounds``: β-CROWN split terms on top of CROWN's final pass. Both are sound on each domain; they live
here, behind ``toolkit.bounds``' public API, so that the solver never calls engine internals (issue 14).
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from toolkit.ir import INPUT

from .backward import BackwardContext, backward_pass, concretize
from .engine import CHUNK_ELEMS, needs_bounds, neuron_bounds
from .ibp import exact_on_box
from .ops import rule_for


def domain_bounds(graph, inp, shapes, clamps: dict, cached: dict | None = None, first_dirty=0, timing=None):
    """Intermediate bounds for a batch of domains: IBP ∩ CROWN layer by layer, clamped to fixed ReLU signs.

    clamps: pre-activation key -> (active mask, inactive mask), each (N, *shape) bool.
    cached: key -> (l, u) (N, *shape) of the parent domains; for sample i the keys before position
    ``first_dirty[i]`` of ``needs_bounds`` are taken from it (their inputs did not change), later ones are
    recomputed (for the samples that need it) and intersected with it (the parent's bounds hold on the
    child's domain too, so intersecting stays sound).
    ``timing``: when a dict, receives the seconds each key's backward passes took.
    Returns (bounds of the needed keys, bounds of every node, per-sample "proved empty" flags)."""
    order = needs_bounds(graph)
    pos = {k: i for i, k in enumerate(order)}
    exact = exact_on_box(graph)
    n = inp.lo.shape[0]
    vals = {INPUT: (inp.lo, inp.hi)}
    bounds = {INPUT: (inp.lo, inp.hi)}
    empty = torch.zeros(n, dtype=torch.bool)
    for key, node, ins in graph:
        l, u = rule_for(node, "ibp").ibp(node, *(vals[k] for k in ins))
        if key in pos:
            shape = l.shape[1:]
            fl, fu = l.reshape(n, -1), u.reshape(n, -1)
            if cached is not None and key in cached:
                fl = torch.maximum(fl, cached[key][0].reshape(n, -1))
                fu = torch.minimum(fu, cached[key][1].reshape(n, -1))
            fl, fu = fl.clone(), fu.clone()
            rows = torch.ones(n, dtype=torch.bool) if cached is None else \
                torch.as_tensor(np.asarray(first_dirty) <= pos[key]).reshape(-1).expand(n)
            if key not in exact and rows.any():
                sel = rows.nonzero().flatten()
                sub_l, sub_u = fl[sel], fu[sel]
                only = ((sub_l < 0) & (sub_u > 0)).any(0).nonzero().flatten()
                if only.numel():
                    sub_inp = inp[sel] if len(sel) < n else inp
                    sub_b = bounds if len(sel) == n else {k: (a[sel], b[sel]) for k, (a, b) in bounds.items()}
                    t0 = time.monotonic()
                    bl, bu = neuron_bounds(graph, key, sub_inp, sub_b, shapes, "crown", CHUNK_ELEMS, only)
                    if timing is not None:
                        timing[key] = time.monotonic() - t0
                    sub_l[:, only] = torch.maximum(sub_l[:, only], bl)
                    sub_u[:, only] = torch.minimum(sub_u[:, only], bu)
                    fl[sel], fu[sel] = sub_l, sub_u
            if key in clamps:
                act, inact = (m.reshape(n, -1) for m in clamps[key])
                fl = torch.where(act, fl.clamp(min=0), fl)
                fu = torch.where(inact, fu.clamp(max=0), fu)
            tol = 1e-9 * (1 + fl.abs() + fu.abs())
            empty |= (fl > fu + tol).any(1)
            fl, fu = torch.minimum(fl, fu), torch.maximum(fl, fu)
            l, u = fl.reshape(n, *shape), fu.reshape(n, *shape)
            bounds[key] = (l, u)
        vals[key] = (l, u)
    return bounds, vals, empty


def beta_bounds(graph, inp, C, bounds, shapes, splits, iters=10, lr=0.1):
    """β-CROWN-style lower bounds of C·f on split domains (Wang et al. 2021), CROWN slopes kept fixed.

    On a domain where split neuron j satisfies s_j·z_j(x) >= 0 (s = +1 active, -1 inactive), for β >= 0:
    C·f(x) >= C·f(x) - Σ_j β_j s_j z_j(x) >= L_out(x) + Σ_k L_k(x), where L_out is the CROWN linear lower
    bound of C·f and L_k that of -Σ_{j at node k} β_j s_j z_j, each valid on the domain (its clamped
    intermediate bounds). Minimising the sum over the box at once keeps the coupling through x. β = 0 gives
    CROWN's bound; Adam on β (projected to β >= 0) improves it. ``splits``: per domain, its split neurons
    ((pre-activation key, flat index, active), ...). Returns the best bound per (domain, row)."""
    n, S = C.shape[:2]
    ctx = lambda: BackwardContext("crown", "crown")
    with torch.no_grad():
        g_out, c_out = backward_pass(graph, graph.output, C.reshape(n, S, *shapes[graph.output]), bounds, shapes,
                                     ctx())
    signs = {}
    for i, domain_splits in enumerate(splits):
        for key, idx, active in domain_splits:
            if key not in signs:
                signs[key] = torch.zeros(n, 1, math.prod(shapes[key]), dtype=C.dtype)
            signs[key][i, 0, idx] = 1.0 if active else -1.0
    if not signs:
        return concretize(g_out, c_out, inp.lo, inp.hi)
    betas = {k: torch.zeros(n, S, m.shape[-1], dtype=C.dtype, requires_grad=True) for k, m in signs.items()}
    opt = torch.optim.Adam(list(betas.values()), lr=lr, fused=True)   # as alpha.py
    best = None
    with torch.enable_grad():
        for it in range(iters + 1):
            g, c = g_out, c_out
            for k, b in betas.items():
                A = -(signs[k] * b).reshape(n, S, *shapes[k])
                gk, ck = backward_pass(graph, k, A, bounds, shapes, ctx())
                g, c = g + gk, c + ck
            lb = concretize(g, c, inp.lo, inp.hi)
            best = lb.detach() if best is None else torch.maximum(best, lb.detach())
            if it == iters:
                break
            opt.zero_grad()
            (-lb[torch.isfinite(lb)].sum()).backward()
            opt.step()
            with torch.no_grad():
                for b in betas.values():
                    b.clamp_(min=0)
    return best
