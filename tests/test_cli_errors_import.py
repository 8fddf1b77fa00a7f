"""Bad model files: each raises the right error with a clear message, and ``tightcert info`` turns it into
exit status 2 with exactly one line on stderr. Plus ``tightcert info`` on good models (quiet, complete)."""
import subprocess
import sys

import numpy as np
import pytest

import onnx_builders as B
from conftest import ROOT, SHARED_MODELS, needs_shared
from toolkit.cli import main
from toolkit.errors import BadModelError, UnsupportedOpError
from toolkit.ir.onnx_import import import_onnx


def _missing(tmp):
    return tmp / "no_such_model.onnx"


def _random_bytes(tmp):
    p = tmp / "random.onnx"
    p.write_bytes(np.random.default_rng(0).bytes(4096))
    return p


def _truncated(tmp):
    data = B.conv_bn(tmp).read_bytes()
    p = tmp / "truncated.onnx"
    p.write_bytes(data[: len(data) // 2])
    return p


def _empty(tmp):
    p = tmp / "empty.onnx"
    p.write_bytes(b"")
    return p


# (builder, exception type, fragments the message must contain)
CASES = {
    "missing": (_missing, BadModelError, ["not found", "no_such_model.onnx"]),
    "random_bytes": (_random_bytes, BadModelError, ["random.onnx", "not a readable ONNX model"]),
    "truncated": (_truncated, BadModelError, ["truncated.onnx", "truncated or corrupt"]),
    "empty": (_empty, BadModelError, ["empty.onnx", "not an ONNX model"]),
    "unsupported_resize": (B.resize, UnsupportedOpError, ["Resize", "'upsample_1'", "supported: Add"]),
    "nan_weights": (B.nan_weights, BadModelError, ["'fc1.weight'", "NaN"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_model_message_and_exit_status(case, tmp_path, capsys):
    build, exc, fragments = CASES[case]
    path = build(tmp_path)
    with pytest.raises(exc) as info:
        import_onnx(path)
    msg = str(info.value)
    assert "\n" not in msg
    for f in fragments:
        assert f in msg
    capsys.readouterr()
    assert main(["info", str(path)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0] == f"tightcert: error: {msg}"
    assert captured.out == ""


def test_exit_status_through_a_real_process(tmp_path):
    r = subprocess.run([sys.executable, "-m", "toolkit", "info", str(tmp_path / "gone.onnx")], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"tightcert: error: model file not found: {tmp_path / 'gone.onnx'}"]


def test_bad_format_and_bad_mean_are_one_line(tmp_path, capsys):
    path = B.conv_bn(tmp_path)
    assert main(["info", str(path), "--format", "nope"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert main(["info", str(path), "--mean", "0.1,0.2,0.3", "--std", "1,1,1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--mean/--std" in err[0]


def test_info_prints_table_spec_and_parity(tmp_path, capfd):
    path = B.sub_div(tmp_path)
    assert main(["info", str(path), "--format", "plain"]) == 0
    out, err = capfd.readouterr()
    assert err == ""  # no conversion or onnxruntime chatter
    assert "normalisation: in the graph, mean [0.1, 0.2, 0.3], std [0.5, 0.25, 0.2]" in out
    assert "layout NCHW" in out and "shape 3×4×4" in out
    for cell in ("Normalize", "sub_mean+div_std", "Flatten", "Linear", "48→4", "196"):
        assert cell in out
    assert "onnxruntime parity: max |graph - onnxruntime| = " in out


@needs_shared
def test_info_on_shared_model_with_mean_std_is_quiet(capfd):
    model = SHARED_MODELS / "resnet_2b" / "resnet_2b.onnx"
    if not model.exists():
        pytest.skip("resnet_2b not in ../shared/models")
    p = np.load(model.parent / "points.npz")
    mean, std = ",".join(map(str, p["mean"])), ",".join(map(str, p["std"]))
    assert main(["info", str(model), "--mean", mean, "--std", std]) == 0
    out, err = capfd.readouterr()
    assert err == ""
    assert "prepended from --mean/--std" in out and "Add_11" in out and "Conv_10,Relu_7" in out
