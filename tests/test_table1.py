"""benchmarks.table1: the smoke profile on a slice of the grid writes a well-formed Table-1-shaped markdown
and one HDF5 file, a rerun skips finished cells, and bad input is a one-line error with exit status 2."""
import re

import h5py
import pytest

from benchmarks import table1
from toolkit.report import read_report

SLICE = ["--datasets", "mnist", "--eps", "0.1", "--methods", "CP,CP+d+r,CROWN-IBP"]


def _run(tmp, *extra, out="r.h5"):
    """The smoke profile's MNIST cells use the bundled subsets: no data root needed."""
    return table1.main(["--profile", "smoke", "--out", str(tmp / out), "--work-dir", str(tmp / "work"), *extra])


def test_grid_shape_and_names():
    cells = table1.cells("paper")
    assert {c["dataset"] for c in cells} == {"mnist", "cifar10"}
    eps = {(c["dataset"], c["eps_label"], round(c["train_eps"] * 255, 3) if c["dataset"] == "cifar10" else c["train_eps"])
           for c in cells}
    assert eps == {("mnist", "0.1", 0.1), ("mnist", "0.3", 0.4), ("cifar10", "2/255", 2.2), ("cifar10", "8/255", 8.8)}
    assert {c["method"] for c in cells} == set(table1.METHODS)
    small_exact = [c for c in cells if c["model_key"] == "small-exact"]
    assert small_exact and all(c["proj"] == 0 and c["family"] == "cp" for c in small_exact)
    assert all(c["proj"] == 50 for c in cells if c["model_key"] == "small")
    beta = {c["eps_label"]: c["train"]["beta_final"] for c in cells if c["family"] == "crown-ibp" and c["dataset"] == "cifar10"}
    assert beta == {"2/255": 1.0, "8/255": 0.0}
    assert len({c["run"] for c in table1.cells("cpu")}) == len(table1.cells("cpu"))


def test_smoke_slice_table_and_rerun(tmp_path, capsys, monkeypatch):
    assert _run(tmp_path, *SLICE) == 0
    cap = capsys.readouterr()
    md = (tmp_path / "r.md").read_text()
    assert md.strip() in cap.out
    lines = [ln for ln in md.splitlines() if ln.startswith("| CP") or ln.startswith("| CROWN")]
    table_lines = [ln for ln in lines if "mlp_2x100" in ln and ln.count("|") == 10]
    assert len(table_lines) == 6  # all six methods of the MNIST grid; CP+d, CP+r were not run
    by_method = {ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[3:-2]] for ln in table_lines}
    for m in ("CP", "CROWN-IBP"):
        assert all(re.fullmatch(r"\d+\.\d\d", v) for v in by_method[m][:3]), by_method[m]
        assert by_method[m][3:] == ["·"] * 3  # ε = 0.3 not in the slice
    assert all(re.fullmatch(r"\d+\.\d\d \((?:[+-]\d+\.\d%|±0%|n/a)\)", v) for v in by_method["CP+d+r"][:3]), \
        by_method["CP+d+r"]
    assert by_method["CP+d"] == by_method["CROWN-IBP+r"] == ["·"] * 6
    assert "not this paper's Table 1" in md and "7.02 [A]" in md
    rep = read_report(tmp_path / "r.h5")
    assert sorted(r.name for r in rep.runs) == sorted(c["run"] for c in table1.cells("smoke", *[s.split(",") for s in SLICE[1::2]]))
    assert all(r.finished and r.n_done == 16 for r in rep.runs)
    ci = next(r for r in rep.runs if r.name.startswith("mnist_CROWN-IBP_"))
    assert ci.methods == ["ibp", "crown-ibp"]
    with h5py.File(tmp_path / "r.h5") as f:
        assert f.attrs["table1_profile"] == "smoke" and len(f["table1/cells"]) == 3
    onnx = next((tmp_path / "work").rglob("model.onnx"))
    mtime = onnx.stat().st_mtime_ns
    assert _run(tmp_path, *SLICE) == 0
    assert capsys.readouterr().err.count("finished earlier, skipped") == 3
    assert onnx.stat().st_mtime_ns == mtime
    # the same profile with other settings is another grid: refused before anything runs
    monkeypatch.setitem(table1.PROFILES["smoke"], "train_n", 32)
    assert _run(tmp_path, *SLICE) == 2
    err = capsys.readouterr().err
    assert "of another grid (train_n = 64, now 32)" in err and err.count("\n") == 1


def test_bad_input_one_line_exit_2(tmp_path, capsys):
    other = tmp_path / "other.h5"
    assert table1.main(["--profile", "cpu", "--out", str(other), "--table-only"]) == 2  # no such results file
    table1.open_results(other, "cpu", [])
    cases = [(["--profile", "huge"], "unknown profile 'huge'"),
             (["--profile", "smoke", "--models", "resnet"], "unknown model 'resnet'"),
             (["--profile", "smoke", "--methods", "CP,DiffAI"], "unknown method 'DiffAI'"),
             (["--profile", "smoke", "--eps", "0.2"], "unknown eps '0.2'"),
             (["--profile", "smoke", "--datasets", "svhn"], "unknown dataset 'svhn'"),
             (["--profile", "smoke", *SLICE, "--out", str(other)], "another grid"),
             (["--profile", "smoke", "--datasets", "cifar10", "--data-root", str(tmp_path)], "not found")]
    capsys.readouterr()
    for argv, msg in cases:
        assert table1.main(argv + (["--work-dir", str(tmp_path / "w")] if "--out" in argv else
                                   ["--out", str(tmp_path / "x.h5"), "--work-dir", str(tmp_path / "w")])) == 2, argv
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1, (argv, err)
    assert not (tmp_path / "x.h5").exists() and not (tmp_path / "w").exists()


def test_failed_cell_does_not_stop_the_grid(tmp_path, monkeypatch, capsys):
    from toolkit.errors import BadInputError

    calls = []

    def failing(cell, *a):
        calls.append(cell["run"])
        raise BadInputError("training diverged in epoch 1")

    monkeypatch.setattr(table1, "train_cell", failing)
    assert _run(tmp_path, "--datasets", "mnist", "--eps", "0.1", "--methods", "CP,CP+d") == 1
    assert len(calls) == 2  # the second cell ran after the first failed
    md = (tmp_path / "r.md").read_text()
    assert "## Failed cells" in md and "training diverged" in md and read_report(tmp_path / "r.h5").runs == []


def test_committed_cpu_results_are_complete_and_match_their_table():
    """benchmarks/results/table1_cpu.md is what the committed .h5 gives (no figure typed by hand), and the
    .h5 holds every cell of the cpu grid, each finished and made with the grid's current settings."""
    h5 = table1.RESULTS / "table1_cpu.h5"
    md = (table1.RESULTS / "table1_cpu.md").read_text()
    grid = table1.cells("cpu")
    table1._check_cells(h5, grid)  # raises on a cell made with other settings
    values = table1.cell_values(h5)
    assert sorted(values) == sorted(c["run"] for c in grid) and len(grid) == 24
    assert table1.make_tables("cpu", h5) in md
    assert table1.details_table("cpu", h5) in md  # train times from the .h5 alone


def test_readme_table1_excerpt_follows_from_the_h5():
    """README's Table 1 excerpt (certified error and relative change per method) is what table1_cpu.h5 gives."""
    readme = (table1.ROOT / "README.md").read_text()
    rows = table1.readme_cells("cpu", table1.RESULTS / "table1_cpu.h5")
    assert len(rows) == 6
    for label, cells in rows.items():  # README has other tables with the same row labels (train_methods')
        lines = [x.rstrip() for x in readme.splitlines() if x.strip().startswith(f"| {label} |")]
        assert any(x.endswith("| " + " | ".join(cells) + " |") for x in lines), (label, lines)


def test_train_epoch_markdown_is_what_its_json_gives(tmp_path):
    """benchmarks/results/train_epoch_cpu.md is generated from the committed .json (every figure, and the
    target verdicts, follow from the raw step times)."""
    import json
    import shutil

    from benchmarks import train_epoch

    src = train_epoch.OUT
    assert src == train_epoch.ROOT / "benchmarks" / "results" / "train_epoch_cpu.json"
    data = json.loads(src.read_text())
    assert set(data["nets"]) == {"mlp_2x100", "small"}
    for times in data["nets"].values():
        assert set(times) == set(train_epoch.METHODS)
        assert all(len(t) == data["batches"] and min(t) > 0 for t in times.values())
    shutil.copy(src, tmp_path / "t.json")
    assert train_epoch.main(["--table-only", "--out", str(tmp_path / "t.json")]) == 0
    assert (tmp_path / "t.md").read_text() == src.with_suffix(".md").read_text()


def test_readme_train_epoch_figures_follow_from_the_json():
    import json

    from benchmarks import train_epoch

    readme = " ".join((train_epoch.ROOT / "README.md").read_text().split())
    assert train_epoch.readme_summary(json.loads(train_epoch.OUT.read_text())) in readme


def test_train_epoch_explains_each_missed_target_from_its_profile():
    """A missed target gets a line with the mechanism and both rows' profiled figures, and the step time its
    numerator would take with its products at the plain GEMM's rate; a met target gets none."""
    from benchmarks import train_epoch

    prof = lambda share, rate: {"steps": 2, "total_ms": 10.0, "products_share": share,  # noqa: E731
                                "products_gflops": rate, "top": [{"op": "aten::mm", "shapes": "[[2, 3]]",
                                                                  "ms": 5.0, "share": 0.5}]}
    ms = lambda t: [t / 1000] * 3  # noqa: E731
    nets = {"mlp_2x100": {train_epoch.SEQ: ms(1), train_epoch.IR: ms(1), "CP (exact)": ms(60),
                          train_epoch.CA: ms(100), "CP+d+r (exact)": ms(66)}}
    data = {"gemm_gflops": 80.0, "nets": nets,
            "profiles": {"mlp_2x100": {"CP (exact)": prof(0.5, 40.0), train_epoch.CA: prof(0.4, 20.0)}}}
    text = "\n".join(train_epoch.why_lines(data))
    assert text.count("\n- ") + text.startswith("- ") == 1  # only the CP-vs-convex_adversarial target missed
    assert train_epoch.WHY["CP (exact)"] in text
    assert "CP (exact): 10.0 ms profiled per step, matrix products 50 % of it at 40 GFLOP/s" in text
    assert "convex_adversarial (exact): 10.0 ms profiled per step, matrix products 40 %" in text
    # 60 ms with half of it twice as fast: 30 + 15 = 45 ms, against 0.25 × 100 ms
    assert "its step would take ≈ 45.0 ms; the target asks ≤ 25.0 ms" in text
    assert train_epoch.why_lines({"nets": nets}) == []  # no profile stored: no section


def test_readme_speed_reading_follows_from_the_json():
    import json

    from benchmarks import speed

    readme = " ".join((speed.ROOT / "README.md").read_text().split())
    assert speed.readme_reading(json.loads(speed.OUT.read_text())) in readme


def test_speed_side_by_side_verdicts():
    """benchmarks.speed's auto_LiRPA table: a row is met only at ≤ 1× its time and tensor memory and a mean bound
    at least as tight; each miss is named with its size."""
    from benchmarks import speed

    row = lambda s, mem, lb, batch=100: {"seconds": s, "tensor_peak_bytes": mem, "mean_bound": lb,  # noqa: E731
                                         "batch": batch, "peak_bytes": mem, "max_coeff_bytes": 0}
    data = {"command": "c", "torch": "t", "cpu": "x", "cores": 2, "batch": 100, "load": [0.5, 0.5],
            "nets": {"n": {"forward+backward": row(0.01, 1, 0.0), "crown": row(1.0, 100, -1.0),
                           "auto_lirpa:crown": row(2.0, 200, -1.0), "ibp": row(0.5, 300, -2.0),
                           "auto_lirpa:ibp": row(0.25, 100, -1.5), "fastlin": row(1.0, 1, 0.0)}}}
    assert [(net, m) for net, m, _, _ in speed.lirpa_rows(data)] == [("n", "ibp"), ("n", "crown")]
    side = speed.markdown(data).split("## Side by side with auto_LiRPA")[1].splitlines()
    crown = next(line for line in side if line.startswith("| n ") and "| crown " in line)
    ibp = next(line for line in side if line.startswith("| n ") and "| ibp " in line)
    assert crown.rstrip(" |").endswith("met") and "0.50" in crown
    assert "missed: 2.00× its time, 3.00× its tensor memory, looser by 0.5" in ibp


def test_shared_models_markdown_and_readme_follow_from_the_json(tmp_path):
    """benchmarks/results/shared_models.md is what its .json gives, and README's certify table is that table."""
    import json
    import shutil

    from benchmarks import shared_models

    src = shared_models.OUT
    data = json.loads(src.read_text())
    assert set(data["models"]) == set(shared_models.MODELS)
    for r in data["models"].values():
        assert not any(t == "sat" and f is not None for t, f in zip(r["truth"], r["certified_first"]))
    shutil.copy(src, tmp_path / "s.json")
    assert shared_models.main(["--table-only", "--out", str(tmp_path / "s.json")]) == 0
    md = (tmp_path / "s.md").read_text()
    assert md == src.with_suffix(".md").read_text()
    readme = (shared_models.ROOT / "README.md").read_text()
    for line in shared_models.table(data).splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert "| " + " | ".join(cells) + " |" in readme, cells[0]


def test_vnnlib_markdown_and_readme_follow_from_the_json(tmp_path):
    """benchmarks/results/vnnlib.md is what the two .json files give; README's verify table and conformance
    line are theirs; no stored answer contradicts truth.csv."""
    import json

    from benchmarks import vnnlib_runs as v

    inst, conf = json.loads(v.INSTANCES.read_text()), json.loads(v.CONFORMANCE.read_text())
    assert set(inst["models"]) == set(v.MODELS)
    for m in inst["models"].values():
        assert all(r["result"] == r["truth"] for r in m["rows"] if r["result"] in v.DECIDED and r["truth"])
    assert v.main(["--table-only", "--md", str(tmp_path / "v.md")]) == 0
    assert (tmp_path / "v.md").read_text() == v.MD.read_text()
    readme = (v.ROOT / "README.md").read_text()
    for line in v.instances_table(inst).splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert "| " + " | ".join(cells) + " |" in readme, cells[0]
    assert v.conformance_line(conf) in " ".join(readme.split())
    s = v.conformance_summary(conf)
    assert s["total"] == sum(s[k] for k in ("pass", "fail", "suspect", "error", "skip")) > 100


def test_speed_markdown_is_what_its_json_gives(tmp_path):
    """benchmarks/results/speed_cpu.md is generated from the committed .json (no figure typed by hand)."""
    import json
    import shutil

    from benchmarks import speed

    data = json.loads(speed.OUT.read_text())
    assert set(data["nets"]) == set(speed.NETS)
    shutil.copy(speed.OUT, tmp_path / "s.json")
    assert speed.main(["--table-only", "--out", str(tmp_path / "s.json")]) == 0
    assert (tmp_path / "s.md").read_text() == speed.OUT.with_suffix(".md").read_text()


def test_speed_rounds_take_turns_and_keep_the_median(tmp_path, monkeypatch):
    """--rounds K: the selected rows of a net are measured in turn, K rounds, each keeping its median time
    (all K in ``seconds_runs``, the rest from the first round); a redone row keeps its place in METHODS order,
    and the markdown says which rows are medians, with their runs."""
    import json

    from benchmarks import speed

    out = tmp_path / "s.json"
    out.write_text(json.dumps({"batch": 100, "nets": {"n": {
        "forward": {"seconds": 0.01, "batch": 100, "mean_bound": 0.0},
        "crown": {"seconds": 9.0, "batch": 100, "mean_bound": -1.0},
        "auto_lirpa:crown": {"seconds": 2.0, "batch": 100, "mean_bound": -1.0}}}}))
    times = {"crown": iter([3.0, 1.0, 2.0]), "auto_lirpa:crown": iter([5.0, 4.0, 9.0])}
    calls = []

    def fake(net, method, args):
        calls.append(method)
        return {"seconds": next(times[method]), "batch": 100, "mean_bound": -1.0 + len(calls),
                "tensor_peak_bytes": 1}

    monkeypatch.setattr(speed, "_measure_row", fake)
    assert speed.main(["--out", str(out), "--nets", "n", "--methods", "crown,auto_lirpa:crown", "--resume",
                       "--redo", "n:crown,n:auto_lirpa:crown", "--rounds", "3"]) == 0
    assert calls == ["crown", "auto_lirpa:crown"] * 3
    rows = json.loads(out.read_text())["nets"]["n"]
    assert list(rows) == ["forward", "crown", "auto_lirpa:crown"]
    assert (rows["crown"]["seconds"], rows["crown"]["seconds_runs"], rows["crown"]["mean_bound"]) == \
        (2.0, [3.0, 1.0, 2.0], 0.0)
    assert rows["auto_lirpa:crown"]["seconds"] == 5.0 and rows["forward"]["seconds"] == 0.01
    md = out.with_suffix(".md").read_text()
    assert "`--rounds 3`" in md and "n crown (3.000, 1.000, 2.000 s); n auto_lirpa:crown (5.000, 4.000, 9.000 s)" \
        in md
    assert "| n     | crown    | 100     | 2.000    | 5.000          | 0.40         |" in md


def test_speed_alpha_rows_say_where_each_side_started():
    """The side-by-side section states each α row's start (the side's own CROWN) and result, from the data."""
    from benchmarks import speed

    row = lambda s, lb, start: {"seconds": s, "batch": 10, "mean_bound": lb, "tensor_peak_bytes": 1,  # noqa: E731
                                "crown_mean_bound": start}
    data = {"batch": 100, "command": "c", "torch": "t", "cpu": "x", "cores": 2, "nets": {"n": {
        "alpha-crown": row(2.0, 6.2263, 5.4184),
        "auto_lirpa:alpha-crown": row(1.0, 5.4735, 5.4735)}}}
    assert speed.alpha_start_text(data) == (
        "Mean bound of α-CROWN's start (each side's own CROWN on the same samples, untimed) → its result: n "
        "`alpha-crown`: ours 5.4184 → 6.2263, auto_LiRPA 5.4735 → 5.4735.")
    assert speed.alpha_start_text(data) in speed.markdown(data)
    del data["nets"]["n"]["alpha-crown"]["crown_mean_bound"]
    assert speed.alpha_start_text(data) == "" and "α-CROWN's start" not in speed.markdown(data)


def test_vnnlib_instances_force_remeasures_only_the_models_given(tmp_path, monkeypatch):
    """``instances --models a --force`` replaces a's stored run and keeps every other model's (it once emptied
    the file first), each model keeping the command that measured it; the table keeps the models' order."""
    import json

    from benchmarks import vnnlib_runs as v

    calls = []

    def fake(name, cap):
        calls.append(name)
        return [{"vnnlib": "q.vnnlib", "result": "unsat", "time_s": float(len(calls)), "truth": "unsat"}]

    monkeypatch.setattr(v, "INSTANCES", tmp_path / "i.json")
    monkeypatch.setattr(v, "measure_instances", fake)
    first, second = v.MODELS[:2]
    v.run_instances_study([first, second], 30.0, False, ["instances"])
    v.run_instances_study([first], 30.0, False, ["instances"])          # stored: skipped
    assert calls == [first, second]
    v.run_instances_study([first], 30.0, True, ["instances", "--models", first, "--force"])
    data = json.loads(v.INSTANCES.read_text())
    assert calls == [first, second, first] and list(data["models"]) == [second, first]
    assert data["models"][second]["rows"][0]["time_s"] == 2.0 and data["models"][first]["rows"][0]["time_s"] == 3.0
    assert data["models"][first]["command"].endswith("--force")
    assert data["models"][second]["command"].endswith("instances")
    table = v.instances_table(data).splitlines()
    assert table[2].split("|")[1].strip() == first and "Measured by:" in v.markdown(data, None)
