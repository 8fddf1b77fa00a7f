"""The report's groups besides ``/runs`` (issue 15: ``toolkit.report`` is the one place that knows the HDF5
layout): settings kept as attributes of named groups (``/table1/cells/<run>``, ``/paper_mnist``, the root),
the ``/train`` group of a training report (``toolkit.train.api``), and copying a finished run between
reports. Attribute values that are dicts, lists, tuples or None are stored as JSON text and read back as
Python values; everything comes back as plain Python types.
"""
from __future__ import annotations

import json
import numpy as np


def _h5py():
    import h5py  # lazily: the CLI parser must not pay for it

    return h5py


def encode(v):
    """A Python value as an HDF5 attribute (dicts, lists, tuples and None as JSON)."""
    return json.dumps(v) if isinstance(v, (dict, list, tuple)) or v is None else v


def decode(v):
    """An HDF5 attribute as a Python value (the inverse of ``encode``)."""
    if isinstance(v, bytes):
        v = v.decode()
    if isinstance(v, str):
        if v[:1] in ("{", "[") or v == "null":
            try:
                return json.loads(v)
            except ValueError:
                return v
        return v
    return v.item() if hasattr(v, "item") else v


def read_attrs(path, group: str = "/") -> dict | None:
    """The attributes of ``group`` (None when the group does not exist)."""
    with _h5py().File(path, "r") as f:
        return {k: decode(v) for k, v in f[group].attrs.items()} if group in f else None


def write_attrs(path, group: str, attrs: dict, replace: bool = False) -> None:
    """Set ``attrs`` on ``group`` (created with its parents); ``replace`` drops the group's old content."""
    with _h5py().File(path, "a") as f:
        if replace and group in f:
            del f[group]
        g = f.require_group(group)
        for k, v in attrs.items():
            g.attrs[k] = encode(v)


def read_children_attrs(path, group: str) -> dict:
    """{child name: its attributes} for every subgroup of ``group`` ({} when it does not exist)."""
    with _h5py().File(path, "r") as f:
        if group not in f:
            return {}
        return {name: {k: decode(v) for k, v in g.attrs.items()} for name, g in f[group].items()}


def copy_run(src, name: str, dst, compress: bool = True) -> None:
    """Copy run ``name`` of report ``src`` into report ``dst`` (replacing one of that name), chunked and
    resizable like the writer's datasets, gzip-compressed when ``compress`` (results files kept in git)."""
    h5py = _h5py()

    def copy(s, d):
        d.attrs.update(s.attrs)
        for k, v in s.items():
            if isinstance(v, h5py.Group):
                copy(v, d.create_group(k))
            else:
                kw = {"compression": "gzip", "shuffle": True} if compress else {}
                d.create_dataset(k, data=v[()], maxshape=(None, *v.shape[1:]), **kw)

    with h5py.File(src, "r") as fs, h5py.File(dst, "a") as fd:
        runs = fd.require_group("runs")
        if name in runs:
            del runs[name]
        copy(fs["runs"][name], runs.create_group(name))


# -- /train: what a training run adds to its report (layout in toolkit.train.api) -------------------------------

def write_train_group(path, attrs: dict, epochs: dict, before_after: dict) -> None:
    """/train with ``attrs``, /train/epochs/<metric> (E,) and /train/before_after/<column> (2,) rows
    ["before", "after"] (replacing an older /train)."""
    with _h5py().File(path, "a") as f:
        if "train" in f:
            del f["train"]
        g = f.create_group("train")
        for k, v in attrs.items():
            g.attrs[k] = encode(v)
        ep = g.create_group("epochs")
        for m, values in epochs.items():
            ep.create_dataset(m, data=np.asarray(values, dtype=np.float64))
        ba = g.create_group("before_after")
        ba.attrs["rows"] = json.dumps(["before", "after"])
        for c, pair in before_after.items():
            ba.create_dataset(c, data=np.asarray(pair, dtype=np.float64))


def read_train_group(path) -> tuple:
    """(attrs, {metric: (E,) array}, {column: (before, after)}) of a training report's /train group; nested
    columns (certified_err/<method>) are returned as "certified_err/<method>"."""
    h5py = _h5py()
    with h5py.File(path, "r") as f:
        g = f["train"]
        attrs = {k: decode(v) for k, v in g.attrs.items()}
        epochs = {k: np.asarray(v) for k, v in g["epochs"].items()}
        ba = {}
        g["before_after"].visititems(lambda name, obj: ba.__setitem__(name, tuple(float(x) for x in obj[()]))
                                     if isinstance(obj, h5py.Dataset) else None)
    return attrs, epochs, ba


def train_time(path) -> float | None:
    """Seconds of training (sum of the epochs) from a training report, or None when it has none."""
    try:
        return float(read_attrs(path, "train")["train_time_s"])
    except (OSError, KeyError, TypeError):
        return None
