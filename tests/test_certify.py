"""certify: a tiny model with exact known answers, the cascade, the consistency check, bad inputs → exit 2
with no file left, and the shared VNN-COMP models (no `sat` sample is ever certified)."""
import numpy as np
import pytest
import torch

from conftest import needs_shared, shared_model_dirs
from toolkit.certify import certify, certify_model, order_methods
from toolkit.cli import main
from toolkit.data import Dataset
from toolkit.errors import BadInputError, SoundnessError
from toolkit.ir import Graph, Linear, ReLU
from toolkit.report import table_rows

# Tiny net on [0,1]^2 with two classes: f0 = relu(x1+1) - relu(x1+0.5) + relu(x2) - 0.75, f1 = 0.
# On the box every ReLU is stably active, so the margin f0 - f1 = x2 - 0.25 and its exact minimum over
# the ε-ball ∩ [0,1]^2 is max(x2 - ε, 0) - 0.25. CROWN-IBP (stable ReLUs → exact backward pass) finds it;
# IBP loses the width of x1's interval: lb = exact - (hi1 - lo1).
W1 = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
B1 = torch.tensor([1.0, 0.5, 0.0])
W2 = torch.tensor([[1.0, -1.0, 1.0], [0.0, 0.0, 0.0]])
B2 = torch.tensor([-0.75, 0.0])
X = torch.tensor([[0.5, 0.9], [0.5, 0.45], [0.5, 0.3], [0.5, 0.1], [0.5, 0.9], [0.95, 0.98]])
Y = torch.tensor([0, 0, 0, 0, 1, 0])
# at ε = 0.1: s0 ibp-certified; s1 only crown-ibp (exact 0.1, ibp -0.1); s2 clean-correct but broken
# (exact -0.05); s3, s4 misclassified; s5 clipped at 1, ibp-certified (exact 0.63, ibp 0.48)
IBP_LB = torch.tensor([0.35, -0.10, -0.25, -0.45, 0.0, 0.48])  # s3: x2 clipped at 0


def tiny_graph():
    return Graph.sequential([Linear(W1, B1), ReLU(), Linear(W2, B2)], (2,))


def tiny_data(x=X, y=Y, **kw):
    return Dataset(x.clone(), y.clone(), np.arange(10, 10 + len(y)), "tiny", **kw)


def test_order_methods_cheapest_first_and_refusals():
    assert order_methods("alpha-crown,ibp,crown,crown-ibp,fastlin") == \
        ["ibp", "crown-ibp", "fastlin", "crown", "alpha-crown"]
    with pytest.raises(BadInputError, match="probabilistic"):
        order_methods(["crown", "cp-proj"])
    with pytest.raises(BadInputError, match="unknown method 'deeppoly'"):
        order_methods(["deeppoly"])


def test_tiny_model_known_answers():
    res = certify(tiny_graph(), tiny_data(), eps=[0.1, 0.0], methods=["crown-ibp", "ibp"], pgd_steps=30)
    r01, r0 = res.runs
    d = r01.data
    assert r01.methods == ["ibp", "crown-ibp"]
    assert d["clean_correct"].tolist() == [True, True, True, False, False, True]
    assert d["pgd_correct"].tolist() == [True, True, False, False, False, True]
    assert d["pgd_margin"][2] < 0 and d["pgd_margin"][1] == pytest.approx(0.10, abs=1e-5)
    # ibp runs on every sample (the consistency check); crown-ibp only where still open: s1
    assert d["bounds_computed"]["ibp"].all()
    assert d["bounds_computed"]["crown-ibp"].tolist() == [False, True, False, False, False, False]
    assert d["certified"]["ibp"].tolist() == [True, False, False, False, False, True]
    assert d["certified"]["crown-ibp"].tolist() == [True, True, False, False, False, True]
    lb_ibp = d["margin_lb"]["ibp"][np.arange(6), 1 - Y.numpy()]
    np.testing.assert_allclose(lb_ibp[[0, 1, 2, 3, 5]], IBP_LB[[0, 1, 2, 3, 5]].numpy(), atol=1e-5)
    assert d["margin_lb"]["crown-ibp"][1, 1] == pytest.approx(0.10, abs=1e-5)
    assert np.isnan(d["margin_lb"]["crown-ibp"][0]).all()  # not computed: certified by ibp already
    assert (d["margin_lb"]["ibp"][np.arange(6), Y.numpy()] == 0).all()
    rows = {row[2]: row for row in table_rows([r01])}
    assert rows["ibp"][4:8] == ["33.33", "50.00", "66.67", "6"]
    assert rows["crown-ibp"][4:8] == ["33.33", "50.00", "50.00", "1"]
    # ε = 0: the ball is the point; the bound is exact for both methods
    assert r0.data["certified"]["crown-ibp"].tolist() == [True, True, True, False, False, True]
    assert r0.data["pgd_correct"].tolist() == [True, True, True, False, False, True]


def test_per_sample_box_replaces_eps_and_clip():
    lo, hi = X - 0.1, X + 0.1  # unclipped: s5's box leaves [0,1]; the box is the query as given
    res = certify(tiny_graph(), tiny_data(lo=lo, hi=hi), eps=0.3, methods=["crown-ibp"], pgd_steps=20)
    assert res.notes and "replaces" in res.notes[0]
    run, = res.runs
    assert run.attrs["input_set"] == "box" and np.isnan(run.data["eps"]).all()
    assert run.data["margin_lb"]["crown-ibp"][5, 1] == pytest.approx(0.98 - 0.1 - 0.25, abs=1e-5)


class UnsoundIBP:
    """Wraps the real engine and adds 1 to every IBP bound: the certifier must notice."""

    def __init__(self, real):
        self.real = real

    def __call__(self, graph, inp, labels, method, **kw):
        lb = self.real(graph, inp, labels, method, **kw)
        return lb + 1.0 if method == "ibp" else lb


def test_unsound_bounds_stop_the_run_naming_the_sample(monkeypatch, tmp_path):
    import toolkit.bounds

    monkeypatch.setattr(toolkit.bounds, "margin_lower_bound", UnsoundIBP(toolkit.bounds.margin_lower_bound))
    with pytest.raises(SoundnessError, match=r"sample 1[0-5]\b"):
        certify(tiny_graph(), tiny_data(), eps=0.1, methods=["ibp"], pgd_steps=10, out=tmp_path / "r.h5")
    assert not (tmp_path / "r.h5").exists()  # an interrupted run is never shown as finished


def test_certified_but_broken_is_a_soundness_error(monkeypatch):
    import toolkit.bounds

    def certify_everything(graph, inp, labels, method, **kw):
        lb = torch.full((len(labels), 2), 1e-3)
        return lb.scatter(1, labels[:, None], 0.0)

    monkeypatch.setattr(toolkit.bounds, "margin_lower_bound", certify_everything)
    monkeypatch.setattr("toolkit.certify.core.SOUND_ATOL", 10.0)  # let it past the per-spec check
    with pytest.raises(SoundnessError, match="sample 12 is certified by ibp but PGD breaks it"):
        certify(tiny_graph(), tiny_data(), eps=0.1, methods=["ibp"], pgd_steps=10)


def test_borderline_float32_certificates_are_rechecked_in_float64(monkeypatch):
    """A float32 margin bound of +1e-6 is within rounding of 0: it counts only if float64 agrees. The fake
    float32 engine 'certifies' everything by a hair; the float64 re-check (the real engine) keeps exactly
    the real certificates, so no sample ends up certified-but-broken."""
    import toolkit.bounds

    real = toolkit.bounds.margin_lower_bound

    def hair_above_zero_in_float32(graph, inp, labels, method, **kw):
        if inp.lo.dtype == torch.float64:
            return real(graph, inp, labels, method, **kw)
        return torch.full((len(labels), 2), 1e-6).scatter(1, labels[:, None], 0.0)

    monkeypatch.setattr(toolkit.bounds, "margin_lower_bound", hair_above_zero_in_float32)
    res = certify(tiny_graph(), tiny_data(), eps=0.1, methods=["ibp"], pgd_steps=10)
    assert res.runs[0].data["certified"]["ibp"].tolist() == [True, False, False, False, False, True]


def test_borderline_rule():
    from toolkit.bounds.precision import borderline

    lb = torch.tensor([[0.0, 1e-5], [0.0, 0.5], [0.0, -1e-6]])
    logits = torch.tensor([[2.0, 1.0], [2.0, 1.0], [2.0, 1.0]])
    assert borderline(lb, torch.tensor([0, 0, 0]), logits).tolist() == [True, False, False]


# -- the command line ------------------------------------------------------------------------------

def write_tiny_onnx(path, in_dim=2):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(a.numpy(), n) for a, n in ((W1, "W1"), (B1, "B1"), (W2, "W2"), (B2, "B2"))]
    nodes = [helper.make_node("Gemm", ["x", "W1", "B1"], ["h"], transB=1, name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "W2", "B2"], ["y"], transB=1, name="fc2")]
    g = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", in_dim])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


@pytest.fixture
def tiny_files(tmp_path):
    model = write_tiny_onnx(tmp_path / "tiny.onnx")
    data = tmp_path / "tiny.npz"
    np.savez(data, x=X.numpy(), y=Y.numpy())
    return tmp_path, str(model), str(data)


def cli(capsys, *argv):
    rc = main(list(map(str, argv)))
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_certify_tiny_model(tiny_files, capsys):
    tmp, model, data = tiny_files
    rc, out, err = cli(capsys, "certify", model, "--data", data, "--eps", "0.1", "--method", "crown-ibp,ibp",
                       "--pgd-steps", "20", "--out", tmp / "r.h5", "--format", "plain")
    assert rc == 0, err
    assert (tmp / "r.h5").exists() and not (tmp / "r.h5.partial").exists()
    lines = [ln.split() for ln in out.splitlines()]
    assert ["tiny", "0.1", "crown-ibp", "6", "33.33", "50.00", "50.00", "1"] == lines[2][:8]


BAD = {
    "negative eps": (["--eps=-0.1"], "epsilon"),
    "NaN eps": (["--eps", "nan"], "epsilon"),
    "eps > 1 with clipping": (["--eps", "2"], "wider than the valid input range"),
    "unknown method": (["--eps", "0.1", "--method", "crown,deeppoly"], "unknown method"),
    "probabilistic method": (["--eps", "0.1", "--method", "cp-proj"], "probabilistic"),
    "unknown device": (["--eps", "0.1", "--device", "tpu9"], "device"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_cli_bad_arguments_exit_2_no_file(case, tiny_files, capsys):
    tmp, model, data = tiny_files
    extra, msg = BAD[case]
    rc, out, err = cli(capsys, "certify", model, "--data", data, "--pgd-steps", "2", "--out", tmp / "r.h5", *extra)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and msg in err, err
    assert not list(tmp.glob("r.h5*"))


def test_cli_bad_data_and_out_exit_2_no_file(tiny_files, capsys):
    tmp, model, data = tiny_files
    np.savez(tmp / "labels.npz", x=X.numpy(), y=np.array([0, 1, 2, 0, 1, 0]))
    np.savez(tmp / "shape.npz", x=np.zeros((6, 3), np.float32), y=Y.numpy())
    (tmp / "afile").write_text("not a folder")
    cases = [(["--data", tmp / "labels.npz", "--out", tmp / "r.h5"], "label 2 of sample 2 is out of range"),
             (["--data", tmp / "shape.npz", "--out", tmp / "r.h5"], "shape (3,) but the model expects (2,)"),
             (["--data", data, "--out", tmp / "nowhere" / "r.h5"], "does not exist"),
             (["--data", data, "--out", tmp / "afile" / "r.h5"], "does not exist"),
             (["--data", data, "--out", tmp], "is a directory")]
    for args, msg in cases:
        rc, out, err = cli(capsys, "certify", model, "--eps", "0.1", "--pgd-steps", "2", *args)
        assert rc == 2 and len(err.strip().splitlines()) == 1 and msg in err, (args, err)
        assert not list(tmp.glob("r.h5*")) and not (tmp / "nowhere").exists()


def test_existing_non_report_out_is_refused(tiny_files, capsys):
    tmp, model, data = tiny_files
    (tmp / "r.h5").write_text("precious")
    rc, out, err = cli(capsys, "certify", model, "--data", data, "--eps", "0.1", "--out", tmp / "r.h5")
    assert rc == 2 and "not" in err and (tmp / "r.h5").read_text() == "precious"
    assert not (tmp / "r.h5.partial").exists()


# -- the shared VNN-COMP models --------------------------------------------------------------------

@needs_shared
@pytest.mark.parametrize("model_dir", shared_model_dirs(), ids=lambda p: p.name)
def test_shared_models_never_certify_sat(model_dir):
    """points.npz holds each spec's exact box in the model's own input space (normalised where the
    normalisation lives outside the graph), so the model is imported as is, without --mean/--std."""
    pts = np.load(model_dir / "points.npz")
    onnx_file = next(model_dir.glob("*.onnx"))
    truth = pts["truth"].astype(str)
    mlp = "Conv" not in (model_dir / "info.json").read_text()
    # CROWN only where it is cheap (no conv) and a sat spec can catch it: keeps make test fast
    methods = ["ibp", "crown-ibp"] + (["crown"] if mlp and (truth == "sat").any() else [])
    res = certify_model(onnx_file, str(model_dir / "points.npz"), None, methods, pgd_steps=20 if mlp else 10,
                        batch_size=16)
    run, = res.runs
    assert run.data["clean_correct"].all()  # every staged centre is classified as its label
    for m in methods:
        cert = run.data["certified"][m]
        assert not (cert & (truth == "sat")).any(), f"{m} certified a sat spec"
    assert not (~run.data["pgd_correct"] & (truth == "unsat")).any(), "PGD broke an unsat spec"


# -- tightcert bounds (issue 4, item 5) -------------------------------------------------------------

def test_cli_bounds_writes_margins_logits_and_certificates(tiny_files, capsys):
    tmp, model, _ = tiny_files
    np.save(tmp / "x.npy", X.numpy())
    np.save(tmp / "y.npy", Y.numpy())
    rc, out, err = cli(capsys, "bounds", model, "--inputs", tmp / "x.npy", "--labels", tmp / "y.npy",
                       "--eps", "0.1", "--method", "crown-ibp", "--out", tmp / "b.npz")
    assert rc == 0, err
    with np.load(tmp / "b.npz") as z:
        b = dict(z)
    assert set(b) == {"margin_lb", "logit_lb", "logit_ub", "certified", "labels"}
    # stable ReLUs: crown-ibp is exact, lb of f_y - f_j = max(x2 - 0.1, 0) - 0.25 for y = 0 (negated for y = 1)
    assert b["certified"].tolist() == [True, True, False, False, False, True]
    assert b["margin_lb"][1, 1] == pytest.approx(0.10, abs=1e-5)
    assert (b["margin_lb"][np.arange(6), Y.numpy()] == 0).all()
    logits = tiny_graph()(X).detach().numpy()
    assert (b["logit_lb"] <= logits + 1e-6).all() and (logits <= b["logit_ub"] + 1e-6).all()
    # labels default to the clean predictions: then misclassified s3, s4 become "correct"
    rc, out, err = cli(capsys, "bounds", model, "--inputs", tmp / "x.npy", "--eps", "0", "--method", "ibp",
                       "--out", tmp / "b0.npz")
    assert rc == 0, err
    with np.load(tmp / "b0.npz") as z:
        assert z["labels"].tolist() == [0, 0, 0, 1, 0, 0]


BAD_BOUNDS = {
    "negative eps": (["--eps=-0.1"], "eps"),
    "unknown method": (["--eps", "0.1", "--method", "deeppoly"], "unknown bound method"),
    "wrong shape": (["--eps", "0.1", "--inputs", "x3.npy"], "shape"),
    "missing inputs": (["--eps", "0.1", "--inputs", "nope.npy"], "nope.npy"),
}


@pytest.mark.parametrize("case", sorted(BAD_BOUNDS))
def test_cli_bounds_bad_input_exit_2_no_file(case, tiny_files, capsys, monkeypatch):
    tmp, model, _ = tiny_files
    monkeypatch.chdir(tmp)
    np.save(tmp / "x.npy", X.numpy())
    np.save(tmp / "x3.npy", np.zeros((2, 3), np.float32))
    extra, msg = BAD_BOUNDS[case]
    args = ["bounds", model, "--inputs", "x.npy", "--out", tmp / "b.npz"]
    if "--inputs" in extra:
        args = args[:2] + args[4:]
    rc, out, err = cli(capsys, *args, *extra)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and msg in err, err
    assert not list(tmp.glob("b.npz*")) and not list(tmp.glob(".b.npz*"))
