"""Training schedules as small objects with ``value(step)`` (paper-spec §3.3, §9.4).

``step`` is the global optimiser-step counter s = epoch · N + batch_idx (N = steps per epoch), as in the
CROWN-IBP code. Every value is a pure function of ``step``: a resumed run only needs the step counter to
be back on the same schedule (nothing else to checkpoint).

* ``EpsSchedule``: ε held at ``start_value`` for ``warmup`` epochs, then ramped to ``eps`` over ``ramp``
  epochs ("linear" or DeepMind's "smoothed"), then held. In CROWN-IBP's terms: schedule_start = warmup,
  schedule_length = ramp + 1, i.e. S0 = warmup · N and S1 = (warmup + ramp) · N (§3.3).
* ``BetaSchedule``: CROWN-IBP's β = 1 − (1 − β_final) · ε(s)/ε_max (§3.3).
* ``KappaSchedule``: CROWN-IBP's κ = 1 − (1 − κ_final) · ε(s)/ε_max (§3.3, method ``robust_natural``).
* ``LRSchedule``: the learning rate per epoch: constant, "step" (× factor every ``every`` epochs from
  ``start``: Wong's "halve every 10 epochs after the ramp", the CROWN-IBP families' "×0.5 every 10") or
  "multistep" (× factor at each milestone: the CROWN-IBP DM-large "×0.1 at 130, 190").
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from toolkit.errors import BadInputError

EPS_KINDS = ("linear", "smoothed")
LR_KINDS = ("constant", "step", "multistep")


@dataclass
class EpsSchedule:
    """ε(step) from ``start_value`` to ``eps`` (§3.3). ``warmup``/``ramp`` in epochs."""

    eps: float
    steps_per_epoch: int
    warmup: int = 0
    ramp: int = 0
    kind: str = "linear"
    start_value: float = 0.0

    def __post_init__(self):
        if not (math.isfinite(self.eps) and self.eps >= 0):
            raise BadInputError(f"training epsilon must be finite and >= 0, got {self.eps}")
        if not (math.isfinite(self.start_value) and 0 <= self.start_value <= self.eps):
            raise BadInputError(f"epsilon ramp start {self.start_value} must lie in [0, eps={self.eps}]")
        if self.warmup < 0 or self.ramp < 0:
            raise BadInputError(f"warm-up and ramp must be >= 0 epochs, got {self.warmup} and {self.ramp}")
        if self.kind not in EPS_KINDS:
            raise BadInputError(f"unknown epsilon schedule {self.kind!r}; choose from {', '.join(EPS_KINDS)}")
        if self.steps_per_epoch < 1:
            raise BadInputError("the schedule needs at least one step per epoch")

    @property
    def start_step(self) -> int:
        return self.warmup * self.steps_per_epoch

    @property
    def end_step(self) -> int:
        return (self.warmup + self.ramp) * self.steps_per_epoch

    @property
    def end_epoch(self) -> int:
        """Epochs after which ε has reached its final value."""
        return self.warmup + self.ramp

    def value(self, step: int) -> float:
        v0, v1, s0, s1 = self.start_value, self.eps, self.start_step, self.end_step
        if step >= s1:
            return v1
        if step <= s0:
            return v0
        if self.kind == "linear":
            return _linear(step, s0, s1, v0, v1)
        return _smoothed(step, s0, s1, v0, v1)


def _linear(s, s0, s1, v0, v1) -> float:
    return min(max(v0 + (v1 - v0) * (s - s0) / (s1 - s0), min(v0, v1)), max(v0, v1))


def _smoothed(s, s0, s1, v0, v1, exponent: int = 4) -> float:
    """DeepMind's IBP schedule (§3.3): polynomial (power 4) for the first quarter, then linear, with the
    two pieces meeting in value and slope at ``mid``."""
    mid = s0 + int(0.25 * (s1 - s0))
    if mid <= s0:  # ramp shorter than 4 steps: nothing to smooth
        return _linear(s, s0, s1, v0, v1)
    t = (mid - s0) ** (exponent - 1)
    alpha = (v1 - v0) / ((s1 - mid) * exponent * t + (mid - s0) * t)
    if s < mid:
        return v0 + alpha * (s - s0) ** exponent
    v_mid = v0 + alpha * (mid - s0) ** exponent
    return _linear(s, mid, s1, v_mid, v1)


@dataclass
class BetaSchedule:
    """CROWN-IBP mixing weight β(s) = 1 − (1 − β_final)·ε(s)/ε_max: 1 (pure CROWN-IBP) → β_final (§3.3)."""

    eps: EpsSchedule
    final: float = 0.0

    def __post_init__(self):
        if not 0 <= self.final <= 1:
            raise BadInputError(f"beta_final must lie in [0, 1], got {self.final}")

    def value(self, step: int) -> float:
        return _ratio_mix(self.final, self.eps, step)


@dataclass
class KappaSchedule:
    """Weight of the natural CE, κ(s) = 1 − (1 − κ_final)·ε(s)/ε_max (§3.3 ``robust_natural``)."""

    eps: EpsSchedule
    final: float = 0.5

    def __post_init__(self):
        if not 0 <= self.final <= 1:
            raise BadInputError(f"kappa_final must lie in [0, 1], got {self.final}")

    def value(self, step: int) -> float:
        return _ratio_mix(self.final, self.eps, step)


def _ratio_mix(final, eps: EpsSchedule, step) -> float:
    ratio = eps.value(step) / eps.eps if eps.eps > 0 else 1.0
    return 1.0 - (1.0 - final) * ratio


@dataclass
class LRSchedule:
    """Learning rate per epoch (``value(epoch)``; the trainer sets it at the start of each epoch)."""

    lr: float
    kind: str = "constant"
    factor: float = 0.5
    every: int = 10
    start: int = 0
    milestones: tuple = field(default_factory=tuple)

    def __post_init__(self):
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise BadInputError(f"learning rate must be > 0, got {self.lr}")
        if self.kind not in LR_KINDS:
            raise BadInputError(f"unknown learning-rate schedule {self.kind!r}; choose from {', '.join(LR_KINDS)}")
        if not (math.isfinite(self.factor) and 0 < self.factor <= 1):
            raise BadInputError(f"learning-rate decay factor must lie in (0, 1], got {self.factor}")
        if self.every < 1 or self.start < 0:
            raise BadInputError("learning-rate step must be >= 1 epoch and its start >= 0")
        self.milestones = tuple(sorted(int(m) for m in self.milestones))

    def value(self, epoch: int) -> float:
        if self.kind == "step":
            n = 0 if epoch < self.start else (epoch - self.start) // self.every
            return self.lr * self.factor ** n
        if self.kind == "multistep":
            return self.lr * self.factor ** sum(epoch >= m for m in self.milestones)
        return self.lr
