"""Query handling: 1.0 -> 2.0 translation, DNF (assertions conjoined, strictness and == kept), input boxes,
exact atoms, and the exact witness check."""
from fractions import Fraction

import numpy as np
import pytest

from test_vnnlib_helpers import relu_net, write
from toolkit.errors import BadInputError
from toolkit.vnnlib.query import load_query, parse_network_args
from toolkit.vnnlib.v1 import is_v1, v1_to_v2


@pytest.fixture
def net(tmp_path):
    return relu_net(tmp_path / "n.onnx")


def q2(body, x="X float32 [1,2]", y="Y float32 [1,1]"):
    return (f"(vnnlib-version <2.0>)\n(declare-network N (declare-input {x}) (declare-output {y}))\n" + body)


def load(tmp_path, net, text):
    return load_query(write(tmp_path / "q.vnnlib", text), [f"N={net}"])


# ---------------------------------------------------------------------------------------------------------
# 1.0 -> 2.0
# ---------------------------------------------------------------------------------------------------------
def test_v1_translation_unravels_and_rewrites_literals():
    text = ("; comment (assert\n(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const X_2 Real)\n"
            "(declare-const X_3 Real)\n(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n"
            "(assert (<= X_3 1e-05))\n(assert (>= X_0 -.5))\n(assert (= X_1 2))\n"
            "(assert (or (and (>= Y_1 Y_0) (<= X_2 1.))))\n")
    assert is_v1(text) and not is_v1("(vnnlib-version <2.0>)\n")
    out = v1_to_v2(text, "net", x_shape=[1, 1, 2, 2], y_shape=[1, 2])
    assert "(declare-input X real [1,1,2,2])" in out and "(declare-output Y real [1,2])" in out
    assert "(<= X[0,0,1,1] 0.00001)" in out
    assert "(>= X[0,0,0,0] -0.5)" in out and "(== X[0,0,0,1] 2.0)" in out
    assert "(>= Y[0,1] Y[0,0])" in out and "(<= X[0,0,1,0] 1.0)" in out


def test_v1_size_mismatch_is_an_error():
    with pytest.raises(BadInputError, match="declares 2 inputs"):
        v1_to_v2("(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n", x_shape=[3])


def test_v1_query_needs_one_model(tmp_path, net):
    q = write(tmp_path / "p.vnnlib", "(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n"
                                     "(assert (>= X_0 0))\n(assert (<= X_0 1))\n(assert (>= X_1 0))\n"
                                     "(assert (<= X_1 1))\n(assert (<= Y_0 0))\n")
    with pytest.raises(BadInputError, match="exactly one --network"):
        load_query(q, [])
    query = load_query(q, [str(net)])
    assert query.translated_v1 and query.all_real and query.variables[0].shape == (1, 2)
    assert load_query(q, [f"classifier={net}"]).nets[0].name == "classifier"


def test_network_args_split_on_first_equals(tmp_path):
    named, bare = parse_network_args(["N=/a/b=c.onnx", "plain.onnx"])
    assert named == {"N": "/a/b=c.onnx"} and bare == ["plain.onnx"]
    with pytest.raises(BadInputError, match="twice"):
        parse_network_args(["N=a", "N=b"])


# ---------------------------------------------------------------------------------------------------------
# DNF and boxes (the vnnlib.compat.transform traps, notes §4.3)
# ---------------------------------------------------------------------------------------------------------
def test_assertions_are_conjoined(tmp_path, net):
    """(assert (and ...)) plus (assert (or ...)): one box, two disjuncts (compat makes an empty polytope)."""
    q = load(tmp_path, net, q2("(assert (and (>= X[0,0] 0.0) (<= X[0,0] 1.0) (>= X[0,1] -1.0) (<= X[0,1] 1.0)))\n"
                               "(assert (or (>= Y[0,0] 3.0) (<= Y[0,0] -3.0)))\n"))
    assert len(q.disjuncts) == 2
    for d in q.disjuncts:
        assert d.lo.tolist() == [0.0, -1.0] and d.hi.tolist() == [1.0, 1.0]
        assert len(d.atoms) == 1


def test_two_ors_give_the_product(tmp_path, net):
    q = load(tmp_path, net, q2("(assert (or (>= X[0,0] 0.5) (<= X[0,0] -0.5)))\n"
                               "(assert (or (>= Y[0,0] 1.0) (<= Y[0,0] -1.0)))\n"))
    assert len(q.disjuncts) == 4
    assert sorted((d.lo[0], d.hi[0]) for d in q.disjuncts)[0] == (-np.inf, -0.5)


def test_strictness_and_equality_are_kept(tmp_path, net):
    q = load(tmp_path, net, q2("(assert (< X[0,0] 1.0))\n(assert (== X[0,1] 0.5))\n(assert (> Y[0,0] 0.0))\n"))
    (d,) = q.disjuncts
    assert d.hi[0] == 1.0 and d.ihi[0] == np.nextafter(1.0, -np.inf)   # closure / inner box
    assert d.lo[1] == d.hi[1] == 0.5
    ops = sorted(a.op for a in d.atoms)
    assert ops == ["<", ">"]          # the strict input bound stays an atom; == 0.5 is exactly the box


def test_contradictory_inputs_leave_no_disjunct(tmp_path, net):
    q = load(tmp_path, net, q2("(assert (>= X[0,0] 1.0))\n(assert (<= X[0,0] 0.5))\n(assert (>= Y[0,0] 0.0))\n"))
    assert q.disjuncts == []


def test_inexact_decimal_bounds_are_outward_and_inward(tmp_path, net):
    """0.1 is no float: the box (closure) contains it, the inner box only has points meeting it exactly."""
    q = load(tmp_path, net, q2("(assert (>= X[0,0] 0.1))\n(assert (<= X[0,0] 0.3))\n(assert (>= Y[0,0] 0.0))\n"))
    (d,) = q.disjuncts
    assert Fraction(d.lo[0]) <= Fraction("0.1") <= Fraction(d.ilo[0])
    assert Fraction(d.ihi[0]) <= Fraction("0.3") <= Fraction(d.hi[0])


# ---------------------------------------------------------------------------------------------------------
# exact atoms and the witness check
# ---------------------------------------------------------------------------------------------------------
def test_atom_status_is_exact_at_boundaries(tmp_path, net):
    q = load(tmp_path, net, q2("(assert (or (< Y[0,0] 0.0) (<= Y[0,0] 0.0) (> (+ Y[0,0] X[0,0]) 0.3)))\n"))
    strict, nonstrict, summed = (d.atoms[0] for d in q.disjuncts)
    lo, hi = np.zeros(q.n_values), np.zeros(q.n_values)
    hi[q.by_name["Y"].offset] = 5.0            # Y in [0, 5]
    assert strict.status(lo, hi) == (True, False)        # Y < 0 is false on [0, 5]
    assert nonstrict.status(lo, hi) == (False, False)    # Y <= 0 undecided
    lo[0] = hi[0] = 0.1                                   # X[0,0] = 0.1 (float), Y = 0.2 (float)
    lo[q.by_name["Y"].offset] = hi[q.by_name["Y"].offset] = 0.2
    # 0.1 + 0.2 as reals of these floats is 0.3000000000000000166..., > 0.3 exactly (floats would round to 0.3)
    assert summed.status(lo, hi) == (False, True)


def test_polynomial_and_not_equal_atoms(tmp_path, net):
    q = load(tmp_path, net, q2("(assert (>= X[0,0] -1.0))\n(assert (<= X[0,0] 3.0))\n"
                               "(assert (>= (* X[0,0] X[0,0]) 5.0))\n(assert (!= X[0,1] 1.0))\n"))
    (d,) = q.disjuncts
    poly = next(a for a in d.atoms if a.lin is None)
    lo, hi = np.full(q.n_values, -1.0), np.full(q.n_values, 2.0)
    assert poly.status(lo, hi)[0]          # x*x <= 4 < 5 on [-1, 2] (the product's interval is [-2, 4])
    assert q.holds([Fraction(3), Fraction(0), Fraction(0)]) and not q.holds([Fraction(3), Fraction(1), Fraction(0)])


def test_hidden_and_multi_network_layout(tmp_path, net):
    text = ("(vnnlib-version <2.0>)\n(declare-network N (declare-input X float32 [1,2]) "
            "(declare-hidden H float32 [1,2] \"h\") (declare-output Y float32 [1,1]))\n"
            "(declare-network M (equal-to N) (declare-input X2 float32 [1,2]) (declare-output Y2 float32 [1,1]))\n"
            "(assert (<= Y[0,0] Y2[0,0]))\n")
    q = load(tmp_path, net, text)
    assert [v.name for v in q.variables] == ["X", "H", "Y", "X2", "Y2"]
    assert [v.offset for v in q.variables] == [0, 2, 4, 5, 7]
    assert q.input_index.tolist() == [0, 1, 5, 6]
    assert q.nets[1].model is q.nets[0].model


def test_dtype_policy(tmp_path, net):
    with pytest.raises(BadInputError, match="float64"):
        load(tmp_path, net, q2("(assert (<= Y[0,0] 0.0))\n", x="X float64 [1,2]", y="Y float64 [1,1]"))
    # real declarations consent to real-arithmetic analysis of a float32 model
    q = load(tmp_path, net, q2("(assert (<= Y[0,0] 0.0))\n", x="X real [1,2]", y="Y real [1,1]"))
    assert q.all_real


def test_v1_undeclared_variable_is_an_error():
    with pytest.raises(BadInputError, match="Y_7"):
        v1_to_v2("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (>= Y_7 1.0))\n")
