"""Training cost per batch (and per MNIST epoch) of the certified methods on MNIST Small, as ratios to an
ordinary (non-robust) training step in the same run (issue 8).

    OMP_NUM_THREADS=1 python -m benchmarks.train_epoch [--batches 3] [--batch 50] [--eps 0.1] [--device cpu]
        [--methods plain,CP,CP+d+r,...] [--out benchmarks/results/train_epoch_cpu.md]

One step = loss, backward and an Adam step on a batch of real MNIST training images, exactly what the
trainer does per batch. Methods (λ = 0.05, γ = 0.005 as in ``benchmarks.table1``):

* ``plain``: cross-entropy on the clean logits (the ordinary epoch the ratios refer to);
* ``CP``: Wong et al.'s convex-polytope loss with random projections to 50 (the paper's default, §9.3);
  ``CP (exact)``: exact Fast-Lin bounds (the paper's "Exact" rows); ``+d+r``: with both regularizers;
* ``CROWN-IBP``, ``CROWN-IBP+r``: measured at β = 0.5, i.e. inside the ε ramp where the CROWN pass runs
  (once β reaches 0 a CROWN-IBP step is an IBP step, and r is not computed under the default coupling).

The steps are timed round-robin (one batch of every method, then the next round) and each method's
median is reported, so drifting load on a shared machine affects all methods alike. Seconds per epoch
are the median step × the number of batches in the 60,000-image training set.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAM, GAMMA = 0.05, 0.005
#: label -> make_loss keyword arguments (None: plain cross-entropy)
METHODS = {"plain": None, "CP": dict(method="cp", proj=50), "CP+d+r": dict(method="cp", proj=50, lam=LAM, gamma=GAMMA),
           "CP (exact)": dict(method="cp"), "CP+d+r (exact)": dict(method="cp", lam=LAM, gamma=GAMMA),
           "CROWN-IBP": dict(method="crown-ibp"), "CROWN-IBP+r": dict(method="crown-ibp", gamma=GAMMA)}
N_TRAIN = 60000


def make_step(label, graph, eps, device):
    """A function running one training step on (x, y)."""
    import torch

    from toolkit.train.methods import make_loss
    from toolkit.train.schedules import BetaSchedule, EpsSchedule

    opt = torch.optim.Adam(graph.parameters(), lr=1e-4)
    kw = METHODS[label]
    # Step 1 of a 2-step ramp: ε/2, β = 0.5 for CROWN-IBP (its CROWN pass runs).
    sched = EpsSchedule(eps, 1, 0, 2)
    loss_fn = None
    if kw is not None:
        kw = dict(kw)
        if kw["method"] == "crown-ibp":
            kw["beta"] = BetaSchedule(sched, 0.0)
        loss_fn = make_loss(**kw)

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        if loss_fn is None:
            loss = torch.nn.functional.cross_entropy(graph(x).reshape(len(y), -1), y)
        else:
            loss = loss_fn(graph, x, y, sched.value(1), 1).loss
        loss.backward()
        opt.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    return step


def measure(methods, batches, batch, eps, device, data_root=None) -> dict:
    import torch

    from toolkit import zoo
    from toolkit.data import load_dataset

    ds = load_dataset("mnist", "train", data_root, batch * (batches + 1))
    xs, ys = ds.x.to(device), ds.y.to(device)
    steps = {m: make_step(m, zoo.build("small", "mnist", 0).to(device), eps, device) for m in methods}
    times = {m: [] for m in methods}
    for m in methods:  # warm-up on the extra batch (allocations, first-call overheads)
        steps[m](xs[-batch:], ys[-batch:])
    for b in range(batches):
        x, y = xs[b * batch:(b + 1) * batch], ys[b * batch:(b + 1) * batch]
        for m in methods:
            t = time.perf_counter()
            steps[m](x, y)
            times[m].append(time.perf_counter() - t)
            print(f"batch {b + 1}/{batches} {m}: {times[m][-1]:.3f}s", file=sys.stderr, flush=True)
    return {m: statistics.median(v) for m, v in times.items()}


def table(med: dict, batch: int) -> str:
    from tabulate import tabulate

    per_epoch = -(-N_TRAIN // batch)
    base = med.get("plain")
    rows = [[m, f"{s:.4f}", f"{s * per_epoch:.0f}", f"{s / base:.1f}×" if base else "-"] for m, s in med.items()]
    return tabulate(rows, headers=["method", "s / batch (median)", "s / epoch (60k images)", "ratio to plain"],
                    tablefmt="github", disable_numparse=True)


def main(argv=None) -> int:
    import torch

    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(prog="python -m benchmarks.train_epoch", description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", type=int, default=3, help="timed batches per method (default: 3)")
    p.add_argument("--batch", type=int, default=50, help="batch size (default: 50, Wong et al.)")
    p.add_argument("--eps", type=float, default=0.1, help="training eps at the end of the ramp (default: 0.1)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--data-root", default=None)
    p.add_argument("--out", default=None, help="write the markdown here too")
    args = p.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or "plain" not in methods:
        print(f"train_epoch: error: methods must include 'plain' and come from {', '.join(METHODS)}", file=sys.stderr)
        return 2
    import os

    load0 = os.getloadavg()[0]
    med = measure(methods, args.batches, args.batch, args.eps, args.device, args.data_root)
    load = f"load average {load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end on {os.cpu_count()} CPUs"

    text = (f"# Training cost on MNIST Small, {args.device}\n\nCommand: `OMP_NUM_THREADS="
            f"{os.environ.get('OMP_NUM_THREADS', '')} python -m benchmarks.train_epoch {' '.join(argv)}`\n\n"
            f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), batch {args.batch}, eps {args.eps} "
            f"(steps at eps/2, beta 0.5), median of {args.batches} round-robin batches per method; {load}.\n\n"
            + table(med, args.batch) + "\n")
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
