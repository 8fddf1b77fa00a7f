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
        total = total + _layer_r(values[lay.pre], lay, norm, squared)
    return total


def _layer_r(x, lay, norm: str, squared: bool) -> torch.Tensor:
    """One ReLU layer's r terms summed per (sample, spec), shape (N, S).

    Only unstable neurons contribute (§6.2), and on trained nets they are a small share (measured on the
    study's models, 50 training images: Small after CROWN-IBP at ε = 0.3, 3–9 % per layer; the 2×100 MLP after
    CP at ε = 0.1, 4–13 %). So their real pre-activations are gathered first ((K, S) for K unstable (sample,
    neuron) pairs) and the terms computed on those: each element-wise pass and its gradient costs K·S
    instead of N·S·M. On the untrained Small net at ε = 0.05 that took r's own passes from 87 to 36 ms a step.
    """
    n, s = x.shape[:2]
    ni, mi = lay.unstable.reshape(n, -1).nonzero(as_tuple=True)
    xk = x.reshape(n, s, -1)[ni, :, mi]                          # (K, S): advanced indices go first
    l, u = lay.l.reshape(n, -1)[ni, mi].unsqueeze(1), lay.u.reshape(n, -1)[ni, mi].unsqueeze(1)
    # Each term is |x − t| for the nearest point t of S(δ*) (§6.1): 0 on the lower line, l or u on the upper.
    # Which point is nearest is a constant (§6.2: the min-branch is not differentiated; a tie x = (l + u)/2
    # takes l), so t = l·[near l] + u·[near u] with 0/1 weights (torch.where is ~20× slower on CPU).
    with torch.no_grad():
        on_upper = lay.upper_line.reshape(n, s, -1)[ni, :, mi]
        near_l = xk <= (l + u) / 2
        w_l, w_u = (on_upper & near_l).to(x.dtype), (on_upper & ~near_l).to(x.dtype)
    term = (xk - (l * w_l + u * w_u)).abs()
    if squared:
        term = term ** 2
    if norm == "width":
        term = term / (u - l).clamp_min(1e-12)
    out = torch.zeros(n, s, dtype=x.dtype, device=x.device).index_add(0, ni, term)
    if norm == "layer-mean":
        out = out / torch.bincount(ni, minlength=n).clamp_min(1).to(x.dtype).unsqueeze(1)
    return out
