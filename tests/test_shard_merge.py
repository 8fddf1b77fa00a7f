"""certify --shard K/N and tightcert merge: the merged shards equal the unsharded report; bad merges refused."""
import numpy as np
import pytest
import torch

from toolkit.certify import certify
from toolkit.certify.shard import parse_shard, shard_positions
from toolkit.cli import main
from toolkit.data import Dataset
from toolkit.errors import BadInputError
from toolkit.ir import Graph, Linear, ReLU
from toolkit.ir.onnx_export import export_onnx
from toolkit.report import read_report

N, D, K = 23, 12, 4
EPS, METHODS = "0.03", "ibp,fastlin"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A small random ReLU net (ONNX) and data (npz) giving a mix of certified, open and broken samples."""
    tmp = tmp_path_factory.mktemp("shard")
    gen = torch.Generator().manual_seed(3)
    w1, w2 = torch.randn(16, D, generator=gen) * 0.5, torch.randn(K, 16, generator=gen) * 0.5
    g = Graph.sequential([Linear(w1, torch.zeros(16)), ReLU(), Linear(w2, torch.zeros(K))], (D,))
    x = torch.rand(N, D, generator=gen)
    y = g(x).argmax(1)
    y[::5] = (y[::5] + 1) % K  # some misclassified samples
    export_onnx(g, tmp / "net.onnx")
    np.savez(tmp / "data.npz", x=x.numpy(), y=y.numpy(), index=np.arange(100, 100 + N))
    return tmp


def _certify(files, out, *extra):
    args = ["certify", str(files / "net.onnx"), "--data", str(files / "data.npz"), "--eps", EPS, "--method",
            METHODS, "--pgd-steps", "8", "--no-progress", "--out", str(out), *extra]
    assert main(args) == 0


def test_parse_and_positions():
    assert parse_shard("2/3") == (2, 3) and parse_shard((1, 1)) == (1, 1)
    for bad in ("0/2", "3/2", "1/0", "a/b", "1-2"):
        with pytest.raises(BadInputError):
            parse_shard(bad)
    parts = [shard_positions(10, k, 3) for k in (1, 2, 3)]
    assert sorted(np.concatenate(parts).tolist()) == list(range(10))
    assert parts[1].tolist() == [1, 4, 7]


def test_merge_equals_unsharded(files, tmp_path, capsys):
    full = tmp_path / "full.h5"
    _certify(files, full)
    # Different batch sizes per shard: results must not depend on how samples are batched.
    _certify(files, tmp_path / "s2.h5", "--shard", "2/2", "--batch-size", "3")
    _certify(files, tmp_path / "s1.h5", "--shard", "1/2", "--batch-size", "5")
    s1 = read_report(tmp_path / "s1.h5").runs[0]
    assert s1.attrs["shard"] == "1/2" and s1.n_done == 12 and s1.data["index"].tolist() == list(range(100, 123, 2))
    capsys.readouterr()
    assert main(["merge", str(tmp_path / "m.h5"), str(tmp_path / "s2.h5"), str(tmp_path / "s1.h5")]) == 0
    assert "report:" in capsys.readouterr().out
    (a,), (b,) = read_report(full).runs, read_report(tmp_path / "m.h5").runs
    assert a.name == b.name and a.methods == b.methods and b.finished and b.n_done == N
    cert = a.data["certified"]["fastlin"]
    assert 0 < cert.sum() < N and not a.data["pgd_correct"].all()  # the comparison is not trivial
    for col in ("index", "label", "eps", "clean_pred", "clean_correct", "pgd_correct"):
        np.testing.assert_array_equal(a.data[col], b.data[col], err_msg=col)
    np.testing.assert_allclose(a.data["pgd_margin"], b.data["pgd_margin"], rtol=1e-5, atol=1e-6)
    for m in a.methods:
        np.testing.assert_array_equal(a.data["certified"][m], b.data["certified"][m])
        np.testing.assert_array_equal(a.data["bounds_computed"][m], b.data["bounds_computed"][m])
        np.testing.assert_allclose(a.data["margin_lb"][m], b.data["margin_lb"][m], rtol=1e-5, atol=1e-6)
    for key in ("clean_err", "pgd_err", "n", "index_digest", "eps", "seed", "methods"):
        assert a.attrs[key] == b.attrs[key], key
    np.testing.assert_allclose(a.attrs["certified_err"], b.attrs["certified_err"])
    assert "shard" not in b.attrs and np.sum(b.attrs["n_bounds"]) == np.sum(a.attrs["n_bounds"])


def test_merge_refusals(files, tmp_path, capsys):
    _certify(files, tmp_path / "s1.h5", "--shard", "1/2")
    _certify(files, tmp_path / "s2.h5", "--shard", "2/2")
    _certify(files, tmp_path / "s2b.h5", "--shard", "2/2", "--seed", "1")  # other settings
    _certify(files, tmp_path / "t2.h5", "--shard", "2/3")
    _certify(files, tmp_path / "full.h5")
    capsys.readouterr()
    cases = {("s1.h5",): "missing shard(s) 2/2",
             ("s1.h5", "s2b.h5"): "shards differ in seed",
             ("s1.h5", "t2.h5"): "one of 2 shards",
             ("s1.h5", "full.h5"): "is not a shard",
             ("s1.h5", "s1.h5"): "given twice"}
    for shards, msg in cases.items():
        out = tmp_path / "m.h5"
        assert main(["merge", str(out), *(str(tmp_path / s) for s in shards)]) == 2
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1, (shards, err)
        assert not out.exists() and not (tmp_path / "m.h5.partial").exists()
    assert main(["merge", str(tmp_path / "full.h5"), str(tmp_path / "s1.h5"), str(tmp_path / "s2.h5")]) == 2
    assert "already exists" in capsys.readouterr().err


def test_bad_shard_option_fails_fast(files, tmp_path, capsys):
    out = tmp_path / "x.h5"
    for bad in ("3/2", "x"):
        assert main(["certify", str(files / "net.onnx"), "--data", str(files / "data.npz"), "--eps", EPS,
                     "--shard", bad, "--out", str(out)]) == 2
        assert "--shard" in capsys.readouterr().err
    assert main(["certify", str(files / "net.onnx"), "--data", str(files / "data.npz"), "--eps", EPS,
                 "--n", "3", "--shard", "4/5", "--out", str(out)]) == 2
    assert "empty" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "x.h5.partial").exists()


def test_python_api_shard_matches_slice():
    g = Graph.sequential([Linear(torch.eye(3), torch.zeros(3))], (3,))
    x = torch.rand(7, 3, generator=torch.Generator().manual_seed(0))
    ds = Dataset(x, g(x).argmax(1), np.arange(7), "t")
    res = certify(g, ds, 0.01, ["ibp"], shard="3/3", pgd_steps=2)
    assert res.runs[0].data["index"].tolist() == [2, 5] and res.runs[0].attrs["shard_full_n"] == 7
