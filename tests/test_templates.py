"""Flux tables from kcorrect templates fitted to photometry (study.data.templates), real kcorrect."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from scipy.optimize import nnls

from study.data import photometry, templates
from study.data.dataset import read_info, validate, write_dataset
from study.data.layout import EXTINCTION_R, bin_centers, bin_edges
from study.errors import UserError
from study.universe import build, sed

CENTERS = bin_centers(bin_edges(180, 0.4))


@pytest.fixture(scope="module")
def cat() -> dict[str, np.ndarray]:
    return build.build_catalogue(64, seed=3, flux_table=False)


def _fit(cat: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    maggies, ivar = templates.fit_input(cat["flux"], None, cat["ebv"], ab_correct=False)
    return maggies, ivar, templates.fit_coeffs(cat["zs"], maggies, ivar)


def test_fit_input_dereddens_with_sf11() -> None:
    flux = np.array([[10.0, 20.0, 30.0, 40.0, 50.0]])
    maggies, ivar = templates.fit_input(flux, None, np.array([0.1]), ab_correct=False)
    np.testing.assert_allclose(maggies[0], flux[0] * 1e-9 * 10 ** (0.04 * EXTINCTION_R))
    np.testing.assert_allclose(ivar[0], 1 / (templates.ERROR_FLOOR * maggies[0]) ** 2)
    flux[0, 1] = np.nan  # an unknown band is ignored by the fit
    maggies, ivar = templates.fit_input(flux, None, np.array([0.1]), ab_correct=False)
    assert ivar[0, 1] == 0 and maggies[0, 1] == 0 and (ivar[0, [0, 2, 3, 4]] > 0).all()


def test_kcorrect_fit_is_a_direct_nnls_on_the_same_templates(cat) -> None:
    """Reference: the design matrix by hand (templates redshifted, kcorrect's SDSS response
    curves read from their .dat files, AB normalisation, trapezoid rule), scipy's nnls."""
    import kcorrect
    from astropy.io import ascii

    maggies, ivar, coeffs = _fit(cat)
    wave, flux = sed.templates()
    curves = []
    for name in templates.RESPONSES:  # column 'pass': airmass 1.3, as SDSS calibrates
        dat = ascii.read(f"{kcorrect.KCORRECT_DIR}/data/responses/{name}.dat", format="fixed_width")
        curves.append((np.asarray(dat["lambda"], float), np.asarray(dat["pass"], float)))
    for i in range(0, len(maggies), 8):
        z = cat["zs"][i]
        lam = wave * (1 + z)
        design = np.empty((5, 5))
        for b, (rw, rr) in enumerate(curves):
            r = np.interp(lam, rw, rr, left=0, right=0)
            ab = 3631e-23 * 2.99792458e18 / lam**2  # the AB source in erg/s/cm^2/A
            norm = np.trapezoid(ab * r * lam, lam)
            design[b] = np.trapezoid(flux / (1 + z) * r * lam, lam) / norm
        w = np.sqrt(ivar[i])
        ref, _ = nnls(design * w[:, None], maggies[i] * w)
        # the same fit: model fluxes agree to the integration rules' difference (kcorrect
        # interpolates templates cubically onto the filter grid), and so do the tables
        np.testing.assert_allclose(design @ coeffs[i], design @ ref, rtol=2e-3)
        maker = templates.table_maker(tuple(CENTERS))
        mine, theirs = maker(coeffs[i : i + 1], cat["zs"][i : i + 1]), maker(ref[None], [z])
        np.testing.assert_allclose(mine, theirs, rtol=5e-3, atol=1e-3)


def test_fitted_sed_reproduces_noiseless_catalogue_fluxes(cat) -> None:
    maggies, _, coeffs = _fit(cat)
    kc = templates.fitter(0.4)
    back = kc.reconstruct(redshift=cat["zs"], coeffs=coeffs)  # through the fit's responses
    np.testing.assert_allclose(back, maggies, rtol=0.01)
    # through our sdss2010 filters (what T uses), on the explicit observed-frame SED: g, r, i
    # to 1%; u and z carry the two filter sets' difference (README: about 4% and 1% in u and z)
    maker = templates.table_maker(tuple(CENTERS))
    for i in range(0, len(coeffs), 8):
        lam, spec = maker.spectrum(coeffs[i], cat["zs"][i])
        ours = photometry.band_fluxes(lam, spec)
        np.testing.assert_allclose(ours[1:4], maggies[i, 1:4], rtol=0.01)
        np.testing.assert_allclose(ours[[0, 4]], maggies[i, [0, 4]], rtol=0.12)


def test_table_is_the_exact_table_of_the_fitted_sed(cat) -> None:
    """T from the fit equals photometry.flux_table of the explicit SED (no spectrograph cut)."""
    maggies, ivar, coeffs = _fit(cat)
    table = templates.template_table(cat["zs"], maggies, ivar, CENTERS)
    maker = templates.table_maker(tuple(CENTERS))
    for i in range(0, len(coeffs), 16):
        lam, spec = maker.spectrum(coeffs[i], cat["zs"][i])
        assert lam[0] < 2980 / 1.4 and lam[-1] > 11230 * 1.4 / 1.4  # the whole template range
        ref = photometry.flux_table(lam, spec, cat["zs"][i], CENTERS)
        np.testing.assert_allclose(table[i], ref, rtol=1e-5, atol=1e-6)


def test_table_is_one_at_zs(cat) -> None:
    """T(nu = 1) = 1 by construction: with zs on a bin centre the entry there is 1 (float32);
    elsewhere the bin holding zs is 1 up to the bin-width effect (as the universe's test)."""
    c = np.clip(np.floor(cat["zs"] / (0.4 / 180)).astype(int), 1, 178)
    on_centre = CENTERS[c]
    maggies, ivar, _ = _fit(cat)
    table = templates.template_table(on_centre, maggies, ivar, CENTERS)
    rows = np.arange(len(c))
    np.testing.assert_allclose(table[rows, :, c], 1.0, rtol=0, atol=1e-6)
    table = templates.template_table(cat["zs"], maggies, ivar, CENTERS)
    at, slope = table[rows, :, c], np.abs(table[rows, :, c + 1] - table[rows, :, c - 1])
    assert np.all(np.abs(at - 1) <= 0.6 * slope + 1e-3)


def _synthetic_file(path, cat, with_phot=True):
    n = len(cat["zs"])
    rng = np.random.default_rng(0)
    phot = cat["flux"] * (1 + 0.01 * rng.standard_normal((n, 5)))
    extra = {"phot": phot, "phot_err": 0.01 * cat["flux"]} if with_phot else {}
    split = np.arange(n) % 3
    return write_dataset(path, images=np.zeros((n, 5, 64, 64), np.float32), zs=cat["zs"],
                         ebv=cat["ebv"], flux=cat["flux"], split=split.astype(np.uint8),
                         ids=np.arange(n), bin_edges=bin_edges(), source="synthetic",
                         data_seed=0, **extra)  # fmt: skip


@pytest.mark.parametrize("fit_from", ["flux", "phot"])
def test_add_template_table_keeps_everything(tmp_path, cat, fit_from) -> None:
    src = _synthetic_file(tmp_path / "a.h5", cat)
    out = templates.add_template_table(src, fit_from, tmp_path / "b.h5", progress=False)
    info = validate(out)
    assert info.has_flux_table and info.flux_table_source == "templates"
    assert info.flux_table_fit_from == fit_from and read_info(src).flux_table_source is None
    with h5py.File(src) as a, h5py.File(out) as b:
        for k in a:
            np.testing.assert_array_equal(a[k][:], b[k][:])
        flux = b[fit_from][:]
        err = b["phot_err"][:] if fit_from == "phot" else None
        want = templates.table_for_rows(b["zs"][:], b["ebv"][:], flux, err, CENTERS, "synthetic")
        np.testing.assert_array_equal(b["flux_table"][:], want)
    with h5py.File(out, "r+") as f:  # the attribute is part of the content hash
        f.attrs["flux_table_source"] = "spectra"
    with pytest.raises(UserError, match="content_hash"):
        validate(out)


def test_add_template_table_refusals(tmp_path, cat) -> None:
    bare = _synthetic_file(tmp_path / "a.h5", cat, with_phot=False)
    with pytest.raises(UserError, match="has no 'phot'"):
        templates.add_template_table(bare, "phot", progress=False)
    done = templates.add_template_table(bare, "flux", tmp_path / "b.h5", progress=False)
    with pytest.raises(UserError, match="already has a flux_table"):
        templates.add_template_table(done, "flux", progress=False)
    before = open(done, "rb").read()
    templates.add_template_table(done, "flux", replace=True, progress=False)  # in place
    assert validate(done).flux_table_source == "templates" and open(done, "rb").read() != before
