"""Answers of ``tightcert supports <capability>`` (VNN-LIB 2.0 §5.4). Plain data: no numpy/onnx/torch.

Claims are what ``verify`` really does:
- operators: every op of the interval engine (``interval.SUPPORTED_OPS``, checked equal by a test),
  printed as bare names: the conformance suite compares whole lines, so ``Conv float32`` would not count
  as ``Conv`` (notes §3.3);
- element types: ``float32`` because unsat answers carry float32 rounding margins (notes §6), ``int64``
  for integer tensors (Shape, Cast) inside models and as outputs, ``real``;
- opsets 9..18: the range the tests exercise (the shared VNN-COMP models are opset 9, the suite 18);
- VNN-LIB 1.0 (translated) to 2.0;
- theories: the interval engine evaluates any linear or polynomial atom over inputs, hidden and outputs
  of any number of networks, so all of them;
- disjunctions are expanded to DNF and decided disjunct by disjunct: ``false``;
- ``--serialise-assignments`` writes one TensorProto per variable: ``true``.
"""
from __future__ import annotations

OPERATORS = ("Abs", "Add", "And", "AveragePool", "BatchNormalization", "Cast", "Ceil", "Clip", "Concat",
             "Constant", "ConstantOfShape", "Conv", "Div", "Dropout", "Equal", "Exp", "Expand", "Flatten",
             "Floor", "Gather", "Gemm", "GlobalAveragePool", "GlobalMaxPool", "Greater", "GreaterOrEqual",
             "Identity", "LeakyRelu", "Less", "LessOrEqual", "MatMul", "MaxPool", "Mul", "Neg", "Not", "Or",
             "Pad", "Pow", "ReduceMax", "ReduceMean", "ReduceMin", "ReduceSum", "Relu", "Reshape", "Shape",
             "Sigmoid", "Size", "Slice", "Softmax", "Split", "Sqrt", "Squeeze", "Sub", "Tanh", "Tile",
             "Transpose", "Unsqueeze", "Where")

#: flag (without "--") -> lines printed, in order. Aliases map to the same answer.
CAPABILITIES = {
    "onnx-opset-versions": ("9", "18"),
    "onnx-element-types": ("float32", "int64", "real"),
    "onnx-operators": OPERATORS,
    "vnnlib-versions": ("1.0", "2.0"),
    "hidden-node-theories": ("NH", "H"),
    "multiple-input-output-theories": ("SIO", "MIO"),
    "multiple-network-theories": ("SNET", "MENET", "MINET", "MNET"),
    "multiple-node-comparison-theories": ("SNC", "MNC"),
    "arithmetic-complexity-theories": ("BND", "OUTC", "LIN", "POLY"),
    "optimised-disjunctive-reasoning": ("false",),
    "serialise-assignments": ("true",),
}
#: Spellings the standard's own text uses by mistake (notes §5.4), accepted silently.
ALIASES = {"multiple-inputs-output-theories": "multiple-input-output-theories"}


def answer(flag: str) -> str:
    """The exact stdout bytes (as text) for one capability flag (without leading dashes)."""
    lines = CAPABILITIES[ALIASES.get(flag, flag)]
    return "".join(line + "\n" for line in lines)
