"""Photometry measured from the pixels: ``phot`` and ``phot_err`` (N, 5), nanomaggies.

What a catalogue-based peer (RAIL's KNN, FlexZBoost, BPZ) is given instead of the synthetic
noiseless ``flux``: for each cutout and band, the flux of the central source inside a fixed
circular aperture, minus a local background, with its error from the pixel noise.

- Aperture: a circle of radius ``RADIUS_PX`` = 8 px (3.2") around pixel (32, 32), photutils'
  exact pixel-overlap weights. Measured on the universe (docs/peers.md, ``python -m
  benchmarks.aperture choice``): it holds a median 78% of a galaxy's r-band light, and it is
  the smallest radius whose u/r enclosed-light ratio (the colour bias from u's wider PSF) is
  within 0.5% of 1 at the median and 2.2% at the 10th percentile (4 px: 4.3% and 9%); wider
  apertures gain little light (10 px: 85%) for sky noise growing as the radius.
- Background: the sigma-clipped (3 sigma, 10 iterations, astropy's defaults) median of the
  annulus ``ANNULUS_PX`` = 24-31 px (photutils 'center' pixels, 1,209 of them), as photutils'
  ``ApertureStats(..., sigma_clip=SigmaClip())``. So far out, the galaxy's own wings add a
  median 0.24% of its aperture flux to the background (90% of galaxies below 1%).
- Error: ``phot_err^2 = s^2 sum(w^2) + (sum w)^2 (pi/2) s^2 / n_kept + max(phot, 0) / gain``:
  the pixel noise inside the aperture (w: the aperture weights), the uncertainty of the
  background median (pi/2 times that of a mean; n_kept: the annulus pixels the clipping
  kept), and, when the gain (electrons per nanomaggy) is known, the source's Poisson noise.
  s is the per-pixel noise from the 1,100 pairs of horizontally adjacent annulus pixels: the
  3-sigma-clipped std of their differences / sqrt 2 / 0.985 (a clipped Gaussian's std is
  1.5% low, ``CLIPPED_STD``). Until universe VERSION 5, s was the clipped std of the annulus
  values themselves, which also counts a bright galaxy's wing gradient across the annulus as
  noise: for the brightest galaxy of the tests (r = 13.0, its r-band s 1.7x the noise) the
  scatter of 1,000 noise draws was 0.89 of phot_err in r; now 1.01 (tests/test_aperture.py).

Speed: photutils' ``aperture_photometry`` and ``ApertureStats`` take one 2-D image at a time
(and astropy's SigmaClip along an axis of a whole stack reaches about 1,000 galaxies/s on
its own, measured). Every cutout has the same centre
and aperture, so the photutils masks are made once and applied to a whole stack: the aperture
sum is a weighted sum over the ~220 pixels the circle touches, and the clipped statistics run
on the annulus pixels sorted once per row, where each clipping pass only narrows a contiguous
range (the same values as astropy's
``SigmaClip``; tested against ``ApertureStats`` image by image): about 3,000 galaxies/s on
two shared cores (``python -m benchmarks.aperture rate``), the sort of the annulus pixels
being most of it. The pixel-noise estimate (VERSION 5) sorts the 1,100 pixel differences too:
1,597 against 2,856 galaxies per CPU-second before it (one thread, 2,048 demo cutouts, in
process, best of 3), about 3% of a universe build's CPU.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from tqdm import tqdm

from study.data.layout import ANNULUS_PX, MEASURED, PHOT_ATTRS, RADIUS_PX
from study.errors import UserError
from study.files import refuse_existing

CENTRE = (32.0, 32.0)  # (x, y) of the galaxy in photutils' convention (pixel centres at integers)
SIGMA = 3.0  # sigma-clipping threshold (astropy SigmaClip's default)
MAXITERS = 10  # sigma-clipping passes at most (astropy SigmaClip's default)
MEDIAN_VAR = np.pi / 2  # variance of a large sample's median / variance of its mean (Gaussian)


def clipped_gaussian_std(k: float = SIGMA) -> float:
    """std of a Gaussian sample after iterated k-sigma clipping / its true std (0.985 at 3).

    The clipping keeps |x - centre| <= k s, where s is the std of what it keeps; at convergence
    s / sigma = c solves c^2 = 1 - 2 t phi(t) / (2 Phi(t) - 1) with t = k c (the variance of a
    Gaussian truncated at +-t).
    """
    c = 1.0
    for _ in range(100):  # a contraction: converged to 1e-16 in fewer than 30 passes
        t = k * c
        phi = math.exp(-t * t / 2) / math.sqrt(2 * math.pi)
        c = math.sqrt(1 - 2 * t * phi / math.erf(t / math.sqrt(2)))
    return c


CLIPPED_STD = clipped_gaussian_std()  # 0.98485: a 3-sigma-clipped std is 1.5% low
# galaxies per internal block of `measure` (no bit depends on it): at 64 its ~6 MB of
# prefix sums are reused heap memory; at 1024 (100 MB) each block faulted in fresh pages,
# 0.6 of 1.7 CPU-s per 4,096 galaxies in system time (measured: 4,600 vs 2,500 gal/CPU-s)
BLOCK = 64
# the attributes of both datasets, wherever they are written (here, and study.data.writer for
# the universe and the converters)


@functools.lru_cache(maxsize=8)
def masks(
    radius: float = RADIUS_PX,
    annulus: tuple[float, float] = ANNULUS_PX,
    centre: tuple[float, float] = CENTRE,
    size: int = 64,
) -> tuple[np.ndarray, np.ndarray]:
    """The photutils masks of the aperture and the annulus on a (size, size) cutout.

    Returns:
        ``weights`` (size * size,) float64: the exact fraction of each pixel inside the circle;
        ``annulus_index`` (n_ann,) int64: the flat indices of the annulus' 'center' pixels.
    """
    from photutils.aperture import CircularAnnulus, CircularAperture

    shape = (size, size)
    weights = CircularAperture(centre, radius).to_mask(method="exact").to_image(shape)
    ring = CircularAnnulus(centre, *annulus).to_mask(method="center").to_image(shape)
    return weights.ravel().astype(np.float64), np.flatnonzero(ring.ravel() > 0)


@functools.lru_cache(maxsize=8)
def noise_pairs(
    annulus: tuple[float, float] = ANNULUS_PX,
    centre: tuple[float, float] = CENTRE,
    size: int = 64,
) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices ``(left, right)`` of the annulus pixels whose right-hand neighbour is in
    the annulus too (1,100 pairs for 24-31 px): the differences of their values hold the
    pixel noise without the smooth light (a galaxy's wings) across the annulus."""
    _, ring = masks(RADIUS_PX, annulus, centre, size)
    inside = np.zeros(size * size, bool)
    inside[ring] = True
    left = ring[(ring % size != size - 1) & inside[np.minimum(ring + 1, size * size - 1)]]
    return left, left + 1


def clipped_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sigma-clipped median, std and count of each row, as astropy ``SigmaClip()`` + nanmedian.

    Clipping keeps the values within [median - 3 std, median + 3 std] of the values kept so
    far, so in sorted order the kept values are always one contiguous range [lo, hi): sort
    once, then each pass only moves two indices. Medians are read off the range; sums over it
    are differences of the row's prefix sums (float64), so each row's result depends on that
    row alone, never on the other rows measured with it (a universe's ``phot`` is then the
    same bits whatever its size, and a conversion's whatever its ``--chunk``).

    Args:
        x: (M, n) values, one row per image and band.

    Returns:
        (M,) median, (M,) std (ddof 0) and (M,) number of values kept.
    """
    s = np.sort(x, axis=1)  # (M, n) in the input dtype (float32: the sort is the main cost)
    prefix = np.zeros((2, len(s), s.shape[1] + 1))  # [0]: sums, [1]: sums of squares
    np.cumsum(s, axis=1, dtype=np.float64, out=prefix[0, :, 1:])
    np.cumsum(np.square(s, dtype=np.float64), axis=1, out=prefix[1, :, 1:])
    lo, hi = np.zeros(len(s), np.int64), np.full(len(s), s.shape[1], np.int64)
    for _ in range(MAXITERS):
        med, std = _range_stats(s, prefix, lo, hi)
        new_lo = np.maximum(lo, (s < (med - SIGMA * std)[:, None]).sum(axis=1))
        new_hi = np.minimum(hi, (s <= (med + SIGMA * std)[:, None]).sum(axis=1))
        if np.array_equal(new_lo, lo) and np.array_equal(new_hi, hi):
            break
        lo, hi = new_lo, new_hi
    med, std = _range_stats(s, prefix, lo, hi)
    return med, std, hi - lo


def _range_stats(
    s: np.ndarray, prefix: np.ndarray, lo: np.ndarray, hi: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Median and std (ddof 0) of each sorted row's values ``s[i, lo[i]:hi[i]]``."""
    rows = np.arange(len(s))
    n = hi - lo
    med = 0.5 * (s[rows, lo + (n - 1) // 2].astype(np.float64) + s[rows, lo + n // 2])
    sum1 = prefix[0, rows, hi] - prefix[0, rows, lo]
    sum2 = prefix[1, rows, hi] - prefix[1, rows, lo]
    mean = sum1 / n
    return med, np.sqrt(np.maximum(sum2 / n - mean * mean, 0.0))


def measure(
    images: np.ndarray,
    *,
    gain: np.ndarray | None = None,
    radius: float = RADIUS_PX,
    annulus: tuple[float, float] = ANNULUS_PX,
    threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Aperture photometry of the central source of each cutout, with a local background.

    Args:
        images: (N, 5, 64, 64) nanomaggies per pixel, sky-subtracted (float32 or float16).
        gain: (5,) electrons per nanomaggy per band, for the source's Poisson noise; None
            (unknown, e.g. real cutouts without their frames' calibration) leaves it out, so
            ``phot_err`` is then the background-limited error, too small for bright galaxies.
        radius: aperture radius, pixels.
        annulus: inner and outer radius of the background annulus, pixels.
        threads: blocks of BLOCK cutouts measured at once (default: the CPUs, at most 4).

    Returns:
        ``phot`` (N, 5) and ``phot_err`` (N, 5) float32, nanomaggies.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1:] != (5, 64, 64):
        raise ValueError(f"images must be (N, 5, 64, 64), got {images.shape}")
    g = None if gain is None else np.asarray(gain, np.float64).reshape(1, 5)
    phot = np.empty(images.shape[:2], np.float32)
    err = np.empty(images.shape[:2], np.float32)

    def one(s: int) -> None:
        rows = slice(s, s + BLOCK)
        phot[rows], err[rows] = _measure_block(images[rows], g, radius, annulus)

    starts = range(0, len(images), BLOCK)
    n_threads = min(len(starts), threads or min(os.cpu_count() or 1, 4))
    if n_threads <= 1:
        for s in starts:
            one(s)
    else:  # numpy's sort, take and matmul release the GIL: blocks run side by side
        with ThreadPoolExecutor(n_threads, thread_name_prefix="aperture") as pool:
            list(pool.map(one, starts))
    return phot, err


def _measure_block(
    images: np.ndarray, gain: np.ndarray | None, radius: float, annulus: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """``measure`` on one block of at most BLOCK cutouts, float64 inside."""
    weights, ring = masks(float(radius), (float(annulus[0]), float(annulus[1])))
    flat = images.reshape(len(images) * 5, -1)  # (M, 4096): one row per image and band
    inside = np.flatnonzero(weights)  # the ~220 pixels the circle touches
    # a float64 sum per row rather than a BLAS product: BLAS kernels group the sums by CPU,
    # thread count and row count, and the universe's bytes may depend on none of them
    total = (np.take(flat, inside, axis=1).astype(np.float64) * weights[inside]).sum(axis=1)
    bkg, _, kept = clipped_stats(np.take(flat, ring, axis=1))  # take: 6x faster than [:, ring]
    noise = _pixel_noise(flat, annulus)
    area, area2 = weights.sum(), (weights * weights).sum()
    phot = (total - bkg * area).reshape(-1, 5)
    var = noise * noise * (area2 + area * area * MEDIAN_VAR / kept)  # pixels + background median
    var = var.reshape(-1, 5)
    if gain is not None:
        var = var + np.maximum(phot, 0.0) / gain  # the source's own Poisson noise
    return phot, np.sqrt(var)


def _pixel_noise(flat: np.ndarray, annulus: tuple[float, float]) -> np.ndarray:
    """(M,) per-pixel noise std in the annulus: the clipped std of the differences of
    horizontally adjacent annulus pixels, / sqrt 2, / CLIPPED_STD.

    Not the clipped std of the annulus values themselves: a bright galaxy's wings still fall
    across the annulus, and their spread (not noise) inflated that std up to 1.7x in r for the
    brightest galaxies, so phot_err was 12% too large in r for the brightest test galaxy. Adjacent pixels share the smooth
    light; their difference is the noise of two pixels (independent pixel noise assumed, as
    the sum over the aperture already assumes). Its wing part (the Poisson noise of the wing
    light in the annulus) stands for that of the wing light under the aperture, which the
    background subtraction removed from ``phot`` and so from the ``phot / gain`` term.
    """
    left, right = noise_pairs((float(annulus[0]), float(annulus[1])))
    diff = np.take(flat, left, axis=1).astype(np.float32) - np.take(flat, right, axis=1)
    _, std, _ = clipped_stats(diff)
    return std / (math.sqrt(2.0) * CLIPPED_STD)


def _check_input(src: Path, dst: Path, overwrite: bool, gain: np.ndarray | None) -> Any:
    """Structure of ``src`` (a UserError if it is not photoz-study/1, already measured, or
    synthetic without the universe's gain)."""
    from study.data.dataset import read_info

    info = read_info(src)  # a one-line UserError for a missing, non-HDF5 or non-photoz file
    with h5py.File(src, "r") as f:
        have = [k for k in MEASURED if k in f]
    if have:
        raise UserError(
            f"{src}: already has dataset '{have[0]}' (measured photometry); nothing to add: "
            "use the file as it is, or measure again from a copy without 'phot'/'phot_err'"
        )
    if gain is None and info.source == "synthetic":
        raise UserError(
            f"{src}: a synthetic file's phot_err needs the universe's gain (its source Poisson "
            "noise); pass gain=study.universe.render.universe_gain() (`python -m study.data "
            "photometry` does)"
        )
    if dst != src:
        refuse_existing(dst, overwrite=overwrite)
    if dst.is_dir():
        raise UserError(f"{dst}: --out is a directory; give a file name such as {dst}/data.h5")
    return info


def _create_measured(f: h5py.File, n: int) -> None:
    """Empty ``phot``/``phot_err`` (n, 5) float32, allocated up front, without timestamps."""
    from study.data.writer import create_dataset

    for name in MEASURED:
        create_dataset(f, name, (n, 5), np.dtype("<f4"), None, PHOT_ATTRS)


def _hashed_names(f: h5py.File) -> list[str]:
    """The datasets the content hash covers (as ``validate``), less ``phot``/``phot_err``."""
    from study.data.writer import CORE_DATASETS

    names = [k for k in (*CORE_DATASETS, "flux_table", "source_mask") if k in f]
    names += [f"truth/{k}" for k in f["truth"]] if "truth" in f else []
    return sorted(names)


def _fill(f: h5py.File, src: Path, gain: np.ndarray | None, progress: bool) -> None:
    """Measure every cutout into ``phot``/``phot_err`` and rewrite ``content_hash``.

    One pass over the file: each dataset is hashed as it is read (``images`` is measured in
    the same pass); the old digests must reproduce the stored ``content_hash`` (the input was
    intact), and the new hash adds the measured datasets.
    """
    from study.data.dataset import digest_dataset, file_content_hash

    n = f["zs"].shape[0]
    bar = tqdm(total=n, unit="gal", desc=f"photometry {src.name}", disable=not progress)

    def on_images(s: int, block: np.ndarray) -> None:
        f["phot"][s : s + len(block)], f["phot_err"][s : s + len(block)] = measure(block, gain=gain)
        bar.update(len(block))

    with bar:
        old = {
            k: digest_dataset(f[k], on_images if k == "images" else None) for k in _hashed_names(f)
        }
    if file_content_hash(f, old) != str(f.attrs.get("content_hash", "")):
        raise UserError(
            f"{src}: attribute 'content_hash' does not match the content (modified or corrupt "
            "file); rebuild it with `python -m study.data convert` / `universe` first"
        )
    f.attrs["content_hash"] = file_content_hash(
        f, old | {k: digest_dataset(f[k]) for k in MEASURED}
    )


def add_photometry(
    path: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    gain: np.ndarray | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Add ``phot`` and ``phot_err`` to a photoz-study/1 file; nothing the user has is lost.

    The file is copied byte for byte to a temporary name beside the output; the two datasets
    are added to the copy, ``content_hash`` is recomputed (it now covers them), the copy is
    validated, flushed to disk and only then renamed onto ``out`` (default: ``path`` itself,
    an atomic in-place addition). Every existing dataset and attribute other than
    ``content_hash`` keeps its bytes; an interruption leaves the original untouched. Needs
    free space for one copy of the file.

    Args:
        path: an existing photoz-study/1 file without ``phot``.
        out: where the new file goes; None replaces ``path`` atomically.
        gain: (5,) electrons per nanomaggy for the source Poisson term of ``phot_err``; None:
            background-only errors (real cutouts without their frames' calibration). A
            synthetic file needs its universe's, ``study.universe.render.universe_gain()``
            (this data package does not import the universe; the CLI passes it in).
        overwrite: replace an existing ``out`` (never ``path``'s own bytes before the rename).
        progress: a tqdm bar on stderr.

    Returns:
        The path written.
    """
    from study.data.dataset import amend_copy

    src = Path(path)
    dst = src if out is None else Path(out)
    info = _check_input(src, dst, overwrite, gain)

    def edit(f: h5py.File) -> None:
        _create_measured(f, info.n)
        _fill(f, src, gain, progress)

    return amend_copy(src, dst, edit)


def add_photometry_parser(
    subparsers: Any, universe_gain: Callable[[], np.ndarray]
) -> argparse.ArgumentParser:
    """Add the ``photometry`` subcommand to ``python -m study.data``.

    ``universe_gain``: the synthetic universe's (5,) gain, the default ``--gain`` of synthetic
    files (``study.data.__main__`` passes ``study.universe.render.universe_gain``).
    """
    p = subparsers.add_parser(
        "photometry",
        help="add measured aperture photometry (phot, phot_err) to a photoz-study/1 file",
        description=(__doc__ or "").split("\n")[0],
    )
    p.add_argument("input", type=Path, help="a photoz-study/1 file without 'phot'")
    p.add_argument("--out", type=Path, help="write a new file here (default: add in place)")
    p.add_argument("--gain", type=float, nargs=5, metavar="G",
                   help="electrons per nanomaggy, u g r i z (default: the universe's for "
                        "synthetic files, background-only errors otherwise)")  # fmt: skip
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.set_defaults(func=photometry_command, universe_gain=universe_gain)
    return p


def photometry_command(args: argparse.Namespace) -> int:
    """Handler of ``python -m study.data photometry``; raises UserError on bad input."""
    from study.data.dataset import read_info

    gain = None if args.gain is None else np.asarray(args.gain, np.float64)
    if gain is not None and not np.all(gain > 0):
        raise UserError(f"--gain must be five positive numbers, got {args.gain}")
    if gain is None and read_info(args.input).source == "synthetic":
        gain = args.universe_gain()
    out = add_photometry(args.input, args.out, gain=gain, overwrite=args.force)
    print(f"wrote {out} (phot, phot_err: {RADIUS_PX:g} px aperture)")
    return 0
