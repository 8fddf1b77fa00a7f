"""Deciding queries: verdicts on hand-made cases, the float policy, and soundness fuzzing of both engines
(never ``unsat`` where onnxruntime finds a point satisfying the query, never ``sat`` without one)."""
import numpy as np
import pytest
from onnx import helper as h

from test_vnnlib_helpers import box_query, lit, random_mlp, relu_net, save_model, write
from toolkit.vnnlib.budget import Deadline
from toolkit.vnnlib.models import OnnxModel
from toolkit.vnnlib.query import load_query
from toolkit.vnnlib.solver import decide


def solve(tmp_path, model, text, timeout=10.0, route=None, name="N"):
    q = load_query(write(tmp_path / "q.vnnlib", text), [f"{name}={model}"])
    return decide(q, Deadline(timeout, margin=0.0), force_route=route), q


def check_assignment(out, q):
    """The printed assignment really satisfies the query (recomputed here with onnxruntime)."""
    from fractions import Fraction

    a = out.assignment
    vec = []
    for n in q.nets:
        xs = [a.value(v) for v in n.inputs]
        ys = n.model.run(xs, [hv.onnx_name for hv in n.hidden])
        for v in n.inputs:
            vec += [Fraction(float(t)) for t in np.ravel(a.value(v))]
        for v in n.hidden:
            assert np.array_equal(np.ravel(ys[v.onnx_name]), np.ravel(a.value(v)))
            vec += [Fraction(float(t)) for t in np.ravel(a.value(v))]
        for v, info in zip(n.outputs, n.model.outputs):
            assert np.array_equal(np.ravel(ys[info.name]), np.ravel(a.value(v)))
            vec += [Fraction(float(t)) for t in np.ravel(a.value(v))]
    assert q.holds(vec)


# ---------------------------------------------------------------------------------------------------------
# verdicts
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("atom,verdict", [
    ("(assert (>= Y[0,0] 10.0))", "unsat"),
    ("(assert (>= Y[0,0] 0.5))", "sat"),
    ("(assert (or (>= Y[0,0] 100.0) (<= Y[0,0] -100.0)))", "unsat"),
    ("(assert (and (>= Y[0,0] 0.2) (<= Y[0,0] 0.3)))", "sat"),
])
def test_interval_engine_verdicts(tmp_path, atom, verdict):
    model = relu_net(tmp_path / "n.onnx")
    out, q = solve(tmp_path, model, box_query(2, 0.0, 1.0, atom))
    assert out.verdict == verdict
    if verdict == "sat":
        check_assignment(out, q)


def test_strict_boundary_of_relu(tmp_path):
    """relu(x) >= 0 exactly: Y < 0 is unsat, Y <= 0 is sat (at a point with relu = 0)."""
    model = save_model(tmp_path / "r.onnx", [h.make_node("Relu", ["x"], ["y"])], [("x", [1])], [("y", [1])])
    body = "(vnnlib-version <2.0>)\n(declare-network N (declare-input X float32 [1]) (declare-output Y float32 [1]))\n" \
           "(assert (>= X[0] -2.0))\n(assert (<= X[0] 3.0))\n"
    assert solve(tmp_path, model, body + "(assert (< Y[0] 0.0))\n")[0].verdict == "unsat"
    out, q = solve(tmp_path, model, body + "(assert (<= Y[0] 0.0))\n")
    assert out.verdict == "sat"
    check_assignment(out, q)


def float_trap(tmp_path):
    """y = (x + 1) - 1: 0 in float32 for tiny x, x in real arithmetic."""
    one = np.float32(1.0)
    return save_model(tmp_path / "t.onnx", [h.make_node("Add", ["x", "one"], ["a"]),
                                           h.make_node("Sub", ["a", "one"], ["y"])],
                      [("x", [1])], [("y", [1])], [("one", one)])


@pytest.mark.parametrize("dtype,atom,verdict", [
    ("float32", "(<= Y[0] 0.0)", "sat"),       # float32: 1e-8 + 1 rounds to 1
    ("real", "(<= Y[0] 0.0)", "unsat"),        # real: y = x > 0
    ("float32", "(> Y[0] 0.0)", None),         # float32 says unsat, real says sat: no definite answer allowed
])
def test_float_policy(tmp_path, dtype, atom, verdict):
    model = float_trap(tmp_path)
    text = (f"(vnnlib-version <2.0>)\n(declare-network N (declare-input X {dtype} [1]) (declare-output Y {dtype} [1]))\n"
            f"(assert (>= X[0] 0.00000001))\n(assert (<= X[0] 0.00000002))\n(assert {atom})\n")
    out, q = solve(tmp_path, model, text, timeout=3.0)
    if verdict is None:
        assert out.verdict in ("unknown", "timed-out")
    else:
        assert out.verdict == verdict
        if verdict == "sat":
            check_assignment(out, q)


def test_hidden_multi_io_and_two_networks(tmp_path):
    model = relu_net(tmp_path / "n.onnx")
    text = ("(vnnlib-version <2.0>)\n(declare-network N (declare-input X float32 [1,2]) "
            "(declare-hidden H float32 [1,2] \"h\") (declare-output Y float32 [1,1]))\n"
            "(declare-network M (equal-to N) (declare-input X2 float32 [1,2]) (declare-output Y2 float32 [1,1]))\n"
            "(assert (and (>= X[0,0] 0.0) (<= X[0,0] 1.0) (>= X[0,1] 0.0) (<= X[0,1] 1.0)))\n"
            "(assert (and (>= X2[0,0] 0.0) (<= X2[0,0] 1.0) (>= X2[0,1] 0.0) (<= X2[0,1] 1.0)))\n"
            "(assert (>= H[0,0] 0.5))\n(assert (>= (- Y2[0,0] Y[0,0]) 0.5))\n")
    out, q = solve(tmp_path, model, text)
    assert out.verdict == "sat"
    check_assignment(out, q)
    out, _ = solve(tmp_path, model, text.replace("Y[0,0]) 0.5)", "Y[0,0]) 5.0)"))
    assert out.verdict == "unsat"


def test_linear_input_constraint(tmp_path):
    model = relu_net(tmp_path / "n.onnx")
    base = box_query(2, 0.0, 1.0, "")
    assert solve(tmp_path, model, base + "(assert (>= (+ X[0,0] X[0,1]) 2.5))\n")[0].verdict == "unsat"
    out, q = solve(tmp_path, model, base + "(assert (>= (+ X[0,0] (* 2.0 X[0,1])) 2.5))\n")
    assert out.verdict == "sat"
    check_assignment(out, q)


# ---------------------------------------------------------------------------------------------------------
# soundness fuzzing against onnxruntime
# ---------------------------------------------------------------------------------------------------------
def grid_max(model: OnnxModel, lo, hi, f, n=41):
    """max of f(y) over a dense grid of the (2-D) box plus random points (onnxruntime, float32)."""
    rng = np.random.default_rng(0)
    g = np.stack(np.meshgrid(*[np.linspace(a, b, n) for a, b in zip(lo, hi)]), -1).reshape(-1, len(lo))
    pts = np.concatenate([g, lo + (hi - lo) * rng.random((500, len(lo)))])
    return max(f(model.run([p.astype(np.float32).reshape(1, -1)])["y"].ravel()) for p in pts)


@pytest.mark.parametrize("route", ["interval", "ir"])
def test_soundness_fuzz(tmp_path, route):
    decided, checked = 0, 0
    for seed in range(3):
        path = random_mlp(tmp_path / f"m{seed}.onnx", [2, 8, 8, 2], seed=seed)
        m = OnnxModel(path)
        rng = np.random.default_rng(seed)
        c = rng.uniform(-1, 1, 2)
        lo, hi = c - 0.5, c + 0.5
        top = grid_max(m, lo, hi, lambda y: y[0] - y[1])
        for t in (top + 0.05, top + 0.005, top - 0.02):
            text = box_query(2, lo, hi, f"(assert (>= Y[0,0] (+ Y[0,1] {lit(t)})))", n_out=2)
            out, q = solve(tmp_path, path, text, timeout=2.5, route=route)
            checked += 1
            if out.verdict == "unsat":
                assert t > top, f"unsat but a grid point reaches {top} >= {t} (seed {seed})"
                decided += 1
            elif out.verdict == "sat":
                check_assignment(out, q)
                decided += 1
            if t < top:
                assert out.verdict != "unsat"
    assert decided >= checked // 2, f"only {decided}/{checked} decided"


def test_relu_split_bab_soundness(tmp_path):
    """20 inputs: the IR path uses ReLU splitting with β terms. An unsat answer below a value that sampling
    attains would be a soundness bug; a threshold far above the attained values should be refuted."""
    verdicts = []
    for seed in range(2):
        path = random_mlp(tmp_path / f"b{seed}.onnx", [20, 16, 16, 2], seed=seed)
        m = OnnxModel(path)
        rng = np.random.default_rng(seed)
        c = rng.uniform(-1, 1, 20)
        lo, hi = c - 0.3, c + 0.3
        pts = np.concatenate([lo + (hi - lo) * rng.random((3000, 20)), [lo, hi, c]])
        ys = np.array([m.run([p.astype(np.float32).reshape(1, -1)])["y"].ravel() for p in pts])
        top = float(np.max(ys[:, 0] - ys[:, 1]))
        for t in (top - 0.01, top + 1.0):
            text = box_query(20, lo, hi, f"(assert (>= Y[0,0] (+ Y[0,1] {lit(t)})))", n_out=2)
            out, q = solve(tmp_path, path, text, timeout=5.0, route="ir")
            if t < top:
                assert out.verdict != "unsat"
            if out.verdict == "sat":
                check_assignment(out, q)
            verdicts.append(out.verdict)
    assert verdicts.count("unsat") >= 1 and verdicts.count("sat") >= 1, verdicts


def test_root_alpha_crown_tightens_the_bounds_branch_and_bound_starts_from(tmp_path, monkeypatch):
    """The root's α-CROWN re-bounds the intermediate layers (scope "all") inside CROWN's root bounds, the
    groups keep those bounds, and branch and bound's first domains start from them instead of CROWN's."""
    import torch

    from toolkit.vnnlib import ir_solver as S
    from toolkit.vnnlib.problem import Problem

    path = random_mlp(tmp_path / "m.onnx", [20, 16, 16, 16, 2], seed=3)
    rng = np.random.default_rng(3)
    c = rng.uniform(-1, 1, 20)
    pts = c - 0.3 + 0.6 * rng.random((200, 20))
    ys = np.array([OnnxModel(path).run([p.astype(np.float32).reshape(1, -1)])["y"].ravel() for p in pts])
    t = float(np.max(ys[:, 0] - ys[:, 1])) - 0.01   # attained: no bound can refute it, the group stays
    text = box_query(20, c - 0.3, c + 0.3, f"(assert (>= Y[0,0] (+ Y[0,1] {lit(t)})))", n_out=2)
    q = load_query(write(tmp_path / "q.vnnlib", text), [f"N={path}"])
    solver = S.IRSolver(Problem(q), Deadline(30.0, margin=0.0), np.random.default_rng(0), lambda m: None)
    solver.root("crown")
    crown = {k: v for k, v in solver._root_pre[0].items() if k in solver.needs}
    solver.root("alpha-crown", 10)
    (g,) = solver.groups
    gain = 0.0
    for key, (l, u) in crown.items():
        la, ua = g.bounds[key]
        assert (la >= l).all() and (ua <= u).all(), key
        gain = max(gain, float((la - l).max()), float((u - ua).max()))
    assert gain > 1e-6, "alpha-crown at the root tightened no intermediate bound"
    seen = []

    class FirstBatch(Exception):
        pass

    def first_batch(self, doms, *args, **kwargs):
        seen.extend(doms)
        raise FirstBatch  # only the first batch of branch and bound matters here

    monkeypatch.setattr(S.IRSolver, "evaluate", first_batch)
    with pytest.raises(FirstBatch):
        solver.bab(input_split=False)
    assert seen and all(d.cached is g.bounds and d.first_dirty == len(solver.needs) for d in seen)
    assert all(torch.equal(d.cached[k][0], g.bounds[k][0]) for d in seen for k in crown)
