"""Fast IBP training (Shi et al. 2021, "Fast certified robust training with short warmup"): an initialisation
that keeps interval bounds from exploding with depth, and warm-up regularizers that keep the pre-activation
boxes tight and the ReLUs balanced while ε ramps up. Options for every IBP-based method (``--ibp-init``,
``--warmup-reg``); they read only IBP bounds, so CP (Fast-Lin bounds) refuses them.

IBP initialisation: every Linear/Conv2d weight except the output layer's is drawn from N(0, σ²) with
σ = √(2π)/fan_in, so that E Σ_j |w_ij| = 2 and an input box's radius keeps its size layer after layer (the
expected |w| of a normal is σ·√(2/π)); a layer reading the output of a residual Add (through ReLU and
reshapes) gets half that, as two branches add up there. Biases keep their initialisation.

Warm-up regularizers, on the IBP bounds (l, u) of every ReLU's input, centre c and radius r = (u − l)/2,
with tolerance τ (default 0.5) and weight λ·(1 − ε_t/ε_max) (they fade out at the end of the ramp):
  L_tightness = mean over layers of relu(τ − r̄₀/r̄)/τ      (r̄₀: the input box's mean radius; r̄ the layer's)
  L_relu      = mean over layers of [relu(τ − ρ_mean) + relu(τ − ρ_var)]/τ, where ρ = min(q, 1/q) of
                q_mean = mean(c·[l > 0]) / −mean(c·[u < 0]) and q_var = Σ(c − c̄)²[l > 0] / Σ(c − c̄)²[u < 0]
(layers where a ratio is undefined are skipped), the balance between stably active and inactive neurons.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from toolkit.bounds.ops import rule_for
from toolkit.ir import INPUT


def _weighted(graph):
    """Keys of the nodes with a dense or convolutional weight, in order."""
    return [k for k, node, _ in graph if getattr(node, "weight", None) is not None and node.weight.dim() >= 2]


def _reads_residual_sum(graph, key) -> bool:
    """The node's input comes from an Add, possibly through a ReLU and cell-moving reshapes."""
    k = graph.edges[key][0]
    while k != INPUT:
        rule = rule_for(graph.nodes[k])
        if rule.forward_form == "add":
            return True
        if not (rule.relu or rule.cell_moving):
            return False
        k = graph.edges[k][0]
    return False


def ibp_init(graph, seed: int = 0) -> None:
    """Re-draw the weights in place as in the module docstring (seeded; the global RNG is untouched)."""
    gen = torch.Generator().manual_seed(int(seed))
    keys = _weighted(graph)
    with torch.no_grad():
        for key in keys[:-1]:  # the output layer keeps its initialisation
            w = graph.nodes[key].weight
            fan_in = w[0].numel()
            std = math.sqrt(2 * math.pi) / fan_in
            if _reads_residual_sum(graph, key):
                std /= 2
            w.copy_(torch.randn(w.shape, generator=gen, dtype=w.dtype) * std)


def warmup_regularizer(graph, ibp: dict, tol: float = 0.5) -> torch.Tensor:
    """L_tightness + L_relu (module docstring) from the IBP bounds ``ibp`` of every node."""
    lo, hi = ibp[INPUT]
    r0 = ((hi - lo) / 2).mean()
    tight, balance, n_t, n_b = 0.0, 0.0, 0, 0
    for key, node, ins in graph:
        if not rule_for(node).relu:
            continue
        l, u = ibp[ins[0]]
        c, r = (u + l) / 2, (u - l) / 2
        tight = tight + F.relu(tol - r0 / r.mean().clamp_min(1e-12)) / tol
        n_t += 1
        act, inact = (l > 0).to(c.dtype), (u < 0).to(c.dtype)
        dev = (c - c.mean()) ** 2
        q_mean = (c * act).mean() / -(c * inact).mean()
        q_var = (dev * act).sum() / (dev * inact).sum()
        rho = [torch.minimum(q, 1 / q.clamp_min(1e-12)) for q in (q_mean, q_var)]
        term = (F.relu(tol - rho[0]) + F.relu(tol - rho[1])) / tol
        if torch.isfinite(term):
            balance, n_b = balance + term, n_b + 1
    zero = r0 * 0
    return (tight / max(1, n_t) if n_t else zero) + (balance / n_b if n_b else zero)
