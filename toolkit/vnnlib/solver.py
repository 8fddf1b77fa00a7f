"""Deciding a query: which engine, in which order, within the deadline.

1. No disjunct left after the input bounds → ``unsat`` (the assertions contradict each other).
2. Route (``route``):
   - ``ir``: one network, one input and one output, no hidden variables, every non-input atom linear in
     the outputs, a model the IR importer takes, and a model too large for the interval engine to be the
     better choice → ``ir_solver``: PGD, IBP → CROWN → α-CROWN, then branch and bound (torch).
   - ``interval`` otherwise: sampling and input-splitting branch and bound on the ONNX interval engine
     (``search``); no torch, so small queries answer in well under a second.
3. ``sat`` only with a witness confirmed by ``Problem.confirm``; ``unsat`` only when every disjunct is
   refuted; ``timed-out`` when the deadline stopped the search, ``unknown`` when the methods ran out.
"""
from __future__ import annotations

import sys

import numpy as np

from toolkit.errors import TightcertError

from .budget import Deadline
from .problem import Problem
from .query import Query
from .search import Outcome, input_split, sample

#: Models with at most this many inputs (all networks together) and parameters stay on the interval engine.
INTERVAL_MAX_INPUTS = 64
INTERVAL_MAX_PARAMS = 2_000


def _log(msg):
    print(f"tightcert: {msg}", file=sys.stderr)


def ir_compatible(q: Query) -> str | None:
    """None when the IR bound engine can decide ``q``; otherwise why not."""
    if len(q.nets) != 1:
        return "several networks"
    n = q.nets[0]
    if len(n.inputs) != 1 or len(n.outputs) != 1:
        return "several inputs or outputs"
    if n.hidden:
        return "hidden variables"
    out = set(range(n.outputs[0].offset, n.outputs[0].offset + n.outputs[0].size))
    inputs = set(int(i) for i in q.input_index)
    for d in q.disjuncts:
        for a in d.atoms:
            if a.lin is None or a.op == "!=":
                return "non-linear or != atoms"
            if not set(a.lin[0]) <= out:
                if len(a.lin[0]) == 1 and int(next(iter(a.lin[0]))) in inputs:
                    continue  # an input bound kept for the exact checks: the box holds its closure
                return "atoms over inputs and outputs together"
    return None


def route(problem: Problem) -> str:
    q = problem.q
    small = q.n_inputs <= INTERVAL_MAX_INPUTS and sum(n.model.n_params for n in q.nets) <= INTERVAL_MAX_PARAMS
    if small or ir_compatible(q) is not None:
        return "interval"
    return "ir"


def decide(q: Query, deadline: Deadline, seed: int = 0, log=_log, force_route: str | None = None) -> Outcome:
    if not q.disjuncts:
        return Outcome("unsat", detail="the input constraints of every disjunct are contradictory")
    problem = Problem(q)
    rng = np.random.default_rng(seed)
    which = force_route or route(problem)
    if which == "ir":
        try:
            from .ir_solver import solve_ir

            return solve_ir(problem, deadline, rng, log)
        except TightcertError as e:  # unsupported op, importer parity failure, ...: still answer soundly
            log(f"IR bound engine not applicable ({e}); using the interval engine")
        except ImportError as e:
            log(f"IR bound engine unavailable ({e}); using the interval engine")
    return _decide_interval(problem, deadline, rng, log)


def _decide_interval(problem: Problem, deadline: Deadline, rng, log) -> Outcome:
    mismatch = problem.self_check(rng)
    a = sample(problem, deadline, rng, n_random=64 if mismatch is None else 4096)
    if a is not None:
        return Outcome("sat", a, detail="sampling")
    if mismatch is not None:
        log(f"no unsat claim possible: {mismatch}")
        return Outcome("timed-out" if deadline.expired() else "unknown", detail=mismatch)
    return input_split(problem, deadline)
