"""The ``verify`` answer on stdout (VNN-LIB 2.0 §5.3.1) and the optional serialised assignment.

After ``sat`` comes every declared variable, in declaration order (per network: inputs, hidden, outputs;
networks in declaration order): a header ``NAME TYPE [d1,d2]`` with the declared type as written and the
dimensions without spaces (a scalar is ``[]``), then one value per line, row-major. Values are the ones
tightcert evaluated (onnxruntime, model element type), printed exactly: integers as integers, floats as the
shortest decimal that reads back to the same double (a float32 value is exactly a double).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from toolkit.errors import BadInputError

from .problem import Assignment

_PB_TYPES = {"float32": np.float32, "real": np.float64, "int64": np.int64}


def format_value(v, dtype: str) -> str:
    if dtype.startswith(("int", "uint")) or dtype == "bool":
        return str(int(v))
    f = float(v)
    if math.isnan(f) or math.isinf(f):
        return repr(f)
    return repr(f)


def format_assignment(a: Assignment) -> str:
    lines = []
    for var in a.query.variables:
        lines.append(f"{var.name} {var.dtype} [{','.join(str(s) for s in var.shape)}]")
        lines.extend(format_value(v, var.dtype) for v in np.asarray(a.value(var)).ravel())
    return "\n".join(lines) + "\n"


def answer_text(verdict: str, assignment: Assignment | None = None, serialise_dir=None) -> str:
    """stdout of ``verify``: the verdict line, and after ``sat`` the assignment (unless serialised)."""
    out = verdict + "\n"
    if verdict == "sat" and assignment is not None and serialise_dir is None:
        out += format_assignment(assignment)
    return out


def serialise(a: Assignment, directory) -> list:
    """``<dir>/<variable>.pb``: one ONNX TensorProto per variable, declared shape, element type
    (``real`` is written as float64, which holds the evaluated value exactly)."""
    from onnx import numpy_helper

    d = Path(directory)
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BadInputError(f"cannot create --serialise-assignments directory {d}: {e.strerror}") from None
    paths = []
    for var in a.query.variables:
        arr = np.asarray(a.value(var)).astype(_PB_TYPES.get(var.dtype, np.float64)).reshape(var.shape)
        t = numpy_helper.from_array(arr, name=var.name)
        p = d / f"{var.name}.pb"
        p.write_bytes(t.SerializeToString())
        paths.append(p)
    return paths
