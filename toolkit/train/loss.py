"""Certified-training losses (paper-spec §7.1, Eq. 4)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from toolkit.spec import scatter_margins


def robust_ce(lower: torch.Tensor, labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """L_CE(−p*_C, y) with p*_C ∈ R^K the margin lower bounds, entry y = 0 (§7.1):
    log(1 + Σ_{t≠y} exp(−p_t)), averaged over the batch. ``lower`` is (N, K−1) in ``margin_spec`` order."""
    p = scatter_margins(lower, labels, n_classes, fill=0.0)
    return F.cross_entropy(-p, labels.to(p.device))


def fused_robust_ce(p_lo: torch.Tensor, p_hi: torch.Tensor, C: torch.Tensor, crown_lower_of=None,
                    beta: float = 0.0) -> torch.Tensor:
    """Loss fusion (auto_LiRPA's ``loss_fusion`` for CROWN-IBP, Xu et al. 2020): an upper bound of the worst
    cross-entropy over the input set, CE = log Σ_j exp(m_j) with margins m_j = f_j − f_y, from one spec row
    per sample instead of K − 1. Returns (N,).

    ``p_lo``/``p_hi`` (N, S) are IBP bounds of p_j = C_j·f = f_y − f_j (``margin_spec`` rows), so m_j lies in
    [l_j, u_j] = [−p_hi, −p_lo]. exp is convex, so on [l_j, u_j] it lies under its chord a_j·(m_j − l_j) + e^{l_j};
    Σ_j a_j m_j = −(Σ_j a_j C_j)·f is one linear function of the output, whose upper bound is −(the lower bound of
    the row Σ_j a_j C_j) from ``crown_lower_of(row)`` ((N, 1, K) → (N, 1)). log is increasing, so the log of an
    upper bound of Σ_j exp(m_j) bounds the worst CE (auto_LiRPA relaxes log linearly instead; this is never
    looser). With only IBP (``crown_lower_of`` None or β = 0) the bound is log(1 + Σ_j e^{u_j}), exactly
    ``robust_ce`` of the IBP margins. As in auto_LiRPA's CROWN-IBP training, β mixes the two upper bounds of
    Σ_j exp(m_j) (before the log). Everything is shifted by M = max(0, max_j u_j) so no exp overflows.
    """
    u, l = -p_lo, -p_hi
    shift = u.detach().amax(1, keepdim=True).clamp_min(0)                  # (N, 1): M
    exp_u, exp_l = torch.exp(u - shift), torch.exp(l - shift)
    exp_y = torch.exp(-shift).squeeze(1)                                   # the j = y term, e^{0 − M}
    s_ibp = exp_y + exp_u.sum(1)
    if crown_lower_of is None or beta <= 0:
        return shift.squeeze(1) + torch.log(s_ibp)
    width = (u - l).clamp_min(0)
    # Chord slope (e^u − e^l)/(u − l), for narrow intervals as e^l·expm1(d)/d (no cancellation); d is raised
    # to 1e-6 at least, which only steepens the line through (l, e^l), so it stays above exp on [l, u].
    narrow = width.clamp(1e-6, 1.0)
    slope = torch.where(width > 1.0, (exp_u - exp_l) / width.clamp_min(1.0), exp_l * torch.expm1(narrow) / narrow)
    row = (slope.unsqueeze(-1) * C).sum(1, keepdim=True)                   # Σ_j a_j C_j, (N, 1, K)
    upper_linear = -crown_lower_of(row).reshape(-1)                        # ≥ Σ_j a_j m_j on the set
    s_crown = exp_y + (exp_l - slope * l).sum(1) + upper_linear
    s = beta * s_crown + (1 - beta) * s_ibp
    return shift.squeeze(1) + torch.log(s.clamp_min(torch.finfo(s.dtype).tiny))
