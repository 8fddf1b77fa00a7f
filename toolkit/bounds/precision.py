"""Float32 certificates near zero are re-derived in float64 before they count.

The engine computes in float32 without outward rounding (issue 4 notes), so a margin lower bound of, say,
1e-6 may be a rounding artefact. A certificate whose smallest margin bound lies below
``rel_tol · (1 + max |logit|)`` is recomputed in float64 (same method and options) and kept only if the
float64 bound is still > 0. Float64 rounding is ~10⁹ times smaller, far below the tolerance; this is a
safeguard, not interval arithmetic.
"""
from __future__ import annotations

import copy

import torch

from toolkit.spec import label_column_ignored

#: Relative tolerance that sends a float32 certificate to the float64 re-check.
RECHECK_RTOL = 1e-3


def borderline(lb: torch.Tensor, y: torch.Tensor, logits: torch.Tensor, rel_tol: float = RECHECK_RTOL):
    """(N,) True where every margin bound is > 0 but the smallest is within the float32 tolerance."""
    low = label_column_ignored(lb, y).min(1).values
    scale = 1.0 + logits.abs().amax(1)
    return (low > 0) & (low < rel_tol * scale)


def recheck_float64(bound_fn, graph, inp, y, lb, logits, rel_tol: float = RECHECK_RTOL):
    """Replace the rows of ``lb`` whose certificate is borderline in float32 by float64 bounds.

    ``bound_fn(graph, inp, y)`` computes margin lower bounds (N, K) as the caller did in float32."""
    if lb.dtype == torch.float64:
        return lb
    rows = borderline(lb, y, logits, rel_tol).nonzero().flatten()
    if rows.numel() == 0:
        return lb
    g64 = copy.deepcopy(graph).double()
    sub = inp[rows]
    inp64 = type(sub)(sub.lo.double(), sub.hi.double(), sub.x.double())
    lb = lb.clone()
    lb[rows] = bound_fn(g64, inp64, y[rows]).to(lb.dtype)
    return lb
