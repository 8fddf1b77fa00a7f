"""What a bound computation returns: the bounds and the relaxation's optimum (paper-spec §2.3, §4, §6).

The regularizers d and r read ``delta0`` (δ*₀ per spec), per-ReLU ``layers`` (l, u, unstable mask, which
line each unstable neuron's optimum sits on) and can rebuild the relaxed pre-activations with
``relaxed_forward``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from toolkit.ir import INPUT

from .ops import rule_for


@dataclass
class LayerOptimum:
    """One ReLU node's part of the optimum for the final specs.

    pre: key of the node feeding the ReLU; l, u: its bounds (N, *shape); unstable: (N, *shape);
    upper_line: (N, S, *shape) True where the unstable neuron's optimum is on the upper line (ν < 0);
    lower_slope (N, 1|S, *shape), upper_slope, upper_intercept (N, 1, *shape): the chosen lines; nu: the
    backward coefficient on the ReLU output (N, S, *shape).
    """

    pre: str
    l: torch.Tensor
    u: torch.Tensor
    unstable: torch.Tensor
    upper_line: torch.Tensor
    lower_slope: torch.Tensor
    upper_slope: torch.Tensor
    upper_intercept: torch.Tensor
    nu: torch.Tensor

    def slope(self):
        """Slope actually used per (sample, spec, neuron)."""
        return torch.where(self.upper_line, self.upper_slope, self.lower_slope)

    def intercept(self):
        """δ*_ij: b̄ on the upper line, 0 on the lower line (§4.2)."""
        return torch.where(self.upper_line, self.upper_intercept, torch.zeros_like(self.upper_intercept))


@dataclass
class BoundResult:
    method: str
    lower: torch.Tensor                 # (N, S) lower bounds of C·f over the input set
    C: torch.Tensor
    upper: torch.Tensor | None = None   # (N, S) upper bounds when asked for
    g: torch.Tensor | None = None       # (N, S, *in_shape) input coefficients of the final pass
    x: torch.Tensor | None = None       # (N, *in_shape) the centre
    box: tuple | None = None            # (lo, hi) of the input set: the optimum is computed on first use
    layers: dict = field(default_factory=dict)   # ReLU key -> LayerOptimum
    bounds: dict = field(default_factory=dict)   # node key -> (l, u) used for relaxations
    probabilistic: bool = False         # True for cp-proj: never a certificate
    alpha_scope: str | None = None      # alpha-crown: the slopes optimised ("all", "partial", "final")

    _z0: torch.Tensor | None = field(default=None, repr=False)

    @property
    def z0(self) -> torch.Tensor:
        """(N, S, *in_shape) the relaxation's optimal input x + δ*₀ (computed lazily: certification never
        needs it, and it is as large as g)."""
        if self._z0 is None:
            self._z0 = optimal_input(self.g, self.box[0], self.box[1], self.x)
        return self._z0

    @property
    def delta0(self):
        return self.z0 - self.x.unsqueeze(1)

    def certified(self) -> torch.Tensor:
        """(N,) True iff every spec's lower bound is finite and > 0 (0 is not verified, §7.1)."""
        if self.probabilistic:
            raise ValueError("cp-proj bounds are probabilistic and never certify")
        return (torch.isfinite(self.lower) & (self.lower > 0)).all(1)


def optimal_input(g, lo, hi, x):
    """z*₁: lo where g > 0, hi where g < 0, x where g = 0 (§4.1, box version).

    Written as lo·[g > 0] + hi·[g < 0] + x·[g = 0] with exact 0/1 weights from sign(g): bit-identical to the
    nested torch.where, which is ~20× slower on CPU (bool masks, broadcast operands) and sat on every
    regularized training step."""
    lo, hi, x = lo.unsqueeze(1), hi.unsqueeze(1), x.unsqueeze(1)
    sg = g.detach().sign()
    sq = sg * sg
    on_lo, on_hi = (sq + sg) / 2, (sq - sg) / 2
    return (lo * on_lo).addcmul_(hi, on_hi).addcmul_(x, 1 - sq)


def relaxed_forward(graph, result: BoundResult) -> dict:
    """Forward pass of the relaxation's linear network at z*₁ (§2.3): each ReLU replaced by its chosen line.

    Returns every node's value with shape (N, S, *shape); ``C·x*_out`` equals ``result.lower`` (the
    reconstruction identity, §11.1.1) for Fast-Lin, CROWN and CROWN-IBP.
    """
    n, s = result.lower.shape
    z = result.z0.reshape(n * s, *result.z0.shape[2:])
    values = {INPUT: z}
    for key in graph.order:
        node = graph.nodes[key]
        args = [values[k] for k in graph.edges[key]]
        rule = rule_for(node)
        if rule.relu:
            lay = result.layers[key]
            xin = args[0].reshape(n, s, *args[0].shape[1:])
            values[key] = (lay.slope() * xin + lay.intercept()).reshape(args[0].shape)
        elif rule.needs_bounds:
            raise ValueError(f"relaxed_forward supports ReLU networks only (node {node.onnx_name})")
        else:
            values[key] = node(*args)
    return {k: v.reshape(n, s, *v.shape[1:]) for k, v in values.items()}
