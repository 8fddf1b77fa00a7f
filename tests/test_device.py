"""Device handling: the engine follows the tensors' device. The CUDA comparison runs only where a GPU
exists (CI has none); the CPU half always runs so the test cannot pass vacuously everywhere."""
import pytest
import torch

from nets import random_conv
from toolkit.bounds import METHODS, compute_bounds
from toolkit.spec import InputSet, margin_spec

CUDA = torch.cuda.is_available()


def _bounds(device, dtype=torch.float64):
    g = random_conv(seed=4, normalize=True).to(device=device, dtype=dtype)
    x = torch.rand(3, 1, 8, 8, dtype=dtype, generator=torch.Generator().manual_seed(0)).to(device)
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
    for dt in (torch.float32, torch.float64):
        out = _bounds("cpu", dt)
        assert all(v.dtype == dt and torch.isfinite(v).all() for v in out.values())


@pytest.mark.skipif(not CUDA, reason="no CUDA device on this machine")
def test_cuda_matches_cpu():
    cpu, gpu = _bounds("cpu"), _bounds("cuda")
    for m in cpu:
        assert torch.allclose(cpu[m], gpu[m], atol=1e-8), m
