"""HDF5 report: round trip, resume after a simulated kill, unfinished runs never shown as finished,
``tightcert report`` / ``tightcert plot`` from the file alone."""
import subprocess
import sys

import h5py
import numpy as np
import pytest

from test_certify import cli, tiny_data, tiny_graph
from toolkit.certify import certify
from toolkit.errors import BadDataError, BadInputError
from toolkit.report import format_table, partial_path, read_report

KW = dict(methods=["ibp", "crown-ibp"], pgd_steps=10, batch_size=2, progress=False)


class Killed(Exception):
    pass


def run_data(run):
    """Per-sample arrays of a run, flattened to {name: array} for comparison."""
    flat = {}
    for k, v in run.data.items():
        if isinstance(v, dict):
            flat.update({f"{k}/{m}": a for m, a in v.items()})
        else:
            flat[k] = v
    return flat


def assert_same_runs(a, b):
    assert [r.name for r in a] == [r.name for r in b]
    for ra, rb in zip(a, b):
        da, db = run_data(ra), run_data(rb)
        assert da.keys() == db.keys()
        for k in da:
            np.testing.assert_array_equal(da[k], db[k], err_msg=k)


def test_round_trip_and_layout(tmp_path, capsys):
    out = tmp_path / "r.h5"
    res = certify(tiny_graph(), tiny_data(), eps=[0.1, 0.05], out=out, **KW)
    assert res.out == out and out.exists() and not partial_path(out).exists()
    rep = read_report(out)
    assert rep.finished and [r.name for r in rep.runs] == ["model_eps0.1", "model_eps0.05"]
    assert_same_runs(rep.runs, res.runs)
    assert format_table(rep.runs, "latex") == res.table("latex")
    with h5py.File(out, "r") as f:  # the documented layout
        g = f["runs/model_eps0.1"]
        assert f.attrs["format"] == "tightcert-report" and bool(f.attrs["finished"])
        assert g["margin_lb/crown-ibp"].shape == (6, 2) and g["certified/ibp"].dtype == bool
        assert g["index"][:].tolist() == list(range(10, 16)) and g.attrs["n_done"] == 6
        assert g.attrs["pgd_err"] == pytest.approx(50.0) and list(g.attrs["certified_err"]) == \
            pytest.approx([200 / 3, 50.0])
        for key in ("model_sha256", "seed", "pgd_steps", "pgd_restarts", "device", "tightcert_version",
                    "wall_time", "methods", "eps", "n", "data"):
            assert key in g.attrs, key
    # `tightcert report` re-prints the identical table from the file alone
    rc, text, err = cli(capsys, "report", out, "--format", "github")
    assert rc == 0 and text.strip() == res.table("github").strip()


def test_resume_after_kill_recomputes_nothing_and_matches(tmp_path, capsys):
    out, ref = tmp_path / "r.h5", tmp_path / "ref.h5"
    certify(tiny_graph(), tiny_data(), eps=[0.1, 0.05], out=ref, **KW)

    def kill_after_first_batch(name, n_done):
        raise Killed()

    with pytest.raises(Killed):
        certify(tiny_graph(), tiny_data(), eps=[0.1, 0.05], out=out, after_batch=kill_after_first_batch, **KW)
    assert not out.exists() and partial_path(out).exists()
    part = read_report(partial_path(out))
    assert not part.finished and part.runs[0].n_done == 2 and not part.runs[0].finished
    # an unfinished run is never shown as finished: by name it does not exist, the .partial says so
    with pytest.raises(BadDataError, match="unfinished run is in"):
        read_report(out)
    rc, text, err = cli(capsys, "report", partial_path(out))
    assert rc == 0 and "2/6 (unfinished)" in text and "UNFINISHED" in text

    seen = []
    res = certify(tiny_graph(), tiny_data(), eps=[0.1, 0.05], out=out,
                  after_batch=lambda name, n: seen.append((name, n)), **KW)
    # the first run resumed at sample 2; the second ran whole
    assert seen == [("model_eps0.1", 4), ("model_eps0.1", 6), ("model_eps0.05", 2), ("model_eps0.05", 4),
                    ("model_eps0.05", 6)]
    assert out.exists() and not partial_path(out).exists()
    assert_same_runs(read_report(out).runs, read_report(ref).runs)
    assert read_report(out).runs[0].data["index"].tolist() == list(range(10, 16))  # no duplicate rows
    # once finished, running again computes nothing and leaves the report as it was
    seen.clear()
    certify(tiny_graph(), tiny_data(), eps=[0.1, 0.05], out=out, after_batch=lambda *a: seen.append(a), **KW)
    assert seen == [] and read_report(out).finished


def test_rows_past_n_done_are_dropped_on_resume(tmp_path):
    """A kill between writing a batch's rows and counting them leaves extra rows: they are not results."""
    out = tmp_path / "r.h5"
    with pytest.raises(Killed):
        certify(tiny_graph(), tiny_data(), eps=0.1, out=out, after_batch=lambda *a: (_ for _ in ()).throw(Killed()),
                **KW)
    with h5py.File(partial_path(out), "a") as f:
        g = f["runs/model_eps0.1"]
        for name in ("index", "label"):
            g[name].resize(3, axis=0)
            g[name][2] = 999
    assert read_report(partial_path(out)).runs[0].data["index"].tolist() == [10, 11]
    certify(tiny_graph(), tiny_data(), eps=0.1, out=out, **KW)
    assert read_report(out).runs[0].data["index"].tolist() == list(range(10, 16))


def test_resume_with_other_settings_is_refused(tmp_path):
    out = tmp_path / "r.h5"
    certify(tiny_graph(), tiny_data(), eps=0.1, out=out, **KW)
    with pytest.raises(BadInputError, match="seed"):
        certify(tiny_graph(), tiny_data(), eps=0.1, out=out, **dict(KW, seed=5))
    # a new ε is a new run added to the same file
    certify(tiny_graph(), tiny_data(), eps=0.2, out=out, **KW)
    assert [r.name for r in read_report(out).runs] == ["model_eps0.1", "model_eps0.2"]


def test_resume_with_another_batch_size_is_refused_until_finished(tmp_path):
    """A .partial resumes only with its own batch size (bounds depend on the batch); a finished run is only
    read, so another batch size may add runs beside it."""
    out = tmp_path / "r.h5"
    with pytest.raises(Killed):
        certify(tiny_graph(), tiny_data(), eps=0.1, out=out, after_batch=lambda *a: (_ for _ in ()).throw(Killed()),
                **KW)
    with pytest.raises(BadInputError, match="batch_size"):
        certify(tiny_graph(), tiny_data(), eps=0.1, out=out, **dict(KW, batch_size=KW["batch_size"] + 1))
    certify(tiny_graph(), tiny_data(), eps=0.1, out=out, **KW)
    certify(tiny_graph(), tiny_data(), eps=[0.1, 0.2], out=out, **dict(KW, batch_size=KW["batch_size"] + 1))
    assert [r.name for r in read_report(out).runs] == ["model_eps0.1", "model_eps0.2"]


def test_plot_writes_pngs(tmp_path, capsys):
    out = tmp_path / "r.h5"
    certify(tiny_graph(), tiny_data(), eps=[0.0, 0.1, 0.2], out=out, **KW)
    rc, text, err = cli(capsys, "plot", out, "--out-dir", tmp_path / "plots")
    assert rc == 0, err
    pngs = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert pngs == ["accuracy_vs_eps.png", "margin_lb_model_eps0.1.png", "margin_lb_model_eps0.2.png",
                    "margin_lb_model_eps0.png"]
    for p in (tmp_path / "plots").iterdir():
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000


def test_report_bad_files(tmp_path, capsys):
    (tmp_path / "x.h5").write_bytes(b"not hdf5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["a"] = 1
    for path, msg in ((tmp_path / "missing.h5", "does not exist"), (tmp_path / "x.h5", "not a readable HDF5"),
                      (tmp_path / "other.h5", "not a tightcert report")):
        rc, out, err = cli(capsys, "report", path)
        assert rc == 2 and msg in err and len(err.strip().splitlines()) == 1
    rc, out, err = cli(capsys, "report", tmp_path / "x.h5", "--format", "nope")
    assert rc == 2 and "unknown table format" in err


def test_report_and_plot_do_not_import_the_engine(tmp_path):
    out = tmp_path / "r.h5"
    certify(tiny_graph(), tiny_data(), eps=0.1, out=out, **KW)
    code = ("import sys; from toolkit.cli import main; rc = main(['report', sys.argv[1]]); "
            "rc |= main(['plot', sys.argv[1], '--out-dir', sys.argv[2]]); "
            "bad = [m for m in sys.modules if m.startswith(('toolkit.bounds', 'toolkit.train'))]; "
            "assert not bad, bad; sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code, str(out), str(tmp_path / "p")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
