"""The VNN-LIB 2.0 command-line interface: exact stdout bytes (golden files), errors, startup cost."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import helper as h

from test_vnnlib_helpers import relu_net, save_model, write
from toolkit.cli import main
from toolkit.vnnlib.capabilities import CAPABILITIES

GOLDEN = Path(__file__).parent / "golden"
ROOT = Path(__file__).resolve().parents[1]


def run_cli(args, capsys):
    """In-process CLI run: (exit status, stdout, stderr)."""
    try:
        rc = main([str(a) for a in args])
    except SystemExit as e:  # argparse usage errors
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def golden(name) -> str:
    return (GOLDEN / name).read_bytes().decode()


# ---------------------------------------------------------------------------------------------------------
# --name, --version, supports
# ---------------------------------------------------------------------------------------------------------
def test_name_and_version_golden(capsys):
    assert run_cli(["--name"], capsys)[:2] == (0, golden("name.txt"))
    assert run_cli(["--version"], capsys)[:2] == (0, golden("version.txt"))


@pytest.mark.parametrize("flag", sorted(CAPABILITIES))
def test_supports_golden(flag, capsys):
    rc, out, err = run_cli(["supports", f"--{flag}"], capsys)
    assert rc == 0 and err == ""
    assert out == golden(f"supports_{flag}.txt")


def test_supports_formats(capsys):
    """The suite's compliance checks: 2 integer lines (opset), 2 major.minor lines, true/false; ops bare."""
    opset = run_cli(["supports", "--onnx-opset-versions"], capsys)[1].splitlines()
    assert len(opset) == 2 and all(v.isdigit() for v in opset) and int(opset[0]) <= 18 <= int(opset[1])
    versions = run_cli(["supports", "--vnnlib-versions"], capsys)[1].splitlines()
    assert versions == ["1.0", "2.0"]
    ops = run_cli(["supports", "--onnx-operators"], capsys)[1].splitlines()
    assert all(" " not in op for op in ops) and "Softmax" in ops
    assert run_cli(["supports", "--serialise-assignments"], capsys)[1] in ("true\n", "false\n")


@pytest.mark.parametrize("args", [["supports"], ["supports", "--onnx-e"], ["supports", "--bogus"],
                                  ["supports", "--onnx-operators", "--vnnlib-versions"]])
def test_supports_usage_errors(args, capsys):
    rc, out, err = run_cli(args, capsys)
    assert rc != 0 and out == "" and err


def test_aliases(capsys):
    assert run_cli(["capabilities", "--vnnlib-versions"], capsys)[1] == "1.0\n2.0\n"
    assert run_cli(["supports", "--multiple-inputs-output-theories"], capsys)[1] == "SIO\nMIO\n"


def test_startup_does_not_import_torch_or_onnx():
    code = ("import sys, io, contextlib\nfrom toolkit.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    main(['--name']); main(['--version']); main(['supports', '--onnx-operators'])\n"
            "heavy = [m for m in ('torch', 'onnx', 'onnxruntime', 'numpy') if m in sys.modules]\n"
            "print(','.join(heavy))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "torch" not in r.stdout and "onnx" not in r.stdout, r.stdout


# ---------------------------------------------------------------------------------------------------------
# verify: the sat block
# ---------------------------------------------------------------------------------------------------------
def two_network_model(tmp_path):
    """A [2,2] -> flatten -> h = A·W (1,2) -> relu -> y = sum (1,)."""
    nodes = [h.make_node("Reshape", ["a", "s"], ["af"]), h.make_node("MatMul", ["af", "w"], ["h"]),
             h.make_node("Relu", ["h"], ["r"]), h.make_node("ReduceSum", ["r"], ["y"], keepdims=0)]
    w = np.array([[1.0, -1.0], [0.5, 0.0], [0.0, 2.0], [-1.0, 0.25]], np.float32)
    return save_model(tmp_path / "f.onnx", nodes, [("a", [2, 2])], [("y", [])],
                      [("s", np.array([1, 4], np.int64)), ("w", w)])


TWO_NETWORKS = """(vnnlib-version <2.0>)
(declare-network f
    (declare-input A float32 [2,2])
    (declare-hidden H float32 [1,2] "h")
    (declare-output Y float32 []))
(declare-network g
    (equal-to f)
    (declare-input C float32 [2,2])
    (declare-hidden H2 float32 [1,2] "h")
    (declare-output Z float32 []))
(assert (and (== A[0,0] 1.0) (== A[0,1] 0.5) (== A[1,0] 0.25) (== A[1,1] -0.5)))
(assert (and (>= C[0,0] 0.0) (<= C[0,0] 0.0) (== C[0,1] 0.0) (== C[1,0] 0.0) (== C[1,1] 0.0)))
(assert (>= Y (+ Z 0.5)))
"""


def test_verify_sat_block_golden(tmp_path, capsys):
    model = two_network_model(tmp_path)
    q = write(tmp_path / "q.vnnlib", TWO_NETWORKS)
    rc, out, err = run_cli(["verify", q, "--network", f"f={model}", "--timeout", "20"], capsys)
    assert rc == 0, err
    assert out == golden("verify_sat_two_networks.txt")


def test_verify_sat_block_v1_golden(tmp_path, capsys):
    """A VNN-LIB 1.0 file with the model given as a bare --network PATH: translated, declared real."""
    model = relu_net(tmp_path / "n.onnx")
    q = write(tmp_path / "p.vnnlib", "; 1.0 style\n(declare-const X_0 Real)\n(declare-const X_1 Real)\n"
                                     "(declare-const Y_0 Real)\n(assert (= X_0 0.5))\n(assert (>= X_1 1e-1))\n"
                                     "(assert (<= X_1 0.2))\n(assert (or (and (>= Y_0 0.5))))\n")
    rc, out, err = run_cli(["verify", q, "--network", model, "--timeout", "20"], capsys)
    assert rc == 0, err
    assert out == golden("verify_sat_v1.txt")


def test_verify_serialise_assignments(tmp_path, capsys):
    import onnx
    from onnx import numpy_helper

    model = two_network_model(tmp_path)
    q = write(tmp_path / "q.vnnlib", TWO_NETWORKS)
    d = tmp_path / "cex"
    rc, out, err = run_cli(["verify", q, "--network", f"f={model}", "--serialise-assignments", d], capsys)
    assert rc == 0 and out == "sat\n", err
    a = numpy_helper.to_array(onnx.load_tensor(str(d / "A.pb")))
    assert a.dtype == np.float32 and a.shape == (2, 2) and a[1, 1] == -0.5
    assert sorted(p.name for p in d.iterdir()) == ["A.pb", "C.pb", "H.pb", "H2.pb", "Y.pb", "Z.pb"]


def test_verify_unsat_and_subprocess_stdout(tmp_path):
    """Through the console entry point: stdout is the verdict line only, logs on stderr."""
    model = relu_net(tmp_path / "n.onnx")
    q = write(tmp_path / "q.vnnlib", "(vnnlib-version <2.0>)\n(declare-network N (declare-input X float32 [1,2])"
                                     " (declare-output Y float32 [1,1]))\n(assert (>= X[0,0] 0.0))\n"
                                     "(assert (<= X[0,0] 1.0))\n(assert (>= X[0,1] 0.0))\n(assert (<= X[0,1] 1.0))\n"
                                     "(assert (>= Y[0,0] 10.0))\n")
    r = subprocess.run([sys.executable, "-m", "toolkit", "verify", str(q), "--network", f"N={model}",
                        "--timeout", "30.0"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "unsat\n"
    assert "unsat" in r.stderr  # the log line


# ---------------------------------------------------------------------------------------------------------
# verify: malformed queries and §5.3.2 errors -> stderr, non-zero exit, nothing on stdout
# ---------------------------------------------------------------------------------------------------------
GOOD = """(vnnlib-version <2.0>)
(declare-network N
    (declare-input X float32 [1,2])
    (declare-output Y float32 [1,1]))
(assert (>= X[0,0] 0.0))
(assert (<= X[0,0] 1.0))
(assert (>= X[0,1] 0.0))
(assert (<= X[0,1] 1.0))
(assert (>= Y[0,0] 0.5))
"""
BAD_QUERIES = {
    "syntax": (GOOD.replace("(assert (>= Y[0,0] 0.5))", "(assert (>= Y[0,0] 0.5)"), "parse"),
    "exponent literal": (GOOD.replace("0.5", "5e-1"), "parse"),
    "unknown variable": (GOOD.replace("Y[0,0] 0.5", "Q[0,0] 0.5"), "parse"),
    "index out of bounds": (GOOD.replace("X[0,1] 1.0", "X[0,2] 1.0"), "parse"),
    "shape mismatch": (GOOD.replace("X float32 [1,2]", "X float32 [1,3]"), "shape"),
    "type mismatch": (GOOD.replace("Y float32", "Y int64").replace("Y[0,0] 0.5", "Y[0,0] 1"), "int64"),
    "unsound type": (GOOD.replace("float32", "float16"), "float16"),
    "unknown type": (GOOD.replace("float32", "Float32"), "element type"),
    "hidden name": (GOOD.replace("(declare-output", '(declare-hidden H float32 [1,2] "nope")\n(declare-output'),
                    "nope"),
}


@pytest.mark.parametrize("case", sorted(BAD_QUERIES))
def test_malformed_query(case, tmp_path, capsys):
    text, needle = BAD_QUERIES[case]
    model = relu_net(tmp_path / "n.onnx")
    q = write(tmp_path / "q.vnnlib", text)
    rc, out, err = run_cli(["verify", q, "--network", f"N={model}", "--timeout", "10"], capsys)
    assert rc != 0 and out == ""
    assert needle.lower() in err.lower() and err.count("\n") == 1, err


@pytest.mark.parametrize("networks,needle", [
    ([], "no model file"),
    (["M={model}"], "does not declare"),
    (["N={model}", "M={model}"], "does not declare"),
    (["N={tmp}/missing.onnx"], "not found"),
    (["{model}", "{model}"], "does not name a network"),
])
def test_network_set_errors(networks, needle, tmp_path, capsys):
    model = relu_net(tmp_path / "n.onnx")
    q = write(tmp_path / "q.vnnlib", GOOD)
    args = ["verify", q]
    for n in networks:
        args += ["--network", n.format(model=model, tmp=tmp_path)]
    rc, out, err = run_cli(args, capsys)
    assert rc != 0 and out == "" and needle in err, err


def test_equal_to_network_takes_no_file(tmp_path, capsys):
    model = two_network_model(tmp_path)
    q = write(tmp_path / "q.vnnlib", TWO_NETWORKS)
    rc, out, err = run_cli(["verify", q, "--network", f"f={model}", "--network", f"g={model}"], capsys)
    assert rc != 0 and out == "" and "equal" in err


def test_other_usage_errors(tmp_path, capsys):
    assert run_cli(["verify"], capsys)[0] != 0
    rc, out, err = run_cli(["verify", tmp_path / "none.vnnlib", "--network", "N=x.onnx"], capsys)
    assert rc != 0 and out == "" and "not found" in err
    rc, out, err = run_cli(["verify", "q.vnnlib", "--timeout", "-3"], capsys)
    assert rc != 0 and out == ""
    rc, out, err = run_cli(["verify", "q.vnnlib", "--out", "r.csv"], capsys)
    assert rc != 0 and out == "" and "--instances" in err


def test_goldens_are_committed():
    """The golden files exist for every capability (a missing file would make a test vacuous)."""
    names = {p.name for p in GOLDEN.iterdir()}
    assert {f"supports_{f}.txt" for f in CAPABILITIES} <= names
    assert {"name.txt", "version.txt", "verify_sat_two_networks.txt", "verify_sat_v1.txt"} <= names
    assert os.path.getsize(GOLDEN / "verify_sat_two_networks.txt") > 50


def test_timeout_is_respected_from_process_start(tmp_path):
    """A query the engines cannot settle (softmax outputs sum to 1: beyond boxes) answers timed-out within
    the timeout, counted from process start, and the process exits at once."""
    import time

    model = save_model(tmp_path / "s.onnx", [h.make_node("Softmax", ["x"], ["y"])], [("x", [2])], [("y", [2])])
    q = write(tmp_path / "q.vnnlib", "(vnnlib-version <2.0>)\n(declare-network N (declare-input X real [2]) "
                                     "(declare-output Y real [2]))\n(assert (and (<= X[0] 10.0) (>= X[0] -10.0)))\n"
                                     "(assert (and (<= X[1] 10.0) (>= X[1] -10.0)))\n"
                                     "(assert (> (+ Y[0] Y[1]) 1.01))\n")
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "toolkit", "verify", str(q), "--network", f"N={model}",
                        "--timeout", "3"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    wall = time.monotonic() - t0
    assert r.returncode == 0 and r.stdout == "timed-out\n", r.stderr
    assert wall < 3.0, wall
