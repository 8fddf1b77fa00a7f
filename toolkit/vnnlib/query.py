"""A VNN-LIB query as tightcert decides it: declared variables, the models, and a DNF of atoms.

Parsing uses the ``vnnlib`` package (2.0 grammar); 1.0 files are translated first (``v1``). Never
``vnnlib.compat.transform``: it treats each non-comparison assertion as an alternative instead of
conjoining it, turns ``==`` into ``<=`` and drops strictness (notes §4.3). Here every assertion is
converted with ``to_dnf()`` and the assertions are conjoined by a product of their DNFs.

Every declared variable (inputs, hidden, outputs; networks in declaration order) gets an offset into one
flat *value vector*. An atom is ``lhs - rhs  op  0`` over that vector; its arithmetic is kept exact
(``Fraction`` coefficients from the literal text), so comparisons at a boundary (``Y < 0`` against a
ReLU output that is exactly 0) are decided exactly. Input atoms of the form ``c*X[i] + k op 0`` become
the disjunct's input box (its closure: a strict bound stays an atom as well, so the exact checks see it).
"""
from __future__ import annotations

import itertools
import json
import math
import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from toolkit.errors import BadInputError, BadModelError

from .models import OnnxModel, concrete_shape, read_text
from .v1 import is_v1, v1_to_v2

#: Element types the query may declare, and whether tightcert analyses them soundly (notes §6).
SOUND_TYPES = ("float32", "int64", "real")
MAX_DISJUNCTS = 100_000
INF = math.inf


# --------------------------------------------------------------------------------------------------------
# declarations
# --------------------------------------------------------------------------------------------------------
@dataclass
class Var:
    name: str
    kind: str            # "input" | "hidden" | "output"
    dtype: str           # declared element type, lower case ("float32", "real", "int64", ...)
    shape: tuple
    network: str
    onnx_name: str | None
    offset: int = 0

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def element(self, flat: int) -> str:
        """'X[0,1]' for the flat (row-major) element index."""
        if not self.shape:
            return self.name
        idx = np.unravel_index(flat, self.shape)
        return f"{self.name}[{','.join(str(int(i)) for i in idx)}]"


@dataclass
class Net:
    name: str
    equal_to: str
    isomorphic_to: str
    inputs: list
    hidden: list
    outputs: list
    model: OnnxModel | None = None

    @property
    def variables(self):
        return self.inputs + self.hidden + self.outputs


# --------------------------------------------------------------------------------------------------------
# expressions (exact) and atoms
# --------------------------------------------------------------------------------------------------------
def _mul_end(a, b):
    """Product of two interval endpoints (Fraction or ±inf) with 0·inf = 0 (interval convention)."""
    if a == 0 or b == 0:
        return Fraction(0)
    if isinstance(a, float) or isinstance(b, float):
        return INF if (a > 0) == (b > 0) else -INF
    return a * b


def _frac(v):
    """Exact value of a float endpoint (±inf kept as float)."""
    v = float(v)
    return v if math.isinf(v) else Fraction(v)


class Expr:
    """Arithmetic over the value vector: Var element, constant, sum, product, negation."""

    def __init__(self, kind, args=(), index=None, value=None):
        self.kind, self.args, self.index, self.value = kind, tuple(args), index, value

    # exact value at a point (vals: sequence of Fractions)
    def exact(self, vals):
        k = self.kind
        if k == "var":
            return vals[self.index]
        if k == "const":
            return self.value
        if k == "neg":
            return -self.args[0].exact(vals)
        if k == "add":
            return sum((a.exact(vals) for a in self.args), Fraction(0))
        if k == "sub":
            return self.args[0].exact(vals) - sum((a.exact(vals) for a in self.args[1:]), Fraction(0))
        out = Fraction(1)
        for a in self.args:
            out *= a.exact(vals)
        return out

    # exact interval over a box (lo/hi: endpoint sequences of Fraction or ±inf)
    def interval(self, lo, hi):
        k = self.kind
        if k == "var":
            return lo[self.index], hi[self.index]
        if k == "const":
            return self.value, self.value
        if k == "neg":
            a, b = self.args[0].interval(lo, hi)
            return -b, -a
        if k in ("add", "sub"):
            parts = [a.interval(lo, hi) for a in self.args]
            if k == "sub":
                parts = parts[:1] + [(-b, -a) for a, b in parts[1:]]
            return _sum_ends([p[0] for p in parts], True), _sum_ends([p[1] for p in parts], False)
        l, u = Fraction(1), Fraction(1)
        for a in self.args:
            al, au = a.interval(lo, hi)
            c = [_mul_end(x, y) for x in (l, u) for y in (al, au)]
            l, u = min(c), max(c)
        return l, u

    def linear(self):
        """{index: Fraction coeff}, Fraction const; None when not linear."""
        k = self.kind
        if k == "var":
            return {self.index: Fraction(1)}, Fraction(0)
        if k == "const":
            return {}, self.value
        if k == "neg":
            r = self.args[0].linear()
            return None if r is None else ({i: -c for i, c in r[0].items()}, -r[1])
        if k in ("add", "sub"):
            terms, const = {}, Fraction(0)
            for j, a in enumerate(self.args):
                r = a.linear()
                if r is None:
                    return None
                s = -1 if (k == "sub" and j > 0) else 1
                for i, c in r[0].items():
                    terms[i] = terms.get(i, 0) + s * c
                const += s * r[1]
            return {i: c for i, c in terms.items() if c != 0}, const
        lin, factor = None, Fraction(1)
        for a in self.args:
            r = a.linear()
            if r is None:
                return None
            if r[0]:
                if lin is not None:
                    return None  # a product of two variable factors: POLY
                lin = r
            else:
                factor *= r[1]
        if lin is None:
            return {}, factor
        return {i: c * factor for i, c in lin[0].items() if c * factor != 0}, lin[1] * factor


def _sum_ends(vals, lower: bool):
    """Sum of interval endpoints; an inf - inf clash (only possible with infinite values) is widened."""
    infs = [v for v in vals if isinstance(v, float)]
    if infs:
        if any(v > 0 for v in infs) and any(v < 0 for v in infs):
            return -INF if lower else INF
        return infs[0]
    return sum(vals, Fraction(0))


#: op -> function of the interval [dl, du] of d = lhs - rhs: (definitely false, definitely true)
_STATUS = {
    "<=": lambda dl, du: (dl > 0, du <= 0),
    "<": lambda dl, du: (dl >= 0, du < 0),
    ">=": lambda dl, du: (du < 0, dl >= 0),
    ">": lambda dl, du: (du <= 0, dl > 0),
    "==": lambda dl, du: (dl > 0 or du < 0, dl == 0 and du == 0),
    "!=": lambda dl, du: (dl == 0 and du == 0, dl > 0 or du < 0),
}
_HOLDS = {"<=": lambda d: d <= 0, "<": lambda d: d < 0, ">=": lambda d: d >= 0, ">": lambda d: d > 0,
          "==": lambda d: d == 0, "!=": lambda d: d != 0}


class Atom:
    """``lhs - rhs  op  0``; ``text`` is the comparison as the query wrote it (for messages)."""

    def __init__(self, op, lhs: Expr, rhs: Expr, source=None):
        self.op, self._source = op, source
        self.expr = Expr("sub", [lhs, rhs])
        self.lin = self.expr.linear()
        if self.lin is not None:
            idx = sorted(self.lin[0])
            self.idx = np.array(idx, dtype=np.int64)
            self.coef = [self.lin[0][i] for i in idx]
            self.coef_f = np.array([float(c) for c in self.coef])
            self.const = self.lin[1]

    @property
    def text(self) -> str:
        """The comparison as the query wrote it (for messages)."""
        return " ".join(str(self._source).split()) if self._source is not None else self.op

    @property
    def indices(self):
        return set(self.lin[0]) if self.lin is not None else _var_indices(self.expr)

    def holds(self, vals) -> bool:
        return _HOLDS[self.op](self.expr.exact(vals))

    def status(self, lo: np.ndarray, hi: np.ndarray):
        """(definitely false, definitely true) over the box lo <= v <= hi (float64 arrays)."""
        if self.lin is None:
            dl, du = self.expr.interval(_EndView(lo), _EndView(hi))
            return _STATUS[self.op](dl, du)
        # fast float path: decided with a clear gap, else exact
        c = self.coef_f
        l, h = lo[self.idx], hi[self.idx]
        with np.errstate(invalid="ignore", over="ignore"):
            dl = float(np.sum(np.where(c > 0, c * l, c * h))) + float(self.const)
            du = float(np.sum(np.where(c > 0, c * h, c * l))) + float(self.const)
            scale = float(np.sum(np.abs(c) * np.maximum(np.abs(l), np.abs(h)))) + abs(float(self.const))
        if math.isfinite(dl) and math.isfinite(du) and math.isfinite(scale):
            gap = 1e-9 * scale + 1e-300
            if dl > gap or du < -gap:
                return _STATUS[self.op](dl, du)
        dl, du = _lin_interval(self.coef, self.const, l, h)
        return _STATUS[self.op](dl, du)


class _EndView:
    """Lazy exact view of a float64 endpoint array."""

    def __init__(self, arr):
        self.arr = arr

    def __getitem__(self, i):
        return _frac(self.arr[i])


def _lin_interval(coef, const, l, h):
    lows, highs = [const], [const]
    for c, a, b in zip(coef, l, h):
        lo_end, hi_end = (a, b) if c > 0 else (b, a)
        lows.append(_mul_end(c, _frac(lo_end)))
        highs.append(_mul_end(c, _frac(hi_end)))
    return _sum_ends(lows, True), _sum_ends(highs, False)


def _var_indices(e: Expr) -> set:
    if e.kind == "var":
        return {e.index}
    out = set()
    for a in e.args:
        out |= _var_indices(a)
    return out


@dataclass
class Disjunct:
    """One conjunction of the DNF: an input box (closure of the input bounds) and the remaining atoms."""

    lo: np.ndarray                  # over the input sub-vector (Query.input_index)
    hi: np.ndarray
    atoms: list = field(default_factory=list)
    ilo: np.ndarray = None          # inner box: every float64 point in it meets the input bounds exactly
    ihi: np.ndarray = None

    def inner(self, lo, hi):
        """A sub-box ∩ the inner box (where witnesses are picked)."""
        return np.maximum(lo, self.ilo), np.minimum(hi, self.ihi)


# --------------------------------------------------------------------------------------------------------
# the query
# --------------------------------------------------------------------------------------------------------
class Query:
    def __init__(self, source, nets, assertions, translated_v1=False):
        self.source = str(source)
        self.nets = nets
        self.translated_v1 = translated_v1
        self.variables = [v for n in nets for v in n.variables]
        off = 0
        for v in self.variables:
            v.offset = off
            off += v.size
        self.n_values = off
        self.by_name = {v.name: v for v in self.variables}
        self.input_index = np.concatenate([np.arange(v.offset, v.offset + v.size) for n in nets
                                           for v in n.inputs]).astype(np.int64)
        self.assertions = [self._convert_bool(a.expr) for a in assertions]
        self.disjuncts = self._dnf(assertions)

    @property
    def all_real(self) -> bool:
        return all(v.dtype == "real" for v in self.variables)

    @property
    def any_real(self) -> bool:
        return any(v.dtype == "real" for v in self.variables)

    @property
    def n_inputs(self) -> int:
        return len(self.input_index)

    # -- conversion of the parser's AST ---------------------------------------------------------------------
    def _var_index(self, var) -> int:
        v = self.by_name.get(var.name)
        if v is None:  # the parser checks scoping; this guards against a version that does not
            raise BadInputError(f"{self.source}: unknown variable {var.name!r}")
        flat = 0
        for i, d in zip(var.indices, v.shape):  # row-major
            flat = flat * d + int(i)
        return v.offset + flat

    def _convert_arith(self, e) -> Expr:
        import vnnlib

        if isinstance(e, vnnlib.Var):
            return Expr("var", index=self._var_index(e))
        if isinstance(e, (vnnlib.Float, vnnlib.Int)):
            return Expr("const", value=Fraction(e.lexeme))
        if isinstance(e, vnnlib.Negate):
            return Expr("neg", [self._convert_arith(e.expr)])
        if isinstance(e, vnnlib.Plus):
            return Expr("add", [self._convert_arith(a) for a in e.args])
        if isinstance(e, vnnlib.Minus):
            return Expr("sub", [self._convert_arith(e.head)] + [self._convert_arith(a) for a in e.rest])
        if isinstance(e, vnnlib.Multiply):
            return Expr("mul", [self._convert_arith(a) for a in e.args])
        raise BadInputError(f"{self.source}: unsupported arithmetic expression {str(e).strip()!r}")

    def _convert_cmp(self, c) -> Atom:
        import vnnlib

        ops = [(vnnlib.LessEqual, "<="), (vnnlib.LessThan, "<"), (vnnlib.GreaterEqual, ">="),
               (vnnlib.GreaterThan, ">"), (vnnlib.Equal, "=="), (vnnlib.NotEqual, "!=")]
        for cls, op in ops:
            if isinstance(c, cls):
                return Atom(op, self._convert_arith(c.lhs), self._convert_arith(c.rhs), c)
        raise BadInputError(f"{self.source}: unsupported comparison {str(c).strip()!r}")

    def _convert_bool(self, e):
        """Nested ('and'|'or', [..]) / Atom tree, for the exact check of a witness."""
        import vnnlib

        if isinstance(e, vnnlib.And):
            return ("and", [self._convert_bool(a) for a in e.args])
        if isinstance(e, vnnlib.Or):
            return ("or", [self._convert_bool(a) for a in e.args])
        return self._convert_cmp(e)

    def _dnf(self, assertions) -> list:
        dnfs = [a.expr.to_dnf() for a in assertions]
        n = math.prod(len(d) for d in dnfs)
        if n > MAX_DISJUNCTS:
            raise BadInputError(f"{self.source}: the assertions expand to {n} disjuncts in DNF "
                                f"(tightcert handles at most {MAX_DISJUNCTS})")
        cache = {}

        def atom(c):
            key = id(c)
            if key not in cache:
                cache[key] = (c, self._convert_cmp(c))  # keep c alive so its id stays unique
            return cache[key][1]

        dnfs = [[[atom(c) for c in conj] for conj in d] for d in dnfs]
        # assertions with one conjunct (the usual input bounds) are in every disjunct: their box once
        common = [a for d in dnfs if len(d) == 1 for a in d[0]]
        varying = [d for d in dnfs if len(d) != 1]
        base = self._disjunct(common)
        if base is None:
            return []
        out = []
        for combo in itertools.product(*varying):
            d = self._disjunct(list(itertools.chain.from_iterable(combo)), base)
            if d is not None:
                out.append(d)
        return out

    def _input_bound(self, a, pos):
        """For an atom ``c*X[i] + k op 0``: (i, lo, hi, inner lo, inner hi, keep as atom); else None.
        Computed once per atom (atoms are shared by the disjuncts)."""
        if not hasattr(a, "_bound"):
            a._bound = None
            if a.lin is not None and len(a.lin[0]) == 1 and a.op != "!=":
                (g, c), = a.lin[0].items()
                if g in pos:
                    i, bound = pos[g], -a.const / c          # c*x + k op 0  <=>  x op' -k/c
                    upper = (a.op in ("<=", "<")) == (c > 0)
                    strict = a.op in ("<", ">")
                    lo, hi, ilo, ihi = -INF, INF, -INF, INF
                    if a.op == "==":
                        lo, hi, ilo, ihi = _down(bound), _up(bound), _up(bound), _down(bound)
                    elif upper:
                        hi, ihi = _up(bound), _down(bound, strict)
                    else:
                        lo, ilo = _down(bound), _up(bound, strict)
                    # a strict bound's box is its closure: keep the atom, so a box shrunk onto the excluded
                    # point is refuted (inexact decimals need nothing more: witnesses are checked against
                    # the original assertions and picked in the inner box)
                    keep = strict
                    a._bound = (i, lo, hi, ilo, ihi, keep)
        return a._bound

    def _disjunct(self, atoms, start: Disjunct | None = None) -> Disjunct | None:
        if start is None:
            lo, hi = np.full(self.n_inputs, -INF), np.full(self.n_inputs, INF)
            ilo, ihi, rest = lo.copy(), hi.copy(), []
        else:
            lo, hi, ilo, ihi, rest = (start.lo.copy(), start.hi.copy(), start.ilo.copy(), start.ihi.copy(),
                                      list(start.atoms))
        if not hasattr(self, "_pos"):
            self._pos = {int(g): i for i, g in enumerate(self.input_index)}
        for a in atoms:
            b = self._input_bound(a, self._pos)
            if b is None:
                rest.append(a)
                continue
            i, l, h, il, ih, keep = b
            lo[i], hi[i], ilo[i], ihi[i] = max(lo[i], l), min(hi[i], h), max(ilo[i], il), min(ihi[i], ih)
            if keep:
                rest.append(a)
        if np.any(lo > hi):
            return None
        return Disjunct(lo, hi, rest, ilo, ihi)

    # -- witnesses -----------------------------------------------------------------------------------------
    def holds(self, vals) -> bool:
        """Exact truth of the whole query at a point (Fractions, one per value-vector entry)."""
        def ev(node):
            if isinstance(node, Atom):
                return node.holds(vals)
            op, args = node
            return all(ev(a) for a in args) if op == "and" else any(ev(a) for a in args)
        return all(ev(a) for a in self.assertions)

    def holds_on(self, lo, hi) -> bool:
        """The whole query is definitely true for every point of the box (three-valued logic)."""
        def ev(node):
            if isinstance(node, Atom):
                false, true = node.status(lo, hi)
                return True if true else (False if false else None)
            op, args = node
            vals = [ev(a) for a in args]
            if op == "and":
                return False if False in vals else (True if all(v is True for v in vals) else None)
            return True if True in vals else (False if all(v is False for v in vals) else None)
        return all(ev(a) is True for a in self.assertions)


def _down(fr: Fraction, strict: bool = False) -> float:
    """Largest float64 <= fr (< fr when strict)."""
    f = float(fr)
    return float(np.nextafter(f, -INF)) if (Fraction(f) > fr or (strict and Fraction(f) == fr)) else f


def _up(fr: Fraction, strict: bool = False) -> float:
    """Smallest float64 >= fr (> fr when strict)."""
    f = float(fr)
    return float(np.nextafter(f, INF)) if (Fraction(f) < fr or (strict and Fraction(f) == fr)) else f


# --------------------------------------------------------------------------------------------------------
# loading and validation (all before anything is printed, §5.3.2)
# --------------------------------------------------------------------------------------------------------
_DTYPE_NAMES = {"Real": "real", "F16": "float16", "F32": "float32", "F64": "float64", "BF16": "bfloat16",
                "F8E4M3FN": "float8e4m3fn", "F8E5M2": "float8e5m2", "F8E4M3FNUZ": "float8e4m3fnuz",
                "F8E5M2FNUZ": "float8e5m2fnuz", "F4E2M1": "float4e2m1", "I8": "int8", "I16": "int16",
                "I32": "int32", "I64": "int64", "U8": "uint8", "U16": "uint16", "U32": "uint32",
                "U64": "uint64", "C64": "complex64", "C128": "complex128", "Bool": "bool", "String": "string"}


def _parse_error(source, e) -> str:
    text = str(e).strip()
    try:
        body = json.loads(text)
        msgs = [f"line {x.get('line', '?')}: {x.get('message', '').strip()} ({x.get('errorCode', 'error')})"
                for x in body.get("errors", [])]
        text = "; ".join(msgs) or text
    except (ValueError, AttributeError):
        text = " ".join(text.split())
    return f"cannot parse {source}: {text}"


def _parse_text(text, source):
    import vnnlib

    try:
        q = vnnlib.parse_query_string(text)
    except vnnlib.VNNLibException as e:
        raise BadInputError(_parse_error(source, e)) from None
    except Exception as e:  # the binding raises plain RuntimeError for some inputs
        raise BadInputError(_parse_error(source, e)) from None
    if q is None:
        raise BadInputError(f"cannot parse {source}")
    return q


def parse_network_args(values) -> tuple[dict, list]:
    """``--network NAME=PATH`` (split on the first '=': a path may contain '=', a name cannot) or a bare
    ``PATH`` (a 1.0 query's single model). Returns ({name: path}, [bare paths])."""
    named, bare = {}, []
    for v in values or []:
        name, sep, path = v.partition("=")
        if sep and name and _is_identifier(name) and not Path(v).is_file():
            if name in named:
                raise BadInputError(f"--network {name}=... is given twice")
            if not path:
                raise BadInputError(f"--network {v!r}: no model path after '='")
            named[name] = path
        else:
            bare.append(v)
    return named, bare


def _is_identifier(s: str) -> bool:
    return re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", s) is not None


def load_query(path, networks=None, models=None) -> Query:
    """Parse, translate (1.0), check the ``--network`` set, the models and the element types.

    networks: the ``--network`` values. models: optional cache {resolved path: OnnxModel}.
    """
    source = str(path)
    text = read_text(path)
    named, bare = parse_network_args(networks)
    models = {} if models is None else models

    def model(p):
        key = str(Path(p).resolve())
        if key not in models:
            models[key] = OnnxModel(p)
        return models[key]

    translated = False
    if is_v1(text):
        if len(named) + len(bare) != 1:
            raise BadInputError(f"{source} is a VNN-LIB 1.0 query: give its model with exactly one --network "
                                f"PATH (or NAME=PATH), got {len(named) + len(bare)}")
        name, p = (next(iter(named.items())) if named else ("N", bare[0]))
        m = model(p)
        if len(m.inputs) != 1 or len(m.outputs) != 1:
            raise BadInputError(f"{source} is a VNN-LIB 1.0 query, which needs a model with one input and one "
                                f"output; {p} has {len(m.inputs)} and {len(m.outputs)}")
        text = v1_to_v2(text, name, concrete_shape(m.inputs[0].shape), concrete_shape(m.outputs[0].shape))
        named, bare, translated = {name: p}, [], True
    q = _parse_text(text, source)
    nets = _declarations(q, source)
    _bind_models(nets, named, bare, source, model)
    _check_types(nets, source)
    _check_models(nets, source)
    return Query(source, nets, q.assertions, translated)


def _declarations(q, source) -> list:
    nets = []
    seen = set()
    for n in q.networks:
        def var(d, kind):
            dtype = _DTYPE_NAMES.get(d.dtype.name, "unknown")
            if dtype == "unknown" or d.dtype.name == "Unknown":
                raise BadInputError(f"{source}: variable {d.name!r} has an unknown element type (the standard's "
                                    f"names are lower case, e.g. float32, int64, real)")
            onnx_name = d.onnx_name.strip('"') if d.onnx_name else None
            if d.name in seen:
                raise BadInputError(f"{source}: variable {d.name!r} is declared twice")
            seen.add(d.name)
            return Var(d.name, kind, dtype, tuple(int(s) for s in d.shape), n.name, onnx_name)
        nets.append(Net(n.name, n.equal_to or "", n.isometric_to or "",
                        [var(d, "input") for d in n.inputs], [var(d, "hidden") for d in n.hidden],
                        [var(d, "output") for d in n.outputs]))
    if not nets:
        raise BadInputError(f"{source} declares no network")
    return nets


def _bind_models(nets, named, bare, source, model):
    need = [n.name for n in nets if not n.equal_to]
    if bare:
        if len(need) == 1 and len(bare) == 1 and not named:
            named = {need[0]: bare[0]}
        else:
            raise BadInputError(f"--network {bare[0]!r} does not name a network: use --network NAME=PATH, "
                                f"one for each of {', '.join(need)}")
    declared = {n.name: n for n in nets}
    for name in named:
        if name not in declared:
            raise BadInputError(f"--network maps {name!r}, which {source} does not declare; a model file is "
                                f"supplied for each declared network ({', '.join(need)})")
        if declared[name].equal_to:
            raise BadInputError(f"--network maps {name!r}, which {source} declares equal to "
                                f"{declared[name].equal_to!r}; an equal network takes no model file of its own")
    for name in need:
        if name not in named:
            raise BadInputError(f"no model file was supplied for network {name!r}, which {source} declares; give "
                                f"--network {name}=<file.onnx> once for each declared network not equal to another")
    for n in nets:
        if not n.equal_to:
            n.model = model(named[n.name])
    for n in nets:
        if n.equal_to:
            if n.equal_to not in declared or declared[n.equal_to].model is None:
                raise BadInputError(f"{source}: network {n.name!r} is equal to {n.equal_to!r}, which has no model")
            n.model = declared[n.equal_to].model


def _check_types(nets, source):
    """§5.3.2 (3): refuse types tightcert cannot analyse soundly (notes §6)."""
    for n in nets:
        for v in n.variables:
            if v.dtype not in SOUND_TYPES:
                raise BadInputError(f"{source}: variable {v.name!r} is declared {v.dtype}; tightcert analyses "
                                    f"only {', '.join(SOUND_TYPES)} soundly (rewrite the query with real to "
                                    f"consent to real-arithmetic analysis)")
            if v.kind == "input" and v.dtype == "int64":
                raise BadInputError(f"{source}: input {v.name!r} is declared int64; tightcert supports integer "
                                    f"tensors inside models and as outputs, not as network inputs")


def _shape_ok(declared, onnx_shape) -> bool:
    if len(declared) != len(onnx_shape):
        return False
    return all(o is None or o == 0 or int(o) == int(d) for d, o in zip(declared, onnx_shape))


def _check_models(nets, source):
    """§5.3.2 (2) element types (unless the query is all real) and shapes, per network and position."""
    all_real = all(v.dtype == "real" for n in nets for v in n.variables)
    for n in nets:
        m = n.model
        for kind, decls, infos in (("input", n.inputs, m.inputs), ("output", n.outputs, m.outputs)):
            if len(decls) != len(infos):
                raise BadInputError(f"network {n.name!r} declares {len(decls)} {kind}(s) but {m.path} has "
                                    f"{len(infos)}")
            for d, info in zip(decls, infos):  # positional: declaration order = ONNX order
                if not _shape_ok(d.shape, info.shape):
                    raise BadInputError(f"{kind} {d.name!r} of network {n.name!r} is declared with shape "
                                        f"{list(d.shape)} but {m.path} has {info.name!r} with shape "
                                        f"{[s if s else '?' for s in info.shape]}")
                _check_dtype(d, info.dtype, m.path, all_real)
        names = m.tensor_names()
        for h in n.hidden:
            if not h.onnx_name or h.onnx_name not in names:
                raise BadInputError(f"hidden variable {h.name!r} of network {n.name!r} names ONNX tensor "
                                    f"{h.onnx_name!r}, which {m.path} does not have")
        if n.isomorphic_to and n.model is None:
            raise BadModelError(f"network {n.name!r} has no model")


def _check_dtype(d: Var, model_dtype: str, path, all_real: bool):
    if d.dtype == "real":
        if all_real or model_dtype.startswith("float") or model_dtype == "bfloat16":
            return
    if d.dtype == model_dtype:
        return
    raise BadInputError(f"{d.kind} {d.name!r} is declared {d.dtype} but {path} gives it element type {model_dtype}")


def check_hidden_shapes(q: Query, values: dict):
    """Hidden tensors have no static shape in general: compare sizes after the first evaluation."""
    for n in q.nets:
        for h in n.hidden:
            got = values.get((n.name, h.name))
            if got is not None and got.size != h.size:
                raise BadInputError(f"hidden variable {h.name!r} is declared with shape {list(h.shape)} but ONNX "
                                    f"tensor {h.onnx_name!r} has shape {list(got.shape)}")
