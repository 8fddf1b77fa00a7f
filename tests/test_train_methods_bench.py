"""benchmarks.train_methods: certified-training methods on one CPU budget (issue 16), smoke profile."""
from __future__ import annotations

import json

import pytest

from benchmarks import table1
from benchmarks import train_methods as tm
from parking_helpers import Killed, assert_marked, killed, mark_checkpoint, onnx_weights


def test_smoke_cells_budget_resume_and_second_seed(tmp_path, capsys):
    out, work = tmp_path / "r.h5", tmp_path / "work"
    base = ["--profile", "smoke", "--out", str(out), "--work-dir", str(work), "--eps", "0.1"]
    assert tm.main(base + ["--rows", "IBP,MTL-IBP,CROWN-IBP", "--second-seed"]) == 0
    cells = table1.read_cells(out)
    seed0 = {c["row"] for c in cells.values() if c["seed"] == 0}
    assert seed0 == {"IBP", "MTL-IBP", "CROWN-IBP"}
    # the two best seed-0 rows get seed 1
    best = tm.second_seed_rows(out, "0.1", ["IBP", "MTL-IBP", "CROWN-IBP"])
    assert len(best) == 2 and {c["row"] for c in cells.values() if c["seed"] == 1} == set(best)
    vals = table1.cell_values(out)
    assert all(v["finished"] and v["n"] == 16 for v in vals.values())
    for r, c in cells.items():
        plan = json.loads((work / r / "plan.json").read_text())
        assert c["epochs"] == plan["epochs"] == tm.planned_epochs(tm.PROFILES["smoke"], plan["epoch_s"],
                                                                  plan["epoch_s_after_ramp"], plan["budget_s"])
        assert c["train"]["epochs"] == c["epochs"] and c["train"]["method"] == tm.ROWS[c["row"]]["method"]
        assert ("kappa_final" in c["train"]) == (c["row"] in ("IBP", "IBP + fast init", "CROWN-IBP"))
    md = out.with_suffix(".md").read_text()
    assert tm.main(["--table-only", "--out", str(out)]) == 0
    assert out.with_suffix(".md").read_text() == md  # the markdown is what the results file gives
    assert "| MTL-IBP " in md and "≈ 1.6 [C]" in md and "3 of 7 rows finished" in md
    capsys.readouterr()
    assert tm.main(base + ["--rows", "IBP"]) == 0  # finished cells are skipped, nothing retrained
    assert "evaluating" not in capsys.readouterr().err


def test_unknown_row_is_refused(tmp_path, capsys):
    assert tm.main(["--rows", "IBP,Nope", "--out", str(tmp_path / "r.h5")]) == 2
    assert "unknown row or ε Nope" in capsys.readouterr().err


def test_second_seed_waits_for_every_row(monkeypatch):
    cells = {"a": dict(row="IBP", eps_label="0.1", seed=0), "b": dict(row="SABR", eps_label="0.1", seed=0),
             "c": dict(row="MTL-IBP", eps_label="0.3", seed=0)}
    vals = {"a": dict(cert=30.0), "b": dict(cert=20.0), "c": dict(cert=10.0)}
    monkeypatch.setattr(table1, "read_cells", lambda out: cells)
    monkeypatch.setattr(table1, "cell_values", lambda out: vals)
    assert tm.second_seed_rows(None, "0.1", ["IBP", "SABR", "CC-IBP"]) == []  # CC-IBP not finished yet
    assert tm.second_seed_rows(None, "0.1", ["IBP", "SABR"]) == ["SABR", "IBP"]
    cells["d"] = dict(row="CC-IBP", eps_label="0.1", seed=0)
    vals["d"] = dict(cert=20.0)  # a tie goes to the row listed first in ROWS
    assert tm.second_seed_rows(None, "0.1", ["IBP", "SABR", "CC-IBP"]) == ["SABR", "CC-IBP"]


def test_second_seeds_are_asked_again_after_each_round(monkeypatch, tmp_path):
    """A seed-0 cell another process runs is skipped; when it has finished by the end of this process's next
    round, that ε's second seeds are still run here (this process once stopped after asking only once)."""
    import contextlib

    cells, vals, ran, busy = {}, {}, [], {"small_SABR_s0_eps0.3"}
    cert = {"IBP": 5.0, "SABR": 4.0, "MTL-IBP": 6.0}

    def store(c):
        cells[c["run"]] = dict(row=c["row"], eps_label=c["eps_label"], seed=c["seed"])
        vals[c["run"]] = dict(cert=cert[c["row"]] + c["seed"])

    def fake_run_cell(c, out, work, args):
        ran.append(c["run"])
        store(c)
        if c["seed"] == 1 and busy:  # meanwhile the other process finishes its cell and lets go of it
            store(tm.cell("cpu", "SABR", "0.3", 0))
            busy.clear()

    @contextlib.contextmanager
    def fake_flock(folder, wait=True):
        yield folder.name not in busy

    monkeypatch.setattr(table1, "read_cells", lambda out: cells)
    monkeypatch.setattr(table1, "cell_values", lambda out: vals)
    monkeypatch.setattr(tm, "run_cell", fake_run_cell)
    monkeypatch.setattr(tm, "_flock", fake_flock)
    args = tm.parse_args(["--rows", "IBP,SABR", "--eps", "0.1,0.3", "--second-seed"])
    assert tm.run_all(args, tmp_path / "r.h5", tmp_path / "work") == []
    assert ran == ["small_IBP_s0_eps0.1", "small_SABR_s0_eps0.1", "small_IBP_s0_eps0.3",
                   "small_SABR_s1_eps0.1", "small_IBP_s1_eps0.1", "small_SABR_s1_eps0.3", "small_IBP_s1_eps0.3"]


def test_a_budget_below_one_epoch_still_gets_a_valid_schedule(tmp_path):
    """The epoch count never drops below the schedule's clean epoch plus one ramp epoch (a loaded machine
    once measured an epoch longer than the smoke budget, and the 1-epoch schedule was refused)."""
    out = tmp_path / "r.h5"
    assert tm.main(["--profile", "smoke", "--out", str(out), "--work-dir", str(tmp_path / "w"), "--eps", "0.3",
                    "--rows", "MTL-IBP", "--budget", "0"]) == 0
    (c,) = table1.read_cells(out).values()
    assert c["epochs"] == 2 and c["train"]["warmup"] + c["train"]["ramp"] <= 2


def test_park_carries_an_unfinished_cell_and_its_plan_to_a_fresh_work_dir(tmp_path, capsys, monkeypatch):
    """A cell killed after its evaluation, before it was stored, is parked with its measured plan; a fresh work
    dir resumes from the parked checkpoint (marked ×1.01, so a retrained model would differ) and keeps the plan
    (re-measuring would give another epoch time); parking again drops the now-stored cell."""
    parked, run_name = tmp_path / "parked", "mlp_2x100_MTL-IBP_s0_eps0.1"
    run = lambda work, *extra: tm.main(["--profile", "smoke", "--out", str(tmp_path / "r.h5"), "--work-dir",  # noqa
                                        str(tmp_path / work), "--parked", str(parked), *extra])
    monkeypatch.setattr(tm, "add_cell", killed)
    with pytest.raises(Killed):
        run("w1", "--eps", "0.1", "--rows", "MTL-IBP")
    monkeypatch.undo()
    first, plan = onnx_weights(tmp_path / "w1" / run_name / "model.onnx"), tmp_path / "w1" / run_name / "plan.json"
    assert run("w1", "--park") == 0
    assert sorted(p.name for p in (parked / run_name).iterdir()) == ["last.pt", "plan.json", "report.h5"]
    mark_checkpoint(parked / run_name / "last.pt")
    capsys.readouterr()
    assert run("w2", "--eps", "0.1", "--rows", "MTL-IBP") == 0
    assert f"{run_name}: resuming from its parked checkpoint" in capsys.readouterr().err
    assert (tmp_path / "w2" / run_name / "plan.json").read_text() == plan.read_text()
    assert_marked(first, onnx_weights(tmp_path / "w2" / run_name / "model.onnx"))
    assert run("w2", "--park") == 0 and not (parked / run_name).exists()


def test_the_plan_charges_each_phase_its_own_epoch_cost():
    """CROWN-IBP's CROWN pass and fast init's regularizer stop with the ramp: epochs after it cost less, so the
    budget buys more of them than budget / ramp cost (the first plans charged every epoch the ramp's cost)."""
    prof = tm.PROFILES["cpu"]

    def cost(n, ramp_s, after_s):
        s = table1._shrunk(prof["schedule"], n)
        ramped = s["warmup"] + s["ramp"]
        return ramped * ramp_s + (n - ramped) * after_s

    for ramp_s, after_s in [(112.0, 17.0), (21.0, 16.0), (56.0, 56.0)]:
        n = tm.planned_epochs(prof, ramp_s, after_s, 1800)
        assert cost(n, ramp_s, after_s) <= 1800 < cost(n + 1, ramp_s, after_s)
    assert tm.planned_epochs(prof, 56.0, 56.0, 1800) == 1800 // 56  # one phase cost: budget / epoch time
    assert tm.planned_epochs(prof, 112.0, 17.0, 1800) > 2 * (1800 // 112)
    assert tm.planned_epochs(prof, 10.0, 10.0, 0) == prof["min_epochs"]


def test_drop_removes_a_stored_cell_and_keeps_the_others(tmp_path, capsys):
    out, work = tmp_path / "r.h5", tmp_path / "work"
    base = ["--profile", "smoke", "--out", str(out), "--work-dir", str(work), "--eps", "0.1", "--budget", "0"]
    assert tm.main(base + ["--rows", "IBP,MTL-IBP"]) == 0
    before = table1.cell_values(out)
    kept_run = lambda out, dropped: next(r for r in table1.read_cells(out) if r != dropped)  # noqa: E731
    ibp = next(r for r, c in table1.read_cells(out).items() if c["row"] == "IBP")
    assert tm.main(["--out", str(out), "--work-dir", str(work), "--drop", ibp]) == 0
    assert not (work / ibp).exists() and (work / kept_run(out, ibp)).is_dir()
    cells = table1.read_cells(out)
    assert ibp not in cells and len(cells) == 1
    (kept,) = cells
    assert table1.cell_values(out)[kept] == before[kept]
    assert f"| {ibp}" not in out.with_suffix(".md").read_text()
    assert tm.main(["--out", str(out), "--work-dir", str(work), "--drop", ibp]) == 2
    assert f"no stored cell {ibp}" in capsys.readouterr().err
    assert tm.main(base + ["--rows", "IBP,MTL-IBP"]) == 0
    err = capsys.readouterr().err  # the dropped cell is trained and evaluated again, the other one skipped
    assert f"{ibp}: 2 epochs" in err and f"{ibp}: evaluating" in err and kept not in err
    assert set(table1.read_cells(out)) == {ibp, kept}


def _fake_results(monkeypatch, certs: dict, clean: dict):
    """Stored cells and values from row -> [certified error per seed] at ε 0.1 (clean: row -> clean error)."""
    cells, vals = {}, {}
    for row, errs in certs.items():
        for seed, err in enumerate(errs):
            run = f"{row}_s{seed}"
            cells[run] = dict(row=row, eps_label="0.1", seed=seed)
            vals[run] = dict(cert=err, clean=clean.get(row, 2.0), pgd=3.0)
    monkeypatch.setattr(table1, "read_cells", lambda out: cells)
    monkeypatch.setattr(table1, "cell_values", lambda out: vals)


def test_reading_names_the_winner_its_margin_its_price_and_the_published_distance(monkeypatch):
    certs = {r: [10.0 + i] for i, r in enumerate(tm.ROWS)}
    certs["SABR"], certs["MTL-IBP"] = [4.0, 4.2], [5.0, 5.4]
    _fake_results(monkeypatch, certs, {"IBP": 1.0, "SABR": 2.5})
    eps01, eps03 = tm.reading(None)
    assert eps01.startswith("* ε = 0.1: lowest certified error SABR (4.10 %), then MTL-IBP (5.20 %); the gap "
                            "(1.10 points) is larger than twice the larger of their seed sds (2 × 0.28 = 0.57).")
    assert "The worst is CC-IBP (16.00 %)." in eps01 and "SABR's clean error is 2.50 %; the lowest is IBP's (1.00 %)" \
        in eps01
    assert "The lowest published figure at this ε, 1.6 % (MTL-IBP [C]), is 2.5 points below SABR (×2.6)" in eps01
    assert eps03 == "* ε = 0.3: 0 of 7 rows finished; no winner named yet."
    certs["MTL-IBP"] = [4.1, 5.5]  # a seed sd of 0.99: the lead is within the noise
    _fake_results(monkeypatch, certs, {})
    assert "the gap (0.70 points) is within twice the larger of their seed sds (2 × 0.99 = 1.98): their seeds do " \
        "not separate them." in tm.reading(None)[0]
    certs["MTL-IBP"] = [4.5]
    _fake_results(monkeypatch, certs, {})
    assert "the gap (0.40 points) rests on one seed of MTL-IBP" in tm.reading(None)[0]
    certs["SABR"] = [4.0]
    _fake_results(monkeypatch, certs, {})
    assert "the gap (0.50 points) rests on one seed each" in tm.reading(None)[0]
    del certs["CC-IBP"]
    certs["SABR"] = [4.0, 4.2]
    _fake_results(monkeypatch, certs, {})
    assert tm.reading(None)[0] == "* ε = 0.1: 6 of 7 rows finished; leading so far: SABR (4.10 %); no winner named yet."
    block = tm.readme_block(None)
    assert "| SABR | 4.10 ± 0.14 | · |" in block and "| CC-IBP | · | · |" in block
    assert block.endswith("* ε = 0.3: 0 of 7 rows finished; no winner named yet.")


def test_committed_results_markdown_and_readme_follow_from_the_h5():
    """benchmarks/results/train_methods_cpu.md is what the committed .h5 gives (no figure typed by hand), each
    stored cell was made with its row's current settings, and README's excerpt and reading are the h5's."""
    stored = table1.read_cells(tm.OUT)
    assert stored and all(c["settings"] == tm.ROWS[c["row"]] and c["profile"] == "cpu" for c in stored.values())
    assert tm.OUT.with_suffix(".md").read_text() == tm.markdown(tm.OUT)
    assert tm.readme_block(tm.OUT) in (table1.ROOT / "README.md").read_text()


def test_readme_option_rewrites_only_the_excerpt(tmp_path, monkeypatch):
    _fake_results(monkeypatch, {"IBP": [5.0]}, {})
    readme = tmp_path / "README.md"
    readme.write_text("intro\n\n| method | ε = 0.1 | ε = 0.3 |\n|---|---|---|\n| IBP | · | · |\n\n"
                      "* ε = 0.1: old\n* ε = 0.3: old\n\nnext section\n")
    tm.update_readme(readme, None)
    assert readme.read_text() == "intro\n\n" + tm.readme_block(None) + "\n\nnext section\n"
    assert "| IBP | 5.00 | · |" in readme.read_text()
