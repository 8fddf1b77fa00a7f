"""Regression tests for what a new user broke (issue 15's table): a second writer of the same output refuses
instead of deleting the first one's work; a damaged ``.partial`` is refused, not resumed with made-up rows; a
damaged checkpoint is refused, not trained on."""
from __future__ import annotations

from pathlib import Path

import h5py
import pytest
import torch

from test_certify import tiny_data, tiny_graph
from test_report import KW, Killed
from toolkit.certify import certify
from toolkit.errors import BadDataError, BadInputError
from toolkit.fileio import OutputLock
from toolkit.report import partial_path, read_report

ROOT = Path(__file__).resolve().parents[1]


def _killed_partial(out):
    with pytest.raises(Killed):
        certify(tiny_graph(), tiny_data(), eps=0.1, out=out, after_batch=lambda *a: (_ for _ in ()).throw(Killed()),
                **KW)
    assert partial_path(out).exists()


def test_second_certify_on_the_same_report_refuses_and_deletes_nothing(tmp_path):
    out = tmp_path / "r.h5"
    _killed_partial(out)
    before = partial_path(out).read_bytes()
    with OutputLock(out):  # another process is writing the report
        with pytest.raises(BadInputError, match="in use by another tightcert process"):
            certify(tiny_graph(), tiny_data(), eps=0.1, out=out, **KW)
        assert partial_path(out).read_bytes() == before  # neither removed nor touched
    certify(tiny_graph(), tiny_data(), eps=0.1, out=out, **KW)  # the lock is gone with its holder
    assert read_report(out).finished and not (tmp_path / "r.h5.lock").exists()


def test_lock_is_exclusive_and_released(tmp_path):
    a = OutputLock(tmp_path / "x").acquire()
    with pytest.raises(OSError, match="in use"):
        OutputLock(tmp_path / "x").acquire()
    a.release()
    with OutputLock(tmp_path / "x"):
        pass


@pytest.mark.parametrize("damage", ["n_done past the rows", "negative n_done", "missing array"])
def test_damaged_partial_is_refused(tmp_path, damage):
    out = tmp_path / "r.h5"
    _killed_partial(out)
    with h5py.File(partial_path(out), "a") as f:
        g = f["runs/model_eps0.1"]
        if damage == "n_done past the rows":
            g.attrs["n_done"] = 5
        elif damage == "negative n_done":
            g.attrs["n_done"] = -5
        else:
            del g["pgd_margin"]
    with pytest.raises(BadDataError, match="damaged"):
        certify(tiny_graph(), tiny_data(), eps=0.1, out=out, **KW)


def test_damaged_checkpoint_is_refused(tmp_path):
    from toolkit.train.trainer import load_checked, save_atomic

    path = tmp_path / "last.pt"
    state = {"model": {"w": torch.arange(1000.0)}, "epoch": 3}
    save_atomic(state, path)
    assert torch.equal(load_checked(path)["model"]["w"], state["model"]["w"])
    ck = torch.load(path, weights_only=False)
    blob = bytearray(ck["blob"])
    blob[len(blob) // 2] ^= 0xFF  # one flipped byte inside the weights
    torch.save({"sha256": ck["sha256"], "blob": bytes(blob)}, path)
    with pytest.raises(BadInputError, match="corrupt"):
        load_checked(path)
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(BadInputError, match="unreadable"):
        load_checked(path)


def test_second_training_into_the_same_output_refuses(tmp_path):
    from toolkit.train import train

    out = tmp_path / "m.onnx"
    with OutputLock(out):
        with pytest.raises(BadInputError, match="in use by another tightcert process"):
            train("mlp_2x100", eps=0.1, out=str(out), train_data=str(ROOT / "models" / "mnist_train_2000.npz"),
                  test_data="mnist_test_1000", train_n=8, test_n=4, epochs=1, progress=False)
    assert not (tmp_path / "m.ckpt").exists() and not out.exists()


def test_cli_errors_are_one_line_and_empty_or_repeated_selections_are_refused(tmp_path, capsys):
    from toolkit.cli import main

    model = str(ROOT / "models" / "mnist_mlp_2x100.onnx")
    cases = [(["certify", model, "--eps", "0.1,abc"], "not a comma-separated list"),
             (["frobnicate"], "invalid choice"),
             (["certify", model, "--data", "mnist_test_1000", "--eps", "0.1", "--alpha-iters", "-1"], "must be >= 0"),
             (["certify", model, "--data", "mnist_test_1000", "--eps", "0.1", "--indices", "5:5"], "selection is empty"),
             (["certify", model, "--data", "mnist_test_1000", "--eps", "0.1", "--indices", "3,3,3"],
              "index 3 is selected more than once")]
    for argv, msg in cases:
        out = tmp_path / "r.h5"
        try:  # argparse's errors leave through SystemExit, ours through main's return value
            rc = main(argv + (["--out", str(out)] if argv[0] == "certify" else []))
        except SystemExit as e:
            rc = e.code
        err = capsys.readouterr().err.strip()
        assert rc == 2 and msg in err and len(err.splitlines()) == 1, err
        assert not out.exists() and not partial_path(out).exists()


def test_certify_refuses_a_model_without_one_score_per_class():
    from toolkit.errors import BadModelError
    from toolkit.ir import Graph, Linear, Reshape

    g = Graph.sequential([Linear(torch.randn(10, 4), torch.zeros(10)), Reshape((2, 5))], (4,))
    data = tiny_data()
    data.x = torch.rand(len(data.y), 4)
    with pytest.raises(BadModelError, match="no classification output"):
        certify(g, data, eps=0.1, methods=["ibp"], progress=False)


def test_unwritable_stdout_is_one_line_exit_2():
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "toolkit", "info", str(ROOT / "models" / "mnist_mlp_2x100.onnx")],
                       stdout=open("/dev/full", "w"), stderr=subprocess.PIPE, text=True, cwd=ROOT)
    assert p.returncode == 2 and p.stderr.strip() == "tightcert: error: No space left on device"


@pytest.mark.parametrize("argv,msg", [(["--n", "0"], "--n must be a positive integer"),
                                      (["--eps", "-1"], "--eps must be finite and >= 0"),
                                      (["--reg-r", "nan"], "--reg-r must be finite")])
def test_demo_refuses_bad_settings_before_writing_or_printing(argv, msg, tmp_path, capsys):
    from toolkit.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--out-dir", str(out), *argv]) == 2
    cap = capsys.readouterr()
    assert cap.out == "" and msg in cap.err and not out.exists()
    (tmp_path / "afile").write_text("x")
    assert main(["demo", "--out-dir", str(tmp_path / "afile")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_bounds_checks_its_output_folder_before_computing(tmp_path, capsys, monkeypatch):
    import numpy as np

    from toolkit.bounds import api
    from toolkit.cli import main

    np.save(tmp_path / "x.npy", np.zeros((2, 1, 28, 28), np.float32))
    calls = []
    monkeypatch.setattr(api, "bounds_for_inputs", lambda *a, **k: calls.append(1))
    out = tmp_path / "missing" / "b.npz"
    rc = main(["bounds", str(ROOT / "models" / "mnist_mlp_2x100.onnx"), "--inputs", str(tmp_path / "x.npy"),
               "--eps", "0.1", "--out", str(out)])
    assert rc == 2 and "does not exist" in capsys.readouterr().err and calls == []
