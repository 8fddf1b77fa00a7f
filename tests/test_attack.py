"""PGD: finds known minima, never leaves the box, reproducible under a seed."""

import pytest
import torch

from toolkit.attack import pgd_attack, pgd_minimize
from toolkit.errors import BadInputError
from toolkit.ir import Graph, Linear, ReLU
from toolkit.spec import InputSet, margin_spec


def linear_net(seed=0, d=6, k=4):
    g = torch.Generator().manual_seed(seed)
    return Graph.sequential([Linear(torch.randn(k, d, generator=g), torch.randn(k, generator=g))], (d,))


@pytest.mark.parametrize("k", [2, 4])
def test_linear_margin_minimum_is_exact(k):
    """A linear net's margin f_y - f_j is minimised at a box vertex. With one spec row (K = 2) PGD
    reaches that vertex exactly; with several rows min_s is concave and PGD may stop at another
    vertex, but it can never report less than the true minimum (every point it scores is in the box)."""
    torch.manual_seed(0)
    net = linear_net(k=k)
    x = torch.rand(5, 6)
    inp = InputSet.from_eps(x, 0.1, clip=(0.0, 1.0))
    y = net(x).argmax(1)
    C = margin_spec(y, k)
    res = pgd_attack(net, inp, C, steps=50, stop_below=None)
    W, b = net.nodes[net.output].weight.detach(), net.nodes[net.output].bias.detach()
    cw = torch.einsum("nsk,kd->nsd", C, W)
    cb = torch.einsum("nsk,k->ns", C, b)
    # the exact minimum of each row over the box picks lo where the coefficient is positive, else hi
    exact = (cb + (cw.clamp(min=0) * inp.lo.unsqueeze(1)).sum(-1) + (cw.clamp(max=0) * inp.hi.unsqueeze(1)).sum(-1))
    if k == 2:
        assert torch.allclose(res.margin, exact.min(1).values, atol=1e-5)
    assert (res.margin >= exact.min(1).values - 1e-5).all()
    assert (res.margin <= net(x).gather(1, y[:, None])[:, 0] - net(x).scatter(1, y[:, None], -1e9).max(1).values).all()
    assert torch.allclose(res.spec_values.min(1).values, res.margin, atol=1e-6)


def test_finds_adversarial_example_of_relu_net_with_known_minimum():
    """f(x) = |x1| + |x2| - 0.5 written with ReLUs, on [-1,1]^2: positive at both centres, the exact
    minimum -0.5 lies at the origin (an interior point, not a vertex); PGD must get within one step."""
    W1 = torch.tensor([[1.0, 0], [-1, 0], [0, 1], [0, -1]])
    W2 = torch.tensor([[1.0, 1, 1, 1]])
    net = Graph.sequential([Linear(W1), ReLU(), Linear(W2, torch.tensor([-0.5]))], (2,))
    x = torch.tensor([[0.9, -0.8], [0.3, 0.6]])
    inp = InputSet.from_eps(x, 1.0, clip=(-1.0, 1.0))
    x_best, v = pgd_minimize(lambda z: net(z)[:, 0], inp, steps=100, seed=3, stop_below=None)
    # grid check that -0.5 is the true minimum (attained at the origin, inside both boxes)
    grid = torch.stack(torch.meshgrid(torch.linspace(-1, 1, 201), torch.linspace(-1, 1, 201),
                                      indexing="ij"), -1).reshape(-1, 2)
    assert net(grid).min().item() == pytest.approx(-0.5)
    assert (v >= -0.5 - 1e-6).all() and (v <= -0.5 + 0.05).all()
    assert torch.allclose(net(x_best)[:, 0], v)


def test_breaks_a_sample_and_stops_early():
    net = linear_net(1)
    x = torch.rand(8, 6)
    y = net(x).argmax(1)
    res_small = pgd_attack(net, InputSet.from_eps(x, 1e-4, clip=None), margin_spec(y, 4), steps=20)
    res_big = pgd_attack(net, InputSet.from_eps(x, 5.0, clip=None), margin_spec(y, 4), steps=20)
    assert (res_small.margin > 0).all()  # a tiny ball around a correctly classified point holds
    assert (res_big.margin < 0).all()    # a huge ball always contains another class's region


@pytest.mark.parametrize("restarts,random_start", [(1, True), (3, True), (1, False)])
def test_never_leaves_the_box(restarts, random_start):
    torch.manual_seed(1)
    net = Graph.sequential([Linear(torch.randn(16, 10)), ReLU(), Linear(torch.randn(3, 16))], (10,))
    x = torch.rand(7, 10)
    inp = InputSet.from_eps(x, torch.rand(7) * 0.3, clip=(0.0, 1.0))
    seen = []

    def objective(z):
        seen.append(z.detach().clone())
        return net(z)[:, 0]

    x_best, _ = pgd_minimize(objective, inp, steps=15, restarts=restarts, random_start=random_start,
                             step_size=0.5)  # a huge step: the projection alone keeps points inside
    for z in seen + [x_best]:
        assert (z >= inp.lo).all() and (z <= inp.hi).all()


def test_seeded_reproducibility_and_per_sample_seeds():
    torch.manual_seed(2)
    net = Graph.sequential([Linear(torch.randn(16, 10)), ReLU(), Linear(torch.randn(3, 16))], (10,))
    x = torch.rand(6, 10)
    inp = InputSet.from_eps(x, 0.2)
    f = lambda z: net(z)[:, 1]
    a = pgd_minimize(f, inp, steps=5, seed=7)
    b = pgd_minimize(f, inp, steps=5, seed=7)
    c = pgd_minimize(f, inp, steps=0, seed=8)
    d = pgd_minimize(f, inp, steps=0, seed=7)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(c[0], d[0])
    # per-sample seeds: a sample's result does not depend on the batch it is in
    seeds = list(range(100, 106))
    whole = pgd_minimize(f, inp, steps=5, seed=seeds)
    half = pgd_minimize(f, inp[3:], steps=5, seed=seeds[3:])
    assert torch.allclose(whole[0][3:], half[0]) and torch.allclose(whole[1][3:], half[1])


def test_value_never_worse_than_centre_and_nan_is_ignored():
    net = linear_net(3)
    x = torch.rand(4, 6)
    inp = InputSet.from_eps(x, 0.05)
    centre = net(x)[:, 0]
    _, v = pgd_minimize(lambda z: net(z)[:, 0], inp, steps=0)
    assert (v <= centre + 1e-6).all()
    _, v_nan = pgd_minimize(lambda z: torch.full((z.shape[0],), float("nan")) + z.sum((1,)) * 0, inp, steps=3)
    assert torch.isinf(v_nan).all()  # NaN is never "best": the attack reports no value, not NaN


def test_bad_arguments():
    inp = InputSet.from_eps(torch.rand(2, 3), 0.1)
    with pytest.raises(BadInputError, match="restarts"):
        pgd_minimize(lambda z: z.sum(1), inp, restarts=0)
    with pytest.raises(BadInputError, match="step size"):
        pgd_minimize(lambda z: z.sum(1), inp, step_size=float("nan"))
    with pytest.raises(BadInputError, match="shape"):
        pgd_minimize(lambda z: z, inp, steps=1)
