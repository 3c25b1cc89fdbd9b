"""Statistics over seeds: mean, std and n, bootstrap intervals, paired comparisons, variance split.

Every number this module returns travels with its ``n`` (the number of seeds, or of paired
seeds, it was computed from), so the report can always say "mean +- std (n seeds)".

The study frame (SPEC 8) has one row per (configuration, seed) with ``config_id``, ``seed``,
``group`` and ``val_<metric>`` / ``test_<metric>`` columns. Groups are compared *paired*: the
difference constrained - baseline_aug is taken seed by seed (the same seed gives both runs
the same batch order and the same weight initialisation), which removes the trial variance
the two share.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats as sstats

from study.search_space import pareto_optimal

CONFIDENCE = 0.95
N_RESAMPLES = 9999
# With n paired differences the smallest two-sided exact Wilcoxon p-value is 2 / 2**n:
# n = 5 gives 0.0625, so fewer than 6 seeds can never reach p < 0.05.
WILCOXON_MIN_N = 6


def min_wilcoxon_p(n: int) -> float:
    """Smallest two-sided p-value the exact Wilcoxon signed-rank test can give with n pairs."""
    return min(1.0, 2.0 / 2.0**n) if n > 0 else 1.0


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    *,
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    method: str = "percentile",
) -> tuple[float, float]:
    """Bootstrap confidence interval of the mean (scipy.stats.bootstrap).

    The percentile method is the default: with the 3 to 10 seeds of a study BCa's
    acceleration estimate is itself noisy and it fails outright when values tie.

    Args:
        values: one number per seed (NaNs dropped).
        confidence: two-sided confidence level.
        n_resamples: bootstrap resamples.
        seed: seed of the resampling (fixed so that a report is reproducible).
        method: "percentile", "basic" or "BCa", as scipy.

    Returns:
        (low, high); (nan, nan) with fewer than 2 values, (v, v) when all values are equal.
    """
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size < 2:
        return (math.nan, math.nan)
    if np.all(x == x[0]):
        return (float(x[0]), float(x[0]))
    res = sstats.bootstrap(
        (x,),
        np.mean,
        n_resamples=n_resamples,
        confidence_level=confidence,
        method=method,
        rng=np.random.default_rng(seed),
    )
    return (float(res.confidence_interval.low), float(res.confidence_interval.high))


def describe(values: Sequence[float] | np.ndarray, **ci_kwargs) -> dict[str, float]:
    """Mean, sample std (ddof=1), n and bootstrap CI of one set of per-seed values."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    n = int(x.size)
    low, high = bootstrap_ci(x, **ci_kwargs)
    return {
        "mean": float(x.mean()) if n else math.nan,
        "std": float(x.std(ddof=1)) if n > 1 else math.nan,
        "n": n,
        "ci_low": low,
        "ci_high": high,
    }


def summarize(
    frame: pd.DataFrame, columns: Sequence[str], *, by: str = "group", **ci_kwargs
) -> pd.DataFrame:
    """Mean, std, n and bootstrap CI of each column per value of ``by`` (over seeds).

    Returns:
        Long frame with columns [by, "metric", "mean", "std", "n", "ci_low", "ci_high"],
        in the order the ``by`` values first appear in ``frame``.
    """
    rows = []
    for key, sub in frame.groupby(by, sort=False):
        for col in columns:
            if col not in sub:
                continue
            rows.append({by: key, "metric": col, **describe(sub[col].to_numpy(), **ci_kwargs)})
    return pd.DataFrame(rows, columns=[by, "metric", "mean", "std", "n", "ci_low", "ci_high"])


def paired_values(
    frame: pd.DataFrame, column: str, value: object, reference: object, *, by: str = "group"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The per-seed values of ``column`` for ``value`` and ``reference``, on their common seeds.

    Returns:
        (seeds, x, y) sorted by seed, x for ``value`` and y for ``reference``; seeds whose
        value is NaN on either side are dropped.
    """
    a = frame.loc[frame[by] == value, ["seed", column]].groupby("seed")[column].mean()
    b = frame.loc[frame[by] == reference, ["seed", column]].groupby("seed")[column].mean()
    joined = pd.concat([a.rename("x"), b.rename("y")], axis=1, join="inner").dropna().sort_index()
    return joined.index.to_numpy(), joined["x"].to_numpy(float), joined["y"].to_numpy(float)


def wilcoxon_p(diff: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired differences (scipy); 1 if all zero."""
    d = np.asarray(diff, dtype=np.float64)
    if d.size == 0:
        return math.nan
    if np.all(d == 0):
        return 1.0
    return float(sstats.wilcoxon(d).pvalue)


def paired_comparison(
    frame: pd.DataFrame,
    column: str,
    value: object,
    reference: object,
    *,
    by: str = "group",
    **ci_kwargs,
) -> dict[str, object]:
    """Paired difference value - reference of one metric over the seeds both were run on.

    Returns:
        dict with the value and reference names, ``metric``, ``n`` (paired seeds),
        ``mean_diff``, ``std_diff``, ``ci_low``/``ci_high`` (bootstrap of the mean difference),
        ``p_wilcoxon`` and ``note`` (says when n is too small for p < 0.05 to be possible).
    """
    seeds, x, y = paired_values(frame, column, value, reference, by=by)
    d = x - y
    desc = describe(d, **ci_kwargs)
    n = int(desc["n"])
    note = ""
    if n < WILCOXON_MIN_N:
        note = f"n={n} < {WILCOXON_MIN_N}: p cannot reach 0.05 (min {min_wilcoxon_p(n):.3g})"
    return {
        by: value,
        "reference": reference,
        "metric": column,
        "n": n,
        "mean_diff": desc["mean"],
        "std_diff": desc["std"],
        "ci_low": desc["ci_low"],
        "ci_high": desc["ci_high"],
        "p_wilcoxon": wilcoxon_p(d),
        "note": note,
        "seeds": [int(s) for s in seeds],
    }


def paired_table(
    frame: pd.DataFrame,
    columns: Sequence[str],
    references: Sequence[object] = ("baseline", "baseline_aug"),
    *,
    by: str = "group",
    **ci_kwargs,
) -> pd.DataFrame:
    """Paired comparisons of every other ``by`` value against each reference present."""
    present = list(dict.fromkeys(frame[by].tolist()))
    rows = []
    for ref in references:
        if ref not in present:
            continue
        for value in present:
            if value == ref:
                continue
            for col in columns:
                if col in frame:
                    rows.append(paired_comparison(frame, col, value, ref, by=by, **ci_kwargs))
    return pd.DataFrame(rows)


def variance_split(frame: pd.DataFrame, column: str, *, by: str = "config_id") -> dict[str, float]:
    """Split the spread of a metric into trial variance (seeds) and study variance (configs).

    Trial variance is the pooled within-configuration variance over seeds (what rerunning the
    same configuration with another seed changes); study variance is the variance of the
    configurations' means, and ``study_var_component`` is its one-way random-effects part
    with the trial noise removed, ``max(0, var(means) - trial_var * mean(1 / n_i))``.

    Returns:
        dict with ``trial_var``, ``trial_std``, ``study_var``, ``study_std``,
        ``study_var_component``, ``n_configs``, ``n_runs``.
    """
    groups = [g[column].dropna().to_numpy(float) for _, g in frame.groupby(by, sort=False)]
    groups = [g for g in groups if g.size]
    n_runs = int(sum(g.size for g in groups))
    dof = sum(g.size - 1 for g in groups)
    trial_var = sum(((g - g.mean()) ** 2).sum() for g in groups) / dof if dof > 0 else math.nan
    means = np.array([g.mean() for g in groups])
    study_var = float(means.var(ddof=1)) if means.size > 1 else math.nan
    inv_n = float(np.mean([1.0 / g.size for g in groups])) if groups else math.nan
    component = (
        max(0.0, study_var - trial_var * inv_n) if np.isfinite(study_var * trial_var) else math.nan
    )
    return {
        "trial_var": float(trial_var),
        "trial_std": float(math.sqrt(trial_var)) if np.isfinite(trial_var) else math.nan,
        "study_var": study_var,
        "study_std": float(math.sqrt(study_var)) if np.isfinite(study_var) else math.nan,
        "study_var_component": float(component),
        "n_configs": len(groups),
        "n_runs": n_runs,
    }


def format_mean_std(mean: float, std: float, n: int, *, scale: float = 1.0, digits: int = 3) -> str:
    """'0.0117 ± 3.0e-04 (n=5)' style cell; no std when n < 2."""
    if n == 0 or not np.isfinite(mean):
        return "–"
    m = _fmt(mean * scale, digits)
    if n < 2 or not np.isfinite(std):
        return f"{m} (n={n})"
    return f"{m} ± {_fmt(std * scale, 2)} (n={n})"


def _fmt(x: float, digits: int) -> str:
    """Compact number: plain for 0.01 <= |x| < 1000, scientific otherwise."""
    if x == 0:
        return "0"
    if 0.01 <= abs(x) < 1000:
        return np.format_float_positional(x, precision=digits, fractional=False, trim="-")
    return f"{x:.{max(digits - 1, 0)}e}"


def pareto_table(
    frame: pd.DataFrame, objectives: Sequence[tuple[str, str]], *, by: str = "config_id"
) -> pd.DataFrame:
    """One row per configuration: its seed mean and std of each objective, and its front.

    Args:
        frame: the study frame, one row per (configuration, seed).
        objectives: ``(column, "min" | "max")`` per objective, e.g. ``("val_sigma_nmad", "min")``.
        by: the configuration column.

    Returns:
        ``by``, ``group``, the weights and lr (where present), ``n`` (seeds), ``<column>_mean``
        and ``<column>_std`` (ddof 1, NaN for one seed) per objective, and ``pareto``: no other
        configuration's means are as good on every objective and better on one (NaN: never).
    """
    columns = [c for c, _ in objectives]
    grouped = frame.groupby(by, sort=False)
    keep = [c for c in ("group", "g_flux", "g_inv", "g_cde", "lr") if c in frame and c != by]
    out = grouped[keep].first() if keep else pd.DataFrame(index=grouped.size().index)
    out["n"] = grouped.size()
    means, stds = grouped[columns].mean(), grouped[columns].std()
    for c in columns:
        out[f"{c}_mean"], out[f"{c}_std"] = means[c], stds[c]
    out["pareto"] = pareto_optimal(means.to_numpy().tolist(), [m for _, m in objectives])
    return out.reset_index()
