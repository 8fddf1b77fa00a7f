"""The paper's MNIST rows at the reference schedule, 3 seeds, on this CPU: one results file, resumable.

    python -m benchmarks.paper_mnist [--stage select|full|all] [--profile paper|smoke] [--eps 0.1,0.3]
        [--methods CP,CP+d,...] [--seeds 0,1,2] [--cells RUN,...] [--lam λ] [--gamma γ]
        [--out benchmarks/results/paper_mnist.h5] [--md ...] [--work-dir build/paper_mnist]
        [--data-root DIR] [--device cpu] [--after-cell 'SHELL COMMAND'] [--table-only]

What it tests (paper text, spec §10.4): d + r lower CP's certified error on the 2×100 MLP by 10.3 % (ε = 0.1)
and 8.7 % (ε = 0.3) relative; r helps CROWN-IBP (our table1 studies disagreed on that).

Stage ``select`` (λ and γ are unknown, spec U3): the validation split is the LAST 10,000 MNIST training images;
every select cell trains on the first 50,000 with Wong et al.'s schedule shortened to 10 epochs
(``_shrunk(WONG_MNIST, 10)``), seed 0, and is certified (exact Fast-Lin; PGD 20 steps, reported only) on the
first 2,000 validation images; the trainer's own before/after check uses 100 validation images, not the test set.
Grid per ε ∈ {0.1, 0.3 (trained at 0.4)}: CP; CP+d, λ ∈ {0.01, 0.05, 0.2}; CP+r, γ ∈ {0.001, 0.005, 0.02};
CP+d+r with the λ and the γ chosen on those two lines. CROWN-IBP on Small at ε = 0.3: CROWN-IBP and
CROWN-IBP+r, γ ∈ {0.0005, 0.005}, table1's 10-epoch cpu schedule (batch 100, 1 clean epoch, ramp over 5).
Choice: the lowest validation certified error, ties to the smaller value; it is stored in the results file
(root group ``paper_mnist``, attr ``selection``: {"cp/0.1/lam": λ, ...}) once its line has finished.

Stage ``full``: CP, CP+d, CP+r, CP+d+r on ``mlp_2x100`` trained with exact Fast-Lin bounds at Wong et al.'s
reference settings (``WONG_MNIST``: 60 epochs, all 60,000 images, batch 50, Adam 1e-3, ε 0.01 → ε over 20
epochs, lr halved every 10 after the ramp), ε = 0.1 and 0.3 (trained at 0.4); CROWN-IBP ± r on ``small`` at ε = 0.3 with
``_shrunk(CI_MNIST, 30)`` (30 epochs, all 60,000 images, batch 256, Adam 5e-4, 2 clean epochs, linear ramp
over 8, lr ×0.1 at 20 and 28, κ 1 → 0.5, β 1 → 0: the DM-large proportions at 15 % of its 200 epochs);
seeds 0, 1, 2; certified on the full 10,000-image test set (exact Fast-Lin; IBP then CROWN-IBP), PGD 100 steps.
A cell needing a λ/γ not yet in the results file waits; a slice with nothing else to do is refused (one
line, exit 2) unless ``--lam/--gamma`` give the values (recorded with the cell as ``lam_from``/``gamma_from``).
Stage ``all`` (default) runs select cells first, then full cells as their λ/γ become known.

49 cells: 19 select (16 CP, 3 CROWN-IBP), 30 full (24 CP, 6 CROWN-IBP). Single-thread cost from the step times
of ``benchmarks/results/train_epoch_cpu.md`` (exact 2×100 CP ~70 ms per batch of 50, CP+d+r ~75 ms): ~15 min per
CP select cell, ~1.5 h per full CP cell (72,000 steps), about an hour per full CROWN-IBP cell; about 45 core-hours
in all, i.e. about a day of two single-thread processes.

In CROWN-IBP+r, r acts while the CROWN pass runs (β > 0, ``r_coupling="beta-positive"``, spec U7): in the
full schedule the first 10 of 30 epochs, as in table1.

Running the study (2 cores: two single-thread processes, the same command twice; each takes the next cell
nobody else holds, so no slicing is needed; disjoint slices such as ``--seeds 0`` / ``--seeds 1,2`` work too):

    mkdir -p build; export OMP_NUM_THREADS=1 F='benchmarks/results/paper_mnist.h5 benchmarks/results/paper_mnist.md'
    C='git add $F && git commit -qm "paper_mnist: $PAPER_MNIST_RUN" -- $F'   # commits these two files only
    nohup .venv/bin/python -m benchmarks.paper_mnist --after-cell "$C" > build/paper_mnist_1.log 2>&1 &
    nohup .venv/bin/python -m benchmarks.paper_mnist --after-cell "$C" > build/paper_mnist_2.log 2>&1 &

Resume: run the same two commands again. A killed cell continues from its last epoch checkpoint
(``WORK/<cell>/eps<ε>/model.ckpt``) and its evaluation from ``eval.h5.partial``; cells finished in the results
file are skipped. On a fresh clone (no work dir) the committed results file is the checkpoint: finished cells
are skipped, unfinished ones restart from epoch 0. ``--table-only`` rewrites the markdown from the .h5 alone.

Parking (every session may start on a fresh clone: the work dir does not survive it, the repository does):
``--park`` copies the last epoch checkpoint (``last.pt`` + its ``report.h5``) of every unfinished cell in the
work dir into ``benchmarks/results/paper_mnist_parked/<cell>/eps<ε>/`` and removes parked copies of cells the
results file holds; stop the study first (a cell a process still runs is refused), then commit that folder
(``git add -A benchmarks/results/paper_mnist_parked``). A cell with no checkpoint in the work dir starts from
its parked one (the trainer checks that its settings match), so the next clone loses at most an epoch. About
1.5 MB per parked 2×100 cell, 1 MB per Small cell.

Concurrency: a process holds an flock on the folder of the cell it runs (another process skips that cell) and
on the results folder while it adds a finished cell: it copies the results file, adds the run (gzip) and the
cell's settings (``/table1/cells/<run>``, as table1), renames the copy over the file, rewrites the markdown and
runs ``--after-cell`` (env ``PAPER_MNIST_RUN``), all under the lock; so two processes never write the file at
once, a kill never leaves it half-written, and the two processes' git commits do not collide. Only finished
cells enter the results file; with all 49 it holds ~20 MB (per-sample rows, gzip), and each commit adds a full
copy to the git history until git packs the versions as deltas.

Markdown: the validation table and the choice, then mean ± sd over the finished seeds per method and ε, the
relative change of the mean certified error against the unregularised baseline with the sd of the per-seed
relative changes (seeds paired by index), and one sentence per claim: "holds" when the regularised mean is
lower than the baseline mean by more than twice the standard error of the difference (sqrt(sd_a²/n_a +
sd_b²/n_b)), "does not hold" when higher by more than that, else "within noise"; "not enough seeds yet" with
fewer than 2 finished seeds on a side. Every figure comes from the results file (a test regenerates it).

Profile ``smoke``: the bundled ``models/mnist_train_2000.npz`` (validation = its last 1,000 images; 64 training
images), 1 epoch, 16 validation / test images (``mnist_test_1000``), 5 PGD steps, 2×100 MLPs for both families,
a two-value λ/γ grid, seeds 0 and 1: the whole pipeline in seconds (tests use it).
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import parking, table1
from benchmarks.table1 import CI_MNIST, METHODS, ROOT, RESULTS, WONG_MNIST, _bad, _resolve, _shrunk

#: test ε label -> (test ε, training ε), spec §9.1.
EPS = {label: (test, tr) for label, test, tr in table1.EPS["mnist"]}
#: The regularised line of each chosen value: (family, parameter) -> method label.
LINES = {("cp", "lam"): "CP+d", ("cp", "gamma"): "CP+r", ("crown-ibp", "gamma"): "CROWN-IBP+r"}
#: The paper's claims (spec §10.4): (regularised method, ε label, the claim).
CLAIMS = [("CP+d+r", "0.1", "d + r lower CP's certified error on the 2×100 MLP by 10.3 % (relative)"),
          ("CP+d+r", "0.3", "d + r lower CP's certified error on the 2×100 MLP by 8.7 % (relative)"),
          ("CROWN-IBP+r", "0.3", "r lowers CROWN-IBP's certified error (no number given)")]
#: Which methods run at which ε (the issue: CROWN-IBP ± r at MNIST ε = 0.3 only).
FAMILY_EPS = {"cp": ["0.1", "0.3"], "crown-ibp": ["0.3"]}

PROFILES = {
    "paper": {
        "models": {"cp": "mlp_2x100", "crown-ibp": "small"},
        "train_data": "mnist", "train_total": 60000, "val_size": 10000, "val_n": 2000,
        "test_data": "mnist", "train_n": None, "test_n": None, "seeds": [0, 1, 2],
        "select": {"cp": _shrunk(WONG_MNIST, 10),
                   "crown-ibp": _shrunk(CI_MNIST, 10, batch_size=100, ramp=5, lr_milestones=[8, 9])},
        "full": {"cp": WONG_MNIST, "crown-ibp": _shrunk(CI_MNIST, 30)},
        "grid": {"CP+d": [0.01, 0.05, 0.2], "CP+r": [0.001, 0.005, 0.02], "CROWN-IBP+r": [0.0005, 0.005]},
        # PGD only reports on the selection, so the select stage uses 20 steps.
        "pgd_steps": {"select": 20, "full": 100}, "train_eval_n": 100, "eval_batch_size": 500,
    },
    "smoke": {
        "models": {"cp": "mlp_2x100", "crown-ibp": "mlp_2x100"},
        "train_data": "models/mnist_train_2000.npz", "train_total": 2000, "val_size": 1000, "val_n": 16,
        "test_data": "mnist_test_1000", "train_n": 64, "test_n": 16, "seeds": [0, 1],
        "select": {f: table1.PROFILES["smoke"]["train"][f"mnist/{f}"] for f in ("cp", "crown-ibp")},
        "full": {f: table1.PROFILES["smoke"]["train"][f"mnist/{f}"] for f in ("cp", "crown-ibp")},
        "grid": {"CP+d": [0.05, 0.2], "CP+r": [0.005, 0.02], "CROWN-IBP+r": [0.005]},
        "pgd_steps": {"select": 5, "full": 5}, "train_eval_n": 4, "eval_batch_size": 64,
    },
}
STAGES = ("select", "full")


def _log(msg):
    print(f"[paper_mnist {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- the grid ------------------------------------------------------------------------------------------------

def _cell(profile, stage, label, eps_label, seed, lam, gamma, tag="") -> dict:
    """A cell in table1's layout (so that its train/evaluate/store functions apply), plus stage, seed, split
    and where λ/γ come from. ``None`` for λ/γ: chosen on the validation split (or ``--lam/--gamma``)."""
    prof = PROFILES[profile]
    fam, _, _, base = METHODS[label]
    test_eps, train_eps = EPS[eps_label]
    zoo, val = prof["models"][fam], stage == "select"
    lo, hi = prof["train_total"] - prof["val_size"], prof["train_total"]
    name = f"{'val_' if val else ''}{zoo}_{label}{tag}_s{seed}"
    src = lambda v: "grid" if v is not None else None
    return dict(name=name, run=f"{name}_eps{test_eps:g}", stage=stage, seed=seed, dataset="mnist",
                train_data=prof["train_data"], test_data=f"{prof['train_data']}[{lo}:{hi}]" if val else prof["test_data"],
                split="train" if val else "test", eps_label=eps_label, eps=test_eps, train_eps=train_eps,
                method=label, family=fam, baseline=base, model_key=zoo, zoo=zoo, row=zoo, lam=lam, gamma=gamma,
                lam_from=src(lam), gamma_from=src(gamma), proj=0, train=prof[stage][fam],
                train_n=(prof["train_n"] or lo) if val else prof["train_n"],
                test_n=prof["val_n"] if val else prof["test_n"])


def cells(profile: str, stages=STAGES, eps=None, methods=None, seeds=None, runs=None) -> list:
    """The grid in run order (select lines, then CP+d+r on the chosen pair; full cells seed by seed),
    restricted to the given names (unknown names are errors)."""
    prof = PROFILES[profile]
    table1._check_names("eps", eps, list(EPS))
    table1._check_names("method", methods, list(METHODS))
    table1._check_names("seed", [str(s) for s in seeds or ()], [str(s) for s in prof["seeds"]],
                        f" of the {profile!r} profile")
    sel, last, full = [], [], []
    for label, (fam, d, r, _) in METHODS.items():
        for e in FAMILY_EPS[fam]:
            if not (d or r):
                sel.append(_cell(profile, "select", label, e, 0, 0.0, 0.0))
            elif d and r:
                last.append(_cell(profile, "select", label, e, 0, None, None))
            else:
                p = "lam" if d else "gamma"
                sel += [_cell(profile, "select", label, e, 0, *((v, 0.0) if d else (0.0, v)), tag=f"_{p}{v:g}")
                        for v in prof["grid"][label]]
    for s in prof["seeds"]:
        for label, (fam, d, r, _) in METHODS.items():
            full += [_cell(profile, "full", label, e, s, None if d else 0.0, None if r else 0.0)
                     for e in FAMILY_EPS[fam]]
    full.sort(key=lambda c: (c["seed"], c["family"] != "cp", c["eps"]))
    out = [c for c in sel + last + full if c["stage"] in stages and (not eps or c["eps_label"] in eps)
           and (not methods or c["method"] in methods) and (seeds is None or c["seed"] in seeds)
           and (not runs or c["run"] in runs)]
    table1._check_names("cell", runs, [c["run"] for c in sel + last + full], f" of the {profile!r} profile")
    if not out:
        raise _bad("the selection is empty: no cell of the grid matches --stage/--eps/--methods/--seeds/--cells")
    return out


def pick(errors: dict) -> float:
    """The value with the lowest validation certified error; ties go to the smaller value."""
    return min(errors, key=lambda v: (errors[v], v))


def choose(profile: str, stored: dict, vals: dict) -> dict:
    """{"<family>/<ε>/<lam|gamma>": value} for every grid line whose validation cells have all finished."""
    out = {}
    for (fam, p), label in LINES.items():
        for e in FAMILY_EPS[fam]:
            errs = {c[p]: vals[run]["cert"] for run, c in stored.items()
                    if c["stage"] == "select" and c["method"] == label and c["eps_label"] == e and run in vals}
            if set(PROFILES[profile]["grid"][label]) <= set(errs):
                out[f"{fam}/{e}/{p}"] = pick({v: errs[v] for v in PROFILES[profile]["grid"][label]})
    return out


def read_selection(out: Path) -> dict:
    from toolkit.report.groups import read_attrs

    return ((read_attrs(out, "paper_mnist") or {}).get("selection") or {}) if out.exists() else {}


def resolve(cell: dict, stored: dict, selection: dict, over: dict) -> bool:
    """Fill the λ/γ a cell still lacks: as stored with the finished cell, else ``--lam/--gamma`` (full stage),
    else the validated choice. False while one is unknown."""
    for p in ("lam", "gamma"):
        if cell[p] is not None:
            continue
        key, old = f"{cell['family']}/{cell['eps_label']}/{p}", stored.get(cell["run"])
        if old is not None:
            cell[p], cell[f"{p}_from"] = old[p], old[f"{p}_from"]
        elif cell["stage"] == "full" and over.get(p) is not None:
            cell[p], cell[f"{p}_from"] = over[p], "override"
        elif key in selection:
            cell[p], cell[f"{p}_from"] = selection[key], "validation"
        else:
            return False
    return True


# -- files and locks -----------------------------------------------------------------------------------------

@contextlib.contextmanager
def _flock(folder: Path, wait: bool = True):
    """An exclusive flock on ``folder`` (yields False when ``wait`` is off and another process holds it).
    Released when the process dies, so a kill never leaves a stale lock."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def _write_selection(path: Path, profile: str) -> None:
    from toolkit.report.groups import write_attrs

    sel = choose(profile, table1.read_cells(path), table1.cell_values(path))
    write_attrs(path, "paper_mnist", {"selection": json.dumps(sel, sort_keys=True)})


def _write_text(path: Path, text: str) -> None:
    from toolkit.fileio import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(text)


def store(cell: dict, report: Path, extra: dict, out: Path, md: Path, profile: str, after_cell) -> None:
    """Add a finished cell to the results file, with the λ/γ selection once a select cell lands."""
    also = (lambda tmp: _write_selection(tmp, profile)) if cell["stage"] == "select" else None
    add_cell(out, report, cell, extra, md, lambda: markdown(profile, out), after_cell, "PAPER_MNIST_RUN", also)


def add_cell(out: Path, report: Path, cell: dict, extra: dict, md: Path, make_md, after_cell, env_var: str,
             also=None) -> None:
    """Add a finished cell's run and settings to the results file ``out`` (module docstring: under the folder
    lock, copy + rename; ``also(tmp)`` may write more into the copy), rewrite the markdown ``md`` from
    ``make_md()`` and run ``after_cell`` (env ``env_var``: the cell's run name), all under the lock. Shared by
    ``benchmarks.train_methods``."""
    from toolkit.fileio import atomic_path
    from toolkit.report.groups import copy_run

    with _flock(out.parent):
        with atomic_path(out) as tmp:
            shutil.copyfile(out, tmp)
            copy_run(report, cell["run"], tmp)  # gzip: the file is committed after every cell
            table1._write_cell_attrs(tmp, cell, extra)
            if also is not None:
                also(tmp)
        _write_text(md, make_md())
        if after_cell:
            rc = subprocess.run(after_cell, shell=True, env=dict(os.environ, **{env_var: cell["run"]})).returncode
            if rc:
                _log(f"--after-cell exited with status {rc} after {cell['run']}")


# -- running ---------------------------------------------------------------------------------------------------

def _stage_prof(prof: dict, stage: str) -> dict:
    """The keys table1's train_cell/evaluate_cell read, for one stage."""
    return dict(prof, pgd_steps=prof["pgd_steps"][stage])


def _eval_data(cell: dict, prof: dict, data_root):
    from toolkit.data import load_dataset

    if cell["split"] == "test":
        return load_dataset(_resolve(cell["test_data"]), "test", data_root, cell["test_n"])
    lo = prof["train_total"] - prof["val_size"]
    return load_dataset(_resolve(cell["train_data"]), "train", data_root, cell["test_n"],
                        indices=np.arange(lo, prof["train_total"]))


def _monitor_npz(prof: dict, work: Path, data_root) -> Path:
    """The validation images the trainer's own before/after check uses in the select stage (it takes a
    dataset name or an .npz, and must not look at the test set there)."""
    path = work / "validation_monitor.npz"
    if not path.is_file():
        from toolkit.fileio import atomic_path

        ds = _eval_data(dict(split="train", train_data=prof["train_data"], test_n=prof["train_eval_n"]), prof,
                        data_root)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:  # MNIST pixels are k/255: uint8 is exact
            np.savez(f, x=np.round(ds.x.numpy() * 255).astype(np.uint8), y=ds.y.numpy(), index=ds.index)
    return path


PARKED = RESULTS / "paper_mnist_parked"


def cell_dir(cell: dict) -> str:
    """A cell's folder below the work dir (and the parked dir), as table1.train_cell names it."""
    return f"{cell['name']}/eps{cell['eps']:g}"


def park(work: Path, out: Path, parked: Path = PARKED) -> list:
    """Park every unfinished cell of ``work`` (``benchmarks.parking``); drop parked copies of stored cells."""
    stored = {cell_dir(c) for c in table1.read_cells(out).values()} if out.exists() else set()
    return parking.park(work, stored, parked, "*/eps*", _flock)


def run_cell(cell, out, md, work, args, profile) -> None:
    from toolkit.report import read_report

    prof = _stage_prof(PROFILES[profile], cell["stage"])
    rel = cell_dir(cell)
    if parking.unpark(work / rel, rel, Path(args.parked)):
        _log(f"{cell['run']}: resuming from its parked checkpoint ({Path(args.parked) / rel})")
    ns = argparse.Namespace(device=args.device, data_root=args.data_root, seed=cell["seed"])
    monitor = {"test_data": str(_monitor_npz(prof, work, args.data_root))} if cell["split"] == "train" else {}
    onnx, t_train = table1.train_cell(dict(cell, **monitor), work, ns, prof)
    report = onnx.parent / "eval.h5"
    done = report.exists() and any(r.name == cell["run"] and r.finished for r in read_report(report).runs)
    if not done:  # else killed after evaluating: store what is there
        ds = _eval_data(cell, prof, args.data_root)
        _log(f"{cell['run']}: evaluating on {len(ds)} {cell['split']} images")
        table1.evaluate_cell(cell, onnx, ds, report, ns, prof, split=cell["split"])
    t_eval = next(r for r in read_report(report).runs if r.name == cell["run"]).attrs["wall_time"]  # all sessions
    store(cell, report, {"onnx": str(onnx), "train_time_s": t_train, "eval_time_s": t_eval}, out, md, profile,
          args.after_cell)


def run_cells(selected, out, md, work, args, profile) -> tuple:
    """Run every cell of ``selected`` that no other process holds, each as soon as its λ/γ are known.
    Returns (failed [(run, message)], cells still waiting for λ/γ)."""
    from toolkit.errors import TightcertError

    over = {"lam": args.lam, "gamma": args.gamma}
    tried, failed, stored = set(), [], table1.read_cells(out)
    for c in selected:
        if c["run"] in stored:
            _log(f"{c['run']}: finished earlier, skipped")
            tried.add(c["run"])
    while True:
        stored, selection = table1.read_cells(out), read_selection(out)  # another process may have added some
        ready = [c for c in selected if c["run"] not in tried and resolve(c, stored, selection, over)]
        if not ready:
            return failed, [c for c in selected if c["run"] not in tried]
        cell = ready[0]
        tried.add(cell["run"])
        folder = work / cell_dir(cell)
        folder.mkdir(parents=True, exist_ok=True)
        with _flock(folder, wait=False) as mine:
            if not mine:
                _log(f"{cell['run']}: running in another process, skipped")
                continue
            if cell["run"] in table1.read_cells(out):  # finished by another process meanwhile
                continue
            _log(f"{cell['run']}: training (λ {cell['lam']:g}, γ {cell['gamma']:g}, seed {cell['seed']})")
            try:
                run_cell(cell, out, md, work, args, profile)
            except TightcertError as e:
                _log(f"{cell['run']}: FAILED: {e}")
                failed.append((cell["run"], str(e)))


def check_data(selected, prof, data_root) -> None:
    """A missing dataset fails here, before any training."""
    from toolkit.data import load_dataset

    load_dataset(_resolve(prof["train_data"]), "train", data_root, prof["train_total"])
    if any(c["split"] == "test" for c in selected):
        load_dataset(_resolve(prof["test_data"]), "test", data_root, 1)


# -- the markdown ----------------------------------------------------------------------------------------------

def stats(values) -> tuple:
    """(mean, sd with ddof 1 or NaN, n)."""
    a = np.asarray(values, dtype=float)
    return (float(a.mean()) if a.size else math.nan, float(a.std(ddof=1)) if a.size > 1 else math.nan, a.size)


def _ms(values) -> str:
    m, sd, n = stats(values)
    return "·" if not n else f"{m:.2f}" if n == 1 else f"{m:.2f} ± {sd:.2f}"


def compare(reg: dict, base: dict) -> dict:
    """Certified errors per seed of a regularised row and its baseline -> relative change of the means (%),
    sd of the per-seed relative changes (seeds paired by index), difference, 2 × its standard error, verdict."""
    (mr, sr, nr), (mb, sb, nb) = stats(list(reg.values())), stats(list(base.values()))
    pairs = [100 * (reg[s] - base[s]) / base[s] for s in sorted(set(reg) & set(base)) if base[s] > 0]
    res = dict(rel=100 * (mr - mb) / mb if nb and nr and mb > 0 else math.nan, rel_sd=stats(pairs)[1],
               pairs=len(pairs), diff=mr - mb, two_se=math.nan, n=(nr, nb))
    if nr < 2 or nb < 2:
        return dict(res, verdict="not enough seeds yet")
    res["two_se"] = 2 * math.sqrt(sr ** 2 / nr + sb ** 2 / nb)
    verdict = "holds" if res["diff"] < -res["two_se"] else "does not hold" if res["diff"] > res["two_se"] else \
        "within noise"
    return dict(res, verdict=verdict)


def _rel_text(c: dict) -> str:
    if math.isnan(c["rel"]):
        return "·"
    return f"{c['rel']:+.1f}%" + (f" ± {c['rel_sd']:.1f}" if c["pairs"] > 1 else "")


def _series(meta, vals, stage, method, eps_label, key="cert") -> dict:
    """seed -> value of the stored cells of one row."""
    return {c["seed"]: vals[run][key] for run, c in meta.items()
            if c["stage"] == stage and c["method"] == method and c["eps_label"] == eps_label and run in vals}


def selection_table(profile: str, out: Path) -> str:
    from tabulate import tabulate

    meta, vals, chosen = table1.read_cells(out), table1.cell_values(out), read_selection(out)
    rows = []
    for c in sorted(cells(profile, stages=("select",)), key=lambda c: c["eps"]):
        v = vals.get(c["run"])
        resolve(c, meta, chosen, {})
        lam, gamma = c["lam"], c["gamma"]
        mark = [p for p in ("lam", "gamma") if c["method"] == LINES.get((c["family"], p))
                and chosen.get(f"{c['family']}/{c['eps_label']}/{p}") == (lam if p == "lam" else gamma)]
        rows.append([c["eps_label"], c["method"], c["zoo"], "?" if lam is None else f"{lam:g}",
                     "?" if gamma is None else f"{gamma:g}"] +
                    ([table1._pct(v[k]) for k in ("clean", "pgd", "cert")] if v else ["·"] * 3) +
                    [" ".join({"lam": "λ", "gamma": "γ"}[p] for p in mark)])
    text = tabulate(rows, headers=["ε", "method", "model", "λ", "γ", "clean %", "PGD %", "cert. %", "chosen"],
                    tablefmt="github", disable_numparse=True)
    lines = [f"* {LINES[fam, p]}, ε = {e}: {'λ' if p == 'lam' else 'γ'} = " +
             (f"{chosen[f'{fam}/{e}/{p}']:g}" if f"{fam}/{e}/{p}" in chosen else "not chosen yet (line unfinished)")
             for (fam, p) in LINES for e in FAMILY_EPS[fam]]
    return text + "\n\nChosen (stored in the results file, attr `paper_mnist/selection`):\n\n" + "\n".join(lines)


def main_table(profile: str, out: Path) -> str:
    from tabulate import tabulate

    meta, vals = table1.read_cells(out), table1.cell_values(out)
    rows = []
    for label, (fam, *_rest, base) in METHODS.items():
        row = [label, PROFILES[profile]["models"][fam]]
        for e in EPS:
            s = {k: _series(meta, vals, "full", label, e, k) for k in ("clean", "pgd", "cert")}
            rel = compare(s["cert"], _series(meta, vals, "full", base, e)) if base else None
            used = {f"{c['lam']:g} / {c['gamma']:g}" for c in meta.values()
                    if c["stage"] == "full" and c["method"] == label and c["eps_label"] == e}
            row += [str(len(s["cert"])) if s["cert"] else "·", ", ".join(sorted(used)) or "·"] + \
                [_ms(list(s[k].values())) for k in s] + [_rel_text(rel) if rel else ""]
        rows.append(row)
    heads = ["method", "model"] + [f"{h} ε={e}" for e in EPS for h in ("seeds", "λ / γ", "clean %", "PGD %",
                                                                        "cert. %", "cert. vs base")]
    return tabulate(rows, headers=heads, tablefmt="github", disable_numparse=True)


#: A baseline whose mean clean test error exceeds this did not train (a constant classifier errs on ~89 % of
#: MNIST): a regulariser's change against it says nothing about the paper's claim.
UNTRAINED_CLEAN = 50.0


def claims(out: Path) -> str:
    meta, vals = table1.read_cells(out), table1.cell_values(out)
    lines = []
    for label, e, claim in CLAIMS:
        base = METHODS[label][3]
        lines.append(claim_line(label, base, e, claim, _series(meta, vals, "full", label, e),
                                _series(meta, vals, "full", base, e), _series(meta, vals, "full", base, e, "clean")))
    return "\n".join(lines)


def claim_line(label, base, e, claim, reg: dict, bas: dict, bas_clean: dict) -> str:
    """One claim's reading from the certified errors per seed (``reg``, ``bas``) and the baseline's clean ones."""
    head = f"* {label} vs {base}, ε = {e} (paper: {claim}):"
    clean, _, n_clean = stats(list(bas_clean.values()))
    if n_clean and clean > UNTRAINED_CLEAN:
        return (f"{head} untestable at this schedule: the baseline did not train (clean error {clean:.2f} % over "
                f"{n_clean} seed{'s' if n_clean > 1 else ''}, a constant-like classifier), so no regularised run "
                f"can be compared with it.")
    if not reg or not bas:
        return f"{head} no finished cells yet."
    c = compare(reg, bas)
    ours = (f"ours {stats(list(bas.values()))[0]:.2f} % → {stats(list(reg.values()))[0]:.2f} % "
            f"({_rel_text(c)}; {c['n'][1]} vs {c['n'][0]} seeds)")
    why = "" if math.isnan(c["two_se"]) else f"; difference {c['diff']:+.2f} points, 2 SE {c['two_se']:.2f}"
    return f"{head} {ours}{why}: **{c['verdict']}**."


def cells_table(profile: str, out: Path) -> str:
    """One row per stored cell, in grid order: settings, its own errors (%) and times, from the results file only."""
    from tabulate import tabulate

    meta, vals = table1.read_cells(out), table1.cell_values(out)
    rows = []
    for run in [c["run"] for c in cells(profile) if c["run"] in meta]:
        c, t = meta[run], meta[run]["train"]
        src = lambda p: f"{c[p]:g}" + (f" ({c[p + '_from']})" if c[p + "_from"] in ("validation", "override") else "")
        rows.append([run, c["stage"], c["seed"], f"{c['train_eps']:g}", src("lam"), src("gamma"), t["epochs"],
                     t["batch_size"], c["train_n"] or "all", f"{vals[run]['n']} {c['split']}"] +
                    [table1._pct(vals[run][k]) for k in ("clean", "pgd", "cert")] +
                    [table1._secs(c.get("train_time_s")), table1._secs(c.get("eval_time_s"))])
    return tabulate(rows, headers=["run", "stage", "seed", "train ε", "λ", "γ", "epochs", "batch", "train n",
                                   "eval n", "clean %", "PGD %", "cert. %", "train s (epochs)", "eval s"],
                    tablefmt="github", disable_numparse=True)


def markdown(profile: str, out: Path) -> str:
    """The whole markdown: a function of the results file (and this module's constants) alone."""
    prof = PROFILES[profile]
    lo = prof["train_total"] - prof["val_size"]
    sched = lambda d: (f"{d['epochs']} epochs, batch {d['batch_size']}, {d['optimizer']} lr {d['lr']:g}, "
                       f"warm-up {d['warmup']}, ramp {d['ramp']}")
    head = f"""# The paper's MNIST rows, profile `{profile}`

Command (resumable; `benchmarks/paper_mnist.py` says how to run it on two cores): `python -m benchmarks.paper_mnist \
--profile {profile}`

Errors in %. Validation: trained on the first {prof['train_n'] or lo} images of `{prof['train_data']}` (train split), certified on the
first {prof['val_n']} of the last {prof['val_size']}; schedules CP {sched(prof['select']['cp'])}, CROWN-IBP
{sched(prof['select']['crown-ibp'])}; seed 0; PGD {prof['pgd_steps']['select']} steps. Full: trained on
{prof['train_n'] or 'all'} training images, CP {sched(prof['full']['cp'])} (exact Fast-Lin bounds), CROWN-IBP
{sched(prof['full']['crown-ibp'])}; certified on {prof['test_n'] or 'all'} test images of `{prof['test_data']}`
(CP: exact Fast-Lin; CROWN-IBP: IBP then CROWN-IBP, certified by either); PGD {prof['pgd_steps']['full']} steps
of the toolkit's margin PGD, one random start. Values are mean ± sd over the finished seeds; "cert. vs base" is
the relative change of the mean certified error against the unregularised row (CP or CROWN-IBP) ± the sd of the
per-seed relative changes (seeds paired). "·" = not run yet.

## λ and γ chosen on the validation split

"""
    return head + selection_table(profile, out) + "\n\n## Test set\n\n" + main_table(profile, out) + \
        "\n\n## The paper's claims\n\nVerdict: \"holds\" when the regularised mean certified error is lower than " \
        "the baseline's by more than twice the standard error of the difference, \"does not hold\" when higher " \
        "by more than that, else \"within noise\" (at least 2 seeds a side).\n\n" + claims(out) + \
        "\n\n## Cells\n\n" + cells_table(profile, out) + "\n"


# -- command line ------------------------------------------------------------------------------------------------

def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.paper_mnist", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", default="all", choices=["select", "full", "all"])
    p.add_argument("--profile", default="paper", help="paper or smoke")
    p.add_argument("--eps", type=table1._list, default=None, help="slice: 0.1,0.3")
    p.add_argument("--methods", type=table1._list, default=None, help="slice: CP,CP+d,CP+r,CP+d+r,CROWN-IBP,...")
    p.add_argument("--seeds", type=lambda t: [int(s) for s in table1._list(t)], default=None, help="slice: 0,1,2")
    p.add_argument("--cells", type=table1._list, default=None, help="slice: run names")
    p.add_argument("--lam", type=float, default=None, help="stage full: λ instead of the validated one")
    p.add_argument("--gamma", type=float, default=None, help="stage full: γ instead of the validated one")
    p.add_argument("--out", default=None, help="results HDF5 (default: benchmarks/results/paper_mnist.h5; "
                                               "build/paper_mnist_smoke.h5 for the smoke profile)")
    p.add_argument("--md", default=None, help="markdown (default: --out with .md)")
    p.add_argument("--work-dir", default=None, help="checkpoints, models (default: build/paper_mnist[_smoke])")
    p.add_argument("--data-root", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--after-cell", default=None, help="shell command run after each stored cell, under the lock")
    p.add_argument("--table-only", action="store_true", help="only rewrite the markdown from --out")
    p.add_argument("--park", action="store_true", help="copy unfinished cells' checkpoints into --parked (to "
                                                       "commit), then exit; stop the study first")
    p.add_argument("--parked", default=None, help="parked checkpoints (default: "
                                                  "benchmarks/results/paper_mnist_parked for the paper profile, "
                                                  "build/paper_mnist_smoke_parked otherwise)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    from toolkit.errors import TightcertError

    args = parse_args(sys.argv[1:] if argv is None else list(argv))
    try:
        return _main(args)
    except TightcertError as e:
        print(f"paper_mnist: error: {e}", file=sys.stderr)
        return 2


def _main(args) -> int:
    from toolkit.certify.checks import resolve_device
    from toolkit.runtime import retain_freed_memory

    retain_freed_memory()  # as the CLI does: large bound tensors every step (toolkit/runtime.py)

    if args.profile not in PROFILES:
        raise _bad(f"unknown profile {args.profile!r}; choose from {', '.join(PROFILES)}")
    suffix = "" if args.profile == "paper" else f"_{args.profile}"
    out = Path(args.out) if args.out else (RESULTS if args.profile == "paper" else ROOT / "build") / \
        f"paper_mnist{suffix}.h5"
    md = Path(args.md) if args.md else out.with_suffix(".md")
    work = Path(args.work_dir) if args.work_dir else ROOT / "build" / f"paper_mnist{suffix}"
    if args.parked is None:
        args.parked = str(PARKED if args.profile == "paper" else ROOT / "build" / f"paper_mnist{suffix}_parked")
    if args.park:
        for rel in park(work, out, Path(args.parked)):
            print(f"parked {rel} -> {Path(args.parked) / rel}")
        return 0
    if args.table_only:
        if not out.exists():
            raise _bad(f"--table-only: results file {out} does not exist")
        table1.open_results(out, f"paper_mnist/{args.profile}", [])  # refuses another profile's file
        _write_text(md, markdown(args.profile, out))
        print(md.read_text())
        return 0
    if args.stage == "select" and (args.lam is not None or args.gamma is not None):
        raise _bad("--lam/--gamma apply to the full stage only (the select stage chooses them)")
    stages = STAGES if args.stage == "all" else (args.stage,)
    selected = cells(args.profile, stages, args.eps, args.methods, args.seeds, args.cells)
    resolve_device(args.device)
    prof = PROFILES[args.profile]
    stored, selection = (table1.read_cells(out), read_selection(out)) if out.exists() else ({}, {})
    over = {"lam": args.lam, "gamma": args.gamma}
    pending = [c for c in selected if c["run"] not in stored]
    # select cells are never refused: the CP+d+r ones wait on lines of the same stage
    if pending and not any(c["stage"] == "select" or resolve(c, stored, selection, over) for c in pending):
        raise _bad(f"no λ/γ chosen on the validation split in {out} yet for {', '.join(c['run'] for c in pending)}: "
                   "run --stage select to the end first, or pass --lam/--gamma")
    check_data(selected, prof, args.data_root)
    work.mkdir(parents=True, exist_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    with _flock(out.parent):
        table1.open_results(out, f"paper_mnist/{args.profile}", [])
        stored, selection = table1.read_cells(out), read_selection(out)
        table1._check_cells(out, [c for c in selected if resolve(c, stored, selection, over)])
    failed, waiting = run_cells(selected, out, md, work, args, args.profile)
    with _flock(out.parent):  # not from an older snapshot of the file than another process's last cell
        _write_text(md, markdown(args.profile, out))
    print(md.read_text())
    for run, msg in failed:
        print(f"paper_mnist: {run} failed (rerun to retry): {msg}", file=sys.stderr)
    if waiting:
        print(f"paper_mnist: not run, no λ/γ chosen on the validation split yet: "
              f"{', '.join(c['run'] for c in waiting)}", file=sys.stderr)
    print(f"results: {out}\ntable:   {md}", file=sys.stderr)
    return 1 if failed or waiting else 0


if __name__ == "__main__":
    sys.exit(main())
