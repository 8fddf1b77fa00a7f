"""MTL-IBP, Exp-IBP, CC-IBP and SABR (issue 16): hand-computed losses on a tiny net, the mixture's extremes, SABR's small box
inside the ε-ball, gradients, d/r refused, and bit-identical resume (their PGD starts are seeded by step)."""
from __future__ import annotations

import json
import math

import pytest
import torch

from test_train import _train_kw, tiny_npz  # noqa: F401  (fixture)
from toolkit.attack.pgd import pgd_attack
from toolkit.errors import BadInputError
from toolkit.ir import Graph, Linear
from toolkit.spec import InputSet, margin_spec
from toolkit.train import CCIBPLoss, ExpIBPLoss, IBPLoss, MTLIBPLoss, SABRLoss, make_loss, train

DT = torch.float64


def _line():
    """f(x) = (x, −x): class 0's margin is 2x, smallest at the ball's lower end."""
    return Graph.sequential([Linear(torch.tensor([[1.0], [-1.0]], dtype=DT), torch.zeros(2, dtype=DT))], (1,))


def test_sabr_and_mtl_ibp_by_hand():
    g, x, y = _line(), torch.tensor([[0.5]], dtype=DT), torch.tensor([0])
    # PGD finds x_adv = 0.3; SABR (λ = 0.5, τ = 0.1) moves the centre into [0.4, 0.6]: box [0.3, 0.5], whose
    # IBP margin bound is 2·0.3 = 0.6, so the loss is log(1 + e^-0.6)
    sabr = SABRLoss(lam_box=0.5, attack_steps=8)
    box = sabr.small_box(g, x, y, 0.2, step=0)
    assert box.lo.item() == pytest.approx(0.3) and box.hi.item() == pytest.approx(0.5)
    assert sabr(g, x, y, 0.2, 0).loss.item() == pytest.approx(math.log1p(math.exp(-0.6)))
    # MTL-IBP, α = 0.25: CE at x_adv = 0.3 (logits ±0.3) and IBP over [0.3, 0.7] (bound 0.6) are both
    # log(1 + e^-0.6); with α = 0.25 the mixture is that value too, and it changes with x
    mtl = MTLIBPLoss(alpha=0.25, attack_steps=8)
    assert mtl(g, x, y, 0.2, 0).loss.item() == pytest.approx(math.log1p(math.exp(-0.6)))
    x2 = torch.tensor([[0.1]], dtype=DT)  # ball [0, 0.3] after clipping: IBP bound 0, x_adv = 0
    assert mtl(g, x2, y, 0.2, 0).loss.item() == pytest.approx(math.log(2.0))


def test_exp_ibp_and_cc_ibp_by_hand():
    """f(x) = (x, −x), x = 0.5, ε = 0.2: PGD's point 0.3 has margin 0.6 (CE log(1 + e^-0.6)); IBP's margin
    bound over [0.3, 0.7] is 0.6 too. At x = 0.1 (ball [0, 0.3]): x_adv = 0, margin 0, CE log 2; IBP 0."""
    g, y = _line(), torch.tensor([0])
    x, x2 = torch.tensor([[0.5]], dtype=DT), torch.tensor([[0.1]], dtype=DT)
    ce = lambda m: math.log1p(math.exp(-m))  # noqa: E731
    for alpha in (0.25, 0.7):
        assert ExpIBPLoss(alpha=alpha, attack_steps=8)(g, x, y, 0.2, 0).loss.item() == pytest.approx(ce(0.6))
        assert CCIBPLoss(alpha=alpha, attack_steps=8)(g, x, y, 0.2, 0).loss.item() == pytest.approx(ce(0.6))
    # where the two terms differ: a ball [0.45, 0.55] would agree again, so use a two-point example on the
    # mixture functions themselves: adversarial margin 1.0, IBP bound −1.0
    logits, lower = torch.tensor([[0.5, -0.5]], dtype=DT), torch.tensor([[-1.0]], dtype=DT)
    a, b = ce(1.0), ce(-1.0)
    assert ExpIBPLoss(alpha=0.25).mix(logits, lower, y).item() == pytest.approx(a ** 0.75 * b ** 0.25)
    assert CCIBPLoss(alpha=0.25).mix(logits, lower, y).item() == pytest.approx(ce(0.75 * 1.0 + 0.25 * -1.0))
    assert MTLIBPLoss(alpha=0.25).mix(logits, lower, y).item() == pytest.approx(0.75 * a + 0.25 * b)
    assert CCIBPLoss(alpha=0.5, attack_steps=8)(g, x2, y, 0.2, 0).loss.item() == pytest.approx(math.log(2.0))


@pytest.mark.parametrize("cls", [ExpIBPLoss, CCIBPLoss])
def test_expressive_losses_extremes_are_adversarial_training_and_ibp(cls):
    g, x, y = _net_batch()
    eps, step = 0.05, 3
    ibp = IBPLoss()(g, x, y, eps, step).loss
    assert cls(alpha=1.0)(g, x, y, eps, step).loss.item() == pytest.approx(ibp.item(), abs=1e-12)
    adv = MTLIBPLoss(alpha=0.0, attack_steps=4, seed=7)(g, x, y, eps, step).loss
    assert cls(alpha=0.0, attack_steps=4, seed=7)(g, x, y, eps, step).loss.item() == pytest.approx(adv.item(),
                                                                                                 abs=1e-12)


def _net_batch(seed=0):
    from nets import random_conv

    g = random_conv(seed=seed, k=10)
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(6, 1, 8, 8, generator=gen, dtype=DT)
    with torch.no_grad():
        y = g(x).argmax(1)
    return g, x, y


def test_mtl_ibp_extremes_are_adversarial_training_and_ibp():
    g, x, y = _net_batch()
    eps, step = 0.05, 3
    ibp = IBPLoss()(g, x, y, eps, step).loss
    assert MTLIBPLoss(alpha=1.0)(g, x, y, eps, step).loss.item() == pytest.approx(ibp.item(), abs=1e-12)
    loss0 = MTLIBPLoss(alpha=0.0, attack_steps=4, seed=7)
    inp = InputSet.from_eps(x, eps, clip=g.input_spec.value_range)
    x_adv = pgd_attack(g, inp, margin_spec(y, 10, dtype=DT), steps=4, seed=(7 * 1_000_003 + step) % 2 ** 31,
                       stop_below=None).x_adv
    want = torch.nn.functional.cross_entropy(g(x_adv), y)
    assert loss0(g, x, y, eps, step).loss.item() == pytest.approx(want.item(), abs=1e-12)


def test_sabr_box_inside_the_ball_and_full_lambda_is_ibp():
    g, x, y = _net_batch(1)
    eps = 0.1
    for lam in (0.1, 0.5, 0.9):
        box = SABRLoss(lam_box=lam).small_box(g, x, y, eps, 0)
        ball = InputSet.from_eps(x, eps, clip=(0.0, 1.0))
        assert (box.lo >= ball.lo - 1e-12).all() and (box.hi <= ball.hi + 1e-12).all()
        assert ((box.hi - box.lo) <= 2 * lam * eps + 1e-12).all()
    assert SABRLoss(lam_box=1.0)(g, x, y, eps, 0).loss.item() == pytest.approx(IBPLoss()(g, x, y, eps, 0).loss.item())


@pytest.mark.parametrize("method", ["mtl-ibp", "exp-ibp", "cc-ibp", "sabr"])
def test_gradients_flow_and_regularizers_are_refused(method):
    g, x, y = _net_batch(2)
    parts = make_loss(method)(g, x, y, 0.05, 0)
    parts.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in g.parameters())
    for kw in ({"lam": 0.1}, {"gamma": 0.1}):
        with pytest.raises(BadInputError, match=f"not defined for --method {method}"):
            make_loss(method, **kw)


@pytest.mark.parametrize("method", ["mtl-ibp", "cc-ibp", "sabr"])
def test_resume_is_bit_identical(method, tiny_npz, tmp_path):  # noqa: F811
    kw = dict(method=method, lam=0.0, gamma=0.0, proj=0, attack_steps=2)
    full = train("mlp_2x100", **_train_kw(tiny_npz, tmp_path / "full.onnx", **kw))

    def kill(trainer, metrics):
        if trainer.epoch == 1:
            raise KeyboardInterrupt

    out = tmp_path / "cut.onnx"
    with pytest.raises(KeyboardInterrupt):
        train("mlp_2x100", callbacks=[kill], **_train_kw(tiny_npz, out, **kw))
    resumed = train("mlp_2x100", resume=True, **_train_kw(tiny_npz, out, **kw))
    for (n, a), (_, b) in zip(full.graph.state_dict().items(), resumed.graph.state_dict().items()):
        assert torch.equal(a, b), n
    strip = lambda h: [{k: v for k, v in m.items() if k != "time_s"} for m in h]  # noqa: E731
    assert json.dumps(strip(full.history)) == json.dumps(strip(resumed.history))


def test_ibp_init_scales_weights_and_halves_after_a_residual_sum():
    from nets import random_conv
    from toolkit import zoo
    from toolkit.train.ibp_warmup import ibp_init

    g = zoo.build("mlp_256x2", "mnist", 0)
    last = g.nodes[[k for k, n, _ in g if hasattr(n, "weight")][-1]].weight.clone()
    ibp_init(g, seed=1)
    ws = [n.weight for _, n, _ in g if hasattr(n, "weight")]
    for w in ws[:-1]:
        want = math.sqrt(2 * math.pi) / w[0].numel()
        assert w.std().item() == pytest.approx(want, rel=0.05)
    assert torch.equal(ws[-1], last)  # the output layer keeps its initialisation
    r = random_conv(seed=0, residual=True)
    ibp_init(r, seed=1)
    # fc1 reads relu3(add(...)) through a Flatten: half the std; conv2 reads relu1: the full std
    fc1, conv2 = r.nodes["fc1"].weight, r.nodes["conv2"].weight
    assert fc1.std().item() == pytest.approx(math.sqrt(2 * math.pi) / fc1[0].numel() / 2, rel=0.1)
    assert conv2.std().item() == pytest.approx(math.sqrt(2 * math.pi) / conv2[0].numel(), rel=0.15)


def test_warmup_regularizer_by_hand_and_its_fade():
    """One ReLU layer with pre-activation boxes [1, 3] (active), [-3, -1] (inactive), [-1, 1] (unstable) over
    an input box of radius 0.5: r̄ = 1, so L_tightness = relu(0.5 − 0.5/1)/0.5 = 0; centres 2, −2, 0 give
    q_mean = (2/3)/(2/3) = 1 and q_var = 4/4 = 1: L_relu = 0. With the inactive box [-0.75, -0.25] instead
    (centre −0.5, r̄ = 0.75): L_tightness = 0; q_mean = 2/0.5 = 4 → ρ = 1/4; the mean centre is 0.5, so
    q_var = 1.5²/1² → ρ = 4/9: L_relu = (0.5 − 1/4)/0.5 + (0.5 − 4/9)/0.5 = 1/2 + 1/9 = 11/18."""
    from toolkit.ir import INPUT, ReLU
    from toolkit.train.ibp_warmup import warmup_regularizer

    g = Graph.sequential([Linear(torch.eye(3, dtype=DT), torch.zeros(3, dtype=DT)), ReLU()], (3,))
    pre = g.order[0]
    box = (torch.full((1, 3), 0.0, dtype=DT), torch.full((1, 3), 1.0, dtype=DT))
    ibp = {INPUT: box, pre: (torch.tensor([[1.0, -3.0, -1.0]], dtype=DT), torch.tensor([[3.0, -1.0, 1.0]], dtype=DT))}
    assert warmup_regularizer(g, ibp).item() == pytest.approx(0.0, abs=1e-12)
    ibp[pre] = (torch.tensor([[1.0, -0.75, -1.0]], dtype=DT), torch.tensor([[3.0, -0.25, 1.0]], dtype=DT))
    assert warmup_regularizer(g, ibp).item() == pytest.approx(11 / 18)
    # in a loss: weight λ·(1 − ε/ε_max), zero at the end of the ramp, and refused for CP
    gn, x, y = _net_batch(3)
    on = make_loss("ibp", warmup_reg=2.0, eps_max=0.1)
    off = make_loss("ibp")
    assert on(gn, x, y, 0.1, 0).loss.item() == pytest.approx(off(gn, x, y, 0.1, 0).loss.item())
    assert on(gn, x, y, 0.05, 0).loss.item() > off(gn, x, y, 0.05, 0).loss.item()
    with pytest.raises(BadInputError, match="IBP-based"):
        make_loss("cp", warmup_reg=0.5)


def test_cli_method_choices_are_the_loss_table():
    from toolkit.cli.cmd_train import TRAIN_METHODS
    from toolkit.train.methods import METHODS

    assert TRAIN_METHODS == METHODS
