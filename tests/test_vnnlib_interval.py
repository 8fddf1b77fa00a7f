"""Soundness of the ONNX interval engine, op by op: onnxruntime's float32 values at points of a random box
(corners included) lie inside the float32-mode bounds, and a float64 copy of the model (a proxy for real
arithmetic) lies inside the real-mode bounds. Every op that ``supports --onnx-operators`` claims is here."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper

from toolkit.errors import BadModelError, UnsupportedOpError
from toolkit.vnnlib.capabilities import OPERATORS
from toolkit.vnnlib.interval import SUPPORTED_OPS, IntervalNet
from toolkit.vnnlib.models import OnnxModel

F = T.FLOAT


def model(nodes, inputs, outputs, inits=(), opset=18, elem=F):
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info(n, elem, s) for n, s in inputs],
                     [h.make_tensor_value_info(n, t if t is not None else elem, None) for n, t in outputs],
                     initializer=[numpy_helper.from_array(np.asarray(v), n) for n, v in inits])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", opset)])
    m.ir_version = 8 if opset < 18 else 10
    return m


def as_double(m):
    """The same model in float64 (initializers and float casts): a proxy for real arithmetic."""
    d = onnx.ModelProto()
    d.CopyFrom(m)
    for v in list(d.graph.input) + list(d.graph.output):
        if v.type.tensor_type.elem_type == F:
            v.type.tensor_type.elem_type = T.DOUBLE
    for i, init in enumerate(d.graph.initializer):
        a = numpy_helper.to_array(init)
        if a.dtype == np.float32:
            d.graph.initializer[i].CopyFrom(numpy_helper.from_array(a.astype(np.float64), init.name))
    for node in d.graph.node:
        for a in node.attribute:
            if a.name == "to" and a.i == F:
                a.i = T.DOUBLE
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == F:
                a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float64), a.t.name))
    return d


def check_enclosure(m, boxes, n_points=40, seed=0, real=True):
    """boxes: [(lo, hi)] per graph input. Assert onnxruntime's outputs are inside the bounds."""
    rng = np.random.default_rng(seed)
    path = _tmp_model(m)
    om = OnnxModel(path)
    double = OnnxModel(_tmp_model(as_double(m)))
    try:
        double.session()
        real_tol = 1e-12
    except BadModelError:  # onnxruntime lacks some float64 kernels: compare with float32, loosely
        double, real_tol = om, 1e-5
    for mode, ort_model in (("float32", om), ("real", double if real else None)):
        if ort_model is None:
            continue
        net = IntervalNet(om, mode)
        los = [np.asarray(lo, np.float32).astype(np.float64) for lo, _ in boxes]
        his = [np.asarray(hi, np.float32).astype(np.float64) for _, hi in boxes]
        out = net.run(los, his)
        pts = [los, his] + [[(lo + (hi - lo) * rng.random(lo.shape)).astype(np.float32).astype(np.float64)
                             for lo, hi in zip(los, his)] for _ in range(n_points)]
        for xs in pts:
            vals = ort_model.run(xs)
            for name, v in vals.items():
                b = out[name]
                v = np.asarray(v, np.float64).reshape(b.lo.shape)
                tol = real_tol * (1 + np.abs(v)) if mode == "real" else 0.0
                ok = ((b.lo - tol <= v) & (v <= b.hi + tol)) | (np.isnan(v) & (b.lo == -np.inf) & (b.hi == np.inf))
                assert ok.all(), (mode, name, v[~ok], b.lo[~ok], b.hi[~ok])
    return out


_TMP = {}


def _tmp_model(m):
    import tempfile
    from pathlib import Path

    d = _TMP.setdefault("dir", Path(tempfile.mkdtemp(prefix="tc_vnn_")))
    p = d / f"m{len(_TMP)}.onnx"
    _TMP[p] = True
    onnx.save(m, p)
    return p


def box(shape, lo=-2.0, hi=2.0, seed=0):
    rng = np.random.default_rng(seed)
    a, b = rng.uniform(lo, hi, shape), rng.uniform(lo, hi, shape)
    return np.minimum(a, b), np.maximum(a, b)


def unary(op, shape=(2, 3), lo=-2.0, hi=2.0, **attrs):
    return model([h.make_node(op, ["x"], ["y"], **attrs)], [("x", list(shape))], [("y", None)]), \
        [box(shape, lo, hi)]


def binary_const(op, c, shape=(2, 3), lo=-2.0, hi=2.0, out_type=None):
    return model([h.make_node(op, ["x", "c"], ["y"])], [("x", list(shape))], [("y", out_type)],
                 [("c", _const(c))]), [box(shape, lo, hi)]


def _const(c):
    c = np.asarray(c)
    return c if c.dtype == np.int64 else c.astype(np.float32)


def binary_var(op, shape=(2, 3), lo=-2.0, hi=2.0):
    return model([h.make_node(op, ["x", "z"], ["y"])], [("x", list(shape)), ("z", list(shape))], [("y", None)]), \
        [box(shape, lo, hi, 1), box(shape, lo, hi, 2)]


CASES = {
    "Add": lambda: binary_var("Add"),
    "Sub": lambda: binary_const("Sub", [[0.5, -1.0, 2.0]]),
    "Mul": lambda: binary_var("Mul"),
    "Div": lambda: binary_var("Div", lo=0.5, hi=3.0),
    "Div-straddle": lambda: binary_var("Div"),
    "Mul-square": lambda: (model([h.make_node("Mul", ["x", "x"], ["y"])], [("x", [4])], [("y", None)]),
                           [box((4,))]),
    "Neg": lambda: unary("Neg"), "Abs": lambda: unary("Abs"), "Relu": lambda: unary("Relu"),
    "Sigmoid": lambda: unary("Sigmoid", lo=-20, hi=20), "Tanh": lambda: unary("Tanh", lo=-5, hi=5),
    "Exp": lambda: unary("Exp", lo=-30, hi=30), "Sqrt": lambda: unary("Sqrt", lo=0.0, hi=9.0),
    "Sqrt-neg": lambda: unary("Sqrt", lo=-1.0, hi=4.0),
    "LeakyRelu": lambda: unary("LeakyRelu", alpha=0.1), "Floor": lambda: unary("Floor"),
    "Ceil": lambda: unary("Ceil"), "Identity": lambda: unary("Identity"),
    "Dropout": lambda: unary("Dropout"),
    "Pow2": lambda: binary_const("Pow", np.float32(2.0)),
    "Pow3": lambda: binary_const("Pow", np.float32(3.0)),
    "Pow0": lambda: binary_const("Pow", np.float32(0.0)),
    "Pow-half": lambda: binary_const("Pow", np.float32(-0.5), lo=0.5, hi=4.0),
    "Pow-tensor": lambda: binary_const("Pow", np.array([[2.0, 0.5, 3.0]], np.float32), lo=0.1, hi=3.0),
    "Pow-base": lambda: (model([h.make_node("Pow", ["c", "x"], ["y"])], [("x", [3])], [("y", None)],
                               [("c", np.float32(2.0))]), [box((3,), -3, 3)]),
    "MatMul": lambda: binary_const("MatMul", np.random.default_rng(0).normal(size=(3, 4)), shape=(2, 3)),
    "Gemm": lambda: (model([h.make_node("Gemm", ["x", "w", "b"], ["y"], alpha=0.5, beta=-2.0, transB=1)],
                           [("x", [2, 3])], [("y", None)],
                           [("w", np.random.default_rng(1).normal(size=(4, 3)).astype(np.float32)),
                            ("b", np.array([1.0, -1.0, 0.5, 3.0], np.float32))]), [box((2, 3))]),
    "Conv": lambda: (model([h.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 0, 1, 2], strides=[2, 1],
                                        dilations=[1, 2], group=2)],
                           [("x", [1, 2, 5, 5])], [("y", None)],
                           [("w", np.random.default_rng(2).normal(size=(4, 1, 3, 2)).astype(np.float32)),
                            ("b", np.array([0.1, -0.2, 0.3, 0.0], np.float32))]), [box((1, 2, 5, 5))]),
    "Conv1d-same": lambda: (model([h.make_node("Conv", ["x", "w"], ["y"], auto_pad="SAME_UPPER")],
                                  [("x", [1, 1, 5])], [("y", None)],
                                  [("w", np.ones((1, 1, 2), np.float32))]), [box((1, 1, 5))]),
    "BatchNormalization": lambda: (
        model([h.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], epsilon=1e-3)],
              [("x", [1, 2, 2, 2])], [("y", None)],
              [("s", np.array([2.0, -0.5], np.float32)), ("b", np.array([0.1, 1.0], np.float32)),
               ("m", np.array([0.3, -1.0], np.float32)), ("v", np.array([0.5, 4.0], np.float32))]),
        [box((1, 2, 2, 2))]),
    "MaxPool": lambda: unary("MaxPool", (1, 1, 5, 5), kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 0, 0],
                             ceil_mode=1),
    "MaxPool-dil": lambda: unary("MaxPool", (1, 2, 5, 5), kernel_shape=[2, 2], dilations=[2, 2]),
    "AveragePool": lambda: unary("AveragePool", (1, 1, 5, 5), kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                                 count_include_pad=0),
    "GlobalAveragePool": lambda: unary("GlobalAveragePool", (1, 3, 4, 4)),
    "GlobalMaxPool": lambda: unary("GlobalMaxPool", (1, 3, 4, 4)),
    "ReduceSum": lambda: (model([h.make_node("ReduceSum", ["x", "a"], ["y"], keepdims=0)], [("x", [2, 3])],
                                [("y", None)], [("a", np.array([1], np.int64))]), [box((2, 3))]),
    "ReduceSum-all": lambda: unary("ReduceSum"),
    "ReduceMean": lambda: (model([h.make_node("ReduceMean", ["x", "a"], ["y"])], [("x", [2, 3])],
                                 [("y", None)], [("a", np.array([0], np.int64))]), [box((2, 3))]),
    "ReduceMax": lambda: unary("ReduceMax", keepdims=0), "ReduceMin": lambda: unary("ReduceMin"),
    "Softmax": lambda: unary("Softmax", (2, 4), lo=-10, hi=10),
    "Softmax-axis0": lambda: unary("Softmax", (3, 2), lo=-10, hi=10, axis=0),
    "Softmax-opset11": lambda: (model([h.make_node("Softmax", ["x"], ["y"], axis=1)], [("x", [1, 2, 3])],
                                      [("y", None)], opset=11), [box((1, 2, 3), -5, 5)]),
    "Reshape": lambda: binary_const("Reshape", np.array([3, 2], np.int64)),
    "Flatten": lambda: unary("Flatten", (2, 3, 2), axis=2), "Transpose": lambda: unary("Transpose", perm=[1, 0]),
    "Squeeze": lambda: (model([h.make_node("Squeeze", ["x", "a"], ["y"])], [("x", [1, 3])], [("y", None)],
                              [("a", np.array([0], np.int64))]), [box((1, 3))]),
    "Unsqueeze": lambda: binary_const("Unsqueeze", np.array([1], np.int64)),
    "Concat": lambda: (model([h.make_node("Concat", ["x", "c"], ["y"], axis=0)], [("x", [2])], [("y", None)],
                             [("c", np.array([7.0], np.float32))]), [box((2,))]),
    "Slice": lambda: (model([h.make_node("Slice", ["x", "s", "e", "a", "st"], ["y"])], [("x", [5])],
                            [("y", None)], [("s", np.array([4], np.int64)), ("e", np.array([0], np.int64)),
                                            ("a", np.array([0], np.int64)), ("st", np.array([-2], np.int64))]),
                      [box((5,))]),
    "Gather": lambda: (model([h.make_node("Gather", ["x", "i"], ["y"], axis=1)], [("x", [2, 3])],
                             [("y", None)], [("i", np.array([2, 0], np.int64))]), [box((2, 3))]),
    "Split": lambda: (model([h.make_node("Split", ["x", "s"], ["a", "b"], axis=1)], [("x", [2, 3])],
                            [("a", None), ("b", None)], [("s", np.array([1, 2], np.int64))]), [box((2, 3))]),
    "Expand": lambda: binary_const("Expand", np.array([2, 3], np.int64), shape=(2, 1)),
    "Tile": lambda: binary_const("Tile", np.array([2, 1], np.int64)),
    "Pad": lambda: (model([h.make_node("Pad", ["x", "p", "v"], ["y"])], [("x", [2, 3])], [("y", None)],
                          [("p", np.array([1, 0, 0, 2], np.int64)), ("v", np.float32(-4.0))]), [box((2, 3))]),
    "Pad-reflect": lambda: (model([h.make_node("Pad", ["x", "p"], ["y"], mode="reflect")], [("x", [2, 3])],
                                  [("y", None)], [("p", np.array([0, 1, 0, 1], np.int64))]), [box((2, 3))]),
    "Clip": lambda: (model([h.make_node("Clip", ["x", "a", "b"], ["y"])], [("x", [4])], [("y", None)],
                           [("a", np.float32(-0.5)), ("b", np.float32(1.0))]), [box((4,))]),
    "Cast-int": lambda: (model([h.make_node("Cast", ["x"], ["i"], to=T.INT64),
                                h.make_node("Cast", ["i"], ["y"], to=F)], [("x", [4])], [("y", None)]),
                         [box((4,), -3, 3)]),
    "Cast-bool": lambda: (model([h.make_node("Cast", ["x"], ["i"], to=T.BOOL),
                                 h.make_node("Cast", ["i"], ["y"], to=F)], [("x", [3])], [("y", None)]),
                          [(np.array([0.0, 0.5, -1.0]), np.array([0.0, 1.0, 1.0]))]),
    "Equal": lambda: (model([h.make_node("Equal", ["x", "c"], ["e"]), h.make_node("Cast", ["e"], ["y"], to=F)],
                            [("x", [3])], [("y", None)], [("c", np.float32(0.0))]),
                      [(np.array([0.0, 1.0, -1.0]), np.array([0.0, 2.0, 1.0]))]),
    "Greater": lambda: _cmp("Greater"), "Less": lambda: _cmp("Less"),
    "GreaterOrEqual": lambda: _cmp("GreaterOrEqual"), "LessOrEqual": lambda: _cmp("LessOrEqual"),
    "Where": lambda: (model([h.make_node("Greater", ["x", "c"], ["g"]), h.make_node("Where", ["g", "x", "d"], ["y"])],
                            [("x", [4])], [("y", None)], [("c", np.float32(0.5)), ("d", np.float32(-3.0))]),
                      [(np.array([1.0, -1.0, 0.0, 0.6]), np.array([2.0, 0.0, 1.0, 0.7]))]),
    "Not/And/Or": lambda: (model([h.make_node("Greater", ["x", "c"], ["g"]), h.make_node("Less", ["x", "d"], ["l"]),
                                  h.make_node("And", ["g", "l"], ["a"]), h.make_node("Not", ["a"], ["n"]),
                                  h.make_node("Or", ["n", "g"], ["o"]), h.make_node("Cast", ["o"], ["y"], to=F)],
                                 [("x", [4])], [("y", None)], [("c", np.float32(0.0)), ("d", np.float32(1.0))]),
                           [(np.array([-2.0, 0.5, -0.5, 2.0]), np.array([-1.0, 0.7, 0.5, 3.0]))]),
    "Shape/ConstantOfShape/Size/Constant": lambda: (
        model([h.make_node("Shape", ["x"], ["s"]),
               h.make_node("ConstantOfShape", ["s"], ["k"], value=numpy_helper.from_array(np.array([2.5], np.float32))),
               h.make_node("Size", ["x"], ["n"]), h.make_node("Cast", ["n"], ["nf"], to=F),
               h.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.float32(-1.0))),
               h.make_node("Add", ["x", "k"], ["t"]), h.make_node("Mul", ["t", "nf"], ["u"]),
               h.make_node("Add", ["u", "c"], ["y"])], [("x", [2, 3])], [("y", None)]), [box((2, 3))]),
    # older opsets (the shared VNN-COMP models are opset 9): attributes instead of inputs
    "Pad-opset9": lambda: (model([h.make_node("Pad", ["x"], ["y"], pads=[0, 1, 1, 0], value=2.0)],
                                 [("x", [2, 3])], [("y", None)], opset=9), [box((2, 3))]),
    "Slice-opset9": lambda: (model([h.make_node("Slice", ["x"], ["y"], starts=[1], ends=[3], axes=[1])],
                                   [("x", [2, 4])], [("y", None)], opset=9), [box((2, 4))]),
    "Unsqueeze/ReduceSum/Split-opset11": lambda: (
        model([h.make_node("Unsqueeze", ["x"], ["u"], axes=[0]),
               h.make_node("ReduceSum", ["u"], ["r"], axes=[2], keepdims=1),
               h.make_node("Split", ["x"], ["a", "b"], axis=1, split=[1, 2])],
              [("x", [2, 3])], [("r", None), ("b", None)], opset=11), [box((2, 3))]),
}


def _cmp(op):
    return (model([h.make_node(op, ["x", "c"], ["g"]), h.make_node("Cast", ["g"], ["y"], to=F)],
                  [("x", [4])], [("y", None)], [("c", np.float32(0.5))]),
            [(np.array([1.0, -1.0, 0.0, 0.5]), np.array([2.0, 0.4, 1.0, 0.5]))])


@pytest.mark.parametrize("case", sorted(CASES))
def test_op_enclosure(case):
    m, boxes = CASES[case]()
    check_enclosure(m, boxes)


def test_every_claimed_op_has_a_case():
    covered = set()
    for case in CASES:
        m, _ = CASES[case]()
        covered |= {n.op_type for n in m.graph.node}
    assert set(OPERATORS) == set(SUPPORTED_OPS)
    assert set(OPERATORS) <= covered, sorted(set(OPERATORS) - covered)


def test_exact_clamps_and_folds():
    """Exact boundaries survive: ReLU >= 0, sigmoid in [0, 1] (real mode), x**0 == 1, constant folding."""
    m, b = unary("Relu", (3,), -5, 5)
    out = check_enclosure(m, b)
    assert out["y"].lo.min() >= 0.0
    net = IntervalNet(OnnxModel(_tmp_model(unary("Sigmoid", (1,))[0])), "real")
    o = net.run([np.array([-2000.0])], [np.array([2000.0])])["y"]
    assert o.lo[0] == 0.0 and o.hi[0] == 1.0
    m, b = binary_const("Pow", np.float32(0.0))
    assert np.all(check_enclosure(m, b)["y"].lo == 1.0)


def test_unsupported_op_names_the_op():
    m = model([h.make_node("Sin", ["x"], ["y"])], [("x", [2])], [("y", None)])
    with pytest.raises(UnsupportedOpError, match="Sin"):
        IntervalNet(OnnxModel(_tmp_model(m)))


def test_directed_rounding_is_tight_and_sound():
    """+ − × ÷ round outward by one ulp only when inexact; float32 mode lands on the float32 grid."""
    from fractions import Fraction

    m = model([h.make_node("Add", ["x", "c"], ["s"]), h.make_node("Mul", ["s", "c"], ["y"])], [("x", [2])],
              [("y", None)], [("c", np.float32(0.2))])
    om = OnnxModel(_tmp_model(m))
    x = np.array([0.1, 1.0], np.float32).astype(np.float64)
    real = IntervalNet(om, "real").run([x], [x])["y"]
    c = Fraction(float(np.float32(0.2)))
    exact = [(Fraction(v) + c) * c for v in x]
    for i in range(2):
        assert Fraction(real.lo[i]) <= exact[i] <= Fraction(real.hi[i])
        assert real.hi[i] - real.lo[i] <= 4 * np.spacing(abs(real.hi[i]))
    f32 = IntervalNet(om, "float32").run([x], [x])["y"]
    ort = om.run([x.astype(np.float32)])["y"].astype(np.float64)
    assert np.all(f32.lo <= ort) and np.all(ort <= f32.hi)
    assert np.all(f32.lo.astype(np.float32) == f32.lo) and np.all(f32.hi.astype(np.float32) == f32.hi)
    assert np.all(f32.hi - f32.lo <= 4 * np.spacing(np.abs(f32.hi).astype(np.float32)))  # two roundings
    one = model([h.make_node("Add", ["x", "z"], ["y"])], [("x", [1])], [("y", None)], [("z", np.float32(0.0))])
    for mode in ("real", "float32"):
        b = IntervalNet(OnnxModel(_tmp_model(one)), mode).run([np.array([1.0])], [np.array([1.0])])["y"]
        assert b.lo[0] == b.hi[0] == 1.0
