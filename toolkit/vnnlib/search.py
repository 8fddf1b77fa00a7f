"""Counterexample sampling and input-splitting branch and bound on the interval engine.

Input splitting is complete in the limit for continuous networks with a positive margin and works well
for low-dimensional inputs (the conformance suite's ≤ 16-input models, ACAS-like control nets). A box is
*refuted* when one atom of its disjunct is false on the interval enclosure; the query is ``unsat`` when
every box of every disjunct is refuted. Every unrefuted box's (type-rounded) centre is tried as a
witness, so ``sat`` answers come out of the same loop; they are confirmed by ``Problem.confirm``.
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np

from .budget import Deadline
from .problem import Problem

#: Stop splitting a dimension below this width relative to its starting width (then: unknown).
MIN_REL_WIDTH = 2.0 ** -40


@dataclass
class Outcome:
    verdict: str                 # "sat" | "unsat" | "unknown" | "timed-out"
    assignment: object = None
    detail: str = ""


def _finite_box(lo, hi, span=1.0):
    """Sampling range: infinite sides replaced by ``span`` beyond the finite one (or ±span)."""
    l = np.where(np.isfinite(lo), lo, np.where(np.isfinite(hi), hi - span, -span))
    h = np.where(np.isfinite(hi), hi, np.where(np.isfinite(lo), lo + span, span))
    return l, np.maximum(l, h)


def sample(problem: Problem, deadline: Deadline, rng, n_random=256, max_corners=1024):
    """Centre, corners (up to ``max_corners``) and uniform points of every disjunct's box."""
    for d in problem.q.disjuncts:
        lo, hi = _finite_box(d.lo, d.hi)
        pts = [(lo + hi) / 2, lo, hi]
        n = len(lo)
        if 2 ** n <= max_corners:
            for bits in range(2 ** n):
                mask = np.array([(bits >> i) & 1 for i in range(n)], bool)
                pts.append(np.where(mask, hi, lo))
        for p in pts:
            if deadline.expired():
                return None
            a = problem.confirm(problem.snap(p, *d.inner(lo, hi)), d.atoms)
            if a is not None:
                return a
    for _ in range(n_random):
        for d in problem.q.disjuncts:
            if deadline.expired():
                return None
            lo, hi = _finite_box(d.lo, d.hi)
            a = problem.confirm(problem.snap(lo + (hi - lo) * rng.random(len(lo)), *d.inner(lo, hi)), d.atoms)
            if a is not None:
                return a
    return None


def _atom_statuses(atoms, vlo, vhi):
    """(refuted, all atoms true)."""
    all_true = True
    for a in atoms:
        false, true = a.status(vlo, vhi)
        if false:
            return True, False
        all_true &= bool(true)
    return False, all_true


def _score(atoms, vlo, vhi) -> float:
    """How far the box is from being refuted (smaller = closer): the best atom's violation margin."""
    best = math.inf
    for a in atoms:
        if a.lin is None:
            continue
        c = a.coef_f
        l, h = vlo[a.idx], vhi[a.idx]
        with np.errstate(invalid="ignore"):
            dl = float(np.sum(np.where(c > 0, c * l, c * h))) + float(a.const)
            du = float(np.sum(np.where(c > 0, c * h, c * l))) + float(a.const)
        need = {"<=": -dl, "<": -dl, ">=": du, ">": du}.get(a.op, 0.0)  # < 0 once refuted
        if math.isfinite(need):
            best = min(best, need)
    return best if math.isfinite(best) else 0.0


def _split_dim(problem, atoms, lo, hi, width0):
    """The dimension whose bisection shrinks the decisive atom's range most; falls back to the widest."""
    rel = np.where(width0 > 0, (hi - lo) / np.where(width0 > 0, width0, 1), 0.0)
    rel = np.where(np.isfinite(rel), rel, 0.0)
    cands = np.argsort(-rel)[: min(len(rel), 8)]
    cands = [int(i) for i in cands if rel[i] > MIN_REL_WIDTH and np.isfinite(lo[i]) and np.isfinite(hi[i])]
    if len(cands) <= 1:
        return cands[0] if cands else None
    best, best_i = math.inf, cands[0]
    for i in cands:
        mid = (lo[i] + hi[i]) / 2
        worst = -math.inf
        for side in ((lo[i], mid), (mid, hi[i])):
            l2, h2 = lo.copy(), hi.copy()
            l2[i], h2[i] = side
            vlo, vhi = problem.bounds(l2, h2)
            worst = max(worst, _score(atoms, vlo, vhi))
        if worst < best:
            best, best_i = worst, i
    return best_i


def input_split(problem: Problem, deadline: Deadline, smart_dims: int = 16) -> Outcome:
    """Branch and bound over input boxes (module docstring)."""
    q = problem.q
    heap, tick, stuck = [], 0, 0
    for k, d in enumerate(q.disjuncts):
        heapq.heappush(heap, (0, tick, k, d.lo.copy(), d.hi.copy()))
        tick += 1
    widths0 = [np.where(np.isfinite(d.hi - d.lo), d.hi - d.lo, 0.0) for d in q.disjuncts]
    boxes = 0
    while heap:
        if deadline.expired():
            return Outcome("timed-out", detail=f"{boxes} boxes, {len(heap)} open")
        depth, _, k, lo, hi = heapq.heappop(heap)
        d = q.disjuncts[k]
        boxes += 1
        vlo, vhi = problem.bounds(lo, hi)
        refuted, all_true = _atom_statuses(d.atoms, vlo, vhi)
        if refuted:
            continue
        if np.all(np.isfinite(lo)) and np.all(np.isfinite(hi)):
            a = problem.confirm(problem.snap((lo + hi) / 2, *d.inner(lo, hi)), d.atoms)
            if a is not None:
                return Outcome("sat", a, detail=f"witness in box {boxes}")
        if all_true:
            for p in (lo, hi):
                a = problem.confirm(problem.snap(p, *d.inner(lo, hi)), d.atoms)
                if a is not None:
                    return Outcome("sat", a, detail=f"witness at a corner of box {boxes}")
        if problem.q.n_inputs <= smart_dims:
            i = _split_dim(problem, d.atoms, lo, hi, widths0[k])
        else:
            rel = np.where(widths0[k] > 0, (hi - lo) / np.where(widths0[k] > 0, widths0[k], 1), 0.0)
            i = int(np.argmax(rel)) if np.max(rel, initial=0) > MIN_REL_WIDTH else None
        if i is None:
            stuck += 1
            continue
        mid = (lo[i] + hi[i]) / 2
        for side in ((lo[i], mid), (mid, hi[i])):
            l2, h2 = lo.copy(), hi.copy()
            l2[i], h2[i] = side
            heapq.heappush(heap, (depth + 1, tick, k, l2, h2))
            tick += 1
    if stuck:
        return Outcome("unknown", detail=f"{stuck} boxes could not be split further ({boxes} boxes)")
    return Outcome("unsat", detail=f"input splitting: {boxes} boxes refuted")
