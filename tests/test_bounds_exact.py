"""Exact references on conv, pooling, BatchNorm and residual nets (issue 15): for every method and every
variant the callers run (certify's form, the trainer's, α scopes, IBP intersection, β split terms),

    bound ≤ triangle-LP optimum with the method's own intermediate bounds ≤ exact minimum (MILP),

with scipy's HiGHS. The triangle relaxation is the tightest per-neuron convex relaxation, so every linear
relaxation bound built on the same intermediate bounds (IBP, Fast-Lin, CROWN, α-CROWN with any slopes) is a
feasible dual point of its LP; the MILP (big-M on IBP bounds, which only have to be valid) is the true minimum
of the spec over the input set. Five architectures × three seeds × {[0, 1] box, no box}, float64.
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy.optimize import Bounds, LinearConstraint, milp

from nets import random_conv, random_pool_net, wong_conv
from toolkit.bounds import beta_bounds, compute_bounds, domain_bounds, ibp_bounds, margin_lower_bound
from toolkit.bounds.ops import rule_for
from toolkit.ir import INPUT
from toolkit.spec import InputSet, margin_spec

DT = torch.float64
TOL = 1e-6  # HiGHS' tolerances (1e-7 relative) on values of order 1-10

ARCHS = {
    "conv": lambda s: random_conv(seed=s, k=5),
    "conv_res_norm": lambda s: random_conv(seed=s, residual=True, normalize=True, k=5),
    "pool_bn_pad": random_pool_net,
    "wong_conv": lambda s: wong_conv(seed=s),
    "wong_res_norm": lambda s: wong_conv(seed=s, residual=True, normalize=True),
}
#: ε per architecture: some tens of neurons unstable under IBP (more would make the MILPs slow: residual
#: nets and input normalisations widen IBP's bounds fast)
EPS = {"conv": 0.04, "conv_res_norm": 0.003, "pool_bn_pad": 0.03, "wong_conv": 0.02, "wong_res_norm": 0.002}
CASES = [(a, s, box) for a in ARCHS for s in (0, 1, 2) for box in (True, False)]
#: (method, options): the forms the engine is called in (certify: IBP intersection and no optimum record)
VARIANTS = {"ibp": ("ibp", {}), "crown-ibp": ("crown-ibp", {}), "fastlin": ("fastlin", {}),
            "fastlin/backward": ("fastlin", {"fastlin_form": "backward"}),
            "fastlin/intersect": ("fastlin", {"intersect_ibp": True, "optimum": False}),
            "crown": ("crown", {}), "crown/intersect": ("crown", {"intersect_ibp": True, "optimum": False}),
            "alpha-crown/all": ("alpha-crown", {"alpha_iters": 5, "alpha_scope": "all"}),
            "alpha-crown/final": ("alpha-crown", {"alpha_iters": 5, "alpha_scope": "final"}),
            "alpha-crown/certify": ("alpha-crown", {"alpha_iters": 5, "intersect_ibp": True, "optimum": False})}


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # tiny nets: see test_bounds_soundness
    yield


class Encoding:
    """The graph as linear constraints over one variable per input cell and per node output cell, with each
    ReLU either relaxed by its triangle or encoded exactly with one binary per unstable neuron."""

    def __init__(self, graph, lo, hi, pre_bounds, exact, fixed=()):
        self.graph, self.cols, n = graph, {}, 0
        shapes = graph.shapes(dtype=DT)
        for key in [INPUT, *graph.order]:
            size = int(np.prod(shapes[key]))
            self.cols[key] = (n, n + size)
            n += size
        self.rows, self.lb, self.ub, self.integrality = [], [], [], [0] * n
        self.var_lo, self.var_hi = np.full(n, -np.inf), np.full(n, np.inf)
        a, b = self.cols[INPUT]
        self.var_lo[a:b], self.var_hi[a:b] = lo.flatten().numpy(), hi.flatten().numpy()
        self.n = n
        fixed = {(k, i): active for k, i, active in fixed}
        for key, node, ins in graph:
            if rule_for(node).relu:
                l, u = (t.detach().flatten().numpy() for t in pre_bounds[ins[0]])
                self._relu(key, ins[0], l, u, exact, {i: v for (k, i), v in fixed.items() if k == ins[0]})
            elif rule_for(node).forward_form == "add":
                self._affine(key, [(ins[0], None), (ins[1], None)], np.zeros(self._size(key)))
            else:
                W, b = self._jacobian(node, shapes[ins[0]])
                self._affine(key, [(ins[0], W)], b)

    def _size(self, key):
        a, b = self.cols[key]
        return b - a

    def _jacobian(self, node, in_shape):
        x0 = torch.zeros(1, *in_shape, dtype=DT)
        with torch.no_grad():
            b = node(x0).flatten()
            eye = torch.eye(int(np.prod(in_shape)), dtype=DT).reshape(-1, *in_shape)
            W = (node(eye).reshape(eye.shape[0], -1) - b).T
        return W.numpy(), b.numpy()

    def _row(self, coeffs, lb, ub):
        row = np.zeros(self.n)
        for (key, idx), c in coeffs:
            row[self.cols[key][0] + idx] += c
        self.rows.append(row)
        self.lb.append(lb)
        self.ub.append(ub)

    def _affine(self, key, inputs, bias):
        a, b = self.cols[key]
        for j in range(b - a):  # out_j − Σ W_ji in_i = b_j
            row = np.zeros(self.n)
            row[a + j] = 1.0
            for k, W in inputs:
                s = self.cols[k][0]
                if W is None:
                    row[s + j] -= 1.0
                else:
                    row[s:s + W.shape[1]] -= W[j]
            self.rows.append(row)
            self.lb.append(bias[j])
            self.ub.append(bias[j])

    def _relu(self, key, pre, l, u, exact, fixed):
        for j in range(len(l)):
            z, x = (key, j), (pre, j)
            lj, uj = l[j], u[j]
            if j in fixed:  # a branch-and-bound split: the neuron's sign is given
                lj, uj = (max(lj, 0.0), uj) if fixed[j] else (lj, min(uj, 0.0))
            xi = self.cols[pre][0] + j
            self.var_lo[xi], self.var_hi[xi] = max(self.var_lo[xi], lj), min(self.var_hi[xi], uj)
            if lj >= 0:
                self._row([(z, 1.0), (x, -1.0)], 0.0, 0.0)
            elif uj <= 0:
                self._row([(z, 1.0)], 0.0, 0.0)
            else:
                self._row([(z, 1.0)], 0.0, np.inf)              # z ≥ 0
                self._row([(z, 1.0), (x, -1.0)], 0.0, np.inf)   # z ≥ x
                if exact:  # z ≤ x − l(1 − δ), z ≤ u δ with δ ∈ {0, 1}
                    d = self.n
                    self.n += 1
                    for r in self.rows:
                        r.resize(self.n, refcheck=False)
                    self.var_lo, self.var_hi = np.append(self.var_lo, 0.0), np.append(self.var_hi, 1.0)
                    self.integrality.append(1)
                    self.cols[f"_d{d}"] = (d, d + 1)
                    self._row([(z, 1.0), (x, -1.0), ((f"_d{d}", 0), -lj)], -np.inf, -lj)
                    self._row([(z, 1.0), ((f"_d{d}", 0), -uj)], -np.inf, 0.0)
                else:  # the chord: z ≤ u(x − l)/(u − l)
                    s = uj / (uj - lj)
                    self._row([(z, 1.0), (x, -s)], -np.inf, -s * lj)

    def minimise(self, c_out) -> float:
        cost = np.zeros(self.n)
        a, b = self.cols[self.graph.output]
        cost[a:b] = c_out
        A = np.array([np.resize(r, self.n) for r in self.rows])
        res = milp(cost, constraints=LinearConstraint(sp.csr_matrix(A), self.lb, self.ub),
                   bounds=Bounds(self.var_lo, self.var_hi), integrality=np.array(self.integrality),
                   options={"time_limit": 60})
        if res.status == 2:  # infeasible: an empty split domain (every bound holds on it vacuously)
            return float("inf")
        assert res.status == 0, res.message
        return float(res.fun)


def make_case(arch, seed, box):
    g = ARCHS[arch](seed)
    gen = torch.Generator().manual_seed(1000 * seed + 7 * box + len(arch))
    shape = g.input_spec.shape
    eps = EPS[arch]
    if box:
        inp = InputSet.from_eps(torch.rand(1, *shape, generator=gen, dtype=DT), eps, clip=(0.0, 1.0))
    else:
        inp = InputSet.from_eps(torch.randn(1, *shape, generator=gen, dtype=DT) * 0.5, eps, clip=None)
    k = g.output_size()
    with torch.no_grad():
        label = g(inp.x).argmax(1)
    C = torch.cat([margin_spec(label, k, dtype=DT)[:, :1], torch.randn(1, 1, k, generator=gen, dtype=DT)], 1)
    return g, inp, C


def _unstable(bounds, graph):
    return sum(int(((l < 0) & (u > 0)).sum()) for k, (l, u) in bounds.items()
               if any(rule_for(graph.nodes[c]).relu and graph.edges[c][0] == k for c in graph.order))


@pytest.mark.parametrize("arch,seed,box", CASES, ids=[f"{a}-s{s}-{'box' if b else 'nobox'}" for a, s, b in CASES])
def test_every_method_below_its_lp_below_the_exact_minimum(arch, seed, box):
    g, inp, C = make_case(arch, seed, box)
    ibp = ibp_bounds(g, inp.lo, inp.hi)
    exact_enc = Encoding(g, inp.lo[0], inp.hi[0], ibp, exact=True)
    exact = [exact_enc.minimise(C[0, s].numpy()) for s in range(C.shape[1])]
    assert _unstable(ibp, g) > 0  # the case is not trivially exact
    for name, (method, opts) in VARIANTS.items():
        res = compute_bounds(g, inp, C, method, **opts)
        lp = Encoding(g, inp.lo[0], inp.hi[0], res.bounds, exact=False)
        for s in range(C.shape[1]):
            bound, opt = res.lower[0, s].item(), lp.minimise(C[0, s].numpy())
            assert bound <= opt + TOL * (1 + abs(opt)), (name, s, bound, opt)
            assert opt <= exact[s] + TOL * (1 + abs(exact[s])), (name, s, opt, exact[s])
    # certify's entry point (margins of the label, IBP intersection, no optimum): its margin against the first
    # other class is the first spec above
    label = C[0, 0].argmax().reshape(1)
    other = C[0, 0].argmin().item()
    for method in ("crown", "fastlin", "alpha-crown"):
        m = margin_lower_bound(g, inp, label, method, alpha_iters=5)
        assert m[0, other].item() <= exact[0] + TOL * (1 + abs(exact[0])), method


@pytest.mark.parametrize("arch", ["conv", "wong_res_norm", "pool_bn_pad"])
def test_split_domains_and_beta_terms_below_the_exact_minimum_of_the_domain(arch):
    """Branch and bound's bounds (``domain_bounds`` clamped to a split, ``beta_bounds``' split terms) on
    the two children of a split neuron, against the MILP restricted to each child."""
    g, inp, C = make_case(arch, 0, True)
    shapes = g.shapes(dtype=DT)
    ibp = ibp_bounds(g, inp.lo, inp.hi)
    pre = [k for k in g.order if any(rule_for(g.nodes[c]).relu and g.edges[c][0] == k for c in g.order)]
    key, idx = next((k, int(((ibp[k][0] < 0) & (ibp[k][1] > 0)).flatten().nonzero()[0]))
                    for k in reversed(pre) if ((ibp[k][0] < 0) & (ibp[k][1] > 0)).any())
    feasible = 0
    for active in (True, False):
        mask = torch.zeros(1, *shapes[key], dtype=torch.bool)
        mask.view(-1)[idx] = True
        clamps = {key: (mask, torch.zeros_like(mask)) if active else (torch.zeros_like(mask), mask)}
        with torch.no_grad():  # as the solver calls it (its graphs hold no gradients)
            bounds, _, _ = domain_bounds(g, inp, shapes, clamps)
        exact_enc = Encoding(g, inp.lo[0], inp.hi[0], ibp, exact=True, fixed=[(key, idx, active)])
        exact = [exact_enc.minimise(C[0, s].numpy()) for s in range(C.shape[1])]
        beta = beta_bounds(g, inp, C, bounds, shapes, [((key, idx, active),)], iters=5)
        crown = compute_bounds(g, inp, C, "crown", bounds=bounds).lower
        feasible += exact[0] < float("inf")
        for s in range(C.shape[1]):
            assert beta[0, s].item() <= exact[s] + TOL * (1 + abs(exact[s]))
            assert crown[0, s].item() <= exact[s] + TOL * (1 + abs(exact[s]))
    assert feasible >= 1  # the two children cover the input set
