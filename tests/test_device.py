"""Device handling: the engine follows the tensors' device. The CUDA comparison runs only where a GPU
exists (CI has none); the CPU half always runs so the test cannot pass vacuously everywhere."""
import numpy as np
import pytest
import torch

from nets import random_conv
from toolkit.bounds import METHODS, compute_bounds
from toolkit.spec import InputSet, margin_spec

CUDA = torch.cuda.is_available()


def _bounds(device, dtype=torch.float64):
    g = random_conv(seed=4, normalize=True).to(device=device, dtype=dtype)
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).to(device, dtype)
    inp = InputSet.from_eps(x, 0.05, clip=(0.0, 1.0))
    C = margin_spec(torch.tensor([1, 2, 3]), 10, dtype=dtype).to(device)
    out = {}
    for m in METHODS:
        if m == "cp-proj":
            continue
        res = compute_bounds(g, inp, C, m, alpha_iters=2)
        assert res.lower.device.type == torch.device(device).type
        out[m] = res.lower.detach().cpu()
    return out


def test_cpu_bounds_stay_on_cpu_in_float32_and_float64():
    """Each dtype keeps its own, and float32 gives float64's bounds to float32 rounding: a method that
    computed in the wrong dtype or lost precision would show here; α-CROWN ≥ CROWN holds in both."""
    out = {dt: _bounds("cpu", dt) for dt in (torch.float32, torch.float64)}
    for dt, bounds in out.items():
        assert all(v.dtype == dt and torch.isfinite(v).all() for v in bounds.values())
    for m, b64 in out[torch.float64].items():
        assert torch.allclose(out[torch.float32][m].double(), b64, rtol=1e-4, atol=1e-4), m
    for dt, bounds in out.items():
        assert (bounds["alpha-crown"] >= bounds["crown"] - 1e-5).all()


@pytest.mark.skipif(not CUDA, reason="no CUDA device on this machine")
def test_cuda_matches_cpu():
    cpu, gpu = _bounds("cpu"), _bounds("cuda")
    for m in cpu:
        assert torch.allclose(cpu[m], gpu[m], atol=1e-8), m


# -- device discipline without a GPU ------------------------------------------------------------------------
# CI has no GPU, so a tensor made without ``device=`` (it lands on the CPU) would only fail on CUDA. The mode
# below puts every such non-scalar tensor on the meta device instead: mixing it with the real CPU tensors
# then fails here exactly where it would fail on a GPU. 0-dim tensors stay on the CPU (torch lets CPU
# scalars meet CUDA tensors); a factory given a generator follows the generator's device.

from torch.overrides import TorchFunctionMode  # noqa: E402

from nets import random_conv as _random_conv  # noqa: E402
from toolkit.bounds import relaxed_forward  # noqa: E402
from toolkit.certify.core import certify_batch  # noqa: E402
from toolkit.train.methods import make_loss  # noqa: E402
from toolkit.train.regularizers import reg_d, reg_r  # noqa: E402
from toolkit.train.schedules import BetaSchedule, EpsSchedule  # noqa: E402

_FACTORIES = {torch.zeros, torch.ones, torch.empty, torch.full, torch.arange, torch.eye, torch.rand,
              torch.randn, torch.randint, torch.randperm, torch.linspace, torch.logspace, torch.tensor}


class ImplicitDeviceIsMeta(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.redirected = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in _FACTORIES and kwargs.get("device") is None:
            if kwargs.get("generator") is not None:
                kwargs["device"] = kwargs["generator"].device
            else:
                out = func(*args, **kwargs)
                if out.dim() == 0:
                    return out
                kwargs["device"] = "meta"
                self.redirected += 1
        return func(*args, **kwargs)


def test_implicit_device_mode_catches_a_tensor_made_on_the_default_device():
    a = torch.ones(3, device="cpu")
    with ImplicitDeviceIsMeta() as mode, pytest.raises(RuntimeError):
        _ = a + torch.zeros(3)  # the bug the mode exists to find
    assert mode.redirected == 1


def _tiny_problem(dtype=torch.float32):
    g = _random_conv(seed=4, normalize=True, residual=True, dtype=dtype)
    x = torch.rand(3, 1, 8, 8, dtype=dtype, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([1, 2, 3])
    return g, x, y, InputSet.from_eps(x, 0.05, clip=(0.0, 1.0))


def _same(a, b):
    return a.device.type == "cpu" and torch.equal(a.detach(), b.detach())


# Each test also runs without the mode and asks for identical numbers: some ops accept a meta operand
# silently (an index_put_ with meta indices writes nothing), which only a wrong number can reveal.

@pytest.mark.parametrize("method", [m for m in METHODS])
@pytest.mark.parametrize("certify_form", [False, True])
def test_bounds_make_no_tensor_on_the_default_device(method, certify_form):
    g, x, y, inp = _tiny_problem()
    kw = dict(intersect_ibp=True, optimum=False) if certify_form else {}

    def run():
        if method == "cp-proj":
            kw["generator"] = torch.Generator().manual_seed(0)
        res = compute_bounds(g, inp, margin_spec(y, 10), method, alpha_iters=2, **kw)
        out = [res.lower]
        if not certify_form and method in ("fastlin", "crown", "crown-ibp"):
            out += [relaxed_forward(g, res)[g.output], reg_d(g, res), reg_r(g, res)]
        return out

    ref = run()
    with ImplicitDeviceIsMeta():
        got = run()
    assert torch.isfinite(ref[0]).all() and all(_same(a, b) for a, b in zip(got, ref))


def test_fastlin_backward_form_makes_no_tensor_on_the_default_device():
    g, x, y, inp = _tiny_problem()
    run = lambda: compute_bounds(g, inp, margin_spec(y, 10), "fastlin", fastlin_form="backward").lower  # noqa: E731
    ref = run()
    with ImplicitDeviceIsMeta():
        assert _same(run(), ref)


def test_certify_batch_makes_no_tensor_on_the_default_device():
    g, x, y, inp = _tiny_problem()
    run = lambda: certify_batch(g, inp, y, [0, 1, 2], ["ibp", "crown-ibp", "fastlin", "crown", "alpha-crown"],  # noqa
                                10, pgd_steps=5)
    ref = run()
    with ImplicitDeviceIsMeta():
        rows, out, _ = run()
    assert np.array_equal(rows["pgd_margin"], ref[0]["pgd_margin"])
    for m, lb in ref[1]["margin_lb"].items():
        assert np.array_equal(out["margin_lb"][m], lb, equal_nan=True), m


@pytest.mark.parametrize("method,kw", [("cp", dict(lam=0.1, gamma=0.1)), ("cp", dict(gamma=0.1, proj=5)),
                                       ("crown-ibp", dict(lam=0.1, gamma=0.1)), ("ibp", {})])
def test_training_losses_make_no_tensor_on_the_default_device(method, kw):
    g, x, y, _ = _tiny_problem()
    if method == "crown-ibp":
        kw = dict(kw, beta=BetaSchedule(EpsSchedule(0.05, 10), 0.0))

    def run():
        g.zero_grad(set_to_none=True)
        parts = make_loss(method, **kw)(g, x, y, 0.05, 3)
        parts.loss.backward()
        return [parts.loss] + [p.grad.clone() for p in g.parameters()]

    ref = run()
    with ImplicitDeviceIsMeta():
        got = run()
    assert torch.isfinite(ref[0]) and all(_same(a, b) for a, b in zip(got, ref))
