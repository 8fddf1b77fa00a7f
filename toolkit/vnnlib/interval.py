"""Interval semantics of an ONNX graph, in float64 with rounding margins (notes §6, option (c)).

``IntervalNet(model, mode)`` maps boxes on the graph inputs to boxes enclosing every tensor. It reads the
ONNX graph directly (no IR, no torch), so it covers every op a VNN-LIB query may meet in small models
(shape ops, Gather/Slice/Split, Cast, Where, Pow, Softmax ...) and hidden tensors of any node. It is the
engine behind input splitting; large ReLU networks go through the IR bound engine instead (``ir_solver``).

Soundness contract, per mode:
- ``"real"``: the box encloses the real-arithmetic value of every tensor (the weights are the file's
  float32 numbers, taken as exact reals). Only the float64 rounding of the bound computation is covered,
  by γ-margins with u = 2^-53.
- ``"float32"``: the box *also* encloses the value onnxruntime computes when it evaluates the model node
  by node in float32 (optimisations off, ``models.OnnxModel``). Each op's result is widened by a bound on
  its float32 rounding error: correctly rounded ops (+ − × ÷, sqrt) by one rounding, dot products and sums
  of n terms by γ_n·Σ|terms| (Higham, any summation order), and the transcendental kernels of onnxruntime
  (not correctly rounded) by a generous empirical bound (see ``_TRANSCENDENTAL``); plus an absolute term
  for subnormals/flush-to-zero. float32 mode encloses the real value too.

Op semantics (attributes, opset differences) come from ``onnx.reference``: structural ops (Reshape, Slice,
Gather, Pad, ...) move elements, so they are applied to the lower and upper arrays separately; monotone
ops (Relu, MaxPool, ReduceSum, ...) likewise; affine ops with constant weights use centre/radius.
``self_check`` compares point evaluations with onnxruntime, so a semantic mismatch between the two is
caught before any ``unsat`` is claimed.
"""
from __future__ import annotations

import math

import numpy as np

from toolkit.errors import BadModelError, UnsupportedOpError

from .models import OnnxModel, concrete_shape

U32, U64 = 2.0 ** -24, 2.0 ** -53
INF = math.inf

#: Empirical error bounds of onnxruntime's float32 kernels that are not correctly rounded
#: (relative, absolute); measured maxima on CPU (onnxruntime 1.32): Sigmoid 4.5 ulp / 1.7e-7 abs,
#: Tanh 4.2 ulp / 2.4e-7, Exp 1.2 ulp, Softmax 65 ulp. The bounds below are ≥ 10x those.
_TRANSCENDENTAL = {"Sigmoid": (2.0 ** -18, 2.0 ** -20), "Tanh": (2.0 ** -18, 2.0 ** -20),
                   "Exp": (2.0 ** -18, 2.0 ** -120), "Softmax": (2.0 ** -14, 2.0 ** -21),
                   "Pow": (2.0 ** -18, 2.0 ** -120), "Sqrt": (2.0 ** -23, 2.0 ** -120)}

STRUCTURAL = ("Identity", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Concat", "Slice",
              "Gather", "Split", "Expand", "Pad", "Tile")
EXACT_MONOTONE = ("Relu", "MaxPool", "GlobalMaxPool", "ReduceMax", "ReduceMin", "Floor", "Ceil", "Clip")
SUM_MONOTONE = ("ReduceSum", "ReduceMean", "AveragePool", "GlobalAveragePool")
ARITH = ("Add", "Sub", "Mul", "Div")
COMPARE = ("Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual")
OTHER = ("Constant", "ConstantOfShape", "Shape", "Size", "Cast", "Where", "Not", "And", "Or", "Neg", "Abs",
         "Pow", "Sqrt", "Sigmoid", "Tanh", "Exp", "Softmax", "MatMul", "Gemm", "Conv", "BatchNormalization",
         "Dropout", "LeakyRelu")
#: Every op with an interval rule (what ``supports --onnx-operators`` reports).
SUPPORTED_OPS = tuple(sorted(set(STRUCTURAL + EXACT_MONOTONE + SUM_MONOTONE + ARITH + COMPARE + OTHER)))


class Const:
    """An exactly known tensor (initializers, constant folding of shape/integer ops)."""

    __slots__ = ("arr",)

    def __init__(self, arr):
        self.arr = np.asarray(arr)


class Box:
    """lo <= value <= hi elementwise (float64 arrays); kind: "float", "int" or "bool"."""

    __slots__ = ("lo", "hi", "kind")

    def __init__(self, lo, hi, kind="float"):
        self.lo, self.hi, self.kind = np.asarray(lo, np.float64), np.asarray(hi, np.float64), kind

    @property
    def shape(self):
        return self.lo.shape


def _kind(dtype) -> str:
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return "bool"
    return "float" if np.issubdtype(dtype, np.floating) else "int"


def as_box(v) -> Box:
    if isinstance(v, Box):
        return v
    a = np.asarray(v.arr)
    return Box(a.astype(np.float64), a.astype(np.float64), _kind(a.dtype))


def _clean(lo, hi):
    """NaN endpoints (inf - inf, 0 * inf) become the widest bound."""
    return np.where(np.isnan(lo), -INF, lo), np.where(np.isnan(hi), INF, hi)


class Rounding:
    """The margins of one mode (module docstring)."""

    def __init__(self, mode: str):
        if mode not in ("real", "float32"):
            raise ValueError(f"unknown interval mode {mode!r}")
        self.f32 = mode == "float32"

    def gamma(self, n: int) -> float:
        g = lambda k, u: k * u / (1 - k * u)
        return g(n + 2, U64) + (g(n + 1, U32) if self.f32 else 0.0)

    def tiny(self, n: int) -> float:
        return (n + 1) * (2.0 ** -125 if self.f32 else 2.0 ** -1020)

    def widen(self, lo, hi, n: int, mag=None):
        """Widen by γ_n·mag (mag defaults to the endpoint magnitudes) plus the subnormal term."""
        if mag is None:
            mag = np.maximum(np.abs(lo), np.abs(hi))
        e = self.gamma(n) * np.where(np.isfinite(mag), mag, INF) + self.tiny(n)
        with np.errstate(invalid="ignore"):
            return _clean(lo - e, hi + e)

    def directed(self, lo, hi, lo_exact, hi_exact):
        """Outward rounding of one correctly rounded float64 result: one ulp out unless the float64 result
        is exact; in float32 mode then onto the float32 grid (the model's own correctly rounded op lands
        there, between the grid neighbours of the real result)."""
        lo = np.where(lo_exact, lo, np.nextafter(lo, -INF))
        hi = np.where(hi_exact, hi, np.nextafter(hi, INF))
        if self.f32:
            lo, hi = down32(lo), up32(hi)
        return _clean(lo, hi)

    def transcendental(self, op, lo, hi):
        rel, abs_ = _TRANSCENDENTAL[op] if self.f32 else (2.0 ** -50, 2.0 ** -1000)
        e_lo, e_hi = rel * np.abs(lo) + abs_, rel * np.abs(hi) + abs_
        return _clean(lo - e_lo, hi + e_hi)


def _attr(node, name, default=None):
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


# ---------------------------------------------------------------------------------------------------------
# the engine
# ---------------------------------------------------------------------------------------------------------
class IntervalNet:
    """Interval evaluation of one ONNX model (module docstring)."""

    def __init__(self, model: OnnxModel, mode: str = "float32"):
        from onnx import numpy_helper
        from onnx.reference import ReferenceEvaluator

        self.model, self.mode, self.r = model, mode, Rounding(mode)
        g = model.proto.graph
        for node in g.node:
            if node.domain not in ("", "ai.onnx"):
                raise UnsupportedOpError(f"{node.domain}.{node.op_type}", node.name or node.output[0],
                                         supported=SUPPORTED_OPS)
            if node.op_type not in SUPPORTED_OPS:
                raise UnsupportedOpError(node.op_type, node.name or node.output[0], supported=SUPPORTED_OPS)
        try:
            self.ref = ReferenceEvaluator(model.proto)
        except Exception as e:
            raise BadModelError(f"cannot build the reference semantics of {model.path}: "
                                f"{str(e).splitlines()[0][:200]}") from None
        self.opset = model.opset or 1
        self.consts = {i.name: Const(numpy_helper.to_array(i)) for i in g.initializer}
        self.input_shapes = [concrete_shape(i.shape) for i in model.inputs]
        self.input_kinds = [_kind(np.dtype(_NP.get(i.dtype, np.float32))) for i in model.inputs]
        self.output_names = [o.name for o in model.outputs]

    def run(self, los, his, want=None) -> dict:
        """Boxes of the graph outputs (and of the tensors in ``want``) for input boxes (lo_i, hi_i)."""
        env = dict(self.consts)
        for info, lo, hi, shape, kind in zip(self.model.inputs, los, his, self.input_shapes, self.input_kinds):
            env[info.name] = Box(np.reshape(lo, shape), np.reshape(hi, shape), kind)
        for node, rt in zip(self.model.proto.graph.node, self.ref.rt_nodes_):
            ins = [env[n] if n else None for n in node.input]
            try:
                outs = self._node(node, rt, ins)
            except (UnsupportedOpError, BadModelError):
                raise
            except Exception as e:
                raise BadModelError(f"interval evaluation failed at node {node.name or node.output[0]!r} "
                                    f"({node.op_type}): {str(e).splitlines()[0][:200]}") from None
            for name, v in zip(node.output, outs):
                if name:
                    env[name] = v
        names = list(self.output_names) + [n for n in (want or ()) if n not in self.output_names]
        return {n: as_box(env[n]) for n in names}

    # -- dispatch ------------------------------------------------------------------------------------------
    def _node(self, node, rt, ins):
        op = node.op_type
        if all(v is None or isinstance(v, Const) for v in ins) and self._exact_fold(op, ins):
            outs = rt.run(*[None if v is None else v.arr for v in ins])
            return [Const(o) for o in outs]
        if op in STRUCTURAL:
            return self._structural(node, rt, ins)
        if op in EXACT_MONOTONE:
            return self._monotone(node, rt, ins, exact=True)
        if op in SUM_MONOTONE:
            return self._monotone(node, rt, ins, exact=False)
        if op in ARITH:
            return [self._arith(node, ins)]
        if op in COMPARE:
            return [self._compare(op, as_box(ins[0]), as_box(ins[1]))]
        return getattr(self, "_op_" + op)(node, rt, ins)

    def _exact_fold(self, op, ins) -> bool:
        """Constant folding is exact for ops that only move, compare or count values, and for integer math."""
        if op in STRUCTURAL + COMPARE + ("Constant", "ConstantOfShape", "Shape", "Size", "Where", "Not",
                                          "And", "Or", "Neg", "Abs", "Relu", "MaxPool", "ReduceMax",
                                          "ReduceMin", "Floor", "Ceil", "Dropout"):
            return True
        if op == "Cast":
            return True if _kind(ins[0].arr.dtype) != "float" else False
        return all(v is None or _kind(v.arr.dtype) != "float" for v in ins)

    # -- element-moving and monotone ops -------------------------------------------------------------------
    def _structural(self, node, rt, ins):
        data = range(len(ins)) if node.op_type == "Concat" else (0,)
        for i, v in enumerate(ins):
            if i not in data and isinstance(v, Box):
                raise UnsupportedOpError(node.op_type, node.name or node.output[0],
                                         method="interval (input-dependent shape/index argument)")
        kind = next(as_box(ins[i]).kind for i in data if ins[i] is not None)
        args = lambda end: [getattr(as_box(v), end) if (i in data and v is not None) else
                            (None if v is None else v.arr) for i, v in enumerate(ins)]
        lows, highs = rt.run(*args("lo")), rt.run(*args("hi"))
        return [Box(l, h, kind) for l, h in zip(lows, highs)]

    def _monotone(self, node, rt, ins, exact):
        """Ops non-decreasing in their data input (all other inputs constant): apply to lo and hi."""
        x = as_box(ins[0])
        if any(isinstance(v, Box) for v in ins[1:]):
            raise UnsupportedOpError(node.op_type, node.name or node.output[0],
                                     method="interval (input-dependent parameter)")
        rest = [None if v is None else v.arr for v in ins[1:]]
        lo, hi = rt.run(x.lo, *rest)[0], rt.run(x.hi, *rest)[0]
        if exact or x.kind != "float":
            return [Box(lo, hi, x.kind)]
        mag = rt.run(np.maximum(np.abs(x.lo), np.abs(x.hi)), *rest)[0]
        n = int(np.prod(_attr(node, "kernel_shape", []))) if "Pool" in node.op_type and \
            node.op_type != "GlobalAveragePool" else max(1, x.lo.size // max(1, np.size(lo)))
        if node.op_type == "ReduceMean" or node.op_type.endswith("AveragePool"):
            n += 1  # the division
        return [Box(*self.r.widen(np.asarray(lo, np.float64), np.asarray(hi, np.float64), n,
                                  np.asarray(mag, np.float64)), "float")]

    def _op_Dropout(self, node, rt, ins):
        if len(ins) > 2 and ins[2] is not None and (not isinstance(ins[2], Const) or bool(ins[2].arr)):
            raise UnsupportedOpError("Dropout", node.name or node.output[0], method="interval (training mode)")
        x = as_box(ins[0])
        return [x, Const(np.ones(x.shape, dtype=bool))]

    def _op_LeakyRelu(self, node, rt, ins):
        alpha = float(_attr(node, "alpha", 0.01))
        x = as_box(ins[0])
        if alpha < 0:
            raise UnsupportedOpError("LeakyRelu", node.name or node.output[0], method="interval (alpha < 0)")
        f = lambda v: np.where(v >= 0, v, alpha * v)
        lo, hi = f(x.lo), f(x.hi)
        neg = x.lo < 0  # only the scaled branch rounds
        wl, wh = self.r.widen(lo, hi, 1)
        return [Box(np.where(neg, wl, lo), np.where(x.hi < 0, wh, hi))]

    # -- arithmetic ----------------------------------------------------------------------------------------
    def _arith(self, node, ins):
        """+ − × ÷ of two boxes (or a box and a constant): the exact interval ends, rounded outward."""
        op = node.op_type
        a, b = as_box(ins[0]), as_box(ins[1])
        kind = a.kind if a.kind == b.kind else "float"
        if kind != "float" and op == "Div":
            raise UnsupportedOpError("Div", node.name or node.output[0], method="interval (integer Div)")
        with np.errstate(all="ignore"):
            if op in ("Add", "Sub"):
                bl, bh = (b.lo, b.hi) if op == "Add" else (-b.hi, -b.lo)
                lo, hi = a.lo + bl, a.hi + bh
                lo_x, hi_x = _two_sum_err(a.lo, bl, lo) == 0, _two_sum_err(a.hi, bh, hi) == 0
            elif op == "Mul" and node.input[0] == node.input[1]:
                lo, hi, lo_x, hi_x = _square(a.lo, a.hi)
            elif op == "Mul":
                lo, hi, lo_x, hi_x = _candidates([(x, y) for x in (a.lo, a.hi) for y in (b.lo, b.hi)], _prod)
            else:
                lo, hi, lo_x, hi_x = _div(a.lo, a.hi, b.lo, b.hi)
        if kind != "float":
            return Box(*_clean(lo, hi), kind)  # integers below 2**53: exact
        return Box(*self.r.directed(lo, hi, lo_x, hi_x), "float")

    def _op_Neg(self, node, rt, ins):
        x = as_box(ins[0])
        return [Box(-x.hi, -x.lo, x.kind)]

    def _op_Abs(self, node, rt, ins):
        x = as_box(ins[0])
        lo = np.where(x.lo >= 0, x.lo, np.where(x.hi <= 0, -x.hi, 0.0))
        return [Box(lo, np.maximum(np.abs(x.lo), np.abs(x.hi)), x.kind)]

    def _op_Pow(self, node, rt, ins):
        x, e = ins
        name = node.name or node.output[0]
        with np.errstate(all="ignore"):
            if isinstance(e, Const):
                lo, hi = _pow_const_exponent(as_box(x), np.asarray(e.arr, np.float64))
            elif isinstance(x, Const):
                lo, hi = _pow_const_base(np.asarray(x.arr, np.float64), as_box(e), name)
            else:
                raise UnsupportedOpError("Pow", name, method="interval (both base and exponent vary)")
        exact = np.isfinite(lo) & (lo == hi) & (lo == 1.0)  # x**0 == 1 exactly
        wl, wh = self.r.transcendental("Pow", *_clean(lo, hi))
        return [Box(np.where(exact, lo, wl), np.where(exact, hi, wh))]

    def _op_Sqrt(self, node, rt, ins):
        x = as_box(ins[0])
        with np.errstate(all="ignore"):
            lo, hi = np.sqrt(np.maximum(x.lo, 0)), np.sqrt(x.hi)
        lo, hi = self.r.transcendental("Sqrt", lo, hi)
        nan = x.lo < 0  # sqrt of a negative number is NaN: no useful bound
        return [Box(np.where(nan, -INF, np.maximum(lo, 0)), np.where(nan, INF, hi))]

    def _op_Sigmoid(self, node, rt, ins):
        x = as_box(ins[0])
        with np.errstate(over="ignore"):
            s = lambda v: 1.0 / (1.0 + np.exp(-v))
            lo, hi = self.r.transcendental("Sigmoid", s(x.lo), s(x.hi))
        top = 1.0 + (2.0 ** -22 if self.r.f32 else 0.0)  # onnxruntime's float32 Sigmoid reaches 1 + 1 ulp
        return [Box(np.clip(lo, 0.0, top), np.clip(hi, 0.0, top))]

    def _op_Tanh(self, node, rt, ins):
        x = as_box(ins[0])
        lo, hi = self.r.transcendental("Tanh", np.tanh(x.lo), np.tanh(x.hi))
        top = 1.0 + (2.0 ** -22 if self.r.f32 else 0.0)
        return [Box(np.clip(lo, -top, top), np.clip(hi, -top, top))]

    def _op_Exp(self, node, rt, ins):
        x = as_box(ins[0])
        with np.errstate(over="ignore"):
            lo, hi = self.r.transcendental("Exp", np.exp(x.lo), np.exp(x.hi))
        return [Box(np.maximum(lo, 0.0), hi)]

    def _op_Softmax(self, node, rt, ins):
        x = as_box(ins[0])
        shape = x.shape
        axis = _attr(node, "axis", 1 if self.opset < 13 else -1)
        axis = axis + len(shape) if axis < 0 else axis
        if self.opset < 13:  # coerced to 2-D: softmax over all axes from ``axis`` on
            lo = x.lo.reshape(int(np.prod(shape[:axis])), -1)
            hi = x.hi.reshape(lo.shape)
            ax = 1
        else:
            lo, hi, ax = x.lo, x.hi, axis
        lo, hi = np.moveaxis(lo, ax, -1), np.moveaxis(hi, ax, -1)
        # y_i = 1 / (1 + sum_{j != i} exp(x_j - x_i)): decreasing in x_j, increasing in x_i
        with np.errstate(over="ignore", invalid="ignore"):
            eye = np.eye(lo.shape[-1], dtype=bool)
            d_min = np.where(eye, -INF, lo[..., None, :] - hi[..., :, None])
            d_max = np.where(eye, -INF, hi[..., None, :] - lo[..., :, None])
            y_hi = 1.0 / (1.0 + np.exp(d_min).sum(-1))
            y_lo = 1.0 / (1.0 + np.exp(d_max).sum(-1))
        y_lo, y_hi = self.r.transcendental("Softmax", *_clean(y_lo, y_hi))
        if not self.r.f32:
            n = lo.shape[-1] + 4
            y_lo, y_hi = self.r.widen(y_lo, y_hi, n)
        top = 1.0 + (2.0 ** -22 if self.r.f32 else 0.0)
        y_lo, y_hi = np.clip(y_lo, 0.0, top), np.clip(y_hi, 0.0, top)
        y_lo, y_hi = np.moveaxis(y_lo, -1, ax), np.moveaxis(y_hi, -1, ax)
        return [Box(y_lo.reshape(shape), y_hi.reshape(shape))]

    # -- affine ops with constant weights ------------------------------------------------------------------
    def _op_MatMul(self, node, rt, ins):
        a, b = ins
        lo, hi, mag = _matmul(a, b)
        n = (as_box(a).shape[-1] if as_box(a).lo.ndim else 1)
        return [Box(*self.r.widen(lo, hi, n, mag))]

    def _op_Gemm(self, node, rt, ins):
        a, b = ins[0], ins[1]
        alpha, beta = float(_attr(node, "alpha", 1.0)), float(_attr(node, "beta", 1.0))
        if _attr(node, "transA", 0):
            a = _transpose(a)
        if _attr(node, "transB", 0):
            b = _transpose(b)
        lo, hi, mag = _matmul(a, b)
        lo, hi = (alpha * lo, alpha * hi) if alpha >= 0 else (alpha * hi, alpha * lo)
        mag = abs(alpha) * mag
        if len(ins) > 2 and ins[2] is not None and beta != 0:
            c = as_box(ins[2])
            cl, ch = (beta * c.lo, beta * c.hi) if beta >= 0 else (beta * c.hi, beta * c.lo)
            lo, hi, mag = lo + cl, hi + ch, mag + np.maximum(np.abs(cl), np.abs(ch))
        n = as_box(a).shape[-1] + 2
        return [Box(*self.r.widen(lo, hi, n, mag))]

    def _op_Conv(self, node, rt, ins):
        x, w = as_box(ins[0]), ins[1]
        b = ins[2] if len(ins) > 2 else None
        if not isinstance(w, Const) or isinstance(b, Box):
            raise UnsupportedOpError("Conv", node.name or node.output[0], method="interval (non-constant weights)")
        W = np.asarray(w.arr, np.float64)
        B = None if b is None else np.asarray(b.arr, np.float64)
        mid, rad = (x.lo + x.hi) / 2, (x.hi - x.lo) / 2
        mid = np.where(np.isfinite(mid), mid, 0.0)
        if not (np.isfinite(x.lo).all() and np.isfinite(x.hi).all()):
            rad = np.where(np.isfinite(rad), rad, INF)
        out_mid = rt.run(mid, W, B)[0] if B is not None else rt.run(mid, W)[0]
        with np.errstate(invalid="ignore"):
            out_rad = rt.run(rad, np.abs(W))[0]
            mag = rt.run(np.abs(mid) + rad, np.abs(W))[0] + (0 if B is None else
                                                             np.abs(B).reshape(-1, *([1] * (W.ndim - 2))))
        n = int(np.prod(W.shape[1:])) + 1
        return [Box(*self.r.widen(out_mid - out_rad, out_mid + out_rad, n, mag))]

    def _op_BatchNormalization(self, node, rt, ins):
        x = as_box(ins[0])
        if any(not isinstance(v, Const) for v in ins[1:5]) or _attr(node, "training_mode", 0):
            raise UnsupportedOpError("BatchNormalization", node.name or node.output[0],
                                     method="interval (training mode or non-constant statistics)")
        scale, bias, mean, var = (np.asarray(v.arr, np.float64) for v in ins[1:5])
        eps = float(_attr(node, "epsilon", 1e-5))
        shape = (-1,) + (1,) * (x.lo.ndim - 2) if x.lo.ndim >= 2 else (-1,)
        s = (scale / np.sqrt(var + eps)).reshape(shape)
        t = (bias - mean * scale / np.sqrt(var + eps)).reshape(shape)
        lo, hi = np.where(s >= 0, x.lo * s, x.hi * s) + t, np.where(s >= 0, x.hi * s, x.lo * s) + t
        mag = np.maximum(np.abs(x.lo), np.abs(x.hi)) * np.abs(s) + np.abs(mean.reshape(shape) * s) + \
            np.abs(bias.reshape(shape))
        return [Box(*self.r.widen(*_clean(lo, hi), 8, mag))]

    # -- comparisons, logic, selection, casts ----------------------------------------------------------------
    def _compare(self, op, a: Box, b: Box) -> Box:
        if op == "Equal":
            true = (a.lo == a.hi) & (b.lo == b.hi) & (a.lo == b.lo)
            false = (a.hi < b.lo) | (b.hi < a.lo)
        elif op in ("Greater", "Less"):
            if op == "Less":
                a, b = b, a
            true, false = a.lo > b.hi, a.hi <= b.lo
        else:
            if op == "LessOrEqual":
                a, b = b, a
            true, false = a.lo >= b.hi, a.hi < b.lo
        return Box(true.astype(np.float64), (~false).astype(np.float64), "bool")

    def _op_Not(self, node, rt, ins):
        x = as_box(ins[0])
        return [Box(1.0 - x.hi, 1.0 - x.lo, "bool")]

    def _op_And(self, node, rt, ins):
        a, b = as_box(ins[0]), as_box(ins[1])
        return [Box(np.minimum(a.lo, b.lo), np.minimum(a.hi, b.hi), "bool")]

    def _op_Or(self, node, rt, ins):
        a, b = as_box(ins[0]), as_box(ins[1])
        return [Box(np.maximum(a.lo, b.lo), np.maximum(a.hi, b.hi), "bool")]

    def _op_Where(self, node, rt, ins):
        c, a, b = (as_box(v) for v in ins)
        shape = np.broadcast_shapes(c.shape, a.shape, b.shape)
        c_lo, c_hi = np.broadcast_to(c.lo, shape), np.broadcast_to(c.hi, shape)
        a_lo, a_hi, b_lo, b_hi = (np.broadcast_to(v, shape) for v in (a.lo, a.hi, b.lo, b.hi))
        lo = np.where(c_lo >= 1, a_lo, np.where(c_hi <= 0, b_lo, np.minimum(a_lo, b_lo)))
        hi = np.where(c_lo >= 1, a_hi, np.where(c_hi <= 0, b_hi, np.maximum(a_hi, b_hi)))
        return [Box(lo, hi, a.kind if a.kind == b.kind else "float")]

    def _op_Cast(self, node, rt, ins):
        import onnx

        x = as_box(ins[0])
        to = int(_attr(node, "to"))
        name = onnx.TensorProto.DataType.Name(to)
        if name == "BOOL":
            true = (x.lo > 0) | (x.hi < 0)
            false = (x.lo == 0) & (x.hi == 0)
            return [Box(true.astype(np.float64), (~false).astype(np.float64), "bool")]
        if name in ("INT64", "INT32", "INT16", "INT8", "UINT8", "UINT16", "UINT32", "UINT64"):
            if x.kind != "float":
                return [Box(x.lo, x.hi, "int")]
            ok = np.isfinite(x.lo) & np.isfinite(x.hi)
            return [Box(np.where(ok, np.trunc(x.lo), -INF), np.where(ok, np.trunc(x.hi), INF), "int")]
        if name == "DOUBLE":
            return [Box(x.lo, x.hi, "float")]
        if name == "FLOAT":  # rounding to float32 is part of the model, in real semantics too
            return [Box(down32(x.lo), up32(x.hi), "float")]
        raise UnsupportedOpError("Cast", node.name or node.output[0], method=f"interval (cast to {name})")

    def _op_Shape(self, node, rt, ins):
        x = ins[0]
        return [Const(rt.run(np.zeros(x.shape if isinstance(x, Box) else x.arr.shape))[0])]

    def _op_Size(self, node, rt, ins):
        x = ins[0]
        return [Const(np.array(int(np.prod(x.shape if isinstance(x, Box) else x.arr.shape)), np.int64))]

    # generic fallbacks reached only when a "fold-only" op meets a box input
    def _op_Constant(self, node, rt, ins):
        return [Const(rt.run()[0])]

    def _op_ConstantOfShape(self, node, rt, ins):
        raise UnsupportedOpError("ConstantOfShape", node.name or node.output[0],
                                 method="interval (input-dependent shape)")

    # -- checks --------------------------------------------------------------------------------------------
    def self_check(self, points, want=(), tol_real=1e-5):
        """Point boxes must enclose onnxruntime's values (float32 mode), or come within ``tol_real``
        relative (real mode: onnxruntime rounds, the real value does not). Returns None or a message."""
        for xs in points:
            ort = self.model.run(xs, want)
            boxes = self.run([np.asarray(x, np.float64) for x in xs], [np.asarray(x, np.float64) for x in xs],
                             want)
            for name, v in ort.items():
                b = boxes[name]
                v = np.asarray(v, np.float64).reshape(b.lo.shape)
                slack = 0.0 if self.r.f32 else tol_real * (1 + np.abs(v))
                bad = ~((b.lo - slack <= v) & (v <= b.hi + slack)) & ~np.isnan(v)
                if bad.any():
                    i = int(np.argmax(bad.ravel()))
                    return (f"interval semantics disagree with onnxruntime on tensor {name!r}: value "
                            f"{v.ravel()[i]!r} outside [{b.lo.ravel()[i]!r}, {b.hi.ravel()[i]!r}]")
        return None


_NP = {"float32": np.float32, "float64": np.float64, "int64": np.int64, "int32": np.int32, "bool": np.bool_,
       "float16": np.float16}


# ---------------------------------------------------------------------------------------------------------
# interval kernels
# ---------------------------------------------------------------------------------------------------------
_SPLIT = 134217729.0  # 2**27 + 1 (Veltkamp)


def down32(v):
    """Largest float32 value <= v (as float64)."""
    y = np.asarray(v, np.float64).astype(np.float32)
    y = np.where(y.astype(np.float64) > v, np.nextafter(y, np.float32(-INF)), y)
    return y.astype(np.float64)


def up32(v):
    y = np.asarray(v, np.float64).astype(np.float32)
    y = np.where(y.astype(np.float64) < v, np.nextafter(y, np.float32(INF)), y)
    return y.astype(np.float64)


def _two_sum_err(a, b, s):
    """Exact rounding error of s = fl(a + b) (Knuth's TwoSum); NaN when infinities are involved."""
    bb = s - a
    return (a - (s - bb)) + (b - bb)


def _split(a):
    c = _SPLIT * a
    hi = c - (c - a)
    return hi, a - hi


def _prod_exact(a, b, p):
    """True where p = fl(a*b) equals a*b exactly (Dekker's TwoProduct; far from under/overflow only)."""
    ah, al = _split(a)
    bh, bl = _split(b)
    err = ((ah * bh - p) + ah * bl + al * bh) + al * bl
    zero = (a == 0) | (b == 0)
    return zero | ((err == 0) & (np.abs(p) > 2.0 ** -900) & (np.abs(p) < 2.0 ** 900))


def _prod(x, y):
    """x*y with 0·inf = 0, and whether it is exact."""
    with np.errstate(invalid="ignore", over="ignore"):
        p = x * y
    zero = (x == 0) | (y == 0)
    p = np.where(zero, 0.0, p)
    return p, zero | _prod_exact(x, y, p)


def _quot(x, y):
    with np.errstate(all="ignore"):
        q = x / y
        p = q * y
    exact = ((x == 0) & (y != 0) & np.isfinite(y)) | ((p == x) & _prod_exact(q, y, p))
    return q, exact


def _candidates(pairs, f):
    """min/max over candidate end products, each rounded down/up unless exact: (lo, hi, lo exact, hi exact)."""
    vals = [f(x, y) for x, y in pairs]
    lows = [np.where(e, v, np.nextafter(v, -INF)) for v, e in vals]
    highs = [np.where(e, v, np.nextafter(v, INF)) for v, e in vals]
    return np.minimum.reduce(lows), np.maximum.reduce(highs), True, True


def _square(lo, hi):
    l, h, _, _ = _candidates([(lo, lo), (hi, hi)], _prod)
    straddle = (lo < 0) & (hi > 0)
    return np.where(straddle, 0.0, l), h, True, True


def _div(al, ah, bl, bh):
    shape = np.broadcast_shapes(np.shape(al), np.shape(bl))
    al, ah, bl, bh = (np.broadcast_to(v, shape) for v in (al, ah, bl, bh))
    safe = (bl > 0) | (bh < 0)
    lo, hi, _, _ = _candidates([(x, y) for x in (al, ah) for y in (bl, bh)], _quot)
    return np.where(safe, lo, -INF), np.where(safe, hi, INF), True, True


def _pow_const_exponent(x: Box, e):
    lo_b, hi_b, e = np.broadcast_arrays(x.lo, x.hi, e)
    a, b = np.power(lo_b, e), np.power(hi_b, e)
    integer = np.isfinite(e) & (np.floor(e) == e)
    even = integer & (np.mod(e, 2) == 0)
    straddle = (lo_b < 0) & (hi_b > 0)
    touches0 = (lo_b <= 0) & (hi_b >= 0)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    # even positive power over an interval containing 0: minimum 0
    lo = np.where(even & (e > 0) & straddle, 0.0, lo)
    # negative powers are unbounded near 0; non-integer powers of negatives are NaN
    wild = ((e < 0) & touches0) | (~integer & (lo_b < 0))
    lo, hi = np.where(wild, -INF, lo), np.where(wild, INF, hi)
    zero = e == 0  # x**0 = 1 for every x (C pow and onnxruntime agree, 0**0 included)
    return np.where(zero, 1.0, lo), np.where(zero, 1.0, hi)


def _pow_const_base(base, e: Box, name):
    if np.any(base <= 0):
        raise UnsupportedOpError("Pow", name, method="interval (non-positive constant base)")
    b, lo_b, hi_b = np.broadcast_arrays(base, e.lo, e.hi)
    a, c = np.power(b, lo_b), np.power(b, hi_b)
    return np.minimum(a, c), np.maximum(a, c)


def _transpose(v):
    if isinstance(v, Const):
        return Const(np.asarray(v.arr).T)
    return Box(v.lo.T, v.hi.T, v.kind)


def _matmul(a, b):
    """Interval matrix product (centre/radius); returns lo, hi and Σ|terms| for the rounding margin."""
    A, B = as_box(a), as_box(b)
    ma, ra = (A.lo + A.hi) / 2, (A.hi - A.lo) / 2
    mb, rb = (B.lo + B.hi) / 2, (B.hi - B.lo) / 2
    with np.errstate(invalid="ignore", over="ignore"):
        mid = ma @ mb
        if isinstance(b, Const):
            rad = ra @ np.abs(mb)
        elif isinstance(a, Const):
            rad = np.abs(ma) @ rb
        else:
            rad = np.abs(ma) @ rb + ra @ np.abs(mb) + ra @ rb
        mag = (np.abs(ma) + ra) @ (np.abs(mb) + rb)
    if not (np.all(np.isfinite(mid)) and np.all(np.isfinite(rad))):
        bad = ~(np.isfinite(mid) & np.isfinite(rad))
        mid, rad = np.where(bad, 0.0, mid), np.where(bad, INF, rad)
    return mid - rad, mid + rad, mag
