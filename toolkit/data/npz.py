"""Samples from an ``.npz``: ``x`` and ``y`` (or ``label``), optional ``eps``, ``lo``/``hi``, ``index``.

``x`` keeps the file's own layout and input space (the shared ``points.npz`` centres are in the model's
input space, e.g. flat (N, 784, 1) or normalised CIFAR); nothing is reshaped or renormalised.
A uint8 ``x`` (and uint8 ``lo``/``hi``) is read as 0..255 pixels and divided by 255 — the bundled
``models/mnist_test_1000.npz`` and ``cifar10_test_exact.npz`` store images that way. ``eps`` is taken as
written (points.npz: l-inf radius in [0, 1] pixel units). Every other array whose first axis has length
N goes to ``Dataset.per_sample``, the rest to ``Dataset.meta``.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from toolkit.errors import BadDataError

from .dataset import Dataset, selected_rows

RESERVED = {"x", "y", "label", "eps", "lo", "hi", "index"}


def _read(path: Path) -> dict:
    if not path.is_file():
        raise BadDataError(f"data file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise BadDataError(f"{path} is not a readable .npz ({type(e).__name__}: {e})") from None


def _as_float(a: np.ndarray, key: str, path: Path) -> np.ndarray:
    """uint8 → /255; any float → float32; anything else is an error. NaN/inf are errors."""
    if a.dtype == np.uint8:
        return a.astype(np.float32) / np.float32(255.0)
    if not np.issubdtype(a.dtype, np.floating):
        raise BadDataError(f"{path.name}: '{key}' has dtype {a.dtype}; expected float or uint8 (0..255 pixels)")
    a = a.astype(np.float32, copy=False)
    if not np.isfinite(a).all():
        raise BadDataError(f"{path.name}: '{key}' contains NaN or inf")
    return a


def _labels(d: dict, n: int, path: Path) -> np.ndarray:
    key = "y" if "y" in d else "label" if "label" in d else None
    if key is None:
        raise BadDataError(f"{path.name}: no labels (expected an array 'y' or 'label'; has {sorted(d)})")
    y = d[key]
    if not np.issubdtype(y.dtype, np.integer):
        raise BadDataError(f"{path.name}: '{key}' has dtype {y.dtype}; expected integer class labels")
    if y.shape != (n,):
        raise BadDataError(f"{path.name}: '{key}' has shape {y.shape}; expected ({n},) to match x")
    if n and y.min() < 0:
        raise BadDataError(f"{path.name}: '{key}' holds a negative label ({int(y.min())})")
    return y.astype(np.int64)


def _eps(d: dict, n: int, path: Path):
    if "eps" not in d:
        return None
    if d["eps"].dtype == np.uint8:  # a radius in 0..255 units would silently be 255x too large
        raise BadDataError(f"{path.name}: 'eps' has dtype uint8; expected float radii")
    eps = _as_float(d["eps"], "eps", path)
    if eps.ndim == 0:
        eps = np.full(n, eps, dtype=np.float32)
    if eps.shape != (n,):
        raise BadDataError(f"{path.name}: 'eps' has shape {eps.shape}; expected a scalar or ({n},)")
    if (eps < 0).any():
        raise BadDataError(f"{path.name}: 'eps' holds a negative radius ({float(eps.min())})")
    return eps


def _box(d: dict, x: np.ndarray, path: Path):
    if ("lo" in d) != ("hi" in d):
        raise BadDataError(f"{path.name}: has only one of 'lo'/'hi'; a box needs both")
    if "lo" not in d:
        return None, None
    lo, hi = _as_float(d["lo"], "lo", path), _as_float(d["hi"], "hi", path)
    for key, a in (("lo", lo), ("hi", hi)):
        if a.shape != x.shape:
            raise BadDataError(f"{path.name}: '{key}' has shape {a.shape}; expected {x.shape} like x")
    if (lo > hi).any():
        raise BadDataError(f"{path.name}: box has lo > hi at {int((lo > hi).sum())} entries")
    return lo, hi


def load(path, n=None, indices=None) -> Dataset:
    path = Path(path)
    d = _read(path)
    if "x" not in d:
        raise BadDataError(f"{path.name}: no array 'x' (has {sorted(d)})")
    x = _as_float(d["x"], "x", path)
    if x.ndim < 2:
        raise BadDataError(f"{path.name}: 'x' has shape {x.shape}; expected (N, ...) with a sample axis")
    total = x.shape[0]
    y = _labels(d, total, path)
    eps = _eps(d, total, path)
    lo, hi = _box(d, x, path)
    index = d.get("index", np.arange(total))
    if not np.issubdtype(index.dtype, np.integer) or index.shape != (total,):
        raise BadDataError(f"{path.name}: 'index' must be integer with shape ({total},), got {index.dtype} "
                           f"{index.shape}")
    rows = selected_rows(total, n, indices, path.name)
    t = torch.as_tensor(rows)
    tens = lambda a: None if a is None else torch.from_numpy(np.ascontiguousarray(a))[t]
    extra = {k: v for k, v in d.items() if k not in RESERVED}
    per_sample = {k: v[rows] for k, v in extra.items() if v.ndim >= 1 and v.shape[0] == total}
    meta = {k: v for k, v in extra.items() if k not in per_sample}
    meta["pixels"] = "uint8/255" if d["x"].dtype == np.uint8 else "as stored"
    name = f"{path.parent.name}/{path.stem}" if path.parent.name else path.stem  # "cifar_base_kw/points"
    return Dataset(tens(x), torch.from_numpy(y)[t], index.astype(np.int64)[rows], name, str(path),
                   tens(eps), tens(lo), tens(hi), meta, per_sample)
