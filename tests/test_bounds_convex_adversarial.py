"""``fastlin`` equals Wong & Kolter's dual bound (convex_adversarial 0.4.4, ``DualNetwork``) to 1e-5.

Both compute the same LP dual with parallel ReLU lines (slope u/(u−l)) and the same layer-by-layer
intermediate bounds, so on the same net they must agree up to rounding, on MLPs, conv nets (kernel 4,
stride 2, padding 1: convex_adversarial's transposed conv assumes the input size is recovered without
output padding) and a residual block (its ``DenseSequential``/``Dense`` skip connections), with and without
the [0, 1] input box (``bounded_input``).

Sign convention (convex_adversarial/dual_network.py): ``DualNetwork(net, X, eps)(c)`` returns the dual
objective for c, which is a LOWER bound on c·f(x') over the ball; ``RobustBounds`` uses ``-dual(c)`` with
c = e_y − e_j as upper bounds on f_j − f_y. So ``dual(C)`` compares directly with ``compute_bounds(...).lower``.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from benchmarks.convex_adversarial_net import layer
from benchmarks.convex_adversarial_net import to_sequential as chain
from nets import random_mlp, wong_conv
from toolkit.bounds import compute_bounds
from toolkit.spec import InputSet, margin_spec

ca = pytest.importorskip("convex_adversarial", reason="convex_adversarial (a test dependency) is not installed")
from convex_adversarial.utils import Dense, DenseSequential  # noqa: E402

DT = torch.float64


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)   # tiny nets: see test_bounds_soundness
    yield


def to_sequential(graph, dtype=DT):
    """A chain graph → nn.Sequential; ``wong_conv(residual=True)`` → DenseSequential with the skip as
    ``Dense(nn.Sequential(), None, conv3)`` (identity on relu1's output + conv3 on relu2's), their idiom."""
    if "add" not in graph.nodes:
        return chain(graph, dtype)
    m = lambda k: layer(graph.nodes[k], dtype)
    assert graph.edges["add"] == ("relu1", "conv3")
    layers = [m("conv1"), nn.ReLU(), Dense(m("conv2")), nn.ReLU(), Dense(nn.Sequential(), None, m("conv3")),
              nn.ReLU(), m("conv4"), nn.ReLU(), nn.Flatten(), m("fc1"), nn.ReLU(), m("fc2")]
    return DenseSequential(*layers)


NETS = {
    "mlp": lambda: random_mlp([6, 10, 10, 10, 4], seed=41, scale=1.5),
    "mlp_wide": lambda: random_mlp([12, 20, 16, 5], seed=42, scale=1.2),
    "conv": lambda: wong_conv(seed=43, channels=2),
    "conv_residual": lambda: wong_conv(seed=44, residual=True),
    "conv_normalize": lambda: wong_conv(seed=45, channels=3, normalize=True),  # mean/std as a 1×1 conv
}


def test_converted_nets_compute_the_same_function():
    for name, build in NETS.items():
        g = build()
        x = torch.rand(3, *g.input_spec.shape, dtype=DT)
        with torch.no_grad():
            assert torch.allclose(to_sequential(g)(x), g(x), atol=1e-12), name


@pytest.mark.parametrize("dtype", (torch.float64, torch.float32), ids=("f64", "f32"))
@pytest.mark.parametrize("box", (False, True), ids=("nobox", "box"))
@pytest.mark.parametrize("eps", (0.01, 0.05, 0.2))
@pytest.mark.parametrize("net", list(NETS))
def test_fastlin_equals_wong_kolter_dual(net, eps, box, dtype):
    """To 1e-5 (relative to the bound's size) in float32, the default dtype; to 1e-9 in float64 (they agree
    to ~1e-14 there, so a real difference cannot hide behind the looser float32 tolerance)."""
    g = NETS[net]().to(dtype)
    gen = torch.Generator().manual_seed(int(eps * 1000) + box)
    n = 4
    x = torch.rand(n, *g.input_spec.shape, generator=gen, dtype=DT).to(dtype)
    k = g.output_size()
    with torch.no_grad():
        labels = g(x).argmax(1)
    C = torch.cat([margin_spec(labels, k, dtype=DT), torch.randn(n, 2, k, generator=gen, dtype=DT)], 1).to(dtype)
    ours = compute_bounds(g, InputSet.from_eps(x, eps, clip=(0.0, 1.0) if box else None), C, "fastlin")
    with torch.no_grad():
        dual = ca.DualNetwork(to_sequential(g, dtype), x, eps, bounded_input=box)
        theirs = dual(C)
        unstable = sum(int(l.I.sum()) for l in dual.dual_net if isinstance(l, ca.dual_layers.DualReLU))
    assert unstable > 0, "no unstable ReLU: the comparison would not exercise the relaxation"
    assert ours.lower.dtype == dtype
    rel = ((ours.lower.detach() - theirs).abs() / (1 + theirs.abs())).max().item()
    assert rel <= (1e-9 if dtype == torch.float64 else 1e-5), f"fastlin differs from the dual by {rel:.3g}"


@pytest.mark.parametrize("eps", (0.05, 0.1, 0.4))
@pytest.mark.parametrize("model", ("mlp_2x100", "conv"))
def test_cp_training_loss_and_gradient_equal_robust_loss(model, eps):
    """Our CP training loss (``make_loss("cp")``, exact bounds, no κ) and its gradient w.r.t. every weight are
    ``convex_adversarial.robust_loss`` (Wong et al.'s training code, which the paper's CP training was built on)
    with ``bounded_input=True``, on the study's 2×100 MLP at MNIST's shape (and a small conv net: Small itself
    takes a minute here), at ε = 0.4 (the paper's training radius for test ε 0.3) too. So a run of ours follows
    the trajectory theirs would: when CP collapses at that radius (the paper study's 2×100 baseline), the
    collapse is the method's, not a training bug of ours."""
    from toolkit import zoo
    from toolkit.train.methods import make_loss

    g = (zoo.build(model, "mnist", seed=3) if model in zoo.names() else NETS[model]()).to(DT)
    assert tuple(g.input_spec.value_range) == (0.0, 1.0)  # as robust_loss's bounded_input: the [0, 1] box
    gen = torch.Generator().manual_seed(7)
    x = torch.rand(6, *g.input_spec.shape, generator=gen, dtype=DT)
    y = torch.randint(0, g.output_size(), (6,), generator=gen)
    seq = to_sequential(g)
    ours = make_loss("cp")(g, x, y, eps, 0).loss
    theirs = ca.robust_loss(seq, eps, x, y, bounded_input=True)[0]
    assert abs(ours.item() - theirs.item()) <= 1e-9 * (1 + abs(theirs.item()))
    ours.backward()
    theirs.backward()
    affine = [node for _, node, _ in g if hasattr(node, "weight")]
    layers = [m for m in seq if isinstance(m, (nn.Linear, nn.Conv2d))]
    assert len(affine) == len(layers) >= 3
    for node, m in zip(affine, layers):
        for a, b in ((node.weight, m.weight), (node.bias, m.bias)):
            assert a.grad is not None and b.grad is not None
            assert torch.allclose(a.grad, b.grad, rtol=1e-7, atol=1e-10 * (1 + b.grad.abs().max().item()))
