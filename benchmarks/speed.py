"""Speed and memory of the bound methods against a plain forward pass and convex_adversarial.

    python -m benchmarks.speed [--batch 100] [--device cpu] [--out benchmarks/results/speed_cpu.md]

One row per (net, method): seconds for one batch (rows under 2 s: the median of up to 7 warm repeats after
the measured first call), peak extra memory (CPU: peak RSS growth of a fresh
subprocess over its state after set-up, and the peak of live tensor bytes from the torch profiler in a
second run; CUDA: torch.cuda.max_memory_allocated for both), the time as a ratio to
forward+backward in the same run, and the mean margin lower bound (so Fast-Lin and convex_adversarial can
be seen to agree). Targets (issue 4): CROWN-IBP ≤ 4× forward+backward; Fast-Lin ≤ 0.8× convex_adversarial
on the conv nets; CROWN's memory on conv within 2× its largest linear-bound tensor.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TIGHTCERT_SHARED", ROOT.parent / "shared"))
NETS = ("mlp_2x100", "mnist_256x2", "small", "cifar_base_kw")
METHODS = ("forward", "forward+backward", "ibp", "crown-ibp", "fastlin", "crown", "alpha-crown/final",
           "alpha-crown", "convex_adversarial")


def load_net(name):
    """(graph, x, labels, eps): real test images where available."""
    import numpy as np
    import torch

    from toolkit import zoo
    from toolkit.ir.onnx_import import import_onnx

    if name == "cifar_base_kw":
        p = np.load(SHARED / "models/cifar_base_kw/points.npz")
        d = np.load(SHARED / "data/cifar10/cifar10_test_exact.npz")
        mean, std = p["mean"].reshape(1, 3, 1, 1), p["std"].reshape(1, 3, 1, 1)
        graph = import_onnx(SHARED / "models/cifar_base_kw/cifar_base_kw.onnx",
                            mean=p["mean"].tolist(), std=p["std"].tolist())
        return graph, torch.tensor(d["x"] / 255.0, dtype=torch.float32), torch.tensor(d["y"]), 2 / 255
    sub = np.load(ROOT / "models/mnist_test_1000.npz")
    x = torch.tensor(sub["x"] / 255.0 if sub["x"].dtype == np.uint8 else sub["x"], dtype=torch.float32)
    y = torch.tensor(sub["y"])
    if name == "mnist_256x2":
        graph = import_onnx(SHARED / "models/mnist-net_256x2/mnist-net_256x2.onnx")
        return graph, x.reshape(-1, 784, 1), y, 0.03
    if name == "mlp_2x100":
        return import_onnx(ROOT / "models/mnist_mlp_2x100.onnx"), x, y, 0.1
    return zoo.build(name, "mnist", seed=0), x, y, 0.1


def measure(net, method, batch, device):
    """Runs in a fresh subprocess: returns seconds, peak extra bytes and the mean margin bound."""
    import resource

    import torch

    from toolkit.bounds import backward as bw
    from toolkit.bounds import compute_bounds
    from toolkit.spec import InputSet, margin_spec

    torch.manual_seed(0)
    graph, x, y, eps = load_net(net)
    x, y = x[:batch].to(device), y[:batch].to(device)
    graph = graph.to(device).eval()
    inp = InputSet.from_eps(x, eps, clip=(0.0, 1.0))
    C = margin_spec(y, 10).to(device)

    def run():
        if method == "forward":
            with torch.no_grad():
                return graph(x).sum()
        if method == "forward+backward":
            loss = torch.nn.functional.cross_entropy(graph(x), y)
            loss.backward()
            return loss
        if method == "convex_adversarial":
            import convex_adversarial as ca

            from benchmarks.convex_adversarial_net import to_sequential

            seq = to_sequential(graph)
            with torch.no_grad():
                dual = ca.DualNetwork(seq.to(device), x, eps, bounded_input=True)
                return dual(C).mean()  # dual(c) is a lower bound of c·f (robust_loss uses -dual(c) as logits)
        with torch.no_grad():  # alpha-crown enables autograd for its own slopes only
            # As certification runs it: no autograd, no recorded optimum (training's cost is in train_epoch.py).
            name, _, scope = method.partition("/")  # alpha-crown/final: the final pass's slopes only
            return compute_bounds(graph, inp, C, name, alpha_iters=20, alpha_scope=scope or "all",
                                  optimum=False).lower.mean()

    run() if method in ("forward", "forward+backward") else None  # warm-up for the cheap ones
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    bw.STATS["max_coeff_elems"] = 0
    t = time.perf_counter()
    value = run()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    seconds = time.perf_counter() - t
    if seconds < 2.0:  # fast rows: the median of up to 7 warm repeats (the first call pays one-off set-up)
        seconds = _median_seconds(run, device, max(1, min(7, int(2.0 / max(seconds, 1e-4)))))
    tensor_peak = peak if device.startswith("cuda") else _tensor_peak(run)
    return {"seconds": seconds, "peak_bytes": max(0, peak), "tensor_peak_bytes": tensor_peak,
            "mean_bound": float(value), "max_coeff_bytes": bw.STATS["max_coeff_elems"] * x.element_size()}


def _median_seconds(run, device, repeats) -> float:
    import statistics

    import torch

    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _tensor_peak(run) -> int:
    """Peak bytes of live tensors during a second ``run()``, from the torch profiler's allocation events:
    what the code holds, without the C allocator's fragmentation that the RSS figure includes."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--alpha-batch", type=int, default=10,
                    help="samples for the alpha-crown row (all slopes; ~8 s per MNIST Small sample on 2 CPU cores); "
                         "its ratio to forward+backward is per sample")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--nets", default=",".join(NETS))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--out", default=None, help="markdown file for the table (default: print only)")
    ap.add_argument("--one", nargs=2, metavar=("NET", "METHOD"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one[0], args.one[1], args.batch, args.device)))
        return 0
    from tabulate import tabulate

    rows = []
    for net in args.nets.split(","):
        results = {}
        for method in args.methods.split(","):
            batch = args.alpha_batch if method == "alpha-crown" else args.batch
            cmd = [sys.executable, "-m", "benchmarks.speed", "--batch", str(batch), "--device", args.device,
                   "--one", net, method]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if proc.returncode != 0:
                results[method] = {"seconds": None, "note": proc.stderr.strip().splitlines()[-1][:80]}
            else:
                results[method] = json.loads(proc.stdout.strip().splitlines()[-1])
            results[method]["batch"] = batch
            print(net, method, results[method], file=sys.stderr, flush=True)
        fb = results.get("forward+backward", {}).get("seconds")
        for method, r in results.items():
            s = r.get("seconds")
            per_sample = (s / r["batch"]) / (fb / args.batch) if (s is not None and fb) else None
            rows.append([net, method, r["batch"], f"{s:.3f}" if s is not None else "-",
                         f"{per_sample:.1f}" if per_sample is not None else "-",
                         f"{r['peak_bytes'] / 2**20:.0f}" if r.get("peak_bytes") is not None else "-",
                         f"{r['tensor_peak_bytes'] / 2**20:.0f}" if r.get("tensor_peak_bytes") is not None else "-",
                         f"{r['max_coeff_bytes'] / 2**20:.0f}" if r.get("max_coeff_bytes") else "-",
                         f"{r['mean_bound']:.4f}" if r.get("mean_bound") is not None else r.get("note", "-")])
    headers = ["net", "method", "batch", "seconds", "× fwd+bwd (per sample)", "peak RSS MiB", "peak tensors MiB",
               "largest A MiB", "mean margin lb"]
    table = tabulate(rows, headers, tablefmt="github")
    print(table)
    if args.out:
        import platform

        import torch

        Path(args.out).write_text(
            f"# Bound-method speed (batch {args.batch}, device {args.device})\n\n"
            f"Command: `python -m benchmarks.speed --batch {args.batch} --alpha-batch {args.alpha_batch} "
            f"--device {args.device}`  \n"
            f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} cores.\n\n{table}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
