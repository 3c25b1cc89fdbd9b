"""The CDE loss's scale (issue 13): which normalisation the paper's Table 1 values are on.

The paper writes the Izbicki & Lee loss as ``int f^2 dz - 2 f(zs)`` and reports about -8e-4
for networks of sigma_nmad near 0.012; our ``cde_loss`` (density units, SPEC 2) is about -20
for such a network. The text fixes neither the unit of ``f`` nor the averaging, so this module
puts each plausible reading on the same CDEs and says which one the paper's numbers allow:

- ``candidates``: each normalisation on calibrated Gaussian CDEs of a given sigma_nmad, its
  range (a uniform CDE to a perfect one-bin CDE) and the Gaussian width at which it would
  equal a paper value; with run directories, also on their own test CDEs.
- ``compare``: two sets of runs paired by seed (e.g. the demo ``constrained`` group at the two
  training scales): each metric per seed, the seed means, the paired difference with the
  repository's CIs (``analysis.stats.paired_comparison`` over seeds and, per seed,
  ``analysis.verdict.paired_bootstrap`` over galaxies).

``python -m analysis.cde_scale candidates [RUN_DIR ...]`` and
``python -m analysis.cde_scale compare --a RUN_DIR ... --b RUN_DIR ...``; README "The CDE
term's scale" shows both with their output.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import special

from analysis.results import load_predictions, load_run_config, load_run_metrics
from analysis.stats import paired_comparison
from analysis.verdict import paired_bootstrap, per_galaxy
from study.data.layout import bin_edges
from study.errors import UserError

PAPER_VALUES = {"baseline": -8.34e-4, "baseline_aug": -7.69e-4, "constrained": -8.04e-4}
PAPER_SIGMA_NMAD = 0.0117  # the paper's two baselines (constrained: 0.0112)
MEDIAN_Z = 0.1  # SDSS main galaxy sample (SPEC 5)
COMPARE_METRICS = ("sigma_nmad", "outlier_frac", "cde_loss", "bias")

# Each reading of "int f^2 dz - 2 f(zs)" as a function of (sum_c p_c^2, p at the bin of zs,
# dz, C), per galaxy; f = p / dz is the density.
Reading = Callable[[np.ndarray, np.ndarray, float, int], np.ndarray]
READINGS: dict[str, tuple[str, Reading]] = {
    "density": ("sum f^2 dz - 2 f(zs), f = p/dz (ours, qp, RAIL)", lambda s, t, dz, c: (s - 2 * t) / dz),
    "probability": ("sum p^2 - 2 p(zs) (f read as the bin probability)", lambda s, t, dz, c: s - 2 * t),
    "paper": ("(sum p^2 - 2 p(zs)) / C (torch.mean over batch and bins)", lambda s, t, dz, c: (s - 2 * t) / c),
    "unit_interval": ("density on z rescaled to [0, 1] (f = C p)", lambda s, t, dz, c: c * (s - 2 * t)),
    "density_over_C": ("density, then a mean over bins", lambda s, t, dz, c: (s - 2 * t) / dz / c),
    "mixed": ("trapezoid of p^2 over z, minus mean over bins of 2 p delta", lambda s, t, dz, c: dz * s - 2 * t / c),
}  # fmt: skip


def _sums(p: np.ndarray, zs: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N,) ``sum_c p_c^2`` and ``p`` at the bin holding zs (the metric's bin rule)."""
    c = np.clip(np.searchsorted(edges[1:-1], zs, side="right"), 0, len(edges) - 2)
    return (p**2).sum(axis=1), p[np.arange(len(zs)), c]


def readings(p: np.ndarray, zs: np.ndarray, edges: np.ndarray) -> dict[str, float]:
    """Every reading's mean over the galaxies of CDEs ``p`` (N, C) on equal bins ``edges``."""
    dz, n_bins = float(np.mean(np.diff(edges))), len(edges) - 1
    s, t = _sums(np.asarray(p, np.float64), np.asarray(zs, np.float64), np.asarray(edges))
    return {k: float(np.mean(f(s, t, dz, n_bins))) for k, (_, f) in READINGS.items()}


def bounds(edges: np.ndarray) -> dict[str, tuple[float, float]]:
    """Each reading's value for a uniform CDE and for a perfect one (all mass in zs's bin)."""
    dz, n_bins = float(np.mean(np.diff(edges))), len(edges) - 1
    one = np.ones(1)
    return {
        k: (float(f(one / n_bins, one / n_bins, dz, n_bins)[0]), float(f(one, one, dz, n_bins)[0]))
        for k, (_, f) in READINGS.items()
    }


def gaussian_cdes(
    sigma_nmad: float, edges: np.ndarray, *, z: float = MEDIAN_Z, n: int = 4000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated Gaussian CDEs: width ``sigma_nmad (1 + z)``, centred at ``zs + width * eps``.

    So zs is a draw from each CDE (calibrated) and ``(zp - zs) / (1 + z)`` has sigma_nmad
    ``sigma_nmad`` (away from the range's ends). Returns ``(p (n, C), zs (n,))``, zs = z.
    """
    width = sigma_nmad * (1.0 + z)
    centre = z + width * np.random.default_rng(seed).standard_normal(n)
    mass = np.diff(special.ndtr((edges[None, :] - centre[:, None]) / width), axis=1)
    return mass / mass.sum(axis=1, keepdims=True), np.full(n, z)


def implied_sigma(reading: str, target: float, edges: np.ndarray, *, z: float = MEDIAN_Z) -> float:
    """sigma_nmad of the calibrated Gaussian CDEs whose mean ``reading`` equals ``target``.

    Bisection in log sigma over [1e-4, 1]; NaN when ``target`` is outside what the reading
    reaches there (e.g. less negative than a uniform CDE gives).
    """
    lo, hi = np.log(1e-4), np.log(1.0)

    def value(log_s: float) -> float:
        return readings(*gaussian_cdes(float(np.exp(log_s)), edges, z=z, n=2000), edges)[reading]

    v_lo, v_hi = value(lo), value(hi)  # v grows (less negative) with sigma
    if not min(v_lo, v_hi) <= target <= max(v_lo, v_hi):
        return float("nan")
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        if (value(mid) < target) == (v_lo < target):
            lo = mid
        else:
            hi = mid
    return float(np.exp(0.5 * (lo + hi)))


def candidates_table(
    edges: np.ndarray, *, sigma_nmad: float = PAPER_SIGMA_NMAD, z: float = MEDIAN_Z
) -> pd.DataFrame:
    """One row per reading: Gaussian value, uniform / perfect bounds, implied sigma_nmad."""
    gauss = readings(*gaussian_cdes(sigma_nmad, edges, z=z), edges)
    rows = []
    for k, (formula, _) in READINGS.items():
        uniform, perfect = bounds(edges)[k]
        paper = PAPER_VALUES["baseline"]
        rows.append({
            "reading": k,
            "formula": formula,
            f"gaussian_{sigma_nmad:g}": gauss[k],
            "uniform_cde": uniform,
            "perfect_cde": perfect,
            "paper_in_range": bool(min(uniform, perfect) <= paper <= max(uniform, perfect)),
            "implied_sigma_nmad": implied_sigma(k, paper, edges, z=z),
        })  # fmt: skip
    return pd.DataFrame(rows)


def runs_table(run_dirs: Sequence[str | Path]) -> pd.DataFrame:
    """Every reading on each run's own test CDEs, beside its sigma_nmad and training scale."""
    rows = []
    for run in run_dirs:
        pr = load_predictions(run)
        loss = load_run_config(run).get("loss", {})
        sigma = load_run_metrics(run)["test"]["sigma_nmad"]
        rows.append({"run": str(run), "cde_scale": loss.get("cde_scale", "density"),
                     "sigma_nmad": sigma, **readings(pr.p, pr.zs, pr.edges)})  # fmt: skip
    return pd.DataFrame(rows)


def compare(a_runs: Sequence[str | Path], b_runs: Sequence[str | Path]) -> dict[str, pd.DataFrame]:
    """Runs ``a`` against runs ``b``, paired by seed: per seed, means, paired differences a - b.

    Returns:
        ``per_seed`` (one row per run: set, seed, the test COMPARE_METRICS), ``paired`` (per
        metric: ``analysis.stats.paired_comparison`` of a - b over the shared seeds: mean,
        std, bootstrap CI, n) and ``galaxies`` (per seed and verdict metric: a - b with
        ``analysis.verdict.paired_bootstrap``'s CI over the same test galaxies).
    """
    rows, by_seed = [], {}
    for name, runs in (("a", a_runs), ("b", b_runs)):
        for run in runs:
            cfg, test = load_run_config(run), load_run_metrics(run)["test"]
            seed = int(cfg["run"]["seed"])
            if (name, seed) in by_seed:
                raise UserError(f"{run}: a second run of seed {seed} in --{name}; one per seed")
            by_seed[name, seed] = run
            rows.append({"set": name, "seed": seed, "run": str(run),
                         "cde_scale": cfg.get("loss", {}).get("cde_scale", "density"),
                         **{m: float(test[m]) for m in COMPARE_METRICS}})  # fmt: skip
    per_seed = pd.DataFrame(rows)
    paired = pd.DataFrame(
        [paired_comparison(per_seed, m, "a", "b", by="set") for m in COMPARE_METRICS]
    )
    galaxies = []
    for seed in sorted(
        {s for (n, s) in by_seed if n == "a"} & {s for (n, s) in by_seed if n == "b"}
    ):
        pa, pb = load_predictions(by_seed["a", seed]), load_predictions(by_seed["b", seed])
        if not np.array_equal(pa.ids, pb.ids):
            raise UserError(
                f"{by_seed['a', seed]}: not the same test galaxies as seed {seed} of --b"
            )
        boot = paired_bootstrap(
            per_galaxy(pa.p, pa.zs, pa.edges), per_galaxy(pb.p, pb.zs, pb.edges)
        )
        boot = boot.rename(columns={"value": "a", "peer": "b", "diff": "a_minus_b"})
        galaxies.append(boot.drop(columns=["value_std", "n_seeds"]).assign(seed=seed))
    return {
        "per_seed": per_seed,
        "paired": paired,
        "galaxies": pd.concat(galaxies) if galaxies else pd.DataFrame(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m analysis.cde_scale", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    cand = sub.add_parser(
        "candidates", help="each reading of the CDE loss on Gaussian CDEs (and runs)"
    )
    cand.add_argument("runs", nargs="*", help="run directories whose test CDEs to score too")
    cand.add_argument("--sigma-nmad", type=float, default=PAPER_SIGMA_NMAD)
    cand.add_argument("--n-bins", type=int, default=180)
    cand.add_argument("--z-max", type=float, default=0.4)
    comp = sub.add_parser("compare", help="runs --a against runs --b, paired by seed")
    comp.add_argument("--a", nargs="+", required=True, help="run directories (one per seed)")
    comp.add_argument("--b", nargs="+", required=True, help="run directories (the same seeds)")
    args = parser.parse_args(argv)
    pd.set_option("display.width", 200, "display.max_columns", 20, "display.max_colwidth", 70)
    try:
        if args.cmd == "candidates":
            print(
                candidates_table(
                    bin_edges(args.n_bins, args.z_max), sigma_nmad=args.sigma_nmad
                ).to_string(index=False)
            )
            if args.runs:
                print()
                print(runs_table(args.runs).to_string(index=False))
        else:
            out = compare(args.a, args.b)
            for key, df in out.items():
                print(f"{key}:")
                print(
                    df.drop(columns=[c for c in ("run", "note") if c in df]).to_string(index=False)
                )
                print()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
