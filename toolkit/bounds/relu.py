"""ReLU relaxation lines (paper-spec §1.4, §7.4).

For pre-activation bounds l ≤ x ≤ u:
- stably active (l ≥ 0): both lines are z = x; stably inactive (u ≤ 0): both are z = 0;
- unstable (l < 0 < u): upper line is the chord ā = u/(u−l), b̄ = −l·ā; the lower line passes through the
  origin with slope a ∈ [0, 1] chosen by the method.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

#: Lower-slope rules. "fastlin": a = ā (parallel lines, = Wong–Kolter dual); "crown": adaptive
#: a = 1[ā > 0.5] i.e. u > −l, tie u = −l → 0 (the CROWN-IBP code's test, §1.4).
LOWER_SLOPES = ("fastlin", "crown", "zero", "one")


@dataclass
class ReluRelaxation:
    unstable: torch.Tensor       # (N, *shape) bool
    upper_slope: torch.Tensor    # (N, 1, *shape)
    upper_intercept: torch.Tensor
    lower_slope: torch.Tensor    # (N, 1, *shape) or (N, S, *shape) for alpha


def chord(l: torch.Tensor, u: torch.Tensor):
    """(unstable mask, ā, b̄) with stable neurons given slope 1/0 and intercept 0."""
    unstable = (l < 0) & (u > 0)
    active = (l >= 0)
    denom = torch.where(unstable, u - l, torch.ones_like(u))
    slope = torch.where(unstable, u / denom, active.to(u.dtype))
    intercept = torch.where(unstable, -l * slope, torch.zeros_like(u))
    return unstable, slope, intercept


def lower_slope(rule: str, l, u, unstable, upper_slope):
    active = (l >= 0).to(u.dtype)
    if rule == "fastlin":
        return upper_slope
    if rule == "crown":
        adaptive = (upper_slope > 0.5).to(u.dtype)
    elif rule == "zero":
        adaptive = torch.zeros_like(u)
    elif rule == "one":
        adaptive = torch.ones_like(u)
    else:
        raise ValueError(f"unknown lower-slope rule {rule!r}; choose from {LOWER_SLOPES}")
    return torch.where(unstable, adaptive, active)


def relax(l, u, rule: str) -> ReluRelaxation:
    unstable, a_up, b_up = chord(l, u)
    a_lo = lower_slope(rule, l, u, unstable, a_up)
    return ReluRelaxation(unstable, a_up.unsqueeze(1), b_up.unsqueeze(1), a_lo.unsqueeze(1))
