"""A query bound to its models: concrete evaluation (onnxruntime), interval bounds, witness confirmation.

A witness is the vector of all network inputs (the query's input sub-vector). ``confirm`` turns it into an
assignment only after
1. onnxruntime evaluated every network on it in the model's own element type (optimisations off),
2. the *whole* query (the original assertion tree, not the DNF) holds exactly at those values:
   ``Fraction`` arithmetic with the literals' decimal text, strict comparisons strict, ``==`` exact,
3. when the query declares ``real`` variables, the real-arithmetic values satisfy it too: the interval
   engine in real mode encloses them at the witness, and the query must hold on the whole enclosure
   (a float32 evaluation that only satisfies the query by rounding is not a real counterexample).
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np

from toolkit.errors import BadModelError

from .interval import IntervalNet
from .models import NUMPY_TYPES
from .query import Query, check_hidden_shapes


class _ExactView:
    def __init__(self, arr):
        self.arr = arr

    def __getitem__(self, i):
        return Fraction(float(self.arr[i]))


class Assignment:
    """Values of every declared variable (name -> array in the declared shape)."""

    def __init__(self, query: Query, vector: np.ndarray, raw: dict):
        self.query, self.vector, self.raw = query, vector, raw

    def value(self, var):
        return self.raw[var.name]


class Problem:
    def __init__(self, query: Query):
        self.q = query
        self.mode = "real" if query.all_real else "float32"
        self._nets = {}
        self.input_vars = [v for n in query.nets for v in n.inputs]
        self.n_evals = 0

    # -- interval bounds -----------------------------------------------------------------------------------
    def interval_net(self, net, mode=None) -> IntervalNet:
        mode = mode or self.mode
        key = (id(net.model), mode)
        if key not in self._nets:
            self._nets[key] = IntervalNet(net.model, mode)
        return self._nets[key]

    def bounds(self, in_lo, in_hi, mode=None):
        """Boxes over the whole value vector for a box over the input sub-vector."""
        q = self.q
        lo, hi = np.empty(q.n_values), np.empty(q.n_values)
        lo[q.input_index], hi[q.input_index] = in_lo, in_hi
        for n in q.nets:
            inet = self.interval_net(n, mode)
            los = [lo[v.offset:v.offset + v.size] for v in n.inputs]
            his = [hi[v.offset:v.offset + v.size] for v in n.inputs]
            want = [h.onnx_name for h in n.hidden]
            boxes = inet.run(los, his, want)
            for v, onnx_name in zip(n.hidden + n.outputs, want + inet.output_names):
                b = boxes[onnx_name]
                if b.lo.size != v.size:
                    raise BadModelError(f"tensor {onnx_name!r} has {b.lo.size} values but {v.name!r} is declared "
                                        f"with shape {list(v.shape)}")
                lo[v.offset:v.offset + v.size] = b.lo.ravel()
                hi[v.offset:v.offset + v.size] = b.hi.ravel()
        return lo, hi

    # -- concrete evaluation -------------------------------------------------------------------------------
    def snap(self, x, lo, hi):
        """Round a point of the input box to the inputs' element types, staying inside the box."""
        out = np.array(x, dtype=np.float64)
        for n in self.q.nets:
            for v, info in zip(n.inputs, n.model.inputs):
                sl = slice(v.offset, v.offset + v.size)
                pos = np.searchsorted(self.q.input_index, np.arange(sl.start, sl.stop))
                dt = NUMPY_TYPES.get(info.dtype, np.float32)
                low, high = lo[pos], hi[pos]
                y = np.clip(out[pos], low, np.maximum(low, high)).astype(dt)
                if np.issubdtype(dt, np.floating):
                    y = np.where(y.astype(np.float64) < low, np.nextafter(y, dt(np.inf)), y)
                    y = np.where(y.astype(np.float64) > high, np.nextafter(y, dt(-np.inf)), y)
                out[pos] = y.astype(np.float64)
        return out

    def evaluate(self, x):
        """onnxruntime values of every variable at input vector ``x``: (value vector, {name: array})."""
        q = self.q
        vec = np.empty(q.n_values)
        vec[q.input_index] = x
        raw = {}
        self.n_evals += 1
        for n in q.nets:
            feeds = [vec[v.offset:v.offset + v.size] for v in n.inputs]
            want = [h.onnx_name for h in n.hidden]
            out = n.model.run(feeds, want)
            for v, info, f in zip(n.inputs, n.model.inputs, feeds):
                a = np.asarray(f).astype(NUMPY_TYPES.get(info.dtype, np.float32))
                raw[v.name] = a.reshape(v.shape)
                vec[v.offset:v.offset + v.size] = a.astype(np.float64).ravel()
            check_hidden_shapes(q, {(n.name, h.name): out[h.onnx_name] for h in n.hidden})
            for v, name in zip(n.hidden + n.outputs, want + [o.name for o in n.model.outputs]):
                a = np.asarray(out[name])
                if a.size != v.size:
                    raise BadModelError(f"{n.model.path}: tensor {name!r} has shape {list(a.shape)} but "
                                        f"{v.name!r} is declared with shape {list(v.shape)}")
                raw[v.name] = a.reshape(v.shape)
                vec[v.offset:v.offset + v.size] = a.astype(np.float64).ravel()
        return vec, raw

    def plausible(self, vec, atoms) -> bool:
        """Cheap float pre-filter: no atom of the disjunct is clearly violated."""
        for a in atoms:
            if a.lin is None:
                continue
            d = float(np.dot(a.coef_f, vec[a.idx])) + float(a.const)
            tol = 1e-9 * (1.0 + float(np.dot(np.abs(a.coef_f), np.abs(vec[a.idx]))))
            if not np.isfinite(d):
                return False
            if (a.op in ("<=", "<") and d > tol) or (a.op in (">=", ">") and d < -tol) or \
                    (a.op == "==" and abs(d) > tol):
                return False
        return True

    def confirm(self, x, atoms=()) -> Assignment | None:
        """The assignment at input vector ``x`` if it satisfies the exact query (module docstring)."""
        vec, raw = self.evaluate(x)
        if not np.all(np.isfinite(vec)):
            return None  # inf/NaN values: no claim
        if atoms and not self.plausible(vec, atoms):
            return None
        if not self.q.holds(_ExactView(vec)):
            return None
        if self.q.any_real:
            xin = vec[self.q.input_index]
            lo, hi = self.bounds(xin, xin, mode="real")
            if not self.q.holds_on(lo, hi):
                return None
        return Assignment(self.q, vec, raw)

    def self_check(self, rng, n_points=4):
        """Interval engine vs onnxruntime at a few points of the first disjunct's box (``None`` = agree)."""
        if not self.q.disjuncts:
            return None
        d = self.q.disjuncts[0]
        lo, hi = np.where(np.isfinite(d.lo), d.lo, -1.0), np.where(np.isfinite(d.hi), d.hi, 1.0)
        lo = np.minimum(lo, hi)
        for _ in range(n_points):
            x = self.snap(lo + (hi - lo) * rng.random(len(lo)), *d.inner(lo, hi))
            vec = np.empty(self.q.n_values)
            vec[self.q.input_index] = x
            for n in self.q.nets:
                feeds = [vec[v.offset:v.offset + v.size] for v in n.inputs]
                msg = self.interval_net(n).self_check([feeds], [h.onnx_name for h in n.hidden])
                if msg:
                    return f"{n.model.path}: {msg}"
        return None
