"""Projected gradient descent (Madry et al. 2018) over an input box, for any per-sample objective.

``pgd_minimize`` is the generic engine: it minimises ``objective(x) -> (N,)`` sample by sample over the
box of an ``InputSet`` with l-inf sign-gradient steps, projecting onto the box after every step, and
keeps the best point seen per sample over all steps and restarts. Because every point it evaluates
lies in the box, the value it returns is *attained*: an upper bound on the true minimum, never below it.
That is what makes it a check on the certifier (a certified lower bound above an attained value is a
soundness bug) and what a VNN-LIB counterexample search needs.

``pgd_attack`` applies it to the worst specification margin ``min_s (C f(x))_s`` over the same spec
matrix ``C`` the bound engine uses, so the attack and the bounds answer the same query.

Seeding: ``seed`` may be one int (one generator for the batch) or one int per sample. With per-sample
seeds the random starts of a sample do not depend on which batch it lands in, so a resumed or
re-batched run reproduces the same attack (the certifier uses this).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from toolkit.errors import BadInputError
from toolkit.spec import InputSet


@dataclass
class AttackResult:
    """Per-sample outcome of ``pgd_attack``.

    margin: (N,) the smallest worst-spec margin ``min_s (C f(x_adv))_s`` found; < 0 means broken.
    x_adv: (N, ...) the point (inside the box) where it was found.
    spec_values: (N, S) all spec values ``C f(x_adv)`` at that point (for consistency checks).
    """

    margin: torch.Tensor
    x_adv: torch.Tensor
    spec_values: torch.Tensor


def _generators(seed, n: int):
    """One CPU generator for the batch (int seed) or one per sample (sequence of seeds)."""
    if isinstance(seed, (int, np.integer)):
        return torch.Generator().manual_seed(int(seed))
    seeds = [int(s) for s in seed]
    if len(seeds) != n:
        raise BadInputError(f"got {len(seeds)} per-sample seeds for {n} samples")
    return [torch.Generator().manual_seed(s) for s in seeds]


def _uniform(gen, like: torch.Tensor) -> torch.Tensor:
    """U[0,1) noise shaped like ``like``, drawn on the CPU so results do not depend on the device."""
    if isinstance(gen, list):
        noise = torch.stack([torch.rand(like.shape[1:], generator=g, dtype=torch.float64) for g in gen])
    else:
        noise = torch.rand(like.shape, generator=gen, dtype=torch.float64)
    return noise.to(device=like.device, dtype=like.dtype)


def _evaluate(objective, z: torch.Tensor, need_grad: bool):
    """Objective values (N,) with NaN read as +inf (never 'best'), and the gradient when asked."""
    if need_grad:
        z = z.detach().requires_grad_(True)
        with torch.enable_grad():
            val = objective(z)
            grad, = torch.autograd.grad(val.sum(), z, allow_unused=True)
        grad = torch.zeros_like(z) if grad is None else torch.nan_to_num(grad)
    else:
        with torch.no_grad():
            val = objective(z)
        grad = None
    val = val.detach()
    if val.shape != (z.shape[0],):
        raise BadInputError(f"PGD objective must return shape ({z.shape[0]},), got {tuple(val.shape)}")
    return torch.nan_to_num(val, nan=float("inf")), grad


def pgd_minimize(objective: Callable[[torch.Tensor], torch.Tensor], inp: InputSet, steps: int = 100,
                 restarts: int = 1, step_size=None, seed: int | Sequence[int] = 0, random_start: bool = True,
                 stop_below: float | None = None):
    """Minimise ``objective`` per sample over the box ``[inp.lo, inp.hi]``; return ``(x_best, value_best)``.

    objective: maps a batch (N, ...) of points to (N,) values; it must treat samples independently
        (no batch statistics) and be differentiable almost everywhere. NaN values count as +inf.
    steps: sign-gradient steps per restart (``steps=0`` only evaluates the start points).
    restarts: independent runs; restart 0 starts at a uniform random point of the box when
        ``random_start`` (else at the centre ``inp.x`` projected into the box), later restarts always
        start at random points.
    step_size: per-step l-inf step, a scalar or a tensor broadcastable to the box; default
        ``2.5 * rad / steps`` per coordinate (Madry et al.): enough to cross the whole box once.
    seed: int, or one int per sample (see the module docstring).
    stop_below: when given, a sample whose best value is already ``< stop_below`` stops moving, and the
        loop ends once every sample has; the returned value is then "some value below the threshold",
        not the minimum.

    The projected centre is always evaluated too, so ``value_best <= objective(project(inp.x))``.
    Every returned point lies in the box (it is the projection of an iterate).
    """
    if steps < 0 or restarts < 1:
        raise BadInputError(f"PGD needs steps >= 0 and restarts >= 1, got steps={steps}, restarts={restarts}")
    lo, hi = inp.lo.detach(), inp.hi.detach()
    rad = (hi - lo) / 2
    if step_size is None:
        step = 2.5 * rad / max(steps, 1)
    else:
        step = torch.as_tensor(step_size, dtype=lo.dtype, device=lo.device)
        if not torch.isfinite(step).all() or (step < 0).any():
            raise BadInputError(f"PGD step size must be finite and >= 0, got {step_size}")
    gen = _generators(seed, lo.shape[0])

    best_x = inp.project(inp.x.detach().to(lo.dtype))
    best_v, _ = _evaluate(objective, best_x, need_grad=False)
    for r in range(restarts):
        z = lo + (hi - lo) * _uniform(gen, lo) if (random_start or r > 0) else best_x.clone()
        for t in range(steps + 1):
            active = None if stop_below is None else best_v >= stop_below
            if active is not None and not active.any():
                break
            v, grad = _evaluate(objective, z, need_grad=t < steps)
            better = v < best_v
            if active is not None:
                better &= active
            best_v = torch.where(better, v, best_v)
            best_x = torch.where(better.view(-1, *([1] * (z.dim() - 1))), z, best_x)
            if t == steps:
                break
            move = step * grad.sign()
            if active is not None:  # frozen samples keep their point (their result is final)
                move = move * active.view(-1, *([1] * (z.dim() - 1))).to(move.dtype)
            z = inp.project(z - move).detach()
        if stop_below is not None and not (best_v >= stop_below).any():
            break
    return best_x.detach(), best_v


def spec_values(model, x: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """``C f(x)``: (N, S) for a batch x and spec matrices C (N, S, K)."""
    out = model(x).reshape(x.shape[0], -1)
    return torch.einsum("nsk,nk->ns", C.to(out.dtype), out)


@contextmanager
def _inputs_only(model):
    """Differentiate w.r.t. the input only: autograd skips the parameter gradients (and their memory);
    the parameters' requires_grad flags are restored afterwards (the trainer relies on them)."""
    params = [p for p in model.parameters() if p.requires_grad] if isinstance(model, torch.nn.Module) else []
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def pgd_attack(model, inp: InputSet, C: torch.Tensor, steps: int = 100, restarts: int = 1, step_size=None,
               seed: int | Sequence[int] = 0, random_start: bool = True,
               stop_below: float | None = 0.0) -> AttackResult:
    """PGD on the margin loss ``min_s (C f(x))_s`` (a sample is broken when it is < 0).

    The same spec ``C`` (N, S, K) as the bound engine, so ``margin`` is an attained value that every
    sound lower bound must stay below. By default a sample stops once it is broken (``stop_below=0``);
    pass ``stop_below=None`` to keep descending for the smallest margin.
    """
    objective = lambda z: spec_values(model, z, C).min(dim=1).values
    with _inputs_only(model):
        x_adv, margin = pgd_minimize(objective, inp, steps, restarts, step_size, seed, random_start, stop_below)
    with torch.no_grad():
        values = spec_values(model, x_adv, C)
    return AttackResult(margin, x_adv, values)
