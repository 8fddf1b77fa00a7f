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
from toolkit.spec import InputSet, margin_spec

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


@pytest.mark.parametrize("net", ["window", "wong28_norm"])
def test_alpha_gradients_on_windows_equal_dense_ones(net, monkeypatch):
    """α-CROWN re-bounds conv layers on window coefficients with one slope per (sample, spec, window cell); a
    spec's bound depends on no slope outside its window, so the gradient of the bound is the dense one's: equal
    on the slopes both keep densely (the later layers', the final pass's) and the same values, rearranged, on
    the window layers' slopes. (The optimised bounds themselves may part ways: Adam's first step moves every
    slope with a non-zero gradient by the full learning rate, so rounding-level gradients already count; and
    each re-bounded neuron is intersected with the best bounds so far, where the first sweep ties with CROWN's
    to rounding: the test starts from bounds loosened on the re-bounded neurons so the sweep's own win.)"""
    from toolkit.bounds import alpha

    g = NETS[net]()
    shapes, inp = g.shapes(dtype=DT), _inputs(g, n=2, eps=0.05)
    with torch.no_grad():
        C = margin_spec(g(inp.x).argmax(1), g.output_size(), dtype=DT)
        bounds = intermediate_bounds(g, inp, "crown", shapes)
    layers = alpha._layers(g, bounds, needs_bounds(g))
    loose = dict(bounds)
    for key, rows in layers:
        l, u = (t.clone().reshape(2, -1) for t in bounds[key])
        l[:, rows] -= 1.0
        u[:, rows] += 1.0
        loose[key] = (l.reshape(bounds[key][0].shape), u.reshape(bounds[key][1].shape))

    def gradients(windows):
        with torch.enable_grad():
            slopes = {}
            for key, rows in layers:
                chain = patch_chain(g, key, shapes) if windows else None
                slopes[key] = (alpha._start_window_slopes(g, bounds, chain, rows, shapes, inp.lo) if chain else
                               alpha._start_slopes(g, bounds, alpha._ancestor_relus(g, key), 2, 2 * rows.numel()))
            slopes[g.output] = alpha._start_slopes(g, bounds, alpha._ancestor_relus(g, g.output), 2, C.shape[1])
            lower, _, _ = alpha._sweep(g, inp, C, loose, shapes, layers, slopes)
            flat = [(key, r, v) for key, s in slopes.items() for r, v in s.values.items()]
            grads = torch.autograd.grad(lower.sum(), [v for *_, v in flat], allow_unused=True)
        return {(key, r): (torch.zeros_like(v) if gr is None else gr) for (key, r, v), gr in zip(flat, grads)}

    win = gradients(True)
    monkeypatch.setattr(alpha, "patch_chain", lambda *a, **k: None)
    dense = gradients(False)
    windowed = [key for key, _ in layers if patch_chain(g, key, shapes)]
    assert windowed, "some layer should be re-bounded on windows"
    assert set(win) == set(dense)
    for (key, r), a in win.items():
        b = dense[key, r]
        if key in windowed:   # the same multiset of per-(spec, neuron) values
            nz = lambda t: t[t.abs() > 1e-13].abs().sort().values  # noqa: E731
            assert torch.allclose(nz(a), nz(b), rtol=1e-9, atol=1e-12), (key, r)
        else:
            assert torch.allclose(a, b, rtol=1e-9, atol=1e-12), (key, r)


def test_alpha_crown_on_windows_is_tighter_than_crown_and_close_to_dense_alpha(monkeypatch):
    from toolkit.bounds import alpha, compute_bounds

    g = NETS["window"]()
    inp = _inputs(g, n=2, eps=0.05)
    with torch.no_grad():
        C = margin_spec(g(inp.x).argmax(1), g.output_size(), dtype=DT)
        run = lambda: compute_bounds(g, inp, C, "alpha-crown", alpha_iters=6, optimum=False)  # noqa: E731
        win = run()
        crown = compute_bounds(g, inp, C, "crown").lower
        _dense(monkeypatch)
        monkeypatch.setattr(alpha, "patch_chain", lambda *a, **k: None)
        dense = run()
    assert win.alpha_scope == dense.alpha_scope == "all"
    assert (win.lower >= crown - 1e-12).all() and (win.lower > crown + 1e-6).any()
    assert torch.allclose(win.lower, dense.lower, rtol=1e-6, atol=1e-6)


def test_alpha_reuses_window_gathers_of_unchanged_bounds_with_the_same_numbers(monkeypatch):
    """α-CROWN's iterations reuse a window ReLU's gathered relaxation while its bounds are the same tensors
    (``BackwardContext.cached_gather``): the optimised bounds equal those of gathering afresh every time."""
    from toolkit.bounds import compute_bounds
    from toolkit.bounds.backward import BackwardContext

    g = NETS["wong28_norm"]()
    inp = _inputs(g, n=2, eps=0.05)
    with torch.no_grad():
        C = margin_spec(g(inp.x).argmax(1), g.output_size(), dtype=DT)
    real, calls = BackwardContext.cached_gather, {"hit": 0, "made": 0}

    def counted(self, l, u, P, make):
        def made():
            calls["made"] += 1
            return make()
        out = real(self, l, u, P, made)
        calls["hit"] += 1
        return out

    monkeypatch.setattr(BackwardContext, "cached_gather", counted)
    with torch.no_grad():
        cached = compute_bounds(g, inp, C, "alpha-crown", alpha_iters=4)
    assert calls["made"] < calls["hit"], calls   # some gathers were reused
    monkeypatch.setattr(BackwardContext, "cached_gather", lambda self, l, u, P, make: make())
    with torch.no_grad():
        fresh = compute_bounds(g, inp, C, "alpha-crown", alpha_iters=4)
    assert torch.equal(cached.lower, fresh.lower)
    for k in fresh.bounds:
        assert all(torch.equal(a, b) for a, b in zip(cached.bounds[k], fresh.bounds[k])), k


@pytest.mark.parametrize("corners", [[(0, 0)], [(-1, -1), (1, 3), (3, -1), (5, 7)], [(2, 1), (2, 4), (8, 1)],
                                     [(-2, 0), (1, 0), (4, 6)], [(0, 0), (0, 1), (1, 0)]])
def test_window_values_read_each_window_cell_by_cell(corners):
    # window_values unfolds only the corners' grid (their gcd step, offset to the first corner); each window
    # must still hold exactly its cells, 0 outside the map
    from toolkit.bounds.patches import window_values

    t = torch.randn(2, 3, 9, 8, generator=torch.Generator().manual_seed(0), dtype=DT)
    corner = torch.tensor(corners)
    h, w = 4, 3
    got = window_values(t, corner, (h, w))
    for s, (r, c) in enumerate(corners):
        for i in range(h):
            for j in range(w):
                inside = 0 <= r + i < 9 and 0 <= c + j < 8
                want = t[:, :, r + i, c + j] if inside else torch.zeros(2, 3, dtype=DT)
                assert torch.equal(got[:, s, :, i, j], want), (s, i, j)


@pytest.mark.parametrize("upper", [False, True])
def test_window_concretization_by_runs_of_positions_equals_the_per_spec_one(upper):
    # neuron_bounds orders a layer's neurons by cell, so specs sharing a window position come in runs and
    # concretize_patches takes each position's box once (a matrix product per run); in any other order it
    # copies each spec's window. Both are the plain sum const + g·mid ∓ |g|·rad over the window's cells
    # inside the map (the box reads 0 outside it), checked here cell by cell.
    from toolkit.bounds.patches import Patches, concretize_patches

    gen = torch.Generator().manual_seed(1)
    lo = torch.rand(2, 3, 9, 8, generator=gen, dtype=DT)
    hi = lo + torch.rand(2, 3, 9, 8, generator=gen, dtype=DT)
    cells = [(-1, -1), (1, 3), (3, -1), (5, 7)]
    corner = torch.tensor([c for c in cells for _ in range(5)] * 2)           # runs of 5, twice (±e_j)
    g = torch.randn(2, corner.shape[0], 3, 4, 3, generator=gen, dtype=DT)
    const = torch.randn(2, corner.shape[0], generator=gen, dtype=DT)
    want = torch.zeros_like(const)
    for s, (r, c) in enumerate(corner.tolist()):
        for i in range(4):
            for j in range(3):
                if 0 <= r + i < 9 and 0 <= c + j < 8:
                    mid, rad = (hi + lo)[:, :, r + i, c + j] / 2, (hi - lo)[:, :, r + i, c + j] / 2
                    sign = 1 if upper else -1
                    want[:, s] += (g[:, s, :, i, j] * mid).sum(1) + sign * (g[:, s, :, i, j].abs() * rad).sum(1)
    runs = concretize_patches(Patches(g, corner), const, lo, hi, upper)
    perm = torch.randperm(corner.shape[0], generator=gen)                    # scattered: one copy per spec
    scattered = concretize_patches(Patches(g[:, perm], corner[perm]), const[:, perm], lo, hi, upper)
    torch.testing.assert_close(runs, const + want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(scattered, (const + want)[:, perm], rtol=1e-12, atol=1e-12)


def test_conv_transpose_of_windows_in_blocks_equals_one_product(monkeypatch):
    # without autograd the transpose runs in blocks of specs (kernels.patch_row_blocks, sized for the CPU's
    # caches and reused memory); with autograd in one product. The same numbers either way.
    from toolkit.bounds import kernels
    from toolkit.bounds.patches import Patches, conv_transpose_patches

    gen = torch.Generator().manual_seed(2)
    P = Patches(torch.randn(3, 7, 4, 2, 3, generator=gen, dtype=DT), torch.tensor([[0, 0]] * 7))
    weight = torch.randn(4, 3, 3, 2, generator=gen, dtype=DT)
    window = (torch.zeros(7, 2, dtype=torch.long), ((2 - 1) * 2 + 3, (3 - 1) * 1 + 2))
    whole = conv_transpose_patches(P, weight.requires_grad_(True), (2, 1), window, 1).data.detach()
    monkeypatch.setattr(kernels, "PATCH_BLOCK_ELEMS", 50)
    assert len(kernels.patch_row_blocks(P.data.reshape(21, 4, 6), 6 * 18, weight.detach())) > 3
    with torch.no_grad():
        blocks = conv_transpose_patches(P, weight, (2, 1), window, 1).data
    torch.testing.assert_close(blocks, whole, rtol=1e-12, atol=1e-12)
