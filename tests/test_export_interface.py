"""The export is a drop-in replacement (issue 15): an imported model, exported again (what finetune does),
keeps its input and output names, input rank and dtype, and a Flatten stays one Flatten node; onnxruntime
runs it with the original's input name and gives the graph's outputs."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from toolkit.ir.onnx_export import export_onnx
from toolkit.ir.onnx_import import import_onnx

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "models"
MODELS = sorted(SHARED.glob("*/*.onnx")) + [ROOT / "models" / "mnist_mlp_2x100.onnx"]


def _interface(model):
    def info(v):
        t = v.type.tensor_type
        return v.name, len(t.shape.dim), t.elem_type

    return [info(v) for v in model.graph.input if v.name not in {i.name for i in model.graph.initializer}], \
        [info(v) for v in model.graph.output]


@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.stem)
def test_reexport_keeps_the_interface(path, tmp_path):
    if not path.is_file():
        pytest.skip(f"{path} absent (../shared is not beside the checkout)")
    original = onnx.load(path)
    graph = import_onnx(path)
    out = tmp_path / "m.onnx"
    export_onnx(graph, out)
    exported = onnx.load(out)
    assert _interface(exported) == _interface(original)
    ops = Counter(n.op_type for n in exported.graph.node)
    original_ops = Counter(n.op_type for n in original.graph.node)
    assert ops["Flatten"] >= original_ops["Flatten"]  # our own older exports had a Reshape chain: now Flatten
    if original_ops["Flatten"] and not original_ops["Reshape"]:
        assert not ops["Reshape"] and not ops["Gather"]  # no Shape/Gather/Unsqueeze/Concat/Reshape chain
    name = original.graph.input[0].name
    shape = [d.dim_value or 1 for d in original.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(0).uniform(0, 1, [2] + shape[1:]).astype(np.float32)  # batch 2: dynamic axis
    y = ort.InferenceSession(str(out)).run(None, {name: x})[0]
    import torch

    with torch.no_grad():
        want = graph(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(y.reshape(2, -1), want.reshape(2, -1), atol=1e-4)
