"""benchmarks.paper_mnist: the grid and its reference schedules, the λ/γ choice and the claim verdicts on
known numbers, and the smoke profile end to end (refusal without a choice, select, full, a cell held by
another process, resume after a kill, rerun skips, markdown regenerated from the .h5 alone)."""
import fcntl
import math
import os
import re

import numpy as np
import pytest

from benchmarks import paper_mnist as pm
from benchmarks import table1
from toolkit.report import read_report
from parking_helpers import Killed, assert_marked, killed, mark_checkpoint, onnx_weights

H5 = pm.RESULTS / "paper_mnist.h5"


def test_paper_grid_and_schedules():
    grid = pm.cells("paper")
    assert len({c["run"] for c in grid}) == len(grid) == 49
    sel, full = [c for c in grid if c["stage"] == "select"], [c for c in grid if c["stage"] == "full"]
    assert len(sel) == 19 and len(full) == 30 and all(c["seed"] == 0 for c in sel)
    assert {(c["method"], c["lam"], c["gamma"]) for c in sel if c["eps_label"] == "0.1"} == {
        ("CP", 0, 0), ("CP+d", 0.01, 0), ("CP+d", 0.05, 0), ("CP+d", 0.2, 0), ("CP+r", 0, 0.001),
        ("CP+r", 0, 0.005), ("CP+r", 0, 0.02), ("CP+d+r", None, None)}
    assert sorted(c["gamma"] for c in sel if c["family"] == "crown-ibp") == [0, 0.0005, 0.005]
    # validation: trained on the first 50,000 training images, certified on 2,000 of the last 10,000
    assert all(c["train_n"] == 50000 and c["test_n"] == 2000 and c["split"] == "train"
               and c["test_data"] == "mnist[50000:60000]" and c["train"]["epochs"] == 10 for c in sel)
    assert {(c["eps"], c["train_eps"]) for c in grid} == {(0.1, 0.1), (0.3, 0.4)}
    cp = [c for c in full if c["family"] == "cp"]
    assert len(cp) == 24 and all(c["train"] == table1.WONG_MNIST and c["train_n"] is None and c["test_n"] is None
                                 and c["zoo"] == "mlp_2x100" and c["proj"] == 0 for c in cp)
    assert table1.WONG_MNIST["epochs"] == 60 and table1.WONG_MNIST["batch_size"] == 50
    ci = [c for c in full if c["family"] == "crown-ibp"]
    assert {c["eps_label"] for c in ci} == {"0.3"} and {c["zoo"] for c in ci} == {"small"}
    t = ci[0]["train"]
    assert (t["epochs"], t["batch_size"], t["warmup"], t["ramp"], t["lr_milestones"]) == (30, 256, 2, 8, [20, 28])
    assert [c["seed"] for c in full] == sorted(c["seed"] for c in full) == [0] * 10 + [1] * 10 + [2] * 10
    assert [c["run"] for c in pm.cells("paper", ("full",), ["0.3"], ["CP+d"], [2])] == ["mlp_2x100_CP+d_s2_eps0.3"]


def test_pick_and_verdicts_on_known_numbers():
    assert pm.pick({0.05: 10.0, 0.01: 11.0, 0.2: 9.5}) == 0.2
    assert pm.pick({0.05: 10.0, 0.2: 10.0, 0.01: 10.0}) == 0.01  # ties: the smaller value
    base = {0: 12.0, 1: 13.0, 2: 14.0}
    c = pm.compare({0: 9.0, 1: 10.0, 2: 11.0}, base)
    assert c["verdict"] == "holds" and c["diff"] == pytest.approx(-3.0)
    assert c["two_se"] == pytest.approx(2 * math.sqrt(2 / 3)) and c["rel"] == pytest.approx(-300 / 13)
    assert c["rel_sd"] == pytest.approx(np.std([-25.0, -300 / 13, -300 / 14], ddof=1)) and c["pairs"] == 3
    assert pm.compare({0: 12.5, 1: 13.5, 2: 14.5}, base)["verdict"] == "within noise"
    assert pm.compare({0: 15.0, 1: 16.0, 2: 17.0}, base)["verdict"] == "does not hold"
    assert pm.compare({0: 1.0}, base)["verdict"] == "not enough seeds yet"
    assert pm._rel_text(c) == f"{-300 / 13:+.1f}% ± {c['rel_sd']:.1f}"


def test_claim_lines_say_when_the_baseline_did_not_train():
    line = lambda reg, bas, clean: pm.claim_line("CP+d+r", "CP", "0.3", "a claim", reg, bas, clean)  # noqa: E731
    assert line({}, {0: 88.65}, {0: 88.65}) == (
        "* CP+d+r vs CP, ε = 0.3 (paper: a claim): untestable at this schedule: the baseline did not train (clean "
        "error 88.65 % over 1 seed, a constant-like classifier), so no regularised run can be compared with it.")
    assert "untestable" in line({0: 80.0, 1: 81.0}, {0: 89.0, 1: 90.0}, {0: 60.0, 1: 70.0})
    assert line({}, {0: 20.0}, {0: 5.0}).endswith("no finished cells yet.")
    assert line({0: 9.0, 1: 10.0}, {0: 12.0, 1: 13.0}, {0: 5.0, 1: 6.0}).endswith("**holds**.")


def _run(tmp, *extra):
    return pm.main(["--profile", "smoke", "--out", str(tmp / "r.h5"), "--work-dir", str(tmp / "work"), *extra])


def _seed_values(runs, prefix):
    """seed -> (clean, PGD, certified error in %) straight from the report's per-sample rows."""
    out = {}
    for r in runs:
        m = re.fullmatch(re.escape(prefix) + r"_s(\d)_eps0\.1", r.name)
        if m:
            ok = r.data["clean_correct"]
            out[int(m.group(1))] = [100 * (1 - ok.mean()), 100 * (1 - r.data["pgd_correct"].mean()),
                                    100 * (1 - (r.data["certified"]["fastlin"] & ok).mean())]
    return out


def test_smoke_select_full_resume(tmp_path, capsys, monkeypatch):
    # stage full before any choice: refused in one line, nothing written
    assert _run(tmp_path, "--stage", "full", "--eps", "0.1", "--methods", "CP+d") == 2
    err = capsys.readouterr().err
    assert "no λ/γ chosen on the validation split" in err and err.count("\n") == 1
    assert not (tmp_path / "r.h5").exists() and not (tmp_path / "work").exists()

    # select at ε = 0.1: CP, CP+d ×2, CP+r ×2, then CP+d+r on the chosen pair
    assert _run(tmp_path, "--stage", "select", "--eps", "0.1") == 0
    capsys.readouterr()
    out = tmp_path / "r.h5"
    meta, vals = table1.read_cells(out), table1.cell_values(out)
    cert = lambda label, p: {c[p]: vals[r]["cert"] for r, c in meta.items() if c["method"] == label}
    chosen = pm.read_selection(out)
    assert chosen == {"cp/0.1/lam": pm.pick(cert("CP+d", "lam")), "cp/0.1/gamma": pm.pick(cert("CP+r", "gamma"))}
    dr = meta["val_mlp_2x100_CP+d+r_s0_eps0.1"]
    assert (dr["lam"], dr["gamma"], dr["lam_from"]) == (chosen["cp/0.1/lam"], chosen["cp/0.1/gamma"], "validation")
    val = read_report(out).runs
    assert len(val) == 6 and all(r.attrs["split"] == "train" and list(r.data["index"]) == list(range(1000, 1016))
                                 for r in val)  # the last 1,000 of the 2,000 bundled training images

    # full, seeds 0 and 1, while "another process" holds one cell: that one is left to it
    held = tmp_path / "work" / "mlp_2x100_CP_s1" / "eps0.1"
    held.mkdir(parents=True)
    fd = os.open(held, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        assert _run(tmp_path, "--stage", "full", "--eps", "0.1", "--seeds", "0,1", "--methods", "CP,CP+d+r") == 0
    finally:
        os.close(fd)
    assert "mlp_2x100_CP_s1_eps0.1: running in another process, skipped" in capsys.readouterr().err
    assert "mlp_2x100_CP_s1_eps0.1" not in table1.read_cells(out)
    onnx = tmp_path / "work" / "mlp_2x100_CP_s0" / "eps0.1" / "model.onnx"
    mtime = onnx.stat().st_mtime_ns
    assert _run(tmp_path, "--stage", "full", "--eps", "0.1", "--seeds", "0,1", "--methods", "CP,CP+d+r") == 0
    assert capsys.readouterr().err.count("finished earlier, skipped") == 3 and onnx.stat().st_mtime_ns == mtime
    meta = table1.read_cells(out)
    for s in (0, 1):
        c = meta[f"mlp_2x100_CP+d+r_s{s}_eps0.1"]
        assert (c["lam"], c["gamma"], c["split"]) == (chosen["cp/0.1/lam"], chosen["cp/0.1/gamma"], "test")

    # killed after evaluating, before storing: the rerun stores the cell without training or certifying again
    real_store = pm.store
    monkeypatch.setattr(pm, "store", killed)
    with pytest.raises(Killed):
        _run(tmp_path, "--stage", "full", "--eps", "0.3", "--seeds", "0", "--methods", "CP+d", "--lam", "0.1")
    folder = tmp_path / "work" / "mlp_2x100_CP+d_s0" / "eps0.3"
    stamps = [(folder / f).stat().st_mtime_ns for f in ("model.onnx", "eval.h5")]
    monkeypatch.setattr(pm, "store", real_store)
    assert _run(tmp_path, "--stage", "full", "--eps", "0.3", "--seeds", "0", "--methods", "CP+d", "--lam", "0.1") == 0
    assert [(folder / f).stat().st_mtime_ns for f in ("model.onnx", "eval.h5")] == stamps
    c = table1.read_cells(out)["mlp_2x100_CP+d_s0_eps0.3"]
    assert (c["lam"], c["lam_from"]) == (0.1, "override")

    # the markdown: every figure from the .h5, regenerated identically by --table-only
    md = (tmp_path / "r.md").read_text()
    capsys.readouterr()
    assert _run(tmp_path, "--table-only") == 0 and (tmp_path / "r.md").read_text() == md
    runs = read_report(out).runs
    cp, dr = _seed_values(runs, "mlp_2x100_CP"), _seed_values(runs, "mlp_2x100_CP+d+r")
    row = next(ln for ln in md.splitlines() if ln.startswith("| CP+d+r "))
    cols = [x.strip() for x in row.split("|")[1:-1]]
    lam_gamma = f"{chosen['cp/0.1/lam']:g} / {chosen['cp/0.1/gamma']:g}"
    assert cols[2:4] == ["2", lam_gamma] and cols[4:7] == [pm._ms([dr[s][k] for s in (0, 1)]) for k in range(3)]
    verdict = pm.compare({s: v[2] for s, v in dr.items()}, {s: v[2] for s, v in cp.items()})
    assert cols[7] == pm._rel_text(verdict) and cols[8:] == ["·"] * 6  # ε = 0.3 not run
    claim = next(ln for ln in md.splitlines() if ln.startswith("* CP+d+r vs CP, ε = 0.1"))
    assert "10.3 %" in claim and claim == pm.claim_line(
        "CP+d+r", "CP", "0.1", pm.CLAIMS[0][2], {s: v[2] for s, v in dr.items()}, {s: v[2] for s, v in cp.items()},
        {s: v[0] for s, v in cp.items()})  # the smoke models barely train: the line may say "untestable"
    assert "* CP+d+r vs CP, ε = 0.3 (paper: d + r lower CP's certified error on the 2×100 MLP by 8.7 % " \
           "(relative)): no finished cells yet." in md
    assert "| mlp_2x100_CP+d_s0_eps0.3 " in md and "0.1 (override)" in md


def test_park_carries_an_unfinished_cell_to_a_fresh_work_dir(tmp_path, capsys, monkeypatch):
    """A cell killed before it was stored is parked (checkpoint only), a fresh work dir resumes it from there
    to the same weights, a running cell is refused, and parking again drops the now-stored cell."""
    parked = tmp_path / "parked"
    run = lambda work, *extra: pm.main(["--profile", "smoke", "--out", str(tmp_path / "r.h5"), "--work-dir",  # noqa
                                        str(tmp_path / work), "--parked", str(parked), *extra])
    cell = ["--stage", "full", "--eps", "0.1", "--seeds", "0", "--methods", "CP"]
    monkeypatch.setattr(table1, "evaluate_cell", killed)
    with pytest.raises(Killed):
        run("w1", *cell)
    monkeypatch.undo()
    folder = tmp_path / "w1" / "mlp_2x100_CP_s0" / "eps0.1"
    first = onnx_weights(folder / "model.onnx")

    fd = os.open(folder, os.O_RDONLY)  # "another process" still runs the cell: refused, nothing parked
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        assert run("w1", "--park") == 2
    finally:
        os.close(fd)
    assert "mlp_2x100_CP_s0/eps0.1 is running in another process" in capsys.readouterr().err
    assert not parked.exists()

    assert run("w1", "--park") == 0
    assert sorted(p.name for p in (parked / "mlp_2x100_CP_s0" / "eps0.1").iterdir()) == ["last.pt", "report.h5"]
    # mark the parked weights (its one epoch is done, so a resumed run exports them as they are; a run that
    # started over would train the seed's weights again, i.e. ``first``)
    mark_checkpoint(parked / "mlp_2x100_CP_s0" / "eps0.1" / "last.pt")
    capsys.readouterr()
    assert run("w2", *cell) == 0  # a fresh clone: no work dir, the parked checkpoint
    assert "mlp_2x100_CP_s0_eps0.1: resuming from its parked checkpoint" in capsys.readouterr().err
    assert_marked(first, onnx_weights(tmp_path / "w2" / "mlp_2x100_CP_s0" / "eps0.1" / "model.onnx"))
    assert "mlp_2x100_CP_s0_eps0.1" in table1.read_cells(tmp_path / "r.h5")
    assert run("w2", "--park") == 0 and not (parked / "mlp_2x100_CP_s0").exists()


@pytest.mark.skipif(not H5.exists(), reason="benchmarks/results/paper_mnist.h5 is not committed yet (the study "
                                            "writes it cell by cell)")
def test_committed_results_match_their_markdown():
    """Every number in benchmarks/results/paper_mnist.md follows from the committed .h5, and its cells were made
    with the grid's current settings."""
    stored, chosen = table1.read_cells(H5), pm.read_selection(H5)
    grid = [c for c in pm.cells("paper") if pm.resolve(c, stored, chosen, {})]
    table1._check_cells(H5, grid)
    assert chosen == pm.choose("paper", stored, table1.cell_values(H5))
    assert (pm.RESULTS / "paper_mnist.md").read_text() == pm.markdown("paper", H5)


@pytest.mark.skipif(not H5.exists(), reason="benchmarks/results/paper_mnist.h5 is not committed yet")
def test_readme_study_figures_come_from_the_committed_markdown():
    """Every decimal figure in README's paragraph on the study is in paper_mnist.md (generated from the .h5 and
    checked against it above) or, for the short-schedule comparison, in table1_cpu.md."""
    readme = (pm.ROOT / "README.md").read_text()
    start = readme.index("The paper's MNIST study at the reference schedule")
    para = readme[start:readme.index("\n## ", start)]
    sources = (pm.RESULTS / "paper_mnist.md").read_text() + (pm.RESULTS / "table1_cpu.md").read_text()
    known = {float(x) for x in re.findall(r"\d+\.\d+", sources)}   # 14.7 in README is 14.70 in a table
    figures = re.findall(r"\d+\.\d+", para)
    assert len(figures) > 30
    assert [f for f in figures if float(f) not in known] == []
