"""ONNX import: the shared VNN-COMP models and synthetic graphs lower to the IR and match onnxruntime.

Each comparison here runs onnxruntime itself on fresh inputs (independently of the parity check inside
``import_onnx``), and the round trip export -> import is checked against the first import.
"""
import numpy as np
import pytest
import torch

import onnx_builders as B
from conftest import needs_shared, shared_model_dirs
from toolkit.errors import BadInputError, UnsupportedOpError
from toolkit.ir import Linear, Normalize
from toolkit.ir.onnx_export import export_onnx
from toolkit.ir.onnx_import import import_onnx, run_onnxruntime

N_CHECK = 16


def _points(d):
    return np.load(d / "points.npz")


def _outside_norm_dirs():
    return [d for d in shared_model_dirs() if bool(_points(d)["normalized_input"])]


def _box(p, n, seed=0):
    """n inputs uniform in the model's valid input range (per channel: clip_lo..clip_hi)."""
    shape = tuple(p["input_shape"][1:])
    lo, hi = p["clip_lo"].astype(np.float32), p["clip_hi"].astype(np.float32)
    axis = int(p["channel_axis"])
    if axis > 0 and lo.size > 1:
        bshape = [1] * len(shape)
        bshape[axis - 1] = lo.size
        lo, hi = lo.reshape(bshape), hi.reshape(bshape)
    u = np.random.default_rng(seed).uniform(size=(n, *shape)).astype(np.float32)
    return (lo + (hi - lo) * u).astype(np.float32)


def _raw_pixels(p, x):
    """Normalised-space points -> raw [0, 1] pixels (x * std + mean per channel, NCHW)."""
    c = p["mean"].size
    return (x * p["std"].reshape(c, 1, 1) + p["mean"].reshape(c, 1, 1)).astype(np.float32)


def _run(graph, x):
    with torch.no_grad():
        return graph(torch.from_numpy(x)).double().numpy()


def _ops(graph):
    return [n.op for _, n, _ in graph]


# -------------------------------------------------------------------------------------------------------
# shared VNN-COMP models
# -------------------------------------------------------------------------------------------------------
@needs_shared
@pytest.mark.parametrize("d", shared_model_dirs(), ids=lambda d: d.name)
def test_shared_model_matches_onnxruntime_and_round_trips(d, tmp_path):
    onnx_path, p = next(d.glob("*.onnx")), _points(d)
    g = import_onnx(onnx_path, n_check=N_CHECK)
    assert g.meta["ort_max_abs_diff"] <= 1e-4
    assert g.input_spec.shape == tuple(int(v) for v in p["input_shape"][1:])  # e.g. (784, 1)
    assert g.meta["opset"] == 9 and len(g.meta["sha256"]) == 64

    x = _box(p, N_CHECK, seed=1)
    ref = run_onnxruntime(str(onnx_path), g.meta["onnx_input_name"], x, batch_one=True)
    ours = _run(g, x)
    assert np.abs(ours - ref).max() <= 1e-4
    assert (_run(g, p["x"]).argmax(1) == p["label"]).all()

    out = tmp_path / "rt.onnx"
    export_onnx(g, out, metadata={"test": d.name})
    assert np.abs(run_onnxruntime(str(out), g.meta["onnx_input_name"], x, batch_one=False) - ref).max() <= 1e-5
    g2 = import_onnx(out, n_check=N_CHECK)
    assert np.abs(_run(g2, x) - ours).max() <= 1e-5
    assert (g2.input_spec.shape, g2.input_spec.layout) == (g.input_spec.shape, g.input_spec.layout)
    assert [n.onnx_name for _, n, _ in g2] == [n.onnx_name for _, n, _ in g]  # names survive the trip


@needs_shared
@pytest.mark.parametrize("d", _outside_norm_dirs(), ids=lambda d: d.name)
def test_shared_outside_normalisation_is_prepended(d, tmp_path):
    """cifar_base_kw / resnet_2b: specs live in normalised space; with --mean/--std the graph takes pixels."""
    onnx_path, p = next(d.glob("*.onnx")), _points(d)
    g = import_onnx(onnx_path, mean=p["mean"], std=p["std"], n_check=N_CHECK)
    spec = g.input_spec
    assert spec.normalization == "prepended" and spec.layout == "NCHW"
    assert np.allclose(spec.mean, p["mean"]) and np.allclose(spec.std, p["std"])
    assert isinstance(g.nodes[g.consumers()["input"][0]], Normalize)

    x = _box(p, N_CHECK, seed=2)
    ref = run_onnxruntime(str(onnx_path), g.meta["onnx_input_name"], x, batch_one=True)
    assert np.abs(_run(g, _raw_pixels(p, x)) - ref).max() <= 1e-4
    assert (_run(g, _raw_pixels(p, p["x"])).argmax(1) == p["label"]).all()

    out = tmp_path / "rt.onnx"
    export_onnx(g, out)  # the prepended Normalize stays out: the file keeps the normalised input space
    assert np.abs(run_onnxruntime(str(out), g.meta["onnx_input_name"], x, batch_one=False) - ref).max() <= 1e-5
    g2 = import_onnx(out, mean=p["mean"], std=p["std"])
    raw = _raw_pixels(p, x)
    assert np.abs(_run(g2, raw) - _run(g, raw)).max() <= 1e-5


# -------------------------------------------------------------------------------------------------------
# synthetic ONNX graphs
# -------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("onnx")
    return {name: build(tmp) for name, build in B.GOOD.items()}


def _uniform(graph, n=N_CHECK, seed=3):
    return np.random.default_rng(seed).uniform(size=(n, *graph.input_spec.shape)).astype(np.float32)


@pytest.mark.parametrize("name", sorted(B.GOOD))
def test_synthetic_matches_onnxruntime_and_round_trips(built, name, tmp_path):
    g = import_onnx(built[name])
    x = _uniform(g)
    batch_one = name != "gemm_t0" and name != "gemm_t1"  # only the Gemm models have a symbolic batch
    ref = run_onnxruntime(str(built[name]), "x", x, batch_one=batch_one)
    ours = _run(g, x)
    assert np.abs(ours - ref).max() <= 1e-5
    out = tmp_path / f"{name}.onnx"
    export_onnx(g, out)
    g2 = import_onnx(out)
    assert np.abs(_run(g2, x) - ref).max() <= 1e-5
    assert (g2.input_spec.layout, g2.input_spec.normalization) == (g.input_spec.layout, g.input_spec.normalization)


@pytest.mark.parametrize("trans_b,alpha,beta", [(0, 0.5, 2.0), (1, 1.5, 0.5)])
def test_gemm_attributes_fold_into_linear(tmp_path, trans_b, alpha, beta):
    import onnx
    from onnx import numpy_helper

    path = B.gemm(tmp_path, trans_b=trans_b, alpha=alpha, beta=beta)
    inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    g = import_onnx(path)
    assert _ops(g) == ["Linear", "ReLU", "Linear"]
    fc1 = g.nodes["fc1"]
    w = inits["fc1.w"] if trans_b else inits["fc1.w"].T
    assert np.allclose(fc1.weight.detach().numpy(), alpha * w)
    assert np.allclose(fc1.bias.detach().numpy(), beta * inits["fc1.b"])
    assert fc1.onnx_name == "fc1"


def test_matmul_add_becomes_linear_with_bias(built):
    g = import_onnx(built["matmul_add"])
    assert _ops(g) == ["Linear", "Tanh", "Linear"]
    assert all(float(n.bias.detach().abs().sum()) > 0 for _, n, _ in g if isinstance(n, Linear))
    assert [n.onnx_name for _, n, _ in g][0] == "mm1+add1"


def test_conv_batchnorm_maxpool(built):
    g = import_onnx(built["conv_bn"])
    assert _ops(g) == ["Conv2d", "BatchNorm", "ReLU", "MaxPool", "Flatten", "Linear"]
    assert g.nodes["bn1"].eps == pytest.approx(1e-3)
    assert g.input_spec.layout == "NCHW"


def test_in_graph_sub_div_normalisation(built):
    g = import_onnx(built["sub_div"])
    assert _ops(g) == ["Normalize", "Flatten", "Linear"]  # Constant nodes folded, Sub+Div merged
    spec = g.input_spec
    assert spec.normalization == "in-graph"
    assert np.allclose(spec.mean, B.MEAN) and np.allclose(spec.std, B.STD)
    with pytest.raises(BadInputError, match="normalise twice"):
        import_onnx(built["sub_div"], mean=[0.5], std=[0.5])


def test_nhwc_transpose_reshape_and_asymmetric_conv_pads(built):
    g = import_onnx(built["nhwc"])
    assert g.input_spec.layout == "NHWC" and g.input_spec.shape == (6, 6, 3)
    assert _ops(g) == ["Transpose", "Pad", "Conv2d", "ReLU", "Flatten", "Linear"]
    assert g.nodes["to_nchw"].perm == (2, 0, 1)


def test_residual_pad_pools_activations_and_removed_ops(built):
    g = import_onnx(built["residual_pool"])
    assert _ops(g) == ["Normalize", "Conv2d", "ReLU", "Conv2d", "Add", "ReLU", "Pad", "AveragePool", "Sigmoid",
                       "Flatten", "Linear", "Tanh"]  # Dropout and Identity gone, Mul+Add folded
    assert g.edges["residual"] == ("conv2", "relu1")
    assert g.nodes["pad1"].pads == (1, 0, 1, 0)
    assert g.input_spec.normalization == "in-graph"
    assert g.input_spec.mean == pytest.approx((0.5,)) and g.input_spec.std == pytest.approx((0.5,))


def test_prepended_normalisation_on_synthetic(built):
    g = import_onnx(built["conv_bn"], mean=[0.2, 0.4], std=[0.5, 0.25])
    assert _ops(g)[0] == "Normalize" and g.input_spec.normalization == "prepended"
    x = _uniform(g)
    z = ((x - np.array([0.2, 0.4], np.float32).reshape(2, 1, 1)) / np.array([0.5, 0.25], np.float32).reshape(2, 1, 1))
    ref = run_onnxruntime(str(built["conv_bn"]), "x", z.astype(np.float32), batch_one=True)
    assert np.abs(_run(g, x) - ref).max() <= 1e-5


@pytest.mark.parametrize("mean,std,msg", [([0.1, 0.2, 0.3], [1, 1, 1], "1 or 2 values"),
                                          ([0.1], [0.0], "positive"),
                                          ([0.1], None, "together"),
                                          ([float("nan")], [1.0], "finite")])
def test_bad_mean_std(built, mean, std, msg):
    with pytest.raises(BadInputError, match=msg):
        import_onnx(built["conv_bn"], mean=mean, std=std)


def test_gemm_trans_a_is_unsupported(tmp_path):
    with pytest.raises(UnsupportedOpError, match=r"Gemm with transA=1.*node 'gemm_ta'") as info:
        import_onnx(B.gemm_trans_a(tmp_path))
    assert (info.value.op, info.value.node) == ("Gemm", "gemm_ta")


def test_no_check_leaves_parity_unset(built):
    g = import_onnx(built["conv_bn"], check=False)
    assert g.meta["ort_max_abs_diff"] is None
    assert g.meta["onnx_input_shape"] == [1, 2, 8, 8]
