"""The spec's worked examples A–H (paper-spec §11): every number, for every method."""
import math

import pytest
import torch

from nets import EXAMPLES, mlp
from toolkit.bounds import compute_bounds, relaxed_forward
from toolkit.spec import InputSet
from toolkit.train import reg_d, reg_r

DT = torch.float64
ONE = torch.ones(1, 1, 1, dtype=DT)


def bound(name, method, clip=None, C=ONE):
    build, x, eps = EXAMPLES[name]
    g = build()
    inp = InputSet.from_eps(torch.tensor([x], dtype=DT), eps, clip=clip)
    return g, compute_bounds(g, inp, C, method)


# (example, method) -> (p*, d, r) from §11; None = not given by the spec.
EXPECTED = {
    ("A", "fastlin"): (-1.75, 1.75, 3.0), ("A", "crown"): (-2.0, 2.0, 3.0), ("A", "ibp"): (-2.0, None, None),
    ("A", "crown-ibp"): (-2.0, None, None),
    ("B", "fastlin"): (-1.0, 0.0, 0.0), ("B", "crown"): (-1.0, 0.0, 0.0), ("B", "ibp"): (-1.0, None, None),
    ("C", "fastlin"): (-0.5, 0.5, 1.0), ("C", "crown"): (0.0, 0.0, 0.0), ("C", "ibp"): (0.0, None, None),
    ("D", "fastlin"): (-2 / 3, 2 / 3, 1.0), ("D", "crown"): (-1.0, 1.0, 1.0), ("D", "ibp"): (0.0, None, None),
    ("D", "crown-ibp"): (-1.0, None, None),
    ("E", "fastlin"): (-7.0, 3.0, 4.0), ("E", "crown"): (-8.0, 4.0, 4.5), ("E", "ibp"): (-4.0, None, None),
    ("E", "crown-ibp"): (-36 / 7, 36 / 7 - 4, 2.5),
    ("G", "fastlin"): (-1.0, 0.0, 1.0),
    ("H", "ibp"): (-0.5, None, None), ("H", "crown-ibp"): (0.5, None, None),
}


@pytest.mark.parametrize("name,method", sorted(EXPECTED))
def test_example_bound_d_r(name, method):
    p, d, r = EXPECTED[(name, method)]
    g, res = bound(name, method)
    assert res.lower.item() == pytest.approx(p, abs=1e-9)
    if d is not None:
        assert reg_d(g, res).item() == pytest.approx(d, abs=1e-9)
        assert reg_r(g, res).item() == pytest.approx(r, abs=1e-9)


def test_example_A_optimum_details():
    g, res = bound("A", "fastlin")
    assert res.delta0.flatten().tolist() == [-1.0, -1.0]
    lay = next(iter(res.layers.values()))
    assert lay.l.flatten().tolist() == [-1.0, -2.0] and lay.u.flatten().tolist() == [3.0, 2.0]
    assert lay.upper_line.flatten().tolist() == [False, True]
    assert lay.upper_slope.flatten().tolist() == [0.75, 0.5]
    assert lay.upper_intercept.flatten().tolist() == [0.75, 1.0]
    xs = relaxed_forward(g, res)
    assert xs[lay.pre].flatten().tolist() == [-1.0, 0.0]
    assert xs[g.output].item() == pytest.approx(-1.75)
    assert res.g.flatten().tolist() == [0.25, 1.25]


def test_example_A_with_box():
    g, res = bound("A", "fastlin", clip=(0.0, 1.0))
    assert res.lower.item() == pytest.approx(-0.5)
    assert res.g.flatten().tolist() == [0.5, 1.5]
    assert res.z0.flatten().tolist() == [0.0, 0.0]
    lay = next(iter(res.layers.values()))
    assert lay.l.flatten().tolist() == [0.0, -1.0] and lay.u.flatten().tolist() == [2.0, 1.0]
    assert lay.intercept().flatten().tolist() == [0.0, 0.5]
    assert reg_d(g, res).item() == pytest.approx(0.5)
    assert reg_r(g, res).item() == pytest.approx(1.0)


def test_example_E_intermediate_bounds_and_lines():
    g, res = bound("E", "fastlin")
    l1, l2 = [res.layers[k] for k in sorted(res.layers)]  # ReLU_1, ReLU_3
    assert l2.l.flatten().tolist() == pytest.approx([-5.5, -5.75])
    assert l2.u.flatten().tolist() == pytest.approx([1.5, 3.5])
    assert l2.upper_slope.flatten().tolist() == pytest.approx([3 / 14, 14 / 37])
    assert l2.upper_intercept.flatten().tolist() == pytest.approx([33 / 28, 161 / 74])
    assert l2.upper_line.flatten().tolist() == [False, True]
    assert l1.upper_line.flatten().tolist() == [True, False]
    assert l1.nu.flatten().tolist() == pytest.approx([-307 / 259, 281 / 259])
    assert res.g.flatten().tolist() == pytest.approx([-575 / 518, -575 / 518])
    assert res.delta0.flatten().tolist() == [1.0, 1.0]
    xs = relaxed_forward(g, res)
    assert xs[l1.pre].flatten().tolist() == pytest.approx([1.0, -1.0])
    assert xs[l2.pre].flatten().tolist() == pytest.approx([0.0, 3.5])
    crown = bound("E", "crown")[1]
    c2 = crown.layers[sorted(crown.layers)[1]]
    assert c2.l.flatten().tolist() == pytest.approx([-5.5, -5.0])
    assert c2.u.flatten().tolist() == pytest.approx([2.5, 4.0])
    ci = bound("E", "crown-ibp")[1]
    i2 = ci.layers[sorted(ci.layers)[1]]
    assert i2.l.flatten().tolist() == pytest.approx([-7.5, -5.0])
    assert i2.u.flatten().tolist() == pytest.approx([0.5, 2.0])


def test_example_F_three_classes_and_loss():
    from toolkit.train.loss import robust_ce

    g = mlp(([[1, 1], [1, -1]], None), ([[1, 0], [0, 1], [0.5, 0.5]], None))
    inp = InputSet.from_eps(torch.tensor([[0.5, 0.5]], dtype=DT), 1.0, clip=None)
    y = torch.tensor([0])
    res = compute_bounds(g, inp, None, "fastlin", labels=y)
    assert res.lower.flatten().tolist() == pytest.approx([-1.75, -0.875])
    d, r = reg_d(g, res), reg_r(g, res)
    assert d.flatten().tolist() == pytest.approx([1.75, 0.875])
    assert r.flatten().tolist() == pytest.approx([3.0, 3.0])
    ce = robust_ce(res.lower, y, 3)
    assert ce.item() == pytest.approx(math.log(1 + math.exp(1.75) + math.exp(0.875)), abs=1e-6)
    assert ce.item() == pytest.approx(2.214134, abs=1e-6)
    total = ce + 0.5 * d.sum(1).mean() + 0.1 * r.sum(1).mean()
    assert total.item() == pytest.approx(4.126634, abs=1e-6)


def test_scale_invariance_example_F():
    g, res = bound("A", "fastlin")
    _, res2 = bound("A", "fastlin", C=2.0 * ONE)
    assert res2.lower.item() == pytest.approx(2 * res.lower.item())
    assert reg_r(g, res2).item() == pytest.approx(reg_r(g, res).item())
    assert reg_d(g, res2).item() == pytest.approx(2 * reg_d(g, res).item())
    assert torch.equal(res.delta0, res2.delta0)


def test_zero_spec_gives_zero():
    g, res = bound("A", "fastlin", C=0.0 * ONE)
    assert res.lower.item() == 0.0 and reg_d(g, res).item() == 0.0
    assert torch.all(res.delta0 == 0)


def test_layer1_bounds_identical_across_methods():
    outs = []
    for m in ("ibp", "fastlin", "crown", "crown-ibp"):
        g, res = bound("E", m)
        key = g.edges[[k for k, n, _ in g if n.op == "ReLU"][0]][0]
        outs.append(torch.cat(res.bounds[key]).flatten().tolist())
    assert all(o == outs[0] for o in outs)


def test_cp_proj_converges_to_fastlin_and_is_flagged():
    """§11.1.11: the Cauchy median estimate converges to the exact norm as k grows; cp-proj is never a
    certificate."""
    from nets import random_mlp

    g = random_mlp([20, 30, 30, 5], seed=3)
    x = torch.rand(4, 20, dtype=DT, generator=torch.Generator().manual_seed(0))
    inp = InputSet.from_eps(x, 0.05, clip=None)
    exact = compute_bounds(g, inp, None, "fastlin", labels=torch.zeros(4, dtype=torch.long))
    gen = torch.Generator().manual_seed(1)
    errs = {}
    for k in (10, 4000):
        proj = compute_bounds(g, inp, None, "cp-proj", labels=torch.zeros(4, dtype=torch.long), proj=k,
                              generator=gen)
        assert proj.probabilistic
        with pytest.raises(ValueError):
            proj.certified()
        errs[k] = (proj.lower - exact.lower).abs().max().item()
    assert errs[4000] < 0.05 * exact.lower.abs().max().item()
    assert errs[4000] < errs[10]


@pytest.mark.parametrize("clip", [None, (0.0, 1.0)])
def test_fastlin_forward_form_equals_backward_form(clip):
    """§11.1.4: Fast-Lin's forward form gives the per-neuron backward bounds (Example E and random nets,
    including a conv net with a residual Add)."""
    from nets import random_conv, random_mlp

    cases = [(EXAMPLES["E"][0](), torch.tensor([EXAMPLES["E"][1]], dtype=DT), 1.0),
             (random_mlp([6, 12, 12, 12, 4], seed=5), torch.rand(3, 6, dtype=DT), 0.2),
             (random_conv(seed=2, residual=True, normalize=True), torch.rand(2, 1, 8, 8, dtype=DT), 0.05)]
    for g, x, eps in cases:
        inp = InputSet.from_eps(x, eps, clip=clip)
        C = torch.ones(x.shape[0], 1, g.output_size(), dtype=DT)
        fw = compute_bounds(g, inp, C, "fastlin", fastlin_form="forward")
        bw = compute_bounds(g, inp, C, "fastlin", fastlin_form="backward")
        for key in fw.bounds:
            for a, b in zip(fw.bounds[key], bw.bounds[key]):
                assert torch.allclose(a, b, atol=1e-10), key
        assert torch.allclose(fw.lower, bw.lower, atol=1e-10)


@pytest.mark.parametrize("method,kw", [("fastlin", {}), ("cp-proj", {"proj": 5})])
def test_first_layer_only_nets_skip_the_forward_form(monkeypatch, method, kw):
    """When every ReLU reads a first layer (IBP exact there, §2.5), Fast-Lin and CP's projections take IBP's
    bounds instead of pushing the input generators through the layer (an (N, d, C, H, W) block on a conv
    net: 85 s per training step on Convnet_avgpool): the same bounds, exact rather than estimated."""
    from nets import mlp

    from toolkit.bounds import engine, forward
    from toolkit.ir import Conv2d, Flatten, Graph, Linear, ReLU

    gen = torch.Generator().manual_seed(0)
    conv = Graph.sequential([Conv2d(torch.randn(3, 1, 3, 3, generator=gen, dtype=DT), torch.zeros(3, dtype=DT),
                                    stride=1, padding=1), ReLU(), Flatten(),
                             Linear(torch.randn(4, 3 * 36, generator=gen, dtype=DT), torch.zeros(4, dtype=DT))],
                            (1, 6, 6))
    one_layer = mlp((torch.randn(5, 3, generator=gen), None), (torch.randn(2, 5, generator=gen), None))
    for g, x in ((conv, torch.rand(2, 1, 6, 6, dtype=DT)), (one_layer, torch.rand(2, 3, dtype=DT))):
        inp = InputSet.from_eps(x, 0.1)
        C = torch.ones(2, 1, g.output_size(), dtype=DT)
        want = compute_bounds(g, inp, C, "fastlin", fastlin_form="backward")
        monkeypatch.setattr(forward, "forward_bounds", lambda *a, **k: pytest.fail("forward form ran"))
        monkeypatch.setattr(engine, "forward_bounds", lambda *a, **k: pytest.fail("forward form ran"))
        got = compute_bounds(g, inp, C, method, generator=torch.Generator().manual_seed(1), **kw)
        monkeypatch.undo()
        assert torch.allclose(got.lower, want.lower, atol=1e-12)
        for key in want.bounds:
            assert all(torch.equal(a, b) for a, b in zip(got.bounds[key], want.bounds[key])), key


@pytest.mark.parametrize("clip", [None, (0.0, 1.0)])
def test_fastlin_forward_form_gradient_equals_backward_form(clip):
    """Training differentiates Fast-Lin's forward form (CP): its factored blocks (shared input block, pending
    ReLU slopes folded into the next Linear, the in-place radius backward) must give the same parameter
    gradients as the per-neuron backward form, on MLPs (one and three hidden layers: folding into a shared
    and into a per-sample block) and a conv net with a residual Add and a Normalize."""
    from nets import random_conv, random_mlp

    cases = [(random_mlp([6, 12, 4], seed=3), torch.rand(3, 6, dtype=DT), 0.3),
             (random_mlp([6, 12, 12, 12, 4], seed=5), torch.rand(3, 6, dtype=DT), 0.2),
             (random_conv(seed=2, residual=True, normalize=True), torch.rand(2, 1, 8, 8, dtype=DT), 0.05)]
    for g, x, eps in cases:
        inp = InputSet.from_eps(x, eps, clip=clip)
        labels = torch.arange(x.shape[0]) % g.output_size()
        grads = []
        for form in ("forward", "backward"):
            g.zero_grad()
            res = compute_bounds(g, inp, None, "fastlin", labels=labels, fastlin_form=form)
            (res.lower * torch.linspace(0.5, 1.5, res.lower.numel(), dtype=DT).reshape(res.lower.shape)).sum().backward()
            grads.append([p.grad.clone() for p in g.parameters()])
        assert any(gr.abs().max() > 0 for gr in grads[0])
        for a, b in zip(*grads):
            assert torch.allclose(a, b, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("name,method", [("E", "fastlin"), ("E", "crown"), ("A", "fastlin")])
def test_r_normalisations_and_square(name, method):
    """``--r-norm width|layer-mean`` and ``--r-squared`` (spec U1) against a neuron-by-neuron loop over the
    unstable neurons, anchored by the spec's unnormalised r of the example."""
    from toolkit.train.regularizers import real_activations

    g, res = bound(name, method)
    assert reg_r(g, res).item() == pytest.approx(EXPECTED[(name, method)][2], abs=1e-9)
    vals = real_activations(g, res)
    want = {("none", False): 0.0, ("none", True): 0.0, ("width", False): 0.0, ("layer-mean", False): 0.0}
    for lay in res.layers.values():
        x = vals[lay.pre].flatten().tolist()
        l, u = lay.l.flatten().tolist(), lay.u.flatten().tolist()
        unstable, upper = lay.unstable.flatten().tolist(), lay.upper_line.flatten().tolist()
        terms = [(min(abs(xi - li), abs(xi - ui)) if up else abs(xi), ui - li)
                 for xi, li, ui, un, up in zip(x, l, u, unstable, upper) if un]
        want["none", False] += sum(t for t, _ in terms)
        want["none", True] += sum(t * t for t, _ in terms)
        want["width", False] += sum(t / w for t, w in terms)
        want["layer-mean", False] += sum(t for t, _ in terms) / max(1, len(terms))
    for (norm, squared), value in want.items():
        assert reg_r(g, res, norm=norm, squared=squared).item() == pytest.approx(value, abs=1e-9), (norm, squared)
    assert want["width", False] != pytest.approx(want["none", False])  # the variants differ on these nets
