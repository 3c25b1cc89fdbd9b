"""analysis.cde_scale: the readings of the CDE loss against hand values and closed forms."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from _fake_study import make_fake_study

from analysis import cde_scale as cs
from study.data.layout import bin_edges

EDGES = bin_edges(180, 0.4)


def test_readings_hand_computation():
    edges = np.array([0.0, 0.1, 0.2, 0.3])  # C = 3, dz = 0.1
    p = np.array([[0.2, 0.5, 0.3]])
    zs = np.array([0.15])  # bin 1: p = 0.5; sum p^2 = 0.38; sum p^2 - 2 p = -0.62
    r = cs.readings(p, zs, edges)
    assert r["probability"] == pytest.approx(-0.62)
    assert r["density"] == pytest.approx(-6.2)
    assert r["paper"] == pytest.approx(-0.62 / 3)
    assert r["unit_interval"] == pytest.approx(3 * -0.62)
    assert r["density_over_C"] == pytest.approx(-6.2 / 3)
    assert r["mixed"] == pytest.approx(0.1 * 0.38 - 2 * 0.5 / 3)


def test_bounds_uniform_and_perfect_cde():
    b = cs.bounds(EDGES)
    assert b["density"] == pytest.approx((-1 / 0.4, -1 / (0.4 / 180)))  # -1/z_max, -1/dz
    assert b["probability"] == pytest.approx((-1 / 180, -1.0))
    assert b["paper"] == pytest.approx((-1 / 180**2, -1 / 180))


def test_gaussian_cdes_are_calibrated_and_match_the_closed_form():
    sigma = 0.0117
    p, zs = cs.gaussian_cdes(sigma, EDGES, n=4000)
    centres = 0.5 * (EDGES[1:] + EDGES[:-1])
    d = (p @ centres - zs) / (1 + zs)
    nmad = 1.4826 * np.median(np.abs(d - np.median(d)))
    assert nmad == pytest.approx(sigma, rel=0.05)
    # calibrated Gaussians: E[f(zs)] = int f^2 = 1 / (2 sqrt(pi) s), so the loss is -1/(2 sqrt(pi) s)
    width = sigma * 1.1
    want = -1 / (2 * math.sqrt(math.pi) * width)
    assert cs.readings(p, zs, EDGES)["density"] == pytest.approx(want, rel=0.03)


def test_implied_sigma_inverts_the_reading_and_is_nan_out_of_range():
    target = cs.readings(*cs.gaussian_cdes(0.01, EDGES, n=2000), EDGES)["paper"]
    assert cs.implied_sigma("paper", target, EDGES) == pytest.approx(0.01, rel=1e-3)
    assert math.isnan(cs.implied_sigma("probability", -8e-4, EDGES))  # above a uniform CDE's


def test_compare_pairs_runs_by_seed(tmp_path):
    study = make_fake_study(tmp_path / "s", groups=("baseline", "constrained"), seeds=(0, 1))
    a = [study / "runs" / f"constrained-s{s}" for s in (1, 0)]  # any order: paired by seed
    b = [study / "runs" / f"baseline-s{s}" for s in (0, 1)]
    out = cs.compare(a, b)
    assert len(out["per_seed"]) == 4
    test = {
        (name, s): json.loads((study / "runs" / f"{name}-s{s}" / "metrics.json").read_text())[
            "test"
        ]
        for name in ("constrained", "baseline")
        for s in (0, 1)
    }
    paired = out["paired"].set_index("metric")
    for m in cs.COMPARE_METRICS:
        diffs = [test["constrained", s][m] - test["baseline", s][m] for s in (0, 1)]
        assert paired.loc[m, "mean_diff"] == pytest.approx(np.mean(diffs))
        assert paired.loc[m, "n"] == 2
    gal = out["galaxies"]
    assert sorted(gal["seed"].unique()) == [0, 1] and set(gal["metric"]) == {
        "sigma_nmad",
        "outlier_frac",
        "cde_loss",
    }
    assert (gal["ci_low"] <= gal["a_minus_b"]).all() and (gal["a_minus_b"] <= gal["ci_high"]).all()
    assert np.allclose(gal["a_minus_b"], gal["a"] - gal["b"])


def test_cli_candidates(capsys):
    assert cs.main(["candidates", "--n-bins", "180"]) == 0
    out = capsys.readouterr().out
    assert "paper" in out and "implied_sigma_nmad" in out
