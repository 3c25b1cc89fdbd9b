"""The synthetic universe against independent references: astropy, speclite, photometry, scipy.

Universes here are small (a few hundred galaxies with images, a few thousand without).
"""

from __future__ import annotations

import argparse
import hashlib
import threading
from pathlib import Path

import astropy.units as u
import h5py
import numpy as np
import pytest
import speclite.filters
from astropy.cosmology import Planck18
from astropy.io import fits
from scipy.spatial import cKDTree

from study.data import aperture, photometry
from study.data.dataset import validate
from study.data.layout import EXTINCTION_R as R_EXT
from study.errors import UserError
from study.universe import build as universe
from study.universe import render

C_ANGSTROM = 2.99792458e18


@pytest.fixture(scope="module")
def templates() -> tuple[np.ndarray, np.ndarray]:
    """The kcorrect templates read straight from the package's FITS file."""
    import kcorrect

    path = Path(kcorrect.__file__).parent / "data/templates/kcorrect-default-v4.fits"
    with fits.open(path) as hdul:
        return (
            np.asarray(hdul[1].data["wave"][0], float),
            np.asarray(hdul[1].data["flux"][0], float),
        )


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("universe") / "u.h5"
    return universe.build_universe(300, 3, out, chunk=100, workers=1, progress=False)


def _speclite_maggies(wave: np.ndarray, flux: np.ndarray) -> np.ndarray:
    filters = speclite.filters.load_filters("sdss2010-*")
    table = filters.get_ab_maggies(flux * u.erg / u.s / u.cm**2 / u.AA, wave * u.AA)
    return np.array([table[name][0] for name in table.colnames])


def test_fluxes_and_magnitudes_match_astropy_and_speclite(templates) -> None:
    wave, tpl = templates
    cat = universe.build_catalogue(40, seed=5)
    keep = (wave > 1000) & (wave < 30000)
    for i in range(0, 40, 8):
        z = cat["zs"][i]
        a = cat["truth/coeffs_bulge"][i] + cat["truth/coeffs_disk"][i]
        d_l = Planck18.luminosity_distance(z).to_value("pc")
        spec = (10.0 / d_l) ** 2 * (a @ tpl[:, keep]) / (1 + z)  # observed, erg/s/cm^2/A
        maggies = _speclite_maggies(wave[keep] * (1 + z), spec)
        ext = 10 ** (-0.4 * R_EXT * cat["ebv"][i])
        # speclite resamples the spectrum (differs by ~4e-4 in u from SPEC 2's trapezoid rule)
        np.testing.assert_allclose(cat["flux"][i], 1e9 * maggies * ext, rtol=1e-3)
        exact = photometry.band_fluxes(wave[keep] * (1 + z), spec)
        np.testing.assert_allclose(cat["flux"][i], 1e9 * exact * ext, rtol=1e-4)
        # apparent r = M + distance modulus + K, with M in the ^{0.1}r band at 10 pc
        rest01 = _speclite_maggies(wave[keep] * 1.1, (a @ tpl[:, keep]) / 1.1)[2] / 1.1
        abs_mag = -2.5 * np.log10(rest01)
        assert cat["truth/abs_mag_r01"][i] == pytest.approx(abs_mag, abs=1e-3)
        assert cat["truth/r_dered"][i] == pytest.approx(-2.5 * np.log10(maggies[2]), abs=1e-3)


def test_main_sample_cut_and_redshift_distribution() -> None:
    cat = universe.build_catalogue(3000, seed=0)
    r_dered = 22.5 - 2.5 * np.log10(cat["flux"][:, 2]) - R_EXT[2] * cat["ebv"]
    assert np.all(r_dered < 17.77 + 1e-4)
    assert np.all((cat["zs"] > 0) & (cat["zs"] <= 0.4))
    assert 0.08 <= np.median(cat["zs"]) <= 0.12
    assert 0.01 < np.median(cat["ebv"]) < 0.06


def test_flux_table_matches_photometry_on_explicit_spectra(templates) -> None:
    wave, tpl = templates
    edges = universe.bin_edges(180, 0.4)
    centers = 0.5 * (edges[1:] + edges[:-1])
    cat = universe.build_catalogue(30, seed=2, flux_table=True)
    for i in range(0, 30, 6):
        z = cat["zs"][i]
        a = cat["truth/coeffs_bulge"][i] + cat["truth/coeffs_disk"][i]
        obs = wave * (1 + z)
        inside = (obs >= 3800.0) & (obs <= 9200.0)  # the spectrograph range, zero outside
        ref = photometry.flux_table(obs[inside], a @ tpl[:, inside], z, centers)
        np.testing.assert_allclose(cat["flux_table"][i], ref, rtol=2e-6, atol=1e-9)


def test_flux_table_is_one_at_the_true_bin_up_to_bin_width() -> None:
    cat = universe.build_catalogue(200, seed=4, flux_table=True)
    c = np.clip(np.floor(cat["zs"] / (0.4 / 180)).astype(int), 1, 178)
    t = cat["flux_table"]
    rows = np.arange(len(c))
    at = t[rows, :, c]
    slope = np.abs(t[rows, :, c + 1] - t[rows, :, c - 1])  # T changes over two bins
    assert np.all(np.abs(at - 1) <= 0.6 * slope + 1e-3)
    assert np.median(np.abs(at - 1)) < 0.01


def test_pixel_sums_recover_flux_for_compact_galaxies(small: Path) -> None:
    with h5py.File(small) as f:
        images = f["images"][:].astype(np.float64)
        flux = f["flux"][:]
        compact = (f["truth/re_disk_arcsec"][:] < 1.5) & (f["truth/neighbour_kind"][:] == 0)
    r = render.renderer()
    sums = images.sum(axis=(2, 3))[compact]
    sigma = np.sqrt(64 * 64 * r.sky_var + flux[compact] / r.gain)  # noise of a 64x64 sum
    resid = sums - flux[compact]
    assert compact.sum() > 30
    assert np.all(np.abs(resid) < 5 * sigma + 0.03 * flux[compact])
    chi = resid / sigma  # pure noise plus a little light beyond the frame
    assert np.all(np.abs(np.median(chi, axis=0)) < 0.5)
    assert np.all((np.std(chi, axis=0) > 0.6) & (np.std(chi, axis=0) < 1.5))


def _single_galaxy(re_bulge: float, re_disk: float, bulge: float, q: float = 1.0, pa: float = 0.0):
    g = {
        "re_bulge_arcsec": np.array([re_bulge]),
        "re_disk_arcsec": np.array([re_disk]),
        "q_bulge": np.array([q]),
        "q_disk": np.array([q]),
        "pa_rad": np.array([pa]),
        "flux_bulge": np.full((1, 5), 100.0 * bulge),
        "flux_disk": np.full((1, 5), 100.0 * (1 - bulge)),
        "offset_px": np.zeros((1, 2)),
    }
    obs = {"psf_fwhm_arcsec": np.full((1, 5), 0.3), "neighbour_kind": np.zeros(1, np.uint8)}
    return render.renderer().noiseless(g, obs)[0, 2].astype(np.float64)


@pytest.mark.parametrize("bulge", [0.0, 1.0])
def test_profiles_have_their_half_light_radius(bulge: float) -> None:
    re_arcsec = 2.4  # about 6 px: the frame holds > 95% of the light of either profile
    img = _single_galaxy(re_arcsec, re_arcsec, bulge)
    y, x = np.mgrid[:64, :64] - 32.0
    inside = np.hypot(x, y) <= re_arcsec / 0.396
    # exact pixel-integrated fractions inside r_e are about 0.5; PSF and pixels move them a little
    assert img[inside].sum() / 100.0 == pytest.approx(0.5, abs=0.04)
    if bulge == 0:  # exponential disk: surface brightness ratio between r = 2 and 4 r_s is e^2
        r_s = re_arcsec / 0.396 / 1.6783  # scale length, px
        d = [int(round(k * r_s)) for k in (2, 4)]
        ratio = img[32, 32 + d[0]] / img[32, 32 + d[1]]
        assert ratio == pytest.approx(np.exp((d[1] - d[0]) / r_s), rel=0.05)


def test_position_angle_orients_the_major_axis() -> None:
    y, x = np.mgrid[:64, :64] - 32.0
    for pa, longer in ((0.0, "x"), (np.pi / 2, "y")):
        img = _single_galaxy(2.0, 2.0, 0.5, q=0.4, pa=pa)
        ixx, iyy = (img * x**2).sum(), (img * y**2).sum()
        assert (ixx > 2 * iyy) if longer == "x" else (iyy > 2 * ixx)


@pytest.mark.slow
def test_colours_alone_carry_redshift() -> None:
    cat = universe.build_catalogue(6000, seed=11)
    mags = 22.5 - 2.5 * np.log10(cat["flux"]) - R_EXT * cat["ebv"][:, None]  # dereddened
    feats = np.column_stack([mags[:, :-1] - mags[:, 1:], mags[:, 2]])
    feats = (feats - feats[:5000].mean(0)) / feats[:5000].std(0)
    _, idx = cKDTree(feats[:5000]).query(feats[5000:], k=15)
    zp = np.median(cat["zs"][:5000][idx], axis=1)
    zs = cat["zs"][5000:]
    d = (zp - zs) / (1 + zs)
    sigma_nmad = 1.4826 * np.median(np.abs(d - np.median(d)))
    assert sigma_nmad < 0.05


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_seed_same_bytes_for_any_chunk_and_workers(small: Path, tmp_path: Path) -> None:
    other = universe.build_universe(
        300, 3, tmp_path / "b.h5", chunk=1000, workers=2, progress=False
    )
    assert _sha(small) == _sha(other)
    third = universe.build_universe(300, 4, tmp_path / "c.h5", workers=1, progress=False)
    with h5py.File(small) as f, h5py.File(third) as g:
        assert not np.array_equal(f["zs"][:], g["zs"][:])


def test_a_universe_is_the_start_of_a_larger_one(small: Path, tmp_path: Path) -> None:
    # 300 rows: one partial block rendered in this process; 1100: forked workers render a
    # full block 0 (and 76 rows of block 1) into shared memory
    big = universe.build_universe(1100, 3, tmp_path / "big.h5", workers=2, progress=False)
    with h5py.File(small) as f, h5py.File(big) as g:
        for name in ("images", "flux_table", "truth/psf_fwhm_arcsec", "truth/neighbour_flux",
                     "phot", "phot_err"):  # fmt: skip
            assert f[name][:].tobytes() == g[name][:300].tobytes(), name


def test_phot_is_the_aperture_photometry_of_its_own_images(small: Path) -> None:
    info = validate(small)  # the content hash covers phot/phot_err
    assert info.has_phot
    with h5py.File(small) as f:
        want = aperture.measure(f["images"][:], gain=render.universe_gain())
        for name, value in zip(aperture.MEASURED, want, strict=True):
            assert f[name].dtype == np.float32 and f[name][:].tobytes() == value.tobytes(), name
            assert dict(f[name].attrs) == aperture.PHOT_ATTRS
        np.testing.assert_array_equal(render.universe_gain(), render.renderer().gain)
        # the noiseless flux inside the aperture is most of it: phot is the galaxy's light
        ratio = f["phot"][:, 2] / f["flux"][:, 2]
    assert 0.5 < np.median(ratio) < 1.0


def test_source_mask_is_the_segmentation_of_its_own_images(small: Path) -> None:
    from study.data import masks

    info = validate(small)  # the content hash covers source_mask
    assert info.has_masks
    with h5py.File(small) as f:
        assert f["source_mask"].shape == (300, 64, 8) and f["source_mask"].dtype == np.uint8
        want = masks.pack(masks.measure_masks(f["images"][:12]))
        np.testing.assert_array_equal(f["source_mask"][:12], want)
        keep = masks.unpack(f["source_mask"][:])
    assert keep[:, 31:33, 31:33].all()  # every rendered galaxy has its centre in its segment


def test_flux_table_batches_do_not_change_bits(monkeypatch: pytest.MonkeyPatch) -> None:
    from study.data import spectra
    from study.universe.population import population

    maker = universe.flux_table_maker(180, 0.4, universe.DEFAULT_RANGE)
    g = population().draw_block(5, 0)
    coeffs, zs = g["coeffs_bulge"][:300] + g["coeffs_disk"][:300], g["zs"][:300]
    monkeypatch.setattr(spectra, "FT_BATCH", 1024)
    whole = maker(coeffs, zs)
    monkeypatch.setattr(spectra, "FT_BATCH", 7)
    assert maker(coeffs, zs).tobytes() == whole.tobytes()


def test_file_catalogue_equals_build_catalogue(small: Path) -> None:
    cat = universe.build_catalogue(300, seed=3, flux_table=True)
    with h5py.File(small) as f:
        for name in (
            "zs",
            "ebv",
            "flux",
            "flux_table",
            "truth/coeffs_bulge",
            "truth/re_disk_arcsec",
        ):
            np.testing.assert_array_equal(f[name][:], cat[name].astype(f[name].dtype))
        assert f.attrs["format"] == "photoz-study/1"
        assert f.attrs["source"] == "synthetic"


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    universe.add_universe_parser(parser.add_subparsers())
    return parser.parse_args(["universe", *argv])


@pytest.mark.parametrize(
    "argv, needle",
    [
        (("--n", "0"), "--n"),
        (("--dtype", "float64"), "--dtype"),
        (("--spectral-range", "9000", "4000"), "--spectral-range"),
    ],
)
def test_bad_arguments_fail_before_work(tmp_path: Path, argv: tuple, needle: str) -> None:
    args = _parse("--out", str(tmp_path / "x.h5"), "--n", "10", *argv)
    with pytest.raises(UserError, match=needle):
        args.func(args)
    assert not any(tmp_path.iterdir())


def test_existing_or_unwritable_out_is_refused(tmp_path: Path) -> None:
    existing = tmp_path / "there.h5"
    existing.write_text("x")
    for out in (existing, existing / "below.h5"):
        args = _parse("--n", "10", "--out", str(out))
        with pytest.raises(UserError, match=str(out)):
            args.func(args)


def test_interrupted_build_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def boom(*args, **kwargs):
        calls.append(1)
        raise KeyboardInterrupt

    monkeypatch.setattr(universe, "make_block", boom)
    with pytest.raises(KeyboardInterrupt):
        universe.build_universe(2000, 0, tmp_path / "u.h5", workers=1, progress=False)
    assert calls and list(tmp_path.iterdir()) == []


def test_cached_universe_builds_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PHOTOZ_CACHE", str(tmp_path))
    builds = []
    real = universe.build_universe

    def counted(*args, **kwargs):
        builds.append(1)
        return real(*args, **{**kwargs, "progress": False, "workers": 1})

    monkeypatch.setattr(universe, "build_universe", counted)
    stale = tmp_path / f".universe-v{universe.VERSION}-n50-seed1-float32.h5.999.tmp"  # leftover
    stale.write_text("half")
    paths: list[Path] = []
    threads = [
        threading.Thread(target=lambda: paths.append(universe.cached_universe(50, 1)))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1 and len(set(paths)) == 1 and paths[0].parent == tmp_path
    assert universe.cached_universe(50, 1) == paths[0] and len(builds) == 1
    assert not stale.exists()


def test_float16_images_keep_precision_below_the_noise(small: Path, tmp_path: Path) -> None:
    half = universe.build_universe(
        300, 3, tmp_path / "h.h5", image_dtype="float16", workers=1, progress=False
    )
    with h5py.File(small) as f, h5py.File(half) as g:
        x32, x16 = f["images"][:64], g["images"][:64].astype(np.float32)
        phot16 = aperture.measure(g["images"][:], gain=render.universe_gain())[0]
        assert g["phot"][:].tobytes() == phot16.tobytes()  # measured on the float16 pixels
    r = render.renderer()
    sigma = np.sqrt(
        r.sky_var[None, :, None, None] + np.maximum(x32, 0) / r.gain[None, :, None, None]
    )
    err = np.abs(x16 - x32) / sigma  # rounding error in units of the pixel's own noise
    assert np.quantile(err, 0.999) < 0.01
    assert np.max(err) < 0.5  # the brightest galaxy centres: 2^-11 sqrt(counts) sigma


@pytest.mark.slow
def test_same_bytes_with_numpy_simd_dispatch_disabled(small: Path, tmp_path: Path) -> None:
    """Another machine's CPU: numpy limited to its baseline SIMD (no AVX2/AVX-512 loops)."""
    import os
    import subprocess
    import sys

    from numpy._core._multiarray_umath import __cpu_dispatch__

    out = tmp_path / "baseline.h5"
    code = (
        "from study.universe import build as universe; "
        f"universe.build_universe(300, 3, {str(out)!r}, chunk=100, workers=1, progress=False)"
    )
    env = {**os.environ, "NPY_DISABLE_CPU_FEATURES": " ".join(__cpu_dispatch__)}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, cwd=Path(__file__).parents[1])
    assert _sha(out) == _sha(small)
