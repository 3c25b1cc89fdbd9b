"""Measured photometry: its speed and the measurements behind the aperture choice.

    python -m benchmarks.aperture rate --data FILE.h5 [--repeats 5] [--threads T]
    python -m benchmarks.aperture choice --data FILE.h5 [--n 1500]

``rate`` times ``study.data.aperture.measure`` on every cutout of the file, already in memory
(median and min-max galaxies/s over the repeats; the load average first: the machine may be
shared). ``choice`` re-renders the noiseless cutouts of galaxies without neighbours from a
synthetic file's truth and prints, per aperture radius, the median fraction of the total r
flux inside and the u/r ratio of those fractions (the colour's PSF bias), and per background
annulus the galaxy's own light the median takes away.
"""

from __future__ import annotations

import argparse
import os
import statistics

import h5py
import numpy as np

from benchmarks.timing import Clock
from study.data import aperture

GALAXY = ("re_bulge_arcsec", "re_disk_arcsec", "q_bulge", "q_disk", "pa_rad", "flux_bulge")
GALAXY += ("flux_disk", "offset_px")
OBSERVING = ("psf_fwhm_arcsec", "neighbour_kind", "neighbour_offset_px", "neighbour_flux")
OBSERVING += ("neighbour_re_arcsec", "neighbour_q", "neighbour_pa_rad")


def rate(path: str, repeats: int, threads: int | None) -> None:
    with h5py.File(path, "r") as f:
        images = f["images"][:]
    print(f"load average {os.getloadavg()[0]:.2f}; n = {len(images)}; threads = {threads}")
    aperture.measure(images[:64], threads=threads)  # masks built, code warm
    rates = []
    for _ in range(repeats):
        with Clock() as clock:
            aperture.measure(images, threads=threads)
        rates.append(len(images) / clock.wall)
    print(f"measure: median {statistics.median(rates):.0f} galaxies/s over {repeats} repeats "
          f"(min {min(rates):.0f}, max {max(rates):.0f})")  # fmt: skip


def noiseless(path: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(m, 5, 64, 64) noiseless cutouts of the first n galaxies without neighbours, and flux."""
    from study.universe import render

    with h5py.File(path, "r") as f:
        truth = {k: f[f"truth/{k}"][:] for k in GALAXY + OBSERVING}
        flux = f["flux"][:]
    rows = np.flatnonzero(truth["neighbour_kind"] == 0)[:n]
    r, out = render.renderer(), []
    for s in range(0, len(rows), 32):
        sl = rows[s : s + 32]
        g = {k: truth[k][sl] for k in GALAXY}
        out.append(np.array(r.noiseless(g, {k: truth[k][sl] for k in OBSERVING}), np.float64))
    return np.concatenate(out), flux[rows]


def choice(path: str, n: int) -> None:
    images, flux = noiseless(path, n)
    print(f"{len(images)} galaxies without neighbours (noiseless re-renders)")
    for radius in (3, 4, 6, 8, 10, 12, 16):
        weights, _ = aperture.masks(float(radius))
        frac = images.reshape(len(images), 5, -1) @ weights / flux
        ratio = frac[:, 0] / frac[:, 2]
        print(f"  r = {radius:2d} px: r-band light inside median {np.median(frac[:, 2]):.3f} "
              f"(10%: {np.quantile(frac[:, 2], 0.1):.3f}); u/r fraction ratio median "
              f"{np.median(ratio):.4f} (10%: {np.quantile(ratio, 0.1):.4f})")  # fmt: skip
    weights, _ = aperture.masks()
    inside = images.reshape(len(images), 5, -1) @ weights
    for annulus in ((16.0, 24.0), (20.0, 28.0), (24.0, 31.0)):
        _, ring = aperture.masks(aperture.RADIUS_PX, annulus)
        wings = np.median(images.reshape(len(images), 5, -1)[:, 2, ring], axis=1)
        taken = wings * weights.sum() / inside[:, 2]
        print(f"  annulus {annulus[0]:g}-{annulus[1]:g} px: own light taken, r band, median "
              f"{np.median(taken):.4f}, 90% {np.quantile(taken, 0.9):.4f}, below 1% for "
              f"{np.mean(taken < 0.01):.1%}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.aperture", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("rate")
    p.add_argument("--data", required=True)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p = sub.add_parser("choice")
    p.add_argument("--data", required=True)
    p.add_argument("--n", type=int, default=1500)
    args = parser.parse_args(argv)
    if args.command == "rate":
        rate(args.data, args.repeats, args.threads)
    else:
        choice(args.data, args.n)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
