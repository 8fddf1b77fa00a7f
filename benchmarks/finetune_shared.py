"""The fine-tune recipe on the VNN-COMP models in ``../shared/models``: before/after table (issue 16).

    python -m benchmarks.finetune_shared [--models a,b] [--work build/finetune_shared]
        [--out benchmarks/results/finetune_shared.json]
    python -m benchmarks.finetune_shared --table-only [--out ...]     # rewrite the .md from the .json

Each model is fine-tuned with ``tightcert finetune`` exactly as a user would run it with the recipe's defaults
(``toolkit.train.recipes``: lr 1e-4, 1 epoch, ε ramp from the model's median certified radius, clean-accuracy
guard of 2 points on 500 held-out training images, keep-best on those images), at the ε of its VNN-COMP specs
(``MODELS``). The loss is the
default, CP (Wong & Kolter's bound, the paper's method), on all 60,000 MNIST training images: exact Fast-Lin
on mnist-net_256x2 and Convnet_avgpool (its only ReLU layer is the first, where IBP is already exact), and
Cauchy projections (``--proj 50``, Wong et al.'s choice for larger nets) on mnist_relu_9_200, where one exact
step measured 4.6 s (784 input generators through eight 200×200 layers). On the CIFAR-10 nets, with 3,072
input generators, projections too, and the first 10,000 training images. IBP-based losses are no choice here: none of these models was trained with
IBP, and their IBP bounds are so loose that a first CROWN-IBP attempt (loss ≈ 690 on mnist_relu_9_200) wrecked
the model until the guard rolled it back. Before and after are certified on the first ``test_n`` images of the
test split with IBP, CROWN-IBP and CROWN (each dearer method only on images the cheaper ones left open and PGD
did not break) and 100 PGD steps.

Work goes to ``--work`` (PATH.onnx / PATH.h5 / PATH.ckpt per model, resumable: a killed run continues with
``--resume``); each finished model's summary is written to the ``.json`` at once, so a rerun skips it. The
``.md`` and README's fine-tune table are generated from the ``.json`` (a test checks both).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TIGHTCERT_SHARED", ROOT.parent / "shared")) / "models"
OUT = ROOT / "benchmarks" / "results" / "finetune_shared.json"
WORK = ROOT / "build" / "finetune_shared"
EVAL = ("ibp", "crown-ibp", "crown")
CIFAR = dict(data="cifar10", test_n=200, proj=50, train_n=10000)
#: model -> its specs' ε in [0, 1] pixel units (``../shared/models/README.md``), the dataset, the test images
#: certified, the normalisation outside the graph (mean, std) where the file takes normalised inputs, the
#: projection size where exact Fast-Lin is too dear, and how many training images (default: all)
MODELS = {
    "mnist-net_256x2": dict(eps=0.03, data="mnist", test_n=1000),
    "mnist_relu_9_200": dict(eps=0.015, data="mnist", test_n=1000, proj=50),
    "Convnet_avgpool": dict(eps=0.02, data="mnist", test_n=1000),
    "cifar_base_kw": dict(CIFAR, eps=2 / 255, mean="0.485,0.456,0.406", std="0.225,0.225,0.225"),
    "resnet_2b": dict(CIFAR, eps=2 / 255, mean="0.4914,0.4822,0.4465", std="0.2471,0.2435,0.2616"),
}
COLUMNS = ("clean_err", "pgd_err", *[f"certified_err/{m}" for m in EVAL])


def command(name: str, work: Path, resume: bool) -> list:
    """``tightcert finetune`` arguments for ``name`` (the recipe's defaults, CP, the model's ε)."""
    m = MODELS[name]
    args = ["finetune", str(next((SHARED / name).glob("*.onnx"))), "--eps", repr(m["eps"]), "--data", m["data"],
            "--test-n", str(m["test_n"]), "--eval-method", ",".join(EVAL), "--no-progress",
            "--out", str(work / name / "model")]
    for key, flag in (("mean", "--mean"), ("std", "--std"), ("proj", "--proj"), ("train_n", "--train-n")):
        if key in m:
            args += [flag, str(m[key])]
    return args + (["--resume"] if resume else [])


def measure(name: str, work: Path) -> dict:
    from toolkit.cli import main
    from toolkit.report.groups import read_train_group

    (work / name).mkdir(parents=True, exist_ok=True)
    ckpt = work / name / "model.ckpt"
    resume = any(ckpt.glob("*")) if ckpt.is_dir() else False
    rc = main(command(name, work, resume))
    if rc != 0:
        raise SystemExit(f"finetune_shared: finetune failed on {name} (exit {rc})")
    attrs, _, before_after = read_train_group(work / name / "model.h5")  # JSON attrs come back decoded
    return {"command": "tightcert " + " ".join(command(name, Path("OUT"), False)),
            "eps": MODELS[name]["eps"], "eps_start": float(attrs["eps_start"]), "n_train": int(attrs["n_train"]),
            "train_time_s": float(attrs["train_time_s"]), "guard": attrs.get("guard"),
            "before": {c: before_after[c][0] for c in (*COLUMNS, "n")},
            "after": {c: before_after[c][1] for c in (*COLUMNS, "n")}}


def table(data: dict) -> str:
    """Model rows, before → after per column (errors in %), and the ramp's start."""
    from tabulate import tabulate

    heads = ["model", "ε", "test images", "clean err %", "PGD err %",
             *[f"certified err % ({m})" for m in EVAL], "ramp from ε", "guard"]
    rows = []
    for name, r in data["models"].items():
        b, a = r["before"], r["after"]
        rows.append([name, f"{r['eps']:.4g}", f"{int(a['n'])}", *[f"{b[c]:.1f} → {a[c]:.1f}" for c in COLUMNS],
                     f"{r['eps_start']:.3g}", _guard_text(r["guard"])])
    return tabulate(rows, headers=heads, tablefmt="github", disable_numparse=True)


def _guard_text(g) -> str:
    """The clean guard's verdict, then which weights keep-best handed back (results from before keep-best
    existed have no such key)."""
    if not g:
        return "off"
    text = (f"stopped at epoch {g['stopped_at']}, rolled back to epoch {g['best_epoch']}"
            if g.get("stopped_at") is not None else "held")
    if g.get("keep_best") and g.get("kept_epoch") is not None:
        text += f"; kept epoch {g['kept_epoch']} ({g['start_cert_err']:.1f} → {g['best_cert_err']:.1f} held out)"
    return text


def markdown(data: dict) -> str:
    times = ", ".join(f"{n} {r['train_time_s'] / 60:.0f} min" for n, r in data["models"].items())
    return "\n".join([
        "# The fine-tune recipe on the VNN-COMP models in ../shared/models", "",
        f"Command: `{data['command']}` (per model: `{next(iter(data['models'].values()))['command']}` and the "
        "like; the module docstring says why CP, and where projections).", "",
        f"torch {data['torch']}, {data['threads']} thread(s). CP: exact Fast-Lin bounds on mnist-net_256x2 and "
        "Convnet_avgpool, 50 Cauchy projections on mnist_relu_9_200 and on CIFAR-10 (the first 10,000 training "
        "images there). One epoch over the training "
        "images (less the guard's 500), lr 1e-4, ε ramp from the model's median certified radius (\"ramp from ε\") to the spec ε; "
        "keep-best: of the starting weights and each epoch the clean guard passed, the one with the lowest certified "
        "error on the guard's 500 held-out training images (same cascade, no PGD; \"held out\" in the guard column: "
        "start → kept, %) is handed back; "
        "before → after on the first test images, certified by the cascade IBP → CROWN-IBP → CROWN (cumulative: "
        "an image certified by a cheaper method counts for every later column), 100 PGD steps. Training time: "
        f"{times}. Raw results: the `.json` beside this file.", "", table(data), ""])


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(prog="python -m benchmarks.finetune_shared", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--work", default=str(WORK), help="fine-tuning outputs, resumable (default: build/finetune_shared)")
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--force", action="store_true", help="run models the .json already has again")
    p.add_argument("--table-only", action="store_true")
    args = p.parse_args(argv)
    out = Path(args.out)
    if not args.table_only:
        import torch

        from toolkit.fileio import atomic_path
        from toolkit.runtime import retain_freed_memory

        retain_freed_memory()
        data = json.loads(out.read_text()) if out.is_file() else {"models": {}}
        data.update(command="python -m benchmarks.finetune_shared " + " ".join(argv), torch=torch.__version__,
                    threads=torch.get_num_threads())
        for name in [m for m in args.models.split(",") if m]:
            if name not in MODELS:
                raise SystemExit(f"finetune_shared: unknown model {name!r}; choose from {', '.join(MODELS)}")
            if name in data["models"] and not args.force:
                print(f"finetune_shared: {name}: done earlier, skipped", file=sys.stderr)
                continue
            data["models"][name] = measure(name, Path(args.work))
            data["models"] = {m: data["models"][m] for m in MODELS if m in data["models"]}
            with atomic_path(out) as tmp:
                Path(tmp).write_text(json.dumps(data, indent=1) + "\n")
    data = json.loads(out.read_text())
    text = markdown(data)
    out.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
