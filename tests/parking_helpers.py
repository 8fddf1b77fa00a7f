"""What the long benchmarks' resume and park tests share: a kill at a chosen call, and the ×1.01 mark that tells
a run resumed from a (parked) checkpoint from one that trained again."""
from __future__ import annotations

import numpy as np

MARK = 1.01


class Killed(BaseException):
    """A kill of the process at a chosen call (BaseException: no ``except Exception`` swallows it)."""


def killed(*args, **kwargs):
    raise Killed


def onnx_weights(path) -> dict:
    """The initializers of an ONNX file, by name."""
    import onnx
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def mark_checkpoint(path) -> None:
    """Scale a checkpoint's float weights by ``MARK``: a run resumed from it (with its epochs done) exports
    them as they are, a run that started over would not."""
    from toolkit.train.trainer import load_checked, save_atomic

    ck = load_checked(path)
    ck["model"] = {k: v * MARK if v.is_floating_point() else v for k, v in ck["model"].items()}
    save_atomic(ck, path)


def assert_marked(first: dict, second: dict) -> None:
    """``second`` is ``first`` scaled by ``MARK``, weight by weight."""
    assert first.keys() == second.keys()
    assert all(np.allclose(first[k] * MARK, second[k], rtol=1e-6, atol=0) for k in first)
