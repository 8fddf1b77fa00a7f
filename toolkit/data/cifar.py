"""CIFAR-10 from whichever copy the data root holds, preferring exact pixels.

Sources, looked for under ``<root>/cifar10/`` (and ``<root>/`` itself):

1. ``cifar-10-batches-py/``: the python pickle batches, read by torchvision's ``CIFAR10(download=False)``
   (which also checks their md5). Lossless, full set, original order.
2. ``cifar10_test_exact.npz`` (test split only): 1,685 test images with their original pixels and test
   indices. Used when *every* requested test index is in it — e.g. ``n <= 101`` or explicit indices
   from it — so that small evaluations are comparable with published numbers. Sources are never mixed
   within one load: one missing index sends the whole request to the JPEG copy.
3. The JPEG copy: ``cifar10-jpeg.tar.gz`` (or ``.tar``) or an extracted folder, laid out as
   ``{train,test}/<class>/NNNN.jpg``. Lossy (q75, 4:2:0), so accuracies on it are *not* comparable with
   published numbers (data README). The tar is streamed once per process (about 1.5 s, plus ~0.12 ms
   per decoded image: 10k test images take ~2.5 s, all 60k ~7 s), so no disk cache is kept.

Order and ``index``: the test split is in original test order when ``test_labels_all`` (from
``cifar10_test_exact.npz``) is available: ``test/<class>/NNNN.jpg`` is the NNNN-th test image of that
class, i.e. original index ``np.where(test_labels_all == c)[0][NNNN]`` (data README). Without it, and for
the train split (whose numbering is unverified), the order interleaves the classes (file number, then
class: airplane 0, automobile 0, …, truck 0, airplane 1, …) so that the first ``n`` images — the
trainer's ``train_n`` — are class-balanced (class-major order would give the first 10,000 train images
only two classes); ``index`` is that position and ``meta["index"]`` says which order was used.
"""
from __future__ import annotations

import functools
import io
import re
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from toolkit.errors import BadDataError

from . import npz
from .dataset import Dataset, selected_rows

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SIZES = {"train": 50000, "test": 10000}
MEMBER = re.compile(r"(?:^|/)(train|test)/([^/]+)/(\d+)\.(?:jpe?g|png)$", re.IGNORECASE)


def _dirs(root: Path):
    return [root / "cifar10", root / "CIFAR10", root]


def _first(paths):
    return next((p for p in paths if p.exists()), None)


def find_pickle(root: Path):
    return _first(d / "cifar-10-batches-py" for d in _dirs(root))


def find_exact(root: Path):
    return _first(d / "cifar10_test_exact.npz" for d in _dirs(root))


def find_jpeg(root: Path, split: str):
    """A tar archive or a folder holding ``<split>/<class>/*.jpg``."""
    for d in _dirs(root):
        for name in ("cifar10-jpeg.tar.gz", "cifar10-jpeg.tgz", "cifar10-jpeg.tar"):
            if (d / name).is_file():
                return d / name
        for folder in (d / "cifar10-jpeg", d):
            if (folder / split).is_dir() and any((folder / split / c).is_dir() for c in CLASSES):
                return folder
    return None


def _not_found(root: Path, split: str):
    where = ", ".join(str(d) for d in _dirs(root))
    extra = " or cifar10_test_exact.npz" if split == "test" else ""
    return BadDataError(f"CIFAR-10 {split} data not found: looked for cifar-10-batches-py/, cifar10-jpeg.tar.gz "
                        f"or a {split}/<class>/ image folder{extra} in {where}")


# -- exact pixels -----------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=2)
def _exact_keys(path: str):
    """(original indices held, labels of the whole test set or None) of the exact npz."""
    try:
        with np.load(path, allow_pickle=False) as z:
            index = z["index"] if "index" in z.files else np.zeros(0, np.int64)
            labels = z["test_labels_all"] if "test_labels_all" in z.files else None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise BadDataError(f"{path} is not a readable .npz ({type(e).__name__}: {e})") from None
    if labels is not None and labels.shape != (SIZES["test"],):
        raise BadDataError(f"{path}: 'test_labels_all' has shape {labels.shape}, expected (10000,)")
    return frozenset(index.tolist()), labels


def _load_exact(path: Path, wanted: np.ndarray) -> Dataset:
    """Rows of the exact subset holding original test indices ``wanted`` (in that order)."""
    full = npz.load(path)
    pos = {int(i): r for r, i in enumerate(full.index)}
    ds = full.subset([pos[int(i)] for i in wanted])
    ds.name, ds.meta = "cifar10-test (exact pixels)", {**ds.meta, "pixels": "exact", "index": "original"}
    return ds


# -- pickle batches ---------------------------------------------------------------------------------------
def _load_pickle(folder: Path, split: str, n, indices) -> Dataset:
    from torchvision.datasets import CIFAR10  # heavy import: lazy

    try:
        ds = CIFAR10(str(folder.parent), train=(split == "train"), download=False)
    except (RuntimeError, OSError, ValueError, KeyError, EOFError) as e:
        raise BadDataError(f"CIFAR-10 batches in {folder} are missing or corrupted ({e})") from None
    data, labels = np.asarray(ds.data), np.asarray(ds.targets, dtype=np.int64)
    if data.shape != (SIZES[split], 32, 32, 3):
        raise BadDataError(f"CIFAR-10 {split} batches in {folder}: expected ({SIZES[split]}, 32, 32, 3), "
                           f"got {data.shape}")
    rows = selected_rows(len(data), n, indices, f"CIFAR-10 {split}")
    x = torch.from_numpy(data[rows]).permute(0, 3, 1, 2).to(torch.float32).div_(255.0)
    return Dataset(x.contiguous(), torch.from_numpy(labels[rows]), rows, f"cifar10-{split} (exact pixels)",
                   str(folder), meta={"pixels": "exact", "index": "original"})


# -- JPEG copy --------------------------------------------------------------------------------------------
def _parse(name: str, split: str):
    m = MEMBER.search(name)
    if not m or m.group(1).lower() != split:
        return None
    cls = m.group(2)
    if cls not in CLASSES:
        raise BadDataError(f"unknown CIFAR-10 class folder {cls!r} in {name}; expected one of {', '.join(CLASSES)}")
    return CLASSES.index(cls), int(m.group(3))


@functools.lru_cache(maxsize=2)
def _members(source: str, mtime: float, split: str):
    """Sorted (class, number, bytes-or-path) of every image of ``split``; the tar is streamed once."""
    src, out = Path(source), []
    if src.is_dir():
        for p in sorted((src / split).glob("*/*")):
            key = _parse(p.relative_to(src).as_posix(), split)
            if key:
                out.append((*key, p))
    else:
        try:
            with tarfile.open(src, "r:*") as tf:
                for m in tf:
                    key = _parse(m.name, split) if m.isfile() else None
                    if key:
                        out.append((*key, tf.extractfile(m).read()))
        except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
            raise BadDataError(f"{src} is not a readable tar archive ({type(e).__name__}: {e})") from None
    out.sort(key=lambda e: e[:2])
    if len({e[:2] for e in out}) != len(out):
        raise BadDataError(f"{src}: duplicate {split}/<class>/<number> images")
    return out


def _decode(item, where: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    data = item if isinstance(item, bytes) else Path(item).read_bytes()
    try:
        img = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise BadDataError(f"cannot decode CIFAR-10 image {where} ({e})") from None
    if img.shape != (32, 32, 3):
        raise BadDataError(f"CIFAR-10 image {where} is {img.shape[1]}x{img.shape[0]}, expected 32x32")
    return img


def _original_order(members, labels_all, src):
    """Original test index of every member (data README: NNNN-th test image of its class)."""
    by_class = [np.flatnonzero(labels_all == c) for c in range(10)]
    idx = np.empty(len(members), dtype=np.int64)
    for r, (c, num, _) in enumerate(members):
        if num >= len(by_class[c]):
            raise BadDataError(f"{src}: test/{CLASSES[c]}/{num:04d} exceeds the {len(by_class[c])} test "
                               f"images of that class")
        idx[r] = by_class[c][num]
    return idx


def _load_jpeg(src: Path, split: str, n, indices, labels_all) -> Dataset:
    members = _members(str(src), src.stat().st_mtime, split)
    if not members:
        raise BadDataError(f"{src} holds no {split}/<class>/*.jpg images")
    if split == "test" and labels_all is not None:
        original = _original_order(members, labels_all, src)
        order = np.argsort(original, kind="stable")
        index_kind = "original"
    else:
        order = np.lexsort(([m[0] for m in members], [m[1] for m in members]))  # by number, then class
        original = np.empty(len(members), dtype=np.int64)
        original[order] = np.arange(len(members))  # index = position in the interleaved order
        index_kind = "interleaved by class (file number, then class; original order unknown)"
    rows = selected_rows(len(members), n, indices, f"CIFAR-10 {split} ({src.name})")
    picked = [members[i] for i in order[rows]]
    x = np.stack([_decode(m[2], f"{split}/{CLASSES[m[0]]}/{m[1]:04d}") for m in picked]) if picked else \
        np.zeros((0, 32, 32, 3), np.uint8)
    x = torch.from_numpy(x).permute(0, 3, 1, 2).to(torch.float32).div_(255.0).contiguous()
    y = torch.tensor([m[0] for m in picked], dtype=torch.int64)
    return Dataset(x, y, original[order[rows]], f"cifar10-{split} (JPEG copy, lossy)", str(src),
                   meta={"pixels": "lossy JPEG", "index": index_kind})


# -- front ------------------------------------------------------------------------------------------------
def load(root: Path, split: str, n=None, indices=None, source: str = "auto") -> Dataset:
    """``source``: "auto" (precedence in the module docstring), "exact" (the 1,685-image subset itself,
    rows = its rows) or "jpeg" (force the lossy copy)."""
    exact = find_exact(root)
    if source == "exact":
        if exact is None:
            raise BadDataError(f"cifar10_test_exact.npz not found in {', '.join(map(str, _dirs(root)))}")
        ds = npz.load(exact, n, indices)
        ds.name, ds.meta = "cifar10-test exact subset", {**ds.meta, "pixels": "exact", "index": "original"}
        return ds
    if source == "auto":
        pickle_dir = find_pickle(root)
        if pickle_dir is not None:
            return _load_pickle(pickle_dir, split, n, indices)
        if split == "test" and exact is not None:
            wanted = selected_rows(SIZES["test"], n, indices, "CIFAR-10 test")
            have = _exact_keys(str(exact))[0]
            if wanted.size and all(int(i) in have for i in wanted):
                return _load_exact(exact, wanted)
    src = find_jpeg(root, split)
    if src is None:
        raise _not_found(root, split)
    labels_all = _exact_keys(str(exact))[1] if (exact is not None and split == "test") else None
    return _load_jpeg(src, split, n, indices, labels_all)
