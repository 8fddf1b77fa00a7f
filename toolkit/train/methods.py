"""One small loss object per certified-training method (paper-spec §3, §7; Eq. 4).

    loss = [κ·CE(f(x), y) +] (1 − κ)·CE(−p*_C, y) + λ·mean_batch Σ_{t≠y} d_t + γ·mean_batch Σ_{t≠y} r_t

(the κ term only with ``kappa`` set, CROWN-IBP's ``robust_natural``; without it the loss is Eq. 4).

* ``CPLoss``: Wong et al.'s convex-polytope training: Fast-Lin bounds, exact (``proj=0``, method
  ``fastlin``) or with Cauchy random projections of dimension ``proj`` (method ``cp-proj``, §8).
* ``CrownIBPLoss``: IBP intermediate bounds + one CROWN backward pass, mixed with the pure IBP bound by β
  (§3.2–3.3). d and r come from the CROWN pass, so they exist only while it runs (β ≥ 1e-5, as in the
  CROWN-IBP code). How r meets β is open in the paper (U7): ``r_coupling`` = "beta-positive" (default,
  the spec's suggestion: γ·r unweighted whenever the CROWN pass runs), "beta-weighted" (γ·β·r) or
  "always" (run the CROWN pass for r even when β = 0). ``loss_fusion`` replaces the CE of the K − 1 margin
  bounds by an upper bound of the CE itself from one CROWN row per sample (``loss.fused_robust_ce``,
  auto_LiRPA's loss fusion); it has no per-class optimum, so d and r are refused with it.
* ``IBPLoss``: interval bounds only. IBP has no relaxation optimum (no δ*₀, no line choices), so d and r
  are not defined for it; asking for them is an error.
* ``MTLIBPLoss`` (De Palma et al. 2024, "Expressive losses"): (1 − α)·CE at a PGD point of the ε-ball + α·the
  IBP robust CE; the same paper's ``ExpIBPLoss`` (CE_adv^(1−α)·CE_IBP^α) and ``CCIBPLoss`` (CE of the convex
  combination (1 − α)·margins at the PGD point + α·IBP margin lower bounds) share its α and its attack. ``SABRLoss`` (Müller et al. 2023): the IBP robust CE over a small box of radius λ·ε around
  a PGD point, moved so that it lies inside the ε-ball. Both build on pure IBP, so d and r are refused as for
  IBP: a mixture with an IBP bound has no relaxation optimum to regularise.

Each loss object is called as ``loss(graph, x, y, eps, step)`` and returns ``LossParts`` (the total to
back-propagate plus detached statistics for the progress bar and the report).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from toolkit.bounds import compute_bounds
from toolkit.errors import BadInputError, UnsupportedOpError
from toolkit.bounds.ops import rule_for
from toolkit.spec import InputSet, margin_spec

from .loss import fused_robust_ce, robust_ce
from .regularizers import R_NORMS, real_activations, reg_d, reg_r
from .schedules import BetaSchedule, KappaSchedule

METHODS = ("cp", "crown-ibp", "ibp", "mtl-ibp", "exp-ibp", "cc-ibp", "sabr")
#: Methods whose bound is pure IBP: no relaxation optimum, so d and r are refused for them.
PURE_IBP = ("ibp", "mtl-ibp", "exp-ibp", "cc-ibp", "sabr")
#: Defaults of the adversarial-point methods, from their authors' MNIST ε = 0.3 scripts (De Palma et al.'s
#: MTL-IBP: ibp_coef 0.5, 1 attack step; SABR/TAPS: --eps-shrinkage 0.6; CTRAIN's SABR loss: 8 PGD steps).
#: CTBench's own MNIST 0.3 SABR script uses a shrinkage of 0.9: set --sabr-lambda per task.
MTL_ALPHA, SABR_LAMBDA = 0.5, 0.6
#: De Palma et al.'s code shares one ``--ibp-coef`` (α) and one attack between MTL-, EXP- and CC-IBP, tuned per
#: benchmark (e.g. 0.02 for EXP-IBP at MNIST ε = 0.1); we share --mtl-alpha (default 0.5) and 1 step likewise.
ATTACK_STEPS = {"mtl-ibp": 1, "exp-ibp": 1, "cc-ibp": 1, "sabr": 8}
#: Σ_t or mean_t over the K−1 classes t ≠ y (spec U2; the paper writes Σ_t).
AGGREGATIONS = ("sum", "mean")
R_COUPLINGS = ("beta-positive", "beta-weighted", "always")
#: Below this β the CROWN-IBP code skips the CROWN pass (§3.2).
BETA_SKIP = 1e-5


@dataclass
class LossParts:
    """loss: the scalar to back-propagate. The rest are detached floats for logging: robust CE, the
    batch means of Σ_t d_t and Σ_t r_t (NaN when not computed), robust error (fraction of the batch with
    some margin bound ≤ 0 under the training bound: a statistic, a certificate only for exact bounds),
    clean error, and the schedule values in force."""

    loss: torch.Tensor
    ce: float
    d: float = math.nan
    r: float = math.nan
    robust_err: float = math.nan
    clean_err: float = math.nan
    beta: float = math.nan
    kappa: float = math.nan


@dataclass
class RegConfig:
    """λ (d), γ (r) and the open choices of U1/U2."""

    lam: float = 0.0
    gamma: float = 0.0
    r_norm: str = "none"
    r_squared: bool = False
    aggregate: str = "sum"

    def __post_init__(self):
        for name, v in (("lambda (--reg-d)", self.lam), ("gamma (--reg-r)", self.gamma)):
            if not math.isfinite(v) or v < 0:
                raise BadInputError(f"{name} must be finite and >= 0, got {v}")
        if self.r_norm not in R_NORMS:
            raise BadInputError(f"unknown r normalisation {self.r_norm!r}; choose from {', '.join(R_NORMS)}")
        if self.aggregate not in AGGREGATIONS:
            raise BadInputError(f"unknown d/r aggregation {self.aggregate!r}; choose from "
                                f"{', '.join(AGGREGATIONS)}")

    @property
    def active(self) -> bool:
        return self.lam > 0 or self.gamma > 0

    def agg(self, per_spec: torch.Tensor) -> torch.Tensor:
        """(N, K−1) → batch mean of Σ_t (or mean_t)."""
        per_sample = per_spec.sum(1) if self.aggregate == "sum" else per_spec.mean(1)
        return per_sample.mean()


@dataclass
class WarmupConfig:
    """Shi et al. 2021's warm-up regularizers (``ibp_warmup``): weight λ·(1 − ε/eps_max), tolerance τ."""

    lam: float = 0.0
    tol: float = 0.5
    eps_max: float | None = None

    def __post_init__(self):
        if not (math.isfinite(self.lam) and self.lam >= 0):
            raise BadInputError(f"--warmup-reg must be finite and >= 0, got {self.lam}")
        if not (math.isfinite(self.tol) and self.tol > 0):
            raise BadInputError(f"--warmup-tol must be finite and > 0, got {self.tol}")


class _BaseLoss:
    name = "?"

    def __init__(self, reg: RegConfig | None = None, kappa: KappaSchedule | None = None,
                 warmup: WarmupConfig | None = None):
        self.reg = reg or RegConfig()
        self.kappa = kappa
        self.warmup = warmup or WarmupConfig()

    def _warmup_term(self, graph, ibp: dict, eps):
        """λ·(1 − ε/ε_max)·(L_tightness + L_relu) on IBP bounds (0 when off or at the end of the ramp)."""
        w = self.warmup
        if w.lam <= 0 or not w.eps_max:
            return 0.0
        fade = max(0.0, 1.0 - float(eps) / w.eps_max)
        if fade == 0.0:
            return 0.0
        from .ibp_warmup import warmup_regularizer

        return w.lam * fade * warmup_regularizer(graph, ibp, w.tol)

    def check_graph(self, graph) -> None:
        """Raise before training if the method cannot handle the graph (d/r need a ReLU network)."""
        if self.reg.active:
            for key, node, _ in graph:
                rule = rule_for(node)
                if rule.needs_bounds and not rule.relu:  # d and r are defined on ReLU lines (§5, §6)
                    raise UnsupportedOpError(node.op, node.onnx_name, supported=["ReLU"],
                                             method=f"{self.name} with regularizers d/r")

    def describe(self) -> dict:
        return {"method": self.name, "lambda": self.reg.lam, "gamma": self.reg.gamma, "r_norm": self.reg.r_norm,
                "r_squared": self.reg.r_squared, "aggregate": self.reg.aggregate,
                "kappa_final": None if self.kappa is None else self.kappa.final}

    def _regularize(self, graph, res, total, parts):
        """Add λ·d and γ·r from a BoundResult that carries the relaxation's optimum."""
        if not self.reg.active:
            return total
        values = real_activations(graph, res)  # one forward pass on N·(K−1) inputs (§7.2 step 5)
        if self.reg.lam > 0:
            d = self.reg.agg(reg_d(graph, res, values))
            total = total + self.reg.lam * d
            parts["d"] = float(d.detach())
        if self.reg.gamma > 0:
            r = self.reg.agg(reg_r(graph, res, values, norm=self.reg.r_norm, squared=self.reg.r_squared))
            total = total + self._gamma_weight(parts) * self.reg.gamma * r
            parts["r"] = float(r.detach())
        return total

    def _gamma_weight(self, parts) -> float:
        return 1.0

    def _finish(self, graph, x, y, lower, total_reg, parts, step, robust=None):
        """Robust CE on the margin lower bounds (or the method's own ``robust`` term) + κ·natural CE, plus the
        regularizer terms; statistics from ``lower``."""
        ce = robust_ce(lower, y, graph.output_size()) if robust is None else robust
        logits = graph(x).reshape(x.shape[0], -1)
        loss = ce
        if self.kappa is not None:
            kap = self.kappa.value(step)
            loss = kap * F.cross_entropy(logits, y) + (1 - kap) * ce
            parts["kappa"] = kap
        with torch.no_grad():
            parts["robust_err"] = float((lower <= 0).any(1).float().mean())
            parts["clean_err"] = float((logits.argmax(1) != y).float().mean())
        return LossParts(loss=loss + total_reg, ce=float(ce.detach()), **parts)

    def __call__(self, graph, x, y, eps, step):  # pragma: no cover - abstract
        raise NotImplementedError


def _input_set(graph, x, eps):
    return InputSet.from_eps(x, eps, clip=graph.input_spec.value_range)


class CPLoss(_BaseLoss):
    """Wong et al. 2018 / Fast-Lin (CP) certified loss + d + r (§7.2, Algorithm 1)."""

    name = "cp"

    def __init__(self, reg=None, kappa=None, proj: int = 0, seed: int = 0):
        super().__init__(reg, kappa)
        if proj < 0:
            raise BadInputError(f"--proj must be >= 0 (0 = exact Fast-Lin bounds), got {proj}")
        self.proj, self.seed = int(proj), int(seed)

    @property
    def bound_method(self) -> str:
        return "cp-proj" if self.proj > 0 else "fastlin"

    def describe(self):
        return {**super().describe(), "bound": self.bound_method, "proj": self.proj}

    def __call__(self, graph, x, y, eps, step):
        inp = _input_set(graph, x, eps)
        kw = {}
        if self.proj > 0:
            # A generator seeded by (seed, step): the projection is a function of the step, so a resumed
            # run draws the same Cauchy matrices as an uninterrupted one.
            kw = dict(proj=self.proj, generator=_step_generator(self.seed, step, x.device))
        # The per-layer optimum (line choices) is recorded only when d or r reads it.
        res = compute_bounds(graph, inp, None, self.bound_method, labels=y, optimum=self.reg.active, **kw)
        parts = {}
        total = self._regularize(graph, res, 0.0, parts)
        return self._finish(graph, x, y, res.lower, total, parts, step)


class CrownIBPLoss(_BaseLoss):
    """CROWN-IBP (§3.2–3.3): lb = β·p_CROWN-IBP + (1 − β)·p_IBP; r (and d) from the CROWN pass (§7.3)."""

    name = "crown-ibp"

    def __init__(self, beta: BetaSchedule, reg=None, kappa=None, r_coupling: str = "beta-positive", warmup=None,
                 loss_fusion: bool = False):
        super().__init__(reg, kappa, warmup)
        if r_coupling not in R_COUPLINGS:
            raise BadInputError(f"unknown r/beta coupling {r_coupling!r}; choose from {', '.join(R_COUPLINGS)}")
        if loss_fusion:
            check_loss_fusion(self.name, self.reg)
        self.beta, self.r_coupling, self.loss_fusion = beta, r_coupling, bool(loss_fusion)

    def describe(self):
        return {**super().describe(), "beta_final": self.beta.final, "r_coupling": self.r_coupling,
                "loss_fusion": self.loss_fusion}

    def _gamma_weight(self, parts) -> float:
        return parts["beta"] if self.r_coupling == "beta-weighted" else 1.0

    def __call__(self, graph, x, y, eps, step):
        inp = _input_set(graph, x, eps)
        beta = self.beta.value(step)
        C = margin_spec(y, graph.output_size(), dtype=x.dtype).to(x.device)
        ibp = compute_bounds(graph, inp, C, "ibp", bound_upper=self.loss_fusion)
        parts, total, lower = {"beta": beta}, self._warmup_term(graph, ibp.bounds, eps), ibp.lower
        if self.loss_fusion:
            return self._fused(graph, inp, x, y, ibp, beta, total, parts, step)
        run_crown = beta >= BETA_SKIP or (self.r_coupling == "always" and self.reg.active)
        if run_crown:
            # The IBP intermediate bounds are shared with the CROWN pass (§3.2 step 1).
            ci = compute_bounds(graph, inp, C, "crown-ibp", bounds=ibp.bounds, optimum=self.reg.active)
            if beta >= BETA_SKIP:
                lower = beta * ci.lower + (1 - beta) * ibp.lower
            total = self._regularize(graph, ci, total, parts)
        return self._finish(graph, x, y, lower, total, parts, step)

    def _fused(self, graph, inp, x, y, ibp, beta, total, parts, step):
        """Loss fusion (``fused_robust_ce``): the CROWN pass bounds one row per sample. Its robust error
        statistic is IBP's (the fused pass gives no per-class margins)."""
        def crown_lower_of(row):
            return compute_bounds(graph, inp, row, "crown-ibp", bounds=ibp.bounds, optimum=False).lower

        fused = fused_robust_ce(ibp.lower, ibp.upper, ibp.C, crown_lower_of if beta >= BETA_SKIP else None, beta)
        return self._finish(graph, x, y, ibp.lower, total, parts, step, robust=fused.mean())


def check_loss_fusion(method: str, reg: RegConfig) -> None:
    """``--loss-fusion`` exists for crown-ibp without d and r: its one row per sample has no per-class
    relaxation optimum for them to read."""
    if method != "crown-ibp":
        raise BadInputError(f"--loss-fusion applies to --method crown-ibp only (got --method {method})")
    if reg.active:
        raise BadInputError("--loss-fusion bounds the cross-entropy itself with one spec row per sample, which "
                            "has no per-class relaxation optimum for d and r; drop --reg-d/--reg-r or --loss-fusion")


def _refuse_regularizers(reg, method):
    reg = reg or RegConfig()
    if reg.active:
        raise BadInputError(f"regularizers d and r are not defined for --method {method}: its bound is pure IBP, "
                            "which has no relaxation optimum (no optimal input perturbation or line choices); "
                            "use --method cp or crown-ibp")
    return reg


class IBPLoss(_BaseLoss):
    """Interval bound propagation (Gowal et al. 2018) with the spec merged into the last layer (§3.1)."""

    name = "ibp"

    def __init__(self, reg=None, kappa=None, warmup=None):
        super().__init__(_refuse_regularizers(reg, "ibp"), kappa, warmup)

    def __call__(self, graph, x, y, eps, step):
        res = compute_bounds(graph, _input_set(graph, x, eps), None, "ibp", labels=y)
        return self._finish(graph, x, y, res.lower, self._warmup_term(graph, res.bounds, eps), {}, step)


class _AdversarialIBPLoss(_BaseLoss):
    """Shared by MTL-IBP and SABR: a PGD point of the ε-ball (margin attack, seeded by (seed, step) so that a
    resumed run draws the same starts), then IBP over a box."""

    def __init__(self, reg=None, kappa=None, attack_steps: int | None = None, seed: int = 0, warmup=None):
        super().__init__(_refuse_regularizers(reg, self.name), kappa, warmup)
        steps = ATTACK_STEPS[self.name] if attack_steps is None else attack_steps
        if isinstance(steps, bool) or int(steps) != steps or steps < 0:
            raise BadInputError(f"--attack-steps must be an integer >= 0, got {steps}")
        self.attack_steps, self.seed = int(steps), int(seed)

    def describe(self):
        return {**super().describe(), "attack_steps": self.attack_steps}

    def _attack(self, graph, inp, y, step):
        from toolkit.attack.pgd import pgd_attack

        C = margin_spec(y, graph.output_size(), dtype=inp.lo.dtype).to(inp.lo.device)
        seed = (self.seed * 1_000_003 + int(step)) % (2 ** 31)
        return pgd_attack(graph, inp, C, steps=self.attack_steps, seed=seed, stop_below=None).x_adv.detach()

    def _ibp(self, graph, inp, y, eps):
        """(IBP margin lower bounds, the warm-up term on the same IBP bounds)."""
        res = compute_bounds(graph, inp, None, "ibp", labels=y)
        return res.lower, self._warmup_term(graph, res.bounds, eps)


class MTLIBPLoss(_AdversarialIBPLoss):
    """(1 − α)·CE(f(x_adv), y) + α·CE(−p*_IBP, y): α = 0 is adversarial training, α = 1 IBP training."""

    name = "mtl-ibp"

    def __init__(self, reg=None, kappa=None, alpha: float = MTL_ALPHA, attack_steps=None, seed=0, warmup=None):
        super().__init__(reg, kappa, attack_steps, seed, warmup)
        if not (math.isfinite(alpha) and 0 <= alpha <= 1):
            raise BadInputError(f"--mtl-alpha must be in [0, 1], got {alpha}")
        self.alpha = float(alpha)

    def describe(self):
        return {**super().describe(), "alpha": self.alpha}

    def __call__(self, graph, x, y, eps, step):
        inp = _input_set(graph, x, eps)
        adv_logits = graph(self._attack(graph, inp, y, step)).reshape(x.shape[0], -1)
        lower, warm = self._ibp(graph, inp, y, eps)
        return self._finish(graph, x, y, lower, warm, {}, step, robust=self.mix(adv_logits, lower, y))

    def mix(self, adv_logits, lower, y):
        """The expressive loss from the adversarial logits and the IBP margin lower bounds (N, K−1)."""
        adv = F.cross_entropy(adv_logits, y)
        return (1 - self.alpha) * adv + self.alpha * robust_ce(lower, y, adv_logits.shape[1])


class ExpIBPLoss(MTLIBPLoss):
    """CE(f(x_adv), y)^(1−α) · CE(−p*_IBP, y)^α (De Palma et al. 2024, Exp-IBP): α = 0 is adversarial
    training, α = 1 IBP training."""

    name = "exp-ibp"

    def mix(self, adv_logits, lower, y):
        adv = F.cross_entropy(adv_logits, y)
        ibp = robust_ce(lower, y, adv_logits.shape[1])
        if self.alpha in (0.0, 1.0):  # exactly the end points (x^0 has no gradient at x = 0)
            return ibp if self.alpha == 1.0 else adv
        tiny = torch.finfo(adv.dtype).tiny  # both CEs are > 0; the floor keeps log finite on underflow
        return torch.exp((1 - self.alpha) * adv.clamp_min(tiny).log() + self.alpha * ibp.clamp_min(tiny).log())


class CCIBPLoss(MTLIBPLoss):
    """CE(−[(1 − α)·m_adv + α·p*_IBP], y) with m_adv the margins f_y − f_t at the PGD point (De Palma et al. 2024,
    CC-IBP: the convex combination is taken on the margins, before the CE)."""

    name = "cc-ibp"

    def mix(self, adv_logits, lower, y):
        k = adv_logits.shape[1]
        C = margin_spec(y, k, dtype=adv_logits.dtype).to(adv_logits.device)
        m_adv = torch.einsum("nsk,nk->ns", C, adv_logits)
        return robust_ce((1 - self.alpha) * m_adv + self.alpha * lower, y, k)


class SABRLoss(_AdversarialIBPLoss):
    """CE(−p*_IBP, y) over the box of radius τ = λ·ε centred at the PGD point moved into [x − ε + τ, x + ε − τ]
    (so the small box lies inside the ε-ball; also clipped to the valid-input range)."""

    name = "sabr"

    def __init__(self, reg=None, kappa=None, lam_box: float = SABR_LAMBDA, attack_steps=None, seed=0, warmup=None):
        super().__init__(reg, kappa, attack_steps, seed, warmup)
        if not (math.isfinite(lam_box) and 0 < lam_box <= 1):
            raise BadInputError(f"--sabr-lambda must be in (0, 1], got {lam_box}")
        self.lam_box = float(lam_box)

    def describe(self):
        return {**super().describe(), "sabr_lambda": self.lam_box}

    def small_box(self, graph, x, y, eps, step) -> InputSet:
        inp = _input_set(graph, x, eps)
        tau = self.lam_box * eps
        centre = torch.minimum(torch.maximum(self._attack(graph, inp, y, step), x - eps + tau), x + eps - tau)
        return InputSet.from_eps(centre, tau, clip=graph.input_spec.value_range)

    def __call__(self, graph, x, y, eps, step):
        lower, warm = self._ibp(graph, self.small_box(graph, x, y, eps, step), y, eps)
        return self._finish(graph, x, y, lower, warm, {}, step)


def _step_generator(seed: int, step: int, device) -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed((int(seed) * 1_000_003 + int(step)) % (2 ** 63))
    return gen


def make_loss(method: str, *, lam=0.0, gamma=0.0, r_norm="none", r_squared=False, aggregate="sum", proj=0,
              seed=0, beta: BetaSchedule | None = None, kappa: KappaSchedule | None = None,
              r_coupling="beta-positive", mtl_alpha=MTL_ALPHA, sabr_lambda=SABR_LAMBDA, attack_steps=None,
              warmup_reg=0.0, warmup_tol=0.5, eps_max=None, loss_fusion=False):
    """The loss object for ``method`` (``METHODS``); arguments as on the command line (``eps_max``: the final
    training ε, where the warm-up regularizers fade out)."""
    if method not in METHODS:
        raise BadInputError(f"unknown training method {method!r}; choose from {', '.join(METHODS)}")
    reg = RegConfig(lam, gamma, r_norm, r_squared, aggregate)
    if loss_fusion:
        check_loss_fusion(method, reg)
    warmup = WarmupConfig(warmup_reg, warmup_tol, eps_max)
    if method == "cp":
        if warmup.lam > 0:
            raise BadInputError("--warmup-reg applies to IBP-based methods (ibp, crown-ibp, mtl-ibp, exp-ibp, cc-ibp, sabr): it "
                                "reads IBP bounds, which --method cp does not compute")
        return CPLoss(reg, kappa, proj=proj, seed=seed)
    if method == "ibp":
        return IBPLoss(reg, kappa, warmup)
    if method in ("mtl-ibp", "exp-ibp", "cc-ibp"):
        cls = {"mtl-ibp": MTLIBPLoss, "exp-ibp": ExpIBPLoss, "cc-ibp": CCIBPLoss}[method]
        return cls(reg, kappa, mtl_alpha, attack_steps, seed, warmup)
    if method == "sabr":
        return SABRLoss(reg, kappa, sabr_lambda, attack_steps, seed, warmup)
    if beta is None:
        raise BadInputError("crown-ibp needs a beta schedule")
    return CrownIBPLoss(beta, reg, kappa, r_coupling, warmup, loss_fusion)
