"""python -m study.data: exit codes, one-line errors, no partial output, inspect and split."""

from __future__ import annotations

import subprocess
import sys

import h5py
import numpy as np
import pytest
from test_formats import cube, make_dey, make_hayat, make_pasquet, make_spectra

from study.data.__main__ import main
from study.data.dataset import validate


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_user_error(rc: int, err: str, *words: str) -> None:
    assert rc == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for w in words:
        assert w in err, (w, err)


def test_convert_inspect_split(tmp_path, capsys):
    src = make_pasquet(tmp_path / "ex.npz")
    out = tmp_path / "d.h5"
    rc, stdout, _ = run(capsys, "convert", "--format", "pasquet", src, "--out", out)
    assert rc == 0 and "wrote" in stdout
    rc, stdout, _ = run(capsys, "inspect", out)
    assert rc == 0
    assert "N = 12: train 8, val 1, test 3" in stdout
    assert "zs quantiles" in stdout and "flux table: absent" in stdout
    assert "measured photometry (phot, phot_err): present, finite for 100.0%" in stdout
    assert all(f"    {b} " in stdout for b in "ugriz")
    new = tmp_path / "s.h5"
    rc, _, _ = run(capsys, "split", out, "--data-seed", "5", "--out", new)
    assert rc == 0
    info = validate(new)
    assert info.data_seed == 5
    with h5py.File(out) as a, h5py.File(new) as b:
        assert not np.array_equal(a["split"][:], b["split"][:])
        np.testing.assert_array_equal(a["images"][:], b["images"][:])
        for name in ("phot", "phot_err"):  # the split command carries them over
            assert a[name][:].tobytes() == b[name][:].tobytes()
            assert dict(a[name].attrs) == dict(b[name].attrs)


def test_existing_output_is_never_overwritten(tmp_path, capsys):
    src = make_pasquet(tmp_path / "ex.npz")
    out = tmp_path / "d.h5"
    out.write_bytes(b"precious")
    rc, _, err = run(capsys, "convert", "--format", "pasquet", src, "--out", out)
    assert_user_error(rc, err, str(out), "--force")
    rc, _, err = run(capsys, "split", src, "--data-seed", "1", "--out", out)
    assert_user_error(rc, err, "--force")
    assert out.read_bytes() == b"precious"
    rc, _, _ = run(capsys, "convert", "--format", "pasquet", src, "--out", out, "--force")
    assert rc == 0 and validate(out).n == 12


def _bad_pasquet(path, **kw):
    return make_pasquet(path, **kw)


def _nan_cube():
    data = cube()
    data[4, 0, 0, 0] = np.nan
    return data


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("missing_key", ["'z' is missing"]),
        ("shape", ["'data' has shape (12, 64, 64, 3)"]),
        ("nan", ["'data' has NaN/inf pixels at index 4"]),
        ("redshift", ["redshift (z) is 0.45 at index 3", "outside [0, 0.4]"]),
        ("pickle", ["'labels' is a pickled array", "--allow-pickle"]),
        ("spectra", ["spec.h5", "'specObjID' matches none"]),
        ("corrupt", ["not a readable HDF5 file"]),
    ],
)
def test_bad_input_exit_2_one_line_nothing_left(tmp_path, capsys, kind, words):
    fmt, extra = "pasquet", []
    src = tmp_path / "in.npz"
    if kind == "missing_key":
        np.savez(src, data=cube(), ebv=np.zeros((12, 1)))
    elif kind == "shape":
        make_pasquet(src, data=np.zeros((12, 64, 64, 3), np.float32))
    elif kind == "nan":
        make_pasquet(src, data=_nan_cube())
    elif kind == "redshift":
        z = np.full((12, 1), 0.1)
        z[3] = 0.45
        make_pasquet(src, z=z)
    elif kind == "pickle":
        fmt = "dey"
        make_dey(src)
    elif kind == "spectra":
        fmt, src = "hayat", make_hayat(tmp_path / "in.h5")
        extra = ["--spectra", make_spectra(tmp_path / "spec.h5", [5, 6])]
    elif kind == "corrupt":
        fmt, src = "hayat", make_hayat(tmp_path / "in.h5")
        src.write_bytes(src.read_bytes()[:5000])
    before = sorted(p.name for p in tmp_path.iterdir())
    rc, _, err = run(capsys, "convert", "--format", fmt, src, "--out", tmp_path / "o.h5", *extra)
    assert_user_error(rc, err, str(src) if kind != "spectra" else "spec.h5", *words)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no output, no temporary


def test_inspect_bad_files(tmp_path, capsys):
    rc, _, err = run(capsys, "inspect", tmp_path / "nope.h5")
    assert_user_error(rc, err, "nope.h5", "no such file")
    src = make_pasquet(tmp_path / "ex.npz")
    out = tmp_path / "d.h5"
    assert run(capsys, "convert", "--format", "pasquet", src, "--out", out)[0] == 0
    out.write_bytes(out.read_bytes()[:-200000])
    rc, _, err = run(capsys, "inspect", out)
    assert_user_error(rc, err, str(out))


def test_module_entry_point_exit_code(tmp_path):
    run_ = subprocess.run(
        [sys.executable, "-m", "study.data", "inspect", str(tmp_path / "missing.h5")],
        capture_output=True,
        text=True,
    )
    assert run_.returncode == 2 and run_.stderr.startswith("error: ")


def test_flux_table_command_and_inspect(tmp_path, capsys):
    src = make_pasquet(tmp_path / "ex.npz")
    plain = tmp_path / "d.h5"
    assert run(capsys, "convert", "--format", "pasquet", src, "--out", plain)[0] == 0
    rc, _, err = run(capsys, "flux-table", plain, "--from", "flux")
    assert_user_error(rc, err, "'flux' is unknown", "--from phot")
    out = tmp_path / "t.h5"
    rc, stdout, _ = run(capsys, "flux-table", plain, "--from", "phot", "--out", out)
    assert rc == 0 and "wrote" in stdout
    assert "flux table: absent" in run(capsys, "inspect", plain)[1]
    rc, stdout, _ = run(capsys, "inspect", out)
    assert rc == 0 and "flux table: present (templates, fitted to 'phot')" in stdout
    rc, _, err = run(capsys, "flux-table", out, "--from", "phot")
    assert_user_error(rc, err, "already has a flux_table", "--replace")
