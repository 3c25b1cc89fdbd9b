"""Converters: round trips on small files made in each public layout, and bounded memory."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

from study.data import aperture
from study.data.dataset import validate
from study.data.formats import convert, hayat_ebv
from study.data.layout import EXTINCTION_R, EXTINCTION_R_SFD98
from study.data.photometry import flux_table
from study.errors import UserError

N = 12
EXTINCTION_R_DR12 = np.array([5.155, 3.793, 2.751, 2.086, 1.479])  # SFD98, SDSS DR12 (by hand)


def cube(n: int = N, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 64, 64, 5)).astype(np.float32)


def labels(n: int = N, pickled: bool = True) -> np.ndarray:
    rng = np.random.default_rng(1)
    fields = [("z", "f8"), ("EBV", "f4"), ("specObjID", "u8"), ("ra", "f8"), ("dec", "f8")]
    fields += [(f"dered_petro_{b}", "f4") for b in "ugriz"]
    fields += [("class", "O")] if pickled else []  # an object column makes numpy pickle it
    rec = np.zeros(n, fields)
    rec["z"] = rng.uniform(0.01, 0.39, n)
    rec["EBV"] = rng.uniform(0.0, 0.1, n)
    rec["specObjID"] = 2_947_691_243_863_304_192 + np.arange(n, dtype=np.uint64) * 7
    for b in "ugriz":
        rec[f"dered_petro_{b}"] = rng.uniform(15, 18, n)
    if pickled:
        rec["class"] = "GALAXY"
    return rec.view(np.recarray)


def make_dey(path, n=N, pickled=True):
    np.savez_compressed(path, cube=cube(n), labels=labels(n, pickled))
    return path


def make_pasquet(path, n=N, **override):
    arrays = {"data": cube(n), "z": labels(n)["z"][:, None], "ebv": labels(n)["EBV"][:, None]}
    np.savez(path, **(arrays | override))
    return path


def make_hayat(path, n=N, images=None):
    rng = np.random.default_rng(2)
    with h5py.File(path, "w") as f:
        f["images"] = (
            rng.normal(size=(n, 5, 107, 107)).astype(np.float32) if images is None else images
        )
        f["specz_redshift"] = labels(n)["z"]
        # DR12's A_b, made with the SFD98 coefficients (as Hayat et al.'s files are)
        f["e_bv"] = labels(n)["EBV"].astype(np.float64)[:, None] * EXTINCTION_R_DR12
        f["specObjID"] = labels(n)["specObjID"]
        f["ra"], f["dec"] = rng.uniform(0, 360, n), rng.uniform(-10, 60, n)
    return path


def make_spectra(path, ids):
    wave = np.arange(3800.0, 9200.0, 2.0)
    rng = np.random.default_rng(3)
    with h5py.File(path, "w") as f:
        f["specObjID"] = np.asarray(ids)
        f["wave"] = wave
        f["flux"] = 1 + 0.3 * np.sin(wave / rng.uniform(50, 500, (len(ids), 1)))
    return path


def test_dey_round_trip_with_spectra(tmp_path):
    src = make_dey(tmp_path / "sdss.npz")
    ids = labels()["specObjID"]
    spectra = make_spectra(tmp_path / "spec.h5", ids[::2][::-1])  # half the galaxies, shuffled
    out = convert("dey", src, tmp_path / "d.h5", spectra=spectra, allow_pickle=True, chunk=5,
                  progress=False)  # fmt: skip
    info = validate(out)
    assert info.n == N and info.source == "dey" and info.has_flux_table
    lab = labels()
    with h5py.File(out) as f:
        np.testing.assert_array_equal(f["images"][:], cube().transpose(0, 3, 1, 2))
        np.testing.assert_array_equal(f["zs"][:], lab["z"])
        np.testing.assert_array_equal(f["ebv"][:], lab["EBV"])
        np.testing.assert_array_equal(f["id"][:], lab["specObjID"].astype(np.int64))
        # SDSS asinh magnitudes (Lupton et al. 1999): m = -(2.5 / ln 10) (asinh(f / 2b) + ln b),
        # softening b of SDSS's ugriz (EDR paper), reddened back with the SF11 R E(B-V)
        soft = np.array([1.4e-10, 0.9e-10, 1.2e-10, 1.8e-10, 7.4e-10])
        mag = np.stack([lab[f"dered_petro_{b}"] for b in "ugriz"], 1).astype(np.float64)
        maggies = 2 * soft * np.sinh(-0.4 * np.log(10) * mag - np.log(soft))
        want = 1e9 * maggies * 10 ** (-0.4 * EXTINCTION_R * lab["EBV"][:, None])
        np.testing.assert_allclose(f["flux"][:], want, rtol=2e-6)
        assert info.flux_table_source == "spectra" and info.flux_table_fit_from is None
        table = f["flux_table"][:]
        # measured in chunks of 5 with no gain (real cutouts carry none): background-limited
        want = aperture.measure(cube().transpose(0, 3, 1, 2), gain=None)
        np.testing.assert_array_equal(f["phot"][:], want[0])
        np.testing.assert_array_equal(f["phot_err"][:], want[1])
        assert dict(f["phot"].attrs) == aperture.PHOT_ATTRS
        with h5py.File(spectra) as s:
            wave, flux = s["wave"][:], s["flux"][:][::-1]  # back in catalogue order
    centers = np.linspace(0, 0.4, 181)[:-1] + 0.4 / 360
    np.testing.assert_allclose(
        table[::2], flux_table(wave, flux, lab["z"][::2], centers), rtol=1e-6
    )
    assert np.isnan(table[1::2]).all()


def test_dey_refuses_pickle_without_flag(tmp_path):
    src = make_dey(tmp_path / "sdss.npz")
    with pytest.raises(UserError, match=r"'labels' is a pickled array.*--allow-pickle"):
        convert("dey", src, tmp_path / "d.h5", progress=False)
    plain = make_dey(
        tmp_path / "plain.npz", pickled=False
    )  # a numeric record array needs no pickle
    validate(convert("dey", plain, tmp_path / "e.h5", progress=False))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.h5", "plain.npz", "sdss.npz"]


def test_pasquet_round_trip_and_split_seed(tmp_path):
    src = make_pasquet(tmp_path / "ex.npz")
    a = convert("pasquet", src, tmp_path / "a.h5", chunk=5, progress=False)
    b = convert("pasquet", src, tmp_path / "b.h5", data_seed=3, chunk=7, progress=False)
    with h5py.File(a) as fa, h5py.File(b) as fb:
        np.testing.assert_array_equal(fa["images"][:], cube().transpose(0, 3, 1, 2))
        np.testing.assert_array_equal(fa["id"][:], np.arange(N))
        assert np.isnan(fa["flux"][:]).all()
        assert np.bincount(fa["split"][:]).tolist() == [8, 1, 3]
        assert not np.array_equal(fa["split"][:], fb["split"][:])
        for name in aperture.MEASURED:  # chunks of 5 and of 7: the same bits
            assert fa[name][:].tobytes() == fb[name][:].tobytes(), name
    h5 = tmp_path / "ex.h5"  # the same layout as HDF5
    with h5py.File(h5, "w") as f:
        f["data"], f["z"], f["ebv"] = cube(), labels()["z"][:, None], labels()["EBV"][:, None]
    c = convert("pasquet", h5, tmp_path / "c.h5", progress=False, chunk=5)
    assert validate(c).content_hash == validate(a).content_hash


def test_hayat_round_trip_crop_and_extinction(tmp_path):
    src = make_hayat(tmp_path / "hayat.h5")
    out = convert("hayat", src, tmp_path / "h.h5", image_dtype="float16", progress=False)
    validate(out)
    with h5py.File(src) as s, h5py.File(out) as f:
        centre = s["images"][:, :, 21:85, 21:85]
        np.testing.assert_array_equal(f["images"][:], centre.astype(np.float16))
        assert f["images"][0, 0, 32, 32] == np.float16(s["images"][0, 0, 53, 53])  # centre pixel
        np.testing.assert_allclose(f["ebv"][:], labels()["EBV"], rtol=1e-6)
        phot, err = aperture.measure(f["images"][:])  # the stored float16 pixels
        np.testing.assert_array_equal(f["phot"][:], phot)
        np.testing.assert_array_equal(f["phot_err"][:], err)


@pytest.mark.parametrize(
    ("make", "fmt", "match"),
    [
        (lambda p: make_pasquet(p, ebv=None) and _drop(p, "ebv"), "pasquet", r"key 'ebv' is missing"),
        (lambda p: make_pasquet(p, data=np.zeros((N, 32, 32, 5), np.float32)), "pasquet",
         r"key 'data' has shape \(12, 32, 32, 5\), expected \(N, 64, 64, 5\)"),
        (lambda p: make_pasquet(p, z=np.full((N, 1), 0.5)), "pasquet", r"redshift \(z\) is 0.5 at index 0"),
        (lambda p: make_pasquet(p, ebv=-np.ones((N, 1))), "pasquet", r"E\(B-V\) is -1.0 at index 0"),
    ],
)  # fmt: skip
def test_bad_inputs_raise_before_writing(tmp_path, make, fmt, match):
    src = make(tmp_path / "in.npz")
    with pytest.raises(UserError, match=match) as e:
        convert(fmt, src, tmp_path / "out.h5", progress=False)
    assert str(tmp_path / "in.npz") in str(e.value)
    assert [p.name for p in tmp_path.iterdir()] == ["in.npz"]


def _drop(path, key):
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files if k != key}
    np.savez(path, **arrays)
    return path


def test_nan_pixel_aborts_and_leaves_nothing(tmp_path):
    data = cube()
    data[9, 10, 10, 2] = np.nan
    src = make_pasquet(tmp_path / "in.npz", data=data)
    with pytest.raises(UserError, match=r"'data' has NaN/inf pixels at index 9"):
        convert("pasquet", src, tmp_path / "out.h5", chunk=4, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["in.npz"]


def test_spectra_matching_nothing_and_corrupt_hdf5(tmp_path):
    src = make_hayat(tmp_path / "hayat.h5")
    spectra = make_spectra(tmp_path / "spec.h5", [1, 2, 3])
    with pytest.raises(UserError, match=r"spec.h5: key 'specObjID' matches none of the 12"):
        convert("hayat", src, tmp_path / "out.h5", spectra=spectra, progress=False)
    data = src.read_bytes()
    src.write_bytes(data[: len(data) // 3])
    with pytest.raises(UserError, match=r"hayat.h5: not a readable HDF5 file"):
        convert("hayat", src, tmp_path / "out.h5", progress=False)
    assert not (tmp_path / "out.h5").exists()


@pytest.mark.slow
def test_conversion_memory_is_bounded(tmp_path):
    n = 1500  # a 123 MB cube; the conversion may grow the process by far less than that
    np.savez(tmp_path / "big.npz", data=np.ones((n, 64, 64, 5), np.float32),
             z=np.full((n, 1), 0.1), ebv=np.zeros((n, 1)))  # fmt: skip
    script = textwrap.dedent(f"""
        import resource
        from study.data.formats import convert
        import study.data.photometry, tqdm, h5py
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        convert("pasquet", r"{tmp_path / "big.npz"}", r"{tmp_path / "out.h5"}", chunk=64,
                progress=False)
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    growth_mb = float(run.stdout.strip())
    assert growth_mb < 60, f"peak RSS grew by {growth_mb:.0f} MB converting a 123 MB cube"


def test_hayat_ebv_is_read_with_the_coefficients_the_file_was_made_with():
    """Hand computation of Hayat et al.'s reading: A_b / R_b^SFD98 averaged over the bands."""
    ebv = np.array([0.02, 0.05, 0.1])
    a_b = ebv[:, None] * EXTINCTION_R_DR12  # what DR12 stores as `extinction_b`
    a_b[1] *= [1.01, 0.99, 1.0, 1.02, 0.98]  # rounding-like scatter: the mean of the ratios
    want = np.array([0.02, np.mean(0.05 * np.array([1.01, 0.99, 1.0, 1.02, 0.98])), 0.1])
    np.testing.assert_allclose(hayat_ebv(a_b), want, rtol=1e-12)
    # the old reading (least squares on the SF11 set) is ~1.19x too large on their files
    old = a_b @ EXTINCTION_R / (EXTINCTION_R @ EXTINCTION_R)
    ratio = (EXTINCTION_R_DR12 @ EXTINCTION_R) / (EXTINCTION_R @ EXTINCTION_R)
    np.testing.assert_allclose(old[[0, 2]] / ebv[[0, 2]], ratio)
    assert 1.18 < ratio < 1.20
    np.testing.assert_array_equal(EXTINCTION_R_SFD98, EXTINCTION_R_DR12)


def test_template_tables_from_catalogue_fluxes_or_phot(tmp_path):
    """dey carries catalogue fluxes (dered_petro_*): fitted to those; pasquet's example has none:
    fitted to the measured phot. The file says which, and T is the templates' own."""
    from study.data import templates

    d = convert("dey", make_dey(tmp_path / "sdss.npz"), tmp_path / "d.h5", allow_pickle=True,
                flux_table="templates", chunk=5, progress=False)  # fmt: skip
    p = convert("pasquet", make_pasquet(tmp_path / "p.npz"), tmp_path / "p.h5",
                flux_table="templates", progress=False)  # fmt: skip
    centers = np.linspace(0, 0.4, 181)[:-1] + 0.4 / 360
    for path, fit_from in ((d, "flux"), (p, "phot")):
        info = validate(path)
        assert (info.flux_table_source, info.flux_table_fit_from) == ("templates", fit_from)
        with h5py.File(path) as f:
            err = f["phot_err"][:] if fit_from == "phot" else None
            want = templates.table_for_rows(
                f["zs"][:], f["ebv"][:], f[fit_from][:], err, centers, info.source
            )
            np.testing.assert_array_equal(f["flux_table"][:], want)
    with h5py.File(d) as f:
        assert np.isfinite(f["flux_table"][:]).all()  # five positive catalogue fluxes each
    with pytest.raises(UserError, match="--flux-table spectra needs --spectra"):
        convert("pasquet", tmp_path / "p.npz", tmp_path / "q.h5", flux_table="spectra")
