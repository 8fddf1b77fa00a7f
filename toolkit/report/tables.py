"""Summaries and tabulate tables computed from report records alone (no bound engine)."""
from __future__ import annotations

import math

import numpy as np

from .h5 import RunRecord

HEADERS = ["model", "ε", "method", "n", "clean err %", "PGD err %", "certified err %", "bounds on",
           "bounds s", "PGD s"]

NOTE = ("Methods run cheapest first; a sample certified by a cheaper method or broken by PGD is not "
        "recomputed by the dearer ones, so 'certified err' counts samples certified by that method or one "
        "above it, and 'bounds on' is how many samples it actually ran on.")


def _pct_err(ok: np.ndarray) -> float:
    return float("nan") if ok.size == 0 else 100.0 * (1.0 - float(np.mean(ok)))


def summarize(run: RunRecord) -> dict:
    """clean_err, pgd_err (%) and certified_err (% per method, in the run's method order) over the rows
    written so far. A sample counts as certified only when it is also classified correctly."""
    d = run.data
    clean = np.asarray(d["clean_correct"], bool)
    cert = [_pct_err(np.asarray(d["certified"][m], bool) & clean) for m in run.methods]
    return {"clean_err": _pct_err(clean), "pgd_err": _pct_err(np.asarray(d["pgd_correct"], bool)),
            "certified_err": np.asarray(cert, dtype=float)}


def eps_label(run: RunRecord) -> str:
    kind = run.attrs.get("input_set", "eps-ball")
    if kind == "box":
        return "box"
    if kind == "per-sample-eps":
        return "per-sample"
    return f"{float(run.attrs['eps']):g}"


def _n_label(run: RunRecord) -> str:
    n_total = int(run.attrs.get("n", run.n_done))
    return str(n_total) if run.finished else f"{run.n_done}/{n_total} (unfinished)"


def _fmt(v: float) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"


def table_rows(runs) -> list:
    rows = []
    for run in runs:
        s = summarize(run)
        times = np.asarray(run.attrs.get("time_bounds", np.zeros(len(run.methods))), float).reshape(-1)
        n_bounds = np.asarray(run.attrs.get("n_bounds", np.zeros(len(run.methods))), int).reshape(-1)
        base = [run.attrs.get("model", ""), eps_label(run)]
        common = [_n_label(run), _fmt(s["clean_err"]), _fmt(s["pgd_err"])]
        pgd_s = f"{float(run.attrs.get('time_pgd', 0.0)):.2f}"
        if not run.methods:
            rows.append(base + ["(none)"] + common + ["-", "0", "-", pgd_s])
        for i, m in enumerate(run.methods):
            rows.append(base + [m] + common + [_fmt(s["certified_err"][i]), str(int(n_bounds[i])),
                                               f"{times[i]:.2f}", pgd_s])
    return rows


def format_table(runs, fmt: str = "github", note: bool = True) -> str:
    """The certify table for ``runs`` (RunRecords) in any tabulate format (github, latex, plain …)."""
    from tabulate import tabulate

    text = tabulate(table_rows(runs), headers=HEADERS, tablefmt=fmt, disable_numparse=True)
    if note and runs:
        text += "\n\n" + NOTE
        unfinished = [r.name for r in runs if not r.finished]
        if unfinished:
            text += "\nUNFINISHED runs (partial results, resume with the same --out): " + ", ".join(unfinished)
    return text
