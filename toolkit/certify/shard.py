"""Certification shards: ``certify(..., shard="k/n")`` and ``merge_reports(out, shards)``.

Sharding is *strided*: shard k of n (1-based, ``1 <= k <= n``) certifies the samples at positions
k-1, k-1+n, k-1+2n, ... of the selected data (after ``--n`` / ``--indices``). Strided rather than
contiguous blocks because the cost of a sample is not uniform (the cascade runs dearer methods only on
samples still open, and test sets are often ordered), so every shard gets a fair share of the hard ones.
Each shard writes its own report (layout: ``toolkit.report.h5``); its runs carry three extra attributes:

    shard             "k/n"
    shard_full_n      number of samples in the full (unsharded) selection
    shard_full_digest index_digest of the full selection

Results do not depend on the sharding: PGD seeds come from (seed, sample index) and every bound is
per sample, so a merged report equals the unsharded one (the test checks this), up to float rounding
of batched matrix products.

``merge_reports`` joins the shards back into one report with the unsharded layout and row order. It
refuses shards of different settings (every ``RESULT_SETTINGS`` key except the per-shard ``n`` and
``index_digest``), unfinished shards, missing or repeated shards, and shards whose samples do not add
up to the full selection.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from toolkit.errors import BadInputError

SHARD_KEYS = ("shard", "shard_full_n", "shard_full_digest")
#: Run attributes that describe progress or results, not settings: recomputed for the merged run.
_PROGRESS_KEYS = ("name", "created", "finished", "n_done", "wall_time", "time_clean", "time_pgd", "time_bounds",
                  "n_bounds", "clean_err", "pgd_err", "certified_err", "merged_from")
_SHARD_RE = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")


def parse_shard(text) -> tuple[int, int]:
    """"k/n" (or a (k, n) pair) -> (k, n) with 1 <= k <= n; BadInputError otherwise."""
    if isinstance(text, (tuple, list)) and len(text) == 2:
        k, n = (int(v) for v in text)
    else:
        m = _SHARD_RE.fullmatch(str(text))
        if not m:
            raise BadInputError(f"--shard must look like K/N (e.g. 1/4), got {text!r}")
        k, n = int(m.group(1)), int(m.group(2))
    if not (n >= 1 and 1 <= k <= n):
        raise BadInputError(f"--shard {k}/{n}: need 1 <= K <= N")
    return k, n


def shard_positions(n_total: int, k: int, n: int) -> np.ndarray:
    """Positions (in the full selection) that shard k of n certifies."""
    return np.arange(k - 1, n_total, n, dtype=np.int64)


def take_shard(data, shard, digest):
    """(the rows of ``data`` for ``shard``, run attributes naming the shard). ``data`` is the certifier's
    ``PreparedData``; ``digest`` maps an index array to its ``index_digest``."""
    from dataclasses import replace

    import torch

    k, n = parse_shard(shard)
    rows = shard_positions(len(data), k, n)
    if rows.size == 0:
        raise BadInputError(f"shard {k}/{n} is empty: the selection has only {len(data)} samples")
    t = torch.as_tensor(rows)
    take = lambda a: None if a is None else a[t]
    part = replace(data, x=data.x[t], y=data.y[t], lo=take(data.lo), hi=take(data.hi), eps=take(data.eps),
                   index=np.asarray(data.index)[rows])
    return part, {"shard": f"{k}/{n}", "shard_full_n": int(len(data)), "shard_full_digest": digest(data.index)}


# -- merge ---------------------------------------------------------------------------------------------------

def merge_reports(out, shards) -> Path:
    """Join the shard reports ``shards`` into the finished report ``out``; returns its path."""
    from toolkit.report import read_report

    out, paths = Path(out), [Path(p) for p in shards]
    _check_paths(out, paths)
    reports = [read_report(p) for p in paths]
    for rep in reports:
        if not rep.finished:
            raise BadInputError(f"shard {rep.path} is unfinished; finish it (run its certify command again) "
                                "before merging")
    names = [r.name for r in reports[0].runs]
    for rep in reports[1:]:
        if [r.name for r in rep.runs] != names:
            raise BadInputError(f"{rep.path} holds runs {[r.name for r in rep.runs]} but {reports[0].path} holds "
                                f"{names}: shards must come from the same command")
    merged = [_merge_run([next(r for r in rep.runs if r.name == name) for rep in reports], paths)
              for name in names]
    _write(out, merged, paths)
    return out


def _check_paths(out: Path, paths: list) -> None:
    if len(paths) < 1:
        raise BadInputError("merge needs at least one shard report")
    if out.exists() or Path(str(out) + ".partial").exists():
        raise BadInputError(f"{out} already exists; merge writes a new report, choose another name or remove it")
    if any(out.resolve() == p.resolve() for p in paths if p.exists()):
        raise BadInputError(f"the output {out} is also one of the shards")
    seen = set()
    for p in paths:
        if p.resolve() in seen:
            raise BadInputError(f"shard report {p} is given twice")
        seen.add(p.resolve())


def _settings_of(run) -> dict:
    return {k: v for k, v in run.attrs.items() if k not in _PROGRESS_KEYS and k not in SHARD_KEYS}


def _merge_run(runs, paths) -> tuple:
    """(name, settings, per-sample data in full order, summed times) of one run over all shards."""
    from toolkit.report.h5 import RESULT_SETTINGS, same_setting

    name, first = runs[0].name, runs[0]
    ks, n_shards = [], None
    for run, path in zip(runs, paths):
        if "shard" not in run.attrs:
            raise BadInputError(f"{path}: run {name!r} is not a shard (it was certified without --shard)")
        k, n = parse_shard(run.attrs["shard"])
        if n_shards is not None and n != n_shards:
            raise BadInputError(f"{path} is shard {k}/{n} but {paths[0]} is one of {n_shards} shards")
        n_shards = n
        ks.append(k)
        for key in [*RESULT_SETTINGS, "shard_full_n", "shard_full_digest"]:
            if key in ("n", "index_digest"):
                continue
            if not same_setting(run.attrs.get(key), first.attrs.get(key)):
                raise BadInputError(f"shards differ in {key} for run {name!r}: {run.attrs.get(key)!r} in {path}, "
                                    f"{first.attrs.get(key)!r} in {paths[0]}; merge only shards of one command")
    _check_complete(ks, n_shards, name, paths)
    n_full = int(first.attrs["shard_full_n"])
    order = [None] * len(runs)
    for i, (run, k) in enumerate(zip(runs, ks)):
        pos = shard_positions(n_full, k, n_shards)
        if run.n_done != pos.size:
            raise BadInputError(f"{paths[i]}: shard {k}/{n_shards} of run {name!r} has {run.n_done} samples, "
                                f"expected {pos.size} of {n_full}")
        order[i] = pos
    data = _interleave(runs, order, n_full)
    from .core import _digest

    if _digest(data["index"]) != first.attrs["shard_full_digest"]:
        raise BadInputError(f"the merged samples of run {name!r} are not the full selection the shards were cut "
                            "from (index digest differs)")
    settings = dict(_settings_of(first), n=n_full, index_digest=first.attrs["shard_full_digest"])
    return name, settings, data, _times(runs), first.methods, int(first.attrs["n_classes"])


def _check_complete(ks, n, name, paths) -> None:
    seen = {}
    for k, p in zip(ks, paths):
        if k in seen:
            raise BadInputError(f"shard {k}/{n} of run {name!r} is given twice ({seen[k]} and {p})")
        seen[k] = p
    missing = [f"{k}/{n}" for k in range(1, n + 1) if k not in seen]
    if missing:
        raise BadInputError(f"run {name!r} is missing shard(s) {', '.join(missing)}")


def _interleave(runs, order, n_full) -> dict:
    """Put each shard's rows back at their positions in the full selection."""
    from toolkit.report.h5 import COLUMNS, METHOD_COLUMNS

    out = {}
    for col, dt in COLUMNS.items():
        full = np.zeros(n_full, dtype=dt)
        for run, pos in zip(runs, order):
            full[pos] = run.data[col]
        out[col] = full
    for grp, dt in METHOD_COLUMNS.items():
        out[grp] = {}
        for m in runs[0].methods:
            first = runs[0].data[grp][m]
            full = np.zeros((n_full, *first.shape[1:]), dtype=dt)
            for run, pos in zip(runs, order):
                full[pos] = run.data[grp][m]
            out[grp][m] = full
    return out


def _times(runs) -> dict:
    a = [r.attrs for r in runs]
    vec = lambda key, dt: np.sum([np.asarray(x.get(key, 0), dt).reshape(-1) for x in a], axis=0)
    return {"clean": float(sum(float(x.get("time_clean", 0.0)) for x in a)),
            "pgd": float(sum(float(x.get("time_pgd", 0.0)) for x in a)),
            "bounds": vec("time_bounds", float), "n_bounds": vec("n_bounds", np.int64),
            "wall": float(sum(float(x.get("wall_time", 0.0)) for x in a))}


def _write(out: Path, merged, paths) -> None:
    from toolkit.report import ReportWriter, summarize

    writer = ReportWriter(out)
    done = False
    try:
        for name, settings, data, times, methods, n_classes in merged:
            wr = writer.run(name, settings, len(data["index"]), methods, n_classes)
            rows = {c: data[c] for c in data if not isinstance(data[c], dict)}
            wr.append(rows, {g: data[g] for g in data if isinstance(data[g], dict)}, times)
            s = summarize(wr.record())
            wr.finish({"clean_err": s["clean_err"], "pgd_err": s["pgd_err"], "certified_err": s["certified_err"]})
            wr.g.attrs["wall_time"] = times["wall"]  # the shards' compute time, not the merge's
            wr.g.attrs["merged_from"] = json.dumps([str(p) for p in paths])
        done = True
    finally:
        path = writer.close(done)
        if not done:
            path.unlink(missing_ok=True)
