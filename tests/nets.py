"""Small hand-made networks for tests (the spec's worked examples and random nets)."""
import torch

from toolkit.ir import Add, Conv2d, Flatten, Graph, InputSpec, Linear, Normalize, ReLU


def mlp(*layers, dtype=torch.float64):
    """layers: (W, b) pairs; ReLU between them. Lists are converted to tensors."""
    nodes = []
    for i, (W, b) in enumerate(layers):
        W = torch.as_tensor(W, dtype=dtype)
        b = torch.zeros(W.shape[0], dtype=dtype) if b is None else torch.as_tensor(b, dtype=dtype)
        nodes.append(Linear(W, b))
        if i < len(layers) - 1:
            nodes.append(ReLU())
    return Graph.sequential(nodes, (torch.as_tensor(layers[0][0]).shape[1],), layout="flat")


def random_mlp(widths, seed=0, dtype=torch.float64, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    layers = []
    for a, b in zip(widths[:-1], widths[1:]):
        W = torch.randn(b, a, generator=g, dtype=dtype) * scale / a ** 0.5
        layers.append((W, torch.randn(b, generator=g, dtype=dtype) * 0.1))
    return mlp(*layers, dtype=dtype)


def random_conv(seed=0, dtype=torch.float64, residual=False, normalize=False, channels=1, size=8, k=10):
    """A small conv net; optionally with an input Normalize and a residual Add block."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)
    nodes, prev = [], "input"

    def add(key, node, *inputs):
        nodes.append((key, node, inputs or (prev,)))
        return key

    if normalize:
        prev = add("norm", Normalize(torch.full((channels, 1, 1), 2.0, dtype=dtype),
                                     torch.full((channels, 1, 1), -0.5, dtype=dtype)))
    prev = add("conv1", Conv2d(r(4, channels, 3, 3) * 0.4, r(4) * 0.1, stride=2, padding=1))
    prev = add("relu1", ReLU())
    if residual:
        a = add("conv2", Conv2d(r(4, 4, 3, 3) * 0.25, r(4) * 0.1, stride=1, padding=1))
        a = add("relu2", ReLU(), a)
        a = add("conv3", Conv2d(r(4, 4, 3, 3) * 0.25, r(4) * 0.1, stride=1, padding=1), a)
        prev = add("add", Add(), a, "relu1")
        prev = add("relu3", ReLU())
    prev = add("flat", Flatten())
    h = size // 2
    prev = add("fc1", Linear(r(16, 4 * h * h) / (4 * h * h) ** 0.5, r(16) * 0.1))
    prev = add("relu_fc", ReLU())
    prev = add("fc2", Linear(r(k, 16) / 4, r(k) * 0.1))
    return Graph(nodes, prev, InputSpec((channels, size, size)))


# The spec's worked examples (paper-spec §11), as (graph, x, eps).
EXAMPLES = {
    "A": (lambda: mlp(([[1, 1], [1, -1]], None), ([[1, -1]], None)), [0.5, 0.5], 1.0),
    "B": (lambda: mlp(([[1]], None), ([[-1]], None)), [0.0], 1.0),
    "C": (lambda: mlp(([[1]], None), ([[1]], None)), [0.0], 1.0),
    "D": (lambda: mlp(([[1]], None), ([[1]], None)), [0.5], 1.5),
    "E": (lambda: mlp(([[1, 1], [-1, -1]], None), ([[-2, -2], [1, -2]], [0.5, 1]), ([[1, -2]], None)),
          [-0.5, -0.5], 1.0),
    "G": (lambda: mlp(([[1], [1]], None), ([[-1, 0]], None)), [0.0], 1.0),
    "H": (lambda: mlp(([[1], [1]], [1, 0.5]), ([[1, -1]], None)), [0.5], 0.5),
}
