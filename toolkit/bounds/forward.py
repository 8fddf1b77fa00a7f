"""Forward-mode Fast-Lin bounds with Cauchy random projections (Wong et al. 2018; paper-spec §2.4, §8).

Each node's value is an affine form  c + Σ_m G_m e_m  of independent generators e_m ∈ [−1, 1]: the input
box (G = diag(rad)) and, per unstable ReLU, the intercept δ ∈ [0, b̄] = b̄/2 + (b̄/2)·e (§1.5, "adversaries").
Its bounds are c ± ‖G‖₁ (row-wise), i.e. exactly the Fast-Lin forward form of §2.4. Instead of G we carry
P = G·R with R i.i.d. standard Cauchy (k columns): every entry of P is Cauchy(0, ‖G_row‖₁) because the
Cauchy law is 1-stable, so ‖G_row‖₁ ≈ median_k |P| (§8). New generators add their own fresh Cauchy
projection into the same k columns (a sum of independent Cauchy variables is Cauchy with the summed scale).

The estimate is random: these bounds are NOT sound (relative std ≈ 0.22 at k = 50). They are for training
only; the final spec pass stays exact (§8), and ``BoundResult.probabilistic`` is set. Simplification vs
Wong's code: the projection is used for every layer, also where the exact form would be smaller (n₀ ≤ k).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from toolkit.errors import UnsupportedOpError
from toolkit.ir import INPUT
from toolkit.ir import nodes as N

from .relu import chord


def cauchy(shape, like: torch.Tensor, generator=None) -> torch.Tensor:
    u = torch.rand(shape, dtype=like.dtype, device=like.device, generator=generator)
    return torch.tan(math.pi * (u - 0.5))


def _linear_part(node, P: torch.Tensor) -> torch.Tensor:
    """Apply the node's linear part (no bias / shift / pad value) to the k projected columns (N, k, ...)."""
    n, k = P.shape[:2]
    flat = P.reshape(n * k, *P.shape[2:])
    if isinstance(node, N.Linear):
        out = F.linear(flat, node.weight)
    elif isinstance(node, N.Conv2d):
        out = F.conv2d(flat, node.weight, None, node.stride, node.padding, node.dilation, node.groups)
    elif isinstance(node, (N.Normalize, N.BatchNorm)):
        scale, _ = node.scale_shift()
        if flat.dim() == 2 and scale.dim() == 3:
            scale = scale.flatten()
        out = flat * scale
    elif isinstance(node, N.Pad):
        out = F.pad(flat, node.pads, mode="constant", value=0.0)
    elif isinstance(node, (N.Reshape, N.Transpose, N.AvgPool2d)):
        out = node(flat)
    else:
        raise UnsupportedOpError(node.op, node.onnx_name, method="cp-proj")
    return out.reshape(n, k, *out.shape[1:])


def _estimate(c, P):
    """(l, u) = c ∓ median_k |P| (the ℓ1 estimate of §8)."""
    radius = P.abs().median(dim=1).values
    return c - radius, c + radius


def projected_bounds(graph, inp, shapes, needed, k: int = 50, generator=None) -> dict:
    """Estimated bounds for the ``needed`` node keys (the inputs of ReLUs)."""
    lo, hi = inp.lo, inp.hi
    n = lo.shape[0]
    forms = {INPUT: ((hi + lo) / 2, ((hi - lo) / 2).unsqueeze(1) * cauchy((n, k, *lo.shape[1:]), lo, generator))}
    bounds = {INPUT: (lo, hi)}
    needed = set(needed)
    for key in graph.order:
        node = graph.nodes[key]
        ins = [forms[i] for i in graph.edges[key]]
        if isinstance(node, N.Add):
            forms[key] = (ins[0][0] + ins[1][0], ins[0][1] + ins[1][1])
        elif isinstance(node, N.ReLU):
            c, P = ins[0]
            l, u = bounds[graph.edges[key][0]]
            unstable, slope, intercept = chord(l, u)
            half = intercept / 2  # δ = b̄/2 + (b̄/2)·e on unstable neurons, 0 elsewhere
            fresh = cauchy(P.shape, P, generator) * half.unsqueeze(1)
            forms[key] = (slope * c + half, slope.unsqueeze(1) * P + fresh)
        elif node.affine:
            c, P = ins[0]
            forms[key] = (node(c), _linear_part(node, P))
        else:
            raise UnsupportedOpError(node.op, node.onnx_name, method="cp-proj")
        if key in needed:
            bounds[key] = _estimate(*forms[key])
    return bounds
