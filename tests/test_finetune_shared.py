"""benchmarks.finetune_shared: the fine-tune recipe's before/after table on the VNN-COMP models (issue 16)."""
from __future__ import annotations

import json

import pytest

from benchmarks import finetune_shared as fs

from conftest import needs_shared


def _summary(clean, cert):
    return {"clean_err": clean, "pgd_err": clean + 1, "certified_err/ibp": cert + 10,
            "certified_err/crown-ibp": cert + 5, "certified_err/crown": cert, "n": 200}


def test_table_reads_before_and_after_per_column():
    data = {"command": "c", "torch": "t", "threads": 1, "models": {
        "resnet_2b": {"command": "tightcert finetune x", "eps": 2 / 255, "eps_start": 0.0041, "n_train": 49500,
                      "train_time_s": 600.0, "guard": {"stopped_at": None, "best_epoch": 1},
                      "before": _summary(30.0, 60.0), "after": _summary(31.5, 52.25)},
        "cifar_base_kw": {"command": "tightcert finetune y", "eps": 2 / 255, "eps_start": 0.0, "n_train": 49500,
                          "train_time_s": 60.0, "guard": {"stopped_at": 1, "best_epoch": 0},
                          "before": _summary(40.0, 70.0), "after": _summary(40.0, 70.0)}}}
    rows = fs.table(data).splitlines()[2:]
    assert [c.strip() for c in rows[0].strip("|").split("|")] == [
        "resnet_2b", "0.007843", "200", "30.0 → 31.5", "31.0 → 32.5", "70.0 → 62.2", "65.0 → 57.2", "60.0 → 52.2",
        "0.0041", "held"]
    assert rows[1].rstrip(" |").endswith("stopped at epoch 1, rolled back to epoch 0")
    md = fs.markdown(data)
    assert "resnet_2b 10 min, cifar_base_kw 1 min" in md and fs.table(data) in md


@needs_shared
def test_one_model_end_to_end_and_a_rerun_skips_it(tmp_path, monkeypatch, capsys):
    """The benchmark runs `tightcert finetune` with the recipe, stores the before/after summary per model and
    skips a model it already has (a killed run continues where it stopped)."""
    monkeypatch.setitem(fs.MODELS, "mnist-net_256x2", dict(eps=0.03, data="mnist", test_n=20, train_n=100))
    out, work = tmp_path / "f.json", tmp_path / "work"
    args = ["--models", "mnist-net_256x2", "--work", str(work), "--out", str(out)]
    assert fs.main(args) == 0
    r = json.loads(out.read_text())["models"]["mnist-net_256x2"]
    assert set(r["before"]) == set(r["after"]) == {*fs.COLUMNS, "n"} and r["after"]["n"] == 20
    assert r["n_train"] == 80 and 0 <= r["eps_start"] <= 0.03  # 100 images less the guard's fifth
    assert "--method" not in r["command"] and "--eval-method ibp,crown-ibp,crown" in r["command"]
    # the cascade's columns are cumulative: a dearer certifier never certifies fewer images
    for s in (r["before"], r["after"]):
        assert s["certified_err/ibp"] >= s["certified_err/crown-ibp"] >= s["certified_err/crown"] >= s["pgd_err"]
    assert (tmp_path / "f.md").read_text().count("mnist-net_256x2") >= 1
    capsys.readouterr()
    assert fs.main(args) == 0
    assert "done earlier, skipped" in capsys.readouterr().err


def test_unknown_model_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="unknown model 'nope'"):
        fs.main(["--models", "nope", "--out", str(tmp_path / "f.json"), "--work", str(tmp_path)])


def test_markdown_and_readme_follow_from_the_committed_json(tmp_path):
    """benchmarks/results/finetune_shared.md is what its .json gives, and README's fine-tune table is that
    table; every shared model has a row."""
    import shutil

    src = fs.OUT
    data = json.loads(src.read_text())
    assert list(data["models"]) == list(fs.MODELS)
    shutil.copy(src, tmp_path / "f.json")
    assert fs.main(["--table-only", "--out", str(tmp_path / "f.json")]) == 0
    assert (tmp_path / "f.md").read_text() == src.with_suffix(".md").read_text()
    readme = (fs.ROOT / "README.md").read_text()
    for line in fs.table(data).splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert "| " + " | ".join(cells) + " |" in readme, cells[0]
