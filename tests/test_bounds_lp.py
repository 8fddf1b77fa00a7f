"""Exact LPs of the ReLU relaxations (scipy ``linprog``) on tiny MLPs, and the reconstruction identity.

Paper-spec §1.4 and §11.1 property 5, with the SAME intermediate bounds as the method under test:
  - the triangle LP (z ≥ 0, z ≥ x, z ≤ ā x + b̄, l ≤ x ≤ u) is the tightest layer-wise relaxation, so its
    optimum is ≥ the Fast-Lin and CROWN bounds (they are feasible dual points of it), and ≤ the true minimum;
  - the two-line LP built from the method's own slopes (a x ≤ z ≤ ā x + b̄) plus the box l ≤ x ≤ u equals
    the closed form for fastlin and crown (its optimum lies inside the boxes);
  - the same two facts per neuron for the intermediate bounds of every layer after the first.
§2.3 / §11.1.1: the forward pass of the relaxation's linear network from z*₁ reproduces the bound exactly.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import linprog

from nets import random_conv, random_mlp, random_pool_net, wong_conv
from toolkit.attack.pgd import pgd_attack
from toolkit.bounds import compute_bounds, relaxed_forward
from toolkit.ir import INPUT
from toolkit.ir import nodes as N
from toolkit.spec import InputSet, margin_spec

DT = torch.float64
LP_TOL = 1e-7       # HiGHS' feasibility/optimality tolerances are ~1e-7 relative


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)   # tiny nets: see test_bounds_soundness
    yield


MLPS = {
    "3-5-5-3": lambda: random_mlp([3, 5, 5, 3], seed=11, scale=1.5),
    "2-6-6-6-3": lambda: random_mlp([2, 6, 6, 6, 3], seed=12, scale=1.5),
    "4-6-4-4": lambda: random_mlp([4, 6, 4, 4], seed=13, scale=2.0),
}
CASES = [(net, box) for net in MLPS for box in (True, False)]
CASE_IDS = [f"{n}-{'box' if b else 'nobox'}" for n, b in CASES]


def make_case(net, box, n=3):
    g = MLPS[net]()
    gen = torch.Generator().manual_seed(len(net) + 7 * box)
    d = g.input_spec.shape[0]
    eps = torch.exp(torch.empty(n, dtype=DT).uniform_(math.log(0.05), math.log(0.6), generator=gen))
    if box:
        inp = InputSet.from_eps(torch.rand(n, d, generator=gen, dtype=DT), eps, clip=(0.0, 1.0))
    else:
        inp = InputSet.from_eps(torch.randn(n, d, generator=gen, dtype=DT), eps, clip=None)
    k = g.output_size()
    with torch.no_grad():
        labels = g(inp.x).argmax(1)
    C = torch.cat([margin_spec(labels, k, dtype=DT), torch.randn(n, 1, k, generator=gen, dtype=DT)], 1)
    return g, inp, C


def mlp_layers(g):
    """[(W, b, pre_key, relu_key or None)] for a Linear/ReLU chain."""
    out, nodes = [], list(g)
    for i, (key, node, _) in enumerate(nodes):
        if isinstance(node, N.Linear):
            nxt = nodes[i + 1] if i + 1 < len(nodes) else None
            relu = nxt[0] if nxt is not None and isinstance(nxt[1], N.ReLU) else None
            out.append((node.weight.detach().numpy(), node.bias.detach().numpy(), key, relu))
        elif not isinstance(node, N.ReLU):
            raise AssertionError(f"not an MLP: {node.op}")
    return out


class ReluLP:
    """LP over the variables [z_1, x_1, z_2, x_2, ..., x_m] of a Linear/ReLU chain up to layer m.

    relax: "triangle", or "lines" with per-neuron slopes (lower a, upper ā, intercept b̄) given for the
    unstable neurons. Stable neurons are exact (z = x or z = 0); every hidden x has the box l ≤ x ≤ u.
    """

    def __init__(self, layers, lo, hi, bounds, relax="triangle", lines=None, upto=None):
        self.idx, self.eq, self.ub, self.var_bounds = 0, [], [], []
        z = self._vars(lo.size, list(zip(lo, hi)))
        upto = len(layers) if upto is None else upto
        for i, (W, b, pre, relu) in enumerate(layers[:upto]):
            last = i == upto - 1
            l, u = (None, None) if last else bounds[pre]
            x = self._vars(W.shape[0], [(None, None)] * W.shape[0] if last else list(zip(l, u)))
            for j in range(W.shape[0]):     # x_j − W_j·z = b_j
                self.eq.append(({x[j]: 1.0, **{z[t]: -W[j, t] for t in range(W.shape[1])}}, b[j]))
            if last:
                self.out = x
                break
            z = self._vars(W.shape[0], [(None, None)] * W.shape[0])
            for j in range(W.shape[0]):
                self._relu(x[j], z[j], l[j], u[j], relax, None if lines is None else
                           tuple(v[relu][j] for v in lines))

    def _vars(self, n, bnds):
        ids = list(range(self.idx, self.idx + n))
        self.idx += n
        self.var_bounds += bnds
        return ids

    def _relu(self, x, z, l, u, relax, line):
        if l >= 0:
            self.eq.append(({z: 1.0, x: -1.0}, 0.0))
        elif u <= 0:
            self.eq.append(({z: 1.0}, 0.0))
        elif relax == "triangle":
            a_up = u / (u - l)
            self.ub += [({z: -1.0}, 0.0), ({x: 1.0, z: -1.0}, 0.0), ({z: 1.0, x: -a_up}, -l * a_up)]
        else:
            a_lo, a_up, b_up = line
            self.ub += [({x: a_lo, z: -1.0}, 0.0), ({z: 1.0, x: -a_up}, b_up)]

    def minimize(self, c):
        """min c·x_out; returns the optimum (raises if the LP is not solved)."""
        obj = np.zeros(self.idx)
        obj[self.out] = c
        mat = lambda rows: (np.array([[r.get(i, 0.0) for i in range(self.idx)] for r, _ in rows]),
                            np.array([v for _, v in rows])) if rows else (None, None)
        (A_eq, b_eq), (A_ub, b_ub) = mat(self.eq), mat(self.ub)
        sol = linprog(obj, A_ub=A_ub, b_ub=b_ub, A_eq=A_eq, b_eq=b_eq, bounds=self.var_bounds, method="highs")
        assert sol.status == 0, f"LP not solved: {sol.message}"
        return sol.fun


def sample_bounds(res, n):
    return {k: (l[n].detach().numpy(), u[n].detach().numpy()) for k, (l, u) in res.bounds.items()}


def method_lines(res, n):
    """The method's own lines per ReLU key: (lower slope, upper slope, upper intercept) for sample n."""
    take = lambda attr: {k: getattr(lay, attr)[n, 0].detach().numpy() for k, lay in res.layers.items()}
    return take("lower_slope"), take("upper_slope"), take("upper_intercept")


def close(a, b, scale):
    return abs(a - b) <= LP_TOL * (1 + abs(scale))


def true_minimum(g, inp, C):
    """min over 10,000 uniform samples and a PGD per spec: an attained value, ≥ the true minimum."""
    n, s, _ = C.shape
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        pts = inp.lo.unsqueeze(1) + (inp.hi - inp.lo).unsqueeze(1) * torch.rand(n, 10_000, *inp.lo.shape[1:],
                                                                               generator=gen, dtype=DT)
        vals = torch.einsum("nmk,nsk->nms", g(pts.reshape(n * 10_000, -1)).reshape(n, 10_000, -1), C)
    rep = InputSet(inp.lo.repeat_interleave(s, 0), inp.hi.repeat_interleave(s, 0), inp.x.repeat_interleave(s, 0))
    att = pgd_attack(g, rep, C.reshape(n * s, 1, -1), steps=40, restarts=2, stop_below=None)
    return torch.minimum(vals.min(1).values, att.margin.reshape(n, s))


# --- final bound vs the LPs ---------------------------------------------------------------------------------

@pytest.mark.parametrize("net,box", CASES, ids=CASE_IDS)
def test_triangle_lp_between_relaxation_bounds_and_true_minimum(net, box):
    g, inp, C = make_case(net, box)
    layers = mlp_layers(g)
    tmin = true_minimum(g, inp, C)
    for method in ("fastlin", "crown"):
        res = compute_bounds(g, inp, C, method)
        for n in range(len(inp)):
            lp = ReluLP(layers, inp.lo[n].numpy(), inp.hi[n].numpy(), sample_bounds(res, n))
            for s in range(C.shape[1]):
                opt, bnd, low = lp.minimize(C[n, s].numpy()), res.lower[n, s].item(), tmin[n, s].item()
                assert opt >= bnd - LP_TOL * (1 + abs(bnd)), f"{method}: triangle LP {opt} < bound {bnd}"
                assert opt <= low + LP_TOL * (1 + abs(low)), f"triangle LP {opt} above an attained {low}"


@pytest.mark.parametrize("net,box", CASES, ids=CASE_IDS)
def test_two_line_lp_with_box_equals_closed_form(net, box):
    g, inp, C = make_case(net, box)
    layers = mlp_layers(g)
    for method in ("fastlin", "crown"):
        res = compute_bounds(g, inp, C, method)
        for n in range(len(inp)):
            lp = ReluLP(layers, inp.lo[n].numpy(), inp.hi[n].numpy(), sample_bounds(res, n), "lines",
                        method_lines(res, n))
            for s in range(C.shape[1]):
                opt, bnd = lp.minimize(C[n, s].numpy()), res.lower[n, s].item()
                assert close(opt, bnd, bnd), f"{method} sample {n} spec {s}: two-line LP {opt} != {bnd}"


def test_lp_cases_have_unstable_neurons():
    """Guard: the LP comparisons above are only meaningful if relaxations are actually used."""
    for net, box in CASES:
        g, inp, C = make_case(net, box)
        res = compute_bounds(g, inp, C, "crown")
        frac = torch.cat([lay.unstable.flatten() for lay in res.layers.values()]).double().mean()
        assert frac > 0.15, f"{net}: only {frac:.0%} unstable neurons"


# --- intermediate bounds vs the LPs -------------------------------------------------------------------------

@pytest.mark.parametrize("method", ("fastlin", "crown"))
@pytest.mark.parametrize("net,box", CASES, ids=CASE_IDS)
def test_intermediate_bounds_are_lp_dual_points(net, box, method):
    """Per neuron of every hidden layer after the first: triangle LP over the earlier bounds ⊆ [l, u]
    (l, u are feasible dual values), and for fastlin the two-line LP with its own slopes is exactly l, u."""
    g, inp, C = make_case(net, box, n=2)
    layers = mlp_layers(g)
    res = compute_bounds(g, inp, C, method)
    for n in range(len(inp)):
        bnd = sample_bounds(res, n)
        lines = method_lines(res, n)
        for m in range(2, len(layers)):
            pre = layers[m - 1][2]
            l, u = bnd[pre]
            tri = ReluLP(layers, inp.lo[n].numpy(), inp.hi[n].numpy(), bnd, upto=m)
            two = ReluLP(layers, inp.lo[n].numpy(), inp.hi[n].numpy(), bnd, "lines", lines, upto=m)
            for j in range(l.size):
                e = np.eye(l.size)[j]
                lo_tri, hi_tri = tri.minimize(e), -tri.minimize(-e)
                assert lo_tri >= l[j] - LP_TOL * (1 + abs(l[j])), f"{pre}[{j}] lower {l[j]} > LP {lo_tri}"
                assert hi_tri <= u[j] + LP_TOL * (1 + abs(u[j])), f"{pre}[{j}] upper {u[j]} < LP {hi_tri}"
                if method == "fastlin":
                    # Fast-Lin's intermediate slopes do not depend on the neuron, so the recorded final-pass
                    # lines are the ones its intermediate passes used too.
                    assert close(two.minimize(e), l[j], l[j]), f"{pre}[{j}]: two-line LP != fastlin lower"
                    assert close(-two.minimize(-e), u[j], u[j]), f"{pre}[{j}]: two-line LP != fastlin upper"


# --- reconstruction identity --------------------------------------------------------------------------------

RECON_NETS = {
    "mlp": lambda: random_mlp([4, 8, 8, 8, 5], seed=21, scale=1.5),
    "conv": lambda: random_conv(seed=22, k=5),
    "conv_residual_normalize": lambda: random_conv(seed=23, residual=True, normalize=True, channels=2, k=5),
    "wong_residual": lambda: wong_conv(seed=24, residual=True),
    "pool": lambda: random_pool_net(seed=25),
}


@pytest.mark.parametrize("box", (True, False), ids=("box", "nobox"))
@pytest.mark.parametrize("method", ("fastlin", "crown", "crown-ibp"))
@pytest.mark.parametrize("net", list(RECON_NETS))
def test_reconstruction_identity(net, method, box):
    """C·x*_out of the relaxation's linear network at z*₁ = x + δ*₀ equals the bound (§11.1.1)."""
    g = RECON_NETS[net]()
    gen = torch.Generator().manual_seed(31)
    x = torch.rand(3, *g.input_spec.shape, generator=gen, dtype=DT)
    inp = InputSet.from_eps(x, torch.tensor([0.02, 0.1, 0.3], dtype=DT), clip=(0.0, 1.0) if box else None)
    k = g.output_size()
    C = torch.randn(3, 4, k, generator=gen, dtype=DT)
    res = compute_bounds(g, inp, C, method)
    xs = relaxed_forward(g, res)
    value = (xs[g.output].reshape(3, 4, k) * C).sum(-1)
    assert torch.allclose(value, res.lower, rtol=1e-9, atol=1e-9), (value - res.lower).abs().max()
    assert torch.equal(xs[INPUT], res.z0)
    n_unstable = sum(int(lay.unstable.sum()) for lay in res.layers.values())
    assert n_unstable > 0    # otherwise the identity is trivial
