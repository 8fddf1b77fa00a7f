"""``tightcert verify``: the VNN-LIB 2.0 solver command (§5.3), and VNN-COMP batch mode.

Single query: stdout is exactly the answer (``sat`` + assignment, ``unsat``, ``unknown``, ``timed-out``),
written once at the end; everything else goes to stderr (Python prints and C-level writes to fd 1 are
redirected while solving). Malformed queries and §5.3.2 violations: a message on stderr, exit 2, nothing
on stdout. ``--instances instances.csv`` runs a VNN-COMP benchmark folder instead (``toolkit.vnnlib.batch``).
"""
from __future__ import annotations

import contextlib
import math
import os
import sys

NAME = "verify"
HELP = "decide a VNN-LIB query (VNN-LIB 2.0 solver interface) or a VNN-COMP instances.csv"
DESCRIPTION = """Decide a VNN-LIB query: print sat (and the counterexample), unsat, unknown or timed-out.

  tightcert verify QUERY.vnnlib[.gz] --network NAME=MODEL.onnx [--timeout SECONDS]
  tightcert verify OLD_STYLE_1.0.vnnlib --network MODEL.onnx
  tightcert verify --instances benchmark/instances.csv [--out results.csv] [--timeout CAP]

VNN-LIB 1.0 files (VNN-COMP, declare-const style) are translated to 2.0 and declared real.
The timeout counts from process start; the answer comes with a margin of max(1 s, 10 %)."""


def _seconds(text):
    import argparse

    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(v) or v < 0:
        raise argparse.ArgumentTypeError(f"the timeout must be a finite number >= 0, got {text!r}")
    return v


def add_arguments(p):
    p.add_argument("query", nargs="?", help="the VNN-LIB query (.vnnlib or .vnnlib.gz)")
    p.add_argument("--network", action="append", default=[], metavar="NAME=PATH",
                   help="model file of a declared network (repeat per network); a bare PATH for 1.0 queries")
    p.add_argument("--timeout", type=_seconds, default=None, metavar="SECONDS",
                   help="time limit in seconds, from process start (float; default: none). With --instances: "
                        "a cap on each instance's timeout")
    p.add_argument("--serialise-assignments", "--assignments", dest="serialise", default=None, metavar="DIR",
                   help="write the counterexample as DIR/<variable>.pb (ONNX TensorProto) instead of stdout")
    p.add_argument("--instances", default=None, metavar="CSV",
                   help="VNN-COMP instances.csv (onnx,vnnlib,timeout; paths relative to the csv)")
    p.add_argument("--out", default=None, metavar="CSV", help="with --instances: write results here")
    p.add_argument("--seed", type=int, default=0, help="random seed of the counterexample search (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress messages on stderr")


@contextlib.contextmanager
def _stdout_to_stderr():
    """Nothing but the answer may reach stdout: route Python- and C-level writes to stderr meanwhile."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:
        saved = None
    try:
        if saved is not None:
            os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        if saved is not None:
            os.dup2(saved, 1)
            os.close(saved)


def run(args) -> int:
    from toolkit.errors import BadInputError

    if args.instances:
        if args.query or args.network or args.serialise:
            raise BadInputError("--instances runs a whole benchmark: give no QUERY, --network or "
                                "--serialise-assignments with it")
        from toolkit.vnnlib.batch import run_instances

        return run_instances(args.instances, out=args.out, cap=args.timeout, seed=args.seed, quiet=args.quiet)
    if args.out:
        raise BadInputError("--out goes with --instances")
    if not args.query:
        raise BadInputError("verify needs a QUERY file (or --instances CSV)")
    from toolkit.vnnlib import verify
    from toolkit.vnnlib.budget import Deadline
    from toolkit.vnnlib.output import answer_text, serialise

    # the standard's timeout counts from process start; an in-process call (tests, the Python API) from now
    deadline = Deadline.from_process_start(args.timeout) if _is_cli_process() else Deadline(args.timeout)
    log = None if args.quiet else (lambda m: print(f"tightcert: {m}", file=sys.stderr))
    with _stdout_to_stderr():  # the watchdog (hard stop before the timeout) lives in toolkit.vnnlib.verify
        verdict, assignment = verify(args.query, args.network, args.timeout, args.seed, log, deadline)
        if verdict == "sat" and args.serialise:
            serialise(assignment, args.serialise)
    text = answer_text(verdict, assignment, args.serialise if verdict == "sat" else None)
    sys.stdout.write(text)
    sys.stdout.flush()
    if _is_cli_process():  # a driver waits for the process to exit: skip the slow interpreter teardown
        sys.stderr.flush()
        os._exit(0)
    return 0


def _is_cli_process() -> bool:
    """True when this process is ``tightcert verify ...`` itself (not a test calling ``main`` in-process)."""
    from pathlib import Path

    return Path(sys.argv[0]).name in ("tightcert", "__main__.py") and "verify" in sys.argv[1:4]
