"""The ``Dataset`` record every loader returns, and sample selection (``n`` / ``indices``)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from toolkit.errors import BadDataError, BadInputError


@dataclass
class Dataset:
    """Samples ready for the certifier, the attack and the trainer.

    x: float32 (N, ...). For MNIST/CIFAR-10 this is (N, C, H, W) pixels in [0, 1]. For an ``.npz`` it
        keeps the file's own layout and input space (points.npz centres may be flat or normalised).
    y: int64 (N,) labels.
    eps: float32 (N,) per-sample radius when the source gives one (points.npz: pixel units), else None.
    lo, hi: float32 (N, ...) per-sample input boxes (same shape as x) when the source gives them, else None.
        A given box is the exact query and takes precedence over ``eps`` (see ``toolkit.spec.InputSet``).
    index: int64 (N,) original index of each sample in its source set (test-set position for
        MNIST/CIFAR-10, the npz's ``index`` array or its row number otherwise).
    name: short description of what was loaded, e.g. ``"cifar10-test (JPEG q75 copy)"``.
    source: the file or folder the samples came from.
    meta: extra per-set values (npz ``mean``, ``std``, ``clip_lo``, ...; which source was used and why).
    per_sample: extra per-sample arrays with first axis N (npz ``eps_input``, ``target``, ``truth``, ...);
        ``subset`` slices them along with x and y.
    """

    x: torch.Tensor
    y: torch.Tensor
    index: np.ndarray
    name: str
    source: str = ""
    eps: torch.Tensor | None = None
    lo: torch.Tensor | None = None
    hi: torch.Tensor | None = None
    meta: dict = field(default_factory=dict)
    per_sample: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def subset(self, rows) -> "Dataset":
        """Rows ``rows`` (positions in this set); per-sample arrays follow along."""
        rows = np.asarray(rows, dtype=np.int64)
        t = torch.as_tensor(rows)
        take = lambda a: None if a is None else a[t]
        return Dataset(self.x[t], self.y[t], self.index[rows], self.name, self.source,
                       take(self.eps), take(self.lo), take(self.hi), dict(self.meta),
                       {k: v[rows] for k, v in self.per_sample.items()})


def check_selection(n, indices):
    """Validate the types of ``n`` / ``indices`` before any file is read (cheap errors first)."""
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise BadInputError(f"n must be a positive integer, got {n!r}")
    if indices is not None:
        arr = np.asarray(indices)
        if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
            raise BadInputError(f"indices must be a 1-D list of integers, got {str(indices)[:60]}")
        if arr.size == 0:  # e.g. 5:5: a report over no sample says nothing (as n = 0 is refused)
            raise BadInputError("the index selection is empty; give at least one sample index")
        values, counts = np.unique(arr, return_counts=True)
        if (counts > 1).any():  # a sample counted twice would skew every error rate
            raise BadInputError(f"index {int(values[counts > 1][0])} is selected more than once")


def selected_rows(total: int, n=None, indices=None, what="dataset") -> np.ndarray:
    """Rows picked by ``indices`` (positions, in the given order) and then the first ``n`` of them.

    Out-of-range requests are errors, never silently shortened: a certified accuracy over fewer
    samples than asked for would be misleading.
    """
    check_selection(n, indices)
    if indices is not None:
        rows = np.asarray(indices, dtype=np.int64).reshape(-1)
        bad = rows[(rows < 0) | (rows >= total)]
        if bad.size:
            raise BadDataError(f"index {int(bad[0])} is out of range for {what} with {total} samples "
                               f"(valid: 0..{total - 1})")
    else:
        rows = np.arange(total, dtype=np.int64)
    if n is not None:
        if n > rows.size:
            raise BadDataError(f"asked for n={n} samples but {what} has only {rows.size}")
        rows = rows[:n]
    return rows
