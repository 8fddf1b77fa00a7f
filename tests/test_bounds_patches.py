"""Window ("patches") coefficients for conv layers' intermediate bounds give the dense passes' numbers.

``engine.patch_chain`` sends a conv neuron's unit specs through windows of its receptive field
(``toolkit/bounds/patches.py``) when every op down to the input is single-input and window-capable. Nothing
about the bound changes, only the zeros of the dense maps are skipped, so the test is equality (float64, to
rounding) with the dense path forced, for every rule that uses intermediate backward passes, on nets with
BatchNorm, Normalize, grouped and strided convs, padding and non-square maps; plus gradients (training) and
which layers take the path. Sampled soundness on such a net is in ``test_bounds_soundness`` ("windows")."""
from __future__ import annotations

import pytest
import torch

from nets import random_conv, window_conv, wong_conv
from toolkit.bounds import engine
from toolkit.bounds.engine import intermediate_bounds, needs_bounds, patch_chain
from toolkit.spec import InputSet

DT = torch.float64


def _dense(monkeypatch):
    monkeypatch.setattr(engine, "patch_chain", lambda *a, **k: None)


def _inputs(g, n=3, eps=0.08, seed=0):
    x = torch.rand(n, *g.input_spec.shape, generator=torch.Generator().manual_seed(seed), dtype=DT)
    return InputSet.from_eps(x, eps, clip=(0.0, 1.0))


NETS = {"window": lambda: window_conv(seed=0), "window_groups": lambda: window_conv(seed=1, groups=2),
        "wong28_norm": lambda: wong_conv(seed=2, normalize=True, channels=3, size=28)}


@pytest.mark.parametrize("net", NETS)
@pytest.mark.parametrize("mode,opts", [("crown", {}), ("crown", {"intersect_ibp": True}),
                                       ("fastlin", {"fastlin_form": "backward"})])
def test_window_bounds_equal_dense_bounds(net, mode, opts, monkeypatch):
    g = NETS[net]()
    shapes, inp = g.shapes(dtype=DT), _inputs(g)
    used = [k for k in needs_bounds(g) if patch_chain(g, k, shapes) is not None]
    assert len(used) >= 2, "the net should exercise the window path beyond its first layer"
    with torch.no_grad():
        win = intermediate_bounds(g, inp, mode, shapes, **opts)
        _dense(monkeypatch)
        dense = intermediate_bounds(g, inp, mode, shapes, **opts)
    for k in dense:
        for a, b in zip(win[k], dense[k]):
            assert torch.allclose(a, b, rtol=1e-12, atol=1e-12), k


def test_window_bounds_are_differentiable_like_dense_ones(monkeypatch):
    """Training reads intermediate bounds under autograd: the weights' gradients are the dense path's."""
    def grads():
        g = window_conv(seed=3)
        shapes, inp = g.shapes(dtype=DT), _inputs(g, n=2)
        bounds = intermediate_bounds(g, inp, "crown", shapes)
        loss = sum((u - l).sum() for k, (l, u) in bounds.items() if k != "input")
        return torch.autograd.grad(loss, list(g.parameters()), allow_unused=True)   # the last Linear: unused

    win = grads()
    _dense(monkeypatch)
    dense = grads()
    assert sum(a is not None for a in win) >= 8
    for a, b in zip(win, dense):
        assert (a is None and b is None) or torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_which_layers_take_the_window_path():
    g = window_conv(seed=0)
    shapes = g.shapes(dtype=DT)
    chains = {k: patch_chain(g, k, shapes) for k in needs_bounds(g)}
    assert chains == {"BatchNorm_2": ["BatchNorm_2", "Conv2d_1", "Normalize_0"],
                      "Conv2d_4": ["Conv2d_4", "ReLU_3", "BatchNorm_2", "Conv2d_1", "Normalize_0"],
                      "Conv2d_6": ["Conv2d_6", "ReLU_5", "Conv2d_4", "ReLU_3", "BatchNorm_2", "Conv2d_1",
                                   "Normalize_0"]}
    # a residual Add (two inputs) below a layer keeps the dense passes; so does a layer whose window would
    # cover most of its input map (8×8 input: conv2's 10×10 window is larger than the map)
    res = random_conv(seed=0, residual=True, k=5, size=16)
    assert patch_chain(res, "add", res.shapes(dtype=DT)) is None
    small = wong_conv(seed=0, size=8)
    assert patch_chain(small, "conv4", small.shapes(dtype=DT)) is None
    assert patch_chain(wong_conv(seed=0, size=16), "conv4", wong_conv(seed=0, size=16).shapes(dtype=DT))
