"""The tightness regularizers of Zhu et al. (paper-spec §5, §6), computed from a ``BoundResult``.

Both need the REAL network evaluated at the relaxation's optimal input z*₁ = x + δ*₀ of every spec
(one extra forward pass on N·S inputs, §7.2 step 5). δ*₀ is piecewise constant in the weights, so it is
detached (§5 "Gradients"); the unstable mask, the line choice and the min-branch are constants too (§6.2).
"""
from __future__ import annotations

import torch

#: r normalisations (spec U1): "none" (default, the stored text shows none), "width" (divide each term by
#: u − l), "layer-mean" (mean over each layer's unstable neurons instead of the sum).
R_NORMS = ("none", "width", "layer-mean")


def real_activations(graph, result) -> dict:
    """Every node's value of the real network at z*₁ for each spec: key -> (N, S, *shape)."""
    n, s = result.lower.shape
    z0 = result.z0.detach()
    values = graph.forward_all(z0.reshape(n * s, *z0.shape[2:]))
    return {k: v.reshape(n, s, *v.shape[1:]) for k, v in values.items()}


def reg_d(graph, result, values=None) -> torch.Tensor:
    """d_t = c_tᵀ f(x + δ*₀,t) − p*_C,t (Eq. 2), shape (N, S). ≥ 0 with exact bounds (§11.1.2)."""
    values = real_activations(graph, result) if values is None else values
    out = values[graph.output]
    n, s = result.lower.shape
    p_real = (result.C * out.reshape(n, s, -1)).sum(-1)
    return p_real - result.lower


def reg_r(graph, result, values=None, norm: str = "none", squared: bool = False) -> torch.Tensor:
    """r_t (Eq. 3), shape (N, S): over unstable neurons, |x_ij| where the optimum is on the lower line and
    min(|x_ij − l_ij|, |x_ij − u_ij|) where it is on the upper line, x = real pre-activations at z*₁.

    Zero exactly when Proposition 1's tightness condition holds (§6.1). The Fast-Lin sets are used for
    every method (§6.2), so a CROWN lower line still asks for x = 0.
    """
    if norm not in R_NORMS:
        raise ValueError(f"unknown r normalisation {norm!r}; choose from {R_NORMS}")
    values = real_activations(graph, result) if values is None else values
    n, s = result.lower.shape
    total = torch.zeros(n, s, dtype=result.lower.dtype, device=result.lower.device)
    for lay in result.layers.values():
        x = values[lay.pre]
        l, u = lay.l.unsqueeze(1), lay.u.unsqueeze(1)
        unstable = lay.unstable.unsqueeze(1)
        # 0/1 weights instead of nested torch.where (same values and gradients; where is ~20× slower on CPU).
        on_upper = (lay.upper_line & unstable).to(x.dtype)
        on_lower = unstable.to(x.dtype) - on_upper
        dist_upper = torch.minimum((x - l).abs(), (x - u).abs())
        term = dist_upper * on_upper + x.abs() * on_lower
        if squared:
            term = term ** 2
        if norm == "width":
            term = torch.where(unstable, term / (u - l).clamp_min(1e-12), term)
        term = term.reshape(n, s, -1).sum(-1)
        if norm == "layer-mean":
            term = term / unstable.reshape(n, 1, -1).sum(-1).clamp_min(1)
        total = total + term
    return total
