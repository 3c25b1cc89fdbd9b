"""analysis.stats against scipy and hand computations on small hand-made frames."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sstats

from analysis.stats import (
    bootstrap_ci,
    describe,
    format_mean_std,
    min_wilcoxon_p,
    paired_comparison,
    paired_table,
    summarize,
    variance_split,
)


def _frame() -> pd.DataFrame:
    base = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
    diff = np.array([0.5, 0.1, 0.4, 0.2, 0.7, 0.3, 0.6])  # all positive, distinct ranks
    rows = []
    for s in range(7):
        rows.append({"config_id": "b", "group": "baseline", "seed": s, "test_x": base[s]})
        rows.append(
            {"config_id": "c", "group": "constrained", "seed": s, "test_x": base[s] + diff[s]}
        )
    rows.append({"config_id": "c", "group": "constrained", "seed": 99, "test_x": 100.0})  # unpaired
    return pd.DataFrame(rows)


def test_describe_mean_std_n():
    d = describe([1.0, 2.0, 3.0, 4.0, float("nan")])
    assert d["n"] == 4
    assert d["mean"] == pytest.approx(2.5)
    assert d["std"] == pytest.approx(math.sqrt(5 / 3))  # sample std, ddof=1
    one = describe([3.0])
    assert one["n"] == 1 and one["mean"] == 3.0 and math.isnan(one["std"])


def test_bootstrap_ci_matches_scipy_and_numpy():
    x = np.array([0.3, 1.2, 0.8, 2.5, 1.9, 0.1, 1.4])
    low, high = bootstrap_ci(x, n_resamples=4000, seed=3)
    ref = sstats.bootstrap(
        (x,), np.mean, n_resamples=4000, method="percentile", rng=np.random.default_rng(3)
    ).confidence_interval
    assert (low, high) == pytest.approx((ref.low, ref.high))
    # independent check: percentile interval of numpy-resampled means
    rng = np.random.default_rng(0)
    means = x[rng.integers(0, x.size, size=(100_000, x.size))].mean(axis=1)
    assert low == pytest.approx(np.quantile(means, 0.025), abs=0.03)
    assert high == pytest.approx(np.quantile(means, 0.975), abs=0.03)
    assert low < x.mean() < high


def test_bootstrap_ci_degenerate():
    assert all(math.isnan(v) for v in bootstrap_ci([1.0]))
    assert bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0)


def test_paired_comparison_known_answer():
    res = paired_comparison(_frame(), "test_x", "constrained", "baseline")
    assert res["n"] == 7  # seed 99 has no baseline partner
    assert res["seeds"] == list(range(7))
    assert res["mean_diff"] == pytest.approx(0.4)
    assert res["std_diff"] == pytest.approx(np.std([0.5, 0.1, 0.4, 0.2, 0.7, 0.3, 0.6], ddof=1))
    # all 7 differences positive: exact two-sided p = 2 / 2**7 (hand), and scipy agrees
    assert res["p_wilcoxon"] == pytest.approx(2 / 2**7)
    assert res["p_wilcoxon"] == pytest.approx(
        sstats.wilcoxon([0.5, 0.1, 0.4, 0.2, 0.7, 0.3, 0.6]).pvalue
    )
    assert res["ci_low"] > 0 and res["ci_high"] < 0.7
    assert res["note"] == ""


def test_paired_small_n_note_and_min_p():
    frame = _frame()
    frame = frame[frame["seed"] < 5]
    res = paired_comparison(frame, "test_x", "constrained", "baseline")
    assert res["n"] == 5
    assert res["p_wilcoxon"] == pytest.approx(min_wilcoxon_p(5)) == pytest.approx(0.0625)
    assert "cannot reach 0.05" in res["note"]


def test_paired_table_and_summarize():
    frame = _frame()
    table = paired_table(frame, ["test_x"], references=("baseline", "baseline_aug"))
    assert list(table["group"]) == ["constrained"] and list(table["reference"]) == ["baseline"]
    summ = summarize(frame, ["test_x"], by="group")
    row = summ[summ["group"] == "constrained"].iloc[0]
    assert row["n"] == 8 and row["mean"] == pytest.approx((28 + 2.8 + 100) / 8)


def test_variance_split_hand_computed():
    frame = pd.DataFrame(
        {"config_id": ["A", "A", "B", "B"], "seed": [0, 1, 0, 1], "m": [1.0, 3.0, 5.0, 7.0]}
    )
    v = variance_split(frame, "m")
    assert v["trial_var"] == pytest.approx(2.0)  # ((1-2)^2 + (3-2)^2 + (5-6)^2 + (7-6)^2) / 2
    assert v["study_var"] == pytest.approx(8.0)  # var([2, 6], ddof=1)
    assert v["study_var_component"] == pytest.approx(7.0)  # 8 - 2 / 2
    assert v["n_configs"] == 2 and v["n_runs"] == 4


def test_format_mean_std():
    assert format_mean_std(0.0117, 0.0003, 5) == "0.0117 ± 3.0e-04 (n=5)"
    assert format_mean_std(0.02, float("nan"), 1, scale=100) == "2 (n=1)"
