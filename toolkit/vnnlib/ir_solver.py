"""Deciding a single-network, single-input/output query on the IR with the bound engine (torch).

For a disjunct "A·y + c ≤ 0 (row-wise; < for strict rows), x in the box", a row is *refuted* on a domain
when the sound lower bound of A_r·y exceeds -c_r by more than the row's rounding margin m_r; a disjunct is
refuted when one of its rows is; the query is ``unsat`` when every disjunct is refuted on every domain.

Order: PGD for a counterexample (confirmed by onnxruntime and the exact query), CROWN, α-CROWN, then
branch and bound until the deadline:
- ReLU splitting: a domain fixes the sign of some unstable neurons; its intermediate bounds are
  recomputed (IBP ∩ CROWN, one layer after another, clamped to the fixed signs: l = max(l, 0) for an
  active neuron, u = min(u, 0) for an inactive one), which is sound on the part of the box where those
  signs hold; the two children of a split cover the parent. Branching: the unstable neuron with the
  largest |ν|·b̄ (coefficient times the chord's intercept: BaBSR-like) for the row closest to refutation.
  No β-CROWN: the split constraints only enter through the clamped bounds, so a domain whose neurons are
  all stable yet unrefuted cannot be split further (the answer is then ``unknown``).
- input splitting instead, when the input has at most ``INPUT_SPLIT_DIMS`` elements.

Float semantics (notes §6): the bounds are computed in float64 on the IR; ``float_error`` bounds how far
onnxruntime's float32 node-by-node evaluation (and the importer's one-rounding weight re-expressions)
can be from the real-arithmetic IR output: per node, the error of its inputs propagated through |W| plus
γ_{n+2}·Σ|terms| of its own rounding (Higham), with magnitudes from the domain's bounds. A row is refuted
only beyond ``|A_r|·e + 2^-30·(|A_r|·|y| + |c_r|)`` (the last term covers float64 rounding of the bound
computation), which makes ``unsat`` sound for float32 and real queries alike.
"""
from __future__ import annotations

import copy
import heapq
import math
import os
from dataclasses import dataclass, field

import numpy as np

from toolkit.errors import BadModelError

from .search import Outcome

INPUT_SPLIT_DIMS = 16
U32 = 2.0 ** -24
SLACK = 2.0 ** -30
BATCH = 32
MAX_CONFIRM = 8


# ---------------------------------------------------------------------------------------------------------
# the query as row matrices
# ---------------------------------------------------------------------------------------------------------
@dataclass
class Spec:
    """One disjunct: rows A (R, K), c (R,), strict (R,) meaning A·y + c <= 0 (< 0 where strict)."""

    index: int
    A: np.ndarray
    c: np.ndarray
    strict: np.ndarray


@dataclass
class Group:
    """Disjuncts sharing one input box."""

    lo: np.ndarray
    hi: np.ndarray
    specs: list = field(default_factory=list)
    #: intermediate bounds on the whole box from the root's α-CROWN (key -> (l, u), each (1, *shape)):
    #: branch and bound starts from them instead of recomputing CROWN's looser ones
    bounds: dict | None = None

    def rows(self):
        A = np.concatenate([s.A for s in self.specs])
        c = np.concatenate([s.c for s in self.specs])
        strict = np.concatenate([s.strict for s in self.specs])
        owner = np.concatenate([np.full(len(s.c), i) for i, s in enumerate(self.specs)])
        return A, c, strict, owner


def build_groups(q) -> list:
    out_var = q.nets[0].outputs[0]
    inputs = set(int(i) for i in q.input_index)
    k = out_var.size
    groups = {}
    for di, d in enumerate(q.disjuncts):
        rows = []
        for a in d.atoms:
            terms = a.lin[0]
            if len(terms) == 1 and int(next(iter(terms))) in inputs:
                continue  # an input bound: its closure is the box
            vec = np.zeros(k)
            for g, coef in terms.items():
                vec[g - out_var.offset] = float(coef)
            c = float(a.const)
            if a.op in ("<=", "<", "=="):
                rows.append((vec, c, a.op == "<"))
            if a.op in (">=", ">", "=="):
                rows.append((-vec, -c, a.op == ">"))
        if not rows:
            rows.append((np.zeros(k), 0.0, False))  # nothing on the outputs: never refuted by bounds
        spec = Spec(di, np.stack([r[0] for r in rows]), np.array([r[1] for r in rows]),
                    np.array([r[2] for r in rows], bool))
        key = (d.lo.tobytes(), d.hi.tobytes())
        groups.setdefault(key, Group(d.lo, d.hi)).specs.append(spec)
    return list(groups.values())


# ---------------------------------------------------------------------------------------------------------
# float32 rounding error of the model's evaluation (module docstring)
# ---------------------------------------------------------------------------------------------------------
def float_error(graph, vals: dict, mode: str = "float32", exact=(), rescaled=False):
    """Per-element bound (N, *out) on |model output in the query's semantics - real IR output|.

    ``vals``: node key -> (l, u) bounds valid on the domain (for magnitudes).
    ``mode`` "float32": onnxruntime evaluates the model in float32 and every node rounds: the error of a
    node's inputs is propagated through |W| and its own rounding adds γ_{n+2}·Σ|terms| (u = 2^-24).
    ``mode`` "real": the model is a real function; the IR differs from the file only where the importer
    re-expressed constants with one float32 rounding (a Normalize's 1/std and -mean/std; a bias with a
    folded constant: node names with '+'; a Gemm's alpha/beta multiplied into W and b: when ``rescaled``,
    every Linear is charged for it); those discrepancies are propagated the same way. Nodes in
    ``exact`` are treated as exact (the caller accounts for them otherwise, e.g. an input Normalize by
    widening the input box). float64 rounding of the bound computation itself is covered by ``SLACK``."""
    import torch

    from toolkit.bounds.ops import Rounding, rule_for
    from toolkit.ir import INPUT

    f32 = mode == "float32"
    mag = {k: torch.maximum(l.abs(), u.abs()) for k, (l, u) in vals.items()}
    err = {INPUT: torch.zeros_like(mag[INPUT])}
    for key, node, ins in graph:  # each op's rounding model lives in its rule (toolkit/bounds/ops.py)
        rounding = Rounding(f32, folded="+" in node.onnx_name and key not in exact, rescaled=rescaled,
                            exact=key in exact)
        err[key] = rule_for(node).float_error(node, [err[k] for k in ins], [mag[k] for k in ins], rounding)
    return err[graph.output]


def input_normalize(graph):
    """The Normalize node that alone reads the graph input, or None."""
    from toolkit.ir import INPUT
    from toolkit.ir import nodes as N

    readers = [(k, n) for k, n, ins in graph if INPUT in ins]
    if len(readers) == 1 and isinstance(readers[0][1], N.Normalize):
        return readers[0]
    return None


# ---------------------------------------------------------------------------------------------------------
# the solver
# ---------------------------------------------------------------------------------------------------------
_GRAPHS = {}


def _imported(model):
    """The model as a float64 IR graph (cached per file, so batch mode imports each model once). The
    importer checks the IR against onnxruntime (max abs diff <= 1e-4 on random inputs)."""
    import os
    import tempfile

    import torch

    from toolkit.ir import import_onnx

    key = (str(model.path.resolve()), model.path.stat().st_mtime)
    if key not in _GRAPHS:
        path = model.path
        tmp = None
        if path.read_bytes()[:2] == b"\x1f\x8b":  # gzip'd model: the importer reads plain files
            fd, tmp = tempfile.mkstemp(suffix=".onnx")
            with os.fdopen(fd, "wb") as f:
                f.write(model.proto.SerializeToString())
            path = tmp
        try:
            graph = import_onnx(path, check=True)
        finally:
            if tmp:
                os.unlink(tmp)
        graph = copy.deepcopy(graph).to(torch.float64).eval()
        for p in graph.parameters():
            p.requires_grad_(False)
        _GRAPHS[key] = graph
    return _GRAPHS[key]


@dataclass(order=True)
class Domain:
    priority: float
    tick: int
    group: int = field(compare=False)
    lo: object = field(compare=False)          # torch (1, *in_shape) box (input splitting changes it)
    hi: object = field(compare=False)
    alive: np.ndarray = field(compare=False)   # specs of the group not refuted yet
    splits: tuple = field(compare=False, default=())   # ((pre key, flat index, active), ...)
    cached: dict | None = field(compare=False, default=None)   # parent's intermediate bounds (1, *shape)
    first_dirty: int = field(compare=False, default=0)
    floor: np.ndarray | None = field(compare=False, default=None)   # parent's row lower bounds


class IRSolver:
    def __init__(self, problem, deadline, rng, log):
        import torch

        from toolkit.bounds import needs_bounds

        self.torch = torch
        self.problem, self.deadline, self.rng, self.log = problem, deadline, rng, log
        q = problem.q
        net = q.nets[0]
        self.x_var, self.y_var = net.inputs[0], net.outputs[0]
        self.graph = _imported(net.model)
        self.in_shape = tuple(self.graph.input_spec.shape)
        if math.prod(self.in_shape) != self.x_var.size:
            raise BadModelError(f"the imported model takes {math.prod(self.in_shape)} input values, the query "
                                f"declares {self.x_var.size}")
        self.shapes = self.graph.shapes(dtype=torch.float64)
        if math.prod(self.shapes[self.graph.output]) != self.y_var.size:
            raise BadModelError("the imported model's output size differs from the declared output")
        self.needs = {k: i for i, k in enumerate(needs_bounds(self.graph))}
        self.groups = build_groups(q)
        # real semantics: the importer's input Normalize (x*fl(1/std) + fl(-mean/std)) differs from the
        # file's (x - mean)/std by <= 2u(|x||s| + |t|); since it is elementwise and invertible, that is
        # the same as moving x by <= 2u(|x| + |t/s|): widen the boxes by that and treat the node as exact.
        self.exact_nodes, self.widen = set(), None
        attr = lambda n, k: next((a.f for a in n.attribute if a.name == k), 1.0)
        self.rescaled = any(n.op_type == "Gemm" and (attr(n, "alpha") != 1.0 or attr(n, "beta") != 1.0)
                            for n in net.model.proto.graph.node)
        norm = input_normalize(self.graph)
        if norm is not None and problem.mode == "real":
            key, node = norm
            one = torch.ones(1, *self.in_shape, dtype=torch.float64)
            sc, t = (one * node.scale).abs(), (one * node.shift).abs()
            self.widen = lambda lo, hi: (2 * U32 * (torch.maximum(lo.abs(), hi.abs()) + t / sc)).where(
                sc > 0, torch.full_like(sc, math.inf))
            self.exact_nodes.add(key)
        self.tick = 0
        self.n_domains = 0
        self._root_pre = None
        self.key_cost = {}           # seconds per sample of each key's intermediate bounds (measured at the root)

    # -- helpers -------------------------------------------------------------------------------------------
    def _t(self, a):
        return self.torch.as_tensor(np.asarray(a, np.float64)).reshape(1, *self.in_shape)

    def _next(self):
        self.tick += 1
        return self.tick

    def try_points(self, cands):
        """cands: [(group, alive specs, torch (B, *in_shape))]. Confirm the points whose outputs plausibly
        satisfy an alive disjunct (one batched forward pass, then onnxruntime + the exact query)."""
        cands = [c for c in cands if c[2].shape[0]]
        if not cands:
            return None
        xs = self.torch.cat([c[2] for c in cands])
        y = self._forward(xs).numpy()
        start, tries = 0, 0
        for group, alive, pts in cands:
            g = self.groups[group]
            A, c, strict, owner = g.rows()
            v = y[start:start + pts.shape[0]] @ A.T + c
            for b in range(pts.shape[0]):
                for si in np.nonzero(alive)[0]:
                    rows = owner == si
                    if np.all(v[b, rows] <= 1e-7 * (1 + np.abs(c[rows]))):
                        tries += 1
                        if tries > MAX_CONFIRM or self.deadline.expired():
                            return None  # each confirmation runs onnxruntime and exact arithmetic
                        d = self.problem.q.disjuncts[g.specs[si].index]
                        x = pts[b].reshape(-1).numpy()
                        a = self.problem.confirm(self.problem.snap(x, d.ilo, d.ihi), d.atoms)
                        if a is not None:
                            return a
            start += pts.shape[0]
        return None

    def _forward(self, x):
        with self.torch.no_grad():
            return self.graph(x).reshape(x.shape[0], -1)

    # -- phase 1: PGD ----------------------------------------------------------------------------------------
    def attack(self, budget_s, steps=60):
        import time

        from toolkit.attack.pgd import pgd_minimize
        from toolkit.spec import InputSet

        torch = self.torch
        t_end = min(time.monotonic() + budget_s, time.monotonic() + max(0.0, self.deadline.remaining()))
        r, last = 0, 0.0
        while time.monotonic() + last < t_end and r < 50:  # a restart only when another one fits
            t0 = time.monotonic()
            for gi, g in enumerate(self.groups):
                lo, hi = self._t(g.lo), self._t(g.hi)
                A, c, strict, owner = g.rows()
                At, ct, own = torch.as_tensor(A), torch.as_tensor(c), torch.as_tensor(owner)
                n_spec = len(g.specs)

                def objective(z):
                    v = self.graph(z).reshape(z.shape[0], -1) @ At.T + ct                 # (N, R)
                    worst = torch.full((z.shape[0], n_spec), -math.inf, dtype=v.dtype)
                    worst = worst.scatter_reduce(1, own.expand(z.shape[0], -1), v, "amax")
                    return worst.min(1).values                                          # best disjunct

                x, _ = pgd_minimize(objective, InputSet.from_box(lo, hi), steps=steps, restarts=1,
                                    seed=int(self.rng.integers(1 << 30)), random_start=r > 0, stop_below=-1e-6)
                a = self.try_points([(gi, np.ones(n_spec, bool), x)])
                if a is not None:
                    return a
            r += 1
            last = time.monotonic() - t0
        return None

    # -- bounds on a batch of domains ---------------------------------------------------------------------
    def evaluate(self, domains, method="crown", alpha_iters=0, pre=None, beta_iters=0, alpha_scope=None,
                 alpha_deadline=None):
        """Bound a batch. Returns per domain (alive specs after refutation, gap of the row closest to
        refutation among alive specs) and the BoundResult and intermediate bounds."""
        from toolkit.bounds import beta_bounds, compute_bounds, domain_bounds
        from toolkit.spec import InputSet

        torch = self.torch
        n = len(domains)
        lo, hi = torch.cat([d.lo for d in domains]), torch.cat([d.hi for d in domains])
        if self.widen is not None:
            w = self.widen(lo, hi)
            lo, hi = lo - w, hi + w
        inp = InputSet.from_box(lo, hi)
        clamps = {}
        for i, d in enumerate(domains):
            for key, idx, active in d.splits:
                if key not in clamps:
                    shape = self.shapes[key]
                    clamps[key] = tuple(torch.zeros(n, *shape, dtype=torch.bool) for _ in range(2))
                clamps[key][0 if active else 1].reshape(n, -1)[i, idx] = True
        cached, first_dirty = None, 0
        if all(d.cached is not None for d in domains):
            cached = {k: tuple(torch.cat([d.cached[k][j] for d in domains]) for j in range(2))
                      for k in domains[0].cached}
            first_dirty = [d.first_dirty for d in domains]
        if pre is None:
            timing = {} if cached is None else None
            bounds, vals, empty = domain_bounds(self.graph, inp, self.shapes, clamps, cached, first_dirty, timing)
            if timing is not None and not any(d.splits for d in domains):  # the root: cost per key and sample
                self.key_cost = {k: max(self.key_cost.get(k, 0.0), t / n) for k, t in timing.items()}
        else:  # intermediate bounds of an earlier call on the same domains
            bounds, vals, empty = pre
        # only the rows of the specs still alive in each domain
        rows, sels = [], []
        for d in domains:
            A, c, strict, owner = self.groups[d.group].rows()
            sel = np.isin(owner, np.nonzero(d.alive)[0])
            rows.append((A[sel], c[sel], strict[sel], owner[sel]))
            sels.append(sel)
        s_max = max(1, max(len(r[1]) for r in rows))
        C = torch.zeros(n, s_max, self.y_var.size, dtype=torch.float64)
        for i, (A, c, strict, owner) in enumerate(rows):
            C[i, :len(c)] = torch.as_tensor(A)
        res = compute_bounds(self.graph, inp, C, method if (method != "alpha-crown" or alpha_iters) else "crown",
                             bounds=bounds, alpha_iters=alpha_iters, alpha_scope=alpha_scope,
                             alpha_deadline=alpha_deadline)
        lower = res.lower.detach()
        if beta_iters and any(d.splits for d in domains):
            lower = torch.maximum(lower, beta_bounds(self.graph, inp, C, bounds, self.shapes,
                                                     [d.splits for d in domains], beta_iters).detach())
        lower = lower.numpy()
        err = float_error(self.graph, vals, self.problem.mode, self.exact_nodes, self.rescaled).reshape(n, -1)
        y = vals[self.graph.output]
        ymag = torch.maximum(y[0].abs(), y[1].abs()).reshape(n, -1)
        margin = (C.abs() @ err.unsqueeze(-1)).squeeze(-1).numpy()
        slack = SLACK * (C.abs() @ ymag.unsqueeze(-1)).squeeze(-1).numpy()
        out = []
        for i, (d, (A, c, strict, owner), sel) in enumerate(zip(domains, rows, sels)):
            r = len(c)
            low = lower[i, :r]
            if d.floor is not None:  # the parent's bound holds on this sub-domain too
                low = np.maximum(low, d.floor[sel])
            floor = np.full(len(sel), -math.inf)
            floor[sel] = low
            gap = low + c - margin[i, :r] - SLACK * np.abs(c) - slack[i, :r]   # > 0: refuted
            refuted_row = np.where(strict, gap >= 0, gap > 0) & np.isfinite(gap)
            alive = d.alive.copy()
            if bool(empty[i]):
                alive[:] = False
            worst = math.inf  # the domain is refuted when every alive spec is: its hardest spec counts
            for si in np.nonzero(alive)[0]:
                mine = owner == si
                if refuted_row[mine].any():
                    alive[si] = False
                else:
                    worst = min(worst, float(np.max(np.where(np.isfinite(gap[mine]), gap[mine], -1e300))))
            out.append((alive, worst, floor))
        self._last = (bounds, vals, empty)
        return out, res, bounds

    # -- phase 3: branch and bound -------------------------------------------------------------------------
    def _branch(self, res, batch, keep):
        """Per kept domain: (pre key, flat index) of the unstable neuron with the largest |ν|·b̄ over the
        rows of its alive specs, or None."""
        torch = self.torch
        best = torch.full((len(batch),), -1.0, dtype=torch.float64)
        pick = [None] * len(batch)
        masks = torch.zeros(res.lower.shape, dtype=torch.bool)
        for i, d in enumerate(batch):
            owner = self.groups[d.group].rows()[3]
            owner = owner[np.isin(owner, np.nonzero(d.alive)[0])]   # the rows evaluate() bounded
            masks[i, :len(owner)] = torch.as_tensor(np.isin(owner, np.nonzero(keep[i])[0]))
        for key, lay in res.layers.items():
            n = lay.unstable.shape[0]
            unstable = lay.unstable.reshape(n, -1)
            if not unstable.any():
                continue
            l, u = lay.l.reshape(n, -1), lay.u.reshape(n, -1)
            intercept = torch.where(unstable, -l * u / torch.where(unstable, u - l, torch.ones_like(u)),
                                    torch.zeros_like(u))
            nu = lay.nu.reshape(n, lay.nu.shape[1], -1).abs() * masks.unsqueeze(-1)
            score = torch.where(unstable, nu.max(1).values * intercept + 1e-12 * intercept,
                                torch.full_like(u, -1.0))
            val, idx = score.max(1)
            for i in range(len(batch)):
                if float(val[i]) > float(best[i]):
                    best[i] = val[i]
                    pick[i] = (lay.pre, int(idx[i]))
        return pick

    def bab(self, input_split, method="alpha-crown", alpha_iters=8, per_domain0=0.0, beta_iters=10):
        import time

        heap = []
        for gi, g in enumerate(self.groups):  # one tree per disjunct: its splits serve that disjunct only
            for si in range(len(g.specs)):
                alive = np.zeros(len(g.specs), bool)
                alive[si] = True
                heapq.heappush(heap, Domain(-math.inf, self._next(), gi, self._t(g.lo), self._t(g.hi), alive,
                                            cached=g.bounds, first_dirty=len(self.needs) if g.bounds else 0))
        # Batches are filled while their estimated cost fits in a third of the time left: per domain, a
        # measured base cost (final pass, β, candidates) plus the root-measured cost of every intermediate
        # layer it must recompute (a split in an early layer recomputes all later ones).
        stuck, base = 0, per_domain0
        full = sum(self.key_cost.values())

        def cost(d):
            if d.cached is None:
                return base + full
            return base + sum(t for k, t in self.key_cost.items() if self.needs[k] >= d.first_dirty)

        while heap:
            rem = self.deadline.remaining()
            batch, est = [], 0.0
            while heap and len(batch) < BATCH and est + cost(heap[0]) <= rem / 3:
                est += cost(heap[0])
                batch.append(heapq.heappop(heap))
            if not batch:
                if not heap or cost(heap[0]) * 1.5 >= rem:
                    return Outcome("timed-out", detail=f"branch and bound: {self.n_domains} domains, "
                                                       f"{len(heap)} open")
                first = heapq.heappop(heap)
                batch, est = [first], cost(first)
            t0 = time.monotonic()
            results, res, bounds = self.evaluate(batch, method, alpha_iters, beta_iters=beta_iters)
            self.n_domains += len(batch)
            keep = [r[0] for r in results]
            live = [i for i, a in enumerate(keep) if a.any()]
            # the relaxation's optimal inputs are counterexample candidates
            a = self.try_points([(batch[i].group, keep[i], res.z0[i]) for i in live])
            if a is not None:
                return Outcome("sat", a, detail=f"relaxation optimum after {self.n_domains} domains")
            picks = None if input_split else self._branch(res, batch, keep)
            for i in live:
                d, gap = batch[i], results[i][1]
                kids = self._input_children(d) if input_split else self._relu_children(d, picks[i], bounds, i)
                if kids is None:
                    stuck += 1
                    continue
                for kid in kids:
                    kid.priority, kid.tick, kid.alive, kid.floor = gap, self._next(), keep[i], results[i][2]
                    heapq.heappush(heap, kid)
            recompute = sum(cost(d) - base for d in batch)
            took = max(0.0, (time.monotonic() - t0 - recompute)) / len(batch)
            base = took if not base else max(0.7 * base + 0.3 * took, 1e-4)
        if stuck:
            return Outcome("unknown", detail=f"{stuck} domains could not be split further "
                                             f"({self.n_domains} domains)")
        return Outcome("unsat", detail=f"branch and bound: {self.n_domains} domains refuted")

    def _input_children(self, d):
        width = (d.hi - d.lo).reshape(-1)
        j = int(self.torch.argmax(width))
        if not float(width[j]) > 0:
            return None
        mid = (d.lo.reshape(-1)[j] + d.hi.reshape(-1)[j]) / 2
        lo2, hi1 = d.lo.clone(), d.hi.clone()
        hi1.reshape(-1)[j] = mid
        lo2.reshape(-1)[j] = mid
        return [Domain(0, 0, d.group, d.lo, hi1, d.alive), Domain(0, 0, d.group, lo2, d.hi, d.alive)]

    def _relu_children(self, d, pick, bounds, i):
        if pick is None:
            return None
        key, idx = pick
        cached = {k: (bounds[k][0][i:i + 1], bounds[k][1][i:i + 1]) for k in self.needs}
        # bounds before the split neuron's layer stay valid; the split layer itself is only clamped
        first = self.needs[key] + 1
        return [Domain(0, 0, d.group, d.lo, d.hi, d.alive, d.splits + ((key, idx, act),), cached, first)
                for act in (True, False)]

    def root(self, method, alpha_iters=0):
        """Bounds on the whole boxes; refuted disjuncts leave their groups. True when all are refuted.
        α-CROWN starts from the intermediate bounds of the CROWN call before it and re-bounds them with
        optimised slopes (scope "all"); the groups keep those bounds for branch and bound."""
        import time

        doms = [Domain(0, self._next(), gi, self._t(g.lo), self._t(g.hi), np.ones(len(g.specs), bool))
                for gi, g in enumerate(self.groups)]
        alpha = method == "alpha-crown"
        pre = self._root_pre if (alpha and self._root_pre is not None) else None
        # the joint optimisation may take a quarter of the time left (every iteration's bounds are sound)
        stop = time.monotonic() + self.deadline.remaining() / 4 if alpha else None
        results, res, _ = self.evaluate(doms, method, alpha_iters, pre=pre, alpha_scope="all" if alpha else None,
                                        alpha_deadline=stop)
        if alpha:
            for gi, g in enumerate(self.groups):
                g.bounds = {k: (res.bounds[k][0][gi:gi + 1].detach(), res.bounds[k][1][gi:gi + 1].detach())
                            for k in self.needs}
        keep, idx = [], []
        for gi, (g, (alive, _, _)) in enumerate(zip(self.groups, results)):
            g.specs = [s for s, a in zip(g.specs, alive) if a]
            if g.specs:
                keep.append(g)
                idx.append(gi)
        self.groups = keep
        b, v, e = self._last
        pick = lambda t: t[idx]
        self._root_pre = ({k: (pick(l), pick(u)) for k, (l, u) in b.items()},
                          {k: (pick(l), pick(u)) for k, (l, u) in v.items()}, e[idx]) if idx else None
        return not keep


def solve_ir(problem, deadline, rng, log) -> Outcome:
    import torch

    # One thread by default: the bound passes on VNN-COMP-size models are many small ops, for which thread
    # synchronisation costs more than it gains (3x slower with 2 threads on a busy 2-core machine).
    torch.set_num_threads(max(1, int(os.environ.get("TIGHTCERT_THREADS", "1"))))
    s = IRSolver(problem, deadline, rng, log)
    if any(not (np.all(np.isfinite(g.lo)) and np.all(np.isfinite(g.hi))) for g in s.groups):
        return Outcome("unknown", detail="unbounded input box")
    rem = deadline.remaining()
    long_attack = max(0.0, min(10.0, 0.1 * rem)) if math.isfinite(rem) else 10.0
    # a quick attack, the cheap bound, a longer attack, the expensive bound, then branch and bound
    import time

    crown_s = 0.0
    for step, arg in (("attack", min(1.0, long_attack)), ("crown", 0), ("attack", long_attack),
                      ("alpha-crown", 30)):
        if deadline.expired(crown_s * (3 if step == "alpha-crown" else 1)):
            return Outcome("timed-out", detail=f"stopped before {step}")
        if step == "attack":
            a = s.attack(min(arg, max(0.0, deadline.remaining() - 2 * crown_s)))
            if a is not None:
                return Outcome("sat", a, detail="PGD")
        else:
            t0 = time.monotonic()
            if s.root(step, arg):
                return Outcome("unsat", detail=f"{step} at the root")
            crown_s = max(crown_s, time.monotonic() - t0)
            log(f"{step}: {sum(len(g.specs) for g in s.groups)} disjuncts left after {deadline.elapsed():.1f} s")
    input_split = s.x_var.size <= INPUT_SPLIT_DIMS
    return s.bab(input_split, per_domain0=crown_s)
