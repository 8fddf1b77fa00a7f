"""Our IR graphs as the nn.Sequential nets convex_adversarial (Wong & Kolter's dual, a test dependency and
the speed benchmark's reference) understands: chains of Linear / Conv2d / ReLU / Flatten, with a per-channel
Normalize (a prepended mean/std) written as a 1×1 convolution."""
from __future__ import annotations

import torch
from torch import nn

from toolkit.ir import nodes as N


def layer(node, dtype=None) -> nn.Module:
    """The nn layer convex_adversarial recognises for one affine / ReLU / Flatten / Normalize node."""
    if isinstance(node, N.ReLU):
        return nn.ReLU()
    if isinstance(node, (N.Flatten, N.Reshape)):
        return nn.Flatten()  # convex_adversarial recognises any class whose name contains "Flatten"
    if isinstance(node, N.Linear):
        m, weight, bias = nn.Linear(node.weight.shape[1], node.weight.shape[0]), node.weight, node.bias
    elif isinstance(node, N.Conv2d):
        o, i, kh, kw = node.weight.shape
        if node.groups != 1 or tuple(node.dilation) != (1, 1):
            raise ValueError("convex_adversarial has no grouped or dilated convolution")
        m, weight, bias = nn.Conv2d(i, o, (kh, kw), node.stride, node.padding), node.weight, node.bias
    elif isinstance(node, N.Normalize) and node.scale.dim() == 3 and tuple(node.scale.shape[1:]) == (1, 1):
        c = node.scale.shape[0]  # x·scale + shift per channel = a 1×1 convolution with a diagonal weight
        m, weight, bias = nn.Conv2d(c, c, 1), torch.diag(node.scale.flatten()).reshape(c, c, 1, 1), node.shift.flatten()
    else:
        raise ValueError(f"no convex_adversarial layer for {node.op}")
    m = m.to(dtype or weight.dtype)
    with torch.no_grad():
        m.weight.copy_(weight)
        m.bias.copy_(bias)
    return m


def to_sequential(graph, dtype=None) -> nn.Sequential:
    """A chain graph (no residual Add) as an nn.Sequential."""
    return nn.Sequential(*[layer(node, dtype) for _, node, _ in graph])
