"""Certify a classifier over a dataset: clean prediction, PGD, then bound methods cheapest first.

Per batch (architecture.md, "certify"):

1. clean prediction at the centre ``x``;
2. PGD on the margin loss over the same spec as the bounds (``toolkit.attack.pgd_attack``), random
   start, per-sample seeds derived from ``(seed, sample index)`` so a resumed or re-batched run repeats
   the same attack;
3. the bound methods in cascade order (``checks.COST_ORDER``). The cheapest method runs on every sample,
   so its certificates are checked against PGD everywhere; each dearer method runs only on samples still
   open: not certified by a cheaper method and not broken by PGD (a broken sample cannot be certified by a
   sound method, and a certified one needs no second proof). ``bounds_computed`` records which ran where;
4. consistency, checked rather than assumed: every computed lower bound of ``f_y - f_j`` must stay below
   the value attained at the projected centre and at PGD's point (up to float tolerance), and a sample
   certified yet broken by PGD stops the run with ``SoundnessError`` naming the sample and method.

A sample is certified by a method when every ``f_y - f_j`` (j != y) has a lower bound > 0 (0 is not
verified, paper-spec §7.1); NaN/-inf bounds never certify.
"""
from __future__ import annotations

import hashlib
import math
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from toolkit import __version__
from toolkit.attack import pgd_attack
from toolkit.bounds.precision import recheck_float64
from toolkit.errors import BadInputError, SoundnessError
from toolkit.report import ReportWriter, check_out, format_table, read_report, summarize
from toolkit.report.h5 import METHOD_COLUMNS, MemoryRunWriter
from toolkit.spec import InputSet, label_column_ignored, margin_spec

from .checks import (check_box, check_eps, check_inside_clip, check_labels, classifier_outputs, fit_shape,
                     order_methods, resolve_device)

#: A bound may exceed an attained value only by float rounding: atol + rtol·|value|.
SOUND_ATOL, SOUND_RTOL = 1e-4, 1e-4


@dataclass
class RunPlan:
    name: str
    kind: str  # "eps-ball" | "per-sample-eps" | "box"
    eps: float  # NaN unless kind == "eps-ball"
    settings: dict


@dataclass
class CertifyResult:
    """What ``certify`` returns: one ``RunRecord`` per run (as the report stores it)."""

    runs: list
    out: Path | None = None
    notes: list = field(default_factory=list)

    def table(self, fmt: str = "github") -> str:
        return format_table(self.runs, fmt)


# -- planning ------------------------------------------------------------------------------------------

def _resolve_clip(graph, clip):
    if isinstance(clip, str) and clip == "model":
        vr = getattr(graph.input_spec, "value_range", None)
        if vr is None or not all(math.isfinite(float(v)) for v in vr):
            return None
        return (float(vr[0]), float(vr[1]))
    if clip is None:
        return None
    lo, hi = float(clip[0]), float(clip[1])
    if not (lo < hi):
        raise BadInputError(f"clip range must have lo < hi, got {clip}")
    return (lo, hi)


def _digest(a) -> str:
    return hashlib.sha1(np.ascontiguousarray(np.asarray(a, dtype=np.int64)).tobytes()).hexdigest()[:16]


def _plans(data, eps, clip, model_name, base: dict, notes: list) -> list:
    safe = re.sub(r"[^0-9A-Za-z_.+-]", "_", model_name) or "model"
    if data.lo is not None:
        if eps is not None:
            notes.append("the data gives a per-sample input box (lo/hi); it replaces --eps and the clip")
        return [RunPlan(f"{safe}_box", "box", float("nan"), dict(base, clip=None))]
    if eps is not None:
        if data.eps is not None:
            notes.append("--eps given: the data's per-sample eps is not used")
        eps_list = check_eps(_as_list(eps), clip)
        check_inside_clip(data.x, torch.tensor(min(eps_list)), clip)
        return [RunPlan(f"{safe}_eps{e:g}", "eps-ball", e, dict(base)) for e in eps_list]
    if data.eps is not None:
        e = torch.as_tensor(data.eps, dtype=torch.float32)
        if not torch.isfinite(e).all() or (e < 0).any():
            raise BadInputError("the data's per-sample eps must be finite and >= 0")
        if clip is not None and (e > clip[1] - clip[0]).any():
            raise BadInputError(f"a per-sample eps of the data exceeds the valid input range {clip}")
        check_inside_clip(data.x, e, clip)
        return [RunPlan(f"{safe}_eps-data", "per-sample-eps", float("nan"), dict(base))]
    raise BadInputError("give --eps: the data has neither a per-sample eps nor an input box")


def _as_list(eps) -> list:
    """One ε or a sweep (list, tuple, array) → list."""
    return [eps] if np.ndim(eps) == 0 else list(np.asarray(eps, dtype=object).reshape(-1))


def _sample_seeds(seed: int, index) -> list:
    """One attack seed per sample from (seed, its index in the source set)."""
    return [int(np.random.SeedSequence([int(seed) % 2**32, int(i) % 2**63]).generate_state(1)[0])
            for i in np.asarray(index)]


# -- one batch -----------------------------------------------------------------------------------------

def _margins(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(N, K) f_y - f_j, 0 in column y (the layout of margin_lower_bound)."""
    return logits.gather(1, y[:, None]) - logits


def _check_sound(lb, attained, index, method, where):
    """A lower bound above a value attained inside the input set is a bug, not a loose bound."""
    tol = SOUND_ATOL + SOUND_RTOL * attained.abs()
    bad = (lb > attained + tol).nonzero()
    if bad.numel():
        i, j = (int(v) for v in bad[0])
        raise SoundnessError(f"unsound bound: method {method} gives {float(lb[i, j]):.6g} as lower bound of "
                             f"f_y - f_{j} for sample {int(index[i])}, but {where} attains "
                             f"{float(attained[i, j]):.6g}")


def _bounds(graph, inp, y, method, opts):
    from toolkit.bounds import margin_lower_bound

    with torch.no_grad():
        return margin_lower_bound(graph, inp, y, method, **opts).detach()


def checked_margins(graph, inp, y, method, opts, logits) -> torch.Tensor:
    """Margin lower bounds (N, K) of ``method`` as certification uses them: float32 certificates close to 0 count
    only if float64 confirms them (precision.py). ``logits``: the model's output at the centres."""
    lb = _bounds(graph, inp, y, method, opts)
    return recheck_float64(lambda g, i, yy: _bounds(g, i, yy, method, opts), graph, inp, y, lb, logits)


def certify_batch(graph, inp: InputSet, y: torch.Tensor, index, methods, n_classes: int, *, pgd_steps=100,
                  pgd_restarts=1, pgd_step_size=None, seed=0, method_opts=None):
    """Certify one batch; returns (rows, method_rows, times) in the layout of ``RunWriter.append``."""
    opts = dict(method_opts or {})
    n, t0 = len(y), time.perf_counter()
    with torch.no_grad():
        logits = graph(inp.x).reshape(n, -1)
        at_centre = _margins(graph(inp.project(inp.x)).reshape(n, -1), y)
    clean_pred = logits.argmax(1)
    clean_correct = clean_pred == y
    t1 = time.perf_counter()
    C = margin_spec(y, n_classes, dtype=inp.lo.dtype).to(inp.lo.device)
    att = pgd_attack(graph, inp, C, pgd_steps, pgd_restarts, pgd_step_size, _sample_seeds(seed, index))
    with torch.no_grad():
        at_adv = _margins(graph(att.x_adv).reshape(n, -1), y)
    pgd_margin = att.margin
    pgd_correct = clean_correct & torch.isfinite(pgd_margin) & (pgd_margin > 0)
    t2 = time.perf_counter()

    cum = torch.zeros(n, dtype=torch.bool, device=y.device)
    out = {g: {} for g in METHOD_COLUMNS}
    t_bounds, n_bounds = [], []
    for i, m in enumerate(methods):
        ts = time.perf_counter()
        run_on = torch.ones_like(cum) if i == 0 else (~cum & pgd_correct)
        lb = torch.full((n, n_classes), float("nan"), dtype=inp.lo.dtype, device=y.device)
        rows = run_on.nonzero().flatten()
        if rows.numel():
            lb_m = checked_margins(graph, inp[rows], y[rows], m, opts, logits[rows])
            idx = np.asarray(index)[rows.cpu().numpy()]
            _check_sound(lb_m, at_centre[rows], idx, m, "the centre of its input set")
            _check_sound(lb_m, at_adv[rows], idx, m, "PGD's point in its input set")
            lb[rows] = lb_m
        cert_m = run_on & (label_column_ignored(lb, y) > 0).all(1)  # NaN compares False: never certified
        broken = cert_m & ~(pgd_margin > 0)
        if broken.any():
            k = int(broken.nonzero()[0])
            raise SoundnessError(f"sample {int(np.asarray(index)[k])} is certified by {m} but PGD breaks it "
                                 f"(margin {float(pgd_margin[k]):.6g}): the bounds are unsound")
        cum = cum | cert_m
        out["certified"][m] = cum.cpu().numpy()
        out["bounds_computed"][m] = run_on.cpu().numpy()
        out["margin_lb"][m] = lb.cpu().numpy()
        t_bounds.append(time.perf_counter() - ts)
        n_bounds.append(int(rows.numel()))
    rows = {"index": np.asarray(index), "label": y.cpu().numpy(), "clean_pred": clean_pred.cpu().numpy(),
            "clean_correct": clean_correct.cpu().numpy(), "pgd_margin": pgd_margin.cpu().numpy(),
            "pgd_correct": pgd_correct.cpu().numpy()}
    times = {"clean": t1 - t0, "pgd": t2 - t1, "bounds": t_bounds, "n_bounds": n_bounds}
    return rows, out, times


# -- runs ----------------------------------------------------------------------------------------------

def _batch_input(plan: RunPlan, data, clip, rows: slice, device):
    x = data.x[rows].to(device=device, dtype=torch.float32)
    if plan.kind == "box":
        inp = InputSet.from_box(data.lo[rows].to(device, torch.float32), data.hi[rows].to(device, torch.float32), x)
        eps = np.full(x.shape[0], np.nan, np.float32)
    elif plan.kind == "per-sample-eps":
        e = torch.as_tensor(data.eps[rows], dtype=torch.float32, device=device)
        inp, eps = InputSet.from_eps(x, e, clip), e.cpu().numpy()
    else:
        inp, eps = InputSet.from_eps(x, plan.eps, clip), np.full(x.shape[0], plan.eps, np.float32)
    return inp, eps


def _run(graph, data, plan, writer_run, methods, n_classes, cfg, device, bar, after_batch):
    n, bs = len(data), cfg["batch_size"]
    bar.set_description(plan.name)
    bar.update(writer_run.n_done)
    for start in range(writer_run.n_done, n, bs):
        rows = slice(start, min(n, start + bs))
        inp, eps = _batch_input(plan, data, cfg["clip"], rows, device)
        y = data.y[rows].to(device=device, dtype=torch.long)
        r, mr, times = certify_batch(graph, inp, y, data.index[rows], methods, n_classes,
                                     pgd_steps=cfg["pgd_steps"], pgd_restarts=cfg["pgd_restarts"],
                                     pgd_step_size=cfg["pgd_step_size"], seed=cfg["seed"],
                                     method_opts=cfg["method_opts"])
        r["eps"] = eps
        writer_run.append(r, mr, times)
        bar.update(rows.stop - rows.start)
        if after_batch is not None:
            after_batch(plan.name, writer_run.n_done)
    rec = writer_run.record()
    s = summarize(rec)
    writer_run.finish({"clean_err": s["clean_err"], "pgd_err": s["pgd_err"], "certified_err": s["certified_err"]})


def certify(graph, data, eps=None, methods=("crown-ibp",), *, out=None, clip="model", pgd_steps: int = 100,
            pgd_restarts: int = 1, pgd_step_size=None, batch_size: int = 256, device="cpu", seed: int = 0,
            method_opts: dict | None = None, model_name: str = "model", model_path: str = "",
            model_sha256: str = "", data_name: str | None = None, split: str = "", mean=None, std=None,
            progress: bool | None = None, after_batch=None, shard=None) -> CertifyResult:
    """Certify ``graph`` on ``data`` (a ``toolkit.data.Dataset``) for each ε in ``eps`` (a sweep: one run
    per ε), or over the data's own per-sample boxes / radii. Writes the HDF5 report ``out`` when given
    (resuming ``out.partial`` if present; see ``toolkit.report.h5``) and returns the runs.

    clip: "model" (the graph's ``input_spec.value_range``), None, or (lo, hi); ignored for box data.
    method_opts: extra keyword arguments for the bound engine (e.g. ``alpha_iters``).
    after_batch(run_name, n_done): called after each batch is written (tests use it to simulate a kill).
    shard: "k/n" certifies every n-th sample from the k-th (1-based) only (``toolkit.certify.shard``).
    The graph is moved to ``device``. Every input is checked before anything is computed or written.
    """
    methods = order_methods(methods)
    dev = resolve_device(device)
    if isinstance(batch_size, bool) or int(batch_size) < 1:
        raise BadInputError(f"batch size must be >= 1, got {batch_size}")
    if int(pgd_steps) < 0 or int(pgd_restarts) < 1:
        raise BadInputError(f"need --pgd-steps >= 0 and --pgd-restarts >= 1, got {pgd_steps}, {pgd_restarts}")
    if pgd_step_size is not None and not (math.isfinite(float(pgd_step_size)) and float(pgd_step_size) > 0):
        raise BadInputError(f"PGD step size must be finite and > 0, got {pgd_step_size}")
    data, n_classes = _prepare_data(graph, data)
    shard_attrs = {}
    if shard is not None:
        from .shard import take_shard

        data, shard_attrs = take_shard(data, shard, _digest)
    clip = _resolve_clip(graph, clip)
    notes = []
    base = dict(model=model_name, model_path=str(model_path), model_sha256=model_sha256,
                data=data_name or data.name, data_source=str(getattr(data, "source", "")), split=split,
                n=len(data), index_digest=_digest(data.index), eps=float("nan"), input_set="eps-ball",
                clip=list(clip) if clip else None, mean=list(mean) if mean is not None else None,
                std=list(std) if std is not None else None, methods=methods, method_opts=dict(method_opts or {}),
                seed=int(seed), pgd_steps=int(pgd_steps), pgd_restarts=int(pgd_restarts),
                pgd_step_size=float("nan") if pgd_step_size is None else float(pgd_step_size),
                n_classes=n_classes, device=str(dev), batch_size=int(batch_size), tightcert_version=__version__,
                torch_version=torch.__version__, **shard_attrs)
    plans = _plans(data, eps, clip, model_name, base, notes)
    for p in plans:
        p.settings.update(eps=p.eps, input_set=p.kind, clip=None if p.kind == "box" else p.settings["clip"])
    if out is not None:
        check_out(out, {p.name: p.settings for p in plans})
    graph.to(dev).eval()
    cfg = dict(batch_size=int(batch_size), clip=clip, pgd_steps=int(pgd_steps), pgd_restarts=int(pgd_restarts),
               pgd_step_size=pgd_step_size, seed=int(seed), method_opts=dict(method_opts or {}))
    return _execute(graph, data, plans, methods, n_classes, cfg, dev, out, progress, after_batch, notes)


def _execute(graph, data, plans, methods, n_classes, cfg, dev, out, progress, after_batch, notes):
    from tqdm import tqdm

    writer = ReportWriter(out) if out is not None else None
    memory_runs = []
    bar = tqdm(total=len(data) * len(plans), unit="sample", file=sys.stderr,
               disable=(not sys.stderr.isatty()) if progress is None else not progress, leave=False)
    finished = False
    try:
        for p in plans:
            if writer is not None:
                wr = writer.run(p.name, p.settings, len(data), methods, n_classes)
            else:
                wr = MemoryRunWriter(p.name, p.settings, len(data), methods, n_classes)
                memory_runs.append(wr)
            if wr.finished:
                bar.update(len(data))
                continue
            _run(graph, data, p, wr, methods, n_classes, cfg, dev, bar, after_batch)
        finished = True
    finally:
        bar.close()
        path = writer.close(finished) if writer is not None else None
    if writer is None:
        return CertifyResult([r.record() for r in memory_runs], None, notes)
    names = [p.name for p in plans]
    runs = sorted((r for r in read_report(path).runs if r.name in names), key=lambda r: names.index(r.name))
    return CertifyResult(runs, path, notes)


def _prepare_data(graph, data):
    """Shapes to the model's input, labels in range; returns (data with fitted tensors, n_classes)."""
    shape = tuple(graph.input_spec.shape)
    x = fit_shape(torch.as_tensor(data.x), shape)
    lo = fit_shape(None if data.lo is None else torch.as_tensor(data.lo), shape, "box bounds")
    hi = fit_shape(None if data.hi is None else torch.as_tensor(data.hi), shape, "box bounds")
    if not torch.isfinite(x).all():
        raise BadInputError("the data contains NaN or inf")
    if lo is not None:
        check_box(lo, hi, x)
    n_classes = classifier_outputs(graph)
    y = torch.as_tensor(data.y).long().reshape(-1)
    if y.shape[0] != x.shape[0]:
        raise BadInputError(f"{x.shape[0]} samples but {y.shape[0]} labels")
    index = np.asarray(getattr(data, "index", None) if getattr(data, "index", None) is not None
                       else np.arange(len(y)), dtype=np.int64)
    check_labels(y, index, n_classes)
    eps = None if getattr(data, "eps", None) is None else torch.as_tensor(data.eps, dtype=torch.float32).reshape(-1)
    return PreparedData(x, y, lo, hi, eps, index, getattr(data, "name", "data"), str(getattr(data, "source", ""))), \
        n_classes


@dataclass
class PreparedData:
    """The dataset as the certifier uses it: tensors fitted to the model's input shape."""

    x: torch.Tensor
    y: torch.Tensor
    lo: torch.Tensor | None
    hi: torch.Tensor | None
    eps: torch.Tensor | None
    index: np.ndarray
    name: str
    source: str

    def __len__(self):
        return int(self.x.shape[0])
