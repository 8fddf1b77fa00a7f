"""PNG plots from a report alone: accuracy against ε for a sweep (two or more ε), histograms of margin lower
bounds, and for a train/finetune report its training curves and a before/after bar chart."""
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
    if len({float(r.attrs["eps"]) for r in sweep}) < 2:  # one ε is one point per line: the tables say it better
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


#: (metric, label) of the training curves' panels (the /train/epochs series, toolkit.train.trainer)
LOSS_CURVES = (("loss", "total loss"), ("ce", "robust CE"), ("d", "Σ_t d_t"), ("r", "Σ_t r_t"))
ERROR_CURVES = (("robust_err", "robust error (training bound)"), ("clean_err", "clean error"))


def plot_training(epochs: dict, path: Path, title: str = "") -> Path:
    """Per-epoch training curves: losses and regularizers (log scale) above, robust and clean error below,
    each with ε (and β where it varies) on a second axis."""
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7.0, 6.4), sharex=True)
    x = np.arange(1, len(epochs["loss"]) + 1)
    for ax, curves, log in ((top, LOSS_CURVES, True), (bottom, ERROR_CURVES, False)):
        for key, label in curves:
            v = np.asarray(epochs.get(key, []), float)
            if v.size and np.isfinite(v).any():
                ax.plot(x, v * (100 if not log else 1), marker=".", label=label)
        ax.grid(alpha=0.3)
        if log:
            ax.set_yscale("symlog", linthresh=1e-2)
        ax.set_ylabel("value" if log else "% of training samples")
        twin = ax.twinx()
        twin.plot(x, epochs["eps"], "k:", label="ε")
        beta = np.asarray(epochs.get("beta", []), float)
        if beta.size and np.isfinite(beta).all() and np.ptp(beta) > 0:
            twin.plot(x, beta, "c:", label="β")
        twin.set_ylabel("ε / β")
        lines = ax.get_legend_handles_labels()
        more = twin.get_legend_handles_labels()
        ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7, loc="center right")
    bottom.set_xlabel("epoch")
    top.set_title(title or "training curves", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_before_after(before_after: dict, path: Path, title: str = "") -> Path:
    """Bars of clean, PGD and certified error (%) before and after training."""
    plt = _pyplot()
    cols = ["clean_err", "pgd_err"] + sorted(k for k in before_after if k.startswith("certified_err/"))
    labels = [c.replace("_err", "").replace("certified/", "certified\n") for c in cols]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    pos = np.arange(len(cols))
    for i, (name, shift) in enumerate((("before", -0.2), ("after", 0.2))):
        vals = [before_after[c][i] for c in cols]
        bars = ax.bar(pos + shift, vals, width=0.4, label=name)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(pos, labels, fontsize=8)
    ax.set_ylabel("error %")
    ax.set_ylim(0, 105)
    ax.legend()
    ax.set_title(title or "before / after training", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_report(report: Report, out_dir, train: tuple | None = None) -> list:
    """Write all plots of ``report`` into ``out_dir`` (``train``: the report's /train group as read by
    ``groups.read_train_group``, when it has one); return the PNG paths."""
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
    if train is not None:
        attrs, epochs, before_after = train
        title = f"{attrs.get('command', 'train')} {attrs.get('model', '')}, method {attrs.get('method', '')}"
        if len(epochs.get("loss", [])):
            paths.append(plot_training(epochs, out_dir / "training_curves.png", title))
        if before_after:
            paths.append(plot_before_after(before_after, out_dir / "before_after.png", title))
    return paths
