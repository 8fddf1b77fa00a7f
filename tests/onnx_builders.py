"""Small synthetic ONNX models built with ``onnx.helper`` for the import/export tests.

Every builder writes ``<tmp>/<name>.onnx`` and returns its path. Weights come from a seeded generator
and are scaled so that logits stay O(1).
"""
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 13


def _rng(seed=0):
    return np.random.default_rng(seed)


def _w(rng, *shape, scale=None):
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
    return (rng.standard_normal(shape) * (scale or 1.0 / np.sqrt(fan_in))).astype(np.float32)


def save(path, nodes, in_shape, out_shape, inits, opset=OPSET, in_name="x", out_name="y"):
    graph = helper.make_graph(
        nodes, Path(path).stem,
        [helper.make_tensor_value_info(in_name, TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, out_shape)],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return Path(path)


def gemm(tmp, trans_b=1, alpha=1.0, beta=1.0, seed=0):
    """Gemm(transB, alpha, beta) -> Relu -> Gemm with a (1, out) bias; symbolic batch 'N'."""
    r = _rng(seed)
    b1 = _w(r, 5, 6) if trans_b else _w(r, 6, 5).copy()
    inits = {"fc1.w": b1, "fc1.b": _w(r, 5, scale=0.1), "fc2.w": _w(r, 3, 5), "fc2.b": _w(r, 1, 3, scale=0.1)}
    nodes = [helper.make_node("Gemm", ["x", "fc1.w", "fc1.b"], ["h"], name="fc1", transB=trans_b,
                              alpha=alpha, beta=beta),
             helper.make_node("Relu", ["h"], ["hr"], name="relu1"),
             helper.make_node("Gemm", ["hr", "fc2.w", "fc2.b"], ["y"], name="fc2", transB=1)]
    return save(Path(tmp) / f"gemm_t{trans_b}.onnx", nodes, ["N", 6], ["N", 3], inits)


def gemm_trans_a(tmp):
    r = _rng(1)
    inits = {"w": _w(r, 1, 3)}
    nodes = [helper.make_node("Gemm", ["x", "w"], ["y"], name="gemm_ta", transA=1)]
    return save(Path(tmp) / "gemm_ta.onnx", nodes, [1, 6], [6, 3], inits)


def matmul_add(tmp):
    """MatMul + Add (bias) -> Tanh -> MatMul + Add: the Adds fold into Linear biases."""
    r = _rng(2)
    inits = {"w1": _w(r, 5, 7), "b1": _w(r, 7, scale=0.1), "w2": _w(r, 7, 3), "b2": _w(r, 3, scale=0.1)}
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["m1"], name="mm1"),
             helper.make_node("Add", ["m1", "b1"], ["a1"], name="add1"),
             helper.make_node("Tanh", ["a1"], ["t1"], name="tanh1"),
             helper.make_node("MatMul", ["t1", "w2"], ["m2"], name="mm2"),
             helper.make_node("Add", ["b2", "m2"], ["y"], name="add2")]
    return save(Path(tmp) / "matmul_add.onnx", nodes, [1, 5], [1, 3], inits)


def conv_bn(tmp):
    """Conv -> BatchNormalization -> Relu -> MaxPool -> Flatten -> Gemm."""
    r = _rng(3)
    inits = {"cw": _w(r, 4, 2, 3, 3), "cb": _w(r, 4, scale=0.1),
             "bn.s": (1 + 0.2 * r.standard_normal(4)).astype(np.float32),
             "bn.b": _w(r, 4, scale=0.1), "bn.m": _w(r, 4, scale=0.1),
             "bn.v": (0.5 + r.uniform(size=4)).astype(np.float32),
             "fw": _w(r, 10, 64), "fb": _w(r, 10, scale=0.1)}
    nodes = [helper.make_node("Conv", ["x", "cw", "cb"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "bn.s", "bn.b", "bn.m", "bn.v"], ["n"], name="bn1",
                              epsilon=1e-3),
             helper.make_node("Relu", ["n"], ["r"], name="relu1"),
             helper.make_node("MaxPool", ["r"], ["p"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Flatten", ["p"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], name="fc", transB=1)]
    return save(Path(tmp) / "conv_bn.onnx", nodes, [1, 2, 8, 8], [1, 10], inits)


MEAN, STD = [0.1, 0.2, 0.3], [0.5, 0.25, 0.2]


def sub_div(tmp):
    """In-graph normalisation as VNN-COMP files have it: Constant -> Sub, Constant -> Div."""
    r = _rng(4)
    mean = np.array(MEAN, np.float32).reshape(1, 3, 1, 1)
    std = np.array(STD, np.float32).reshape(1, 3, 1, 1)
    inits = {"fw": _w(r, 4, 48), "fb": _w(r, 4, scale=0.1)}
    nodes = [helper.make_node("Constant", [], ["mean"], name="c_mean", value=numpy_helper.from_array(mean)),
             helper.make_node("Sub", ["x", "mean"], ["s"], name="sub_mean"),
             helper.make_node("Constant", [], ["std"], name="c_std", value=numpy_helper.from_array(std)),
             helper.make_node("Div", ["s", "std"], ["d"], name="div_std"),
             helper.make_node("Flatten", ["d"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], name="fc", transB=1)]
    return save(Path(tmp) / "sub_div.onnx", nodes, [1, 3, 4, 4], [1, 4], inits)


def nhwc(tmp):
    """NHWC input: Transpose(0,3,1,2) -> Conv (asymmetric pads) -> Relu -> Reshape([1,-1]) -> Gemm."""
    r = _rng(5)
    inits = {"cw": _w(r, 4, 3, 3, 3), "cb": _w(r, 4, scale=0.1), "shape": np.array([1, -1], np.int64),
             "fw": _w(r, 5, 4 * 5 * 5), "fb": _w(r, 5, scale=0.1)}
    nodes = [helper.make_node("Transpose", ["x"], ["t"], name="to_nchw", perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["t", "cw", "cb"], ["c"], name="conv1", pads=[1, 0, 0, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu1"),
             helper.make_node("Reshape", ["r", "shape"], ["f"], name="reshape"),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], name="fc", transB=1)]
    return save(Path(tmp) / "nhwc.onnx", nodes, [1, 6, 6, 3], [1, 5], inits)


def residual_pool(tmp):
    """Conv -> Relu -> Conv -> residual Add -> Relu -> Pad -> AveragePool -> Sigmoid -> Dropout ->
    Identity -> Flatten -> Gemm -> Tanh, with Mul/Add-by-constant in front (folded to one Normalize)."""
    r = _rng(6)
    inits = {"scale": np.array(2.0, np.float32), "shift": np.array([-1.0], np.float32),
             "c1w": _w(r, 3, 2, 3, 3), "c1b": _w(r, 3, scale=0.1),
             "c2w": _w(r, 3, 3, 3, 3), "c2b": _w(r, 3, scale=0.1),
             "pads": np.array([0, 0, 1, 1, 0, 0, 0, 0], np.int64),
             "fw": _w(r, 6, 3 * 4 * 4), "fb": _w(r, 6, scale=0.1)}
    nodes = [helper.make_node("Mul", ["x", "scale"], ["xs"], name="mul_in"),
             helper.make_node("Add", ["xs", "shift"], ["xn"], name="add_in"),
             helper.make_node("Conv", ["xn", "c1w", "c1b"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "c2w", "c2b"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c2", "r1"], ["a"], name="residual"),
             helper.make_node("Relu", ["a"], ["r2"], name="relu2"),
             helper.make_node("Pad", ["r2", "pads"], ["pd"], name="pad1", mode="constant"),
             helper.make_node("AveragePool", ["pd"], ["ap"], name="avgpool", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Sigmoid", ["ap"], ["sg"], name="sig"),
             helper.make_node("Dropout", ["sg"], ["dr"], name="drop"),
             helper.make_node("Identity", ["dr"], ["id"], name="ident"),
             helper.make_node("Flatten", ["id"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["g"], name="fc", transB=1),
             helper.make_node("Tanh", ["g"], ["y"], name="tanh_out")]
    return save(Path(tmp) / "residual_pool.onnx", nodes, [1, 2, 7, 7], [1, 6], inits)


def resize(tmp):
    """An unsupported op (Resize, node 'upsample_1') between supported ones."""
    r = _rng(7)
    inits = {"scales": np.array([1, 1, 2, 2], np.float32), "fw": _w(r, 3, 64), "fb": _w(r, 3, scale=0.1)}
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu0"),
             helper.make_node("Resize", ["r", "", "scales"], ["u"], name="upsample_1", mode="nearest"),
             helper.make_node("Flatten", ["u"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], name="fc", transB=1)]
    return save(Path(tmp) / "resize.onnx", nodes, [1, 1, 4, 4], [1, 3], inits)


def nan_weights(tmp):
    """A Gemm whose weight initializer 'fc1.weight' holds a NaN."""
    r = _rng(8)
    w = _w(r, 3, 4)
    w[1, 2] = np.nan
    inits = {"fc1.weight": w, "fc1.bias": _w(r, 3, scale=0.1)}
    nodes = [helper.make_node("Gemm", ["x", "fc1.weight", "fc1.bias"], ["y"], name="fc1", transB=1)]
    return save(Path(tmp) / "nan_weights.onnx", nodes, [1, 4], [1, 3], inits)


#: the synthetic models that must import (name -> builder(tmp))
GOOD = {
    "gemm_t0": lambda t: gemm(t, trans_b=0, alpha=0.5, beta=2.0),
    "gemm_t1": lambda t: gemm(t, trans_b=1, alpha=1.5, beta=0.5),
    "matmul_add": matmul_add,
    "conv_bn": conv_bn,
    "sub_div": sub_div,
    "nhwc": nhwc,
    "residual_pool": residual_pool,
}
