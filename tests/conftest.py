import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TIGHTCERT_SHARED", ROOT.parent / "shared"))
SHARED_MODELS = SHARED / "models"
SHARED_DATA = SHARED / "data"

needs_shared = pytest.mark.skipif(not SHARED_MODELS.is_dir(),
                                  reason=f"../shared not found at {SHARED} (CI provides it beside the clone)")


def shared_model_dirs():
    if not SHARED_MODELS.is_dir():
        return []
    return sorted(p for p in SHARED_MODELS.iterdir() if p.is_dir() and list(p.glob("*.onnx")))


@pytest.fixture(autouse=True)
def _torch_threads():
    torch.set_num_threads(2)
    yield
