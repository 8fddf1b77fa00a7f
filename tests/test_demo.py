"""tightcert demo (what `make demo` runs) end to end on a few samples: every step's output is written, a rerun
starts afresh even over a stale checkpoint made with other settings, and --resume reuses finished work."""
import torch

from toolkit.cli import main
from toolkit.ir.onnx_import import import_onnx
from toolkit.report import read_report

FAST = ["--n", "16", "--pgd-steps", "2"]


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
    # a rerun with other settings must not trip over the earlier run's checkpoint or reports
    assert main(["demo", "--out-dir", str(out), *FAST, "--reg-d", "0.2"]) == 0
    assert "error" not in capsys.readouterr().err
