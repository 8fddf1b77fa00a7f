"""The layer-graph IR: a DAG of typed nodes that is itself an ``nn.Module``.

A graph has one input (key ``"input"``) and one output. ``edges[key]`` names the keys a node reads,
in argument order; ``order`` is a topological order of the node keys. Training, export and the bound
engine all walk this one structure (architecture.md, "IR").
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch import nn

from .nodes import Node

INPUT = "input"


@dataclass
class InputSpec:
    """What the model expects, recorded at import time.

    shape: per-sample input shape as the model's first node sees it (batch axis excluded).
    layout: "NCHW", "NHWC" or "flat".
    value_range: (lo, hi) of valid raw inputs in the model's own input space (pixels [0, 1] unless the
        normalisation lives outside the graph).
    normalization: "none", "in-graph" or "prepended" (user's --mean/--std turned into a Normalize node).
    mean/std: per-channel values when known.
    """

    shape: tuple
    layout: str = "NCHW"
    value_range: tuple = (0.0, 1.0)
    normalization: str = "none"
    mean: tuple | None = None
    std: tuple | None = None
    extra: dict = field(default_factory=dict)


def _key(name: str, taken) -> str:
    key = re.sub(r"[^0-9A-Za-z_]", "_", name) or "node"
    if key[0].isdigit():
        key = "n" + key
    base, i = key, 1
    while key in taken or key == INPUT:
        key, i = f"{base}_{i}", i + 1
    return key


class Graph(nn.Module):
    def __init__(self, nodes, output: str, input_spec: InputSpec, meta: dict | None = None):
        """``nodes``: list of (key, Node, input_keys) in topological order."""
        super().__init__()
        self.nodes = nn.ModuleDict()
        self.edges: dict[str, tuple[str, ...]] = {}
        seen = {INPUT}
        for key, node, inputs in nodes:
            if key in seen:
                raise ValueError(f"duplicate node key {key!r}")
            missing = [k for k in inputs if k not in seen]
            if missing:
                raise ValueError(f"node {key!r} reads {missing} before they are defined")
            self.nodes[key] = node
            self.edges[key] = tuple(inputs)
            seen.add(key)
        if output not in self.nodes:
            raise ValueError(f"output {output!r} is not a node")
        self.order = list(self.nodes.keys())
        self.output = output
        self.input_spec = input_spec
        self.meta = dict(meta or {})

    # -- construction helpers -------------------------------------------------------------------------
    @classmethod
    def sequential(cls, layers, input_shape, **spec_kwargs) -> "Graph":
        """A chain of nodes (the model zoo and tests use this)."""
        nodes, prev, taken = [], INPUT, set()
        for node in layers:
            key = _key(node.onnx_name if node.onnx_name != node.op else f"{node.op}_{len(nodes)}", taken)
            taken.add(key)
            nodes.append((key, node, (prev,)))
            prev = key
        return cls(nodes, prev, InputSpec(tuple(input_shape), **spec_kwargs))

    # -- evaluation ------------------------------------------------------------------------------------
    def forward_all(self, x: torch.Tensor) -> dict:
        """Every node's output (and ``"input"``) for a batch ``x``."""
        values = {INPUT: x}
        for key in self.order:
            values[key] = self.nodes[key](*(values[k] for k in self.edges[key]))
        return values

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = {INPUT: x}
        last_use = self._last_use()
        for i, key in enumerate(self.order):
            values[key] = self.nodes[key](*(values[k] for k in self.edges[key]))
            for k in self.edges[key]:
                if last_use[k] == i and k != self.output:
                    values.pop(k, None)  # free activations no later node needs
        return values[self.output]

    def _last_use(self):
        if not hasattr(self, "_last_use_cache"):
            last = {INPUT: -1}
            for i, key in enumerate(self.order):
                for k in self.edges[key]:
                    last[k] = i
            self._last_use_cache = last
        return self._last_use_cache

    # -- structure queries -----------------------------------------------------------------------------
    def consumers(self) -> dict:
        """key -> list of node keys that read it (``"input"`` included)."""
        out = {INPUT: []}
        out.update({k: [] for k in self.order})
        for key in self.order:
            for k in self.edges[key]:
                out[k].append(key)
        return out

    def shapes(self, dtype=None) -> dict:
        """Per-sample output shape of every node (batch axis excluded)."""
        p = next(iter(self.parameters()), None)
        device = p.device if p is not None else "cpu"
        dtype = dtype or (p.dtype if p is not None else torch.float32)
        with torch.no_grad():
            vals = self.forward_all(torch.zeros(1, *self.input_spec.shape, dtype=dtype, device=device))
        return {k: tuple(v.shape[1:]) for k, v in vals.items()}

    def output_size(self) -> int:
        return int(torch.Size(self.shapes()[self.output]).numel())

    def node_name(self, key: str) -> str:
        return self.nodes[key].onnx_name

    def __iter__(self):
        for key in self.order:
            yield key, self.nodes[key], self.edges[key]

    def summary_rows(self):
        """Rows (key, op, ONNX name, inputs, output shape, params, detail) for ``tightcert info``."""
        shapes = self.shapes()
        return [(k, n.op, n.onnx_name, ",".join(e), "×".join(map(str, shapes[k])), n.n_params(), n.describe())
                for k, n, e in self]
