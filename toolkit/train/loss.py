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
