"""The HDF5 report: the one place that knows its layout (write, resume, read).

Layout (format ``tightcert-report``, version 1)::

    /                            attrs: format="tightcert-report", format_version=1, tightcert_version,
                                        created (ISO time), finished (bool: every run finished)
    /runs/<NAME>                 one group per run = one model × one input set (an ε of a sweep, or the
                                 per-sample boxes/radii of the data); NAME = "<model>_eps<ε>" | "<model>_box"
                                 | "<model>_eps-data"
        attrs (settings):  name, model, model_path, model_sha256, data, data_source, split, n,
                           index_digest (sha1 prefix of the selected sample indices), eps
                           (NaN unless an ε-ball), input_set ("eps-ball" | "per-sample-eps" | "box"),
                           clip (JSON [lo, hi] or null), mean, std (JSON or null), methods (JSON list, in
                           the order they ran: cheapest first), method_opts (JSON), seed, pgd_steps,
                           pgd_restarts, pgd_step_size (NaN = default 2.5·rad/steps), n_classes, device,
                           batch_size, tightcert_version, torch_version, created
        attrs (progress):  finished (bool), n_done (rows written), wall_time (s, summed over sessions),
                           time_clean, time_pgd (s), time_bounds (M floats, per method),
                           n_bounds (M ints: samples each method actually ran on)
        attrs (summary, in %; written when the run finishes): clean_err, pgd_err,
                           certified_err (M floats, per method, cumulative over the cascade; a sample
                           counts as certified only if it is also clean_correct)
        index          (N,)  int64    sample's index in its source set
        label          (N,)  int64
        eps            (N,)  float32  radius used (NaN for a per-sample box)
        clean_pred     (N,)  int64    argmax of the logits at the clean input
        clean_correct  (N,)  bool
        pgd_margin     (N,)  float32  min_j (f_y - f_j) at the best point PGD found in the input set
                                      (an attained value; the attack stops once it is < 0)
        pgd_correct    (N,)  bool     clean_correct and pgd_margin > 0
        certified/<method>        (N,)   bool    certified by this method or a cheaper one before it
        bounds_computed/<method>  (N,)   bool    this method's bounds were computed for the sample
        margin_lb/<method>        (N, K) float32 lower bounds on f_y - f_j (0 in column y; NaN where
                                                 not computed)

Every per-sample dataset is chunked and resizable along N: rows are appended as batches finish, then
``n_done`` is updated and the file flushed, so ``n_done`` never counts a row that was not written.

Finished vs unfinished: while a run is in progress the file lives at ``OUT.partial``; it is renamed to
``OUT`` only when every run in it has finished (``finished=True`` on the run and on the root). A killed
run therefore never appears as a finished report. Running again with the same ``--out`` resumes from
``OUT.partial`` (rows beyond ``n_done`` are dropped, samples < ``n_done`` are not recomputed); runs with
other settings in the same file are an error. Re-running on a finished ``OUT`` copies it to
``OUT.partial``, adds the missing runs and renames it back.

This module imports neither the bound engine nor the trainer: it reads and writes plain arrays.
"""
from __future__ import annotations

import datetime
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from toolkit import __version__
from toolkit.errors import BadDataError, BadInputError
from toolkit.fileio import OutputBusyError, OutputLock, check_not_busy

FORMAT, FORMAT_VERSION = "tightcert-report", 1
PARTIAL_SUFFIX = ".partial"

#: Per-sample datasets (name -> dtype) written for every run.
COLUMNS = {"index": np.int64, "label": np.int64, "eps": np.float32, "clean_pred": np.int64,
           "clean_correct": np.bool_, "pgd_margin": np.float32, "pgd_correct": np.bool_}
#: Per-method groups (name -> dtype); margin_lb rows are (K,).
METHOD_COLUMNS = {"certified": np.bool_, "bounds_computed": np.bool_, "margin_lb": np.float32}
#: Settings that change results: a resumed run must match them exactly.
RESULT_SETTINGS = ("model_sha256", "data", "split", "n", "index_digest", "eps", "input_set", "clip", "mean",
                   "std", "methods", "method_opts", "seed", "pgd_steps", "pgd_restarts", "pgd_step_size",
                   "n_classes")


def partial_path(out) -> Path:
    out = Path(out)
    return out.with_name(out.name + PARTIAL_SUFFIX)


def _now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


def _h5py():
    import h5py  # imported lazily: the CLI parser must not pay for it

    return h5py


def _attr(value):
    """Settings -> HDF5 attribute values (lists/dicts/None as JSON text)."""
    if value is None or isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    if isinstance(value, str):  # numpy str_ included: h5py stores only plain str as text
        return str(value)
    if isinstance(value, Path):
        return str(value)
    return value


def _plain(value):
    """HDF5 attribute -> Python value (decodes bytes and numpy scalars)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def same_setting(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


# -- checks before anything is written -----------------------------------------------------------------

def check_out(out, runs: dict) -> None:
    """Raise ``BadInputError`` unless ``out`` can hold ``runs`` ({name: settings}); write nothing.

    Called before any computation so that a bad ``--out`` leaves no file behind.
    """
    out = Path(out)
    if out.is_dir():
        raise BadInputError(f"--out {out} is a directory; give a file name such as report.h5")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise BadInputError(f"cannot write --out {out}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BadInputError(f"cannot write --out {out}: folder {parent} is not writable")
    try:  # a report another process is writing is neither read nor touched (its .partial is not ours)
        check_not_busy(out)
    except OutputBusyError as e:
        raise BadInputError(str(e)) from None
    part = partial_path(out)
    for existing in (part, out):
        if existing.exists():
            _check_compatible(existing, runs)
            break


def _check_compatible(path: Path, runs: dict) -> None:
    if not os.access(path, os.R_OK | os.W_OK):
        raise BadInputError(f"cannot write --out: {path} exists and is not writable")
    try:
        rep = read_report(path)
    except BadDataError as e:
        raise BadInputError(f"cannot add to {path}: {e}; choose another --out or remove the file") from None
    for name, settings in runs.items():
        old = next((r for r in rep.runs if r.name == name), None)
        if old is None:
            continue
        # An unfinished run also keeps its batch size: α-CROWN optimises a batch jointly and the intermediate
        # bounds skip neurons stable across the batch, so other batches give other bounds (issue 15).
        keys = RESULT_SETTINGS + (() if old.attrs.get("finished") else ("batch_size",))
        for key in keys:
            new_v = _plain(_attr(settings.get(key)))
            if not same_setting(old.attrs.get(key), new_v):
                raise BadInputError(f"{path} already holds run {name!r} made with {key}={old.attrs.get(key)!r}"
                                    f" (now {new_v!r}); use another --out or remove the file")


# -- writing -------------------------------------------------------------------------------------------

class ReportWriter:
    """Writes ``OUT.partial`` run by run, then renames it to ``OUT`` in ``close(finished=True)``."""

    def __init__(self, out):
        h5py = _h5py()
        self.out, self.partial = Path(out), partial_path(out)
        try:  # one writer per report: a second process refuses before it touches OUT or OUT.partial
            self.lock = OutputLock(self.out).acquire()
        except OutputBusyError as e:
            raise BadInputError(str(e)) from None
        except OSError as e:
            raise BadInputError(f"cannot write --out {self.out}: {e}") from None
        created = False
        try:
            if not self.partial.exists() and self.out.exists():
                shutil.copy2(self.out, self.partial)  # add runs to a finished report; OUT stays intact
                created = True
            if not self.partial.exists():
                created = True
            self.f = h5py.File(self.partial, "a")
        except OSError as e:
            if created and self.partial.exists():
                self.partial.unlink()
            self.lock.release()
            raise BadInputError(f"cannot write --out {self.out}: {e}") from None
        a = self.f.attrs
        if "format" not in a:
            a.update({"format": FORMAT, "format_version": FORMAT_VERSION, "created": _now()})
        a["tightcert_version"] = __version__
        a["finished"] = False
        if "runs" not in self.f:
            self.f.create_group("runs", track_order=True)  # an ε sweep is listed in the order it ran
        self.f.flush()

    def run(self, name: str, settings: dict, n_total: int, methods, n_classes: int) -> "RunWriter":
        """Open run ``name`` for writing: resume it when present (settings checked), else create it."""
        runs = self.f["runs"]
        if name in runs:
            return RunWriter(runs[name], methods, n_classes, resume=True)
        g = runs.create_group(name)
        for k, v in settings.items():
            g.attrs[k] = _attr(v)
        g.attrs.update({"name": name, "n": int(n_total), "methods": json.dumps(list(methods)),
                        "n_classes": int(n_classes), "created": _now(), "finished": False, "n_done": 0,
                        "wall_time": 0.0, "time_clean": 0.0, "time_pgd": 0.0,
                        "time_bounds": np.zeros(len(methods)), "n_bounds": np.zeros(len(methods), np.int64)})
        chunk = max(1, min(int(n_total), 1024))
        for col, dt in COLUMNS.items():
            g.create_dataset(col, shape=(0,), maxshape=(None,), dtype=dt, chunks=(chunk,))
        for grp, dt in METHOD_COLUMNS.items():
            sub = g.create_group(grp)
            for m in methods:
                row = (int(n_classes),) if grp == "margin_lb" else ()
                sub.create_dataset(m, shape=(0, *row), maxshape=(None, *row), dtype=dt, chunks=(chunk, *row),
                                   **({"fillvalue": np.nan} if dt == np.float32 else {}))
        self.f.flush()
        return RunWriter(g, methods, n_classes, resume=False)

    def close(self, finished: bool) -> Path:
        """Close the file; when ``finished``, mark it and rename ``OUT.partial`` → ``OUT``."""
        try:
            if finished:
                self.f.attrs["finished"] = True
            self.f.close()
            if finished:
                os.replace(self.partial, self.out)
                return self.out
            return self.partial
        finally:
            self.lock.release()


class RunWriter:
    """Appends batches of per-sample rows to one run group."""

    def __init__(self, group, methods, n_classes, resume: bool):
        self.g, self.methods = group, list(methods)
        self.n_done = int(group.attrs["n_done"])
        if resume:  # rows past n_done belong to a batch that was cut off: drop them
            try:
                datasets = list(self._datasets())
            except KeyError as e:
                raise BadDataError(f"run {group.name.rsplit('/', 1)[-1]!r} of {group.file.filename} is damaged: "
                                   f"{e.args[0] if e.args else 'an array'} is missing; remove the file to start over") from None
            _check_rows(group, self.n_done, datasets)
            for ds in self._datasets():
                ds.resize(self.n_done, axis=0)
        self.session_start = _monotonic()

    def _datasets(self):
        yield from (self.g[c] for c in COLUMNS)
        for grp in METHOD_COLUMNS:
            yield from (self.g[grp][m] for m in self.methods)

    @property
    def finished(self) -> bool:
        return bool(self.g.attrs["finished"])

    def append(self, rows: dict, method_rows: dict, times: dict) -> None:
        """Write one batch. rows: {column: (B,) array}; method_rows: {group: {method: array}};
        times: {"clean": s, "pgd": s, "bounds": (M,) s, "n_bounds": (M,) counts} for this batch."""
        b = len(rows["index"])
        lo, hi = self.n_done, self.n_done + b
        for col in COLUMNS:
            ds = self.g[col]
            ds.resize(hi, axis=0)
            ds[lo:hi] = np.asarray(rows[col], dtype=COLUMNS[col])
        for grp, dt in METHOD_COLUMNS.items():
            for m in self.methods:
                ds = self.g[grp][m]
                ds.resize(hi, axis=0)
                ds[lo:hi] = np.asarray(method_rows[grp][m], dtype=dt)
        a = self.g.attrs
        a["time_clean"] = float(a["time_clean"]) + float(times["clean"])
        a["time_pgd"] = float(a["time_pgd"]) + float(times["pgd"])
        a["time_bounds"] = np.asarray(a["time_bounds"]) + np.asarray(times["bounds"], dtype=float)
        a["n_bounds"] = np.asarray(a["n_bounds"]) + np.asarray(times["n_bounds"], dtype=np.int64)
        self._add_wall()
        a["n_done"] = hi  # only now do these rows count
        self.n_done = hi
        self.g.file.flush()

    def _add_wall(self):
        now = _monotonic()
        self.g.attrs["wall_time"] = float(self.g.attrs["wall_time"]) + (now - self.session_start)
        self.session_start = now

    def record(self) -> "RunRecord":
        """The rows written so far, as plain arrays."""
        return _read_run(self.g.name.rsplit("/", 1)[-1], self.g)

    def finish(self, summary: dict) -> None:
        for k, v in summary.items():
            self.g.attrs[k] = v
        self._add_wall()
        self.g.attrs["finished"] = True
        self.g.file.flush()


class MemoryRunWriter:
    """``RunWriter``'s interface, in memory: the runs of ``certify(..., out=None)`` (nothing is saved)."""

    def __init__(self, name, settings, n_total, methods, n_classes):
        self.name, self.methods = name, list(methods)
        self.attrs = dict(settings, name=name, n=int(n_total), methods=list(methods), n_classes=n_classes,
                          finished=False, n_done=0, wall_time=0.0, time_clean=0.0, time_pgd=0.0,
                          time_bounds=np.zeros(len(methods)), n_bounds=np.zeros(len(methods), np.int64))
        self.rows, self.mrows, self.n_done, self.finished = [], [], 0, False
        self.start = _monotonic()

    def append(self, rows, method_rows, times):
        self.rows.append(rows)
        self.mrows.append(method_rows)
        a = self.attrs
        a["time_clean"] += times["clean"]
        a["time_pgd"] += times["pgd"]
        a["time_bounds"] = a["time_bounds"] + np.asarray(times["bounds"], float)
        a["n_bounds"] = a["n_bounds"] + np.asarray(times["n_bounds"], np.int64)
        self.n_done += len(rows["index"])
        a["n_done"] = self.n_done

    def record(self) -> RunRecord:
        cat = lambda parts: np.concatenate(parts) if parts else np.zeros(0)
        data = {c: cat([r[c] for r in self.rows]).astype(dt) for c, dt in COLUMNS.items()}
        for g, dt in METHOD_COLUMNS.items():
            data[g] = {m: cat([r[g][m] for r in self.mrows]).astype(dt) for m in self.methods}
        attrs = dict(self.attrs, methods=list(self.methods))
        return RunRecord(self.name, attrs, data)

    def finish(self, summary):
        self.attrs.update(summary)
        self.attrs["wall_time"] = _monotonic() - self.start
        self.attrs["finished"] = self.finished = True


def _check_rows(group, n_done, datasets) -> None:
    """A run is resumed only when its counter is possible and every per-sample array holds its rows: a
    damaged ``.partial`` would otherwise pass off missing rows as results (index 0, label 0, ...)."""
    n = int(group.attrs.get("n", -1))
    where = f"run {group.name.rsplit('/', 1)[-1]!r} of {group.file.filename}"
    if not 0 <= n_done <= n:
        raise BadDataError(f"{where} is damaged: n_done = {n_done} outside 0..{n}; remove the file to start over")
    short = [ds.name.split("/", 3)[-1] for ds in datasets if ds.shape[0] < n_done]
    if short:
        raise BadDataError(f"{where} is damaged: {', '.join(short)} hold fewer than n_done = {n_done} rows; "
                           "remove the file to start over")


def _monotonic():
    import time

    return time.monotonic()


# -- reading -------------------------------------------------------------------------------------------

@dataclass
class RunRecord:
    """One run as plain values: ``attrs`` (settings, progress, summary) and ``data`` (per-sample arrays;
    per-method groups as {method: array})."""

    name: str
    attrs: dict
    data: dict = field(default_factory=dict)

    @property
    def methods(self) -> list:
        m = self.attrs.get("methods", "[]")
        return json.loads(m) if isinstance(m, str) else list(m)

    @property
    def finished(self) -> bool:
        return bool(self.attrs.get("finished", False))

    @property
    def n_done(self) -> int:
        return int(self.attrs.get("n_done", len(self.data.get("index", ()))))


@dataclass
class Report:
    path: Path
    attrs: dict
    runs: list

    @property
    def finished(self) -> bool:
        return bool(self.attrs.get("finished", False)) and all(r.finished for r in self.runs)


def read_report(path) -> Report:
    """Read a report (finished or ``.partial``) into plain numpy arrays; rows past ``n_done`` are ignored."""
    h5py = _h5py()
    path = Path(path)
    if not path.exists():
        part = partial_path(path)
        hint = f"; an unfinished run is in {part} (run certify again with the same --out to resume)" \
            if part.exists() else ""
        raise BadDataError(f"report {path} does not exist{hint}")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise BadDataError(f"{path} is not a readable HDF5 file ({e})") from None
    with f:
        attrs = {k: _plain(v) for k, v in f.attrs.items()}
        if attrs.get("format") != FORMAT:
            raise BadDataError(f"{path} is not a tightcert report (no format={FORMAT!r} attribute)")
        if int(attrs.get("format_version", 0)) > FORMAT_VERSION:
            raise BadDataError(f"{path} has report format {attrs['format_version']}; this tightcert reads "
                               f"up to {FORMAT_VERSION}")
        runs = [_read_run(name, g) for name, g in f.get("runs", {}).items()]
    return Report(path, attrs, runs)


def _read_run(name, g) -> RunRecord:
    attrs = {k: _plain(v) for k, v in g.attrs.items()}
    n = int(attrs.get("n_done", 0))
    data = {c: g[c][:n] for c in COLUMNS if c in g}
    for grp in METHOD_COLUMNS:
        if grp in g:
            data[grp] = {m: g[grp][m][:n] for m in g[grp]}
    return RunRecord(name, attrs, data)
