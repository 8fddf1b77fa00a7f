"""Batch mode: ``tightcert verify --instances instances.csv [--out results.csv]`` on a VNN-COMP folder."""
import csv

import pytest

from conftest import SHARED_MODELS, needs_shared
from test_vnnlib_helpers import relu_net, write
from toolkit.cli import main

V1 = ("(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n"
      "(assert (>= X_0 0.0))\n(assert (<= X_0 1.0))\n(assert (>= X_1 0.0))\n(assert (<= X_1 1.0))\n")


@pytest.fixture
def bench(tmp_path):
    """A folder in the VNN-COMP layout: a model, three 1.0 specs, instances.csv (no header), truth.csv."""
    (tmp_path / "onnx").mkdir()
    (tmp_path / "vnnlib").mkdir()
    relu_net(tmp_path / "onnx" / "net.onnx")
    write(tmp_path / "vnnlib" / "hi.vnnlib", V1 + "(assert (>= Y_0 10.0))\n")        # unsat (y <= 1.25)
    write(tmp_path / "vnnlib" / "mid.vnnlib", V1 + "(assert (>= Y_0 1.0))\n")        # sat (x = (1, 0))
    write(tmp_path / "vnnlib" / "bad.vnnlib", V1 + "(assert (>= Y_7 1.0))\n")        # undeclared Y_7
    write(tmp_path / "instances.csv", "onnx/net.onnx,vnnlib/hi.vnnlib,5\nonnx/net.onnx,vnnlib/mid.vnnlib,5.0\n"
                                      "onnx/net.onnx,vnnlib/bad.vnnlib,5\n")
    return tmp_path


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_batch_results_csv(bench, tmp_path, capsys):
    out = tmp_path / "results.csv"
    rc = main(["verify", "--instances", str(bench / "instances.csv"), "--out", str(out), "--timeout", "10"])
    stdout = capsys.readouterr().out
    assert rc == 0
    rows = read_rows(out)
    assert [(r["vnnlib"], r["result"]) for r in rows] == [("vnnlib/hi.vnnlib", "unsat"),
                                                         ("vnnlib/mid.vnnlib", "sat"),
                                                         ("vnnlib/bad.vnnlib", "error")]
    assert all(float(r["time_s"]) < 10 for r in rows)
    assert "decided 2/3" in stdout


def test_batch_flags_contradictions_with_truth(bench, tmp_path, capsys):
    write(bench / "truth.csv", "model,vnnlib,result\nnet.onnx,vnnlib/hi.vnnlib,sat\nnet.onnx,vnnlib/mid.vnnlib,sat\n")
    out = tmp_path / "r.csv"
    rc = main(["verify", "--instances", str(bench / "instances.csv"), "--out", str(out)])
    stdout = capsys.readouterr().out
    assert rc == 1 and "WRONG" in stdout and "1 contradicting truth.csv" in stdout
    assert read_rows(out)[0]["truth"] == "sat"


def test_batch_input_errors(tmp_path, capsys):
    assert main(["verify", "--instances", str(tmp_path / "none.csv")]) == 2
    write(tmp_path / "i.csv", "a.onnx,b.vnnlib\n")
    assert main(["verify", "--instances", str(tmp_path / "i.csv")]) == 2
    assert "expected onnx,vnnlib,timeout" in capsys.readouterr().err
    assert main(["verify", "q.vnnlib", "--instances", str(tmp_path / "i.csv")]) == 2


@needs_shared
@pytest.mark.slow
def test_batch_on_shared_models(tmp_path, capsys):
    """Two real VNN-COMP instances through the IR bound engine: a sat one (PGD) and an unsat one proved by
    CROWN through an in-graph Sub/Div normalisation (real semantics, widened input box)."""
    picks = [("mnist-net_256x2", "vnnlib/prop_1_0.03.vnnlib"),
             ("mnist_relu_9_200", "vnnlib/mnist_spec_idx_8098_eps_0.01500.vnnlib")]
    for model, spec in picks:
        folder = SHARED_MODELS / model
        truth = {r["vnnlib"]: r["result"] for r in read_rows(folder / "truth.csv")}
        inst = tmp_path / model / "instances.csv"
        inst.parent.mkdir()
        write(inst, f"{folder / (model + '.onnx')},{folder / spec},60\n")
        out = tmp_path / f"{model}.csv"
        assert main(["verify", "--instances", str(inst), "--out", str(out), "--timeout", "60"]) == 0
        (row,) = read_rows(out)
        assert row["result"] == truth[spec], capsys.readouterr().err[-2000:]
