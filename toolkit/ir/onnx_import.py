"""ONNX file -> layer-graph IR (architecture.md, "import").

Pipeline: read + ``onnx.load`` + op scan + ``onnx.checker`` -> ``onnx2torch.convert`` (a ``torch.fx``
GraphModule) -> one traced run of that module at batch 1 (gives every ONNX value: constants are folded
from it, input-dependent values give their shapes) -> lowering of each input-dependent ONNX node to IR
nodes -> small folding passes -> optional parity check against onnxruntime on the original file.

Where onnx2torch has no converter for an op version (Pad-18, Constant-19, ...), the ONNX reference
evaluator computes the traced values instead; the lowering is the same. This module is the only place
that knows onnx2torch. The fx call_module nodes are paired with the ONNX
nodes by position (onnx2torch emits exactly one per ONNX node, in ONNX order), so the lowering reads each
op's type and attributes from the ONNX node itself and never depends on onnx2torch's wrapper classes or
on how it spells module names.

Batch: the IR is batch-dynamic by construction. The file's first input axis is the batch axis (fixed 1
or symbolic); shape ops (Reshape, Flatten, Squeeze, Unsqueeze) are lowered from the traced per-sample
output shape and must keep axis 0 as the batch axis.
"""
from __future__ import annotations

import hashlib
import math
import warnings
from pathlib import Path

import numpy as np
import torch

from toolkit.errors import BadInputError, BadModelError, UnsupportedOpError

from .graph import INPUT, Graph, InputSpec, _key
from .nodes import (Add, AvgPool2d, BatchNorm, Conv2d, Flatten, Linear, MaxPool2d, Normalize, Pad, ReLU,
                    Reshape, Sigmoid, Tanh, Transpose)

#: ONNX ops the lowering handles on the input-dependent path.
SUPPORTED_OPS = ("Add", "AveragePool", "BatchNormalization", "Constant", "Conv", "Div", "Dropout", "Flatten",
                 "Gemm", "GlobalAveragePool", "Identity", "MatMul", "MaxPool", "Mul", "Pad", "Relu",
                 "Reshape", "Sigmoid", "Squeeze", "Sub", "Tanh", "Transpose", "Unsqueeze")
#: Ops accepted only where all their inputs are constants (folded away); ``Shape`` of an input-dependent
#: tensor is constant too (its per-sample shape is static). PyTorch exports build Flatten this way.
CONSTANT_ONLY_OPS = ("Cast", "Concat", "ConstantOfShape", "Expand", "Gather", "Neg", "Pow", "Reciprocal",
                     "Shape", "Slice", "Sqrt")
PARITY_TOL = 1e-4
_ONNX_DOMAINS = ("", "ai.onnx")


# ---------------------------------------------------------------------------------------------------------
# public entry point
# ---------------------------------------------------------------------------------------------------------
def import_onnx(path, mean=None, std=None, check=True, n_check=16, seed=0) -> Graph:
    """Import the ONNX classifier at ``path`` as a batch-dynamic :class:`Graph`.

    mean/std: per-channel normalisation that lives OUTSIDE the file (e.g. VNN-COMP CIFAR models). When
        given, a ``Normalize`` node is prepended, so the returned graph takes raw [0, 1] pixels
        (``input_spec.normalization == "prepended"``). Giving them for a model that already normalises
        in the graph is refused (it would normalise twice).
    check: compare the graph with onnxruntime on the original file on ``n_check`` random inputs uniform
        in [0, 1] (pushed through the prepended normalisation before they reach onnxruntime); the max
        abs difference is stored in ``graph.meta["ort_max_abs_diff"]``, above 1e-4 is a BadModelError.
    Raises BadModelError (unreadable/corrupt file, checker failure, NaN/inf weights, parity failure),
    UnsupportedOpError (op, node name and the supported list), BadInputError (bad mean/std).
    """
    path = Path(path)
    raw = _read_bytes(path)
    model = _parse(raw, path)
    names = _unique_names(model.graph)
    _scan_ops(model, names)
    _run_checker(model, path)
    consts = _initializer_values(model, names)
    in_name, file_shape = _input_info(model, path)
    sample_shape = tuple(int(d) for d in file_shape[1:])

    traced = _trace(model, in_name, sample_shape, path)
    lowering = _Lowering(model, names, consts, traced, in_name)
    nodes, output = lowering.run()
    nodes, output = _fold(nodes, output)
    spec = _input_spec(nodes, sample_shape)
    if mean is not None or std is not None:
        nodes = _prepend_normalize(nodes, spec, mean, std)
    meta = {"source": str(path), "sha256": hashlib.sha256(raw).hexdigest(), "opset": _opset(model),
            "onnx_input_name": in_name, "onnx_input_shape": list(file_shape),
            "onnx_output_name": model.graph.output[0].name,
            "onnx_metadata": {p.key: p.value for p in model.metadata_props}, "ort_max_abs_diff": None}
    graph = Graph([tuple(n) for n in nodes], output, spec, meta)
    _check_finite_params(graph)
    if check:
        # one sample per run: valid whether the file's batch axis is fixed to 1 or symbolic
        diff = ort_parity(graph, str(path), in_name, n_check=n_check, seed=seed, batch_one=True)
        graph.meta["ort_max_abs_diff"], graph.meta["ort_n_check"] = diff, n_check
        if not diff <= PARITY_TOL:
            raise BadModelError(f"{path}: imported graph differs from onnxruntime by {diff:.3g} "
                                f"(> {PARITY_TOL:g}) on {n_check} random inputs")
    return graph


def ort_parity(graph: Graph, model, in_name: str, n_check=16, seed=0, batch_one=True) -> float:
    """Max abs difference between ``graph`` and onnxruntime running ``model`` (path or bytes).

    Inputs are uniform in [0, 1] in the graph's input space; a prepended Normalize node (normalisation
    outside the file) is applied before the inputs reach onnxruntime, which sees the file's input space.
    """
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.uniform(0.0, 1.0, (n_check, *graph.input_spec.shape)).astype(np.float32))
    param = next(iter(graph.parameters()), None)
    dtype = param.dtype if param is not None else torch.float32
    with torch.no_grad():
        ours = graph(x.to(dtype)).double().reshape(n_check, -1).numpy()
        ort_x = x
        if graph.input_spec.normalization == "prepended":
            key = graph.consumers()[INPUT][0]
            ort_x = graph.nodes[key](x.to(dtype)).float()
    theirs = run_onnxruntime(model, in_name, ort_x.numpy().astype(np.float32), batch_one)
    theirs = theirs.astype(np.float64).reshape(n_check, -1)
    if theirs.shape != ours.shape:
        raise BadModelError(f"imported graph gives {ours.shape[1]} outputs per sample, "
                            f"onnxruntime {theirs.shape[1]}")
    diff = np.abs(ours - theirs)
    return float("inf") if not np.isfinite(diff).all() else float(diff.max())


def run_onnxruntime(model, in_name: str, x: np.ndarray, batch_one: bool) -> np.ndarray:
    """Run the first output of ``model`` (path or bytes) on ``x``; one sample at a time if ``batch_one``."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only: no "removing initializer" chatter on VNN-COMP files
    try:
        sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        if batch_one:
            return np.concatenate([sess.run(None, {in_name: x[i:i + 1]})[0] for i in range(len(x))])
        return sess.run(None, {in_name: x})[0]
    except Exception as e:  # onnxruntime raises its own untyped errors
        raise BadModelError(f"onnxruntime cannot run the model: {_one_line(e)}") from None


# ---------------------------------------------------------------------------------------------------------
# reading and validating the file
# ---------------------------------------------------------------------------------------------------------
def _one_line(e, limit=200) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def _read_bytes(path: Path) -> bytes:
    if not path.exists():
        raise BadModelError(f"model file not found: {path}")
    if not path.is_file():
        raise BadModelError(f"model path is not a file: {path}")
    try:
        return path.read_bytes()
    except OSError as e:
        raise BadModelError(f"cannot read model file {path}: {e.strerror or e}") from None


def _parse(raw: bytes, path: Path):
    import onnx

    try:
        model = onnx.load_model_from_string(raw)
        if path.parent and any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
            onnx.load_external_data_for_model(model, str(path.parent))
    except Exception as e:  # protobuf DecodeError, truncated data, missing external data
        raise BadModelError(f"{path}: not a readable ONNX model, truncated or corrupt "
                            f"({_one_line(e, 120)})") from None
    # Random bytes sometimes decode as an (empty) protobuf message: demand the basics of a model.
    if model.ir_version <= 0 or not model.HasField("graph") or not model.opset_import or not model.graph.node:
        raise BadModelError(f"{path}: not an ONNX model (no graph, IR version or opset)")
    return model


def _unique_names(graph) -> list:
    """A unique, never-empty name per ONNX node (the node's name, else its op type, suffixed on clashes)."""
    out, counts = [], {}
    for n in graph.node:
        base = n.name or n.op_type
        c = counts.get(base, 0)
        counts[base] = c + 1
        out.append(base if c == 0 else f"{base}_{c}")
    return out


def _scan_ops(model, names):
    """Unsupported ops are reported before the checker so a custom-domain op is named as such."""
    allowed = set(SUPPORTED_OPS) | set(CONSTANT_ONLY_OPS)
    for n, name in zip(model.graph.node, names):
        op = n.op_type if n.domain in _ONNX_DOMAINS else f"{n.domain}.{n.op_type}"
        if op not in allowed:
            raise UnsupportedOpError(op, name, supported=SUPPORTED_OPS)


def _run_checker(model, path):
    import onnx

    try:
        onnx.checker.check_model(model)
    except Exception as e:
        raise BadModelError(f"{path}: ONNX checker failed: {_one_line(e, 160)}") from None


def _opset(model) -> int:
    return max((o.version for o in model.opset_import if o.domain in _ONNX_DOMAINS), default=0)


def _initializer_values(model, names) -> dict:
    """Initializers and Constant-node tensors as torch tensors; NaN/inf in any used one is an error."""
    from onnx import numpy_helper

    used = {v for n in model.graph.node for v in n.input}
    consts = {}
    for t in model.graph.initializer:
        arr = numpy_helper.to_array(t)
        if t.name in used and arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise BadModelError(f"initializer {t.name!r} contains NaN or inf values")
        consts[t.name] = torch.from_numpy(np.array(arr))
    for n, name in zip(model.graph.node, names):
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value" and a.HasField("t"):
                    arr = numpy_helper.to_array(a.t)
                    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                        raise BadModelError(f"Constant node {name!r} contains NaN or inf values")
    return consts


def _input_info(model, path):
    """(name, shape) of the single real input; shape[0] is the batch axis (int 1 or a symbolic str)."""
    import onnx

    init = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in init]
    if len(inputs) != 1:
        raise BadModelError(f"{path}: tightcert needs exactly one model input, found {len(inputs)}")
    if len(model.graph.output) != 1:
        raise BadModelError(f"{path}: tightcert needs exactly one model output, found {len(model.graph.output)}")
    inp = inputs[0]
    tt = inp.type.tensor_type
    if tt.elem_type != onnx.TensorProto.FLOAT:
        raise BadModelError(f"{path}: input {inp.name!r} must be float32 "
                            f"(found {onnx.TensorProto.DataType.Name(tt.elem_type)})")
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim]
    if len(dims) < 2:
        raise BadModelError(f"{path}: input {inp.name!r} has shape {dims}; expected a batch axis first")
    if any(not isinstance(d, int) or d <= 0 for d in dims[1:]):
        raise BadModelError(f"{path}: input {inp.name!r} has unknown per-sample dimensions {dims}")
    if dims[0] == 0:  # some exporters write 0 for "unknown"
        dims[0] = "?"
    if isinstance(dims[0], int) and dims[0] != 1:
        raise BadModelError(f"{path}: input batch axis is fixed to {dims[0]}; tightcert needs 1 or dynamic")
    return inp.name, dims


# ---------------------------------------------------------------------------------------------------------
# onnx2torch conversion and the traced run
# ---------------------------------------------------------------------------------------------------------
def _trace(model, in_name, sample_shape, path) -> dict:
    """Every ONNX value on a zero batch-1 input: value name -> tensor (constants and shapes come from it).

    onnx2torch computes it; where onnx2torch has no converter for an op version (e.g. Pad-18,
    Constant-19), the ONNX reference evaluator does. Either way the lowering reads the same values, and
    the onnxruntime parity check judges the result.
    """
    x = torch.zeros(1, *sample_shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # onnx2torch and torch.fx warn on perfectly good VNN-COMP files
        import onnx2torch

        try:
            gm = onnx2torch.convert(model)
        except NotImplementedError:
            values = _trace_reference(model, in_name, x, path)
        except Exception as e:
            raise BadModelError(f"{path}: conversion failed: {_one_line(e)}") from None
        else:
            values = _trace_fx(gm, model, x, path)
    values[in_name] = x
    return values


def _trace_fx(gm, model, x, path) -> dict:
    calls = [n for n in gm.graph.nodes if n.op == "call_module"]
    if len(calls) != len(model.graph.node):  # onnx2torch emits one module per ONNX node, in order
        raise BadModelError(f"{path}: onnx2torch produced {len(calls)} modules for {len(model.graph.node)} "
                            "ONNX nodes")
    recorded = {}

    class _Recorder(torch.fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            recorded[n] = out
            return out

    try:
        with torch.no_grad():
            _Recorder(gm.eval()).run(x)
    except Exception as e:
        raise BadModelError(f"{path}: the model does not run on a {list(x.shape[1:])} input: "
                            f"{_one_line(e)}") from None
    values = {}
    for fx_node, onode in zip(calls, model.graph.node):
        out = recorded[fx_node]
        outs = out if isinstance(out, (tuple, list)) else (out,)
        for name, v in zip(onode.output, outs):
            if name and isinstance(v, torch.Tensor):
                values[name] = v.detach()
    return values


def _trace_reference(model, in_name, x, path) -> dict:
    from onnx.reference import ReferenceEvaluator

    try:
        res = ReferenceEvaluator(model).run(None, {in_name: x.numpy()}, intermediate=True)
    except Exception as e:
        raise BadModelError(f"{path}: the model does not run on a {list(x.shape[1:])} input: "
                            f"{_one_line(e)}") from None
    return {k: torch.from_numpy(np.array(v)) for k, v in res.items() if k and isinstance(v, (np.ndarray, np.generic))}


# ---------------------------------------------------------------------------------------------------------
# lowering: ONNX nodes on the input-dependent path -> IR nodes
# ---------------------------------------------------------------------------------------------------------
def _attrs(onode) -> dict:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in onode.attribute}


def _decode(v):
    return v.decode() if isinstance(v, bytes) else v


class _Lowering:
    """Walks the ONNX nodes in (topological) order; ``dyn`` maps an input-dependent value to its IR key."""

    def __init__(self, model, names, consts, traced, in_name):
        self.model, self.names, self.traced = model, names, traced
        self.const = dict(consts)
        self.dyn = {in_name: INPUT}
        self.nodes = []  # [key, Node, (input keys)]
        self.taken = set()
        self.used = {v for n in model.graph.node for v in n.input} | {o.name for o in model.graph.output}

    # -- driver -------------------------------------------------------------------------------------------
    def run(self):
        for onode, name in zip(self.model.graph.node, self.names):
            if onode.op_type != "Shape" and not any(v in self.dyn for v in onode.input if v):
                self._fold_constant(onode, name)
                continue
            if onode.op_type == "Shape" or onode.op_type not in SUPPORTED_OPS:
                if onode.op_type == "Shape":
                    self._fold_constant(onode, name)  # per-sample shape is static; batch traced as 1
                    continue
                self._unsupported(onode, name, "on the input-dependent path (only folded on constants)")
            self.current = name
            getattr(self, f"_lower_{onode.op_type}")(onode, name, _attrs(onode))
        out = self.model.graph.output[0].name
        if out not in self.dyn:
            raise BadModelError("the model output does not depend on its input")
        if self.dyn[out] == INPUT:
            raise BadModelError("the model output is its input (no operations)")
        return self.nodes, self.dyn[out]

    def _fold_constant(self, onode, name):
        for v in onode.output:
            if v in self.used and v not in self.traced:
                raise BadModelError(f"cannot evaluate constant output {v!r} of node {name!r}")
            if v in self.traced:
                self.const[v] = self.traced[v]

    # -- helpers --------------------------------------------------------------------------------------------
    def _unsupported(self, onode, name, why=""):
        err = UnsupportedOpError(onode.op_type, name, supported=SUPPORTED_OPS)
        if why:  # keep ``err.op`` the bare op type; say in the message which variant is not handled
            err.args = (str(err).replace(f"op {onode.op_type} (", f"op {onode.op_type} {why} (", 1),)
        raise err

    def _emit(self, node, inputs, name) -> str:
        key = _key(name, self.taken)
        self.taken.add(key)
        self.nodes.append([key, node, tuple(inputs)])
        return key

    def _out(self, onode, key):
        self.dyn[onode.output[0]] = key
        for extra in onode.output[1:]:
            if extra and extra in self.used:
                self._unsupported(onode, self.current, f"with its output {extra!r} in use")

    def _dyn_input(self, onode, name, i=0) -> str:
        v = onode.input[i]
        if v not in self.dyn:
            self._unsupported(onode, name, f"whose input {i} is a constant and another one is input-dependent")
        return self.dyn[v]

    def _const(self, onode, name, i, what) -> torch.Tensor | None:
        if len(onode.input) <= i or not onode.input[i]:
            return None
        v = onode.input[i]
        if v in self.dyn:
            self._unsupported(onode, name, f"with an input-dependent {what}")
        return self.const[v]

    def _shape(self, value) -> tuple:
        return tuple(self.traced[value].shape)

    # -- ops ----------------------------------------------------------------------------------------------
    def _lower_Identity(self, onode, name, at):
        self._out(onode, self._dyn_input(onode, name))

    def _lower_Dropout(self, onode, name, at):  # inference: identity (ratio/training_mode ignored)
        self._out(onode, self._dyn_input(onode, name))

    def _lower_Relu(self, onode, name, at):
        self._out(onode, self._emit(ReLU(onnx_name=name), [self._dyn_input(onode, name)], name))

    def _lower_Sigmoid(self, onode, name, at):
        self._out(onode, self._emit(Sigmoid(onnx_name=name), [self._dyn_input(onode, name)], name))

    def _lower_Tanh(self, onode, name, at):
        self._out(onode, self._emit(Tanh(onnx_name=name), [self._dyn_input(onode, name)], name))

    def _lower_Gemm(self, onode, name, at):
        """Y = alpha * A' B' + beta * C with A the batch input (N, in) and B, C constants."""
        x = self._dyn_input(onode, name)
        if at.get("transA", 0):
            self._unsupported(onode, name, "with transA=1 (the batch axis would be transposed)")
        b = self._const(onode, name, 1, "B")
        c = self._const(onode, name, 2, "C")
        w = (b if at.get("transB", 0) else b.t()).float() * float(at.get("alpha", 1.0))
        bias = None
        if c is not None:
            bias = self._broadcast(onode, name, c.float() * float(at.get("beta", 1.0)), (1, w.shape[0]))[0]
        self._out(onode, self._emit(Linear(w, bias, onnx_name=name), [x], name))

    def _lower_MatMul(self, onode, name, at):
        """x @ W with x of per-sample shape (in,) and W a constant matrix -> Linear (bias folded later)."""
        if onode.input[0] not in self.dyn:
            self._unsupported(onode, name, "with the input-dependent tensor on the right")
        x = self._dyn_input(onode, name)
        w = self._const(onode, name, 1, "weight matrix")
        if w.dim() != 2 or len(self._shape(onode.input[0])) != 2:
            self._unsupported(onode, name, "other than (batch, in) x (in, out)")
        self._out(onode, self._emit(Linear(w.t().float(), None, onnx_name=name), [x], name))

    def _lower_Conv(self, onode, name, at):
        x = self._dyn_input(onode, name)
        w = self._const(onode, name, 1, "weight")
        b = self._const(onode, name, 2, "bias")
        if w.dim() != 4:
            self._unsupported(onode, name, f"with a {w.dim() - 2}-D kernel (only 2-D)")
        strides, dil = at.get("strides", [1, 1]), at.get("dilations", [1, 1])
        hw, k = self._shape(onode.input[0])[2:], w.shape[2:]
        pads = _spatial_pads(at, hw, k, strides, dil)
        x, padding = self._symmetric_or_pad(x, pads, onode, name)
        conv = Conv2d(w.float(), None if b is None else b.float(), strides, padding, dil, at.get("group", 1),
                      onnx_name=name)
        self._out(onode, self._emit(conv, [x], name))

    def _symmetric_or_pad(self, x, pads, onode, name):
        """ONNX pads (h_begin, w_begin, h_end, w_end): symmetric ones go to the op, others to a Pad node."""
        hb, wb, he, we = pads
        if hb == he and wb == we:
            return x, (hb, wb)
        return self._emit(Pad((wb, we, hb, he), 0.0, onnx_name=name), [x], name), (0, 0)

    def _lower_AveragePool(self, onode, name, at):
        x = self._dyn_input(onode, name)
        k = at["kernel_shape"]
        if len(k) != 2 or any(d != 1 for d in at.get("dilations", [1, 1])):
            self._unsupported(onode, name, "other than 2-D without dilation")
        strides = at.get("strides", [1, 1])  # ONNX default stride is 1, not the kernel size
        pads = _spatial_pads(at, self._shape(onode.input[0])[2:], k, strides, [1, 1])
        include = bool(at.get("count_include_pad", 0))
        hb, wb, he, we = pads
        symmetric_ok = hb == he and wb == we and hb <= k[0] // 2 and wb <= k[1] // 2
        if not symmetric_ok and any(pads):
            if not include:  # the divisor would exclude an asymmetric pad: no single torch op does that
                self._unsupported(onode, name, "with asymmetric pads and count_include_pad=0")
            x = self._emit(Pad((wb, we, hb, he), 0.0, onnx_name=name), [x], name)
            pads = (0, 0, 0, 0)
        pool = AvgPool2d(k, strides, (pads[0], pads[1]), include, bool(at.get("ceil_mode", 0)),
                         onnx_name=name)
        self._out(onode, self._emit(pool, [x], name))

    def _lower_GlobalAveragePool(self, onode, name, at):
        shape = self._shape(onode.input[0])
        if len(shape) != 4:
            self._unsupported(onode, name, "other than 2-D")
        pool = AvgPool2d(shape[2:], shape[2:], 0, onnx_name=name)
        self._out(onode, self._emit(pool, [self._dyn_input(onode, name)], name))

    def _lower_MaxPool(self, onode, name, at):
        x = self._dyn_input(onode, name)
        k = at["kernel_shape"]
        if len(k) != 2 or any(d != 1 for d in at.get("dilations", [1, 1])):
            self._unsupported(onode, name, "other than 2-D without dilation")
        strides = at.get("strides", [1, 1])
        hb, wb, he, we = _spatial_pads(at, self._shape(onode.input[0])[2:], k, strides, [1, 1])
        if hb != he or wb != we or hb > k[0] // 2 or wb > k[1] // 2:
            self._unsupported(onode, name, f"with pads {[hb, wb, he, we]} (asymmetric or over half the kernel)")
        pool = MaxPool2d(k, strides, (hb, wb), bool(at.get("ceil_mode", 0)), onnx_name=name)
        self._out(onode, self._emit(pool, [x], name))

    def _lower_BatchNormalization(self, onode, name, at):
        x = self._dyn_input(onode, name)
        if at.get("training_mode", 0):
            self._unsupported(onode, name, "in training mode")
        if len(self._shape(onode.input[0])) not in (2, 4):
            self._unsupported(onode, name, "on a tensor that is not (N, C) or (N, C, H, W)")
        scale, bias, mean, var = (self._const(onode, name, i, w).float()
                                  for i, w in ((1, "scale"), (2, "bias"), (3, "mean"), (4, "var")))
        bn = BatchNorm(mean, var, scale, bias, at.get("epsilon", 1e-5), onnx_name=name)
        self._out(onode, self._emit(bn, [x], name))

    def _lower_Pad(self, onode, name, at):
        x = self._dyn_input(onode, name)
        mode = _decode(at.get("mode", "constant"))
        if mode != "constant":
            self._unsupported(onode, name, f"with mode {mode!r} (only constant)")
        shape = self._shape(onode.input[0])
        if "pads" in at:  # opset < 11: attributes
            pads, value = list(at["pads"]), float(at.get("value", 0.0))
        else:
            pads = [int(p) for p in self._const(onode, name, 1, "pads").tolist()]
            v = self._const(onode, name, 2, "constant_value")
            value = 0.0 if v is None else float(v.reshape(-1)[0])
            axes = self._const(onode, name, 3, "axes")
            if axes is not None:  # opset 18: pads only for the listed axes
                full = [0] * (2 * len(shape))
                ax = [a % len(shape) for a in axes.tolist()]
                for j, a in enumerate(ax):
                    full[a], full[a + len(shape)] = pads[j], pads[j + len(ax)]
                pads = full
        r = len(shape)
        begin, end = pads[:r], pads[r:]
        if not any(pads):
            self._out(onode, x)  # a zero pad is the identity
            return
        if r != 4 or any(begin[:2]) or any(end[:2]) or min(pads) < 0:
            self._unsupported(onode, name, f"with pads {pads} (only non-negative padding of H and W)")
        pad = Pad((begin[3], end[3], begin[2], end[2]), value, onnx_name=name)
        self._out(onode, self._emit(pad, [x], name))

    def _lower_Transpose(self, onode, name, at):
        x = self._dyn_input(onode, name)
        r = len(self._shape(onode.input[0]))
        perm = list(at.get("perm", range(r - 1, -1, -1)))
        if perm[0] != 0:
            self._unsupported(onode, name, f"with perm {perm} (the batch axis must stay first)")
        per_sample = [p - 1 for p in perm[1:]]
        if per_sample == sorted(per_sample):
            self._out(onode, x)
            return
        self._out(onode, self._emit(Transpose(per_sample, onnx_name=name), [x], name))

    def _lower_reshape(self, onode, name, at):
        """Reshape/Flatten/Squeeze/Unsqueeze: use the traced output shape, keeping axis 0 as the batch."""
        x = self._dyn_input(onode, name)
        before, after = self._shape(onode.input[0]), self._shape(onode.output[0])
        if after[:1] != (1,):
            self._unsupported(onode, name, f"from {list(before)} to {list(after)} (it moves the batch axis)")
        if after[1:] == before[1:]:
            self._out(onode, x)
            return
        node = Flatten(onnx_name=name) if len(after) == 2 else \
            Reshape(after[1:], onnx_name=name)
        self._out(onode, self._emit(node, [x], name))

    _lower_Reshape = _lower_Flatten = _lower_Squeeze = _lower_Unsqueeze = _lower_reshape

    # -- element-wise arithmetic -------------------------------------------------------------------------
    def _lower_Add(self, onode, name, at):
        a, b = onode.input
        if a in self.dyn and b in self.dyn:
            if self._shape(a) != self._shape(b):
                self._unsupported(onode, name, f"of shapes {list(self._shape(a))} and {list(self._shape(b))}")
            self._out(onode, self._emit(Add(onnx_name=name), [self.dyn[a], self.dyn[b]], name))
            return
        self._affine(onode, name, lambda c, first: (torch.ones_like(c), c))

    def _lower_Sub(self, onode, name, at):
        self._affine(onode, name, lambda c, first: (torch.ones_like(c), -c) if first else (-torch.ones_like(c), c))

    def _lower_Mul(self, onode, name, at):
        self._affine(onode, name, lambda c, first: (c, torch.zeros_like(c)))

    def _lower_Div(self, onode, name, at):
        if onode.input[1] in self.dyn:
            self._unsupported(onode, name, "by an input-dependent tensor")
        self._affine(onode, name, lambda c, first: (1.0 / c, torch.zeros_like(c)))

    def _affine(self, onode, name, scale_shift):
        """x (op) constant -> Normalize(scale, shift); ``first``: the input-dependent operand comes first."""
        a, b = onode.input
        if a in self.dyn and b in self.dyn:
            self._unsupported(onode, name, "of two input-dependent tensors")
        first = a in self.dyn
        xv, cv = (a, b) if first else (b, a)
        x_shape = self._shape(xv)
        if self._shape(onode.output[0]) != x_shape:
            self._unsupported(onode, name, "whose constant broadcasts the input to a larger shape")
        c = self.const[cv].float()
        if c.dim() > len(x_shape) or (c.dim() == len(x_shape) and c.shape[0] != 1):
            self._unsupported(onode, name, f"with a constant of shape {list(c.shape)} (varies over the batch)")
        if c.dim() == len(x_shape):
            c = c[0]  # drop the constant's batch axis of size 1
        scale, shift = scale_shift(c, first)
        self._out(onode, self._emit(Normalize(scale, shift, onnx_name=name), [self.dyn[xv]], name))

    def _broadcast(self, onode, name, t, shape):
        try:
            return torch.broadcast_to(t, shape).clone()
        except RuntimeError:
            raise BadModelError(f"node {name!r}: tensor of shape {list(t.shape)} does not broadcast "
                                f"to {list(shape)}") from None


def _spatial_pads(at, hw, kernel, strides, dilations):
    """ONNX (h_begin, w_begin, h_end, w_end) from ``pads`` or ``auto_pad``."""
    auto = _decode(at.get("auto_pad", "NOTSET")) or "NOTSET"
    if auto == "NOTSET":
        pads = list(at.get("pads", [0, 0, 0, 0]))
        if len(pads) != 4:
            raise BadModelError(f"pads {pads} do not match a 2-D op")
        return pads
    if auto == "VALID":
        return [0, 0, 0, 0]
    total = [max((math.ceil(i / s) - 1) * s + (k - 1) * d + 1 - i, 0)
             for i, k, s, d in zip(hw, kernel, strides, dilations)]
    small, big = [t // 2 for t in total], [t - t // 2 for t in total]
    return small + big if auto == "SAME_UPPER" else big + small


# ---------------------------------------------------------------------------------------------------------
# folding passes on the lowered node list
# ---------------------------------------------------------------------------------------------------------
def _consumers(nodes, output):
    cons = {INPUT: []}
    for key, _, inputs in nodes:
        cons.setdefault(key, [])
        for k in inputs:
            cons[k].append(key)
    cons[output].append("<output>")
    return cons


def _prune(nodes, output):
    """Drop nodes the output does not depend on (e.g. ops feeding only a Shape)."""
    by_key = {k: ins for k, _, ins in nodes}
    live, stack = set(), [output]
    while stack:
        k = stack.pop()
        if k in live or k == INPUT:
            continue
        live.add(k)
        stack.extend(by_key[k])
    return [n for n in nodes if n[0] in live]


def _fold(nodes, output):
    """Merge consecutive Normalize nodes, and an Add-of-constant into the bias of the Linear/Conv before it.

    Only nodes with a single consumer are merged, so no intermediate value that anything reads is lost.
    """
    nodes = _prune(nodes, output)
    changed = True
    while changed:
        changed = False
        cons = _consumers(nodes, output)
        index = {n[0]: i for i, n in enumerate(nodes)}
        for i, (key, node, inputs) in enumerate(nodes):
            if not isinstance(node, Normalize) or inputs[0] == INPUT or cons[inputs[0]] != [key]:
                continue
            j = index[inputs[0]]
            prev = nodes[j][1]
            merged = _merge(prev, node)
            if merged is None:
                continue
            nodes[i] = [key, merged, nodes[j][2]]
            del nodes[j]
            changed = True
            break
    return nodes, output


def _merge(prev, node):
    """One node equal to ``node(prev(x))``, or None when they do not merge."""
    # helper parts of one exported IR node ("n/Mul" then "n") keep the name "n"
    same = prev.onnx_name.startswith(node.onnx_name + "/")
    name = node.onnx_name if same else f"{prev.onnx_name}+{node.onnx_name}"
    s, t = node.scale, node.shift
    if isinstance(prev, Normalize):  # (x*s1 + t1)*s2 + t2
        return Normalize(prev.scale * s, prev.shift * s + t, onnx_name=name)
    if not bool((s == 1).all()):
        return None
    if isinstance(prev, Linear):
        if t.numel() not in (1, prev.bias.numel()) or t.dim() > 1:
            return None
        out = Linear(prev.weight.data, prev.bias.data + t.reshape(-1), onnx_name=name)
        return out
    if isinstance(prev, Conv2d) and t.dim() <= 3:
        c = prev.bias.numel()
        t3 = t.reshape((1,) * (3 - t.dim()) + tuple(t.shape))
        if t3.shape[1:] != (1, 1) or t3.shape[0] not in (1, c):
            return None  # a shift that varies over H, W is not a bias
        conv = Conv2d(prev.weight.data, prev.bias.data + t3.reshape(-1), prev.stride, prev.padding,
                      prev.dilation, prev.groups, onnx_name=name)
        return conv
    return None


# ---------------------------------------------------------------------------------------------------------
# input spec and the prepended normalisation
# ---------------------------------------------------------------------------------------------------------
def _first_chain(nodes):
    """Nodes reading the input through a chain of single consumers: [(key, node), ...]."""
    cons = _consumers(nodes, nodes[-1][0])
    by_key = {k: n for k, n, _ in nodes}
    chain, cur = [], INPUT
    while len(cons.get(cur, [])) == 1 and cons[cur][0] in by_key:
        cur = cons[cur][0]
        chain.append((cur, by_key[cur]))
        if not isinstance(by_key[cur], (Normalize, Transpose)):
            break
    return chain


def _input_spec(nodes, shape) -> InputSpec:
    """Layout (NHWC when a transpose to channels-first comes first) and any in-graph normalisation."""
    chain = [n for _, n in _first_chain(nodes)][:2]
    nhwc = [i for i, n in enumerate(chain) if isinstance(n, Transpose) and len(shape) == 3 and n.perm == (2, 0, 1)]
    layout = "NHWC" if nhwc else ("NCHW" if len(shape) == 3 else "flat")
    spec = InputSpec(tuple(shape), layout=layout)
    for i, n in enumerate(chain):
        if isinstance(n, Normalize):
            after_transpose = bool(nhwc) and nhwc[0] < i  # then it sees channels-first data
            seen = (shape[2], shape[0], shape[1]) if after_transpose else tuple(shape)
            spec.normalization = "in-graph"
            spec.mean, spec.std = _mean_std(n, seen, "NCHW" if after_transpose else layout)
            break
        if not isinstance(n, Transpose):
            break
    return spec


def _mean_std(norm, shape, layout):
    """Per-channel (mean, std) of an in-graph x*s + t = (x - mean)/std, or (None, None) if not per-channel."""
    s = torch.broadcast_to(norm.scale, shape).double()
    t = torch.broadcast_to(norm.shift, shape).double()
    if layout == "NCHW":
        s, t = s.reshape(shape[0], -1), t.reshape(shape[0], -1)
    elif layout == "NHWC":
        s, t = s.reshape(-1, shape[-1]).t(), t.reshape(-1, shape[-1]).t()
    else:
        s, t = s.reshape(1, -1), t.reshape(1, -1)
    if not (bool((s == s[:, :1]).all()) and bool((t == t[:, :1]).all())) or bool((s[:, 0] == 0).any()):
        return None, None
    s, t = s[:, 0], t[:, 0]
    if bool((s == s[0]).all()) and bool((t == t[0]).all()):
        s, t = s[:1], t[:1]
    return tuple(float(v) + 0.0 for v in (-t / s)), tuple(float(v) for v in (1.0 / s))  # + 0.0: no -0.0


def _prepend_normalize(nodes, spec, mean, std):
    """Put (x - mean)/std in front of the graph; every reader of the input reads it instead."""
    if mean is None or std is None:
        raise BadInputError("--mean and --std must be given together")
    mean, std = [float(v) for v in np.ravel(mean)], [float(v) for v in np.ravel(std)]
    channels = {"NCHW": spec.shape[0], "NHWC": spec.shape[-1], "flat": spec.shape[-1]}[spec.layout]
    if len(mean) != len(std) or len(mean) not in (1, channels):
        raise BadInputError(f"--mean/--std need 1 or {channels} values each (got {len(mean)} and {len(std)})")
    if not all(math.isfinite(v) for v in mean + std) or min(std) <= 0:
        raise BadInputError(f"--std must be positive and --mean/--std finite (got mean {mean}, std {std})")
    if spec.normalization == "in-graph":
        raise BadInputError("the model already normalises its input in the graph; "
                            "--mean/--std would normalise twice")
    shape = (len(mean), 1, 1) if spec.layout == "NCHW" else (len(mean),)
    node = Normalize.from_mean_std(mean, std, shape, onnx_name="(--mean/--std)")
    key = _key("prepended_normalize", {n[0] for n in nodes})
    rewired = [[k, n, tuple(key if i == INPUT else i for i in ins)] for k, n, ins in nodes]
    spec.normalization, spec.mean, spec.std = "prepended", tuple(mean), tuple(std)
    return [[key, node, (INPUT,)]] + rewired


def _check_finite_params(graph):
    for key, node, _ in graph:
        for pname, t in list(node.named_parameters()) + list(node.named_buffers()):
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise BadModelError(f"node {node.onnx_name!r} has NaN or inf in its {pname} "
                                    f"(e.g. a division by a zero constant)")
