"""Template-fit flux tables (study.data.templates) measured on the universe, where T is known.

    python -m benchmarks.templates accuracy --n 4096 [--seed 0]
    python -m benchmarks.templates speed --n 20000 --repeats 3

``accuracy``: the exact T of each galaxy (its true template coefficients, the same whole-range
SED, ``templates.table_maker``) against T from fits to (a) the noiseless catalogue fluxes,
(b) the same fitted with our own sdss2010 filters (a direct NNLS on ``sed.template_tables``:
what the kcorrect responses cost), (c) the catalogue fluxes with SDSS-like errors (``SIGMA``).
Printed: median and 90th percentile of |T_fit - T_exact| by band and by |z_c - zs|.
``speed``: galaxies per second of fit + table (``templates.table_for_rows``) in this process,
after the one-off set-up (kcorrect's design matrix, the table maker), median and min-max.
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np

from benchmarks.timing import Clock
from study.data import templates
from study.data.layout import BANDS, bin_centers, bin_edges

# SDSS-like Petrosian flux errors: a calibration floor plus a sky term, 1/5 of the 5-sigma point-
# source depth (u 22.0, g 22.2, r 22.2, i 21.3, z 20.5) doubled for the larger aperture
FLOOR = np.array([0.03, 0.01, 0.01, 0.01, 0.02])
DEPTH = np.array([22.0, 22.2, 22.2, 21.3, 20.5])
DZ_EDGES = (0.0, 0.01, 0.03, 0.1, 0.4)
DZ_BINS = list(zip(DZ_EDGES[:-1], DZ_EDGES[1:], strict=True))


def sdss_like_errors(flux: np.ndarray) -> np.ndarray:
    sky = 2 * 10 ** (-0.4 * (DEPTH - 22.5)) / 5  # nanomaggies
    return np.sqrt((FLOOR * flux) ** 2 + sky**2)


def _own_filter_fit(cat: dict, maggies: np.ndarray, ivar: np.ndarray) -> np.ndarray:
    from scipy.optimize import nnls

    from study.universe import sed

    tt = sed.template_tables()
    pos = np.interp(cat["zs"], sed.Z_TABLE, np.arange(sed.Z_TABLE.size))
    i = np.minimum(pos.astype(int), sed.Z_TABLE.size - 2)
    frac = (pos - i)[:, None, None]
    design = (tt.bz[i] * (1 - frac) + tt.bz[i + 1] * frac).transpose(0, 2, 1)  # (N, 5, K)
    w = np.sqrt(ivar)
    return np.array([nnls(design[j] * w[j][:, None], maggies[j] * w[j])[0] for j in range(len(w))])


def accuracy(n: int, seed: int) -> None:
    from study.universe import build

    cat = build.build_catalogue(n, seed)
    centers = bin_centers(bin_edges())
    maker = templates.table_maker(tuple(centers))
    exact = maker(cat["truth/coeffs_bulge"] + cat["truth/coeffs_disk"], cat["zs"])
    rng = np.random.default_rng(seed + 1)
    err = sdss_like_errors(cat["flux"])
    noisy = cat["flux"] + err * rng.standard_normal(err.shape)
    maggies, ivar = templates.fit_input(cat["flux"], None, cat["ebv"], ab_correct=False)
    cases = {
        "noiseless, kcorrect sdss_u0..z0": templates.template_table(
            cat["zs"], maggies, ivar, centers
        ),
        "noiseless, our sdss2010 filters": maker(_own_filter_fit(cat, maggies, ivar), cat["zs"]),
        "SDSS-like errors, kcorrect": templates.table_for_rows(
            cat["zs"], cat["ebv"], noisy, err, centers, "synthetic"
        ),
    }
    dz = np.abs(centers[None, :] - cat["zs"][:, None])  # (N, C)
    print(f"n = {n} galaxies (seed {seed}), |T_fit - T_exact|: median / 90th percentile")
    head = " | ".join(f"\\|dz\\| {lo:g}-{hi:g}" for lo, hi in DZ_BINS)
    for name, table in cases.items():
        diff = np.abs(table - exact)  # (N, 5, C)
        print(f"\n{name}\n| band | {head} |\n|---|" + "---|" * (len(DZ_EDGES) - 1))
        for b, band in enumerate(BANDS):
            cells = []
            for lo, hi in DZ_BINS:
                d = diff[:, b][(dz >= lo) & (dz < hi)]
                d = d[np.isfinite(d)]
                cells.append(f"{np.median(d):.4f} / {np.percentile(d, 90):.4f}")
            print(f"| {band} | " + " | ".join(cells) + " |")


def speed(n: int, repeats: int) -> None:
    from study.universe import build

    cat = build.build_catalogue(n, 0)
    centers = bin_centers(bin_edges())
    with Clock() as setup:
        templates.table_for_rows(cat["zs"][:10], cat["ebv"][:10], cat["flux"][:10], None,
                                 centers, "synthetic")  # fmt: skip
    print(f"set-up (kcorrect design matrix, table maker): {setup.wall:.1f} s")
    rates = []
    for _ in range(repeats):
        with Clock() as clock:
            for s in range(0, n, templates.BATCH):
                sl = slice(s, s + templates.BATCH)
                templates.table_for_rows(cat["zs"][sl], cat["ebv"][sl], cat["flux"][sl], None,
                                         centers, "synthetic")  # fmt: skip
        rates.append(n / clock.wall)
    print(
        f"fit + table: {statistics.median(rates):.0f} galaxies/s (median of {repeats}, "
        f"{min(rates):.0f}-{max(rates):.0f}), n = {n}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.templates")
    sub = parser.add_subparsers(dest="what", required=True)
    a = sub.add_parser("accuracy")
    a.add_argument("--n", type=int, default=4096)
    a.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("speed")
    s.add_argument("--n", type=int, default=20000)
    s.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.what == "accuracy":
        accuracy(args.n, args.seed)
    else:
        speed(args.n, args.repeats)


if __name__ == "__main__":
    main()
