"""tightcert demo: the whole pipeline on the bundled model and MNIST subsets (what `make demo` runs)."""
from __future__ import annotations

from .common import add_device, add_seed

NAME = "demo"
HELP = "run the main job on the bundled model: import, certify, fine-tune with d and r, export, report"
DESCRIPTION = """The main job on the embedded default (no ../shared needed):

 1. import models/mnist_mlp_2x100.onnx and print its layer graph and onnxruntime parity;
 2. certify it on the bundled MNIST test subset (clean / PGD / certified error per method);
 3. fine-tune it briefly with CP (exact Fast-Lin bounds) + the regularizers d and r on the bundled train
    subset, export the improved ONNX model (checked against onnxruntime) and print before/after;
 4. re-import the exported model and certify it again.

Everything is written under --out-dir: report.h5 (certify), finetuned.onnx, finetuned.h5 (training report)
and report_after.h5. Each run starts afresh (outputs of an earlier demo run, perhaps made by another version
or with other options, are replaced); --resume instead continues an interrupted run."""


def add_arguments(p):
    p.add_argument("--out-dir", default="out/demo", help="output folder (default: out/demo)")
    p.add_argument("--n", type=int, default=300, help="test samples to certify (default: 300)")
    p.add_argument("--eps", type=float, default=0.1, help="l-inf radius in pixels (default: 0.1)")
    p.add_argument("--epochs", type=int, default=1, help="fine-tune epochs (default: 1)")
    p.add_argument("--reg-d", type=float, default=0.1, help="weight λ of regularizer d (default: 0.1)")
    p.add_argument("--reg-r", type=float, default=0.01, help="weight γ of regularizer r (default: 0.01)")
    p.add_argument("--pgd-steps", type=int, default=50, help="PGD steps (default: 50)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted demo run in --out-dir instead of starting afresh")
    add_device(p)
    add_seed(p)


#: What the demo writes under --out-dir (removed before a fresh run).
OUTPUTS = ("report.h5", "report.h5.partial", "report_after.h5", "report_after.h5.partial", "finetuned.onnx",
           "finetuned.h5", "finetuned.h5.partial", "finetuned.ckpt")


def run(args) -> int:
    from pathlib import Path

    from toolkit.certify import certify
    from toolkit.cli.cmd_info import describe
    from toolkit.data import load_dataset
    from toolkit.ir.onnx_import import import_onnx
    from toolkit.train.api import finetune

    root = Path(__file__).resolve().parents[2]
    model = root / "models" / "mnist_mlp_2x100.onnx"
    test_npz, train_npz = root / "models" / "mnist_test_1000.npz", root / "models" / "mnist_train_2000.npz"
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not args.resume:
        import shutil

        for name in OUTPUTS:
            path = out / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    methods = ("ibp", "crown-ibp", "fastlin", "crown")

    _step(1, f"import {model.relative_to(root)}")
    graph = import_onnx(model)
    print(describe(graph))

    _step(2, f"certify on the first {args.n} bundled MNIST test images at eps={args.eps}")
    test = load_dataset(str(test_npz), n=args.n)
    before = certify(graph, test, [args.eps], methods, out=out / "report.h5", pgd_steps=args.pgd_steps,
                     device=args.device, seed=args.seed, model_name="mnist_mlp_2x100", model_path=str(model),
                     data_name="mnist_test_1000", split="test")
    print(before.table())

    _step(3, f"fine-tune {args.epochs} epoch(s): CP (exact Fast-Lin) + {args.reg_d}·d + {args.reg_r}·r, export")
    res = finetune(model, eps=args.eps, out=str(out / "finetuned.onnx"), method="cp", lam=args.reg_d,
                   gamma=args.reg_r, epochs=args.epochs, batch_size=50, train_data=str(train_npz),
                   test_data=str(test_npz), test_n=args.n, eval_methods=["ibp", "fastlin"], pgd_steps=args.pgd_steps,
                   device=args.device, seed=args.seed, resume=args.resume and (out / "finetuned.ckpt").is_dir())
    print(res.table)
    print(f"model:  {res.onnx_path}\nreport: {res.report_path}")

    _step(4, "re-import the exported model and certify it again")
    tuned = import_onnx(res.onnx_path)
    print(f"onnxruntime parity of the exported model: {tuned.meta['ort_max_abs_diff']:.2e}")
    after = certify(tuned, test, [args.eps], methods, out=out / "report_after.h5", pgd_steps=args.pgd_steps,
                    device=args.device, seed=args.seed, model_name="mnist_mlp_2x100_finetuned",
                    model_path=str(res.onnx_path), data_name="mnist_test_1000", split="test")
    print(after.table())
    print(f"\nreports: {out / 'report.h5'}, {out / 'report_after.h5'}, {res.report_path}"
          f"\nre-print any of them with: tightcert report FILE")
    return 0


def _step(i, text):
    print(f"\n=== {i}. {text}", flush=True)
