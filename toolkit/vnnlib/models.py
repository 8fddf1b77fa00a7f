"""ONNX models as a VNN-LIB query sees them: declared I/O, element types, and onnxruntime evaluation.

No torch here. onnxruntime runs with graph optimisations *disabled*: the float semantics tightcert answers
for is "every node evaluated in the model's element type, one node after another" (notes §6), which is
what the interval engine's rounding margins cover; fused kernels could round differently.
"""
from __future__ import annotations

import gzip
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from toolkit.errors import BadInputError, BadModelError

#: ONNX TensorProto element type -> the standard's element-type name (ONNX "Set 1" names).
ONNX_TYPE_NAMES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64",
                   8: "string", 9: "bool", 10: "float16", 11: "float64", 12: "uint32", 13: "uint64",
                   14: "complex64", 15: "complex128", 16: "bfloat16"}
NUMPY_TYPES = {"float32": np.float32, "float64": np.float64, "float16": np.float16, "int64": np.int64,
               "int32": np.int32, "int16": np.int16, "int8": np.int8, "uint8": np.uint8, "bool": np.bool_}


@dataclass
class TensorInfo:
    name: str
    dtype: str                  # standard name, e.g. "float32"
    shape: list                 # ints; None for a symbolic/unknown dimension


def _dims(type_proto) -> list:
    t = type_proto.tensor_type
    if not t.HasField("shape"):
        return []
    return [int(d.dim_value) if d.HasField("dim_value") else None for d in t.shape.dim]


def concrete_shape(shape) -> list:
    """Symbolic dimensions (a dynamic batch axis) are evaluated at 1, as VNN-COMP does."""
    return [1 if (d is None or d == 0) else int(d) for d in shape]


class OnnxModel:
    """One ONNX file: its graph inputs/outputs and cached onnxruntime sessions."""

    def __init__(self, path):
        import onnx

        self.path = Path(path)
        if not self.path.is_file():
            raise BadModelError(f"model file not found: {self.path}")
        raw = self.path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        try:
            self.proto = onnx.load_model_from_string(raw)
        except Exception as e:  # protobuf raises several types for corrupt bytes
            raise BadModelError(f"cannot read ONNX model {self.path}: {str(e).splitlines()[0][:200]}") from None
        g = self.proto.graph
        if not g.node and not g.output:
            raise BadModelError(f"{self.path} is not an ONNX model (empty graph)")
        inits = {i.name for i in g.initializer}
        self.inputs = [self._info(v) for v in g.input if v.name not in inits]
        self.outputs = [self._info(v) for v in g.output]
        self.opset = next((o.version for o in self.proto.opset_import if o.domain in ("", "ai.onnx")), None)
        self._sessions = {}
        self._value_types = None

    def _info(self, v) -> TensorInfo:
        elem = v.type.tensor_type.elem_type
        return TensorInfo(v.name, ONNX_TYPE_NAMES.get(elem, f"onnx-type-{elem}"), _dims(v.type))

    @property
    def n_params(self) -> int:
        g = self.proto.graph
        n = sum(math.prod(i.dims) for i in g.initializer)
        for node in g.node:
            if node.op_type == "Constant":
                for a in node.attribute:
                    if a.name == "value":
                        n += math.prod(a.t.dims)
        return n

    def tensor_names(self) -> set:
        g = self.proto.graph
        names = {v.name for v in g.input} | {i.name for i in g.initializer}
        for node in g.node:
            names.update(o for o in node.output if o)
        return names

    def value_type(self, name: str) -> int:
        """ONNX element type of any tensor (shape inference; FLOAT when it cannot tell)."""
        if self._value_types is None:
            import onnx

            try:
                inferred = onnx.shape_inference.infer_shapes(self.proto)
                vis = list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input)
            except Exception:
                vis = list(self.proto.graph.value_info)
            self._value_types = {v.name: v.type.tensor_type.elem_type for v in vis}
        return self._value_types.get(name, 1) or 1

    def session(self, extra_outputs=()):
        """An onnxruntime session with optimisations off, also returning the tensors ``extra_outputs``."""
        key = tuple(extra_outputs)
        if key not in self._sessions:
            import onnx
            import onnxruntime as ort

            proto = self.proto
            have = {o.name for o in proto.graph.output}
            missing = [n for n in key if n not in have]
            if missing:
                proto = onnx.ModelProto()
                proto.CopyFrom(self.proto)
                for n in missing:
                    proto.graph.output.append(onnx.helper.make_tensor_value_info(n, self.value_type(n), None))
            opts = ort.SessionOptions()
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            opts.log_severity_level = 3
            opts.intra_op_num_threads = 1
            opts.inter_op_num_threads = 1
            try:
                self._sessions[key] = ort.InferenceSession(proto.SerializeToString(), opts,
                                                           providers=["CPUExecutionProvider"])
            except Exception as e:
                raise BadModelError(f"onnxruntime cannot load {self.path}: {str(e).splitlines()[0][:300]}") \
                    from None
        return self._sessions[key]

    def run(self, inputs: list, extra_outputs=()) -> dict:
        """Evaluate with onnxruntime. ``inputs``: arrays in graph-input order (any shape of the right size,
        reshaped to the model's input shape and cast to its element type). Returns name -> array for the
        graph outputs and ``extra_outputs``."""
        sess = self.session(extra_outputs)
        feed = {}
        for info, x in zip(self.inputs, inputs):
            dt = NUMPY_TYPES.get(info.dtype)
            if dt is None:
                raise BadModelError(f"model input {info.name!r} has element type {info.dtype}, which tightcert "
                                    "cannot feed")
            feed[info.name] = np.asarray(x).astype(dt).reshape(concrete_shape(info.shape))
        names = [o.name for o in self.outputs] + [n for n in extra_outputs
                                                  if n not in {o.name for o in self.outputs}]
        try:
            vals = sess.run(names, feed)
        except Exception as e:
            raise BadModelError(f"onnxruntime failed on {self.path}: {str(e).splitlines()[0][:300]}") from None
        return dict(zip(names, vals))


def read_text(path) -> str:
    """A query file, plain or gzip'd (``.vnnlib.gz``)."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"query file not found: {path}")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except OSError as e:
            raise BadInputError(f"cannot decompress {path}: {e}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadInputError(f"{path} is not a text file (VNN-LIB queries are UTF-8 text)") from None
