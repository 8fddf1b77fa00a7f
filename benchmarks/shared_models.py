"""README's certify table on the VNN-COMP models in ``../shared/models`` (issue 15: every number traceable).

    python -m benchmarks.shared_models [--models a,b] [--out benchmarks/results/shared_models.json]
    python -m benchmarks.shared_models --table-only [--out ...]      # rewrite the .md from the .json

For each model: ``tightcert certify MODEL --data points.npz`` over every staged spec's exact input box with the
cascade ibp, crown-ibp, fastlin, crown, alpha-crown (defaults: 20 α iterations, all layers re-bounded) and 100
PGD steps, as a user would run it. The ``.json`` keeps per spec its verdict in ``truth.csv`` (sat / unsat),
whether PGD broke it, and the cheapest method that certified it (counts are cumulative over the cascade), plus
each method's seconds; the ``.md`` table is generated from it (a test compares the committed pair, and README's
table with the ``.md``). A certified ``sat`` spec would be a soundness bug: the run stops with an error.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TIGHTCERT_SHARED", ROOT.parent / "shared")) / "models"
OUT = ROOT / "benchmarks" / "results" / "shared_models.json"
MODELS = ("mnist-net_256x2", "mnist_relu_9_200", "Convnet_avgpool", "cifar_base_kw", "resnet_2b")
METHODS = ("ibp", "crown-ibp", "fastlin", "crown", "alpha-crown")


def measure(name: str) -> dict:
    import numpy as np

    from toolkit.cli import main
    from toolkit.report import read_report

    d = SHARED / name
    points = d / "points.npz"
    truth = [str(t) for t in np.load(points)["truth"]]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.h5"
        rc = main(["certify", str(next(d.glob("*.onnx"))), "--data", str(points), "--method", ",".join(METHODS),
                   "--pgd-steps", "100", "--no-progress", "--out", str(out)])
        if rc != 0:
            raise SystemExit(f"shared_models: certify failed on {name} (exit {rc})")
        run = read_report(out).runs[0]
    first = []
    for i in range(run.n_done):
        hit = [m for m in run.methods if bool(run.data["certified"][m][i])]
        first.append(hit[0] if hit else None)
    for t, m in zip(truth, first):
        if t == "sat" and m is not None:
            raise SystemExit(f"shared_models: {name}: a sat spec was certified by {m} (soundness bug)")
    return {"truth": truth, "pgd_broken": [not bool(c) for c in run.data["pgd_correct"]], "certified_first": first,
            "methods": list(run.methods), "time_bounds_s": [float(t) for t in run.attrs["time_bounds"]]}


def table(data: dict) -> str:
    from tabulate import tabulate

    rows = []
    for name, r in data["models"].items():
        sat = [t == "sat" for t in r["truth"]]
        n_unsat = len(sat) - sum(sat)
        broke = sum(b for b, s in zip(r["pgd_broken"], sat) if s)
        row = [name, f"{sum(sat)} / {n_unsat}", f"{broke}/{sum(sat)}"]
        for k, m in enumerate(r["methods"]):
            done = r["methods"][:k + 1]
            row.append(f"{sum(1 for f in r['certified_first'] if f in done)}/{n_unsat}")
        rows.append(row)
    return tabulate(rows, headers=["model", "specs (sat / unsat)", "PGD breaks (of sat)", *METHODS],
                    tablefmt="github", disable_numparse=True)


def ran_on(r: dict, k: int) -> int:
    """Specs method k ran on (``certify``'s cascade): the cheapest on every spec, each dearer one on those that
    PGD did not break and no cheaper method certified."""
    if k == 0:
        return len(r["truth"])
    done = r["methods"][:k]
    return sum(1 for b, f in zip(r["pgd_broken"], r["certified_first"]) if not b and f not in done)


def time_table(data: dict) -> str:
    from tabulate import tabulate

    rows = [[name] + [f"{t:.2f} s / {ran_on(r, k)}" for k, t in enumerate(r["time_bounds_s"])]
            for name, r in data["models"].items()]
    return tabulate(rows, headers=["model", *METHODS], tablefmt="github", disable_numparse=True)


def markdown(data: dict) -> str:
    return "\n".join([
        "# Certify on the VNN-COMP models in ../shared/models", "", f"Command: `{data['command']}`", "",
        f"torch {data['torch']}; certified counts are cumulative over the cascade (a spec certified by a cheaper "
        "method counts for every later column); no sat spec is ever certified. Raw results: the `.json` beside "
        "this file.", "", table(data), "",
        "Seconds in each method / the specs it ran on (the cheapest runs on every spec, each dearer one only on "
        "specs that PGD did not break and no cheaper method certified):", "", time_table(data), ""])


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(prog="python -m benchmarks.shared_models", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--table-only", action="store_true")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.table_only:
        data = json.loads(out.read_text())
    else:
        import torch

        from toolkit.runtime import retain_freed_memory

        retain_freed_memory()
        data = {"command": "python -m benchmarks.shared_models " + " ".join(argv), "torch": torch.__version__,
                "models": {m: measure(m) for m in args.models.split(",") if m}}
        out.write_text(json.dumps(data, indent=1) + "\n")
    text = markdown(data)
    out.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
