"""PNG plots from a report alone: accuracy against ε for a sweep, histograms of margin lower bounds."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from toolkit.errors import BadInputError

from .h5 import Report, RunRecord
from .tables import eps_label, summarize


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: never open a window
    import matplotlib.pyplot as plt

    return plt


def _safe(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z_.=-]", "_", name)


def worst_margin_lb(run: RunRecord, method: str) -> np.ndarray:
    """Per-sample min_{j != y} margin lower bound for the samples this method ran on."""
    lb = np.asarray(run.data["margin_lb"][method], float)
    done = np.asarray(run.data["bounds_computed"][method], bool)
    if lb.size == 0:
        return np.zeros(0)
    lb = lb.copy()
    lb[np.arange(len(lb)), np.asarray(run.data["label"], int)] = np.inf  # column y holds 0, not a bound
    worst = lb.min(axis=1)
    return worst[done & ~np.isnan(worst)]


def plot_accuracy_vs_eps(runs, path: Path) -> Path | None:
    """Clean / PGD / certified accuracy (%) against ε, one line per model and method (ε-ball runs)."""
    sweep = [r for r in runs if r.attrs.get("input_set", "eps-ball") == "eps-ball"]
    if not sweep:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for model in sorted({r.attrs.get("model", "") for r in sweep}):
        rs = sorted((r for r in sweep if r.attrs.get("model", "") == model), key=lambda r: float(r.attrs["eps"]))
        eps = [float(r.attrs["eps"]) for r in rs]
        s = [summarize(r) for r in rs]
        ax.plot(eps, [100 - x["clean_err"] for x in s], "k--", marker="o", label=f"{model} clean")
        ax.plot(eps, [100 - x["pgd_err"] for x in s], ":", marker="v", label=f"{model} PGD")
        methods = rs[0].methods
        for i, m in enumerate(methods):
            ax.plot(eps, [100 - x["certified_err"][i] for x in s], marker="s", label=f"{model} certified ({m})")
    ax.set_xlabel("ε (l-inf radius)")
    ax.set_ylabel("accuracy %")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    ax.set_title("accuracy against ε" + ("" if all(r.finished for r in sweep) else " (UNFINISHED runs)"))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_margin_histogram(run: RunRecord, path: Path) -> Path:
    """Histogram of the per-sample worst margin lower bound, one series per method (> 0 = certified)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    series = {m: worst_margin_lb(run, m) for m in run.methods}
    finite = np.concatenate([v[np.isfinite(v)] for v in series.values()] or [np.zeros(0)])
    bins = np.linspace(finite.min(), finite.max(), 41) if finite.size and finite.min() < finite.max() else 20
    for m, v in series.items():
        v = v[np.isfinite(v)]
        if v.size:
            ax.hist(v, bins=bins, alpha=0.5, label=f"{m} (n={v.size})")
    ax.axvline(0.0, color="k", lw=1)
    ax.set_xlabel("lower bound of min_j (f_y − f_j)   (> 0: certified)")
    ax.set_ylabel("samples")
    status = "" if run.finished else " (UNFINISHED)"
    ax.set_title(f"{run.attrs.get('model', '')}, ε={eps_label(run)}{status}\n"
                 "(each method over the samples it ran on: dearer ones skip certified/broken samples)", fontsize=9)
    if any(v.size for v in series.values()):
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_report(report: Report, out_dir) -> list:
    """Write all plots of ``report`` into ``out_dir``; return the PNG paths."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BadInputError(f"cannot create --out-dir {out_dir}: {e}") from None
    paths = []
    p = plot_accuracy_vs_eps(report.runs, out_dir / "accuracy_vs_eps.png")
    if p:
        paths.append(p)
    for run in report.runs:
        if run.methods:
            paths.append(plot_margin_histogram(run, out_dir / f"margin_lb_{_safe(run.name)}.png"))
    return paths
