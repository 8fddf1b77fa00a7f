"""Every IR node type has a bound rule that states every fact the engine, the forward form, IBP, the training
losses and the VNN-LIB solver ask of it (issue 14: each op's facts live in its rule, nowhere else).

A new node type without a rule, or a rule that leaves a fact at the base class's ``None`` (or keeps the base
class's float rounding model, which raises), fails here instead of being treated wrongly somewhere else.
"""
from __future__ import annotations

import inspect

import pytest

from toolkit.bounds import ops
from toolkit.ir import nodes as N

NODE_TYPES = [c for _, c in inspect.getmembers(N, inspect.isclass) if issubclass(c, N.Node) and c is not N.Node]


def test_the_node_list_is_complete():
    assert {c.__name__ for c in NODE_TYPES} >= {"Linear", "Conv2d", "ReLU", "Sigmoid", "Tanh", "Reshape", "Flatten",
                                                "Transpose", "Add", "Normalize", "BatchNorm", "Pad", "AvgPool2d",
                                                "MaxPool2d"}


@pytest.mark.parametrize("node_type", NODE_TYPES, ids=lambda c: c.__name__)
def test_every_node_type_has_a_complete_rule(node_type):
    rule = ops.RULES.get(node_type)
    assert rule is not None, f"no bound rule for {node_type.__name__}"
    cls = type(rule)
    for fact in ops.FACTS:
        assert getattr(rule, fact) is not None, f"{cls.__name__} does not state {fact}"
    assert cls.float_error is not ops.Rule.float_error, f"{cls.__name__} has no float rounding model"
    assert cls.ibp is not ops.Rule.ibp
    if rule.has_backward:
        assert cls.backward is not ops.Rule.backward
    if rule.forward_form == "linear":
        assert cls.forward_linear is not ops.Rule.forward_linear
    if rule.patches:
        assert cls.patch_backward is not ops.Rule.patch_backward
    assert rule.forward_form in ("linear", "relu", "add", "")


@pytest.mark.parametrize("node_type", NODE_TYPES, ids=lambda c: c.__name__)
def test_facts_agree_with_each_other_and_with_the_node(node_type):
    rule = ops.RULES[node_type]
    # An affine node needs no input bounds and the forward form carries it exactly; a nonlinear one does.
    assert rule.needs_bounds == (not node_type.affine)
    if node_type.affine:
        assert rule.forward_form in ("linear", "add") and rule.parallel_lines
    if rule.relu:
        assert rule.needs_bounds and rule.parallel_lines and rule.forward_form == "relu"
    if rule.box_preserving or rule.cell_moving:
        assert rule.tight_on_box
    if type(rule).dense_weight is not ops.Rule.dense_weight:
        assert rule.forward_form == "linear"
