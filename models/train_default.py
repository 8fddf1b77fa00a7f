"""Train the bundled default model and write the bundled MNIST test subset.

    .venv/bin/python models/train_default.py [--data-root ../shared/data] [--out models]

Writes ``mnist_mlp_2x100.onnx`` (zoo ``mlp_2x100``: Flatten, FC 784-100-100-10, ReLU) and
``mnist_test_1000.npz`` (first 1,000 MNIST test images as uint8 (N,1,28,28), ``y``, ``index``), then
prints clean and IBP-certified accuracy at eps = 0.1 on the subset and on the full test set.

Training (CPU, one thread, seeded): Adam, batch 100, 20 epochs on the full MNIST train set; about 70 s
of CPU time (1-4 min wall clock depending on how busy the machine is).
Loss = kappa * CE(clean) + (1 - kappa) * CE(IBP worst-case logits), the IBP objective of Gowal et al.
2018 with the last layer folded into the margin (CROWN-IBP's "elision"). Schedule: 1 clean epoch, then
eps ramps linearly 0 -> EPS_TRAIN and kappa 1 -> KAPPA_END over RAMP epochs; lr x0.1 at the last
epochs. The interval bounds here are a self-contained 15-line IBP so this script does not depend on
the bound engine; ``tightcert certify`` gives the same IBP figure on the subset (models/README.md).
"""
from __future__ import annotations

import argparse
import hashlib
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from toolkit import zoo  # noqa: E402
from toolkit.data import load_dataset  # noqa: E402
from toolkit.ir import Flatten, Linear, ReLU  # noqa: E402

SEED = 0
EPOCHS, WARMUP, RAMP = 20, 1, 10
EPS_TRAIN, EPS_TEST, KAPPA_END = 0.1, 0.1, 0.5
BATCH, LR, LR_DROP_AT = 100, 1e-3, (15, 18)
N_SUBSET = 1000
N_TRAIN_SUBSET = 2000


# -- interval bound propagation (Flatten / Linear / ReLU chains only) ----------------------------------------
def ibp_margin_lower(graph, x, y, eps):
    """Lower bounds of z_y - z_j for every j over the box [x-eps, x+eps] ∩ [0, 1] (0 at j = y).

    Plain IBP up to the last Linear, whose rows are folded into the margin: for C = W_y - W_j,
    min over the box of C h + b_y - b_j = C mid - |C| rad + b_y - b_j. Sound for any box.
    """
    lo, hi = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    keys = graph.order
    for key in keys[:-1]:
        node = graph.nodes[key]
        if isinstance(node, Linear):
            mid, rad = (hi + lo) / 2, (hi - lo) / 2
            mid, rad = F.linear(mid, node.weight, node.bias), F.linear(rad, node.weight.abs())
            lo, hi = mid - rad, mid + rad
        elif isinstance(node, (ReLU, Flatten)):
            lo, hi = node(lo), node(hi)
        else:
            raise TypeError(f"the script's IBP does not handle {node.op}")
    last = graph.nodes[keys[-1]]
    w, b = last.weight, last.bias
    c_w = w[y].unsqueeze(1) - w.unsqueeze(0)  # (N, 10, hidden)
    c_b = b[y].unsqueeze(1) - b.unsqueeze(0)  # (N, 10)
    mid, rad = ((hi + lo) / 2).unsqueeze(-1), ((hi - lo) / 2).unsqueeze(-1)
    return (c_w @ mid).squeeze(-1) - (c_w.abs() @ rad).squeeze(-1) + c_b


def evaluate(graph, x, y, eps, batch=1000):
    """(clean accuracy, IBP-certified accuracy at eps) in percent."""
    clean = cert = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            xb, yb = x[i:i + batch], y[i:i + batch]
            clean += int((graph(xb).argmax(1) == yb).sum())
            lower = ibp_margin_lower(graph, xb, yb, eps)
            lower.scatter_(1, yb[:, None], float("inf"))  # the j = y row is not a constraint
            cert += int((lower > 0).all(1).sum())
    return 100.0 * clean / len(x), 100.0 * cert / len(x)


# -- training -----------------------------------------------------------------------------------------------
def schedule(epoch_f, eps_train=EPS_TRAIN, kappa_end=KAPPA_END):
    """(eps, kappa) at fractional epoch ``epoch_f``."""
    t = min(max((epoch_f - WARMUP) / RAMP, 0.0), 1.0)
    return eps_train * t, 1.0 - (1.0 - kappa_end) * t


def train(graph, x, y, eps_train=EPS_TRAIN, kappa_end=KAPPA_END):
    opt = torch.optim.Adam(graph.parameters(), lr=LR)
    gen = torch.Generator().manual_seed(SEED)
    steps = len(x) // BATCH
    for epoch in range(EPOCHS):
        if epoch in LR_DROP_AT:
            for group in opt.param_groups:
                group["lr"] *= 0.1
        perm = torch.randperm(len(x), generator=gen)
        t0, total = time.time(), 0.0
        for s in range(steps):
            idx = perm[s * BATCH:(s + 1) * BATCH]
            xb, yb = x[idx], y[idx]
            eps, kappa = schedule(epoch + s / steps, eps_train, kappa_end)
            loss = kappa * F.cross_entropy(graph(xb), yb)
            if eps > 0:
                worst = -ibp_margin_lower(graph, xb, yb, eps)  # worst-case logits relative to z_y
                loss = loss + (1 - kappa) * F.cross_entropy(worst, yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach())
        print(f"epoch {epoch + 1:2d}/{EPOCHS}  eps {eps:.3f}  kappa {kappa:.2f}  loss {total / steps:.4f}  "
              f"({time.time() - t0:.1f} s)", flush=True)


# -- outputs ------------------------------------------------------------------------------------------------
def export(graph, path: Path):
    """ONNX via the toolkit's exporter (opset 13, dynamic batch; it checks parity with onnxruntime)."""
    from toolkit.ir.onnx_export import export_onnx

    export_onnx(graph, path, metadata={
        "tightcert.trained_by": "models/train_default.py",
        "tightcert.training": f"IBP (last layer folded into the margin), eps 0 -> {EPS_TRAIN} over epochs "
                              f"{WARMUP + 1}..{WARMUP + RAMP}, kappa 1 -> {KAPPA_END}, {EPOCHS} epochs, Adam "
                              f"lr {LR}, batch {BATCH}, seed {SEED}, full MNIST train set",
    })


def write_npz(path: Path, arrays: dict):
    """Like np.savez_compressed, but with fixed zip timestamps so the file's sha256 is reproducible."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, arr in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w") as f:
                np.lib.format.write_array(f, np.ascontiguousarray(arr), allow_pickle=False)


def write_subsets(out: Path, train_set, test_set):
    """The bundled subsets: first N_SUBSET test images (certify demo) and first N_TRAIN_SUBSET train images
    (the demo's brief fine-tune), as uint8 so they stay small."""
    for name, ds, n in ((f"mnist_test_{N_SUBSET}.npz", test_set, N_SUBSET),
                        (f"mnist_train_{N_TRAIN_SUBSET}.npz", train_set, N_TRAIN_SUBSET)):
        sub = ds.subset(np.arange(n))
        pixels = torch.round(sub.x * 255).to(torch.uint8).numpy()  # x = k/255 exactly, so this recovers k
        write_npz(out / name, {"x": pixels, "y": sub.y.numpy(), "index": sub.index})
        print(f"{name}  {(out / name).stat().st_size} bytes  sha256 {sha256(out / name)}")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root", default=None, help="folder holding mnist/raw (default: tightcert's search)")
    ap.add_argument("--out", default=str(REPO / "models"), help="output folder (default: models/)")
    ap.add_argument("--eps-train", type=float, default=EPS_TRAIN, help=f"final training eps ({EPS_TRAIN})")
    ap.add_argument("--kappa-end", type=float, default=KAPPA_END, help=f"final weight of clean CE ({KAPPA_END})")
    ap.add_argument("--subsets-only", action="store_true",
                    help="only (re)write the bundled data subsets, no training")
    args = ap.parse_args(argv)
    # One thread: the model is tiny, and a fixed thread count keeps float reductions (hence the weights)
    # identical between runs; more threads only spin when the cores are shared.
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    torch.manual_seed(SEED)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    train_set = load_dataset("mnist", "train", args.data_root)
    test_set = load_dataset("mnist", "test", args.data_root)
    write_subsets(out, train_set, test_set)
    if args.subsets_only:
        return
    graph = zoo.build("mlp_2x100", "mnist", seed=SEED)
    t0 = time.time()
    train(graph, train_set.x, train_set.y, args.eps_train, args.kappa_end)
    print(f"training took {time.time() - t0:.0f} s")
    graph.eval()

    onnx_path, npz_path = out / "mnist_mlp_2x100.onnx", out / f"mnist_test_{N_SUBSET}.npz"
    export(graph, onnx_path)
    sub = test_set.subset(np.arange(N_SUBSET))

    for label, ds in ((f"first {N_SUBSET} test", sub), ("full test (10,000)", test_set)):
        clean, cert = evaluate(graph, ds.x, ds.y, EPS_TEST)
        print(f"{label}: clean {clean:.2f}%  IBP-certified at eps={EPS_TEST}: {cert:.2f}%")
    for p in (onnx_path, npz_path):
        print(f"{p.name}  {p.stat().st_size} bytes  sha256 {sha256(p)}")


if __name__ == "__main__":
    main()
