"""The bound engine's hand-written autograd functions against the element-wise expressions they replace: same
values, same (sub)gradients, also on exact zeros where the subgradient is a choice."""
import pytest
import torch

from toolkit.bounds.backward import concretize
from toolkit.bounds.ops import ReLURule, _ReluLines


def _with_zeros(t):
    t = t.clone()
    t.view(-1)[::5] = 0.0  # ties: the subgradient choice at 0 must match the element-wise form
    return t


def _elementwise_concretize(g, const, lo, hi, upper):
    n, s = g.shape[:2]
    mid, rad = ((hi + lo) / 2).reshape(n, 1, -1), ((hi - lo) / 2).reshape(n, 1, -1)
    gf = g.reshape(n, s, -1)
    return const + (gf * mid).sum(-1) + (1.0 if upper else -1.0) * (gf.abs() * rad).sum(-1)


@pytest.mark.parametrize("upper", [False, True])
@pytest.mark.parametrize("specs", [3, 700])  # 700 specs of 2×3×4×4 span several cache-sized slices
def test_concretize_equals_the_elementwise_form_with_gradients(upper, specs):
    gen = torch.Generator().manual_seed(specs)
    x = torch.rand(2, 3, 4, 4, generator=gen, dtype=torch.float64)
    lo, hi = x - 0.1, x + 0.2
    g0 = _with_zeros(torch.randn(2, specs, 3, 4, 4, generator=gen, dtype=torch.float64))
    const = torch.randn(2, specs, generator=gen, dtype=torch.float64)
    weights = torch.randn(2, specs, generator=gen, dtype=torch.float64)
    with torch.no_grad():  # the sliced no-grad path
        torch.testing.assert_close(concretize(g0, const, lo, hi, upper),
                                   _elementwise_concretize(g0, const, lo, hi, upper), rtol=1e-12, atol=1e-12)
    grads = []
    for f in (concretize, _elementwise_concretize):
        g = g0.clone().requires_grad_(True)
        out = f(g, const, lo, hi, upper)
        grads.append((out.detach(), torch.autograd.grad((out * weights).sum(), g)[0]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=1e-12)


def test_concretize_passes_gradients_to_a_box_that_needs_them():
    x = torch.rand(2, 5, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda g, x: concretize(g, 0.0, x - 0.1, x + 0.1), (g, x))


@pytest.mark.parametrize("windowed", [False, True])  # b̄ per neuron (dense rule) or per window cell (windows)
@pytest.mark.parametrize("per_spec", [False, True])  # CROWN's shared slopes; α-CROWN's slope per spec
def test_relu_lines_equal_the_elementwise_form_with_gradients(per_spec, windowed):
    gen = torch.Generator().manual_seed(int(per_spec) + 2 * int(windowed))
    n, s, shape = 3, 4, (2, 5)
    a0 = _with_zeros(torch.randn(n, s, *shape, generator=gen, dtype=torch.float64))
    lo0 = torch.rand(n, s if per_spec else 1, *shape, generator=gen, dtype=torch.float64)
    d0 = torch.rand(n, s if per_spec else 1, *shape, generator=gen, dtype=torch.float64)
    b0 = torch.rand(*((n, s, *shape) if windowed else (n, 10, 1)), generator=gen, dtype=torch.float64)
    leaves = [t.clone().requires_grad_(True) for t in (a0, lo0, d0, b0)]
    assert torch.autograd.gradcheck(lambda *t: _ReluLines.apply(*t, windowed), tuple(
        t.clone().requires_grad_(True) for t in (torch.randn_like(a0), lo0, d0, b0)))

    def elementwise(a, lo, d, b):
        a_neg = a * (a <= 0).to(a.dtype)  # the earlier form: subgradient 1 at ν = 0
        bias = (a_neg * b).flatten(2).sum(-1) if windowed else (a_neg.reshape(n, s, -1) @ b).squeeze(-1)
        return torch.addcmul(lo * a, a_neg, d), bias

    w = [torch.randn(n, s, *shape, generator=gen, dtype=torch.float64),
         torch.randn(n, s, generator=gen, dtype=torch.float64)]
    results = []
    for f in (lambda *t: _ReluLines.apply(*t, windowed), elementwise):
        out = f(*leaves)
        results.append([o.detach() for o in out] + list(torch.autograd.grad(
            sum((o * wi).sum() for o, wi in zip(out, w)), leaves)))
    torch.testing.assert_close(results[0], results[1], rtol=1e-12, atol=1e-12)


def test_the_relu_rule_uses_the_lean_function_under_autograd():
    a = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    lo, d, b = (torch.rand(2, 1, 4, dtype=torch.float64) for _ in range(3))
    a_in, bias, _ = ReLURule._rule(a, lo, d, b.transpose(1, 2), symmetric=False, in_place=False)
    assert type(a_in.grad_fn).__name__ == "_ReluLinesBackward"
