"""README's VNN-LIB figures, from stored runs (issue 15: every number traceable).

    python -m benchmarks.vnnlib_runs instances [--models a,b] [--cap 30]    # tightcert verify --instances
    python -m benchmarks.vnnlib_runs conformance [--timeout 30]             # vnnlib-satisfactory, whole suite
    python -m benchmarks.vnnlib_runs --table-only                           # rewrite the .md from the .json

``instances``: ``tightcert verify --instances instances.csv --timeout CAP`` on each VNN-COMP model folder in
``../shared/models`` (the csv's own 120–720 s limits capped at CAP, in this process's threads), one model at a
time; per instance the answer, the seconds and ``truth.csv``'s verdict go to
``benchmarks/results/vnnlib_instances.json``, written after each model (a rerun skips finished models, so a
killed run resumes; ``--force`` re-measures the models given, the others keep their stored runs). An answer
contradicting ``truth.csv`` stops the run (a soundness bug).

``conformance``: ``vnnlib-satisfactory run --solver tightcert --timeout T --test CATEGORY`` for every category
of the suite, one category at a time in a temporary folder; each test's expected and actual answer and its
outcome go to ``benchmarks/results/vnnlib_conformance.json`` after each category (resumable the same way).

``benchmarks/results/vnnlib.md`` is generated from the two files (a test compares it, and README's table and
conformance line, with what the files give).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TIGHTCERT_SHARED", ROOT.parent / "shared")) / "models"
RESULTS = ROOT / "benchmarks" / "results"
INSTANCES = RESULTS / "vnnlib_instances.json"
CONFORMANCE = RESULTS / "vnnlib_conformance.json"
MD = RESULTS / "vnnlib.md"
MODELS = ("mnist-net_256x2", "mnist_relu_9_200", "Convnet_avgpool", "cifar_base_kw", "resnet_2b")
DECIDED = ("sat", "unsat")


def _tool(name: str) -> str:
    exe = Path(sys.executable).parent / name
    if exe.exists():
        return str(exe)
    raise SystemExit(f"vnnlib_runs: {name} is not installed beside {sys.executable} (pip install -e '.[dev]')")


def _load(path: Path, fresh: dict) -> dict:
    return json.loads(path.read_text()) if path.is_file() else fresh


def _save(path: Path, data: dict) -> None:
    from toolkit.fileio import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1) + "\n")


def _machine() -> dict:
    import torch

    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "loadavg_at_start": round(os.getloadavg()[0], 2)}


# -- verify --instances ----------------------------------------------------------------------------------------

def measure_instances(name: str, cap: float) -> list:
    """One row per instance: vnnlib, result, seconds, truth (from the batch runner's results.csv)."""
    import csv

    from toolkit.vnnlib.batch import run_instances

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "results.csv"
        rc = run_instances(SHARED / name / "instances.csv", out=out, cap=cap, quiet=True)
        with open(out, newline="") as f:
            rows = [{"vnnlib": r["vnnlib"], "result": r["result"], "time_s": float(r["time_s"]),
                     "truth": r.get("truth", "")} for r in csv.DictReader(f)]
    wrong = [r["vnnlib"] for r in rows if r["result"] in DECIDED and r["truth"] in DECIDED
             and r["result"] != r["truth"]]
    if rc != 0 or wrong:
        raise SystemExit(f"vnnlib_runs: {name}: answers contradict truth.csv on {wrong} (soundness bug)")
    return rows


def run_instances_study(models, cap: float, force: bool, argv) -> dict:
    data = _load(INSTANCES, {"models": {}})
    command = "python -m benchmarks.vnnlib_runs " + " ".join(argv)
    data.update(command=command, cap_s=cap, **_machine())
    if force:   # only the models asked for: the others keep their stored runs
        for name in models:
            data["models"].pop(name, None)
    for name in models:
        if name in data["models"] and data["models"][name].get("cap_s") == cap:
            print(f"[vnnlib_runs] {name}: stored, skipped", file=sys.stderr)
            continue
        t, machine = time.perf_counter(), _machine()   # the load at this model's start
        rows = measure_instances(name, cap)
        data["models"][name] = {"cap_s": cap, "rows": rows, "wall_s": round(time.perf_counter() - t, 1),
                                "command": command, **machine}
        _save(INSTANCES, data)
        print(f"[vnnlib_runs] {name}: {sum(r['result'] in DECIDED for r in rows)}/{len(rows)} decided",
              file=sys.stderr)
    return data


def instances_table(data: dict) -> str:
    from tabulate import tabulate

    rows = []
    order = {n: i for i, n in enumerate(MODELS)}   # a re-measured model keeps its place
    for name, m in sorted(data["models"].items(), key=lambda nm: order.get(nm[0], len(order))):
        r = m["rows"]
        decided = [x for x in r if x["result"] in DECIDED]
        med = statistics.median(x["time_s"] for x in decided) if decided else float("nan")
        rows.append([name, f"{len(decided)}/{len(r)}", sum(x["result"] == "sat" for x in r),
                     sum(x["result"] == "unsat" for x in r), f"{sum(x['time_s'] for x in r):.0f} s",
                     f"{med:.1f} s"])
    return tabulate(rows, headers=["model", "decided / total", "sat", "unsat", "total time",
                                   "median time of decided"], tablefmt="github", disable_numparse=True)


# -- conformance suite -----------------------------------------------------------------------------------------

def categories() -> list:
    from vnntest.core.registry import get_node_types

    return sorted(get_node_types())


def measure_category(category: str, timeout: float) -> list:
    suite, solver = _tool("vnnlib-satisfactory"), _tool("tightcert")
    env = dict(os.environ, PATH=f"{Path(solver).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    with tempfile.TemporaryDirectory() as tmp:
        r = subprocess.run([suite, "run", "--solver", solver, "--timeout", str(timeout), "--test", category,
                            "--no-verbose"], cwd=tmp, capture_output=True, text=True, env=env)
        report = Path(tmp) / ".vnnlib-satisfactory" / "report.json"
        if report.is_file():
            rep = json.loads(report.read_text())
            return ([{k: t[k] for k in ("test_id", "expected", "actual", "outcome")} for t in rep["results"]]
                    + [{"test_id": s["test_id"], "expected": None, "actual": None, "outcome": "skip"}
                       for s in rep["skipped"]])
    # The suite can crash writing its report after a test killed at the timeout: read its per-test lines.
    tests = re.findall(r"^Test \d+ (\S+)\s+(\S+)", r.stdout, re.M)
    if not tests:
        raise SystemExit(f"vnnlib_runs: the suite printed no test for {category!r}:\n{r.stdout[-2000:]}"
                         f"{r.stderr[-2000:]}")
    return [{"test_id": tid, "expected": None, "actual": None, "outcome": f"symbol {sym}"} for sym, tid in tests]


def run_conformance(timeout: float, force: bool, argv) -> dict:
    data = _load(CONFORMANCE, {"categories": {}})
    data.update(command="python -m benchmarks.vnnlib_runs " + " ".join(argv), timeout_s=timeout, **_machine())
    if force:
        data["categories"] = {}
    for cat in categories():
        if cat in data["categories"]:
            continue
        data["categories"][cat] = measure_category(cat, timeout)
        _save(CONFORMANCE, data)
        print(f"[vnnlib_runs] {cat}: " + ", ".join(t["outcome"] for t in data["categories"][cat]), file=sys.stderr)
    return data


def conformance_summary(data: dict) -> dict:
    tests = [t for ts in data["categories"].values() for t in ts]
    out = {k: sum(t["outcome"] == k for t in tests) for k in ("pass", "fail", "suspect", "error", "skip")}
    out["total"] = len(tests)
    out["not_pass"] = sorted(f"{t['test_id']} ({t['outcome']}: expected {t['expected']}, got {t['actual']})"
                             for t in tests if t["outcome"] != "pass")
    return out


def conformance_line(data: dict) -> str:
    s = conformance_summary(data)
    return (f"**{s['pass']} pass, {s['fail']} fail, {s['suspect']} suspect, {s['error']} error, "
            f"{s['skip']} skip** of {s['total']}")


# -- markdown --------------------------------------------------------------------------------------------------

def _provenance(inst: dict) -> list:
    """Which command measured which models (a ``--models ... --force`` run re-measures only those), when more
    than one did."""
    by = {}
    for name, m in inst["models"].items():
        key = (m.get("command", inst["command"]), m.get("threads", inst["threads"]),
               m.get("loadavg_at_start", inst["loadavg_at_start"]))
        by.setdefault(key, []).append(name)
    if len(by) < 2:
        return []
    return ["Measured by: " + "; ".join(f"{', '.join(names)}: `{c}` ({t} thread(s), load average {la} at the start)"
                                       for (c, t, la), names in by.items()) + ".", ""]


def markdown(inst: dict | None, conf: dict | None) -> str:
    out = ["# VNN-LIB: `tightcert verify --instances` on ../shared/models, and the conformance suite", ""]
    if inst:
        out += [f"Command: `{inst['command']}` (cap {inst['cap_s']:g} s per instance; torch {inst['torch']}, "
                f"{inst['threads']} thread(s), load average {inst['loadavg_at_start']} at the start). No answer "
                "contradicts `truth.csv` (the run stops if one does).", "", instances_table(inst), "",
                *_provenance(inst)]
    if conf:
        s = conformance_summary(conf)
        out += [f"Command: `{conf['command']}` (per-test timeout {conf['timeout_s']:g} s, one category at a "
                f"time): {conformance_line(conf)}.", ""]
        out += ["Not passed:", ""] + [f"- {t}" for t in s["not_pass"]] + [""] if s["not_pass"] else []
    return "\n".join(out)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(prog="python -m benchmarks.vnnlib_runs", description=__doc__.split("\n\n")[0])
    p.add_argument("what", nargs="?", choices=("instances", "conformance"))
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--cap", type=float, default=30.0, help="seconds per instance (instances)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per test (conformance)")
    p.add_argument("--force", action="store_true", help="re-measure what is stored")
    p.add_argument("--table-only", action="store_true")
    p.add_argument("--md", default=str(MD))
    args = p.parse_args(argv)
    if not args.table_only and args.what is None:
        p.error("give instances, conformance or --table-only")
    if not args.table_only:
        from toolkit.runtime import retain_freed_memory

        retain_freed_memory()
        if args.what == "instances":
            run_instances_study([m for m in args.models.split(",") if m], args.cap, args.force, argv)
        else:
            run_conformance(args.timeout, args.force, argv)
    text = markdown(_load(INSTANCES, None), _load(CONFORMANCE, None))
    Path(args.md).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
