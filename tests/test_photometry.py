"""Band fluxes and the flux table against speclite, kcorrect templates and hand computations."""

from __future__ import annotations

import os

import numpy as np
import pytest

from study.data.photometry import band_fluxes, filter_curves, flux_table

speclite_filters = pytest.importorskip("speclite.filters")
kcorrect = pytest.importorskip("kcorrect")


@pytest.fixture(scope="module")
def templates() -> tuple[np.ndarray, np.ndarray]:
    """The five kcorrect default v4 template SEDs: wave (10000,) A, flux (5, 10000) erg/s/cm^2/A."""
    from astropy.io import fits

    path = os.path.join(
        os.path.dirname(kcorrect.__file__), "data", "templates", "kcorrect-default-v4.fits"
    )
    table = fits.getdata(path, "FLUX")
    return table["wave"][0].astype(np.float64), table["flux"][0].astype(np.float64)


def speclite_maggies(wave: np.ndarray, flux: np.ndarray) -> np.ndarray:
    """speclite's get_ab_maggies, zero-padding the spectrum (just outside its ends) to cover
    every filter, so that 'zero outside the known range' holds for both codes."""
    eps = 1e-3 * (wave[1] - wave[0])
    wave_p = np.r_[1000.0, wave[0] - eps, wave, wave[-1] + eps, 20000.0]
    flux_p = np.concatenate([np.zeros((flux.shape[0], 2)), flux, np.zeros((flux.shape[0], 2))], 1)
    table = speclite_filters.load_filters("sdss2010-*").get_ab_maggies(flux_p, wave_p)
    return np.stack([np.asarray(table[f"sdss2010-{b}"]) for b in "ugriz"], axis=1)


@pytest.mark.parametrize("z", [0.0, 0.05, 0.15, 0.3, 0.4])
def test_band_fluxes_match_speclite_on_kcorrect_templates(templates, z):
    wave, flux = templates
    obs_wave, obs_flux = wave * (1 + z), flux / (1 + z)  # observed frame, flux scale irrelevant
    ours = band_fluxes(obs_wave, obs_flux)
    ref = speclite_filters.load_filters("sdss2010-*").get_ab_maggies(obs_flux, obs_wave)
    ref = np.stack([np.asarray(ref[f"sdss2010-{b}"]) for b in "ugriz"], axis=1)
    np.testing.assert_allclose(ours, ref, rtol=5e-3)
    assert ours.shape == (5, 5)


@pytest.mark.parametrize("mag", [15.0, 20.0])
def test_flat_fnu_gives_equal_maggies(mag):
    # f_nu = 3631 Jy 10^(-0.4 m) <=> f_lambda = f_nu c / lambda^2: maggies = 10^(-0.4 m) in all bands
    wave = np.arange(2500.0, 12000.0, 0.5)
    f_lambda = 3631e-23 * 10 ** (-0.4 * mag) * 2.99792458e18 / wave**2
    np.testing.assert_allclose(band_fluxes(wave, f_lambda), 10 ** (-0.4 * mag), rtol=1e-5)


def test_flux_table_matches_speclite_on_shifted_spectra(templates):
    wave_t, flux_t = templates
    zs = np.array([0.02, 0.12, 0.33])
    grid = np.arange(3800.0, 9200.0, 1.5)  # an SDSS-like spectrograph range; zero outside it
    spectra = np.stack(
        [np.interp(grid, wave_t * (1 + z), flux_t[i]) for i, z in enumerate(zs)]
    )  # templates 0..2 observed at zs
    centers = np.array([0.0011, 0.05, 0.1, 0.2, 0.3999])
    table = flux_table(grid, spectra, zs, centers)
    assert table.shape == (3, 5, 5)
    base = speclite_maggies(grid, spectra)  # Phi'(1)
    for c, zc in enumerate(centers):
        nu = (1 + zc) / (1 + zs)
        # move each galaxy explicitly: F(l / nu) sampled on the stretched grid nu * u
        shifted = np.stack(
            [speclite_maggies(grid * n, s[None])[0] for n, s in zip(nu, spectra, strict=True)]
        )
        np.testing.assert_allclose(table[:, :, c], shifted / base, rtol=1e-4, atol=1e-8)


def test_flux_table_equals_plain_trapezoid_and_marks_empty_bands():
    rng = np.random.default_rng(1)
    grid = np.geomspace(3800.0, 9200.0, 3000)  # a log grid like SDSS spectra
    spectra = rng.uniform(0.5, 1.5, (4, grid.size)) * 1e-17
    spectra[3, grid < 8000] = 0.0  # no flux in u (red leak to 7941 A), g, r: unusable
    zs = rng.uniform(0.0, 0.4, 4)
    centers = np.linspace(0.0011, 0.3989, 37)
    table = flux_table(grid, spectra, zs, centers, chunk=3)
    # plain trapezoid with the response interpolated onto the shifted grid, by hand
    weights = np.diff(grid)
    for i in range(4):
        for b, (fw, fr) in enumerate(filter_curves()):

            def phi(nu, i=i, fw=fw, fr=fr):
                lam = grid * nu
                y = spectra[i] * np.interp(lam, fw, fr, left=0, right=0) * lam
                return np.sum((y[1:] + y[:-1]) / 2 * weights * nu)

            if phi(1.0) <= 0:
                assert np.isnan(table[i, b]).all()
                continue
            ref = [phi((1 + zc) / (1 + zs[i])) / phi(1.0) for zc in centers]
            np.testing.assert_allclose(table[i, b], ref, rtol=1e-9, atol=1e-12)
    assert np.isnan(table[3, :3]).all() and np.isfinite(table[3, 3:]).all()
    np.testing.assert_allclose(flux_table(grid, spectra[0], zs[0], centers), table[0])
    serial = flux_table(grid, spectra, zs, centers, chunk=1, threads=1)
    np.testing.assert_array_equal(
        flux_table(grid, spectra, zs, centers, chunk=1, threads=3), serial
    )
