"""Cost of one certified-training step per method, as ratios to reference steps in the same run (issue 13).

    OMP_NUM_THREADS=1 python -m benchmarks.train_epoch [--nets mlp_2x100,small] [--batches 5] [--batch 50]
        [--eps 0.1] [--methods ...] [--device cpu] [--out benchmarks/results/train_epoch_cpu.json]
    python -m benchmarks.train_epoch --table-only [--out ...]     # rewrite the .md from the .json

One step = loss, backward and an Adam step on a batch of real MNIST training images, exactly what the
trainer does per batch (``toolkit.train.methods``). Rows (λ = 0.05, γ = 0.005 as in ``benchmarks.table1``):

* ``plain (nn.Sequential)``: cross-entropy through the same weights as a plain ``nn.Sequential`` (the
  reference every ratio is read against); ``plain (IR)``: the same through our imported-IR graph;
* ``IBP``; ``CROWN-IBP``, ``CROWN-IBP+r``, ``CROWN-IBP (loss fusion)`` (``--loss-fusion``: one CROWN row per
  sample bounding the CE itself): measured at β = 0.5, inside the ε ramp where the CROWN pass runs (once β
  reaches 0 a CROWN-IBP step is an IBP step);
* ``CP (proj 50)``: Wong et al.'s random projections (the paper's default, spec §9.3); ``CP (exact)``,
  ``CP+d+r (exact)``: exact Fast-Lin bounds (the paper's "Exact" rows);
* ``convex_adversarial (exact)``: ``convex_adversarial.robust_loss`` (Wong & Kolter's code, the one the paper's
  CP training was built on; ``bounded_input=True`` like ours), on an ``nn.Sequential`` copy of the net.

All steps run at ε/2 (step 1 of a 2-step ramp). The steps are timed round-robin (one batch of every method,
then the next round) after one warm-up round, and each method's median is kept, so drifting load affects all
methods alike. The process keeps freed memory in its heap (``toolkit.runtime``), as ``tightcert`` does; that
applies to every row, convex_adversarial's included. Raw times go to the ``.json``; the ``.md`` is generated
from it (``--table-only``; a test checks the committed pair), with one line per issue-13 target. Each row
then runs ``--profile-steps`` (default 2) more steps under torch.profiler, and a plain 1024³ GEMM is timed:
the .md explains every missed target from them (its mechanism, both rows' matrix-product share and rate, top
ops, and what the step would take with its products at the plain GEMM's rate).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "train_epoch_cpu.json"
LAM, GAMMA = 0.05, 0.005
SEQ, IR, CA = "plain (nn.Sequential)", "plain (IR)", "convex_adversarial (exact)"
#: label -> make_loss keyword arguments (None: one of the reference steps above)
METHODS = {SEQ: None, IR: None, "IBP": dict(method="ibp"), "CROWN-IBP": dict(method="crown-ibp"),
           "CROWN-IBP+r": dict(method="crown-ibp", gamma=GAMMA),
           "CROWN-IBP (loss fusion)": dict(method="crown-ibp", loss_fusion=True),
           "CP (proj 50)": dict(method="cp", proj=50),
           "CP (exact)": dict(method="cp"), "CP+d+r (exact)": dict(method="cp", lam=LAM, gamma=GAMMA), CA: None}
NETS = ("mlp_2x100", "small")
N_TRAIN = 60000
#: issue 13's targets: (label, numerator, denominator, bound, nets or None for all)
TARGETS = [("exact CP ≤ 0.25× convex_adversarial's robust_loss", "CP (exact)", CA, 0.25, None),
           ("CP + d + r ≤ 1.2× CP (exact)", "CP+d+r (exact)", "CP (exact)", 1.2, None),
           ("CROWN-IBP + r ≤ 1.2× CROWN-IBP", "CROWN-IBP+r", "CROWN-IBP", 1.2, None),
           ("CROWN-IBP (β > 0) ≤ 3× IBP on Small", "CROWN-IBP", "IBP", 3.0, ("small",)),
           ("CROWN-IBP with --loss-fusion (β > 0) ≤ 3× IBP on Small", "CROWN-IBP (loss fusion)", "IBP", 3.0,
            ("small",)),
           ("plain CE through the IR ≤ 1.2× nn.Sequential", IR, SEQ, 1.2, None)]


def make_step(label, graph, eps, device):
    """A function running one training step of ``label`` on (x, y); ``graph`` is trained in place."""
    import torch

    from toolkit.train.methods import make_loss
    from toolkit.train.schedules import BetaSchedule, EpsSchedule

    sched = EpsSchedule(eps, 1, 0, 2)  # step 1 of a 2-step ramp: ε/2, β = 0.5 for CROWN-IBP
    kw = METHODS[label]
    if label in (SEQ, CA):
        from benchmarks.convex_adversarial_net import to_sequential

        model = to_sequential(graph).to(device)
    else:
        model = graph
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn = None
    if kw is not None:
        kw = dict(kw)
        if kw["method"] == "crown-ibp":
            kw["beta"] = BetaSchedule(sched, 0.0)
        loss_fn = make_loss(**kw)

    def loss(x, y):
        if loss_fn is not None:
            return loss_fn(graph, x, y, sched.value(1), 1).loss
        if label == CA:
            import convex_adversarial as ca

            return ca.robust_loss(model, sched.value(1), x, y, bounded_input=True)[0]
        return torch.nn.functional.cross_entropy(model(x).reshape(len(y), -1), y)

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        loss(x, y).backward()
        opt.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    return step


def measure(net, methods, batches, batch, eps, device, data_root=None, profile_steps=0):
    """(label -> list of step times (s), round-robin over ``batches`` batches after one warm-up round;
    label -> ``profile_step`` of ``profile_steps`` further steps, or {} when 0)."""
    from toolkit import zoo
    from toolkit.data import load_dataset

    ds = load_dataset("mnist", "train", data_root, batch * (batches + 1))
    xs, ys = ds.x.to(device), ds.y.to(device)
    steps = {m: make_step(m, zoo.build(net, "mnist", 0).to(device), eps, device) for m in methods}
    times = {m: [] for m in methods}
    for m in methods:  # warm-up on the extra batch (allocations, first-call overheads)
        steps[m](xs[-batch:], ys[-batch:])
    for b in range(batches):
        x, y = xs[b * batch:(b + 1) * batch], ys[b * batch:(b + 1) * batch]
        for m in methods:
            t = time.perf_counter()
            steps[m](x, y)
            times[m].append(time.perf_counter() - t)
            print(f"{net} batch {b + 1}/{batches} {m}: {times[m][-1]:.4f}s", file=sys.stderr, flush=True)
    profiles = {m: profile_step(steps[m], xs[:batch], ys[:batch], profile_steps)
                for m in methods if profile_steps}
    return times, profiles


#: aten ops that are matrix products (the step's arithmetic); the rest is element-wise work and overhead
PRODUCTS = ("aten::mm", "aten::bmm", "aten::addmm", "aten::convolution", "aten::_convolution",
            "aten::mkldnn_convolution", "aten::slow_conv_transpose2d", "aten::convolution_backward")
TOP_OPS = 5


def profile_step(step, x, y, n) -> dict:
    """torch.profiler over ``n`` steps (after the timed ones): the share of self CPU time in matrix products
    and their rate (GFLOP/s, from the profiler's FLOP counts), and the ``TOP_OPS`` ops by self time."""
    from torch.profiler import profile

    with profile(record_shapes=True, with_flops=True) as prof:
        for _ in range(n):
            step(x, y)
    ops = prof.key_averages(group_by_input_shape=True)
    total = sum(e.self_cpu_time_total for e in ops)
    prod = [e for e in ops if e.key in PRODUCTS]
    prod_us = sum(e.self_cpu_time_total for e in prod)
    flops = sum(e.flops or 0 for e in prod)
    top = sorted(ops, key=lambda e: -e.self_cpu_time_total)[:TOP_OPS]
    return dict(steps=n, total_ms=total / 1000 / n, products_share=prod_us / total if total else 0.0,
                products_gflops=flops / prod_us / 1000 if prod_us and flops else None,
                top=[dict(op=e.key, shapes=str(e.input_shapes), ms=e.self_cpu_time_total / 1000 / n,
                          share=e.self_cpu_time_total / total) for e in top])


def gemm_rate(device, n=1024, reps=5) -> float:
    """GFLOP/s of a plain n×n×n float32 GEMM on this device and thread count (the rate the products of a
    step could reach; same run, so comparable)."""
    import torch

    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    t = []
    for _ in range(reps):
        s = time.perf_counter()
        a @ b
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t.append(time.perf_counter() - s)
    return 2 * n ** 3 / statistics.median(t) / 1e9


# -- the table, from the data file ------------------------------------------------------------------------------

def _median(data, net, label):
    t = data["nets"].get(net, {}).get(label)
    return statistics.median(t) if t else None


def table(data: dict, net: str) -> str:
    from tabulate import tabulate

    per_epoch = -(-N_TRAIN // data["batch"])
    base = _median(data, net, SEQ)
    rows = []
    for m in data["nets"][net]:
        s = _median(data, net, m)
        rows.append([m, f"{s * 1000:.1f}", f"{s * per_epoch:.0f}", f"{s / base:.1f}×" if base else "-"])
    return tabulate(rows, headers=["step", "ms / step (median)", "s / epoch (60k images)",
                                   "× nn.Sequential CE"], tablefmt="github", disable_numparse=True)


def target_lines(data: dict) -> list:
    """One line per (target, net): the measured ratio and met / not met."""
    out = []
    for text, num, den, bound, nets in TARGETS:
        for net in data["nets"]:
            if nets and net not in nets:
                continue
            a, b = _median(data, net, num), _median(data, net, den)
            if a is None or b is None:
                out.append(f"- {text} — {net}: not measured in this run")
                continue
            verdict = "**met**" if a / b <= bound else "**not met**"
            out.append(f"- {text} — {net}: {a / b:.2f}× ({a * 1000:.1f} / {b * 1000:.1f} ms): {verdict}")
    return out


#: what a missed target's numerator spends beyond its reference, by mechanism (the figures below each come
#: from the profile in the .json)
WHY = {
    "CP (exact)": "both rows compute the same exact Fast-Lin bounds, carrying the d = 784 input generators "
                  "through every layer before the last (the MLP: a (N·M′ × M)·(M × d) product; Small: its "
                  "convolutions on N·d maps), with their gradients and the |·| / sign passes over those "
                  "blocks. That arithmetic is the floor of both steps.",
    "CP+d+r (exact)": "d and r need the real network at the relaxation's optimum of each spec (paper-spec "
                      "§7.2 step 5, a pass on N·S inputs) and r a term per unstable neuron and spec.",
    "CROWN-IBP+r": "r needs the real network at the relaxation's optimum of each of the S = K − 1 specs "
                   "(paper-spec §7.2 step 5): a forward and backward pass on N·S = 9N inputs, which the "
                   "CROWN-IBP pass cannot share (it runs the relaxed network, not the real one).",
    "CROWN-IBP": "the CROWN pass carries S = 9 spec rows per sample back through every layer (transposed "
                 "convolutions on 9N maps) where IBP carries one box. The paper's loss (the CE of per-class "
                 "margin bounds) needs all S rows, and so do d and r; `--loss-fusion` (auto_LiRPA's loss "
                 "fusion: one row per sample, an upper bound of the CE itself; its own row below) removes the "
                 "factor S.",
}


def why_lines(data: dict) -> list:
    """For each missed target: the mechanism (``WHY``) and the profiled figures of both rows."""
    prof = data.get("profiles")
    if not prof:
        return []
    out = [f"## Why targets are missed (torch.profiler, {_profile_steps(prof)} steps per row after the timed "
           f"ones; a plain 1024³ float32 GEMM ran at {data['gemm_gflops']:.0f} GFLOP/s in the same run)", ""]
    for text, num, den, bound, nets in TARGETS:
        for net in data["nets"]:
            a, b = _median(data, net, num), _median(data, net, den)
            if (nets and net not in nets) or a is None or b is None or a / b <= bound:
                continue
            out.append(f"- {text} — {net}: {WHY.get(num, '')}")
            for label in (num, den):
                p = prof.get(net, {}).get(label)
                if p:
                    out.append(f"  - {label}: {_profile_text(p)}")
            p = prof.get(net, {}).get(num)
            if p and p["products_gflops"]:
                # the step with its products at the plain GEMM's rate and everything else as measured
                floor = a * (1 - p["products_share"]) + a * p["products_share"] * p["products_gflops"] / data[
                    "gemm_gflops"]
                out.append(f"  - with {num}'s matrix products at the plain GEMM's rate and the rest as measured, "
                           f"its step would take ≈ {floor * 1000:.1f} ms; the target asks ≤ {bound * b * 1000:.1f} ms")
    return out + [""]


def _profile_steps(prof) -> int:
    return next(p["steps"] for rows in prof.values() for p in rows.values())


def _profile_text(p: dict) -> str:
    rate = f" at {p['products_gflops']:.0f} GFLOP/s" if p["products_gflops"] else ""
    top = "; ".join(f"{t['op']} {t['shapes']} {t['share'] * 100:.0f} %" for t in p["top"][:3])
    return (f"{p['total_ms']:.1f} ms profiled per step, matrix products {p['products_share'] * 100:.0f} % of it"
            f"{rate}; top ops: {top}")


def readme_summary(data: dict) -> str:
    """README's sentence on this run (a test checks README holds it, line breaks aside)."""
    m = lambda label, net: _median(data, net, label)  # noqa: E731
    r = lambda a, b: " / ".join(f"{m(a, n) / m(b, n):.2f}×" for n in NETS)  # noqa: E731
    return (f"Exact CP: {m('CP (exact)', 'mlp_2x100') * 1000:.1f} ms on the MLP ({r('CP (exact)', CA).split(' / ')[0]} "
            f"convex_adversarial's {m(CA, 'mlp_2x100') * 1000:.1f} ms) and {m('CP (exact)', 'small'):.2f} s on Small "
            f"({r('CP (exact)', CA).split(' / ')[1]} its {m(CA, 'small'):.2f} s); CP+d+r {r('CP+d+r (exact)', 'CP (exact)')} "
            f"CP; CROWN-IBP+r {r('CROWN-IBP+r', 'CROWN-IBP')} CROWN-IBP; CROWN-IBP {r('CROWN-IBP', 'IBP')} IBP, "
            f"with `--loss-fusion` {r('CROWN-IBP (loss fusion)', 'IBP')}; plain CE through our IR {r(IR, SEQ)} "
            f"`nn.Sequential`.")


def markdown(data: dict) -> str:
    head = [f"# Training step cost on MNIST, {data['device']}", "",
            f"Command: `{data['command']}`", "",
            f"torch {data['torch']}, {data['threads']} thread(s), {data['cpu']}; batch {data['batch']}, steps at "
            f"ε = {data['eps'] / 2:g} (ε/2 of {data['eps']:g}; CROWN-IBP at β = 0.5); median of {data['batches']} "
            f"round-robin steps per row after a warm-up round; load average {data['load'][0]:.1f} at the start, "
            f"{data['load'][1]:.1f} at the end on {data['cpus']} CPUs. \"s / epoch\" is the median step × "
            f"{-(-N_TRAIN // data['batch'])} batches, not a measured epoch.", ""]
    for net in data["nets"]:
        head += [f"## {net}", "", table(data, net), ""]
    head += ["## Issue 13 targets (ratios within this run)", ""] + target_lines(data) + [""]
    return "\n".join(head + why_lines(data))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(prog="python -m benchmarks.train_epoch", description=__doc__.split("\n\n")[0])
    p.add_argument("--nets", default=",".join(NETS), help=f"zoo nets (default: {','.join(NETS)})")
    p.add_argument("--batches", type=int, default=5, help="timed batches per method (default: 5)")
    p.add_argument("--batch", type=int, default=50, help="batch size (default: 50, Wong et al.)")
    p.add_argument("--eps", type=float, default=0.1, help="training eps at the end of the ramp (default: 0.1)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--methods", default=",".join(METHODS), help="rows (default: all)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--out", default=str(OUT), help="raw times (.json); the .md is written beside it")
    p.add_argument("--profile-steps", type=int, default=2,
                   help="steps per row run under torch.profiler after the timed ones, for the .md's account "
                        "of each missed target (default: 2; 0: none)")
    p.add_argument("--table-only", action="store_true", help="only rewrite the .md from --out")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.table_only:
        if not out.is_file():
            print(f"train_epoch: error: {out} does not exist", file=sys.stderr)
            return 2
        data = json.loads(out.read_text())
    else:
        methods = [m for m in args.methods.split(",") if m]
        unknown = [m for m in methods if m not in METHODS]
        if unknown or SEQ not in methods:
            print(f"train_epoch: error: methods must include {SEQ!r} and come from {', '.join(METHODS)}",
                  file=sys.stderr)
            return 2
        data = run(args, methods, argv)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(data, indent=1) + "\n")
    text = markdown(data)
    out.with_suffix(".md").write_text(text)
    print(text)
    return 0


def run(args, methods, argv) -> dict:
    import torch

    from toolkit.runtime import retain_freed_memory

    retain_freed_memory()
    load0 = os.getloadavg()[0]
    nets, profiles = {}, {}
    for net in [n for n in args.nets.split(",") if n]:
        nets[net], profiles[net] = measure(net, methods, args.batches, args.batch, args.eps, args.device,
                                           args.data_root, args.profile_steps)
    extra = dict(profiles=profiles, gemm_gflops=gemm_rate(args.device)) if args.profile_steps else {}
    return dict(**extra, command=f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')} python -m benchmarks.train_epoch "
                        + " ".join(argv), device=args.device, torch=torch.__version__,
                threads=torch.get_num_threads(), cpu=platform.processor() or platform.machine(), batch=args.batch,
                eps=args.eps, batches=args.batches, load=[load0, os.getloadavg()[0]], cpus=os.cpu_count(), nets=nets)


if __name__ == "__main__":
    sys.exit(main())
