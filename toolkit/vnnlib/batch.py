"""Batch mode: ``tightcert verify --instances instances.csv [--out results.csv] [--timeout CAP]``.

A VNN-COMP benchmark folder lists ``onnx,vnnlib,timeout`` per line (no header; paths relative to the csv;
``.gz`` files are fine). Every instance runs in this process (torch and the models load once), with its
own deadline: the csv timeout, capped by ``--timeout``. Results go to stdout as a table and to
``results.csv`` (``onnx,vnnlib,result,time_s`` plus ``truth`` when a ``truth.csv`` in the VNN-COMP shared
layout sits beside the instances file). An instance that is malformed gives ``error`` and the run goes on.
Exit status 1 when an answer contradicts ``truth.csv`` (a soundness bug), else 0.
"""
from __future__ import annotations

import csv
import sys
import time
from pathlib import Path

from toolkit.errors import BadInputError, TightcertError


def read_instances(path) -> list:
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"instances file not found: {path}")
    rows = []
    with open(path, newline="") as f:
        for i, row in enumerate(csv.reader(f), 1):
            row = [c.strip() for c in row]
            if not row or not any(row) or row[0].startswith("#"):
                continue
            if len(row) < 3:
                raise BadInputError(f"{path}:{i}: expected onnx,vnnlib,timeout, got {','.join(row)!r}")
            try:
                timeout = float(row[2])
            except ValueError:
                if i == 1:
                    continue  # a header line
                raise BadInputError(f"{path}:{i}: timeout {row[2]!r} is not a number") from None
            rows.append((row[0], row[1], timeout))
    if not rows:
        raise BadInputError(f"{path} lists no instances")
    return rows


def read_truth(folder) -> dict:
    """vnnlib path (as in instances.csv) -> sat/unsat/unknown, from ``truth.csv`` when present."""
    p = Path(folder) / "truth.csv"
    if not p.is_file():
        return {}
    with open(p, newline="") as f:
        return {r["vnnlib"]: r["result"] for r in csv.DictReader(f) if "vnnlib" in r and "result" in r}


def run_instances(csv_path, out=None, cap=None, seed=0, quiet=False) -> int:
    from .budget import Deadline
    from .query import load_query
    from .solver import decide

    csv_path = Path(csv_path)
    folder = csv_path.parent
    rows = read_instances(csv_path)
    truth = read_truth(folder)
    models = {}
    log = (lambda m: None) if quiet else (lambda m: print(f"tightcert: {m}", file=sys.stderr))
    results = []
    wrong = 0
    for onnx_rel, vnnlib_rel, timeout in rows:
        limit = min(timeout, cap) if cap is not None else timeout
        deadline = Deadline(limit, margin=min(1.0, 0.05 * limit))
        t0 = time.monotonic()
        try:
            q = load_query(folder / vnnlib_rel, [str(folder / onnx_rel)], models)
            verdict = decide(q, deadline, seed=seed, log=log).verdict
        except TightcertError as e:
            log(f"{vnnlib_rel}: error: {e}")
            verdict = "error"
        except Exception as e:  # a bug must not end the whole benchmark; it is reported per instance
            import traceback

            log(f"{vnnlib_rel}: internal error: {type(e).__name__}: {e}")
            traceback.print_exc(file=sys.stderr)
            verdict = "error"
        elapsed = time.monotonic() - t0
        expected = truth.get(vnnlib_rel, "")
        bad = {"sat": "unsat", "unsat": "sat"}.get(verdict) == expected
        wrong += bad
        results.append((onnx_rel, vnnlib_rel, verdict, elapsed, expected))
        print(f"{vnnlib_rel:60s} {verdict:9s} {elapsed:7.2f} s" + (f"  truth {expected}" if expected else "")
              + ("  WRONG" if bad else ""), flush=True)
    if out:
        with open(out, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["onnx", "vnnlib", "result", "time_s"] + (["truth"] if truth else []))
            for o, v, r, t, e in results:
                w.writerow([o, v, r, f"{t:.3f}"] + ([e] if truth else []))
    decided = sum(r[2] in ("sat", "unsat") for r in results)
    total_t = sum(r[3] for r in results)
    print(f"decided {decided}/{len(results)} (sat {sum(r[2] == 'sat' for r in results)}, unsat "
          f"{sum(r[2] == 'unsat' for r in results)}), {total_t:.1f} s"
          + (f", {wrong} contradicting truth.csv" if truth else ""), flush=True)
    return 1 if wrong else 0
