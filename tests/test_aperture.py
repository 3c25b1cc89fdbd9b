"""Measured photometry (study.data.aperture) against independent references.

References: photutils' own per-image ``aperture_photometry`` + ``ApertureStats``, astropy's
``SigmaClip``, an analytic Gaussian, the Fourier-space integral of a noiseless universe
galaxy over the aperture disk, and the scatter of repeated draws of the universe's noise.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from astropy.stats import SigmaClip
from photutils.aperture import (
    ApertureStats,
    CircularAnnulus,
    CircularAperture,
    aperture_photometry,
)
from scipy.special import erf, j1
from scipy.stats import truncnorm

from study.data import aperture
from study.data.__main__ import main as data_main
from study.data.dataset import validate, write_dataset
from study.errors import UserError
from study.universe import build as universe
from study.universe import render

GALAXY = ("re_bulge_arcsec", "re_disk_arcsec", "q_bulge", "q_disk", "pa_rad", "flux_bulge")
GALAXY += ("flux_disk", "offset_px")
OBSERVING = ("psf_fwhm_arcsec", "neighbour_kind", "neighbour_offset_px", "neighbour_flux")
OBSERVING += ("neighbour_re_arcsec", "neighbour_q", "neighbour_pa_rad")


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("aperture") / "u.h5"
    return universe.build_universe(200, 7, out, workers=1, progress=False)


@pytest.fixture(scope="module")
def bare(small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same universe written without phot/phot_err (as every file was before issue 11; with
    its source_mask, which add_photometry must carry into the hash)."""
    with h5py.File(small) as f:
        names = ("images", "zs", "ebv", "flux", "split", "flux_table", "source_mask")
        arrays = {k: f[k][:] for k in names}
        truth = {k: f[f"truth/{k}"][:] for k in f["truth"]}
        attrs, ids = dict(f.attrs), f["id"][:]
    out = tmp_path_factory.mktemp("aperture") / "bare.h5"
    return write_dataset(
        out, **arrays, ids=ids, truth=truth, bin_edges=attrs["bin_edges"], source="synthetic",
        data_seed=attrs["data_seed"], pixel_scale_arcsec=attrs["pixel_scale_arcsec"],
    )  # fmt: skip


def noiseless(path: Path, rows: np.ndarray) -> np.ndarray:
    """(len(rows), 5, 64, 64) float64 noiseless cutouts re-rendered from the stored truth."""
    with h5py.File(path) as f:
        truth = {k: f[f"truth/{k}"][:][rows] for k in GALAXY + OBSERVING}
    r, out = render.renderer(), []
    for s in range(0, len(rows), 32):
        g = {k: truth[k][s : s + 32] for k in GALAXY}
        o = {k: truth[k][s : s + 32] for k in OBSERVING}
        out.append(np.array(r.noiseless(g, o), np.float64))
    return np.concatenate(out)


def disk_integral(img: np.ndarray, radius: float, centre=(32.0, 32.0)) -> np.ndarray:
    """Integral over a disk of the band-limited function whose pixel integrals are ``img``.

    The PSF makes the images band-limited, so the DFT of the pixels divided by the pixel
    box's transform (sinc x sinc) is the continuous profile's transform; its product with the
    disk's transform 2 pi R J1(kR) / k, summed, is the integral. No photutils, no pixel weights.
    """
    n = img.shape[-1]
    m = np.fft.fftfreq(n) * n
    ky, kx = np.meshgrid(2 * np.pi * m / n, 2 * np.pi * m / n, indexing="ij")
    box = np.sinc(m / n)[:, None] * np.sinc(m / n)[None, :]
    k = np.hypot(kx, ky)
    safe = np.where(k > 0, k, 1.0)
    disk = np.where(k > 0, 2 * np.pi * radius * j1(k * radius) / safe, np.pi * radius**2)
    phase = np.exp(1j * (kx * centre[0] + ky * centre[1]))
    return (np.fft.fft2(img) / box * disk * phase).real.sum(axis=(-1, -2)) / n**2


def gaussian(sigma: float, flux: float) -> np.ndarray:
    """(64, 64) pixel integrals of a circular Gaussian centred on pixel (32, 32)."""
    x = np.arange(64.0)

    def cdf(t):
        return 0.5 * (1 + erf((t - 32.0) / (np.sqrt(2) * sigma)))

    edge = cdf(x + 0.5) - cdf(x - 0.5)
    return flux * edge[:, None] * edge[None, :]


def test_clipped_stats_equal_astropy_sigma_clip() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(0.1, 1.0, (40, 1209)).astype(np.float32)
    x[::3, :200] += rng.uniform(5, 50, (14, 200)).astype(np.float32)  # a neighbour's pixels
    x[1::4, -5:] = 1e4  # cosmic rays
    med, std, kept = aperture.clipped_stats(x)
    clipped = SigmaClip(sigma=3.0, maxiters=10)(x.astype(np.float64), axis=1, masked=False)
    np.testing.assert_allclose(med, np.nanmedian(clipped, axis=1), rtol=0, atol=1e-6)
    np.testing.assert_allclose(std, np.nanstd(clipped, axis=1), rtol=1e-6)
    np.testing.assert_array_equal(kept, np.isfinite(clipped).sum(axis=1))
    assert kept.min() < 1209 - 150  # the neighbour was clipped


def test_each_row_depends_on_its_own_pixels_alone(small: Path) -> None:
    """Any block size, thread count or neighbouring rows: the same bits (files rely on it)."""
    with h5py.File(small) as f:
        images = f["images"][:]
    gain = render.universe_gain()
    whole = aperture.measure(images, gain=gain)
    for start, stop in ((0, 1), (7, 8), (3, 130), (199, 200)):
        part = aperture.measure(images[start:stop], gain=gain, threads=1)
        for a, b in zip(part, whole, strict=True):
            assert a.tobytes() == b[start:stop].tobytes(), (start, stop)
    shuffled = np.random.default_rng(0).permutation(len(images))
    again = aperture.measure(images[shuffled], gain=gain, threads=3)
    assert again[0].tobytes() == whole[0][shuffled].tobytes()


def test_measure_equals_photutils_image_by_image(small: Path) -> None:
    with h5py.File(small) as f:
        images = f["images"][:40]
    phot, err = aperture.measure(images)
    ap = CircularAperture((32, 32), aperture.RADIUS_PX)
    ring = CircularAnnulus((32, 32), *aperture.ANNULUS_PX)
    in_ring = ring.to_mask(method="center").to_image((64, 64)) > 0
    pairs = in_ring[:, :-1] & in_ring[:, 1:]  # (64, 63): pixel (y, x) and (y, x + 1) both in
    for i in range(40):
        for b in range(5):
            data = images[i, b].astype(np.float64)
            stats = ApertureStats(data, ring, sigma_clip=SigmaClip(sigma=3.0, maxiters=10))
            total = aperture_photometry(data, ap, method="exact")["aperture_sum"][0]
            want = total - stats.median * ap.area
            assert phot[i, b] == pytest.approx(want, abs=1e-4 * float(err[i, b]))
            # without a gain the error is the background's alone: the pixel noise from the
            # clipped std of adjacent annulus pixels' differences, the median's from its count
            diffs = (data[:, :-1] - data[:, 1:])[pairs]
            clipped = SigmaClip(sigma=3.0, maxiters=10)(diffs, masked=False)
            noise = np.nanstd(clipped) / np.sqrt(2) / aperture.CLIPPED_STD
            area2 = (ap.to_mask(method="exact").data ** 2).sum()
            kept = stats.center_aper_area.value  # unclipped annulus pixels
            var = noise**2 * (area2 + ap.area**2 * np.pi / 2 / kept)
            assert err[i, b] == pytest.approx(np.sqrt(var), rel=1e-4)


def test_clipped_std_of_a_gaussian() -> None:
    """CLIPPED_STD against scipy's truncated normal: c = std of N(0, 1) truncated at +-3c."""
    c = 1.0
    for _ in range(200):
        c = truncnorm(-3.0 * c, 3.0 * c).std()
    assert aperture.CLIPPED_STD == pytest.approx(c, rel=1e-12)
    x = np.random.default_rng(0).standard_normal(1_000_000)
    clipped = SigmaClip(sigma=3.0, maxiters=50)(x, masked=False)  # astropy's, to convergence
    assert np.nanstd(clipped) == pytest.approx(aperture.CLIPPED_STD, abs=2e-3)


def test_analytic_gaussian_inside_the_aperture() -> None:
    img = gaussian(2.0, 100.0)
    want = 100.0 * (1 - np.exp(-(aperture.RADIUS_PX**2) / (2 * 2.0**2)))
    assert disk_integral(img, aperture.RADIUS_PX) == pytest.approx(want, rel=1e-9)
    phot, _ = aperture.measure(np.broadcast_to(img, (1, 5, 64, 64)).astype(np.float32))
    np.testing.assert_allclose(phot[0], want, rtol=2e-4)  # photutils' exact-overlap weights


def test_noiseless_universe_galaxies_match_their_profile_inside_the_aperture(small: Path) -> None:
    with h5py.File(small) as f:
        alone = np.flatnonzero(f["truth/neighbour_kind"][:] == 0)
        re_disk = f["truth/re_disk_arcsec"][:][alone]
    clean = noiseless(small, alone)
    want = disk_integral(clean, aperture.RADIUS_PX)  # (n, 5) the profile's integral
    phot, _ = aperture.measure(clean.astype(np.float32))
    weights, _ = aperture.masks()
    raw = clean.reshape(len(clean), 5, -1) @ weights  # the aperture sum before the background
    assert len(alone) > 100
    np.testing.assert_allclose(raw, want, rtol=5e-3)  # pixel weights vs the true integral
    # galaxies whose own light in the 24-31 px annulus (the true integral there, scaled to the
    # aperture's area) is under 0.5% of their aperture flux: the local background is then
    # nearly the sky's, and the measured flux must be the profile's integral to 1%
    r_in, r_out = aperture.ANNULUS_PX
    ring = disk_integral(clean, r_out) - disk_integral(clean, r_in)
    wings = ring * aperture.RADIUS_PX**2 / (r_out**2 - r_in**2) / want  # (n, 5)
    quiet = (wings < 0.005).all(axis=1)
    assert quiet.mean() > 0.7 and np.median(re_disk[quiet]) > 1.5  # most, not just the tiny
    np.testing.assert_allclose(phot[quiet], want[quiet], rtol=0.01)
    # every galaxy: the local background takes some of its own wing light in the annulus, never
    # more than its mean there (the median of skewed wings sits below their mean) and never a
    # negative amount (a noiseless image): want (1 - wings) <= phot <= want, to 0.5% of want
    dev = phot / want - 1
    assert np.all(dev >= -wings - 0.005) and np.all(dev <= 0.005)
    assert np.median(np.abs(dev)) < 0.006 and dev.min() < -0.02  # some do lose more than 2%


def test_phot_err_matches_the_scatter_of_repeated_noise_draws(small: Path) -> None:
    with h5py.File(small) as f:
        alone = np.flatnonzero(f["truth/neighbour_kind"][:] == 0)
        r_flux = f["flux"][:, 2][alone]
        crowded = np.flatnonzero(f["truth/neighbour_kind"][:] > 0)
        brightest_crowded = crowded[np.argmax(f["flux"][:, 2][crowded])]
    order = alone[np.argsort(r_flux)]
    n = len(order)
    picks = order[[n // 10, n // 2, 9 * n // 10, n - 1]]  # 10%, 50%, 90% in r flux; brightest
    picks = np.append(picks, brightest_crowded)  # and the brightest with a neighbour
    clean = noiseless(small, picks).astype(np.float32)
    r, gain, draws = render.renderer(), render.universe_gain(), 1000
    rng = np.random.default_rng(1)
    for g in range(len(picks)):
        stack = np.repeat(clean[g : g + 1], draws, axis=0)
        noisy = np.empty_like(stack)
        r.add_noise(stack, rng, noisy)  # the universe's own noise model, 1000 draws
        phot, err = aperture.measure(noisy, gain=gain)
        ratio = phot.std(axis=0) / np.sqrt(np.mean(err**2, axis=0))  # (5,) per band
        # every galaxy, the brightest (r ~ 13, whose wings cross the annulus) too; the std of
        # 1000 draws is itself good to 2.2%
        np.testing.assert_allclose(ratio, 1.0, atol=0.1, err_msg=f"galaxy {picks[g]}")
        # noise barely biases the flux of a galaxy alone: with noise the annulus median moves
        # towards the mean of the galaxy's skewed wing light there (measured: up to 0.4 of one
        # error). Not so with a neighbour in the annulus: noise changes which of its pixels
        # are clipped (this one: 0.9 of an error in r), a bias of phot that phot_err omits
        exact, _ = aperture.measure(clean[g : g + 1])
        bias = np.abs(phot.mean(axis=0) - exact[0])
        assert np.all(bias < (0.5 if g < 4 else 1.0) * phot.std(axis=0))


def _datasets(path: Path) -> dict[str, tuple]:
    out: dict[str, tuple] = {}

    def visit(name: str, obj) -> None:
        if isinstance(obj, h5py.Dataset):
            out[name] = (obj.dtype.str, obj.shape, obj.chunks, obj[()].tobytes(),
                         dict(obj.attrs))  # fmt: skip

    with h5py.File(path) as f:
        f.visititems(visit)
    return out


def _attrs(path: Path) -> dict[str, bytes]:
    with h5py.File(path) as f:
        return {k: np.asarray(v).tobytes() for k, v in f.attrs.items() if k != "content_hash"}


def test_add_photometry_keeps_every_dataset_and_a_valid_hash(
    small: Path, bare: Path, tmp_path: Path
) -> None:
    src = tmp_path / "src.h5"
    shutil.copyfile(bare, src)
    before, old_hash = _datasets(src), validate(src).content_hash
    out = aperture.add_photometry(
        src, tmp_path / "new.h5", gain=render.universe_gain(), progress=False
    )
    after = _datasets(out)
    assert set(after) == set(before) | {"phot", "phot_err"}
    for name, value in before.items():
        assert after[name] == value, name
    assert _attrs(out) == _attrs(src)
    assert _datasets(src) == before  # the input is untouched
    info = validate(out)  # the new hash covers phot and phot_err
    assert info.content_hash != old_hash and validate(src).content_hash == old_hash
    # the same contents as the universe, whose writer filled them: the same content hash
    assert info.content_hash == validate(small).content_hash
    with h5py.File(out) as f:
        images, phot, err = f["images"][:], f["phot"][:], f["phot_err"][:]
    want = aperture.measure(images, gain=render.universe_gain())
    np.testing.assert_array_equal(phot, want[0])
    np.testing.assert_array_equal(err, want[1])
    with h5py.File(out, "r+") as f:  # tampering with phot breaks the hash
        f["phot"][0, 0] += 1
    with pytest.raises(UserError, match="content_hash"):
        validate(out)
    assert not list(tmp_path.glob(".*tmp"))


def test_add_photometry_in_place_is_atomic_and_complete(bare: Path, tmp_path: Path) -> None:
    path = tmp_path / "d.h5"
    shutil.copyfile(bare, path)
    before = _datasets(path)
    assert aperture.add_photometry(path, gain=render.universe_gain(), progress=False) == path
    after = _datasets(path)
    assert {k: after[k] for k in before} == before
    validate(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.h5"]


def test_bad_input_is_one_line_naming_the_file_and_fix(
    small: Path, bare: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    text = tmp_path / "notes.h5"
    text.write_text("not hdf5")
    with pytest.raises(UserError, match=f"{text}: not a readable HDF5 file"):
        aperture.add_photometry(text, progress=False)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(UserError, match=f"{other}: file attribute 'format' is missing; rebuild"):
        aperture.add_photometry(other, progress=False)
    with pytest.raises(UserError, match=f"{small}: already has dataset 'phot'"):
        aperture.add_photometry(small, progress=False)  # a universe is built with them
    done = aperture.add_photometry(
        bare, tmp_path / "done.h5", gain=render.universe_gain(), progress=False
    )
    with pytest.raises(UserError, match=f"{done}: already has dataset 'phot'.*nothing to add"):
        aperture.add_photometry(done, progress=False)
    with pytest.raises(UserError, match="output exists; choose another --out or pass --force"):
        aperture.add_photometry(bare, done, gain=render.universe_gain(), progress=False)
    with pytest.raises(UserError, match=f"{bare}: a synthetic file's phot_err needs .* gain="):
        aperture.add_photometry(bare, tmp_path / "no-gain.h5", progress=False)
    assert data_main(["photometry", str(done)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {done}: already has") and "\n" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["done.h5", "notes.h5", "other.h5"]


def test_cli_writes_a_new_file(small: Path, bare: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli.h5"
    argv = ["photometry", str(bare), "--out", str(out), "--gain", "1", "1", "1", "1", "1"]
    assert data_main(argv) == 0
    with h5py.File(out) as f:
        images, phot = f["images"][:8], f["phot"][:8]
        assert f["phot"].attrs["unit"] == "nanomaggies"
    np.testing.assert_array_equal(phot, aperture.measure(images, gain=np.ones(5))[0])
    default = tmp_path / "default.h5"  # a synthetic file, no --gain: the universe's own
    assert data_main(["photometry", str(bare), "--out", str(default)]) == 0
    assert validate(default).content_hash == validate(small).content_hash


def test_validate_checks_measured_photometry(bare: Path, tmp_path: Path) -> None:
    out = aperture.add_photometry(
        bare, tmp_path / "p.h5", gain=render.universe_gain(), progress=False
    )
    bad = tmp_path / "bad.h5"
    shutil.copyfile(out, bad)
    with h5py.File(bad, "r+") as f:
        f["phot_err"][3, 1] = np.inf
    with pytest.raises(UserError, match="dataset 'phot_err' is infinite .* at index 3"):
        validate(bad, check_hash=False)
    with h5py.File(bad, "r+") as f:
        del f["phot_err"]
    with pytest.raises(UserError, match="'phot' and 'phot_err' come together"):
        validate(bad, check_hash=False)
