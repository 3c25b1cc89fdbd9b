"""Benchmark: the flux table of N galaxies x C bins from L-point spectra (study.data.photometry).

    python -m benchmarks.flux_table --n 10000 --bins 180 --length 4000 --repeats 3 [--threads T]

Prints wall and process-CPU seconds per call (median, min-max over repeats; CPU time sums the
threads, so on a machine shared with other jobs it shows this job's own work) and the largest
difference from the plain trapezoid rule on explicitly shifted spectra (a few galaxies, every
bin), so the speed never comes at the cost of the 1e-5 agreement SPEC 2 asks for.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics

import numpy as np

from benchmarks.timing import Clock
from study.data.layout import bin_centers, bin_edges
from study.data.photometry import MAX_THREADS, band_fluxes, flux_table


def make_inputs(n: int, bins: int, length: int, seed: int = 0):
    """SDSS-like log-spaced grid 3800-9200 A, positive spectra with features, zs in [0, 0.4]."""
    rng = np.random.default_rng(seed)
    wave = np.geomspace(3800.0, 9200.0, length)
    scale = rng.uniform(30.0, 600.0, (n, 1)).astype(np.float32)
    flux = (1.2 + np.sin(wave.astype(np.float32) / scale)) * 1e-17  # (n, L) erg/s/cm^2/A
    zs = rng.uniform(0.0, 0.4, n)
    return wave, flux.astype(np.float32), zs, bin_centers(bin_edges(bins))


def max_error(wave, flux, zs, centers, table, k: int = 5) -> float:
    """Largest |T - T_ref| over k galaxies, T_ref from band_fluxes on the stretched grid."""
    worst = 0.0
    for i in range(k):
        base = band_fluxes(wave, flux[i])
        for c, zc in enumerate(centers):
            ref = band_fluxes(wave * (1 + zc) / (1 + zs[i]), flux[i]) / base
            worst = max(worst, float(np.nanmax(np.abs(table[i, :, c] - ref))))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--n", type=int, default=10000, help="galaxies")
    parser.add_argument("--bins", type=int, default=180, help="redshift bins C")
    parser.add_argument("--length", type=int, default=4000, help="points per spectrum L")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="default: usable cores, <= 8")
    args = parser.parse_args()
    wave, flux, zs, centers = make_inputs(args.n, args.bins, args.length)
    flux_table(wave, flux[:8], zs[:8], centers)  # warm-up: filter curves and knot tables cached
    walls, cpus = [], []
    for _ in range(args.repeats):
        with Clock() as clock:
            table = flux_table(wave, flux, zs, centers, threads=args.threads)
        walls.append(clock.wall)
        cpus.append(clock.cpu)
    err = max_error(wave, flux, zs, centers, table)
    threads = args.threads or min(MAX_THREADS, len(os.sched_getaffinity(0)))
    print(f"flux_table n={args.n} bins={args.bins} L={args.length} repeats={args.repeats} "
          f"threads={threads} ({platform.machine()}, {os.cpu_count()} cores, numpy {np.__version__})")  # fmt: skip
    for name, xs in (("wall", walls), ("cpu", cpus)):
        print(
            f"  {name}: median {statistics.median(xs):.2f} s, min {min(xs):.2f}, max {max(xs):.2f}"
        )
    print(f"  max |T - plain trapezoid| over 5 galaxies x {args.bins} bins: {err:.1e}")


if __name__ == "__main__":
    main()
