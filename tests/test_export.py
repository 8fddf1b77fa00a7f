"""ONNX export: onnxruntime on the written file equals the graph, metadata is set, writes are atomic."""
import json

import numpy as np
import onnx
import pytest
import torch

import onnx_builders as B
import nets
from toolkit import __version__
from toolkit.errors import BadInputError, BadModelError
from toolkit.ir import Add, Graph, InputSpec, Normalize
from toolkit.ir import onnx_export
from toolkit.ir.onnx_export import export_onnx
from toolkit.ir.onnx_import import import_onnx, run_onnxruntime


def _x(graph, n=8, seed=0):
    return np.random.default_rng(seed).uniform(size=(n, *graph.input_spec.shape)).astype(np.float32)


def _run(graph, x):
    with torch.no_grad():
        return graph(torch.from_numpy(x).to(next(graph.parameters()).dtype)).double().numpy()


@pytest.mark.parametrize("make", [lambda: nets.random_conv(seed=1, residual=True, normalize=True),
                                  lambda: nets.random_pool_net(seed=2),
                                  lambda: nets.random_mlp([5, 8, 3], seed=3)],
                         ids=["conv_residual", "pool_net", "mlp"])
def test_ir_graphs_export_and_reimport(make, tmp_path):
    """Graphs built in Python (float64) survive IR -> ONNX -> IR with every op the nets use."""
    g = make()
    out = tmp_path / "m.onnx"
    diff = export_onnx(g, out)
    assert 0 <= diff <= 1e-4
    x = _x(g)
    ref = _run(g, x)
    assert np.abs(run_onnxruntime(str(out), "input", x, batch_one=False) - ref).max() <= 1e-4
    g2 = import_onnx(out)
    assert np.abs(_run(g2, x) - ref).max() <= 1e-4


@pytest.mark.parametrize("opset", [9, 19])
def test_old_and_new_opsets_round_trip(opset, tmp_path):
    """Opset 9 (Pad attributes) and 19 (Pad-18/Constant-19: onnx2torch has no converter, the reference
    evaluator traces instead) both import back to the same function."""
    g = nets.random_pool_net(seed=4)
    out = tmp_path / "m.onnx"
    export_onnx(g, out, opset=opset)
    assert onnx.load(str(out)).opset_import[0].version == opset
    g2 = import_onnx(out)
    x = _x(g)
    assert np.abs(_run(g2, x) - _run(g, x)).max() <= 1e-4
    assert "Pad" in [n.op for _, n, _ in g2]


def test_metadata_names_and_dynamic_batch(tmp_path):
    g = nets.random_mlp([4, 6, 3], seed=0)
    out = tmp_path / "m.onnx"
    export_onnx(g, out, metadata={"trained_with": "crown-ibp", "eps": 0.1, "schedule": {"kappa": [1, 0.5]}})
    m = onnx.load(str(out))
    props = {p.key: p.value for p in m.metadata_props}
    assert props["producer"] == f"tightcert {__version__}"
    assert props["trained_with"] == "crown-ibp" and json.loads(props["eps"]) == 0.1
    assert json.loads(props["schedule"]) == {"kappa": [1, 0.5]}
    assert props["tightcert.input_shape"] == "[4]" and props["tightcert.input_normalization"] == "none"
    assert [i.name for i in m.graph.input] == ["input"] and [o.name for o in m.graph.output] == ["logits"]
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert m.opset_import[0].version == 13
    x = _x(g, n=5)
    assert run_onnxruntime(str(out), "input", x, batch_one=False).shape == (5, 3)


def test_prepended_normalize_is_left_out(tmp_path):
    """The exported file takes the input space of the imported file; mean/std go into the metadata."""
    src = B.conv_bn(tmp_path)
    mean, std = [0.2, 0.4], [0.5, 0.25]
    g = import_onnx(src, mean=mean, std=std)
    out = tmp_path / "m.onnx"
    export_onnx(g, out)
    z = _x(g)
    ref = run_onnxruntime(str(src), "x", z, batch_one=True)
    assert np.abs(run_onnxruntime(str(out), "x", z, batch_one=False) - ref).max() <= 1e-5  # the file's own name
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(props["tightcert.input_mean"]) == pytest.approx(mean)
    assert json.loads(props["tightcert.input_std"]) == pytest.approx(std)
    # import(export(import(m, mean, std)), mean, std) is the same function as import(m, mean, std)
    g2 = import_onnx(out, mean=mean, std=std)
    x = _x(g, seed=5)
    assert np.abs(_run(g2, x) - _run(g, x)).max() <= 1e-5


def test_failed_check_writes_nothing(tmp_path, monkeypatch):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"previous model")
    monkeypatch.setattr(onnx_export, "_parity", lambda *a, **k: 0.5)
    with pytest.raises(BadModelError, match="differs from the graph by 0.5"):
        export_onnx(nets.random_mlp([3, 4, 2]), out)
    assert out.read_bytes() == b"previous model"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no temp file left behind


def test_nan_parity_is_a_failure(tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_export, "_parity", lambda *a, **k: float("nan"))
    with pytest.raises(BadModelError):
        export_onnx(nets.random_mlp([3, 4, 2]), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_bad_arguments(tmp_path):
    g = nets.random_mlp([3, 4, 2])
    with pytest.raises(BadInputError, match="directory does not exist"):
        export_onnx(g, tmp_path / "nope" / "m.onnx")
    with pytest.raises(BadInputError, match="opset"):
        export_onnx(g, tmp_path / "m.onnx", opset=3)
    only = Graph([("n", Normalize(torch.ones(1), torch.zeros(1)), ("input",))], "n",
                 InputSpec((3,), layout="flat", normalization="prepended"))
    with pytest.raises(BadInputError, match="nothing to export"):
        export_onnx(only, tmp_path / "m.onnx")
    two = Graph([("n", Normalize(torch.ones(1), torch.zeros(1)), ("input",)), ("a", Add(), ("n", "input"))],
                "a", InputSpec((3,), layout="flat", normalization="prepended"))
    with pytest.raises(BadInputError, match="single Normalize"):
        export_onnx(two, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
