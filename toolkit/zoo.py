"""Model zoo: the architectures of paper-spec §9.2 as IR graphs, ``build(name, dataset, seed) -> Graph``.

Notation below: Conv(out, k, s, p); FC(out). ReLU follows every layer except the last; a Flatten
precedes the first FC. Names:

* ``mlp_2x100``: FC(100), FC(100), FC(10) (Salman et al. 2019). ``mlp_256x2``: FC(256), FC(256), FC(10)
  (the shape of VNN-COMP's mnist-net_256x2).
* ``small`` (Wong et al. 2018): Conv(16,4,2,1), Conv(32,4,2,1), FC(100), FC(10).
* ``large`` (Wong et al. 2018): Conv(32,3,1,1), Conv(32,4,2,1), Conv(64,3,1,1), Conv(64,4,2,1), FC(512),
  FC(512), FC(10).
* ``xlarge`` (CROWN-IBP "DM-large", ``IBP_large``): Conv(64,3,1,1), Conv(64,3,1,1), Conv(128,3,2,1),
  Conv(128,3,1,1), Conv(128,3,1,1), FC(512), FC(10).
* CROWN-IBP ``model_defs.py`` families, width multiplier ``w``, hidden FC size ``l``:
  - ``cnn_2layer_w{w}_l{l}``: Conv(4w,4,2,1), Conv(8w,4,2,1), FC(l), FC(10).
  - ``cnn_3layer_fixed_k{k}_w{w}`` (l = 64w, the CROWN-IBP default) or ``cnn_3layer_fixed_k{k}_w{w}_l{l}``,
    k in {3, 5}: Conv(4w,k,1,1), Conv(8w,k,1,1), Conv(8w,4,4,0), FC(l), FC(10).
  - ``cnn_4layer_w{w}_l{l}``: Conv(4w,3,1,1), Conv(4w,4,2,1), Conv(8w,3,1,1), Conv(8w,4,2,1), FC(l), FC(l),
    FC(10).
  ``family("crown_ibp_10_small")`` / ``family("crown_ibp_8_large")`` list the paper's model sets; the
  "8 large" list holds ``cnn_4layer_w4_l512`` twice, as the released config does (its first copy is
  named "linear_256" but passes 512).

Weights get torch's default initialisation (``nn.Conv2d`` / ``nn.Linear``) drawn under ``seed``, without
touching the global RNG state. Inputs are [0, 1] pixels in NCHW; ``mean``/``std`` prepend a Normalize.

Stride-2 pitfall (§9.2): a 3x3, stride-2, pad-1 conv (``xlarge``'s third layer) maps 28 -> 14, but its
transposed conv maps 14 -> 27 unless ``output_padding = 1``; backward bound passes must pass the
forward input size. The 4x4, stride-2, pad-1 convs of ``small``/``large``/``cnn_2layer`` invert exactly.
"""
from __future__ import annotations

import re

import torch
from torch import nn

from toolkit.errors import BadInputError
from toolkit.ir import Conv2d, Flatten, Graph, Linear, Normalize, ReLU

#: dataset -> (channels, height = width)
DATASETS = {"mnist": (1, 28), "cifar10": (3, 32)}
_ALIASES = {"cifar": "cifar10", "cifar-10": "cifar10", "mnist": "mnist"}

STATIC = {
    "mlp_2x100": [("fc", 100), ("fc", 100), ("fc", 10)],
    "mlp_256x2": [("fc", 256), ("fc", 256), ("fc", 10)],
    "small": [("conv", 16, 4, 2, 1), ("conv", 32, 4, 2, 1), ("fc", 100), ("fc", 10)],
    "large": [("conv", 32, 3, 1, 1), ("conv", 32, 4, 2, 1), ("conv", 64, 3, 1, 1), ("conv", 64, 4, 2, 1),
              ("fc", 512), ("fc", 512), ("fc", 10)],
    "xlarge": [("conv", 64, 3, 1, 1), ("conv", 64, 3, 1, 1), ("conv", 128, 3, 2, 1), ("conv", 128, 3, 1, 1),
               ("conv", 128, 3, 1, 1), ("fc", 512), ("fc", 10)],
}

PATTERNS = {
    "cnn_2layer_w{w}_l{l}": re.compile(r"cnn_2layer_w(\d+)_l(\d+)"),
    "cnn_3layer_fixed_k{3|5}_w{w}[_l{l}]": re.compile(r"cnn_3layer_fixed_k([35])_w(\d+)(?:_l(\d+))?"),
    "cnn_4layer_w{w}_l{l}": re.compile(r"cnn_4layer_w(\d+)_l(\d+)"),
}

FAMILIES = {
    # paper-spec §9.2 "10 small", in the order listed there.
    "crown_ibp_10_small": ["cnn_2layer_w1_l128", "cnn_2layer_w2_l256", "cnn_4layer_w1_l256", "cnn_4layer_w2_l256",
                           "cnn_4layer_w1_l512", "cnn_4layer_w2_l512", "cnn_3layer_fixed_k3_w1",
                           "cnn_3layer_fixed_k3_w2", "cnn_3layer_fixed_k5_w1", "cnn_3layer_fixed_k5_w2"],
    # "8 large": 4layer (w=4, lin=512) appears twice in the released config.
    "crown_ibp_8_large": ["cnn_4layer_w4_l512", "cnn_4layer_w4_l512", "cnn_4layer_w8_l512", "cnn_4layer_w16_l512",
                          "cnn_3layer_fixed_k5_w16_l512", "cnn_3layer_fixed_k5_w8_l512",
                          "cnn_3layer_fixed_k5_w4_l512", "cnn_3layer_fixed_k3_w8_l512"],
}


def names() -> list[str]:
    """Every concrete name: the fixed architectures, then each family member once."""
    out = list(STATIC)
    for members in FAMILIES.values():
        for m in members:
            if m not in out:
                out.append(m)
    return out


def family(name: str) -> list[str]:
    if name not in FAMILIES:
        raise BadInputError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}")
    return list(FAMILIES[name])


def layers_of(name: str) -> list[tuple]:
    """The layer list of ``name`` (tuples as in STATIC), or BadInputError listing the names."""
    if name in STATIC:
        return STATIC[name]
    m = PATTERNS["cnn_2layer_w{w}_l{l}"].fullmatch(name)
    if m:
        w, lin = _positive(name, m.group(1), m.group(2))
        return [("conv", 4 * w, 4, 2, 1), ("conv", 8 * w, 4, 2, 1), ("fc", lin), ("fc", 10)]
    m = PATTERNS["cnn_3layer_fixed_k{3|5}_w{w}[_l{l}]"].fullmatch(name)
    if m:
        k = int(m.group(1))
        (w,) = _positive(name, m.group(2))
        (lin,) = _positive(name, m.group(3)) if m.group(3) else (64 * w,)
        return [("conv", 4 * w, k, 1, 1), ("conv", 8 * w, k, 1, 1), ("conv", 8 * w, 4, 4, 0), ("fc", lin),
                ("fc", 10)]
    m = PATTERNS["cnn_4layer_w{w}_l{l}"].fullmatch(name)
    if m:
        w, lin = _positive(name, m.group(1), m.group(2))
        return [("conv", 4 * w, 3, 1, 1), ("conv", 4 * w, 4, 2, 1), ("conv", 8 * w, 3, 1, 1),
                ("conv", 8 * w, 4, 2, 1), ("fc", lin), ("fc", lin), ("fc", 10)]
    raise BadInputError(f"unknown model {name!r}; known: {', '.join(STATIC)}, or a pattern "
                        f"{', '.join(PATTERNS)} (e.g. {', '.join(FAMILIES['crown_ibp_10_small'][:3])})")


def _positive(name, *groups):
    vals = tuple(int(g) for g in groups)
    if any(v < 1 for v in vals):
        raise BadInputError(f"model {name!r}: width and linear size must be >= 1")
    return vals


def _dataset_shape(dataset: str):
    key = _ALIASES.get(str(dataset).lower(), str(dataset).lower())
    if key not in DATASETS:
        raise BadInputError(f"unknown dataset {dataset!r} for the model zoo; known: {', '.join(DATASETS)}")
    return key, DATASETS[key]


def build(name: str, dataset: str = "mnist", seed: int = 0, mean=None, std=None) -> Graph:
    """An IR graph of architecture ``name`` for ``dataset`` ("mnist" or "cifar10"), seeded torch init."""
    spec_layers = layers_of(name)
    key, (c, hw) = _dataset_shape(dataset)
    nodes, shape = [], (c, hw, hw)
    if (mean is None) != (std is None):
        raise BadInputError("give both mean and std (or neither)")
    if mean is not None:
        nodes.append(Normalize.from_mean_std(mean, std, (-1, 1, 1), onnx_name="normalize"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        n_conv = n_fc = 0
        for i, layer in enumerate(spec_layers):
            if layer[0] == "conv":
                _, out, k, s, p = layer
                n_conv += 1
                m = nn.Conv2d(shape[0], out, k, stride=s, padding=p)
                nodes.append(Conv2d(m.weight, m.bias, s, p, onnx_name=f"conv{n_conv}"))
                h = (shape[1] + 2 * p - k) // s + 1
                if h < 1:
                    raise BadInputError(f"model {name!r} does not fit {key} inputs ({hw}x{hw})")
                shape = (out, h, h)
            else:
                if len(shape) > 1:
                    nodes.append(Flatten(onnx_name="flatten"))
                    shape = (shape[0] * shape[1] * shape[2],)
                n_fc += 1
                m = nn.Linear(shape[0], layer[1])
                nodes.append(Linear(m.weight, m.bias, onnx_name=f"fc{n_fc}"))
                shape = (layer[1],)
            if i < len(spec_layers) - 1:
                nodes.append(ReLU(onnx_name=f"relu{i + 1}"))
    spec = dict(layout="NCHW", value_range=(0.0, 1.0))
    if mean is not None:
        spec.update(normalization="in-graph", mean=tuple(float(v) for v in torch.as_tensor(mean).flatten()),
                    std=tuple(float(v) for v in torch.as_tensor(std).flatten()))
    g = Graph.sequential(nodes, (c, hw, hw), **spec)
    g.meta.update(zoo=name, dataset=key, seed=int(seed))
    return g
