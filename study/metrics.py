"""Photo-z metrics (SPEC 3), shared by training, tests and analysis: numpy in, floats out.

Inputs everywhere: ``p`` (N, C) bin probabilities (rows are renormalised to sum to 1, so
float16 predictions are fine), ``zs`` (N,) spectroscopic redshifts, ``edges`` (C + 1,) bin
edges. Definitions follow the public LSST DESC reference implementations:

- point metrics: RAIL / qp ``PointSigmaIQR``, ``PointBias``, ``PointOutlierRate``,
  ``PointSigmaMAD`` (qp ``src/qp/metrics/point_estimate_metric_classes.py``); the paper's mean
  bias and ``|d| > 0.05`` outlier fraction are added as ``bias`` and ``outlier_frac``.
- PIT statistics: qp ``src/qp/metrics/pit.py`` (class ``PIT``): KS = ``scipy.stats.kstest(pit,
  "uniform")``, CvM = ``scipy.stats.cramervonmises(pit, "uniform")``, AD =
  ``scipy.stats.anderson_ksamp([pit, linspace(0, 1, n)])`` (k-sample, midrank, against an
  evenly spaced "uniform sample" of the same size; PIT values outside [0, 1] dropped).
- CDE loss: Izbicki & Lee (2017) as in cdetools ``cde_loss`` (mean and ``std / sqrt(n)``),
  exact for a histogram density: ``sum_c f_c^2 dz_c - 2 f_{c(zs)}``.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import stats

from study.data.layout import bin_centers

PIT_OUTLIER = 1e-4  # qp's PIT outlier bounds: PIT < 1e-4 or PIT > 1 - 1e-4
NMAD_SCALE = 1.4826  # MAD -> sigma for a Gaussian (qp/RAIL PointSigmaMAD)
IQR_SCALE = 1.349  # IQR -> sigma for a Gaussian (qp/RAIL PointSigmaIQR)

METRIC_NAMES = (
    "sigma_nmad",
    "sigma_iqr",
    "bias",
    "bias_median",
    "outlier_frac",
    "outlier_frac_rail",
    "cde_loss",
    "cde_loss_se",
    "ks",
    "cvm",
    "ad",
    "pit_outlier_rate",
    "coverage_68",
    "coverage_95",
)


def _prepare(p, zs, edges) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float64 arrays, rows of p summing to 1 (no copy when that already holds)."""
    p = np.asarray(p, np.float64)
    total = p.sum(axis=1, keepdims=True)
    if not np.all(total == 1.0):
        p = p / total
    return p, np.asarray(zs, np.float64).reshape(-1), np.asarray(edges, np.float64)


def _bin_index(zs: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin [e_c, e_{c+1}) holding each zs, clamped to [0, C - 1] (the last edge: last bin)."""
    return np.clip(np.searchsorted(edges, zs, side="right") - 1, 0, len(edges) - 2)


def point_estimate(p, edges) -> np.ndarray:
    """(N,) zp = sum_c p_c z_c with bin centres, p (N, C) renormalised; any (..., C) gives (...)."""
    p = np.asarray(p, np.float64)
    return (p / p.sum(axis=-1, keepdims=True)) @ bin_centers(edges)


def point_metrics(p, zs, edges) -> dict[str, float]:
    """sigma_nmad, sigma_iqr, bias, bias_median, outlier_frac, outlier_frac_rail.

    With ``d = (zp - zs) / (1 + zs)``: ``sigma_nmad = 1.4826 median|d - median d|``,
    ``sigma_iqr = IQR(d) / 1.349`` (``np.percentile``, linear), ``bias = mean d``,
    ``bias_median = median d`` (RAIL's PointBias), ``outlier_frac = frac(|d| > 0.05)``
    (the paper), ``outlier_frac_rail = frac(|d| > max(0.06, 3 sigma_iqr))`` (RAIL).
    """
    # point_estimate renormalises p exactly as _prepare does (p / 1.0 is p), so d is unchanged
    zs = np.asarray(zs, np.float64).reshape(-1)
    d = (point_estimate(p, edges) - zs) / (1.0 + zs)
    median = float(np.median(d))
    x75, x25 = np.percentile(d, [75.0, 25.0])
    sigma_iqr = float(x75 - x25) / IQR_SCALE
    return {
        "sigma_nmad": NMAD_SCALE * float(np.median(np.abs(d - median))),
        "sigma_iqr": sigma_iqr,
        "bias": float(np.mean(d)),
        "bias_median": median,
        "outlier_frac": float(np.mean(np.abs(d) > 0.05)),
        "outlier_frac_rail": float(np.mean(np.abs(d) > max(0.06, 3.0 * sigma_iqr))),
    }


def pit(p, zs, edges) -> np.ndarray:
    """(N,) PIT = CDF(zs), the CDF linear inside each bin (qp's histogram CDF); in [0, 1]."""
    p, zs, edges = _prepare(p, zs, edges)
    c = _bin_index(zs, edges)
    rows = np.arange(len(zs))
    below = np.cumsum(p, axis=1)[rows, c] - p[rows, c]  # mass of the bins left of c
    frac = np.clip((zs - edges[c]) / (edges[c + 1] - edges[c]), 0.0, 1.0)
    return np.clip(below + p[rows, c] * frac, 0.0, 1.0)


def _anderson_ksamp(samples: list[np.ndarray]) -> float:
    """scipy's k-sample AD statistic, midrank variant (scipy's default before 1.17, as in qp)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # p-value capping notices; only the statistic is used
        try:
            result = stats.anderson_ksamp(samples, variant="midrank")
        except TypeError:  # scipy < 1.17 has no `variant`
            result = stats.anderson_ksamp(samples, midrank=True)
    return float(result.statistic)


def pit_stats(pit_values) -> dict[str, float]:
    """ks, cvm, ad, pit_outlier_rate, coverage_68, coverage_95 of PIT values (N,).

    KS and CvM are the one-sample statistics against U(0, 1); AD is qp's k-sample statistic
    against ``linspace(0, 1, n)`` (scipy's normalised ``T_akN``, which can be negative).
    ``pit_outlier_rate`` is the fraction with PIT < 1e-4 or > 1 - 1e-4 (qp reads it off a
    quantile interpolation of the PIT distribution; we count the samples). zs lies in the
    central 68% (95%) interval of its CDE exactly when 0.16 <= PIT <= 0.84 (0.025 .. 0.975).
    """
    u = np.asarray(pit_values, np.float64).reshape(-1)
    inside = u[(u >= 0.0) & (u <= 1.0)]
    return {
        "ks": float(stats.kstest(u, "uniform").statistic),
        "cvm": float(stats.cramervonmises(u, "uniform").statistic),
        "ad": _anderson_ksamp([inside, np.linspace(0.0, 1.0, len(inside))]),
        "pit_outlier_rate": float(np.mean((u < PIT_OUTLIER) | (u > 1.0 - PIT_OUTLIER))),
        "coverage_68": float(np.mean((u >= 0.16) & (u <= 0.84))),
        "coverage_95": float(np.mean((u >= 0.025) & (u <= 0.975))),
    }


def cde_losses(p, zs, edges) -> np.ndarray:
    """(N,) per-galaxy CDE loss ``sum_c f_c^2 dz_c - 2 f_{c(zs)}``, ``f = p / dz``."""
    p, zs, edges = _prepare(p, zs, edges)
    dz = np.diff(edges)
    f = p / dz
    return (f * f) @ dz - 2.0 * f[np.arange(len(zs)), _bin_index(zs, edges)]


def cde_loss(p, zs, edges) -> float:
    """Mean CDE loss over the set (Izbicki & Lee 2017), density units (1 / redshift)."""
    return float(np.mean(cde_losses(p, zs, edges)))


def cde_loss_stderr(p, zs, edges) -> float:
    """Standard error of ``cde_loss``: ``std(losses) / sqrt(n)`` (ddof 0, as cdetools)."""
    losses = cde_losses(p, zs, edges)
    return float(np.std(losses) / np.sqrt(len(losses)))


def all_metrics(p, zs, edges) -> dict[str, float]:
    """Every SPEC 3 metric (``METRIC_NAMES``) as python floats."""
    p, zs, edges = _prepare(p, zs, edges)
    losses = cde_losses(p, zs, edges)
    out = point_metrics(p, zs, edges)
    out["cde_loss"] = float(np.mean(losses))
    out["cde_loss_se"] = float(np.std(losses) / np.sqrt(len(losses)))
    out.update(pit_stats(pit(p, zs, edges)))
    return {name: out[name] for name in METRIC_NAMES}
