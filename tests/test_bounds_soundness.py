"""Soundness of every bound method on random small nets (issue 4, "Soundness tests").

For random centres and radii, with and without the [0, 1] box, every sound method's lower bound on C·f must
lie below the minimum of C·f over 10,000 uniform samples (plus random box vertices) and below the PGD
minimum; upper bounds above the sampled maximum; every method's intermediate bounds (IBP: every node) must
contain every sampled activation. Plus the orderings and identities that must hold exactly: alpha-crown ≥
crown per spec, crown-ibp runs on exactly the IBP intermediates, a point box gives the exact value, and
bounds do not depend on batching or chunking.

Everything is float64 so that tolerances can be tight (1e-9 relative): a bound that is too high by more than
rounding is a soundness bug, not noise.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import pytest
import torch

from nets import mlp, random_conv, random_mlp, random_pool_net, random_smooth_net, window_conv
from toolkit.attack.pgd import pgd_attack
from toolkit.bounds import AlphaOptions, BoundMethod, Intermediate, compute_bounds, ibp_bounds
from toolkit.ir import INPUT
from toolkit.spec import InputSet, margin_spec

DT = torch.float64
SOUND = ("ibp", "crown-ibp", "fastlin", "crown", "alpha-crown")
#: engine options that change how intermediate bounds are found: each must be sound on its own
VARIANTS = {"fastlin/backward": ("fastlin", {"fastlin_form": "backward"}),
            "fastlin/intersect-ibp": ("fastlin", {"intersect_ibp": True}),
            "crown/intersect-ibp": ("crown", {"intersect_ibp": True}),
            "alpha-crown/final": ("alpha-crown", {"alpha_scope": "final"}),
            # compositions no method name spells (toolkit.bounds.methods): any sound intermediate bounds with
            # any valid final relaxation must stay sound
            "crown-over-fastlin": (BoundMethod("crown-over-fastlin", Intermediate("fastlin"), "crown"), {}),
            "alpha-over-ibp": (BoundMethod("alpha-over-ibp", Intermediate("ibp"), "crown", AlphaOptions()), {})}
N_CENTRES = 4
N_UNIFORM = 10_000
N_VERTICES = 2_000   # ReLU nets reach their extremes at box vertices more often than inside
ALPHA_ITERS = 10


@pytest.fixture(autouse=True)
def _one_thread():
    # These nets are tiny: with 2 threads on a loaded 2-core machine each small op pays an OpenMP barrier
    # (~20 ms instead of ~20 µs), so one thread is both faster and steadier here.
    torch.set_num_threads(1)
    yield


NETS = {
    "mlp": lambda s: random_mlp([5, 8, 8, 4], seed=s),
    "mlp_deep": lambda s: random_mlp([3, 6, 6, 6, 5], seed=s, scale=1.5),
    "conv": lambda s: random_conv(seed=s, k=5),
    "conv_res_norm": lambda s: random_conv(seed=s, residual=True, normalize=True, channels=2, k=5),
    "pool": lambda s: random_pool_net(seed=s),
    "smooth": lambda s: random_smooth_net(seed=s),
    "windows": lambda s: window_conv(seed=s),   # conv layers whose intermediate bounds use window coefficients
}
#: nets built only from ReLU and affine ops (the reconstruction identity applies to them)
CASES = [(net, seed, box) for net in NETS for seed in (0, 1) for box in (True, False)
         if seed == 0 or net.startswith("mlp")]
CASE_IDS = [f"{n}-s{s}-{'box' if b else 'nobox'}" for n, s, b in CASES]


def tol(v):
    return 1e-9 * (1 + v.abs())


@dataclass
class Case:
    graph: object
    inp: InputSet
    C: torch.Tensor
    spec_min: torch.Tensor        # (N, S) min of C·f over the samples
    spec_max: torch.Tensor        # (N, S)
    act_min: dict                 # node key -> (N, *shape) sampled minimum
    act_max: dict
    pgd_min: torch.Tensor         # (N, S) PGD minimum per spec


def random_input_set(graph, seed, box):
    """N_CENTRES centres with log-uniform radii in [0.003, 0.3] (small radii: bounds nearly tight, where
    off-by-a-little bugs show; large: many unstable neurons)."""
    gen = torch.Generator().manual_seed(1000 + seed)
    shape = graph.input_spec.shape
    eps = torch.exp(torch.empty(N_CENTRES, dtype=DT).uniform_(math.log(0.003), math.log(0.3), generator=gen))
    if box:
        x = torch.rand(N_CENTRES, *shape, generator=gen, dtype=DT)
        x[0].clamp_(0.4, 0.6)                      # one centre whose ball may stay inside the box
        return InputSet.from_eps(x, eps, clip=(0.0, 1.0))
    x = torch.randn(N_CENTRES, *shape, generator=gen, dtype=DT)
    return InputSet.from_eps(x, eps, clip=None)


def spec_matrix(graph, inp, seed):
    """The margins e_y − e_j at the clean prediction, plus two random Gaussian rows (any C must work)."""
    gen = torch.Generator().manual_seed(2000 + seed)
    k = graph.output_size()
    with torch.no_grad():
        labels = graph(inp.x).argmax(1)
    rand = torch.randn(len(inp), 2, k, generator=gen, dtype=DT)
    return torch.cat([margin_spec(labels, k, dtype=DT), rand], 1)


def box_samples(inp, n, seed):
    """N_UNIFORM uniform points and N_VERTICES random vertices of sample n's box."""
    gen = torch.Generator().manual_seed(3000 + seed)
    lo, hi = inp.lo[n], inp.hi[n]
    u = torch.rand(N_UNIFORM, *lo.shape, generator=gen, dtype=DT)
    v = (torch.rand(N_VERTICES, *lo.shape, generator=gen, dtype=DT) < 0.5).to(DT)
    return lo + (hi - lo) * torch.cat([u, v])


@functools.lru_cache(maxsize=None)
def case(net, seed, box) -> Case:
    g = NETS[net](seed)
    inp = random_input_set(g, seed, box)
    C = spec_matrix(g, inp, seed)
    spec_min, spec_max, act_min, act_max = [], [], {}, {}
    with torch.no_grad():
        for n in range(len(inp)):
            acts = g.forward_all(box_samples(inp, n, seed))
            vals = acts[g.output].reshape(acts[g.output].shape[0], -1) @ C[n].t()
            spec_min.append(vals.min(0).values)
            spec_max.append(vals.max(0).values)
            for k, a in acts.items():
                act_min.setdefault(k, []).append(a.min(0).values)
                act_max.setdefault(k, []).append(a.max(0).values)
    # PGD per spec: one batch row per (centre, spec) so each spec gets its own descent.
    s = C.shape[1]
    rep = InputSet(inp.lo.repeat_interleave(s, 0), inp.hi.repeat_interleave(s, 0), inp.x.repeat_interleave(s, 0))
    att = pgd_attack(g, rep, C.reshape(-1, 1, C.shape[-1]), steps=40, restarts=2, seed=seed, stop_below=None)
    stack = lambda d: {k: torch.stack(v) for k, v in d.items()}
    return Case(g, inp, C, torch.stack(spec_min), torch.stack(spec_max), stack(act_min), stack(act_max),
                att.margin.reshape(-1, s))


@functools.lru_cache(maxsize=None)
def bounds(net, seed, box, method):
    c = case(net, seed, box)
    method, options = VARIANTS.get(method, (method, {}))
    return compute_bounds(c.graph, c.inp, c.C, method, bound_upper=method != "alpha-crown",
                          alpha_iters=ALPHA_ITERS, **options)


def assert_contains(lo, hi, vmin, vmax, what):
    assert lo.shape == vmin.shape, f"{what}: bound shape {tuple(lo.shape)} vs activation {tuple(vmin.shape)}"
    below = (lo - vmin) > tol(vmin)
    above = (vmax - hi) > tol(vmax)
    assert not below.any(), f"{what}: lower bound above a sampled value by {(lo - vmin).max().item():.3g}"
    assert not above.any(), f"{what}: upper bound below a sampled value by {(vmax - hi).max().item():.3g}"


# --- final bounds -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", SOUND + tuple(VARIANTS))
@pytest.mark.parametrize("net,seed,box", CASES, ids=CASE_IDS)
def test_lower_bound_below_sampled_and_pgd_minimum(net, seed, box, method):
    c, res = case(net, seed, box), bounds(net, seed, box, method)
    assert res.lower.shape == c.spec_min.shape
    assert torch.isfinite(res.lower).all()
    gap = res.lower - torch.minimum(c.spec_min, c.pgd_min)
    assert (gap <= tol(c.spec_min)).all(), f"{method} lower bound above an attained value by {gap.max():.3g}"


@pytest.mark.parametrize("method", ("ibp", "crown-ibp", "fastlin", "crown"))
@pytest.mark.parametrize("net,seed,box", CASES, ids=CASE_IDS)
def test_upper_bound_above_sampled_maximum(net, seed, box, method):
    c, res = case(net, seed, box), bounds(net, seed, box, method)
    gap = c.spec_max - res.upper
    assert (gap <= tol(c.spec_max)).all(), f"{method} upper bound below an attained value by {gap.max():.3g}"
    assert (res.lower <= res.upper + tol(res.upper)).all()


@pytest.mark.parametrize("method", ("crown-ibp", "fastlin", "crown", "alpha-crown"))
@pytest.mark.parametrize("net,seed,box", CASES, ids=CASE_IDS)
def test_optimal_input_is_feasible_and_above_bound(net, seed, box, method):
    """δ*₀ keeps z*₁ in the input set, and since z*₁ is a real input, C·f(z*₁) ≥ p*_O ≥ the bound."""
    c, res = case(net, seed, box), bounds(net, seed, box, method)
    n, s = res.lower.shape
    lo, hi = c.inp.lo.unsqueeze(1), c.inp.hi.unsqueeze(1)
    assert ((res.z0 >= lo) & (res.z0 <= hi)).all()
    with torch.no_grad():
        out = c.graph(res.z0.reshape(n * s, *res.z0.shape[2:])).reshape(n, s, -1)
    value = (out * c.C).sum(-1)
    assert (res.lower <= value + tol(value)).all()


# --- intermediate bounds ------------------------------------------------------------------------------------

@pytest.mark.parametrize("net", sorted(NETS))
def test_ibp_dropping_and_reusing_unkept_bounds_changes_nothing(net):
    # ``keep``: bounds nobody keeps are dropped, and an affine op reading them last builds its centre in their
    # memory (``Rule.ibp_donated``); what is kept must be bit for bit the full pass's, the input box untouched
    c = case(net, 0, True)
    lo, hi = c.inp.lo.clone(), c.inp.hi.clone()
    full = ibp_bounds(c.graph, lo, hi)
    keep = {c.graph.output, *c.graph.edges[c.graph.output]}
    with torch.no_grad():
        kept = ibp_bounds(c.graph, lo, hi, keep=keep)
    assert keep <= set(kept) < set(full)
    for key in keep:
        assert torch.equal(kept[key][0], full[key][0]) and torch.equal(kept[key][1], full[key][1]), key
    assert torch.equal(lo, c.inp.lo) and torch.equal(hi, c.inp.hi)


def _view_nets():
    """Flatten right after the input (the bundled MNIST MLP's shape), and a Flatten whose input another node
    also reads (a residual Add after the reshape round trip): both hand views of live bounds to an affine op."""
    from toolkit.ir import Add, Flatten, Graph, InputSpec, Linear, ReLU, Reshape

    g = torch.Generator().manual_seed(3)
    r = lambda *sh: torch.randn(*sh, generator=g, dtype=torch.float64)
    flat_first = Graph([("flat", Flatten(), ("input",)), ("fc1", Linear(r(6, 6), r(6)), ("flat",)),
                        ("relu", ReLU(), ("fc1",)), ("fc2", Linear(r(3, 6), r(3)), ("relu",))],
                       "fc2", InputSpec((1, 2, 3)))
    shared = Graph([("fc1", Linear(r(6, 6), r(6)), ("input",)), ("relu", ReLU(), ("fc1",)),
                    ("grid", Reshape((2, 3)), ("relu",)), ("flat", Flatten(), ("grid",)),
                    ("fc2", Linear(r(6, 6), r(6)), ("flat",)), ("add", Add(), ("fc2", "relu")),
                    ("fc3", Linear(r(3, 6), r(3)), ("add",))], "fc3", InputSpec((6,), layout="flat"))
    return {"flat_first": flat_first, "shared": shared}


@pytest.mark.parametrize("name", ["flat_first", "shared"])
def test_ibp_never_reuses_memory_someone_else_still_sees(name):
    """Donated bounds (``Rule.ibp_donated``) must be the pass's own: a Flatten of the input once handed the
    caller's InputSet.hi to the next Linear, which built its centre there (the box grew, and a float64 recheck
    on that box gave an IBP bound above a PGD value; session 16)."""
    graph = _view_nets()[name]
    x = torch.rand(4, *graph.input_spec.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    inp = InputSet.from_eps(x, 0.1, clip=None)
    lo, hi = inp.lo.clone(), inp.hi.clone()
    full = ibp_bounds(graph, lo, hi)
    with torch.no_grad():
        kept = ibp_bounds(graph, inp.lo, inp.hi, keep={graph.output})
    assert torch.equal(inp.lo, lo) and torch.equal(inp.hi, hi)
    assert torch.equal(kept[graph.output][0], full[graph.output][0])
    assert torch.equal(kept[graph.output][1], full[graph.output][1])


@pytest.mark.parametrize("net,seed,box", CASES, ids=CASE_IDS)
def test_ibp_contains_every_sampled_activation(net, seed, box):
    c = case(net, seed, box)
    ib = ibp_bounds(c.graph, c.inp.lo, c.inp.hi)
    assert set(ib) == set(c.act_min)
    for key, (lo, hi) in ib.items():
        assert_contains(lo, hi, c.act_min[key], c.act_max[key], f"IBP bounds of node {key}")


@pytest.mark.parametrize("method", SOUND + tuple(VARIANTS))
@pytest.mark.parametrize("net,seed,box", CASES, ids=CASE_IDS)
def test_intermediate_bounds_contain_sampled_activations(net, seed, box, method):
    c, res = case(net, seed, box), bounds(net, seed, box, method)
    assert INPUT in res.bounds
    for key, (lo, hi) in res.bounds.items():
        assert_contains(lo, hi, c.act_min[key], c.act_max[key], f"{method} bounds of node {key}")


@pytest.mark.parametrize("method", ("crown-ibp", "fastlin", "crown", "alpha-crown"))
@pytest.mark.parametrize("net,seed,box", CASES, ids=CASE_IDS)
def test_layer_records_match_bounds(net, seed, box, method):
    """The optimum's per-ReLU l, u are the bounds the relaxation used; the mask is l < 0 < u."""
    res = bounds(net, seed, box, method)
    for key, lay in res.layers.items():
        l, u = res.bounds[lay.pre]
        assert torch.equal(lay.l, l) and torch.equal(lay.u, u), key
        assert torch.equal(lay.unstable, (l < 0) & (u > 0)), key


# --- orderings and identities -------------------------------------------------------------------------------

@pytest.mark.parametrize("net,seed,box", CASES, ids=CASE_IDS)
def test_alpha_crown_never_looser_than_crown(net, seed, box):
    crown, alpha = bounds(net, seed, box, "crown").lower, bounds(net, seed, box, "alpha-crown").lower
    assert (alpha >= crown).all(), f"alpha-crown below crown by {(crown - alpha).max():.3g}"


def test_alpha_crown_improves_on_crown():
    """Optimising the lower slopes must be able to move: on nets with many unstable neurons some spec gets
    strictly tighter than CROWN's adaptive slopes (this fails if the slopes never receive a gradient)."""
    gains = []
    for net in ("mlp", "mlp_deep", "conv_res_norm"):
        for box in (False, True):
            gains.append((bounds(net, 0, box, "alpha-crown").lower - bounds(net, 0, box, "crown").lower).max())
    assert max(gains) > 1e-3, f"alpha-crown never improved on crown (largest gain {max(gains):.3g})"


@pytest.mark.parametrize("net", ("mlp_deep", "conv_res_norm"))
def test_alpha_crown_tightens_intermediate_bounds(net):
    """Scope "all" re-bounds the intermediate layers with optimised slopes: its bounds lie inside CROWN's
    for every node, strictly for some neuron (this fails if the intermediate slopes never move); scope
    "final" leaves CROWN's intermediate bounds as they are."""
    crown, alpha = bounds(net, 0, True, "crown"), bounds(net, 0, True, "alpha-crown")
    final = bounds(net, 0, True, "alpha-crown/final")
    gain = 0.0
    for key, (l, u) in crown.bounds.items():
        la, ua = alpha.bounds[key]
        assert (la >= l).all() and (ua <= u).all(), key
        assert torch.equal(final.bounds[key][0], l) and torch.equal(final.bounds[key][1], u), key
        gain = max(gain, float((la - l).max().detach()), float((u - ua).max().detach()))
    assert gain > 1e-3, f"no intermediate bound got tighter (largest gain {gain:.3g})"


def test_alpha_crown_sub_batches_and_fallback():
    """Samples are optimised independently: one sample per sub-batch gives the batch's numbers; a budget
    too small for one sample's intermediate slopes falls back to the final pass only, as scope "final"."""
    from toolkit.bounds import alpha as A
    from toolkit.bounds.engine import intermediate_bounds, needs_bounds

    c = case("mlp_deep", 0, True)
    shapes = c.graph.shapes(dtype=DT)
    crown = intermediate_bounds(c.graph, c.inp, "crown", shapes)
    needs = needs_bounds(c.graph)
    run = lambda budget, scope="all": A.optimise_alpha(c.graph, c.inp, c.C, crown, shapes, needs,  # noqa: E731
                                                       ALPHA_ITERS, 0.1, scope, budget)
    whole = run(2 ** 30)
    one = A._cost(c.graph, shapes, A._layers(c.graph, crown, needs), c.C.shape[1])  # ≥ one sample's cost
    split = run(one)
    assert whole.scope == split.scope == "all"
    assert torch.allclose(whole.lower, split.lower, rtol=1e-12, atol=1e-12)
    for key in crown:
        assert torch.allclose(whole.bounds[key][0], split.bounds[key][0], rtol=1e-12, atol=1e-12), key
    tiny, final = run(1), run(2 ** 30, "final")
    assert tiny.scope == "final" and torch.allclose(tiny.lower, final.lower, rtol=1e-12, atol=1e-12)
    # A budget that fits the cheapest sample alone but not the dearest: those fall back, the rest don't.
    own = [A._cost(c.graph, shapes, A._layers(c.graph, A._rows(crown, i, i + 1), needs), c.C.shape[1])
           for i in range(len(c.inp))]
    assert min(own) < max(own), "the samples' costs should differ for this check"
    mixed = run(min(own))
    fits = torch.tensor([k <= min(own) for k in own])
    assert mixed.scope == "partial"
    close = lambda a, b: torch.allclose(a, b, rtol=1e-12, atol=1e-12)  # noqa: E731
    assert close(mixed.lower[fits], whole.lower[fits]) and close(mixed.lower[~fits], final.lower[~fits])
    res = compute_bounds(c.graph, c.inp, c.C, "alpha-crown", alpha_iters=2, alpha_budget=1)
    assert res.alpha_scope == "final"
    assert compute_bounds(c.graph, c.inp, c.C, "alpha-crown", alpha_iters=2).alpha_scope == "all"


def test_alpha_crown_groups_smaller_than_the_budget_run_each_sample_alone(monkeypatch):
    """``kernels.ALPHA_GROUP_ELEMS`` (cache-sized sub-batches) only regroups samples: one per sub-batch when a
    single sample exceeds it, never the final-pass fallback while the budget holds; the same numbers."""
    from toolkit.bounds import alpha as A
    from toolkit.bounds import kernels

    c = case("mlp_deep", 0, True)
    run = lambda: compute_bounds(c.graph, c.inp, c.C, "alpha-crown", alpha_iters=3, optimum=False)  # noqa: E731
    whole = run()
    monkeypatch.setattr(kernels, "ALPHA_GROUP_ELEMS", 1)
    seen = []
    plan = A._plan
    monkeypatch.setattr(A, "_plan", lambda *a, **k: seen.append(plan(*a, **k)) or seen[-1])
    alone = run()
    assert [(i, j, fell) for i, j, _, fell in seen[0]] == [(i, i + 1, False) for i in range(len(c.inp))]
    assert alone.alpha_scope == whole.alpha_scope == "all"
    assert torch.allclose(alone.lower, whole.lower, rtol=1e-12, atol=1e-12)


def test_alpha_crown_deadline_stops_at_crowns_slopes():
    """A deadline already passed leaves only the first iteration, CROWN's own slopes: CROWN's numbers."""
    import time

    c = case("mlp_deep", 0, True)
    crown = bounds("mlp_deep", 0, True, "crown")
    res = compute_bounds(c.graph, c.inp, c.C, "alpha-crown", alpha_iters=ALPHA_ITERS,
                         alpha_deadline=time.monotonic() - 1.0)
    assert torch.allclose(res.lower, crown.lower.detach(), rtol=1e-12, atol=1e-12)
    assert (bounds("mlp_deep", 0, True, "alpha-crown").lower > res.lower + 1e-6).any()  # iterations do help


def test_alpha_crown_keeps_caller_bounds():
    """Bounds passed in (branch and bound's split domains, CROWN-IBP's IBP bounds) are not re-derived."""
    c = case("mlp_deep", 0, True)
    given = bounds("mlp_deep", 0, True, "crown").bounds
    res = compute_bounds(c.graph, c.inp, c.C, "alpha-crown", bounds=given, alpha_iters=ALPHA_ITERS)
    for key, (l, u) in given.items():
        assert torch.equal(res.bounds[key][0], l) and torch.equal(res.bounds[key][1], u), key


@pytest.mark.parametrize("net,seed,box", CASES, ids=CASE_IDS)
def test_fastlin_forward_form_equals_backward_form(net, seed, box):
    """§11.1 property 4: the forward form (default) and per-neuron backward passes give the same bounds."""
    fwd, bwd = bounds(net, seed, box, "fastlin"), bounds(net, seed, box, "fastlin/backward")
    assert fwd.bounds.keys() == bwd.bounds.keys()
    for key in fwd.bounds:
        for a, b in zip(fwd.bounds[key], bwd.bounds[key]):
            assert torch.allclose(a, b, rtol=1e-9, atol=1e-9), f"node {key}: {(a - b).abs().max():.3g}"
    assert torch.allclose(fwd.lower, bwd.lower, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("method", ("fastlin", "crown"))
@pytest.mark.parametrize("net,seed,box", CASES, ids=CASE_IDS)
def test_intersect_ibp_stays_inside_ibp(net, seed, box, method):
    """intersect_ibp: every intermediate interval lies inside IBP's (soundness is checked above)."""
    c, res = case(net, seed, box), bounds(net, seed, box, f"{method}/intersect-ibp")
    ib = ibp_bounds(c.graph, c.inp.lo, c.inp.hi)
    for key, (lo, hi) in res.bounds.items():
        assert (lo >= ib[key][0]).all() and (hi <= ib[key][1]).all(), f"node {key} leaves the IBP bounds"


def test_intersect_ibp_with_a_layer_ibp_proves_stable():
    """Regression: when IBP leaves no neuron of a layer unstable there is nothing to refine (this crashed
    with "torch.cat(): expected a non-empty list")."""
    g = mlp(([[1.0]], None), ([[1.0]], [5.0]), ([[1.0]], None))   # 2nd ReLU's input is in [5, 6]
    inp = InputSet.from_eps(torch.zeros(1, 1, dtype=DT), 1.0, clip=None)
    # true minimum of relu(x) + 5 is 5; Fast-Lin's lower line 0.5·x gives 4.5, CROWN's (tie → 0) gives 5
    for method, expected in (("fastlin", 4.5), ("crown", 5.0)):
        res = compute_bounds(g, inp, torch.ones(1, 1, 1, dtype=DT), method, intersect_ibp=True)
        assert res.lower.item() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("net,seed,box", CASES, ids=CASE_IDS)
def test_crown_ibp_uses_exactly_the_ibp_intermediates(net, seed, box):
    c, res = case(net, seed, box), bounds(net, seed, box, "crown-ibp")
    ib = ibp_bounds(c.graph, c.inp.lo, c.inp.hi)
    assert len(res.bounds) > 1
    for key, (lo, hi) in res.bounds.items():
        assert torch.equal(lo, ib[key][0]) and torch.equal(hi, ib[key][1]), f"node {key} differs from IBP"


@pytest.mark.parametrize("method", SOUND)
@pytest.mark.parametrize("net", list(NETS))
def test_point_box_gives_the_exact_value(net, method):
    """eps = 0: every neuron is stable (or at a kink where both lines meet), so every method must return
    C·f(x) itself. Catches sign, offset and transpose bugs that a loose bound could hide."""
    g = NETS[net](3)
    inp = random_input_set(g, 3, box=False)
    inp = InputSet.from_eps(inp.x, 0.0, clip=None)
    C = spec_matrix(g, inp, 3)
    res = compute_bounds(g, inp, C, method, alpha_iters=2)
    with torch.no_grad():
        exact = (g(inp.x).reshape(len(inp), 1, -1) * C).sum(-1)
    assert torch.allclose(res.lower, exact, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("method", ("ibp", "crown-ibp", "fastlin", "crown"))
@pytest.mark.parametrize("net", ("mlp", "conv_res_norm", "pool", "smooth"))
def test_bounds_do_not_depend_on_batching_or_chunking(net, method):
    """A sample's bounds are the same alone, inside a batch, and with tiny spec chunks."""
    c = case(net, 0, True)
    full = bounds(net, 0, True, method).lower
    chunked = compute_bounds(c.graph, c.inp, c.C, method, chunk_elems=64).lower
    assert torch.allclose(chunked, full, rtol=1e-12, atol=1e-12)
    for n in (0, len(c.inp) - 1):
        one = compute_bounds(c.graph, c.inp[n:n + 1], c.C[n:n + 1], method).lower
        assert torch.allclose(one, full[n:n + 1], rtol=1e-12, atol=1e-12)


def _two_relus_share_one_coefficient():
    """fc1 feeds a ReLU directly and, through fc2, another ReLU; Add joins them. The backward pass hands the
    same coefficient tensor to both ReLUs, so the no-grad rule must not overwrite it (``_exclusive``)."""
    from toolkit.ir import Add, Graph, InputSpec, Linear, ReLU

    g = torch.Generator().manual_seed(5)
    r = lambda *s: torch.randn(*s, generator=g, dtype=DT)  # noqa: E731
    nodes = [("fc1", Linear(r(6, 4), r(6) * 0.1), ("input",)), ("relu_a", ReLU(), ("fc1",)),
             ("fc2", Linear(r(6, 6) / 2, r(6) * 0.1), ("fc1",)), ("relu_b", ReLU(), ("fc2",)),
             ("add", Add(), ("relu_b", "relu_a")), ("fc3", Linear(r(3, 6), r(3) * 0.1), ("add",))]
    return Graph(nodes, "fc3", InputSpec((4,)))


@pytest.mark.parametrize("method", ("crown-ibp", "fastlin", "fastlin/backward", "crown", "crown/intersect-ibp"))
@pytest.mark.parametrize("net", ("mlp_deep", "conv", "conv_res_norm", "pool", "smooth", "shared_coefficient"))
@pytest.mark.parametrize("blocks", ("default", "tiny"))
def test_no_grad_memory_saving_path_equals_autograd_path(net, method, blocks, monkeypatch):
    """Without autograd the ReLU and conv rules work block by block and may overwrite coefficients in place
    (issue 4's memory target); with autograd they use whole tensors. Both must give the same numbers —
    intermediate bounds, lower and upper — including with tiny chunks, a coefficient shared by two
    branches, and block budgets so small that every block is one spec row (or a few samples)."""
    if blocks == "tiny":
        from toolkit.bounds import kernels

        monkeypatch.setattr(kernels, "RELU_BLOCK_ELEMS", 40)
        monkeypatch.setattr(kernels, "CONV_SLICE_ELEMS", 1)
    meth, options = VARIANTS.get(method, (method, {}))
    if net == "shared_coefficient":
        graph = _two_relus_share_one_coefficient()
        inp = InputSet.from_eps(torch.randn(3, 4, generator=torch.Generator().manual_seed(6), dtype=DT), 0.5, clip=None)
        C = torch.randn(3, 4, 3, generator=torch.Generator().manual_seed(7), dtype=DT)
    else:
        c = case(net, 0, True)
        graph, inp, C = c.graph, c.inp, c.C
    for chunk in (64, 2 ** 25):
        with torch.enable_grad():
            ref = compute_bounds(graph, inp, C, meth, bound_upper=True, chunk_elems=chunk, **options)
        with torch.no_grad():
            low = compute_bounds(graph, inp, C, meth, bound_upper=True, chunk_elems=chunk, optimum=False,
                                 **options)
        close = lambda a, b: torch.allclose(a.detach(), b, rtol=1e-12, atol=1e-12)  # noqa: E731
        assert close(ref.lower, low.lower) and close(ref.upper, low.upper)
        for key, (l, u) in ref.bounds.items():
            assert close(l, low.bounds[key][0]) and close(u, low.bounds[key][1]), key


def test_cp_proj_is_flagged_and_never_certifies():
    """cp-proj's bounds are probabilistic (random projections): the result says so and refuses to certify."""
    c = case("mlp", 0, True)
    res = compute_bounds(c.graph, c.inp, c.C, "cp-proj", generator=torch.Generator().manual_seed(0))
    assert res.probabilistic
    with pytest.raises(ValueError):
        res.certified()


# --- NaN / inf: never certified -----------------------------------------------------------------------------

def certified_net():
    """A 2-3-3-2 net that every method certifies at x = (1, 0), eps = 0.1, label 0 (one unstable ReLU)."""
    return mlp(([[1, 0], [0, 1], [1, -1]], None), ([[1, 0, 1], [0, 1, 0], [0, 0, 1]], [0, 0, 0.1]),
               ([[1, 0, 0.5], [0, 1, 0]], None))


def certified_inputs():
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=DT)
    return InputSet.from_eps(x, 0.1, clip=None), torch.tensor([0, 0])


@pytest.mark.parametrize("method", SOUND)
def test_guard_clean_net_is_certified(method):
    """Guard for the NaN/inf tests below: without the bad value every method certifies both samples."""
    inp, y = certified_inputs()
    assert compute_bounds(certified_net(), inp, None, method, labels=y, alpha_iters=2).certified().all()


# (parameter name, index, value): NaN/inf in a first-layer weight, a hidden bias, a last-layer weight of the
# class that is not the label (multiplied by a 0 spec coefficient: 0·NaN must still poison the bound), and
# +inf on the label's own logit (the margin "would be" +inf: still not a certificate).
BAD_PARAMS = [("Linear_0.weight", (1, 1), math.nan), ("Linear_2.bias", (1,), math.nan),
              ("Linear_4.weight", (1, 2), math.nan), ("Linear_0.weight", (2, 0), math.inf),
              ("Linear_4.bias", (0,), math.inf), ("Linear_2.weight", (0, 0), -math.inf)]


@pytest.mark.parametrize("param,index,value", BAD_PARAMS, ids=[f"{p}{list(i)}={v}" for p, i, v in BAD_PARAMS])
@pytest.mark.parametrize("method", SOUND)
def test_non_finite_weight_is_never_certified(method, param, index, value):
    g = certified_net()
    with torch.no_grad():
        dict(g.nodes.named_parameters())[param][index] = value
    inp, y = certified_inputs()
    res = compute_bounds(g, inp, None, method, labels=y, alpha_iters=2)
    assert not res.certified().any()
    assert not torch.isnan(res.lower).any(), "NaN bounds must be reported as -inf"
    assert torch.isneginf(res.lower).any()


@pytest.mark.parametrize("value", (math.nan, math.inf, -math.inf))
@pytest.mark.parametrize("method", SOUND)
def test_non_finite_input_is_never_certified_and_stays_per_sample(method, value):
    """A NaN/inf in sample 0's box (built directly: InputSet.from_eps refuses them) makes sample 0 not
    certified and leaves sample 1's bounds exactly as without it."""
    g = certified_net()
    inp, y = certified_inputs()
    clean = compute_bounds(g, inp, None, method, labels=y, alpha_iters=2)
    lo, hi = inp.lo.clone(), inp.hi.clone()
    lo[0, 1] = value if value != math.inf else lo[0, 1]
    hi[0, 1] = value if value != -math.inf else hi[0, 1]
    res = compute_bounds(g, InputSet(lo, hi, inp.x), None, method, labels=y, alpha_iters=2)
    assert res.certified().tolist() == [False, True]
    assert not torch.isnan(res.lower).any() and torch.isneginf(res.lower[0]).any()
    assert torch.equal(res.lower[1], clean.lower[1])
