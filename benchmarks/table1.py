"""The grid of the paper's Table 1 (paper-spec §10.1) as one command, results in one HDF5 file.

    python -m benchmarks.table1 --profile smoke|cpu|paper [--device cuda] [--out results.h5]
        [--data-root DIR] [--work-dir DIR] [--datasets mnist,cifar10] [--eps 0.1,0.3]
        [--methods CP,CP+d,...] [--models mlp_2x100-exact,small,...] [--md table.md]

Grid: datasets × test ε (MNIST 0.1, 0.3; CIFAR-10 2/255, 8/255; trained at the §9.1 training ε
0.1, 0.4, 2.2/255, 8.8/255) × methods (CP, CP+d, CP+r, CP+d+r, CROWN-IBP, CROWN-IBP+r) × the profile's
models. ``--datasets/--eps/--methods/--models`` pick a slice of the profile's grid (same results file).

Each cell trains the model with ``toolkit.train.train`` (checkpoints and the ONNX model in
``WORK/<cell>/``; a finished ``model.onnx`` is loaded instead of retrained, a checkpoint is resumed), then
certifies the exported ONNX model on the profile's test samples with ``toolkit.certify.certify`` into the
results file: clean error, PGD error (the toolkit's margin PGD, ``pgd_steps`` steps, one random start)
and certified error with the family's certifier (spec §9.5): exact Fast-Lin for CP (no projection), IBP
then CROWN-IBP (cascade: certified by either) for CROWN-IBP. Every cell is one run of the report
(``toolkit.report.h5`` layout), named ``<dataset>_<method>_<model>_eps<ε>``; a finished run is skipped on
a rerun. The settings of every cell are kept in ``/table1/cells/<run>`` (attrs), the profile in the root
attr ``table1_profile``; a results file of another grid (another profile, or a cell of the same name made
with other settings) is refused.

Model keys: a zoo name (``toolkit.zoo``); for CP, ``NAME`` trains with Wong et al.'s random projection to
``proj`` = 50 dimensions and ``NAME-exact`` with exact Fast-Lin bounds (the paper's "Exact" rows).
Evaluation is always exact.

λ and γ are unknown (spec U3): ``LAM`` = 0.05 and ``GAMMA`` = 0.005 (regularizers summed over t ≠ y, r
without normalisation) -- chosen so that λ·d and γ·r
start at the size of the robust CE rather than swamping it (r of an untrained 2×100 MLP is ~100).

Profiles (``PROFILES``; the markdown header repeats what a profile reduces):

* ``smoke``: one cheap model (2×100 MLP, exact) for every method, 64 training and 16 test images, 1 epoch,
  5 PGD steps: exercises the whole pipeline in about a minute (tests use it).
* ``cpu``: about 2 hours of single-thread work on an idle 2-core machine (measured: ~1 hour as two parallel
  slices; ``benchmarks/results/table1_cpu.md``). MNIST: CP family on 2×100 (exact), CROWN-IBP family on Small;
  CIFAR-10: CP family on 2×100 (proj 50), CROWN-IBP family on Small. 12,000 (MNIST) / 10,000 (CIFAR)
  training images (of 60,000 / 50,000); CP 6 epochs (reference 60: ε ramp over 2, lr halved every epoch
  after it), CROWN-IBP 10 epochs (reference 200 / 3200: 1 clean epoch, ramp over 5, lr ×0.1 at 8 and 9,
  batch 100 instead of 256 / 1024); 1,000 test images (of 10,000), 100 PGD steps. No Small/Large CP rows
  (exact Fast-Lin training of Small costs ~80 s per batch of 50 on this CPU, projected ~4 s:
  ``benchmarks/results/train_epoch_cpu.md``) and no XLarge rows.
* ``paper``: a GPU profile with the reference schedules: CP (2×100, Small, Small exact, Large on MNIST;
  Small, Large on CIFAR) with Wong et al. 2018's settings (§9.4: 60 epochs, batch 50), CROWN-IBP on XLarge
  with the DM-large configs (§3.3: MNIST 200 epochs batch 256; CIFAR 3200 epochs batch 1024), full
  training and test sets. Deviations: no CIFAR normalisation or augmentation (the trainer has neither).
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

LAM, GAMMA = 0.05, 0.005
#: method label -> (training method, λ, γ, baseline label)
METHODS = {"CP": ("cp", 0.0, 0.0, None), "CP+d": ("cp", LAM, 0.0, "CP"), "CP+r": ("cp", 0.0, GAMMA, "CP"),
           "CP+d+r": ("cp", LAM, GAMMA, "CP"), "CROWN-IBP": ("crown-ibp", 0.0, 0.0, None),
           "CROWN-IBP+r": ("crown-ibp", 0.0, GAMMA, "CROWN-IBP")}
#: spec §9.5: the certifier of each family.
CERTIFIER = {"cp": ["fastlin"], "crown-ibp": ["ibp", "crown-ibp"]}
#: (test ε label, test ε, training ε) per dataset (spec §9.1).
EPS = {"mnist": [("0.1", 0.1, 0.1), ("0.3", 0.3, 0.4)],
       "cifar10": [("2/255", 2 / 255, 2.2 / 255), ("8/255", 8 / 255, 8.8 / 255)]}
DATASET_LABEL = {"mnist": "MNIST", "cifar10": "CIFAR-10"}

# -- reference training settings (fields of toolkit.train.TrainConfig) ---------------------------------------
#: Wong et al. 2018 (spec §9.4). MNIST: Adam 1e-3, batch 50, 60 epochs, ε from 0.01 over 20, lr /2 every 10.
WONG_MNIST = dict(optimizer="adam", lr=1e-3, batch_size=50, epochs=60, eps_start=0.01, warmup=0, ramp=20,
                  lr_schedule="step", lr_decay=0.5, lr_step=10)
#: CIFAR: SGD 0.05 momentum 0.9 wd 5e-4, batch 50, 60 epochs, ε from 0.001 over 20, gradient clip 1.
WONG_CIFAR = dict(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4, batch_size=50, epochs=60,
                  eps_start=0.001, warmup=0, ramp=20, lr_schedule="step", lr_decay=0.5, lr_step=10, grad_clip=1.0)
#: CROWN-IBP DM-large (spec §3.3). MNIST: 200 epochs, batch 256, Adam 5e-4, ×0.1 at 130 and 190, linear ramp
#: from epoch 10 over 50, robust_natural κ 1 → 0.5, β 1 → 0.
CI_MNIST = dict(optimizer="adam", lr=5e-4, batch_size=256, epochs=200, warmup=10, ramp=50, eps_schedule="linear",
                lr_schedule="multistep", lr_decay=0.1, lr_milestones=[130, 190], kappa_final=0.5, beta_final=0.0)
#: CIFAR: 3200 epochs, batch 1024, Adam 5e-4, ×0.1 at 2600 and 3040, smoothed ramp from 320 over 1600,
#: robust (no κ), β_final 0 (8/255) or 1 (2/255).
CI_CIFAR = dict(optimizer="adam", lr=5e-4, batch_size=1024, epochs=3200, warmup=320, ramp=1600,
                eps_schedule="smoothed", lr_schedule="multistep", lr_decay=0.1, lr_milestones=[2600, 3040],
                beta_final=0.0)


def _shrunk(ref: dict, epochs: int, **over) -> dict:
    """``ref`` with ``epochs`` epochs, its ε ramp and lr decay scaled in proportion (at least 1 epoch each)."""
    f = epochs / ref["epochs"]
    warmup = max(1, round(ref["warmup"] * f)) if ref["warmup"] else 0  # a clean start, as the reference has
    out = dict(ref, epochs=epochs, warmup=warmup, ramp=max(1, round(ref["ramp"] * f)))
    if ref["lr_schedule"] == "step":
        out["lr_step"] = max(1, round(ref["lr_step"] * f))
    else:
        out["lr_milestones"] = sorted({min(epochs - 1, max(1, round(m * f))) for m in ref["lr_milestones"]})
    out.update(over)
    return out


PROFILES = {
    "smoke": {
        "models": {"mnist": {"cp": ["mlp_2x100-exact"], "crown-ibp": ["mlp_2x100"]},
                   "cifar10": {"cp": ["mlp_2x100-exact"], "crown-ibp": ["mlp_2x100"]}},
        "train": {"mnist/cp": dict(WONG_MNIST, epochs=1, ramp=0, batch_size=32),
                  "mnist/crown-ibp": dict(CI_MNIST, epochs=1, warmup=0, ramp=0, batch_size=32, lr_milestones=[]),
                  "cifar10/cp": dict(WONG_CIFAR, epochs=1, ramp=0, batch_size=32),
                  "cifar10/crown-ibp": dict(CI_CIFAR, epochs=1, warmup=0, ramp=0, batch_size=32,
                                            lr_milestones=[])},
        "train_n": 64, "test_n": 16, "pgd_steps": 5, "proj": 50, "train_eval_n": 4, "eval_batch_size": 64,
        # The bundled MNIST subsets (models/README.md): the MNIST smoke cells need no data root.
        "train_data": {"mnist": "models/mnist_train_2000.npz"}, "test_data": {"mnist": "mnist_test_1000"},
    },
    "cpu": {
        "models": {"mnist": {"cp": ["mlp_2x100-exact"], "crown-ibp": ["small"]},
                   "cifar10": {"cp": ["mlp_2x100"], "crown-ibp": ["small"]}},
        "train": {"mnist/cp": _shrunk(WONG_MNIST, 6),
                  # CROWN-IBP: 10 epochs (cheap once β = 0), 1 clean epoch, the ramp over half of training as
                  # a fast 2-epoch ramp to ε = 0.4 collapsed to a constant classifier in a first attempt.
                  "mnist/crown-ibp": _shrunk(CI_MNIST, 10, batch_size=100, ramp=5, lr_milestones=[8, 9]),
                  "cifar10/cp": _shrunk(WONG_CIFAR, 6),
                  "cifar10/crown-ibp": _shrunk(CI_CIFAR, 10, batch_size=100, ramp=5, lr_milestones=[8, 9])},
        "train_n": {"mnist": 12000, "cifar10": 10000}, "test_n": 1000, "pgd_steps": 100, "proj": 50,
        "train_eval_n": 20, "eval_batch_size": 200,
    },
    "paper": {
        "models": {"mnist": {"cp": ["mlp_2x100", "small", "small-exact", "large"], "crown-ibp": ["xlarge"]},
                   "cifar10": {"cp": ["small", "large"], "crown-ibp": ["xlarge"]}},
        "train": {"mnist/cp": WONG_MNIST, "mnist/crown-ibp": CI_MNIST, "cifar10/cp": WONG_CIFAR,
                  "cifar10/crown-ibp": CI_CIFAR},
        "train_n": None, "test_n": None, "pgd_steps": 100, "proj": 50, "train_eval_n": 100, "eval_batch_size": 500,
    },
}
#: (dataset/family, test ε label) -> settings that differ per ε (spec §3.3: β stays 1 for CIFAR 2/255).
PER_EPS = {("cifar10/crown-ibp", "2/255"): {"beta_final": 1.0}}

#: Context numbers from other papers and other (larger) models, spec §10.5: verified error in %.
PUBLISHED = {("mnist", "crown-ibp", "0.3"): "7.02 [A], 6.68 [B]",
             ("cifar10", "crown-ibp", "8/255"): "66.94 [A], 67.11 [B]",
             ("cifar10", "crown-ibp", "2/255"): "45.50 [B]",
             ("mnist", "cp", "0.1"): "3.1 [C]",
             ("cifar10", "cp", "2/255"): "36.4 [C]"}
PUBLISHED_NOTE = """Published column: context numbers from *other papers and other models*, not this paper's Table 1
(whose entries were never recovered, spec U4) and not comparable cell by cell (spec §10.5):
[A] CROWN-IBP paper abstract (arXiv 1906.06316), DM-large; [B] CROWN-IBP README, released DM-large models;
[C] Wong et al. 2018 abstract, cascade/ResNet models (not Small/Large).
The paper's own text (spec §10.4) claims relative improvements of the certified error from its regularizers of
10.3% / 8.7% (2×100 MLP, probably MNIST ε = 0.1 / 0.3), 18% / 3.4% (Small, Exact, MNIST ε = 0.1 / 0.3) and
0.03% / 3.13% (Small with projection); compare them with the "(±x%)" changes in the tables."""


# -- the grid ------------------------------------------------------------------------------------------------

def _bad(msg):
    from toolkit.errors import BadInputError

    return BadInputError(msg)


def model_spec(key: str, family: str, proj: int) -> tuple:
    """(zoo name, projection dimension, row label) of a model key."""
    zoo_name, exact = (key[:-6], True) if key.endswith("-exact") else (key, False)
    if family != "cp":
        if exact:
            raise _bad(f"model key {key!r}: '-exact' applies to CP models only")
        return zoo_name, 0, zoo_name
    p = 0 if exact else proj
    return zoo_name, p, f"{zoo_name} (exact)" if exact else f"{zoo_name} (proj {p})"


def cells(profile: str, datasets=None, eps=None, methods=None, models=None) -> list:
    """Every cell of ``profile``'s grid, restricted to the given names (unknown names are errors)."""
    prof = PROFILES[profile]
    _check_names("dataset", datasets, list(prof["models"]))
    _check_names("eps", eps, [e for d in prof["models"] for e, _, _ in EPS[d]])
    _check_names("method", methods, list(METHODS))
    known_models = sorted({m for d in prof["models"].values() for ms in d.values() for m in ms})
    _check_names("model", models, known_models, f" of the {profile!r} profile")
    out = []
    for ds, fams in prof["models"].items():
        if datasets and ds not in datasets:
            continue
        for eps_label, test_eps, train_eps in EPS[ds]:
            if eps and eps_label not in eps:
                continue
            for label, (fam, lam, gamma, base) in METHODS.items():
                if methods and label not in methods:
                    continue
                for key in fams.get(fam, []):
                    if models and key not in models:
                        continue
                    out.append(_cell(profile, ds, eps_label, test_eps, train_eps, label, key))
    if not out:
        raise _bad("the selection is empty: no cell of the grid matches --datasets/--eps/--methods/--models")
    return out


def _check_names(what, given, known, where=""):
    for name in given or ():
        if name not in known:
            raise _bad(f"unknown {what} {name!r}{where}; known: {', '.join(known)}")


def _cell(profile, ds, eps_label, test_eps, train_eps, label, key) -> dict:
    prof = PROFILES[profile]
    fam, lam, gamma, base = METHODS[label]
    zoo_name, proj, row = model_spec(key, fam, prof["proj"])
    train = dict(prof["train"][f"{ds}/{fam}"], **PER_EPS.get((f"{ds}/{fam}", eps_label), {}))
    n_train = prof["train_n"][ds] if isinstance(prof["train_n"], dict) else prof["train_n"]
    name = re.sub(r"[^0-9A-Za-z_.+-]", "_", f"{ds}_{label}_{key}")
    return dict(name=name, run=f"{name}_eps{test_eps:g}", dataset=ds, train_data=_data_name(prof, "train_data", ds),
                test_data=_data_name(prof, "test_data", ds), eps_label=eps_label, eps=test_eps,
                train_eps=train_eps, method=label, family=fam, baseline=base, model_key=key, zoo=zoo_name,
                row=row, lam=lam, gamma=gamma, proj=proj, train=train, train_n=n_train, test_n=prof["test_n"])


def _data_name(prof, key, ds):
    """The profile's replacement for a dataset's train/test split (a dataset name or a repo-relative .npz)."""
    return prof.get(key, {}).get(ds)


def _resolve(name):
    """A repo-relative .npz -> its path here (cells store the relative name: results files travel)."""
    return str(ROOT / name) if name and name.endswith(".npz") else name


#: The cell fields that decide its results (with the certify settings, which certify checks itself).
CELL_SETTINGS = ("zoo", "family", "train", "lam", "gamma", "proj", "train_eps", "eps", "train_n", "test_n",
                 "train_data", "test_data")


def _canon(v):
    """Settings as stored and read back (JSON for dicts/lists, None as null) compare equal."""
    return json.dumps(v, sort_keys=True) if isinstance(v, (dict, list, tuple)) else v


# -- the results file ------------------------------------------------------------------------------------------

def open_results(out: Path, profile: str, selected: list) -> None:
    """Create ``out`` for ``profile``, or check that an existing one comes from the same grid: the same
    profile, and every selected cell already in it made with the same settings."""
    from toolkit.report import ReportWriter, partial_path, read_report
    from toolkit.report.groups import read_attrs, write_attrs

    for path in (partial_path(out), out):
        if path.exists():
            read_report(path)  # a clear error for a file that is not a report at all
            old_profile = read_attrs(path).get("table1_profile")
            if old_profile is None:
                raise _bad(f"{path} is not a table1 results file (no table1_profile attribute); use another --out")
            if old_profile != profile:
                raise _bad(f"{path} holds results of another grid (profile {old_profile!r}); use another --out")
            _check_cells(path, selected)
            return
    out.parent.mkdir(parents=True, exist_ok=True)
    ReportWriter(out).close(finished=True)
    write_attrs(out, "/", {"table1_profile": profile})


def _check_cells(path: Path, selected: list) -> None:
    stored = read_cells(path)
    for cell in selected:
        old = stored.get(cell["run"])
        if old is None:
            continue
        for key in CELL_SETTINGS:
            if _canon(old.get(key)) != _canon(cell[key]):
                raise _bad(f"{path} holds cell {cell['run']} of another grid ({key} = {_canon(old.get(key))}, now "
                           f"{_canon(cell[key])}); use another --out")


def _write_cell_attrs(out: Path, cell: dict, extra: dict) -> None:
    from toolkit.report.groups import write_attrs

    write_attrs(out, f"table1/cells/{cell['run']}", {**cell, **extra}, replace=True)


def read_cells(out: Path) -> dict:
    from toolkit.report.groups import read_children_attrs

    return read_children_attrs(out, "table1/cells")


# -- running one cell ------------------------------------------------------------------------------------------

def _log(msg):
    print(f"[table1 {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def train_cell(cell: dict, work: Path, args, prof: dict) -> tuple:
    """(path of the trained ONNX model, training time in s or None when loaded); trains or resumes."""
    from toolkit.train import train

    folder = work / cell["name"] / f"eps{cell['eps']:g}"
    folder.mkdir(parents=True, exist_ok=True)
    onnx = folder / "model.onnx"
    if onnx.is_file():
        return onnx, _train_time(folder / "model.h5")
    ckpt = folder / "model.ckpt" / "last.pt"
    kw = dict(cell["train"])
    kw["lr_milestones"] = tuple(kw.get("lr_milestones", ()))
    kw["eps_start"] = min(kw.get("eps_start", 0.0), cell["train_eps"])
    train(cell["zoo"], eps=cell["train_eps"], out=str(onnx), dataset=cell["dataset"], method=cell["family"],
          lam=cell["lam"], gamma=cell["gamma"], proj=cell["proj"], eval_eps=cell["eps"],
          allow_larger_train_eps=True, train_data=_resolve(cell["train_data"]),
          test_data=_resolve(cell["test_data"]),
          train_n=cell["train_n"], test_n=prof["train_eval_n"],
          eval_methods=CERTIFIER[cell["family"]], pgd_steps=min(prof["pgd_steps"], 20), device=args.device,
          data_root=args.data_root, eval_batch_size=prof["eval_batch_size"], seed=args.seed, resume=ckpt.is_file(),
          progress=False, callbacks=[lambda tr, m: _log(f"{cell['run']}: epoch {int(m['epoch'])}/{tr.epochs} "
                                                        f"loss {m['loss']:.4g} rob.err {m['robust_err']:.3f} "
                                                        f"({m['time_s']:.0f}s)")], **kw)
    return onnx, _train_time(folder / "model.h5")


def _train_time(report: Path):
    """Seconds of training (sum of the epochs, without the train API's own evaluations) from its report."""
    from toolkit.report.groups import train_time

    return train_time(report)


def evaluate_cell(cell: dict, onnx: Path, test_ds, out: Path, args, prof: dict, split: str = "test"):
    """Certify ``onnx`` on ``test_ds`` into the report ``out``; ``split`` names where the samples come from
    (benchmarks.paper_mnist evaluates on a validation split carved out of the training set)."""
    from toolkit.certify import certify
    from toolkit.certify.api import sha256_file
    from toolkit.ir.onnx_import import import_onnx

    graph = import_onnx(onnx)
    t0 = time.monotonic()
    res = certify(graph, test_ds, cell["eps"], CERTIFIER[cell["family"]], out=out, model_name=cell["name"],
                  model_path=str(onnx), model_sha256=sha256_file(onnx), data_name=cell["test_data"] or cell["dataset"],
                  split=split,
                  pgd_steps=prof["pgd_steps"], batch_size=prof["eval_batch_size"], device=args.device, seed=args.seed,
                  progress=False)
    return res, time.monotonic() - t0


def run_cells(selected, out: Path, work: Path, args, prof: dict) -> list:
    """Train and evaluate every unfinished cell; returns the failures [(run, message)]. A cell that fails
    (e.g. training diverged) does not stop the grid: the others still run, and a rerun retries it."""
    from toolkit.errors import TightcertError
    from toolkit.report import read_report

    done = {r.name for r in read_report(out).runs if r.finished}
    tests, failed = {}, []
    for i, cell in enumerate(selected):
        if cell["run"] in done:
            _log(f"[{i + 1}/{len(selected)}] {cell['run']}: finished earlier, skipped")
            continue
        try:
            _run_cell(i, cell, selected, tests, out, work, args, prof)
        except TightcertError as e:
            _log(f"[{i + 1}/{len(selected)}] {cell['run']}: FAILED: {e}")
            failed.append((cell["run"], str(e)))
    return failed


def _run_cell(i, cell, selected, tests, out, work, args, prof) -> None:
    _log(f"[{i + 1}/{len(selected)}] {cell['run']}: training")
    onnx, t_train = train_cell(cell, work, args, prof)
    test_name = cell["test_data"] or cell["dataset"]
    if test_name not in tests:
        tests[test_name] = load_dataset(_resolve(test_name), "test", args.data_root, prof["test_n"])
    _log(f"[{i + 1}/{len(selected)}] {cell['run']}: evaluating on {len(tests[test_name])} test images")
    _, t_eval = evaluate_cell(cell, onnx, tests[test_name], out, args, prof)
    _write_cell_attrs(out, cell, {"onnx": str(onnx), "eval_time_s": t_eval, "train_time_s": t_train})


def load_dataset(name, split, data_root, n):
    from toolkit.data import load_dataset as load

    return load(name, split, data_root, n)


def check_data(selected, data_root) -> None:
    """A missing dataset fails here, before any training."""
    wanted = {(c["train_data"] or c["dataset"], "train") for c in selected} | \
        {(c["test_data"] or c["dataset"], "test") for c in selected}
    for name, split in sorted(wanted):
        load_dataset(_resolve(name), split, data_root, 1)


# -- the table -------------------------------------------------------------------------------------------------

def _pct(v):
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"


def _rel(v, base):
    if v is None or base is None or math.isnan(v) or math.isnan(base):
        return ""
    if base == 0:
        return " (±0%)" if v == 0 else " (n/a)"
    return f" ({100 * (v - base) / base:+.1f}%)"


def cell_values(out: Path) -> dict:
    """run name -> {clean, pgd, cert, n, finished} from the results file."""
    from toolkit.report import read_report, summarize

    vals = {}
    for run in read_report(out).runs:
        s = summarize(run)
        cert = float(s["certified_err"][-1]) if len(run.methods) else float("nan")
        vals[run.name] = dict(clean=float(s["clean_err"]), pgd=float(s["pgd_err"]), cert=cert, n=run.n_done,
                              finished=run.finished)
    return vals


def make_tables(profile: str, out: Path) -> str:
    """Markdown: one table per dataset, rows method × model, columns clean/PGD/certified error per ε."""
    from tabulate import tabulate

    vals = cell_values(out)
    grid = cells(profile)
    parts = []
    for ds in PROFILES[profile]["models"]:
        ds_cells = [c for c in grid if c["dataset"] == ds]
        if not any(c["run"] in vals for c in ds_cells):
            continue
        eps_labels = [e for e, _, _ in EPS[ds]]
        headers = ["method", "model"] + [f"{h} ε={e}" for e in eps_labels for h in ("clean", "PGD", "cert.")] + \
            ["published cert. (other papers)"]
        rows = []
        for label, (fam, *_rest) in METHODS.items():
            for key in PROFILES[profile]["models"][ds].get(fam, []):
                rows.append(_row(ds, label, key, eps_labels, ds_cells, vals))
        parts.append(f"### {DATASET_LABEL[ds]}\n\n" + tabulate(rows, headers=headers, tablefmt="github",
                                                               disable_numparse=True))
    if not parts:
        return "(no finished cells yet)"
    return "\n\n".join(parts)


def _row(ds, label, key, eps_labels, ds_cells, vals) -> list:
    fam, _, _, base = METHODS[label]
    row_cells = {c["eps_label"]: c for c in ds_cells if c["method"] == label and c["model_key"] == key}
    any_cell = next(iter(row_cells.values()), None)
    row = [label, any_cell["row"] if any_cell else key]
    for e in eps_labels:
        c = row_cells.get(e)
        v = vals.get(c["run"]) if c else None
        b = None
        if c and base:
            bc = next((x for x in ds_cells if x["method"] == base and x["model_key"] == key and x["eps_label"] == e),
                      None)
            b = vals.get(bc["run"]) if bc else None
        for m in ("clean", "pgd", "cert"):
            if v is None:
                row.append("·")
                continue
            txt = _pct(v[m]) + (_rel(v[m], b[m]) if b else "")
            row.append(txt + ("" if v["finished"] else " (unfinished)"))
    pub = [f"ε={e}: {PUBLISHED[(ds, fam, e)]}" for e in eps_labels if (ds, fam, e) in PUBLISHED and base is None]
    row.append("; ".join(pub))
    return row


def readme_cells(profile: str, out: Path) -> dict:
    """README's Table 1 excerpt: method -> certified error per (dataset, ε) column, one decimal, with the
    relative change against the baseline in brackets (omitted when it rounds to 0.0 %); a test checks README."""
    vals = cell_values(out)
    cert = {(c["method"], c["dataset"], c["eps_label"]): vals.get(c["run"], {}).get("cert") for c in cells(profile)}
    cols = [(ds, e) for ds in EPS for e, _, _ in EPS[ds]]
    rows = {}
    for label, (_, _, _, base) in METHODS.items():
        row = []
        for ds, e in cols:
            v = cert.get((label, ds, e))
            if v is None:
                row.append("·")
                continue
            txt = f"{v:.1f}"
            b = cert.get((base, ds, e)) if base else None
            if b:
                rel = round(100 * (v - b) / b, 1)
                txt += f" ({rel:+.1f} %)".replace("-", "−") if rel != 0 else ""
            row.append(txt)
        rows[label] = row
    return rows


def details_table(profile: str, out: Path) -> str:
    """One row per cell present in the results file, in grid order: what was trained and how long it took."""
    from tabulate import tabulate

    meta, vals = read_cells(out), cell_values(out)
    rows = []
    for run in [c["run"] for c in cells(profile) if c["run"] in meta]:
        c = meta[run]
        t = c.get("train", {})
        v = vals.get(run, {})
        bounds = "CROWN-IBP/IBP" if c["family"] == "crown-ibp" else (f"proj {c['proj']}" if c["proj"] else "exact")
        rows.append([run, f"{c['train_eps']:.4g}", f"{c['lam']:g}", f"{c['gamma']:g}", bounds,
                     t.get("epochs"), t.get("batch_size"), c["train_n"] or "all", v.get("n", "-"),
                     _secs(c.get("train_time_s")), _secs(c.get("eval_time_s"))])
    return tabulate(rows, headers=["run", "train ε", "λ", "γ", "train bounds", "epochs", "batch", "train n",
                                   "test n", "train s (epochs)", "eval s"], tablefmt="github", disable_numparse=True)


def _secs(v):
    return "?" if v is None else f"{float(v):.0f}"


def markdown(profile: str, out: Path, command: str, header: str = "") -> str:
    prof = PROFILES[profile]
    head = [f"# Table 1 grid, profile `{profile}`", "", f"Command: `{command}`", ""]
    if header:
        head += [header, ""]
    head += [f"Errors in % on the first {prof['test_n'] or 'all'} test images; certified error with the family's "
             "certifier (CP: exact Fast-Lin; CROWN-IBP: IBP then CROWN-IBP, certified by either). "
             f"PGD: {prof['pgd_steps']} steps of the toolkit's margin PGD (one random start). "
             "\"(±x%)\" is the relative change against the unregularised baseline of the same model and ε "
             f"(CP or CROWN-IBP). λ = {LAM:g} (d), γ = {GAMMA:g} (r): the paper's values are unknown (spec U3). "
             "\"·\" = not run.", "", ""]
    return "\n".join(head) + make_tables(profile, out) + "\n\n" + PUBLISHED_NOTE + "\n\n## Cells\n\n" + \
        details_table(profile, out) + "\n"


# -- command line ------------------------------------------------------------------------------------------------

def _list(text):
    return [t for t in str(text).replace(" ", ",").split(",") if t] if text else None


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.table1", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", required=True, help="smoke, cpu or paper")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="results HDF5 (default: benchmarks/results/table1_<profile>.h5)")
    p.add_argument("--md", default=None, help="markdown table (default: --out with .md)")
    p.add_argument("--work-dir", default=None, help="checkpoints and ONNX models (default: build/table1_<profile>)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--datasets", type=_list, default=None, help="slice: mnist,cifar10")
    p.add_argument("--eps", type=_list, default=None, help="slice: test eps labels 0.1,0.3,2/255,8/255")
    p.add_argument("--methods", type=_list, default=None, help="slice: CP,CP+d,CP+r,CP+d+r,CROWN-IBP,CROWN-IBP+r")
    p.add_argument("--models", type=_list, default=None, help="slice: model keys of the profile")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--header", default="", help="extra text under the markdown title (e.g. what ran)")
    p.add_argument("--table-only", action="store_true", help="only rewrite the markdown from --out")
    return p.parse_args(argv)


def main(argv=None) -> int:
    from toolkit.errors import TightcertError

    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    try:
        shown = [a for i, a in enumerate(argv) if a != "--header" and (i == 0 or argv[i - 1] != "--header")]
        return _main(args, "python -m benchmarks.table1 " + " ".join(shown))
    except TightcertError as e:
        print(f"table1: error: {e}", file=sys.stderr)
        return 2


def _main(args, command) -> int:
    from toolkit.certify.checks import resolve_device
    from toolkit.runtime import retain_freed_memory

    retain_freed_memory()  # as the CLI does: large bound tensors every step (toolkit/runtime.py)

    if args.profile not in PROFILES:
        raise _bad(f"unknown profile {args.profile!r}; choose from {', '.join(PROFILES)}")
    prof = PROFILES[args.profile]
    selected = cells(args.profile, args.datasets, args.eps, args.methods, args.models)
    resolve_device(args.device)
    out = Path(args.out) if args.out else RESULTS / f"table1_{args.profile}.h5"
    md = Path(args.md) if args.md else out.with_suffix(".md")
    work = Path(args.work_dir) if args.work_dir else ROOT / "build" / f"table1_{args.profile}"
    if args.table_only and not out.exists():
        raise _bad(f"--table-only: results file {out} does not exist")
    if not args.table_only:
        check_data(selected, args.data_root)
    open_results(out, args.profile, selected)
    failed = [] if args.table_only else run_cells(selected, out, work, args, prof)
    text = markdown(args.profile, out, command, args.header)
    if failed:
        text += "\n## Failed cells (rerun the command to retry)\n\n" + \
            "\n".join(f"* `{run}`: {msg}" for run, msg in failed) + "\n"
    md.write_text(text)
    print(text)
    print(f"results: {out}\ntable:   {md}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
