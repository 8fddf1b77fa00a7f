"""Parking: carry the unfinished cells of a long benchmark across clones (``paper_mnist``, ``train_methods``).

A cell trains in its own folder below the work dir (``build/...``, not committed) and checkpoints every epoch in
``model.ckpt/``. A fresh clone on a fresh machine has no work dir, so a cell killed with the session would start
again from epoch 0. ``park`` copies what a cell needs to resume (its last epoch checkpoint and the files beside it
that fix its settings) into a committed folder; ``unpark`` puts them back when the cell's folder has nothing of its
own. The trainer checks on resume that the checkpoint's settings match the cell's, so a parked copy can never
silently continue a different run.
"""
from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

#: The file whose presence marks a cell as started (the trainer's last epoch checkpoint).
CHECKPOINT = "model.ckpt/last.pt"
#: What a parked cell keeps by default: the checkpoint and its epoch report (relative to the cell's folder).
FILES = (CHECKPOINT, "model.ckpt/report.h5")


def park(work: Path, stored: set, parked: Path, pattern: str, flock, files=FILES) -> list:
    """Copy ``files`` (paths in a cell's folder; parked flat, by file name) of each unfinished cell (a folder
    matching ``pattern`` below ``work`` with a checkpoint, whose path relative to ``work`` is not in ``stored``)
    into ``parked`` (atomically per cell), and drop parked copies of ``stored`` cells. Returns the parked cell
    folders (relative). A cell another process holds (``flock(folder, wait=False)`` yields False) is refused:
    its checkpoint may be mid-write."""
    from toolkit.errors import BadInputError

    done = []
    for folder in sorted(f for f in work.glob(pattern) if (f / CHECKPOINT).is_file()):
        rel = folder.relative_to(work).as_posix()
        if rel in stored:
            continue
        with flock(folder, wait=False) as mine:
            if not mine:
                raise BadInputError(f"--park: cell {rel} is running in another process; stop the study first")
            dest = parked / rel
            tmp = dest.with_name(dest.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            for name in files:
                shutil.copy2(folder / name, tmp / Path(name).name)
            shutil.rmtree(dest, ignore_errors=True)
            tmp.rename(dest)
            done.append(rel)
    for rel in sorted(stored):
        if (parked / rel).is_dir():
            shutil.rmtree(parked / rel)
            with contextlib.suppress(OSError):  # the cell's parent, when empty (paper_mnist: <cell>/eps<ε>)
                (parked / rel).parent.rmdir()
    return done


def unpark(folder: Path, rel: str, parked: Path, files=FILES) -> bool:
    """Start a cell from its parked copy when its folder has neither a model nor a checkpoint (a fresh clone);
    True if it did. The files land in a temporary folder first and move in one by one, checkpoint last, so a
    kill in between leaves a folder that is unparked again rather than a checkpoint without its settings."""
    src = parked / rel
    if (folder / "model.onnx").is_file() or (folder / CHECKPOINT).is_file() or \
            not all((src / Path(n).name).is_file() for n in files):
        return False
    tmp = folder / ".unpark"  # inside the cell: never mistaken for a cell by park's pattern
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    for name in sorted(files, key=lambda n: n == CHECKPOINT):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / Path(name).name).replace(folder / name)
    shutil.rmtree(tmp, ignore_errors=True)
    return True
