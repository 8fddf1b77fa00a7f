"""tightcert demo (what `make demo` runs) end to end on a few samples: every step's output is written, a rerun
starts afresh even over a stale checkpoint made with other settings, and --resume reuses finished work."""
from pathlib import Path

import h5py
import pytest
import torch

from toolkit.cli import main
from toolkit.data import load_dataset
from toolkit.ir.onnx_import import import_onnx
from toolkit.report import read_report

FAST = ["--n", "16", "--pgd-steps", "2"]
ROOT = Path(__file__).resolve().parents[1]


def test_demo_runs_every_step_and_reruns_afresh(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out-dir", str(out), *FAST]) == 0
    text = capsys.readouterr().out
    for step in ("=== 1.", "=== 2.", "=== 3.", "=== 4.", "onnxruntime parity of the exported model"):
        assert step in text
    for name in ("report.h5", "report_after.h5", "finetuned.onnx", "finetuned.h5"):
        assert (out / name).is_file(), name
    assert not list(out.glob("*.partial"))
    before = read_report(out / "report.h5")
    assert before.finished and before.runs[0].n_done == 16
    tuned = import_onnx(out / "finetuned.onnx")
    assert tuned(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    # the fine-tune changed the weights, and the printed before/after table is the one its report holds
    original = import_onnx(ROOT / "models" / "mnist_mlp_2x100.onnx")
    assert any(not torch.equal(a, b) for a, b in zip(tuned.parameters(), original.parameters()))
    with h5py.File(out / "finetuned.h5", "r") as f:
        rows = {k: f["train/before_after"][k][()] for k in ("clean_err", "pgd_err")}
    for k, (b, a) in rows.items():
        assert f"{b:.2f}" in text and f"{a:.2f}" in text, k
    # the certify report's clean error is the model's own error on those samples
    data = load_dataset("mnist_test_1000", "test", n=16)
    err = (original(data.x.reshape(-1, 1, 28, 28)).argmax(1) != data.y).float().mean().item() * 100
    assert before.runs[0].attrs["clean_err"] == pytest.approx(err)
    # tightcert plot on the fine-tune report: training curves and the before/after chart (one ε: no ε plot)
    assert main(["plot", str(out / "finetuned.h5"), "--out-dir", str(tmp_path / "plots")]) == 0
    pngs = {p.name: p for p in (tmp_path / "plots").iterdir()}
    assert {"training_curves.png", "before_after.png"} <= set(pngs) and "accuracy_vs_eps.png" not in pngs
    for p in pngs.values():
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
    capsys.readouterr()
    # a rerun with other settings must not trip over the earlier run's checkpoint or reports
    assert main(["demo", "--out-dir", str(out), *FAST, "--reg-d", "0.2"]) == 0
    assert "error" not in capsys.readouterr().err


def test_demo_at_the_models_training_eps_hands_back_the_starting_weights(tmp_path, capsys):
    """At ε 0.1 the bundled model sits at its own training's optimum: one epoch on the 1,600-image subset made it
    worse on held-out images (and on the test subset), so keep-best exports the model it was given."""
    out = tmp_path / "demo"
    assert main(["demo", "--out-dir", str(out), "--eps", "0.1", *FAST]) == 0
    assert "handed back the starting weights" in capsys.readouterr().out
    original = import_onnx(ROOT / "models" / "mnist_mlp_2x100.onnx")
    tuned = import_onnx(out / "finetuned.onnx")
    assert all(torch.equal(a, b) for a, b in zip(tuned.parameters(), original.parameters()))
