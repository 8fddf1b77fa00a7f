"""Bound methods as small objects: an intermediate-bound strategy, a final-pass relaxation, their options.

As in jax_verify, a method is a choice of relaxation over one transform (the backward pass of
``backward.py``); what differs between methods is only

| method       | ``Intermediate.mode`` (bounds of the nodes a relaxation needs) | ``relaxation`` (final lower slope)  |
|--------------|-----------------------------------------------------------------|-------------------------------------|
| ibp          | ibp: interval propagation                                      | None: IBP with C merged (§3.1)      |
| crown-ibp    | ibp                                                             | crown: adaptive (§3.2)              |
| fastlin (CP) | fastlin: forward form or backward passes (= Wong–Kolter, §2.4)  | fastlin: parallel lines             |
| crown        | crown: backward passes, adaptive slopes                         | crown                               |
| alpha-crown  | crown, re-bounded with optimised slopes (``AlphaOptions``)      | crown, slopes optimised (Adam)      |
| cp-proj      | proj: forward Fast-Lin with Cauchy projections (§8)             | fastlin (exact)                     |

``cp-proj`` is probabilistic (Wong et al. 2018 random projections): for training only; its result is flagged
and ``certified()`` refuses it.

``bound_method(name, **options)`` builds one; ``compute_bounds(graph, inp, C, method, **options)`` is the same
thing in one call. Per-call data (labels, caller-given intermediate bounds, whether to bound the upper side
and record the optimum) stay arguments of ``BoundMethod.bound``; everything that configures the method is an
option, checked once when the method is built (an unknown option is an error that names it).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch

from toolkit.errors import BadInputError
from toolkit.spec import InputSet, margin_spec, scatter_margins

from .alpha import ALPHA_ELEMS, SCOPES, optimise_alpha
from .engine import CHUNK_ELEMS, final_pass, has_relu, sanitize, intermediate_bounds, needs_bounds
from .ibp import ibp_bounds, ibp_spec_bound
from .result import BoundResult, LayerOptimum

MODES = ("ibp", "fastlin", "crown", "proj")
FASTLIN_FORMS = ("forward", "backward")


@dataclass(frozen=True)
class Intermediate:
    """How the bounds of every node a relaxation needs are found (``engine.intermediate_bounds``).

    ``intersect_ibp``: keep the tighter of these and IBP's bounds per neuron (sound, never looser; neurons IBP
    proves stable skip their backward passes); ``chunk_elems``: working-set size of one chunk of neuron
    specs; ``proj``/``generator``: the Cauchy projections of mode "proj"; ``fastlin_form``: "forward" (one
    pass for all neurons, §2.4) or "backward" (per-neuron passes: a cross-check)."""

    mode: str
    intersect_ibp: bool = False
    chunk_elems: int = CHUNK_ELEMS
    proj: int = 50
    generator: torch.Generator | None = field(default=None, compare=False)
    fastlin_form: str = "forward"

    def __post_init__(self):
        _choice("intermediate-bound mode", self.mode, MODES)
        _choice("Fast-Lin form", self.fastlin_form, FASTLIN_FORMS)
        if int(self.proj) < 1:
            raise BadInputError(f"projections must be >= 1, got {self.proj}")
        if int(self.chunk_elems) < 1:
            raise BadInputError(f"chunk size must be >= 1 element, got {self.chunk_elems}")

    def __call__(self, graph, inp: InputSet, shapes, ibp=None) -> dict:
        return intermediate_bounds(graph, inp, self.mode, shapes, ibp, self.chunk_elems, self.intersect_ibp,
                                   self.proj, self.generator, self.fastlin_form)


@dataclass(frozen=True)
class AlphaOptions:
    """α-CROWN's optimisation (``alpha.optimise_alpha``): Adam ``iters`` steps at ``lr``; ``scope`` "all"
    re-bounds the intermediate layers with slopes of their own, "final" the final pass only (default: "all",
    or "final" when the caller passes its own intermediate bounds); ``budget``: the most elements of slopes and
    autograd graph one sub-batch may hold (a sample needing more gets the final pass only; on CPU samples are
    grouped into smaller, cache-sized sub-batches, ``kernels.ALPHA_GROUP_ELEMS``); ``deadline``
    (``time.monotonic()``): stop early, keeping the best so far."""

    iters: int = 20
    lr: float = 0.1
    scope: str | None = None
    budget: int = ALPHA_ELEMS
    deadline: float | None = None

    def __post_init__(self):
        if isinstance(self.iters, bool) or int(self.iters) < 0:
            raise BadInputError(f"alpha iterations must be >= 0, got {self.iters}")
        if self.scope is not None:
            _choice("alpha scope", self.scope, SCOPES)


@dataclass(frozen=True)
class BoundMethod:
    """A bound method: ``intermediate`` strategy, final-pass ``relaxation`` ("crown", "fastlin", or None for
    IBP's interval pass), ``alpha`` options when the final slopes are optimised, and whether the result is
    ``probabilistic`` (never a certificate)."""

    name: str
    intermediate: Intermediate
    relaxation: str | None
    alpha: AlphaOptions | None = None
    probabilistic: bool = False

    def bound(self, graph, inp: InputSet, C: torch.Tensor | None = None, *, labels=None,
              bound_upper: bool = False, bounds: dict | None = None, optimum: bool = True) -> BoundResult:
        """Sound lower bounds of C·f(x') for all x' in ``inp`` (and the relaxation's optimum).

        C: (N, S, K) spec matrix; default: margins e_y − e_j from ``labels``. Device and dtype follow ``inp``.
        ``bounds``: caller-given intermediate bounds (CROWN-IBP's shared IBP bounds, branch and bound's split
        domains) used instead of ``intermediate``'s. Differentiable w.r.t. the graph parameters (masks and line
        choices are constants). ``optimum=False`` skips recording the per-layer optimum (``res.layers``, what
        the regularizers read): certification does not need it, and without it and without autograd the final
        pass runs in the low-memory form (``ops.ReLURule``). ``res.g`` and ``res.z0`` are there either way."""
        C = _spec(graph, inp, C, labels)
        shapes = graph.shapes(dtype=inp.lo.dtype)
        if self.relaxation is None:  # IBP alone: keep what a reader of ``res.bounds`` and the spec merge use
            keep = {*needs_bounds(graph), graph.output, *graph.edges[graph.output]}
            ibp = ibp_bounds(graph, inp.lo, inp.hi, keep=keep)
        else:
            ibp = ibp_bounds(graph, inp.lo, inp.hi) if bounds is None else None
        caller_bounds = bounds is not None
        if bounds is None:
            bounds = self.intermediate(graph, inp, shapes, ibp)
        if self.relaxation is None:
            res = BoundResult(self.name, ibp_spec_bound(graph, ibp, C), C, x=inp.x, bounds=bounds)
            if bound_upper:
                res.upper = -ibp_spec_bound(graph, ibp, -C)
            return sanitize(res, graph)
        lower, g, records = final_pass(graph, inp, C, bounds, shapes, self.name, self.relaxation, record=optimum)
        scope_ran, alphas = None, None
        if self.alpha is not None and self.alpha.iters > 0 and has_relu(graph):
            opt = self.alpha
            # By default caller-given bounds stay fixed; an explicit "all" re-bounds the layers inside them.
            scope = opt.scope or ("final" if caller_bounds else "all")
            run = optimise_alpha(graph, inp, C, bounds, shapes, needs_bounds(graph), opt.iters, opt.lr,
                                 scope=scope, budget=opt.budget, deadline=opt.deadline)
            bounds, alphas = run.bounds, run.alphas
            lower_a, g, records = final_pass(graph, inp, C, bounds, shapes, self.name, self.relaxation, alphas,
                                              record=optimum)
            # Every candidate is sound: CROWN's, the best of the iterations, and the best slopes re-run.
            lower, scope_ran = torch.maximum(torch.maximum(lower_a, run.lower), lower), run.scope
        res = BoundResult(self.name, lower, C, g=g, x=inp.x, box=(inp.lo, inp.hi), bounds=bounds,
                          probabilistic=self.probabilistic, alpha_scope=scope_ran)
        res.layers = {k: _layer_optimum(graph, bounds, k, r) for k, r in records.items()}
        if bound_upper:
            # α's slopes were optimised for the lower side's specs; the upper side takes the adaptive slopes
            # over the (α-tightened, still sound) intermediate bounds.
            res.upper = -final_pass(graph, inp, -C, bounds, shapes, self.name, self.relaxation, record=False)[0]
        return sanitize(res, graph)


#: name → (intermediate mode, final relaxation, optimised slopes, probabilistic)
_RECIPES = {"ibp": ("ibp", None, False, False), "crown-ibp": ("ibp", "crown", False, False),
            "fastlin": ("fastlin", "fastlin", False, False), "crown": ("crown", "crown", False, False),
            "alpha-crown": ("crown", "crown", True, False), "cp-proj": ("proj", "fastlin", False, True)}
METHODS = tuple(_RECIPES)
_INTERMEDIATE_OPTS = {f.name for f in fields(Intermediate)} - {"mode"}
#: keyword spelling (as on ``compute_bounds`` and the CLI) → AlphaOptions field
_ALPHA_OPTS = {"alpha_iters": "iters", "alpha_lr": "lr", "alpha_scope": "scope", "alpha_budget": "budget",
               "alpha_deadline": "deadline"}
OPTIONS = tuple(sorted(_INTERMEDIATE_OPTS)) + tuple(_ALPHA_OPTS)


def bound_method(name: str | BoundMethod, **options) -> BoundMethod:
    """The method ``name`` (``METHODS``) with ``options`` (``OPTIONS``). Options a method does not use are
    accepted and ignored (a caller can pass one set for several methods); unknown ones are an error. A
    ``BoundMethod`` given as ``name`` gets the options applied on top."""
    unknown = set(options) - set(OPTIONS)
    if unknown:
        raise BadInputError(f"unknown bound option(s) {', '.join(sorted(unknown))}; "
                            f"choose from {', '.join(OPTIONS)}")
    inter = {k: v for k, v in options.items() if k in _INTERMEDIATE_OPTS}
    alpha = {_ALPHA_OPTS[k]: v for k, v in options.items() if k in _ALPHA_OPTS}
    if isinstance(name, BoundMethod):
        return replace(name, intermediate=replace(name.intermediate, **inter),
                       alpha=replace(name.alpha, **alpha) if name.alpha is not None else None)
    _choice("bound method", name, METHODS)
    mode, relaxation, optimised, probabilistic = _RECIPES[name]
    return BoundMethod(name, Intermediate(mode, **inter), relaxation,
                       AlphaOptions(**alpha) if optimised else _checked_unused(AlphaOptions, alpha), probabilistic)


def compute_bounds(graph, inp: InputSet, C: torch.Tensor | None = None, method: str | BoundMethod = "crown", *,
                   labels=None, bound_upper: bool = False, bounds: dict | None = None, optimum: bool = True,
                   **options) -> BoundResult:
    """``bound_method(method, **options).bound(graph, inp, C, ...)``: see ``BoundMethod.bound``."""
    return bound_method(method, **options).bound(graph, inp, C, labels=labels, bound_upper=bound_upper,
                                                 bounds=bounds, optimum=optimum)


def margin_lower_bound(graph, inp: InputSet, labels, method: str | BoundMethod = "crown", **kw) -> torch.Tensor:
    """(N, K): lower bound of min f_y(x') − f_j(x') per class j, 0 in column y.

    For certification the intermediate bounds are intersected with IBP's by default (``intersect_ibp``):
    still sound, never looser, and neurons IBP proves stable skip their backward passes."""
    kw.setdefault("intersect_ibp", True)
    kw.setdefault("optimum", False)
    labels = torch.as_tensor(labels, device=inp.lo.device).long()
    res = compute_bounds(graph, inp, None, method, labels=labels, **kw)
    return scatter_margins(res.lower, labels, graph.output_size(), fill=0.0)


def _choice(what, value, allowed):
    if value not in allowed:
        raise BadInputError(f"unknown {what} {value!r}; choose from {', '.join(allowed)}")


def _checked_unused(cls, opts):
    """Options of a part the method does not use are still checked (a bad value is a mistake either way)."""
    if opts:
        cls(**opts)
    return None


def _spec(graph, inp, C, labels):
    if C is None:
        if labels is None:
            raise BadInputError("compute_bounds needs a spec matrix C or labels")
        C = margin_spec(labels, graph.output_size(), dtype=inp.lo.dtype)
    return C.to(dtype=inp.lo.dtype, device=inp.lo.device)


def _layer_optimum(graph, bounds, key, record) -> LayerOptimum:
    pre = graph.edges[key][0]
    relax = record["relax"]
    return LayerOptimum(pre=pre, l=bounds[pre][0], u=bounds[pre][1], unstable=relax.unstable,
                        upper_line=record["upper_line"], lower_slope=relax.lower_slope,
                        upper_slope=relax.upper_slope, upper_intercept=relax.upper_intercept, nu=record["nu"])
