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


def verify(query_path, networks=(), timeout=None, seed=0):
    """Decide one query. ``networks``: ``--network`` values (``NAME=PATH`` or a bare path for 1.0 files).
    Returns ``(verdict, assignment)`` with verdict in sat/unsat/unknown/timed-out."""
    from .budget import Deadline
    from .query import load_query
    from .solver import decide

    deadline = Deadline(timeout)
    q = load_query(query_path, list(networks))
    out = decide(q, deadline, seed=seed)
    return out.verdict, out.assignment
