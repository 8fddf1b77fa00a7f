"""Certified training: the Eq. 4 loss on the spec's worked examples, gradients, resume, the CLI end to end,
and the bad-input errors (nothing written)."""
import math
from pathlib import Path

import h5py
import json
import numpy as np
import pytest
import torch

from nets import EXAMPLES, mlp, random_mlp
from toolkit.cli import main
from toolkit.errors import BadInputError
from toolkit.ir import Flatten, Graph, Linear, ReLU, Sigmoid
from toolkit.train import (BetaSchedule, CPLoss, CrownIBPLoss, EpsSchedule, IBPLoss, RegConfig, finetune,
                           make_loss, train)

DT = torch.float64
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread(_torch_threads):
    """These tests run many small ops: on a shared 2-core machine one thread is several times faster than two
    (no spinning on a busy sibling core). Runs after conftest's thread fixture and restores its setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def no_box(g):
    g.input_spec.value_range = None  # the spec's examples have no data box unless stated
    return g


def beta(final):
    return BetaSchedule(EpsSchedule(1.0, steps_per_epoch=1), final=final)


def two_class(name):
    """Example ``name`` (one 'margin' output c) as a 2-class net: logits (c, 0), label 0 ⇒ margin c."""
    build, x, eps = EXAMPLES[name]
    g = build()
    last = g.nodes[g.output]
    W = torch.cat([last.weight.detach(), torch.zeros_like(last.weight)])
    b = torch.cat([last.bias.detach(), torch.zeros_like(last.bias)])
    layers = [g.nodes[k] for k in g.order[:-1]] + [Linear(W, b)]
    g2 = Graph.sequential(layers, g.input_spec.shape, layout="flat", value_range=None)
    return g2, torch.tensor([x], dtype=DT), torch.tensor([0]), eps


# -- Eq. 4 on the worked examples ------------------------------------------------------------------------------

def test_example_F_objective():
    """§11.7: p* = (0, −1.75, −0.875), CE 2.214134, Σd 2.625, Σr 6; λ=0.5, γ=0.1 → 4.126634."""
    g = no_box(mlp(([[1, 1], [1, -1]], None), ([[1, 0], [0, 1], [0.5, 0.5]], None)))
    x, y = torch.tensor([[0.5, 0.5]], dtype=DT), torch.tensor([0])
    parts = CPLoss(RegConfig(lam=0.5, gamma=0.1))(g, x, y, 1.0, 0)
    assert parts.ce == pytest.approx(math.log(1 + math.exp(1.75) + math.exp(0.875)), abs=1e-12)
    assert parts.ce == pytest.approx(2.214134, abs=1e-6)
    assert parts.d == pytest.approx(2.625, abs=1e-12) and parts.r == pytest.approx(6.0, abs=1e-12)
    assert parts.loss.item() == pytest.approx(4.126634, abs=1e-6)
    assert parts.robust_err == 1.0
    mean = CPLoss(RegConfig(lam=0.5, gamma=0.1, aggregate="mean"))(g, x, y, 1.0, 0)
    assert (mean.d, mean.r) == (pytest.approx(1.3125), pytest.approx(3.0))


@pytest.mark.parametrize("name,p,d,r", [("E", -7.0, 3.0, 4.0), ("A", -1.75, 1.75, 3.0), ("B", -1.0, 0.0, 0.0),
                                        ("G", -1.0, 0.0, 1.0)])
def test_cp_loss_on_examples(name, p, d, r):
    g, x, y, eps = two_class(name)
    parts = CPLoss(RegConfig(lam=1.0, gamma=1.0))(g, x, y, eps, 0)
    assert parts.ce == pytest.approx(math.log1p(math.exp(-p)), abs=1e-12)
    assert parts.d == pytest.approx(d, abs=1e-12) and parts.r == pytest.approx(r, abs=1e-12)
    assert parts.loss.item() == pytest.approx(math.log1p(math.exp(-p)) + d + r, abs=1e-12)


def test_cp_loss_example_A_with_box():
    g, x, y, eps = two_class("A")
    g.input_spec.value_range = (0.0, 1.0)
    parts = CPLoss(RegConfig(lam=1.0, gamma=1.0))(g, x, y, eps, 0)
    assert (parts.d, parts.r) == (pytest.approx(0.5), pytest.approx(1.0))
    assert parts.ce == pytest.approx(math.log1p(math.exp(0.5)))


def test_crown_ibp_loss_example_E_and_beta_mixing():
    """§11.6: CROWN-IBP p = −36/7, d = 36/7 − 4, r = 2.5; IBP −4. β mixes the bounds, not r (U7 default)."""
    g, x, y, eps = two_class("E")
    full = CrownIBPLoss(beta(1.0), RegConfig(lam=1.0, gamma=1.0))(g, x, y, eps, 0)
    assert full.ce == pytest.approx(math.log1p(math.exp(36 / 7)), abs=1e-12)
    assert (full.d, full.r) == (pytest.approx(36 / 7 - 4, abs=1e-12), pytest.approx(2.5, abs=1e-12))
    half = CrownIBPLoss(beta(0.5), RegConfig(gamma=1.0))(g, x, y, eps, 0)  # β = 0.5 at ε = ε_max
    assert half.beta == 0.5
    assert half.ce == pytest.approx(math.log1p(math.exp(0.5 * 36 / 7 + 0.5 * 4)), abs=1e-12)
    assert half.loss.item() == pytest.approx(half.ce + 2.5, abs=1e-12)
    weighted = CrownIBPLoss(beta(0.5), RegConfig(gamma=1.0), r_coupling="beta-weighted")(g, x, y, eps, 0)
    assert weighted.loss.item() == pytest.approx(half.ce + 0.5 * 2.5, abs=1e-12)
    ibp_only = CrownIBPLoss(beta(0.0), RegConfig(gamma=1.0))(g, x, y, eps, 0)  # β = 0: no CROWN pass, no r
    assert ibp_only.ce == pytest.approx(math.log1p(math.exp(4.0))) and math.isnan(ibp_only.r)
    always = CrownIBPLoss(beta(0.0), RegConfig(gamma=1.0), r_coupling="always")(g, x, y, eps, 0)
    assert always.ce == pytest.approx(ibp_only.ce) and always.r == pytest.approx(2.5)


def test_crown_ibp_loss_fusion_on_example_E():
    """§11.6's net as two classes: IBP gives p ∈ [−4, 0.5], so m = −p ∈ [−0.5, 4] and exp(m) lies under the chord
    a·(m + 0.5) + e^−0.5 with a = (e⁴ − e^−0.5)/4.5; the CROWN pass bounds a·m by a·36/7. Worst CE ≤
    log(1 + e^−0.5 + a·(0.5 + 36/7)); β = 0 gives IBP's log(1 + e⁴); β mixes the two sums before the log."""
    g, x, y, eps = two_class("E")
    a = (math.exp(4) - math.exp(-0.5)) / 4.5
    s_crown, s_ibp = 1 + math.exp(-0.5) + a * (0.5 + 36 / 7), 1 + math.exp(4)
    for final, want in ((1.0, math.log(s_crown)), (0.5, math.log(0.5 * s_crown + 0.5 * s_ibp)),
                        (0.0, math.log(s_ibp))):
        parts = CrownIBPLoss(beta(final), loss_fusion=True)(g, x, y, eps, 0)
        assert parts.ce == pytest.approx(want, abs=1e-12) and parts.loss.item() == pytest.approx(want, abs=1e-12)
    assert parts.ce == pytest.approx(CrownIBPLoss(beta(0.0))(g, x, y, eps, 0).ce, abs=1e-12)
    with pytest.raises(BadInputError, match="no per-class relaxation optimum"):
        CrownIBPLoss(beta(1.0), RegConfig(gamma=0.1), loss_fusion=True)
    with pytest.raises(BadInputError, match="crown-ibp only"):
        make_loss("ibp", loss_fusion=True)


@pytest.mark.parametrize("final", [1.0, 0.5])
def test_crown_ibp_loss_fusion_bounds_the_worst_cross_entropy(final):
    """Per sample, the fused bound is at least the CE at every sampled point of the ε-ball (and at a PGD point),
    equals the plain CE at ε = 0, and its gradient (through the chords' slopes into the CROWN pass's row
    too) matches finite differences (float64)."""
    from nets import random_conv
    from toolkit.bounds import compute_bounds
    from toolkit.spec import InputSet, margin_spec
    from toolkit.train.loss import fused_robust_ce

    g = random_conv(seed=6)
    g.input_spec.value_range = None
    gen = torch.Generator().manual_seed(7)
    x, y, eps = torch.rand(4, 1, 8, 8, dtype=DT, generator=gen), torch.tensor([0, 2, 5, 9]), 0.05
    loss = CrownIBPLoss(beta(final), loss_fusion=True)
    inp = InputSet.from_eps(x, eps, clip=None)
    ibp = compute_bounds(g, inp, margin_spec(y, 10, dtype=DT), "ibp", bound_upper=True)
    crown = lambda row: compute_bounds(g, inp, row, "crown-ibp", bounds=ibp.bounds, optimum=False).lower
    per_sample = fused_robust_ce(ibp.lower, ibp.upper, ibp.C, crown, final).detach()
    assert loss(g, x, y, eps, 0).ce == pytest.approx(per_sample.mean().item(), abs=1e-12)
    with torch.no_grad():
        for _ in range(20):
            pts = x + eps * (2 * torch.rand(x.shape, dtype=DT, generator=gen) - 1)
            ce = torch.nn.functional.cross_entropy(g(pts), y, reduction="none")
            assert (ce <= per_sample + 1e-12).all()
    adv = x.clone()
    for _ in range(30):  # sign-gradient ascent on the CE itself, projected onto the ball
        adv.requires_grad_(True)
        grad, = torch.autograd.grad(torch.nn.functional.cross_entropy(g(adv), y, reduction="sum"), adv)
        adv = (x + (adv.detach() + eps / 10 * grad.sign() - x).clamp(-eps, eps)).detach()
    with torch.no_grad():
        worst = torch.nn.functional.cross_entropy(g(adv), y, reduction="none")
        assert (worst <= per_sample + 1e-12).all() and (worst > ce).any()
    assert loss(g, x, y, 0.0, 0).ce == pytest.approx(torch.nn.functional.cross_entropy(g(x), y).item(), abs=1e-9)
    mlp_net = random_mlp([5, 6, 6, 3], seed=1)  # the gradient check on a net small enough to be quick
    mlp_net.input_spec.value_range = None
    xs = torch.rand(3, 5, dtype=DT, generator=torch.Generator().manual_seed(2))
    params = tuple(p.detach().clone().requires_grad_(True) for p in mlp_net.parameters())
    fn = _loss_of_params(mlp_net, loss, xs, torch.tensor([0, 1, 2]), 0.08)
    assert torch.autograd.gradcheck(fn, params, eps=1e-6, atol=1e-6)


def test_regularizers_vanish_without_unstable_neurons():
    g, x, y, eps = two_class("H")  # both hidden neurons stably active
    for loss in (CPLoss(RegConfig(lam=1.0, gamma=1.0)), CrownIBPLoss(beta(1.0), RegConfig(lam=1.0, gamma=1.0))):
        parts = loss(g, x, y, eps, 0)
        assert parts.d == 0.0 and parts.r == 0.0
    net = random_mlp([6, 8, 8, 4], seed=3)
    xs, ys = torch.rand(5, 6, dtype=DT, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 3, 0])
    parts = CPLoss(RegConfig(lam=1.0, gamma=1.0))(net, xs, ys, 0.0, 0)  # ε = 0: l = u, nothing unstable
    assert parts.d == pytest.approx(0.0, abs=1e-12) and parts.r == 0.0  # d: two roundings of one value


def test_ibp_has_no_regularizers():
    with pytest.raises(BadInputError, match="not defined for --method ibp"):
        make_loss("ibp", gamma=0.1)
    with pytest.raises(BadInputError, match="not defined"):
        IBPLoss(RegConfig(lam=0.1))
    with pytest.raises(BadInputError, match=">= 0"):
        RegConfig(lam=-1.0)


# -- gradients -----------------------------------------------------------------------------------------------

def _loss_of_params(graph, loss_fn, x, y, eps):
    names = [n for n, _ in graph.named_parameters()]

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.g = graph

        def forward(self, x, y):
            return loss_fn(self.g, x, y, eps, 0).loss

    wrap = Wrap()
    return lambda *ps: torch.func.functional_call(wrap, {f"g.{n}": p for n, p in zip(names, ps)}, (x, y))


@pytest.mark.parametrize("kind", ["cp", "crown-ibp"])
def test_gradcheck_loss(kind):
    """Eq. 4's gradient (masks, line choices and δ*₀ are constants) against finite differences, float64.
    ε = 0.08 leaves several neurons unstable with every bound far (> 1e-3) from 0, so a 1e-6 perturbation
    flips no mask."""
    g = random_mlp([5, 6, 6, 3], seed=1)
    g.input_spec.value_range = None
    x = torch.rand(3, 5, dtype=DT, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 1, 2])
    reg = RegConfig(lam=0.7, gamma=0.3)
    loss_fn = CPLoss(reg) if kind == "cp" else CrownIBPLoss(beta(0.5), reg)
    parts = loss_fn(g, x, y, 0.08, 0)
    assert parts.d > 0 and parts.r > 0  # the regularizers take part in the check
    from toolkit.bounds import compute_bounds
    from toolkit.spec import InputSet

    res = compute_bounds(g, InputSet.from_eps(x, 0.08, clip=None), None, "fastlin", labels=y)
    assert all(torch.minimum(lay.l.abs(), lay.u.abs()).min() > 1e-3 for lay in res.layers.values())
    assert any(lay.unstable.any() for lay in res.layers.values())
    params = tuple(p.detach().clone().requires_grad_(True) for p in g.parameters())
    assert torch.autograd.gradcheck(_loss_of_params(g, loss_fn, x, y, 0.08), params, eps=1e-6, atol=1e-6)


def _dense_r(graph, res, values, norm, squared):
    """r exactly as §6.2 writes it: every neuron of every layer, stable ones masked out (the dense form that
    ``reg_r`` replaced by a gather of the unstable neurons)."""
    n, s = res.lower.shape
    total = torch.zeros(n, s, dtype=DT)
    for lay in res.layers.values():
        x = values[lay.pre]
        l, u, unstable = lay.l.unsqueeze(1), lay.u.unsqueeze(1), lay.unstable.unsqueeze(1)
        dist = torch.where(lay.upper_line & unstable, torch.minimum((x - l).abs(), (x - u).abs()), x.abs())
        dist = dist ** 2 if squared else dist
        dist = dist / (u - l).clamp_min(1e-12) if norm == "width" else dist
        term = torch.where(unstable, dist, torch.zeros_like(dist)).reshape(n, s, -1).sum(-1)
        if norm == "layer-mean":
            term = term / unstable.reshape(n, 1, -1).sum(-1).clamp_min(1)
        total = total + term
    return total


@pytest.mark.parametrize("method", ["fastlin", "crown-ibp"])
@pytest.mark.parametrize("norm,squared", [("none", False), ("width", True), ("layer-mean", False)])
def test_reg_r_on_unstable_neurons_equals_the_dense_formula(method, norm, squared):
    """Value and gradient (to the weights, through x and through l, u) of the gathered r equal the dense
    per-neuron formula on a conv net with unstable neurons in every ReLU layer."""
    from nets import random_conv
    from toolkit.bounds import compute_bounds
    from toolkit.spec import InputSet, margin_spec
    from toolkit.train.regularizers import real_activations, reg_r

    g = random_conv(seed=4)
    g.input_spec.value_range = None
    x = torch.rand(3, 1, 8, 8, dtype=DT, generator=torch.Generator().manual_seed(5))
    y = torch.tensor([0, 3, 7])
    inp = InputSet.from_eps(x, 0.15 if method == "fastlin" else 0.05, clip=None)
    kw = {"labels": y} if method == "fastlin" else {"C": margin_spec(y, 10, dtype=DT)}
    if method == "crown-ibp":
        kw["bounds"] = compute_bounds(g, inp, kw["C"], "ibp").bounds
    res = compute_bounds(g, inp, kw.pop("C", None), method, optimum=True, **kw)
    values = real_activations(g, res)
    frac = [float(lay.unstable.double().mean()) for lay in res.layers.values()]
    assert all(0 < f < 1 for f in frac), frac  # gathered, not all or nothing
    params = [p for p in g.parameters()]
    ours, ref = reg_r(g, res, values, norm=norm, squared=squared), _dense_r(g, res, values, norm, squared)
    assert torch.allclose(ours, ref, rtol=1e-12, atol=1e-12) and ref.sum() > 0
    grads = torch.autograd.grad(ours.sum(), params, retain_graph=True, allow_unused=True)
    ref_grads = torch.autograd.grad(ref.sum(), params, allow_unused=True)
    for a, b in zip(grads, ref_grads):
        assert (a is None) == (b is None) and (a is None or torch.allclose(a, b, rtol=1e-10, atol=1e-12))


def test_reg_r_tie_takes_the_lower_bound():
    """x exactly half-way between l and u on the upper line: the value is (u − l)/2 and, the min-branch being a
    constant (§6.2), the gradient picks the branch of l: ∂/∂x = 1, ∂/∂l = −1, ∂/∂u = 0. On the lower line
    the term is |x| with no gradient to l or u; stable neurons contribute nothing."""
    from types import SimpleNamespace

    from toolkit.train.regularizers import _layer_r

    l = torch.tensor([[-1.0, -2.0, 0.5]], dtype=DT, requires_grad=True)
    u = torch.tensor([[3.0, 1.0, 2.0]], dtype=DT, requires_grad=True)
    x = torch.tensor([[[1.0, -0.5, 7.0]]], dtype=DT, requires_grad=True)  # (N=1, S=1, M=3)
    lay = SimpleNamespace(l=l, u=u, unstable=torch.tensor([[True, True, False]]),
                          upper_line=torch.tensor([[[True, False, True]]]))
    out = _layer_r(x, lay, "none", False)
    assert out.item() == 2.0 + 0.5
    out.sum().backward()
    assert x.grad.tolist() == [[[1.0, -1.0, 0.0]]]
    assert l.grad.tolist() == [[-1.0, 0.0, 0.0]] and u.grad.tolist() == [[0.0, 0.0, 0.0]]


# -- training runs ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory):
    """48 MNIST-shaped samples of two blobs (classes 0..9 present so a 10-output model fits)."""
    rng = np.random.default_rng(0)
    y = np.arange(48) % 10
    x = np.clip(0.5 + 0.3 * (y[:, None] % 2 - 0.5) + 0.1 * rng.standard_normal((48, 784)), 0, 1)
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    np.savez(path, x=x.reshape(48, 1, 28, 28).astype(np.float32), y=y.astype(np.int64))
    return path


def _train_kw(npz, out, **kw):
    base = dict(out=str(out), eps=0.02, train_data=str(npz), test_data=str(npz), test_n=16, pgd_steps=5,
                batch_size=16, epochs=2, ramp=1, lam=0.1, gamma=0.01, proj=8, progress=False, seed=3)
    base.update(kw)
    return base


def test_resume_is_bit_identical(tiny_npz, tmp_path):
    """Kill after epoch 1 (the callback raises after the checkpoint), resume: same weights and history as an
    uninterrupted run. cp-proj's random projections are part of what must repeat."""
    full = train("mlp_2x100", **_train_kw(tiny_npz, tmp_path / "full.onnx"))

    def kill(trainer, metrics):
        if trainer.epoch == 1:
            raise KeyboardInterrupt

    out = tmp_path / "cut.onnx"
    with pytest.raises(KeyboardInterrupt):
        train("mlp_2x100", callbacks=[kill], **_train_kw(tiny_npz, out))
    assert (tmp_path / "cut.ckpt" / "last.pt").is_file() and not out.exists()
    with pytest.raises(BadInputError, match="--resume"):
        train("mlp_2x100", **_train_kw(tiny_npz, out))
    with pytest.raises(BadInputError, match="lr="):
        train("mlp_2x100", resume=True, **_train_kw(tiny_npz, out, lr=0.01))
    resumed = train("mlp_2x100", resume=True, **_train_kw(tiny_npz, out))
    for (n, a), (_, b) in zip(full.graph.state_dict().items(), resumed.graph.state_dict().items()):
        assert torch.equal(a, b), n
    strip = lambda h: [{k: v for k, v in m.items() if k != "time_s"} for m in h]
    assert json.dumps(strip(full.history)) == json.dumps(strip(resumed.history))
    assert full.after == resumed.after


def test_loss_fusion_trains_end_to_end(tiny_npz, tmp_path):
    """--loss-fusion through the trainer: β stays > 0 (so the fused CROWN pass runs), the loss is finite and
    the model is exported."""
    res = train("mlp_2x100", **_train_kw(tiny_npz, tmp_path / "f.onnx", method="crown-ibp", proj=0, lam=0.0,
                                         gamma=0.0, loss_fusion=True, epochs=1, beta_final=0.5))
    assert (tmp_path / "f.onnx").is_file() and math.isfinite(res.history[-1]["loss"])
    assert res.history[-1]["beta"] > 0


def test_resume_checkpoint_older_than_a_setting(tiny_npz, tmp_path):
    """A checkpoint written before a setting existed (its config lacks the key) resumes when this run leaves
    the setting at its default, and is refused when this run sets it otherwise."""
    from toolkit.train.trainer import load_checked, save_atomic

    def kill(trainer, metrics):
        raise KeyboardInterrupt

    out = tmp_path / "old.onnx"
    with pytest.raises(KeyboardInterrupt):
        train("mlp_2x100", callbacks=[kill], **_train_kw(tiny_npz, out, method="crown-ibp", proj=0))
    ck_path = tmp_path / "old.ckpt" / "last.pt"
    ck = load_checked(ck_path)
    assert ck["config"].pop("warmup_reg") == 0.0 and ck["config"].pop("ibp_init") is False
    save_atomic(ck, ck_path)
    with pytest.raises(BadInputError, match="warmup_reg=0.0, this run has warmup_reg=0.1"):
        train("mlp_2x100", resume=True, **_train_kw(tiny_npz, out, method="crown-ibp", proj=0, warmup_reg=0.1))
    resumed = train("mlp_2x100", resume=True, **_train_kw(tiny_npz, out, method="crown-ibp", proj=0))
    assert len(resumed.history) == 2


def _bundled_model(tmp_path):
    """(model, train data, test data): the bundled model and MNIST subsets when present, else a tiny exported
    MLP and synthetic data."""
    onnx_files = sorted((ROOT / "models").glob("*.onnx"))
    test = ROOT / "models" / "mnist_test_1000.npz"
    train_ = ROOT / "models" / "mnist_train_2000.npz"
    if onnx_files and test.is_file():
        return onnx_files[0], (train_ if train_.is_file() else test), test
    from toolkit import zoo
    from toolkit.ir.onnx_export import export_onnx

    path = tmp_path / "tiny_model.onnx"
    export_onnx(zoo.build("mlp_2x100", "mnist", 0), path)
    rng = np.random.default_rng(1)
    data = tmp_path / "tiny_test.npz"
    np.savez(data, x=rng.uniform(0, 1, (64, 1, 28, 28)).astype(np.float32), y=np.arange(64) % 10)
    return path, data, data


def test_finetune_cli_end_to_end(tmp_path, capsys):
    from toolkit.ir.onnx_import import import_onnx

    model, train_data, test_data = _bundled_model(tmp_path)
    out = tmp_path / "ft.onnx"
    rc = main(["finetune", str(model), "--eps", "0.02", "--train-data", str(train_data), "--test-data", str(test_data),
               "--train-n", "64", "--test-n", "32", "--batch-size", "32", "--pgd-steps", "5", "--reg-d", "0.1",
               "--reg-r", "0.01", "--out", str(out), "--no-progress"])
    text = capsys.readouterr()
    assert rc == 0, text.err
    assert "before" in text.out and "after" in text.out and "certified err % (fastlin)" in text.out
    with h5py.File(tmp_path / "ft.h5", "r") as f:
        assert f.attrs["finished"]
        assert sorted(f["runs"]) == ["after_eps0.02", "before_eps0.02"]
        ep = f["train/epochs"]
        assert len(ep["loss"]) == 1 and np.isfinite(ep["loss"][:]).all() and ep["d"][0] >= 0
        assert {"clean_err", "pgd_err", "certified_err/fastlin"} <= set(f["train/before_after"]) | {"certified_err/" + m for m in f["train/before_after/certified_err"]}
        assert json.loads(f["train"].attrs["config"])["gamma"] == 0.01
    g = import_onnx(out)
    import onnx

    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert props["tightcert.train.command"] == "finetune"
    assert json.loads(props["tightcert.train.config"])["lam"] == 0.1
    x = torch.rand(4, *g.input_spec.shape)
    assert g(x).shape == (4, 10)


# -- bad input: one line, exit 2, nothing written ------------------------------------------------------------

def _sigmoid_model(tmp_path):
    from toolkit.ir.onnx_export import export_onnx

    # Two Sigmoid layers: cp-proj's forward form must pass through the first one (and cannot).
    g = Graph.sequential([Flatten(), Linear(torch.randn(8, 784) * 0.05), Sigmoid(), Linear(torch.randn(8, 8)),
                          Sigmoid(), Linear(torch.randn(10, 8))], (1, 28, 28))
    path = tmp_path / "sig.onnx"
    export_onnx(g, path)
    return path


def _scalar_model(tmp_path):
    from toolkit.ir.onnx_export import export_onnx

    g = Graph.sequential([Flatten(), Linear(torch.randn(8, 784) * 0.05), ReLU(), Linear(torch.randn(1, 8))],
                         (1, 28, 28))
    path = tmp_path / "scalar.onnx"
    export_onnx(g, path)
    return path


@pytest.mark.parametrize("case,extra,match", [
    ("lambda", ["--reg-d", "-0.1"], "--reg-d"),
    ("gamma", ["--reg-r", "-1"], "--reg-r"),
    ("eps-past-eval", ["--eps", "0.3", "--eval-eps", "0.1"], "past the eval eps"),
    ("ramp-past-end", ["--epochs", "2", "--ramp", "3"], "past the end of training"),
    ("ibp-reg", ["--method", "ibp", "--reg-r", "0.1"], "not defined for --method ibp"),
    ("proj-not-cp", ["--method", "crown-ibp", "--proj", "5"], "--proj"),
    ("fusion-not-crown-ibp", ["--method", "ibp", "--loss-fusion"], "crown-ibp only"),
    ("fusion-with-r", ["--method", "crown-ibp", "--loss-fusion", "--reg-r", "0.1"], "no per-class relaxation"),
    ("sigmoid-reg", ["MODEL:sigmoid", "--reg-r", "0.1"], "does not support op Sigmoid"),
    ("sigmoid-proj", ["MODEL:sigmoid", "--proj", "4"], "cp-proj"),
    ("no-classes", ["MODEL:scalar"], "no classification output"),
])
def test_bad_input_one_line_nothing_written(tmp_path, capsys, tiny_npz, case, extra, match):
    outdir = tmp_path / "out"
    outdir.mkdir()
    model = None
    args = []
    for a in extra:
        if a.startswith("MODEL:"):
            model = {"sigmoid": _sigmoid_model, "scalar": _scalar_model}[a[6:]](tmp_path)
        else:
            args.append(a)
    head = ["finetune", str(model)] if model else ["train", "mlp_2x100"]
    if "--eps" not in args:
        args += ["--eps", "0.02"]
    rc = main(head + ["--train-data", str(tiny_npz), "--test-data", str(tiny_npz), "--out",
                      str(outdir / "m.onnx"), "--no-progress"] + args)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and match in err, err
    assert list(outdir.iterdir()) == []


# -- the clean-accuracy guard (issue 16) ---------------------------------------------------------------------

def _flip_guard_setup():
    from toolkit.ir import Graph, Linear
    from toolkit.train.guard import CleanGuard
    from toolkit.train.trainer import Trainer

    g = Graph.sequential([Linear(torch.tensor([[1.0], [-1.0]]), torch.zeros(2))], (1,))
    x, y = torch.tensor([[0.5], [-0.5], [0.2], [-0.2]]), torch.tensor([0, 1, 0, 1])
    trainer = Trainer(g, None, None, None, None, x, y, 2, 3)
    return g, trainer, CleanGuard(x, y, tolerance=10.0, batch_size=3)


def test_clean_guard_passes_then_stops_and_rolls_back():
    g, trainer, guard = _flip_guard_setup()
    guard.start(trainer)
    assert trainer.extra["guard"]["start_clean_err"] == 0.0
    w0 = g.state_dict()[next(iter(g.state_dict()))].clone()
    with torch.no_grad():  # epoch 1: one of four wrong (25 % > 0 + 10): stop, back to the start
        next(g.parameters()).mul_(torch.tensor([[1.0], [1.0]]))
        list(g.parameters())[1].copy_(torch.tensor([0.0, 0.5]))
    trainer.epoch, m = 1, {}
    guard(trainer, m)
    assert m["guard_clean_err"] == 25.0 and trainer.stopped and "rolled back to epoch 0" in trainer.stopped
    assert torch.equal(g.state_dict()[next(iter(g.state_dict()))], w0)
    assert torch.equal(list(g.parameters())[1], torch.zeros(2))
    from toolkit.train.guard import summary

    s = summary(trainer.extra)
    assert s["stopped_at"] == 1 and s["stopped_clean_err"] == 25.0 and "best_state" not in s


def test_clean_guard_keeps_the_last_good_epoch():
    g, trainer, guard = _flip_guard_setup()
    guard.start(trainer)
    with torch.no_grad():
        list(g.parameters())[1].copy_(torch.tensor([0.1, 0.0]))  # still all right: epoch 1 passes
    trainer.epoch = 1
    guard(trainer, {})
    assert trainer.extra["guard"]["best_epoch"] == 1 and not trainer.stopped
    good = [p.clone() for p in g.parameters()]
    with torch.no_grad():
        next(g.parameters()).neg_()  # every image wrong: 100 %
    trainer.epoch = 2
    guard(trainer, {})
    assert "rolled back to epoch 1" in trainer.stopped
    assert all(torch.equal(a, b) for a, b in zip(g.parameters(), good))


def test_keep_best_certified_error_by_hand():
    """On the flip net (logits x, -x) IBP certifies an image at ε iff |x| > ε: at 0.3 the two at ±0.5 of the four,
    50 %; a misclassified image never counts, however wide its margin."""
    g, trainer, guard = _flip_guard_setup()
    g.input_spec.value_range = (-1.0, 1.0)  # the flip net's inputs are signed
    guard.eps, guard.methods = 0.3, ("ibp",)
    assert guard.cert_error(g) == 50.0
    guard.eps = 0.1
    assert guard.cert_error(g) == 0.0
    guard.y = torch.tensor([1, 1, 0, 1])  # the first image is now wrong
    assert guard.cert_error(g) == 25.0 and guard.clean_error(g) == 25.0


@pytest.mark.parametrize("eps", [0.1, 0.15])
def test_keep_best_counts_as_certify_does(eps):
    """The guard's held-out certified error is certify's for the same images, ε and cascade (float64 recheck of
    borderline certificates included): keep-best ranks epochs by the figure the report prints. (At 0.15 CROWN
    certifies an image IBP leaves open: 52.0 against IBP's 52.5 %, so the cascade is what is compared.)"""
    from toolkit.certify import certify
    from toolkit.data import load_dataset
    from toolkit.ir.onnx_import import import_onnx
    from toolkit.report import summarize
    from toolkit.train.guard import CleanGuard

    g = import_onnx(ROOT / "models" / "mnist_mlp_2x100.onnx")
    d = load_dataset("mnist_test_1000", "test", n=200)
    x = torch.as_tensor(d.x, dtype=torch.float32).reshape(-1, 1, 28, 28)
    guard = CleanGuard(x, torch.as_tensor(d.y).long(), 2.0, batch_size=64, eps=eps, methods=("ibp", "crown"))
    run = certify(g, d, eps, ["ibp", "crown"], pgd_steps=5, progress=False).runs[0]
    assert guard.cert_error(g) == pytest.approx(summarize(run)["certified_err"][-1])


def test_keep_best_hands_back_the_best_passing_epoch(monkeypatch):
    """Held-out certified error 50 at the start, then 40 / 45 / 45: training ends with epoch 1's weights; a later
    tie goes to the later epoch; an epoch as bad as the start never replaces it when it is the best."""
    from toolkit.train.guard import CleanGuard, summary

    def run(errs):
        g, trainer, guard = _flip_guard_setup()
        guard.keep_best = True
        it = iter(errs)
        monkeypatch.setattr(CleanGuard, "cert_error", lambda self, graph: next(it))
        guard.start(trainer)
        weights = {0: [p.clone() for p in g.parameters()]}
        for epoch in (1, 2, 3):
            with torch.no_grad():
                list(g.parameters())[1].add_(torch.tensor([0.01, 0.0]))  # a change the clean check passes
            weights[epoch] = [p.clone() for p in g.parameters()]
            trainer.epoch, m = epoch, {}
            guard(trainer, m)
            assert m["guard_cert_err"] == errs[epoch] and not trainer.stopped
        return summary(trainer.extra)["kept_epoch"], [p.clone() for p in g.parameters()], weights

    kept, final, weights = run([50.0, 40.0, 45.0, 45.0])
    assert kept == 1 and all(torch.equal(a, b) for a, b in zip(final, weights[1]))
    kept, final, weights = run([50.0, 40.0, 45.0, 40.0])
    assert kept == 3 and all(torch.equal(a, b) for a, b in zip(final, weights[3]))
    kept, final, weights = run([30.0, 40.0, 45.0, 31.0])
    assert kept == 0 and all(torch.equal(a, b) for a, b in zip(final, weights[0]))


def test_finetune_keep_best_reports_the_starting_weights(tiny_npz, tmp_path, monkeypatch, capsys):
    """Through the API: no epoch beats the start on held-out certified error, so the exported model is the
    starting one, the table says so and the report keeps the per-epoch figures."""
    from toolkit.report.groups import read_train_group
    from toolkit.train.guard import CleanGuard

    errs = iter([30.0, 35.0, 32.0])
    monkeypatch.setattr(CleanGuard, "cert_error", lambda self, graph: next(errs))
    res = train("mlp_2x100", **_train_kw(tiny_npz, tmp_path / "k.onnx", epochs=2, clean_guard=100.0, guard_n=8,
                                         keep_best=True, seed=5))
    assert res.guard["kept_epoch"] == 0 and res.guard["start_cert_err"] == 30.0
    assert "handed back the starting weights" in res.table and "certified error 30.00 % at the start" in res.table
    attrs, _, _ = read_train_group(tmp_path / "k.h5")
    assert attrs["guard"]["cert_err_per_epoch"] == [35.0, 32.0]
    capsys.readouterr()
    assert main(["report", str(tmp_path / "k.h5")]) == 0  # the verdict is re-printed from the report alone
    text = capsys.readouterr().out
    assert "train of mlp_2x100: --method cp, 2 epoch(s) on" in text and res.table.split("\n(clean")[1] in text
    from toolkit import zoo
    from toolkit.ir.onnx_import import import_onnx

    start = zoo.build("mlp_2x100", "mnist", 5)  # the starting weights: the zoo's init for seed 5
    exported = import_onnx(tmp_path / "k.onnx")
    assert all(torch.equal(a, b) for a, b in zip(exported.parameters(), start.parameters()))


def test_keep_best_needs_the_guard(tiny_npz, tmp_path, capsys):
    """Asked for without the guard: one line; finetune's default follows the guard (--no-clean-guard runs)."""
    with pytest.raises(BadInputError, match="needs --clean-guard"):
        train("mlp_2x100", **_train_kw(tiny_npz, tmp_path / "n.onnx", keep_best=True))
    model, train_data, test_data = _bundled_model(tmp_path)
    base = ["finetune", str(model), "--eps", "0.02", "--train-data", str(train_data), "--test-data", str(test_data),
            "--train-n", "64", "--test-n", "8", "--batch-size", "32", "--pgd-steps", "1", "--no-progress"]
    assert main(base + ["--no-clean-guard", "--keep-best", "--out", str(tmp_path / "a.onnx")]) == 2
    assert "needs --clean-guard" in capsys.readouterr().err
    assert main(base + ["--no-clean-guard", "--out", str(tmp_path / "b.onnx")]) == 0
    assert "keep-best" not in capsys.readouterr().out
    assert main(base + ["--out", str(tmp_path / "c.onnx")]) == 0
    assert "keep-best: certified error" in capsys.readouterr().out


def test_guard_data_measures_a_validation_file(tmp_path, capsys):
    """--guard-data: the guard measures the file's first --guard-n images and every training image is trained
    on; a dataset name or a guard-less run is refused in one line."""
    from toolkit.report.groups import read_train_group

    model, train_data, test_data = _bundled_model(tmp_path)
    base = ["finetune", str(model), "--eps", "0.02", "--train-data", str(train_data), "--test-data", str(test_data),
            "--train-n", "64", "--test-n", "8", "--batch-size", "32", "--pgd-steps", "1", "--no-progress"]
    assert main(base + ["--guard-data", str(test_data), "--guard-n", "40", "--out", str(tmp_path / "v.onnx")]) == 0
    out = capsys.readouterr().out
    assert f"clean-accuracy guard: 40 images of {test_data}" in out and "keep-best: certified error" in out
    attrs, _, _ = read_train_group(tmp_path / "v.h5")
    assert attrs["n_train"] == 64 and attrs["guard"]["n"] == 40
    for extra, match in ((["--guard-data", "mnist"], "takes an .npz"),
                         (["--guard-data", str(test_data), "--no-clean-guard"], "needs --clean-guard")):
        assert main(base + extra + ["--out", str(tmp_path / "r.onnx")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and match in err, err
    assert not (tmp_path / "r.onnx").exists()


def test_finetune_guard_stops_training_and_reports(tiny_npz, tmp_path, monkeypatch):
    """Through the API: the guard holds out training images, stops after the epoch that exceeds it, exports the
    last good epoch's weights, and records its verdict in the report and the printed table."""
    from toolkit.report.groups import read_train_group
    from toolkit.train.guard import CleanGuard

    errs = iter([10.0, 11.0, 50.0])  # start, epoch 1 (within +2), epoch 2 (over)
    monkeypatch.setattr(CleanGuard, "clean_error", lambda self, graph: next(errs))
    seen = {}

    def grab(trainer, metrics):
        seen[trainer.epoch] = [p.detach().clone() for p in trainer.graph.parameters()]

    res = train("mlp_2x100", callbacks=[grab], **_train_kw(tiny_npz, tmp_path / "g.onnx", epochs=3,
                                                             clean_guard=2.0, guard_n=8))
    assert len(res.history) == 2 and sorted(seen) == [1, 2]
    assert res.guard["stopped_at"] == 2 and res.guard["best_epoch"] == 1
    assert all(torch.equal(a, b) for a, b in zip(res.graph.parameters(), seen[1]))
    assert "clean-accuracy guard" in res.table and "rolled back to epoch 1" in res.table
    attrs, _, _ = read_train_group(tmp_path / "g.h5")
    g = attrs["guard"]  # decoded by the report layer
    assert g["n"] == 8 and g["clean_err_per_epoch"] == [11.0, 50.0] and attrs["n_train"] == 40


def test_certified_radius_by_bisection_and_the_ramp_start():
    """f(x) = (x, −x): class 0 at x is certified for radius r < x (margin 2(x − r)), never at r = x. Eight
    halvings of [0, 1] give 127/256 for x = 0.5 and 51/256 for x = 0.2; a misclassified image gets 0."""
    from toolkit.ir import Graph, Linear
    from toolkit.train.recipes import certified_radius, start_radius

    g = Graph.sequential([Linear(torch.tensor([[1.0], [-1.0]]), torch.zeros(2))], (1,))
    x, y = torch.tensor([[0.5], [0.2], [0.3]]), torch.tensor([0, 0, 1])
    for method in ("ibp", "fastlin", "crown-ibp"):
        r = certified_radius(g, x, y, 1.0, method)
        assert r.tolist() == [127 / 256, 51 / 256, 0.0], method
    assert start_radius(g, x, y, 1.0, "cp") == 51 / 256


def test_finetune_recipe_defaults(tiny_npz, tmp_path):
    """finetune: lr 1e-4, 1 epoch, a 1-epoch ramp from the model's median certified radius (recorded in the
    report), the clean-accuracy guard on; --eps-start accepts a number or 'auto' only."""
    from toolkit.ir.onnx_export import export_onnx
    from toolkit.report.groups import read_train_group
    from toolkit.train import finetune

    src = tmp_path / "m.onnx"
    export_onnx(train("mlp_2x100", **_train_kw(tiny_npz, tmp_path / "t.onnx", epochs=1)).graph, src)
    kw = {k: v for k, v in _train_kw(tiny_npz, tmp_path / "f.onnx").items() if k not in ("epochs", "ramp", "lr")}
    res = finetune(src, **dict(kw, guard_n=8))
    attrs, _, _ = read_train_group(tmp_path / "f.h5")
    cfg = attrs["config"]
    assert cfg["lr"] == 1e-4 and cfg["epochs"] == 1 and cfg["ramp"] == 1 and cfg["eps_start"] == "auto"
    assert 0 <= attrs["eps_start"] <= kw["eps"] and res.guard["n"] == 8 and attrs["n_train"] == 40
    assert "median certified radius" in res.table
    with pytest.raises(BadInputError, match="--eps-start"):
        finetune(src, **dict(kw, out=str(tmp_path / "g.onnx"), eps_start="soon"))
