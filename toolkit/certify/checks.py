"""Validation of a certify request, done before any computation or file (bad input → one line, exit 2)."""
from __future__ import annotations

import math

import torch

from toolkit.errors import BadInputError, BadModelError

#: Cascade order, cheapest first (issue 5): a sample certified by an earlier method is not recomputed.
COST_ORDER = ("ibp", "crown-ibp", "fastlin", "crown", "alpha-crown")
#: Methods that give no guarantee and may never certify anything.
PROBABILISTIC = ("cp-proj",)


def order_methods(methods) -> list:
    """Validate method names and sort them cheapest first (duplicates dropped)."""
    from toolkit.bounds import METHODS

    if isinstance(methods, str):
        methods = [m for m in methods.replace(" ", ",").split(",") if m]
    methods = [str(m).strip().lower() for m in methods]
    if not methods:
        raise BadInputError("give at least one bound method")
    for m in methods:
        if m in PROBABILISTIC:
            raise BadInputError(f"method {m!r} uses random projections and gives probabilistic bounds; it "
                                f"cannot certify (use one of {', '.join(COST_ORDER)})")
        if m not in METHODS:
            raise BadInputError(f"unknown method {m!r}; choose from "
                                f"{', '.join(x for x in METHODS if x not in PROBABILISTIC)}")
    rank = {m: i for i, m in enumerate(COST_ORDER)}
    return sorted(dict.fromkeys(methods), key=lambda m: rank.get(m, len(COST_ORDER)))


def resolve_device(device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise BadInputError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BadInputError(f"device {device!r} asked for but CUDA is not available here")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise BadInputError(f"device {device!r} does not exist ({torch.cuda.device_count()} CUDA devices)")
    return dev


def check_eps(eps_list, clip) -> list:
    """ε values must be finite, >= 0, and (with a clip box) no wider than the valid input range:
    ε > 1 on [0,1] pixels is almost always a unit mistake (0..255 radii), not a query."""
    out = []
    for e in eps_list:
        try:
            e = float(e)
        except (TypeError, ValueError):
            raise BadInputError(f"epsilon must be a number, got {e!r}") from None
        if not math.isfinite(e) or e < 0:
            raise BadInputError(f"epsilon must be finite and >= 0, got {e}")
        if clip is not None and e > float(clip[1]) - float(clip[0]):
            raise BadInputError(f"epsilon {e:g} is wider than the valid input range [{clip[0]:g}, {clip[1]:g}] "
                                f"(pixel units: use e.g. 8/255 = {8 / 255:.4f}, not 8)")
        out.append(e)
    if len(set(out)) != len(out):
        raise BadInputError(f"epsilon values repeat: {out}")
    return out


def classifier_outputs(graph) -> int:
    """The number of class scores; the model must end in one score per class (shape (K,), or K with unit
    axes), as certification's margins and training's cross-entropy both assume."""
    out_shape = graph.shapes()[graph.output]
    k = math.prod(out_shape)
    if sum(1 for s in out_shape if s != 1) > 1 or k < 2:
        raise BadModelError(f"the model has no classification output: its output has shape {tuple(out_shape)}, "
                            "expected one score per class")
    return k


def check_labels(y: torch.Tensor, index, n_classes: int) -> None:
    if n_classes < 2:
        raise BadInputError(f"the model has {n_classes} output(s); certification needs at least 2 classes")
    bad = ((y < 0) | (y >= n_classes)).nonzero().flatten()
    if bad.numel():
        i = int(bad[0])
        raise BadInputError(f"label {int(y[i])} of sample {int(index[i])} is out of range: the model has "
                            f"{n_classes} classes (0..{n_classes - 1})")


def fit_shape(t: torch.Tensor | None, model_shape: tuple, what="data samples"):
    """Return ``t`` with per-sample shape ``model_shape``. Same shape: as is. A flat model input (one
    non-singleton axis, e.g. (784,) or (784, 1)) accepts any sample of the same size, flattened in C
    order (what Flatten does to NCHW images). Anything else is a shape mismatch."""
    if t is None:
        return None
    sample = tuple(t.shape[1:])
    if sample == tuple(model_shape):
        return t
    flat_model = sum(1 for s in model_shape if s != 1) <= 1
    if flat_model and math.prod(sample) == math.prod(model_shape):
        return t.reshape(t.shape[0], *model_shape)
    raise BadInputError(f"{what} have shape {sample} but the model expects {tuple(model_shape)}")


def check_box(lo, hi, x) -> None:
    if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        raise BadInputError("the data's input box (lo/hi) contains NaN or inf")
    if (lo > hi).any():
        raise BadInputError("the data's input box has lo > hi")


def check_inside_clip(x: torch.Tensor, eps: torch.Tensor, clip) -> None:
    """InputSet.from_eps would fail per batch; fail here instead, before anything is written."""
    if clip is None:
        return
    e = eps.reshape(-1, *([1] * (x.dim() - 1))) if eps.dim() == 1 else eps
    if ((x + e) < clip[0]).any() or ((x - e) > clip[1]).any():
        raise BadInputError(f"some inputs lie farther than epsilon outside the valid range "
                            f"[{clip[0]:g}, {clip[1]:g}]; check the data scale or --mean/--std")
