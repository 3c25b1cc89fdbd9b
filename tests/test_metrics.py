"""Metrics against hand computations of the qp / RAIL / cdetools definitions and scipy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from study import losses
from study.metrics import (
    METRIC_NAMES,
    all_metrics,
    bin_centers,
    cde_loss,
    cde_loss_stderr,
    pit,
    pit_stats,
    point_metrics,
)

EDGES = np.linspace(0.0, 0.4, 181)
CENTERS = 0.5 * (EDGES[1:] + EDGES[:-1])


def _delta_cdes(bins: np.ndarray) -> np.ndarray:
    p = np.zeros((len(bins), 180))
    p[np.arange(len(bins)), bins] = 1.0
    return p


def test_bin_centers():
    np.testing.assert_allclose(bin_centers(np.array([0.0, 0.1, 0.3])), [0.05, 0.2])
    assert bin_centers(EDGES)[0] == pytest.approx(0.4 / 360)


def test_point_metrics_by_hand():
    rng = np.random.default_rng(0)
    zs = rng.uniform(0.02, 0.38, 400)
    bins = np.clip(np.floor(zs / (0.4 / 180)).astype(int) + rng.integers(-3, 4, 400), 0, 179)
    bins[:12] = 179 - bins[:12]  # catastrophic outliers
    p = _delta_cdes(bins)
    d = (CENTERS[bins] - zs) / (1 + zs)  # zp is the centre of the delta's bin
    m = point_metrics(p, zs, EDGES)
    assert m["bias"] == pytest.approx(d.mean(), rel=1e-12)
    assert m["bias_median"] == pytest.approx(np.median(d), rel=1e-12)
    mad = stats.median_abs_deviation(d, scale=1 / 1.4826)
    assert m["sigma_nmad"] == pytest.approx(mad, rel=1e-12)
    assert m["sigma_iqr"] == pytest.approx(stats.iqr(d) / 1.349, rel=1e-12)
    assert m["outlier_frac"] == pytest.approx(np.sum(np.abs(d) > 0.05) / 400)
    cut = max(0.06, 3 * stats.iqr(d) / 1.349)
    assert m["outlier_frac_rail"] == pytest.approx(np.sum(np.abs(d) > cut) / 400)
    assert 0 < m["outlier_frac_rail"] <= m["outlier_frac"]


def test_point_estimate_uses_bin_centres_and_renormalises():
    p = np.zeros((1, 180))
    p[0, [10, 20]] = [0.5, 1.5]  # unnormalised on purpose: zp = 0.25 z_10 + 0.75 z_20
    zs = np.array([0.1])
    zp = 0.25 * CENTERS[10] + 0.75 * CENTERS[20]
    assert point_metrics(p, zs, EDGES)["bias"] == pytest.approx((zp - 0.1) / 1.1, rel=1e-12)


def test_pit_hand_values_and_scipy_histogram_cdf():
    edges = np.array([0.0, 0.1, 0.2, 0.4])
    p = np.array([[0.2, 0.5, 0.3]] * 5)
    zs = np.array([0.15, 0.3, 0.0, 0.4, 0.05])
    np.testing.assert_allclose(pit(p, zs, edges), [0.45, 0.85, 0.0, 1.0, 0.1], atol=1e-15)
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.full(180, 0.3), size=50)
    zs = rng.uniform(0, 0.4, 50)
    ref = [stats.rv_histogram((p[i], EDGES), density=False).cdf(zs[i]) for i in range(50)]
    np.testing.assert_allclose(pit(p, zs, EDGES), ref, rtol=1e-10, atol=1e-12)


def _anderson_ksamp_midrank(samples: list[np.ndarray]) -> float:
    """Scholz & Stephens (1987) normalised k-sample A2_akN (midranks), from the paper."""
    k = len(samples)
    n = np.array([len(s) for s in samples])
    big_n = n.sum()
    pooled = np.concatenate(samples)
    z_star, l_j = np.unique(pooled, return_counts=True)
    b_aj = np.cumsum(l_j) - l_j / 2.0
    a2 = 0.0
    for s, n_i in zip(samples, n, strict=True):
        m_aij = (
            np.searchsorted(np.sort(s), z_star, side="right")
            - np.array([np.sum(s == z) for z in z_star]) / 2.0
        )
        num = (big_n * m_aij - n_i * b_aj) ** 2
        den = b_aj * (big_n - b_aj) - big_n * l_j / 4.0
        a2 += np.sum(l_j / big_n * num / den) / n_i
    a2 *= (big_n - 1) / big_n
    h_big = np.sum(1.0 / n)
    h = np.sum(1.0 / np.arange(1, big_n))
    g = sum(1.0 / ((big_n - i) * j) for i in range(1, big_n - 1) for j in range(i + 1, big_n))
    a = (4 * g - 6) * (k - 1) + (10 - 6 * g) * h_big
    b = (2 * g - 4) * k**2 + 8 * h * k + (2 * g - 14 * h - 4) * h_big - 8 * h + 4 * g - 6
    c = (6 * h + 2 * g - 2) * k**2 + (4 * h - 4 * g + 6) * k + (2 * h - 6) * h_big + 4 * h
    d = (2 * h + 6) * k**2 - 4 * h * k
    var = (a * big_n**3 + b * big_n**2 + c * big_n + d) / ((big_n - 1) * (big_n - 2) * (big_n - 3))
    return (a2 - (k - 1)) / np.sqrt(var)


def test_pit_stats_against_hand_formulas():
    rng = np.random.default_rng(2)
    u = rng.beta(1.3, 1.0, 60)  # a miscalibrated PIT sample
    u[:2] = [0.0, 1.0]  # ties with the reference grid's end points
    s = pit_stats(u)
    x = np.sort(u)
    n = len(x)
    i = np.arange(1, n + 1)
    ks = max(np.max(i / n - x), np.max(x - (i - 1) / n))
    cvm = 1 / (12 * n) + np.sum(((2 * i - 1) / (2 * n) - x) ** 2)
    assert s["ks"] == pytest.approx(ks, rel=1e-12)
    assert s["cvm"] == pytest.approx(cvm, rel=1e-12)
    ad = _anderson_ksamp_midrank([u, np.linspace(0, 1, n)])
    assert s["ad"] == pytest.approx(ad, rel=1e-9)


def test_pit_outliers_and_coverage_counts():
    u = np.array([0.0, 5e-5, 1e-4, 0.02, 0.16, 0.5, 0.84, 0.9, 0.975, 0.99995])
    s = pit_stats(u)
    assert s["pit_outlier_rate"] == pytest.approx(3 / 10)  # 0, 5e-5, 0.99995
    assert s["coverage_68"] == pytest.approx(3 / 10)  # 0.16, 0.5, 0.84
    assert s["coverage_95"] == pytest.approx(5 / 10)  # 0.16, 0.5, 0.84, 0.9, 0.975


def test_calibrated_cdes_have_uniform_pit_and_nominal_coverage():
    # zs drawn from each galaxy's own CDE: PIT ~ U(0, 1), coverage ~ nominal (n = 4000).
    rng = np.random.default_rng(3)
    n = 4000
    mu = rng.uniform(0.05, 0.35, n)
    p = stats.norm.cdf(EDGES[None, 1:], mu[:, None], 0.02) - stats.norm.cdf(
        EDGES[None, :-1], mu[:, None], 0.02
    )
    p /= p.sum(1, keepdims=True)
    bins = np.array([rng.choice(180, p=row) for row in p])
    zs = EDGES[bins] + rng.uniform(0, 0.4 / 180, n)  # uniform inside the drawn bin
    s = all_metrics(p, zs, EDGES)
    se68, se95 = np.sqrt(0.68 * 0.32 / n), np.sqrt(0.95 * 0.05 / n)
    assert abs(s["coverage_68"] - 0.68) < 4 * se68
    assert abs(s["coverage_95"] - 0.95) < 4 * se95
    assert s["ks"] < 1.63 / np.sqrt(n)  # the KS 1% critical value
    assert s["pit_outlier_rate"] < 0.002


def test_cde_loss_hand_computation_and_torch_agreement():
    edges = np.array([0.0, 0.1, 0.2, 0.4])
    p = np.array([[0.2, 0.5, 0.3], [1.0, 0.0, 0.0]])
    zs = np.array([0.15, 0.3])
    per = np.array([-6.65, 10.0])  # see test_losses.test_cde_loss_hand_computation
    assert cde_loss(p, zs, edges) == pytest.approx(per.mean(), rel=1e-12)
    assert cde_loss_stderr(p, zs, edges) == pytest.approx(np.std(per) / np.sqrt(2), rel=1e-12)
    rng = np.random.default_rng(4)
    q = rng.dirichlet(np.ones(180), size=32)
    z = rng.uniform(0, 0.4, 32)
    ref = losses.cde_loss(torch.from_numpy(q), torch.from_numpy(z), torch.from_numpy(EDGES))
    assert cde_loss(q, z, EDGES) == pytest.approx(ref.item(), rel=1e-12)


def test_cde_loss_matches_cdetools_on_a_fine_grid():
    # cdetools: integrals = z_delta * sum f^2 on a grid, likelihood at the nearest grid point.
    # On the bin centres with z_delta = dz that is exactly the histogram form.
    rng = np.random.default_rng(5)
    p = rng.dirichlet(np.ones(180), size=20)
    z = rng.uniform(0, 0.4, 20)
    f = p / (0.4 / 180)
    nn = np.array([np.argmin(np.abs(CENTERS - zi)) for zi in z])
    per = (0.4 / 180) * np.sum(f**2, axis=1) - 2 * f[np.arange(20), nn]
    assert cde_loss(p, z, EDGES) == pytest.approx(per.mean(), rel=1e-12)


def test_all_metrics_names_and_float16_input():
    rng = np.random.default_rng(6)
    p = rng.dirichlet(np.ones(180), size=100).astype(np.float16)
    zs = rng.uniform(0, 0.4, 100)
    m = all_metrics(p, zs, EDGES)
    assert tuple(m) == METRIC_NAMES
    assert all(isinstance(v, float) and np.isfinite(v) for v in m.values())
