"""The verdict against a peer: the paired bootstrap over galaxies, matched by galaxy id."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import stats

from analysis import verdict
from study.errors import UserError
from study.metrics import cde_loss, point_metrics

EDGES = np.linspace(0.0, 0.4, 181)
CENTRES = 0.5 * (EDGES[1:] + EDGES[:-1])


def cdes(rng: np.random.Generator, zs: np.ndarray, width: float, outliers: float = 0.05):
    """Gaussian CDEs of the given width around a noisy truth, a fraction of them far off."""
    mu = zs + rng.normal(0, width, zs.size) * (1 + zs)
    bad = rng.random(zs.size) < outliers
    mu[bad] = rng.uniform(0.01, 0.39, bad.sum())
    p = np.exp(-0.5 * ((CENTRES[None, :] - mu[:, None]) / width) ** 2) + 1e-9
    return p / p.sum(axis=1, keepdims=True)


@pytest.fixture
def galaxies() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    n = 400
    return rng.gamma(4.0, 0.025, n).clip(0.005, 0.395), np.arange(1000, 1000 + n)


def test_statistics_are_the_spec_metrics(galaxies) -> None:
    zs, _ = galaxies
    p = cdes(np.random.default_rng(1), zs, 0.02)
    g = verdict.per_galaxy(p, zs, EDGES)
    got = verdict.statistics(g.d, g.loss)
    want = point_metrics(p, zs, EDGES)
    assert got["sigma_nmad"] == pytest.approx(want["sigma_nmad"], rel=1e-12)
    assert got["outlier_frac"] == pytest.approx(want["outlier_frac"], rel=1e-12)
    assert got["cde_loss"] == pytest.approx(cde_loss(p, zs, EDGES), rel=1e-12)
    # independent: scipy's normal-scaled MAD (1 / Phi^-1(0.75) = 1.482602 vs 1.4826)
    mad = stats.median_abs_deviation(g.d, scale="normal")
    assert got["sigma_nmad"] == pytest.approx(mad, rel=2e-6)


def test_the_peer_equal_to_the_run_gives_zero(galaxies) -> None:
    zs, ids = galaxies
    p = cdes(np.random.default_rng(2), zs, 0.02)
    res = verdict.verdict_table({"a": [(p, zs, ids, EDGES)]}, (p, zs, ids, EDGES))
    assert (res["diff"] == 0).all() and (res["ci_low"] == 0).all() and (res["ci_high"] == 0).all()
    assert set(res["outcome"]) == {"indistinguishable"}


def test_a_better_group_excludes_zero_and_ids_are_matched_not_assumed(galaxies) -> None:
    zs, ids = galaxies
    rng = np.random.default_rng(3)
    peer = cdes(rng, zs, 0.03, outliers=0.15)
    runs = [cdes(rng, zs, 0.01, outliers=0.01) for _ in range(2)]
    res = verdict.verdict_table({"good": [(p, zs, ids, EDGES) for p in runs]},
                                (peer, zs, ids, EDGES)).set_index("metric")  # fmt: skip
    assert (res["outcome"] == "better").all() and (res["ci_high"] < 0).all()
    assert res.loc["sigma_nmad", "n_seeds"] == 2 and res.loc["sigma_nmad", "n_galaxies"] == 400
    want = np.mean([point_metrics(p, zs, EDGES)["sigma_nmad"] for p in runs])
    assert res.loc["sigma_nmad", "value"] == pytest.approx(want, rel=1e-12)
    assert res.loc["sigma_nmad", "peer"] == pytest.approx(
        point_metrics(peer, zs, EDGES)["sigma_nmad"], rel=1e-12
    )
    # the same runs with their galaxies shuffled: matched by id, the same numbers
    perm = np.random.default_rng(4).permutation(zs.size)
    shuffled = verdict.verdict_table(
        {"good": [(p[perm], zs[perm], ids[perm], EDGES) for p in runs]}, (peer, zs, ids, EDGES)
    ).set_index("metric")
    np.testing.assert_allclose(shuffled[["value", "peer", "diff"]], res[["value", "peer", "diff"]],
                               rtol=1e-12)  # fmt: skip


def test_vectorised_bootstrap_equals_a_loop_over_study_metrics(galaxies) -> None:
    """Each resample's seed-mean difference, recomputed from resampled CDEs with study.metrics."""
    zs, ids = galaxies
    rng = np.random.default_rng(5)
    runs, peer = [cdes(rng, zs, 0.02) for _ in range(3)], cdes(rng, zs, 0.025)
    n_boot = 40
    res = verdict.verdict_table({"g": [(p, zs, ids, EDGES) for p in runs]}, (peer, zs, ids, EDGES),
                                n_boot=n_boot, seed=7).set_index("metric")  # fmt: skip
    diffs = {m: [] for m in verdict.VERDICT_METRICS}
    for i in verdict.resample_indices(zs.size, n_boot, 7):

        def metrics(p, i=i):
            return point_metrics(p[i], zs[i], EDGES) | {"cde_loss": cde_loss(p[i], zs[i], EDGES)}

        ours, theirs = [metrics(p) for p in runs], metrics(peer)
        for m in diffs:
            diffs[m].append(np.mean([o[m] for o in ours]) - theirs[m])
    for m, d in diffs.items():
        low, high = np.percentile(d, [2.5, 97.5])
        assert res.loc[m, "ci_low"] == pytest.approx(low, rel=1e-9, abs=1e-12), m
        assert res.loc[m, "ci_high"] == pytest.approx(high, rel=1e-9, abs=1e-12), m


@pytest.mark.parametrize("metric", ["sigma_nmad", "cde_loss"])
def test_interval_agrees_with_scipy_paired_bootstrap(galaxies, metric: str) -> None:
    zs, ids = galaxies
    rng = np.random.default_rng(6)
    run, peer = cdes(rng, zs, 0.02), cdes(rng, zs, 0.022)
    res = verdict.verdict_table({"g": [(run, zs, ids, EDGES)]}, (peer, zs, ids, EDGES),
                                n_boot=4000, seed=1).set_index("metric")  # fmt: skip
    a, b = verdict.per_galaxy(run, zs, EDGES), verdict.per_galaxy(peer, zs, EDGES)
    if metric == "sigma_nmad":
        data = (a.d, b.d)

        def stat(x, y, axis):
            mad = stats.median_abs_deviation
            return mad(x, axis=axis) - mad(y, axis=axis)

        scale = verdict.NMAD_SCALE
    else:
        data, scale = (a.loss, b.loss), 1.0

        def stat(x, y, axis):
            return np.mean(x, axis=axis) - np.mean(y, axis=axis)

    ci = stats.bootstrap(data, stat, paired=True, vectorized=True, n_resamples=4000,
                         method="percentile", rng=np.random.default_rng(2)).confidence_interval  # fmt: skip
    width = res.loc[metric, "ci_high"] - res.loc[metric, "ci_low"]
    assert res.loc[metric, "ci_low"] == pytest.approx(scale * ci.low, abs=0.1 * width)
    assert res.loc[metric, "ci_high"] == pytest.approx(scale * ci.high, abs=0.1 * width)


def test_other_galaxies_are_refused_in_one_line(galaxies) -> None:
    zs, ids = galaxies
    p = cdes(np.random.default_rng(8), zs, 0.02)
    with pytest.raises(UserError, match=r"group 'g', run 0: its 399 test galaxies are not") as e:
        verdict.verdict_table({"g": [(p[1:], zs[1:], ids[1:], EDGES)]}, (p, zs, ids, EDGES))
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="1 ids not among the peer's"):
        other = ids.copy()
        other[0] = -1
        verdict.verdict_table({"g": [(p, zs, other, EDGES)]}, (p, zs, ids, EDGES))
    with pytest.raises(UserError, match="other zs"):
        verdict.verdict_table({"g": [(p, zs + 0.001, ids, EDGES)]}, (p, zs, ids, EDGES))


def test_demo_sized_verdict_takes_seconds() -> None:
    rng = np.random.default_rng(9)
    zs, ids = rng.gamma(4.0, 0.025, 800).clip(0.005, 0.395), np.arange(800)
    groups = {f"g{k}": [(cdes(rng, zs, 0.02), zs, ids, EDGES) for _ in range(2)] for k in range(4)}
    peer = (cdes(rng, zs, 0.02), zs, ids, EDGES)
    tic = time.perf_counter()
    res = verdict.verdict_table(groups, peer, n_boot=1000)
    assert len(res) == 12 and time.perf_counter() - tic < 10
