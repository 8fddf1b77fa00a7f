"""VNN-LIB: queries (2.0, and 1.0 translated), the solver interface, and the engines that decide them.

Modules (import them directly; this package imports nothing heavy so ``supports`` stays fast):
- ``capabilities``: answers of ``tightcert supports`` (plain data);
- ``v1``: VNN-LIB 1.0 -> 2.0 text translation;
- ``query``: parsing with the ``vnnlib`` package, §5.3.2 checks, exact atoms and the DNF;
- ``models``: ONNX files and onnxruntime evaluation;
- ``interval``: interval semantics of ONNX graphs with rounding margins;
- ``problem``: a query bound to its models; witness confirmation;
- ``search``: sampling and input-splitting branch and bound;
- ``ir_solver``: PGD, CROWN/α-CROWN and branch and bound on the IR (torch);
- ``solver``: which engine when; ``output``: stdout format; ``batch``: VNN-COMP ``instances.csv``.

Python API: ``verify(query_path, networks, timeout)`` → (verdict, assignment or None).
"""


def verify(query_path, networks=(), timeout=None, seed=0, log=None, deadline=None):
    """Decide one query. ``networks``: ``--network`` values (``NAME=PATH`` or a bare path for 1.0 files).
    Returns ``(verdict, assignment)`` with verdict in sat/unsat/unknown/timed-out.

    The search runs in a worker thread and this call returns by the hard stop, timeout − max(0.5 s, 5 %)
    after the deadline's start, with "timed-out" if the search is still running then: one long bound
    computation cannot keep the answer past the timeout. ``deadline`` (a ``budget.Deadline``; default: from
    now) lets the CLI count from process start; ``log`` receives progress lines."""
    import threading

    from .budget import Deadline
    from .query import load_query
    from .solver import decide

    deadline = deadline or Deadline(timeout)
    box = {}

    def work():
        try:
            q = load_query(query_path, list(networks))
            box["out"] = decide(q, deadline, seed=seed, **({"log": log} if log else {}))
        except BaseException as e:  # re-raised in the caller's thread
            box["error"] = e

    worker = threading.Thread(target=work, name="tightcert-verify", daemon=True)
    worker.start()
    worker.join(hard_stop_seconds(timeout, deadline))
    if "error" in box:
        raise box["error"]
    if "out" not in box:
        if log:
            log(f"timed-out (the search was still running at the hard stop, {deadline.elapsed():.2f} s)")
        return "timed-out", None
    if log:
        log(f"{box['out'].verdict} ({box['out'].detail}) after {deadline.elapsed():.2f} s")
    return box["out"].verdict, box["out"].assignment


def hard_stop_seconds(timeout, deadline):
    """Seconds to wait for the search: up to timeout − max(0.5 s, 5 %) from the deadline's start."""
    if timeout is None:
        return None
    import time

    stop = deadline.start + timeout - max(0.5, 0.05 * timeout)
    return max(0.0, stop - time.monotonic())
