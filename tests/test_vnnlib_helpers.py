"""Builders shared by the VNN-LIB tests: tiny ONNX models and queries written to a folder (no tests here)."""
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper


def save_model(path, nodes, inputs, outputs, inits=(), opset=18):
    """inputs/outputs: [(name, shape)] float32; inits: [(name, array)]."""
    g = h.make_graph(nodes, Path(path).stem, [h.make_tensor_value_info(n, T.FLOAT, s) for n, s in inputs],
                     [h.make_tensor_value_info(n, T.FLOAT, s) for n, s in outputs],
                     initializer=[numpy_helper.from_array(np.asarray(v), n) for n, v in inits])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", opset)])
    m.ir_version = 10 if opset >= 18 else 8
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return Path(path)


def relu_net(path, w1=((1.0, -1.0), (0.5, 1.0)), b1=(0.0, -0.5), w2=((1.0, -2.0),), b2=(0.25,),
             in_shape=(1, 2)):
    """y = W2 relu(W1 x + b1) + b2 with MatMul/Add (x: ``in_shape``, flattened to (1, n))."""
    w1, w2 = np.asarray(w1, np.float32), np.asarray(w2, np.float32)
    n_in = w1.shape[1]
    nodes = [h.make_node("Reshape", ["x", "s"], ["xf"]), h.make_node("MatMul", ["xf", "w1t"], ["a"]),
             h.make_node("Add", ["a", "b1"], ["h"]), h.make_node("Relu", ["h"], ["r"]),
             h.make_node("MatMul", ["r", "w2t"], ["o"]), h.make_node("Add", ["o", "b2"], ["y"])]
    inits = [("s", np.array([1, n_in], np.int64)), ("w1t", w1.T.copy()), ("b1", np.asarray(b1, np.float32)),
             ("w2t", w2.T.copy()), ("b2", np.asarray(b2, np.float32))]
    return save_model(path, nodes, [("x", list(in_shape))], [("y", [1, w2.shape[0]])], inits)


def random_mlp(path, widths, seed=0, in_shape=None):
    """Gemm/Relu MLP with a batch axis: x (1, widths[0]) -> ... -> y (1, widths[-1])."""
    r = np.random.default_rng(seed)
    nodes, inits, prev = [], [], "x"
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        inits += [(f"w{i}", (r.standard_normal((b, a)) / np.sqrt(a)).astype(np.float32)),
                  (f"b{i}", (0.1 * r.standard_normal(b)).astype(np.float32))]
        out = "y" if i == len(widths) - 2 else f"g{i}"
        nodes.append(h.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [out], transB=1))
        if out != "y":
            nodes.append(h.make_node("Relu", [out], [f"r{i}"]))
            prev = f"r{i}"
    return save_model(path, nodes, [("x", [1, widths[0]])], [("y", [1, widths[-1]])], inits, opset=13)


def lit(x) -> str:
    """A 2.0 float literal (no exponent, always a '.')."""
    from decimal import Decimal

    s = format(Decimal(repr(float(x))), "f")
    return s if "." in s else s + ".0"


def write(path, text):
    Path(path).write_text(text)
    return Path(path)


def box_query(n_in, lo, hi, out_atoms, n_out=1, dtype="float32", x_shape=None, y_shape=None, net="N"):
    """A 2.0 query: X in [lo, hi] elementwise, then the given output assertion text."""
    x_shape = x_shape or [1, n_in]
    y_shape = y_shape or [1, n_out]
    idx = lambda i, shape: ",".join(str(v) for v in np.unravel_index(i, shape))
    lines = ["(vnnlib-version <2.0>)",
             f"(declare-network {net}",
             f"    (declare-input X {dtype} [{','.join(map(str, x_shape))}])",
             f"    (declare-output Y {dtype} [{','.join(map(str, y_shape))}]))"]
    lo = np.broadcast_to(lo, (n_in,))
    hi = np.broadcast_to(hi, (n_in,))
    for i in range(n_in):
        lines.append(f"(assert (>= X[{idx(i, x_shape)}] {lit(lo[i])}))")
        lines.append(f"(assert (<= X[{idx(i, x_shape)}] {lit(hi[i])}))")
    lines.append(out_atoms)
    return "\n".join(lines) + "\n"


def test_api_verify_answers_timed_out_by_the_hard_stop(monkeypatch):
    """The Python API honours the timeout like the CLI: a search stuck in one long computation is answered
    timed-out at timeout − max(0.5 s, 5 %), not when it finishes."""
    import time

    import toolkit.vnnlib as V
    from toolkit.vnnlib import query, solver

    monkeypatch.setattr(query, "load_query", lambda path, nets: object())
    monkeypatch.setattr(solver, "decide", lambda q, deadline, seed=0, **kw: time.sleep(5))
    t = time.monotonic()
    assert V.verify("q.vnnlib", timeout=1.0) == ("timed-out", None)
    assert 0.4 <= time.monotonic() - t <= 1.0
