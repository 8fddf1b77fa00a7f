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


# --- builders for the soundness suites (test_bounds_soundness / _lp / _convex_adversarial) -----------------

def _rand(seed, dtype):
    g = torch.Generator().manual_seed(seed)
    return lambda *s: torch.randn(*s, generator=g, dtype=dtype)


def random_pool_net(seed=0, dtype=torch.float64):
    """ReLU net over every affine IR op: Normalize, Conv2d, BatchNorm (2-D and 1-D), Pad with a non-zero
    value, AvgPool (overlapping, padded, count_include_pad=False), Transpose, Reshape. Input (2, 6, 5)."""
    from toolkit.ir import AvgPool2d, BatchNorm, Pad, Reshape, Transpose

    r = _rand(seed, dtype)
    pos = lambda *s: r(*s).abs() + 0.5
    nodes = [
        Normalize(pos(2, 1, 1), r(2, 1, 1) * 0.2),
        Conv2d(r(3, 2, 3, 3) * 0.5, r(3) * 0.1, stride=1, padding=1),            # (3, 6, 5)
        BatchNorm(r(3) * 0.1, pos(3), r(3), r(3) * 0.1),
        ReLU(),
        Pad((1, 0, 0, 1), value=0.5),                                             # (3, 7, 6)
        AvgPool2d(3, stride=2, padding=1, count_include_pad=False),               # (3, 4, 3)
        Transpose((1, 2, 0)),                                                     # (4, 3, 3)
        Conv2d(r(4, 4, 2, 2) * 0.5, r(4) * 0.1),                                  # (4, 2, 2)
        ReLU(),
        Reshape((16,)),
        Linear(r(8, 16) / 4, r(8) * 0.1),
        BatchNorm(r(8) * 0.1, pos(8), r(8), r(8) * 0.1),
        ReLU(),
        Linear(r(5, 8) / 8 ** 0.5, r(5) * 0.1),
    ]
    return Graph.sequential(nodes, (2, 6, 5))


def random_smooth_net(seed=0, dtype=torch.float64):
    """Net with the ops whose relaxations are not ReLU lines: MaxPool (overlapping, padded), Sigmoid, Tanh.
    Input (1, 6, 6)."""
    from toolkit.ir import MaxPool2d, Sigmoid, Tanh

    r = _rand(seed, dtype)
    nodes = [
        Conv2d(r(3, 1, 3, 3) * 0.6, r(3) * 0.1, padding=1),                      # (3, 6, 6)
        ReLU(),
        MaxPool2d(3, stride=2, padding=1),                                        # (3, 3, 3)
        Conv2d(r(4, 3, 2, 2) * 0.5, r(4) * 0.1),                                  # (4, 2, 2)
        Sigmoid(),
        Flatten(),
        Linear(r(8, 16) / 2, r(8) * 0.1),
        Tanh(),
        Linear(r(6, 8) / 8 ** 0.5 * 2, r(6) * 0.1),
        ReLU(),
        Linear(r(4, 6) / 6 ** 0.5, r(4) * 0.1),
    ]
    return Graph.sequential(nodes, (1, 6, 6))


def wong_conv(seed=0, dtype=torch.float64, residual=False, channels=1, size=8, k=5, normalize=False):
    """Wong & Kolter style conv net (kernel 4, stride 2, padding 1: the transposed conv recovers the input
    size exactly, which convex_adversarial assumes). With ``residual`` a block relu1 + conv3(relu(conv2(.)))
    as in their ResNets (``Dense(nn.Sequential(), None, conv3)``); with ``normalize`` a per-channel
    mean/std first. Keys are fixed for the converters."""
    r = _rand(seed, dtype)
    nodes, prev = [], "input"

    def add(key, node, *inputs):
        nodes.append((key, node, inputs or (prev,)))
        return key

    if normalize:
        mean = torch.linspace(0.4, 0.5, channels, dtype=dtype).reshape(-1, 1, 1)
        std = torch.linspace(0.2, 0.3, channels, dtype=dtype).reshape(-1, 1, 1)
        prev = add("norm", Normalize(1 / std, -mean / std))
    prev = add("conv1", Conv2d(r(4, channels, 4, 4) * 0.3, r(4) * 0.1, stride=2, padding=1))
    prev = add("relu1", ReLU())
    if residual:
        a = add("conv2", Conv2d(r(4, 4, 3, 3) * 0.25, r(4) * 0.1, padding=1))
        a = add("relu2", ReLU(), a)
        a = add("conv3", Conv2d(r(4, 4, 3, 3) * 0.25, r(4) * 0.1, padding=1), a)
        prev = add("add", Add(), "relu1", a)
        prev = add("relu3", ReLU())
    prev = add("conv4", Conv2d(r(6, 4, 4, 4) * 0.3, r(6) * 0.1, stride=2, padding=1))
    prev = add("relu4", ReLU())
    prev = add("flat", Flatten())
    h = size // 4
    prev = add("fc1", Linear(r(12, 6 * h * h) / (6 * h * h) ** 0.5, r(12) * 0.1))
    prev = add("relu_fc", ReLU())
    prev = add("fc2", Linear(r(k, 12) / 12 ** 0.5, r(k) * 0.1))
    return Graph(nodes, prev, InputSpec((channels, size, size)))


def window_conv(seed=0, dtype=torch.float64, groups=1, hw=(20, 14)):
    """Conv net whose second and third conv layers have receptive fields well inside their input maps (the
    window / patches path of the intermediate bounds): Normalize, conv k4 s2 p1, BatchNorm, ReLU, conv k3 s1 p1
    (``groups``), ReLU, conv k3 s2 p0, ReLU, Linear. Input (2, *hw): non-square maps throughout."""
    from toolkit.ir import BatchNorm

    r = _rand(seed, dtype)
    pos = lambda *s: r(*s).abs() + 0.5  # noqa: E731
    h3, w3 = ((d // 2 - 3) // 2 + 1 for d in hw)
    nodes = [Normalize(torch.tensor([2.0, 3.0], dtype=dtype).reshape(2, 1, 1),
                       torch.tensor([-1.0, -1.5], dtype=dtype).reshape(2, 1, 1)),
             Conv2d(r(4, 2, 4, 4) * 0.3, r(4) * 0.1, stride=2, padding=1),
             BatchNorm(r(4) * 0.1, pos(4), r(4), r(4) * 0.1), ReLU(),
             Conv2d(r(6, 4 // groups, 3, 3) * 0.3, r(6) * 0.1, padding=1, groups=groups), ReLU(),
             Conv2d(r(5, 6, 3, 3) * 0.3, r(5) * 0.1, stride=2), ReLU(), Flatten(),
             Linear(r(4, 5 * h3 * w3) / (5 * h3 * w3) ** 0.5, r(4) * 0.1)]
    return Graph.sequential(nodes, (2, *hw))
