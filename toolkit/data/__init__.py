"""Datasets: ``load_dataset(name_or_path, split, data_root, n, indices) -> Dataset``. Never downloads.

Names (see each module's docstring for formats and precedence):

* ``mnist``: the IDX files under ``<root>/mnist/raw`` (or ``MNIST/raw``); 60,000 train / 10,000 test.
* ``cifar10``: exact pixels when available (pickle batches; or, for test requests entirely inside it,
  ``cifar10_test_exact.npz``), else the lossy JPEG copy; 50,000 train / 10,000 test.
* ``cifar10_exact``: the 1,685-image exact-pixel test subset itself (``index`` = original test index).
* ``cifar10_jpeg``: force the lossy JPEG copy.
* ``mnist_test_1000``: the bundled first 1,000 MNIST test images (``models/mnist_test_1000.npz``);
  needs no data root.
* a path to an ``.npz`` (``x`` + ``y``/``label``, optional ``eps``, ``lo``/``hi``, ``index``).

Data root: ``data_root``, else ``$TIGHTCERT_DATA``, else ``../shared/data`` beside the repo or the cwd.

Selection: ``indices`` picks rows (in the given order), then ``n`` keeps the first n. For the full
MNIST/CIFAR-10 sets rows are the original indices; ``Dataset.index`` always holds the original index.
Out-of-range requests raise ``BadDataError``.
"""
from __future__ import annotations

from pathlib import Path

from toolkit.errors import BadDataError, BadInputError

from . import cifar, mnist, npz
from .dataset import Dataset, selected_rows
from .roots import BUNDLED_MNIST, ENV_VAR, resolve_data_root

SPLITS = ("train", "test")
NAMES = ("mnist", "cifar10", "cifar10_exact", "cifar10_jpeg", "mnist_test_1000")

__all__ = ["Dataset", "load_dataset", "resolve_data_root", "names", "BUNDLED_MNIST", "ENV_VAR", "NAMES",
           "selected_rows"]


def names() -> tuple:
    return NAMES


def _is_path(name: str, key: str) -> bool:
    """A path when it looks like one; a known dataset name wins over a same-named file in the cwd."""
    if name.lower().endswith(".npz") or "/" in name or "\\" in name:
        return True
    return key not in NAMES and Path(name).is_file()


def load_dataset(name_or_path, split: str = "test", data_root=None, n=None, indices=None) -> Dataset:
    """Load a dataset by name or from an ``.npz`` path (module docstring)."""
    from .dataset import check_selection

    check_selection(n, indices)
    name = str(name_or_path)
    key = name.lower().replace("-", "_")
    if _is_path(name, key):
        return npz.load(Path(name).expanduser(), n, indices)
    if key not in NAMES:
        raise BadInputError(f"unknown dataset {name!r}; known: {', '.join(NAMES)} or a path to an .npz")
    if split not in SPLITS:
        raise BadInputError(f"unknown split {split!r}; expected 'train' or 'test'")
    if key == "mnist_test_1000":
        if split != "test":
            raise BadInputError("mnist_test_1000 is a test subset; use split='test'")
        if not BUNDLED_MNIST.is_file():
            raise BadDataError(f"bundled subset {BUNDLED_MNIST} is missing (models/train_default.py writes it)")
        ds = npz.load(BUNDLED_MNIST, n, indices)
        ds.name = "mnist-test first 1000 (bundled)"
        return ds
    root = resolve_data_root(data_root)
    if key == "mnist":
        return mnist.load(root, split, n, indices)
    if key in ("cifar10_exact",) and split != "test":
        raise BadInputError("cifar10_exact is a test subset; use split='test'")
    source = {"cifar10": "auto", "cifar10_exact": "exact", "cifar10_jpeg": "jpeg"}[key]
    return cifar.load(root, split, n, indices, source)
