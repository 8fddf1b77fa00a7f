"""VNN-LIB 1.0 (VNN-COMP 2021-2024 files) -> VNN-LIB 2.0 text, so one parser reads both (notes §4.5).

The ``vnnlib`` 1.0.2 parser only reads 2.0: a ``declare-const`` file is a syntax error. A 1.0 file is
recognised by the missing ``(vnnlib-version ...)`` form. The translation is mechanical:

- ``X_i`` / ``Y_j`` become ``X[idx]`` / ``Y[idx]`` with the flat index unravelled row-major into the
  ONNX input / output shape (the VNN-COMP convention);
- every literal is rewritten with ``Decimal`` so it has no exponent and always has a ``.`` (2.0 forbids
  ``1e-05`` and needs float literals for float variables);
- ``=`` becomes ``==``;
- everything is declared ``real``: 1.0 was defined over the reals, and ``real`` is also the type that
  consents to real-arithmetic analysis (§5.3.2).
"""
from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

from toolkit.errors import BadInputError

_TOKEN = re.compile(r"\(|\)|[^\s()]+")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_VAR = re.compile(r"([XY])_(\d+)$")
_DECL = re.compile(r"\(\s*declare-const\s+([XY])_(\d+)\s+(\S+?)\s*\)")
_VERSION = re.compile(r"\(\s*vnnlib-version\b")
_COMMENT = re.compile(r";[^\n]*")


def is_v1(text: str) -> bool:
    """A 2.0 query must start with ``(vnnlib-version <2.0>)``; 1.0 files have no version form."""
    return _VERSION.search(_COMMENT.sub("", text)) is None


def declared_sizes(text: str) -> tuple[int, int]:
    """Number of ``X_i`` and ``Y_j`` constants a 1.0 file declares (max index + 1)."""
    decls = _DECL.findall(_COMMENT.sub("", text))
    xs = [int(i) for k, i, _ in decls if k == "X"]
    ys = [int(i) for k, i, _ in decls if k == "Y"]
    if not xs or not ys:
        raise BadInputError("VNN-LIB 1.0 query declares no X_i or no Y_j constants")
    return max(xs) + 1, max(ys) + 1


def _index(i: int, shape) -> str:
    out = []
    for d in reversed(shape):
        out.append(i % d)
        i //= d
    return ",".join(str(v) for v in reversed(out))


def _literal(tok: str) -> str:
    try:
        d = Decimal(tok)
    except InvalidOperation as e:  # pragma: no cover - _NUMBER matched already
        raise BadInputError(f"bad number {tok!r} in VNN-LIB 1.0 query") from e
    s = format(d, "f")
    if "." not in s:
        s += ".0"
    return s


def _dims(shape) -> str:
    return "[" + ",".join(str(int(s)) for s in shape) + "]"


def v1_to_v2(text: str, network: str = "N", x_shape=None, y_shape=None) -> str:
    """Translate a 1.0 query. ``x_shape``/``y_shape``: the model's input/output shapes (default flat)."""
    text = _COMMENT.sub("", text)
    n_x, n_y = declared_sizes(text)
    x_shape = list(x_shape) if x_shape is not None else [n_x]
    y_shape = list(y_shape) if y_shape is not None else [n_y]
    if math.prod(x_shape) != n_x:
        raise BadInputError(f"the VNN-LIB 1.0 query declares {n_x} inputs X_i but the model input has shape "
                            f"{x_shape} ({math.prod(x_shape)} values)")
    if math.prod(y_shape) != n_y:
        raise BadInputError(f"the VNN-LIB 1.0 query declares {n_y} outputs Y_j but the model output has shape "
                            f"{y_shape} ({math.prod(y_shape)} values)")
    for kind, _, typ in _DECL.findall(text):
        if typ.lower() != "real":
            raise BadInputError(f"VNN-LIB 1.0 constant of type {typ!r}: only Real is defined in 1.0")
    body = _DECL.sub("", text)
    declared = {f"{k}_{i}" for k, i, _ in _DECL.findall(text)}
    toks = []
    for t in _TOKEN.findall(body):
        m = _VAR.match(t)
        if m:
            if t not in declared:
                raise BadInputError(f"the VNN-LIB 1.0 query uses {t}, which it does not declare")
            i = int(m[2])
            shape = x_shape if m[1] == "X" else y_shape
            t = f"{m[1]}[{_index(i, shape)}]"
        elif _NUMBER.match(t):
            t = _literal(t)
        elif t == "=":
            t = "=="
        toks.append(t)
    s = " ".join(toks).replace("( ", "(").replace(" )", ")").replace("(assert", "\n(assert")
    return (f"(vnnlib-version <2.0>)\n(declare-network {network}\n"
            f"    (declare-input X real {_dims(x_shape)})\n"
            f"    (declare-output Y real {_dims(y_shape)})\n)\n{s}\n")
