"""Speed and memory of the bound methods against a plain forward pass, convex_adversarial and auto_LiRPA.

    python -m benchmarks.speed [--batch 100] [--device cpu] [--out benchmarks/results/speed_cpu.json]
    python -m benchmarks.speed --table-only [--out ...]      # rewrite the .md beside the .json from it
    python -m benchmarks.speed --resume [--redo NET:METHOD,...]  # continue a killed run (rows in --out kept)
    python -m benchmarks.speed --resume --redo ... --methods M1,M2 --rounds 3  # rows as medians of rounds

One row per (net, method): seconds for one batch (rows under 2 s: the median of up to 31 warm repeats after
the measured first call), peak extra memory (CPU: peak RSS growth of a fresh
subprocess over its state after set-up, and the peak of live tensor bytes from the torch profiler in a
second run; CUDA: torch.cuda.max_memory_allocated for both), the time as a ratio to
forward+backward in the same run, and the mean margin lower bound (so Fast-Lin and convex_adversarial can
be seen to agree). Targets (issue 4): CROWN-IBP ≤ 4× forward+backward; Fast-Lin ≤ 0.8× convex_adversarial
on the conv nets; CROWN's memory on conv within 2× its largest linear-bound tensor.

auto_LiRPA rows (issue 14; ``auto_lirpa:<method>``, skipped with a one-line reason when the benchmark-only
wheel from ``../shared/wheels`` is not installed): auto_LiRPA 0.7.1 bounds our imported IR graph itself (it
traces the ``nn.Module``; on the CIFAR nets the ONNX graph without our Normalize, over the box mapped into the
normalised space: ``_lirpa_view``), same inputs, ε, margin specs, batch and threads, with its default ``bound_opts``
(patches conv mode, sparse intermediate bounds with IBP), against ours in the certification form
(intermediate bounds intersected with IBP's, as ``tightcert certify`` runs: ``_certification_form``).
``ibp``, ``crown-ibp``, ``crown`` ↔ its "IBP", "CROWN-IBP", "CROWN"; ``alpha-crown/final`` ↔ "CROWN-Optimized"
over the intermediate bounds of its own CROWN, handed back in (``fix_interm_bounds`` alone does not fix them: it
re-bounds every layer with the slopes, which is ``alpha-crown``), and ``alpha-crown`` ↔ "CROWN-Optimized"
without them (intermediate layers re-bounded), both 20 iterations at our learning rate 0.1 (its default is 0.5),
with its early stop switched off (``early_stop_patience`` = the iterations): by default it stops after 10
iterations without an improvement of its summed bound, which on Small and the CIFAR nets ended its runs at
iteration 10 of 20 (issue 14 compares α-CROWN at the same iterations). Under torch 2.14.1 auto_LiRPA's slopes
would never move (``torch.clamp`` no longer passes a gradient at the bound where its α starts); the benchmark
gives them back that gradient without changing a value (``_mend_lirpa_alpha_gradient``), so its α-CROWN
optimises as it was written to. auto_LiRPA has no Fast-Lin.

The committed file was measured with ``OMP_NUM_THREADS=2`` (both cores, both sides; the command line recorded
in it says so, and every row records its thread count), the machine otherwise idle (other jobs stopped).

``--rounds K``: each selected row of a net is measured in K fresh subprocesses, the rows taking turns in every
round (ours, auto_LiRPA's, ours, …), and keeps the median time (``seconds_runs`` holds all K; memory and bound
come from the first round). A row of tens of seconds is one cold call, and this machine's speed drifts by up
to 2× over minutes, so a single pair measured one after the other can be 20 % apart either way; taking turns
lets the drift hit both sides alike. Raw results go to the ``.json``; the ``.md`` is generated from it, with a
side-by-side table (time, tensor peak and mean bound ratios) and one verdict line per issue-14 target.
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
NETS = ("mlp_2x100", "mnist_256x2", "small", "cifar_base_kw", "resnet_2b")
#: our method -> auto_LiRPA's compute_bounds method and bound_opts (module docstring)
LIRPA = {"ibp": ("IBP", {}), "crown-ibp": ("CROWN-IBP", {}), "crown": ("CROWN", {}),
         "alpha-crown/final": ("CROWN-Optimized", {"fix_interm_bounds": True}),
         "alpha-crown": ("CROWN-Optimized", {"fix_interm_bounds": False})}
METHODS = ("forward", "forward+backward", "ibp", "crown-ibp", "fastlin", "crown", "alpha-crown/final",
           "alpha-crown", "convex_adversarial") + tuple(f"auto_lirpa:{m}" for m in LIRPA)
OUT = ROOT / "benchmarks" / "results" / "speed_cpu.json"


def load_net(name):
    """(graph, x, labels, eps): real test images where available."""
    import numpy as np
    import torch

    from toolkit import zoo
    from toolkit.ir.onnx_import import import_onnx

    if name in ("cifar_base_kw", "resnet_2b"):
        # CIFAR nets (resnet_2b has residual Adds): CIFAR-10 test images in pixel units; each model's points
        # file gives the normalisation its ONNX expects (prepended as a Normalize node)
        p = np.load(SHARED / f"models/{name}/points.npz")
        d = np.load(SHARED / "data/cifar10/cifar10_test_exact.npz")
        graph = import_onnx(SHARED / f"models/{name}/{name}.onnx", mean=p["mean"].tolist(), std=p["std"].tolist())
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
        if method.startswith("auto_lirpa:"):
            return lirpa_run()
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
                                  optimum=False, **_certification_form(name)).lower.mean()

    if method.startswith("auto_lirpa:"):
        view = _lirpa_view(net, graph, x, inp)  # built once: the CROWN start below bounds the same view
        lirpa_run = _lirpa(*view, C, method.split(":", 1)[1])
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
    if seconds < 2.0:  # fast rows: the median of up to 31 warm repeats (the first call pays one-off set-up);
        # rows of a few ms moved by 20 % between runs with 7
        seconds = _median_seconds(run, device, max(1, min(31, int(2.0 / max(seconds, 1e-4)))))
    tensor_peak = peak if device.startswith("cuda") else _tensor_peak(run)
    row = {"seconds": seconds, "peak_bytes": max(0, peak), "tensor_peak_bytes": tensor_peak,
           "mean_bound": float(value), "max_coeff_bytes": bw.STATS["max_coeff_elems"] * x.element_size(),
           "threads": torch.get_num_threads()}  # not fixed by the command: torch's default unless OMP_NUM_THREADS
    if method.split("/")[0].endswith("alpha-crown"):  # where the slopes started: the same side's CROWN, untimed
        if method.startswith("auto_lirpa:"):
            row["crown_mean_bound"] = float(_lirpa(*view, C, "crown")())
        else:
            with torch.no_grad():
                row["crown_mean_bound"] = float(compute_bounds(graph, inp, C, "crown", optimum=False,
                                                               **_certification_form("crown")).lower.mean())
    return row


def _certification_form(method) -> dict:
    """Our CROWN and α-CROWN rows run as ``tightcert certify`` runs them: intermediate bounds intersected with
    IBP's (``margin_lower_bound``'s default). auto_LiRPA's defaults intersect part of the way: its sparse
    intermediate bounds keep IBP's bounds for every neuron IBP proves stable in *all* samples of the batch, so
    its CROWN depends on the batch (sample 0 of mlp_2x100 alone: 9.2950; in a batch of 10: 9.2652; of 20 or
    more: 9.2401, pure CROWN). Pure CROWN on our side would be looser than auto_LiRPA on small batches (the
    alpha batch of 10) and is no faster."""
    return {"intersect_ibp": True} if method in ("crown", "alpha-crown") else {}


def _lirpa_view(net, graph, x, inp):
    """What auto_LiRPA bounds: our graph and box, except on the CIFAR nets, where its patches-mode CROWN fails on
    our prepended per-channel Normalize (module docstring): there it gets the ONNX graph alone and the same box
    mapped into the normalised space, (box − mean) / std per channel, which has the same bounds."""
    if net not in ("cifar_base_kw", "resnet_2b"):
        return graph, x, inp
    import numpy as np
    import torch

    from toolkit.ir.onnx_import import import_onnx
    from toolkit.spec import InputSet

    p = np.load(SHARED / f"models/{net}/points.npz")
    mean, std = (torch.tensor(p[k], dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1) for k in ("mean", "std"))
    plain = import_onnx(SHARED / f"models/{net}/{net}.onnx").to(x.device).eval()
    norm = lambda t: (t - mean) / std  # noqa: E731
    return plain, norm(x), InputSet(norm(inp.lo), norm(inp.hi), norm(x))


def _lirpa(graph, x, inp, C, method):
    """auto_LiRPA's bound of the same spec on the same graph (built outside the timed call, like our import)."""
    try:
        from auto_LiRPA import BoundedModule, BoundedTensor, PerturbationLpNorm
    except ImportError:
        raise SystemExit("auto_LiRPA not installed (benchmark only: pip install ../shared/wheels/auto_lirpa-*.whl)")
    import torch

    _mend_lirpa_alpha_gradient()
    name, opts = LIRPA[method]
    # as many iterations as ours: no early stop (its default patience is 10; module docstring)
    opt_args = {"iteration": 20, "lr_alpha": 0.1, "early_stop_patience": 20, **opts}
    model = BoundedModule(graph, torch.zeros_like(x[:1]), bound_opts={"optimize_bound_args": opt_args},
                          device=x.device)
    bt = BoundedTensor(x, PerturbationLpNorm(norm=float("inf"), x_L=inp.lo, x_U=inp.hi))

    def run():
        if method == "alpha-crown/final":  # its CROWN's intermediate bounds handed back in, as ours keeps them
            with torch.no_grad():
                model.compute_bounds(x=(bt,), C=C, method="CROWN", bound_upper=False)
            # the bounds its CROWN pass left on the nodes (``save_intermediate`` would recompute every node's with
            # a dense identity spec, out of memory on the conv nets)
            interm = {n.name: (n.lower, n.upper) for n in model.nodes() if n.name != model.final_name
                      and getattr(n, "lower", None) is not None and getattr(n, "upper", None) is not None}
            return model.compute_bounds(x=(bt,), C=C, method=name, bound_upper=False,
                                        interm_bounds=interm)[0].detach().mean()
        if name == "CROWN-Optimized":  # autograd for its own slopes, as ours
            return model.compute_bounds(x=(bt,), C=C, method=name, bound_upper=False)[0].detach().mean()
        with torch.no_grad():
            return model.compute_bounds(x=(bt,), C=C, method=name, bound_upper=False)[0].mean()

    return run


def _mend_lirpa_alpha_gradient():
    """Give auto_LiRPA's ReLU slopes back the gradient its α-CROWN was written for, without changing a value.

    auto_LiRPA starts every α at exactly 0 or 1 (CROWN's adaptive slopes) and clamps it into [0, 1] before use
    (``BoundRelu._relu_mask_alpha``). Under torch ≤ 2.x of its time, ``torch.clamp``'s gradient was 1 on the
    closed interval; under torch 2.14.1 it is 0 at a scalar bound itself (measured: the gradient of
    ``clamp(t, 0., 1.)`` at t = 0, 0.5, 1 is 0, 1, 0), so no slope ever moves and its α-CROWN returns CROWN's
    bound after all its iterations. Adding ``α − α.detach()`` (zero) where α sits on a bound of an unstable
    neuron restores the closed-interval gradient and leaves every value as it was."""
    from auto_LiRPA.operators.relu import BoundRelu

    original = BoundRelu._relu_mask_alpha
    if getattr(original, "mended", False):
        return

    def mask_alpha(lower, upper, lb_lower_d, ub_lower_d, leaky_alpha=0.0):
        lb_new, ub_new, zero = original(lower, upper, lb_lower_d, ub_lower_d, leaky_alpha=leaky_alpha)
        unstable = ((lower < 0) & (upper > 0)).to(lower.dtype)

        def closed(new, alpha):
            if alpha is None:
                return new
            edge = ((alpha == leaky_alpha) | (alpha == 1.0)).to(alpha.dtype)
            return new + (alpha - alpha.detach()) * edge * unstable

        return closed(lb_new, lb_lower_d), closed(ub_new, ub_lower_d), zero

    mask_alpha.mended = True
    BoundRelu._relu_mask_alpha = staticmethod(mask_alpha)


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
                    help="samples for the alpha-crown rows (all slopes; ~8 s per MNIST Small sample on 2 CPU cores); "
                         "their ratio to forward+backward is per sample")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--nets", default=",".join(NETS))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--out", default=str(OUT), help="raw results (.json); the .md is written beside it")
    ap.add_argument("--table-only", action="store_true", help="only rewrite the .md from --out")
    ap.add_argument("--resume", action="store_true",
                    help="keep the rows already in --out (written after every row) and measure the rest")
    ap.add_argument("--redo", default="", metavar="NET:METHOD,...", help="with --resume: measure these rows again")
    ap.add_argument("--rounds", type=int, default=1, help="measure each selected row in this many fresh "
                    "subprocesses, the rows of a net taking turns, and keep the median time")
    ap.add_argument("--one", nargs=2, metavar=("NET", "METHOD"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        from toolkit.runtime import retain_freed_memory

        retain_freed_memory()  # as the CLI does, for every row alike
        print(json.dumps(measure(args.one[0], args.one[1], args.batch, args.device)))
        return 0
    out = Path(args.out)
    if args.table_only:
        data = json.loads(out.read_text())
    else:
        data = run_all(args)
        out.write_text(json.dumps(data, indent=1) + "\n")
    text = markdown(data)
    out.with_suffix(".md").write_text(text)
    print(text)
    return 0


def run_all(args) -> dict:
    import platform

    import torch

    out = Path(args.out)
    old = json.loads(out.read_text()) if args.resume and out.is_file() else {}
    redo = {tuple(r.split(":", 1)) for r in args.redo.split(",") if r}
    nets = {n: {m: r for m, r in rows.items() if (n, m) not in redo} for n, rows in old.get("nets", {}).items()}
    threads = os.environ.get("OMP_NUM_THREADS")  # torch's default otherwise (2 here); every row records its own
    command = f"python -m benchmarks.speed --batch {args.batch} --alpha-batch {args.alpha_batch} --device {args.device}"
    meta = {"command": (f"OMP_NUM_THREADS={threads} " if threads else "") + command, "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "batch": args.batch,
            "load": old.get("load", list(os.getloadavg()))}
    for net in args.nets.split(","):
        nets.setdefault(net, {})
        todo = [m for m in args.methods.split(",") if m not in nets[net]]
        runs, rounds = {m: [] for m in todo}, max(1, args.rounds)
        for _ in range(rounds):  # the rows of a net take turns in every round
            for method in todo:
                runs[method].append(_measure_row(net, method, args))
                if len(runs[method]) == rounds:  # its last run: stored at once (a killed run resumes after it)
                    _store_row(out, meta, nets, net, method, runs[method])
    return dict(meta, nets=nets)


def _measure_row(net, method, args) -> dict:
    """One row in a fresh subprocess."""
    batch = args.alpha_batch if method.endswith("alpha-crown") else args.batch
    cmd = [sys.executable, "-m", "benchmarks.speed", "--batch", str(batch), "--device", args.device,
           "--one", net, method]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode < 0:  # e.g. SIGKILL from the kernel's out-of-memory killer
        r = {"seconds": None, "note": f"killed by signal {-proc.returncode} (out of memory?)"}
    elif proc.returncode != 0:
        errs = [x for x in proc.stderr.strip().splitlines() if "Error" in x] or proc.stderr.splitlines()
        r = {"seconds": None, "note": (errs or ["failed"])[-1][:100]}
    else:
        r = json.loads(proc.stdout.strip().splitlines()[-1])
    print(net, method, r, file=sys.stderr, flush=True)
    return dict(r, batch=batch)


def _store_row(out, meta, nets, net, method, runs) -> None:
    """The row from its runs (several: the median time, the rest from the first run), in METHODS order (a
    redone row keeps its place), and the file rewritten: a killed run resumes with --resume."""
    import statistics

    from toolkit.fileio import atomic_path

    row = dict(runs[0])
    if len(runs) > 1:
        times = [r.get("seconds") for r in runs]
        row["seconds_runs"] = times
        row["seconds"] = statistics.median(times) if None not in times else None
    nets[net][method] = row
    rank = lambda kv: METHODS.index(kv[0]) if kv[0] in METHODS else len(METHODS)  # noqa: E731
    nets[net] = dict(sorted(nets[net].items(), key=rank))
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(dict(meta, nets=nets), indent=1) + "\n")


def _mib(v):
    return "-" if v is None else f"{v / 2 ** 20:.0f}"


def main_table(data: dict) -> str:
    from tabulate import tabulate

    rows = []
    for net, results in data["nets"].items():
        fb = results.get("forward+backward", {}).get("seconds")
        for method, r in results.items():
            s = r.get("seconds")
            per_sample = (s / r["batch"]) / (fb / data["batch"]) if (s is not None and fb) else None
            rows.append([net, method, r["batch"], f"{s:.3f}" if s is not None else "-",
                         f"{per_sample:.1f}" if per_sample is not None else "-", _mib(r.get("peak_bytes")),
                         _mib(r.get("tensor_peak_bytes")), _mib(r.get("max_coeff_bytes") or None),
                         f"{r['mean_bound']:.4f}" if r.get("mean_bound") is not None else r.get("note", "-")])
    return tabulate(rows, ["net", "method", "batch", "seconds", "× fwd+bwd (per sample)", "peak RSS MiB",
                           "peak tensors MiB", "largest A MiB", "mean margin lb"], tablefmt="github")


def lirpa_rows(data: dict) -> list:
    """(net, method, ours, theirs) for every pair where both ran."""
    out = []
    for net, results in data["nets"].items():
        for method in LIRPA:
            ours, theirs = results.get(method), results.get(f"auto_lirpa:{method}")
            if ours and theirs and ours.get("seconds") and theirs.get("seconds"):
                out.append((net, method, ours, theirs))
    return out


def readme_reading(data: dict) -> str:
    """README's reading of the side-by-side table (a test checks README holds it, line breaks aside)."""
    t, m, tight = {}, {}, {}
    for net, method, a, b in lirpa_rows(data):
        t[net, method] = a["seconds"] / b["seconds"]
        m[net, method] = a["tensor_peak_bytes"] / b["tensor_peak_bytes"]
        tight.setdefault(method, []).append(a["mean_bound"] > b["mean_bound"])
    word = lambda method: "tighter on every net" if all(tight[method]) else "not always tighter"  # noqa: E731
    rng = lambda vals: (f"{min(vals):.2f}–{max(vals):.2f}" if f"{min(vals):.2f}" != f"{max(vals):.2f}"  # noqa: E731
                        else f"{min(vals):.2f}")
    per_net = lambda method: ", ".join(f"{n} {v:.2f}×" for (n, k), v in t.items() if k == method)  # noqa: E731
    cheap = [v for (n, k), v in t.items() if k in ("ibp", "crown-ibp")]
    full = [k for k in t if k[1] == "alpha-crown"]
    slow = [f"{n} {t[n, a]:.2f}×" for n, a in full if t[n, a] > 1]
    return (f"IBP and CROWN-IBP take {rng(cheap)}× auto_LiRPA's time; CROWN {per_net('crown')}; "
            f"`alpha-crown/final` {rng([v for k, v in t.items() if k[1] == 'alpha-crown/final'])}× its time, "
            f"{word('alpha-crown/final')}; full `alpha-crown` is {word('alpha-crown')} "
            f"{'and' if max(m[k] for k in full) <= 1 else 'but'} holds {rng([m[k] for k in full])}× its tensor "
            "memory, " + (f"and takes more time on {', '.join(slow)}." if slow else "at no more time."))


def lirpa_table(data: dict) -> str:
    from tabulate import tabulate

    rows = []
    for net, method, a, b in lirpa_rows(data):
        mem = (a["tensor_peak_bytes"] / b["tensor_peak_bytes"]) if b.get("tensor_peak_bytes") else None
        rows.append([net, method, a["batch"], f"{a['seconds']:.3f}", f"{b['seconds']:.3f}",
                     f"{a['seconds'] / b['seconds']:.2f}", f"{mem:.2f}" if mem is not None else "-",
                     f"{a['mean_bound']:.4f}", f"{b['mean_bound']:.4f}", _verdict(a, b)])
    return tabulate(rows, ["net", "method", "batch", "ours s", "auto_LiRPA s", "time ratio", "tensor peak ratio",
                           "our mean lb", "its mean lb", "issue 14: ≤ 1× time and memory, bound ≥"],
                    tablefmt="github", disable_numparse=True)


def alpha_start_text(data: dict) -> str:
    """Where each side's α-CROWN started (its own CROWN on the same samples, untimed) and where it ended."""
    out = []
    for net, method, a, b in lirpa_rows(data):
        if "crown_mean_bound" in a and "crown_mean_bound" in b:
            out.append(f"{net} `{method}`: ours {a['crown_mean_bound']:.4f} → {a['mean_bound']:.4f}, auto_LiRPA "
                       f"{b['crown_mean_bound']:.4f} → {b['mean_bound']:.4f}")
    if not out:
        return ""
    return ("Mean bound of α-CROWN's start (each side's own CROWN on the same samples, untimed) → its result: "
            + "; ".join(out) + ".")


def _verdict(a, b) -> str:
    misses = []
    if a["seconds"] > b["seconds"]:
        misses.append(f"{a['seconds'] / b['seconds']:.2f}× its time")
    if b.get("tensor_peak_bytes") and a["tensor_peak_bytes"] > b["tensor_peak_bytes"]:
        misses.append(f"{a['tensor_peak_bytes'] / b['tensor_peak_bytes']:.2f}× its tensor memory")
    if a["mean_bound"] < b["mean_bound"] - 1e-6 * (1 + abs(b["mean_bound"])):
        misses.append(f"looser by {b['mean_bound'] - a['mean_bound']:.4g}")
    return "met" if not misses else "missed: " + ", ".join(misses)


#: Why rows miss or are absent (prose; every figure is in the tables above).
WHY = """Why rows miss or are absent:

- How this file was made: every row in one run on the idle machine with `OMP_NUM_THREADS=2` (both cores, both
  sides); then, after the changes below, the IBP, CROWN-IBP, CROWN and α-CROWN rows of both sides again with
  `--resume --redo NET:METHOD,... --methods ... --rounds 3` (`--rounds 5` for IBP and CROWN-IBP on the CIFAR nets:
  rows of a few milliseconds, whose time moved by up to 2× between fresh processes), the machine's other jobs
  stopped meanwhile; last, after the window changes under "CROWN on the conv nets", the `fastlin`, `crown` and
  α-CROWN rows of both sides on small, cifar_base_kw and resnet_2b (and `convex_adversarial` on the first two) in
  three rounds the same way. The rows measured in rounds are listed above with every round's time.
- Ours runs in the certification form: intermediate bounds intersected with IBP's (what `tightcert certify`
  runs). auto_LiRPA's defaults intersect part of the way: its sparse intermediate bounds keep IBP's bounds for
  the neurons IBP proves stable in every sample of the batch, so its CROWN depends on the batch (on mlp_2x100 at
  batch 100 it is pure CROWN, at the alpha batch of 10 tighter). Ours is never looser than either.
- auto_LiRPA under torch 2.14.1: `torch.clamp(t, 0., 1.)` has gradient 0 at t = 0 and t = 1, and auto_LiRPA
  starts every slope exactly there and clamps it before use, so no slope would ever move and its α-CROWN would
  return its CROWN after all its iterations. The benchmark adds `α − α.detach()` (zero) at those points
  (`_mend_lirpa_alpha_gradient`): its values are unchanged and its slopes optimise as written.
- `alpha-crown/final`: auto_LiRPA's `fix_interm_bounds` alone does not fix the intermediate bounds: without
  `interm_bounds` handed in, every call of its optimised bound re-bounds every layer with the slopes, which is
  full α-CROWN (on mlp_2x100's ten alpha samples it ended exactly at its `alpha-crown` bound). Its row now runs its
  CROWN and hands the bounds left on its nodes back in, inside the timed call, as ours computes CROWN's
  intermediate bounds inside its own.
- `alpha-crown` (all layers): both sides run 20 iterations (auto_LiRPA's early stop off) and end tighter than
  their CROWN. Ours re-bounds every intermediate layer with slopes of its own per (sample, neuron spec, earlier
  neuron) and intersects each new bound with the best so far; the gradient now passes through that intersection
  as if it were not there (`alpha._kept_straight_through`): through `torch.maximum` it was 0 wherever an earlier
  iteration had been tighter, which froze those neurons' slopes and left ours looser than auto_LiRPA on
  mlp_2x100. Conv layers over a chain of single-input ops are bounded on window coefficients (each neuron's
  receptive field only, as auto_LiRPA's patches mode; `toolkit/bounds/patches.py`) with one slope per window
  cell, fully connected layers keep slopes only for unstable neurons (sparse α), Adam runs fused, samples are
  grouped into cache-sized sub-batches (`kernels.ALPHA_GROUP_ELEMS`), and a window ReLU's gathered relaxation is
  reused across iterations while its bounds do not change. Its tensor memory is under auto_LiRPA's on every net:
  the input concretization keeps sgn(g) in one byte per coefficient and ReLU's line choice saves three tensors
  instead of five (`backward._Concretize`, `ops._ReluLines`).
- `ibp`: our graph holds the prepended per-channel Normalize of the CIFAR nets, whose box auto_LiRPA's view gets
  ready-made (below). IBP alone drops each node's bounds after their last use unless a relaxation would need
  them, an affine op whose input bounds nobody reads afterwards builds its centre in their memory
  (`Rule.ibp_donated`), and the spec merged into the last layer takes its centre through the K logits.
- CROWN on the conv nets: a window's cells are read from an unfold of the map at the windows' own grid (a conv's
  stride), no longer at every position: on cifar_base_kw that unfold, at stride 1 and once per chunk of neuron
  specs, had been most of CROWN's time. What was left there (cifar_base_kw's CROWN was the one row missed, 1.00×,
  before this run) was mostly memory touched for the first time: on this machine (a VM; torch's allocations get
  no transparent huge pages) a fresh tensor's page faults cost several times the arithmetic that fills it. So a
  conv's transpose of window coefficients runs in blocks of specs that reuse one buffer without autograd
  (`kernels.PATCH_BLOCK_ELEMS`; one product over all specs wrote ~85 MB of fresh memory per call), a transposed
  window's padding cells are no longer zeroed (every later read sees 0 there, and a conv masks before its bias),
  the input concretization takes each window position's box once for a run of specs sharing it (one matrix
  product per run; `neuron_bounds` orders a layer's neurons by cell) instead of copying it per spec, and a
  Normalize next to the input is concretized against the box through it (auto_LiRPA's view gets that box
  ready-made, below). The bounds are unchanged to the last digit printed.
- CIFAR nets: auto_LiRPA's patches-mode CROWN stops with an AssertionError on our prepended per-channel
  Normalize (constants shaped (C, 1, 1)), so its rows there bound the ONNX graph alone over the same box mapped
  into the normalised space ((box − mean) / std, the same bounds: the mean bounds agree). Rows killed for
  memory are marked so in the main table."""


def _rounds_text(data: dict) -> str:
    """Which rows are medians of rounds (``--rounds``), from the data."""
    rows = [(net, m, r["seconds_runs"]) for net, res in data["nets"].items() for m, r in res.items()
            if r.get("seconds_runs")]
    if not rows:
        return ""
    ks = sorted({len(runs) for *_, runs in rows})
    each = lambda r: ", ".join(f"{t:.3f}" if t is not None else "-" for t in r)  # noqa: E731
    listed = "; ".join(f"{net} {m} ({each(runs)} s)" for net, m, runs in rows)
    return (f" Rows measured in rounds (`--rounds {'/'.join(map(str, ks))}`: fresh subprocesses, the rows of a "
            f"net taking turns each round, so that the machine's drift hits both sides alike) show the median "
            f"time: {listed}.")


def markdown(data: dict) -> str:
    load = data.get("load")
    head = [f"# Bound-method speed (batch {data['batch']})", "", f"Command: `{data['command']}`  ",
            f"torch {data['torch']}, {data['cpu']}, {data['cores']} cores"
            + (f", 1-minute load average {load[0]:.1f} as recorded by the run" if load else "") + ".", "",
            "One fresh subprocess per row; rows under 2 s are the median of warm repeats. \"peak RSS\" is the "
            "process's resident-set growth; \"peak tensors\" the largest total of live tensor bytes seen by the "
            "torch profiler in a second run; \"largest A\" the biggest linear-bound coefficient tensor. The "
            "`alpha-crown` rows run on the alpha batch only: their ratio is per sample. Raw results: the `.json` "
            "beside this file." + _rounds_text(data), "", main_table(data), ""]
    if lirpa_rows(data):
        moved = alpha_start_text(data)
        head += ["## Side by side with auto_LiRPA 0.7.1", "", lirpa_table(data), ""] + \
            ([moved, ""] if moved else []) + [WHY, ""]
    return "\n".join(head)


if __name__ == "__main__":
    raise SystemExit(main())
