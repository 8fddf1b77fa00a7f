"""MNIST from the original IDX files (``.gz`` or raw) under ``<root>/mnist/raw`` or ``<root>/MNIST/raw``.

The IDX parsing is torchvision's (``read_image_file`` / ``read_label_file``). Those readers only take a
path to an uncompressed file, so a ``.gz`` is decompressed to a temporary file first (about 0.3 s for
the 47 MB train images; nothing is written to the read-only data root).
"""
from __future__ import annotations

import gzip
import tempfile
import zlib
from pathlib import Path

import numpy as np
import torch

from toolkit.errors import BadDataError

from .dataset import Dataset, selected_rows

SPLITS = {"train": ("train-images", "train-labels", 60000), "test": ("t10k-images", "t10k-labels", 10000)}
FOLDERS = ("mnist/raw", "MNIST/raw", "mnist", "MNIST")


def _candidates(folder: Path, stem: str, kind: str):
    # The original gzip headers name the files with a dot ("t10k-images.idx3-ubyte"); torchvision
    # uses a dash. Accept both, compressed or not.
    for name in (f"{stem}-{kind}", f"{stem}.{kind}"):
        for suffix in (".gz", ""):
            yield folder / (name + suffix)


def find_files(root: Path, split: str):
    """(images, labels) paths for ``split``, or BadDataError naming every place looked at."""
    img_stem, lab_stem, _ = SPLITS[split]
    for sub in FOLDERS:
        folder = root / sub
        imgs = [p for p in _candidates(folder, img_stem, "idx3-ubyte") if p.is_file()]
        labs = [p for p in _candidates(folder, lab_stem, "idx1-ubyte") if p.is_file()]
        if imgs and labs:
            return imgs[0], labs[0]
    looked = ", ".join(str(root / s) for s in FOLDERS)
    raise BadDataError(f"MNIST {split} files ({img_stem}-idx3-ubyte[.gz], {lab_stem}-idx1-ubyte[.gz]) not found "
                       f"in {looked}; the bundled models/mnist_test_1000.npz holds the first 1,000 test images")


def _read_idx(path: Path, reader) -> torch.Tensor:
    try:
        if path.suffix != ".gz":
            return reader(str(path))
        with tempfile.NamedTemporaryFile(suffix=".idx") as tmp:
            with gzip.open(path, "rb") as f:
                tmp.write(f.read())
            tmp.flush()
            return reader(tmp.name)
    except (OSError, EOFError, zlib.error, AssertionError, TypeError, ValueError, RuntimeError) as e:
        raise BadDataError(f"{path} is not a valid MNIST IDX file ({type(e).__name__}: {e})") from None


def load(root: Path, split: str, n=None, indices=None) -> Dataset:
    """Rows are the original file positions, so ``indices`` are MNIST indices."""
    from torchvision.datasets.mnist import read_image_file, read_label_file  # heavy import: lazy

    img_path, lab_path = find_files(root, split)
    images = _read_idx(img_path, read_image_file)
    labels = _read_idx(lab_path, read_label_file)
    expected = SPLITS[split][2]
    if tuple(images.shape) != (expected, 28, 28) or tuple(labels.shape) != (expected,):
        raise BadDataError(f"MNIST {split}: expected {expected} images of 28x28 and {expected} labels, got "
                           f"images {tuple(images.shape)} ({img_path}) and labels {tuple(labels.shape)}")
    if int(labels.min()) < 0 or int(labels.max()) > 9:
        raise BadDataError(f"MNIST {split} labels outside 0..9 in {lab_path}")
    rows = selected_rows(expected, n, indices, f"MNIST {split}")
    t = torch.as_tensor(rows)
    x = images[t].unsqueeze(1).to(torch.float32).div_(255.0)  # select first: 60k floats are 188 MB
    return Dataset(x, labels[t].to(torch.int64), rows, f"mnist-{split}", str(img_path.parent),
                   meta={"pixels": "exact"})
