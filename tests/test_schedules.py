"""ε, β, κ and learning-rate schedules (paper-spec §3.3, §9.4)."""
import pytest

from toolkit.errors import BadInputError
from toolkit.train.schedules import BetaSchedule, EpsSchedule, KappaSchedule, LRSchedule


def test_linear_eps_warmup_ramp_hold():
    s = EpsSchedule(0.4, steps_per_epoch=10, warmup=1, ramp=4, kind="linear", start_value=0.0)
    assert (s.start_step, s.end_step, s.end_epoch) == (10, 50, 5)
    assert [s.value(t) for t in (0, 5, 10)] == [0.0, 0.0, 0.0]  # warm-up holds the start value
    assert s.value(30) == pytest.approx(0.2)
    assert s.value(49) == pytest.approx(0.39)
    assert s.value(50) == s.value(10 ** 6) == 0.4


def test_linear_eps_from_nonzero_start_and_no_ramp():
    s = EpsSchedule(0.1, steps_per_epoch=4, warmup=0, ramp=1, start_value=0.01)
    assert s.value(0) == pytest.approx(0.01) and s.value(2) == pytest.approx(0.055) and s.value(4) == 0.1
    assert EpsSchedule(0.3, steps_per_epoch=7).value(0) == 0.3  # no ramp: full eps from the first step


def test_smoothed_eps_matches_the_deepmind_formula():
    # S0 = 0, S1 = 8: mid = 2, t = 2^3, alpha = 1 / ((8-2)*4*8 + 2*8) = 1/208 (spec §3.3, worked by hand)
    s = EpsSchedule(1.0, steps_per_epoch=4, warmup=0, ramp=2, kind="smoothed")
    assert s.value(1) == pytest.approx(1 / 208)
    assert s.value(2) == pytest.approx(16 / 208)
    assert s.value(5) == pytest.approx(16 / 208 + (1 - 16 / 208) * 3 / 6)
    assert s.value(8) == 1.0
    vals = [s.value(t) for t in range(10)]
    assert vals == sorted(vals)
    # the polynomial and the line meet with the same slope at mid (a quarter into the ramp): on a fine grid
    # the step just before mid and the step just after it raise ε by the same amount
    fine = EpsSchedule(1.0, steps_per_epoch=400, warmup=0, ramp=2, kind="smoothed")
    left, right = fine.value(200) - fine.value(199), fine.value(201) - fine.value(200)
    assert right > 0 and right == pytest.approx(left, rel=0.02)


def test_beta_and_kappa_follow_eps():
    eps = EpsSchedule(0.2, steps_per_epoch=10, warmup=0, ramp=2)
    beta, kappa = BetaSchedule(eps, final=0.0), KappaSchedule(eps, final=0.5)
    assert beta.value(0) == 1.0 and beta.value(10) == pytest.approx(0.5) and beta.value(20) == 0.0
    assert kappa.value(0) == 1.0 and kappa.value(10) == pytest.approx(0.75) and kappa.value(99) == 0.5
    assert BetaSchedule(eps, final=1.0).value(15) == 1.0  # CIFAR 2/255 config: beta stays 1


def test_lr_schedules():
    step = LRSchedule(1e-3, "step", factor=0.5, every=10, start=20)  # Wong: halve every 10 after the ramp
    assert [step.value(e) for e in (0, 19, 29, 30, 40)] == pytest.approx([1e-3, 1e-3, 1e-3, 5e-4, 2.5e-4])
    multi = LRSchedule(5e-4, "multistep", factor=0.1, milestones=(190, 130))  # CROWN-IBP DM-large
    assert [multi.value(e) for e in (0, 130, 189, 190)] == pytest.approx([5e-4, 5e-5, 5e-5, 5e-6])
    assert LRSchedule(0.1).value(1000) == 0.1


@pytest.mark.parametrize("make", [
    lambda: EpsSchedule(-0.1, 10),
    lambda: EpsSchedule(float("nan"), 10),
    lambda: EpsSchedule(0.1, 10, start_value=0.2),
    lambda: EpsSchedule(0.1, 10, warmup=-1),
    lambda: EpsSchedule(0.1, 10, kind="cosine"),
    lambda: BetaSchedule(EpsSchedule(0.1, 10), final=1.5),
    lambda: KappaSchedule(EpsSchedule(0.1, 10), final=-0.1),
    lambda: LRSchedule(0.0),
    lambda: LRSchedule(1e-3, "cosine"),
    lambda: LRSchedule(1e-3, "step", factor=2.0),
])
def test_bad_schedule_settings(make):
    with pytest.raises(BadInputError):
        make()
