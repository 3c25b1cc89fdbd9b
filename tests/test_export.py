"""qp export round trip: RAIL's own evaluators read an exported run and agree with metrics.json.

Matched definitions (SPEC 3 and study.metrics against RAIL 2.0 / qp 1.1):
- sigma_nmad: RAIL's ``point_stats_sigma_mad`` on the ancil ``zmean`` (the CDE mean over bin
  centres, our point estimate) is the same formula, 1.4826 median|d - median d|.
- bias: RAIL's ``point_bias`` is the *median* of d, our ``bias_median``; our ``bias`` (the
  mean) is the mean of RAIL's ``point_stats_ez`` array.
- CDE loss: RAIL's ``cdeloss`` integrates f^2 by the trapezoid rule on an evaluation grid and
  takes f at the grid point nearest zs. On the grid of bin centres both are exact for a
  histogram except that the trapezoid halves the first and last bins: our per-galaxy loss
  minus dz (f_1^2 + f_C^2) / 2 is RAIL's, term for term.
- PIT KS: RAIL 2.0's ``DistToPointEvaluator`` ``pit`` metric returns the PIT as a
  distribution (a ``qp.quant`` ensemble: ``np.quantile`` of the PIT values at its
  ``eval_grid``), not a KS number; no RAIL 2.0 stage gives the PIT's KS (its ``ks`` metric is
  a DistToDist comparison of sampled distributions). On the grid of N levels
  ``linspace(0, 1, N)`` the N quantiles are the N sorted PIT values themselves, so scipy's KS
  of them against the uniform is qp's ``PIT.evaluate_PIT_KS`` and ours. (qp drops PIT values
  of exactly 0 or 1 and repeats from that ensemble; the test checks none was dropped.)
``force_exact=True`` makes RAIL compute on all values (its default accumulates t-digests,
an approximation). metrics.json is computed from float32 CDEs, the export from the stored
float16 ones: the 1e-4 tolerance covers that rounding; on the exported CDEs themselves the
agreement is to float64 precision.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import qp
from rail.evaluation.dist_to_point_evaluator import DistToPointEvaluator
from rail.evaluation.point_to_point_evaluator import PointToPointEvaluator
from scipy import stats
from test_train import make_file, tiny

from analysis import export
from analysis.results import load_predictions
from study.errors import UserError
from study.metrics import all_metrics, bin_centers, cde_losses, pit
from study.train import train


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("export")
    out = folder / "study" / "runs" / "abc-s0"
    # the run this test was calibrated on (rel 1e-4 for float16 CDEs below): constrained with
    # the density-scale CDE term it trained on before issue 13 made the group's term paper-scale
    train(tiny(make_file(folder / "d.h5"), **{"loss.cde_scale": "density"}), out)
    return out


def rail_metrics(
    ens: qp.Ensemble, zs: np.ndarray, edges: np.ndarray
) -> tuple[dict[str, float], np.ndarray]:
    """RAIL's numbers for ``ens``, and the (N,) sorted PIT values read off RAIL's PIT output."""
    truth = {"photometry": {"redshift": zs}}
    point = PointToPointEvaluator.make_stage(
        name="export_points",
        metrics=["point_stats_sigma_mad", "point_bias", "point_stats_ez"],
        point_estimate_key="zmean",
        force_exact=True,
        output_mode="return",
    ).evaluate(ens, truth)
    dist = DistToPointEvaluator.make_stage(
        name="export_dists",
        metrics=["cdeloss", "pit"],
        metric_config={
            "cdeloss": {"eval_grid": bin_centers(edges).tolist()},
            "pit": {"eval_grid": np.linspace(0.0, 1.0, len(zs))},  # N levels: the N PIT values
        },
        force_exact=True,
        output_mode="return",
    ).evaluate(ens, truth)
    pit = dist["single_distribution_summary"].data["pit"]  # RAIL's PIT distribution
    sorted_pit = np.asarray(pit.objdata["locs"], np.float64).ravel()
    assert len(sorted_pit) == len(zs)  # no PIT value dropped: the quantiles are all of them
    metrics = {
        "sigma_nmad": float(point["summary"].data["point_stats_sigma_mad"][0]),
        "bias_median": float(point["summary"].data["point_bias"][0]),
        "bias": float(np.mean(point["output"].data["point_stats_ez"])),
        "cde_loss": float(dist["summary"].data["cdeloss"][0]),
        "ks": float(stats.kstest(sorted_pit, "uniform").statistic),
    }
    return metrics, sorted_pit


def test_rail_evaluators_reproduce_metrics_json(run: Path) -> None:
    (out,) = export.export(run.parents[1])  # the study directory: every run under runs/
    assert out == run / "predictions.qp.hdf5"
    ens = qp.read(str(out))
    pred = load_predictions(run)
    assert ens.npdf == len(pred.zs) and set(ens.ancil) >= {"zmean", "zmode", "id"}
    np.testing.assert_array_equal(ens.ancil["id"], pred.ids)
    edges, zs = pred.edges, np.asarray(ens.ancil["redshift"])
    p = np.asarray(pred.p, np.float64)
    p /= p.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(ens.ancil["zmean"], p @ bin_centers(edges), rtol=1e-12)
    np.testing.assert_array_equal(zs, pred.zs)
    got, rail_pit = rail_metrics(ens, zs, edges)
    # RAIL's PIT distribution holds our PIT values (the histogram CDF at zs), sorted
    np.testing.assert_allclose(rail_pit, np.sort(pit(p, zs, edges)), rtol=0, atol=1e-12)
    dz, f = np.diff(edges), p / np.diff(edges)
    ends = float(np.mean(dz[0] * f[:, 0] ** 2 + dz[-1] * f[:, -1] ** 2) / 2)  # trapezoid ends
    ours = all_metrics(p, zs, edges) | {"cde_loss": float(np.mean(cde_losses(p, zs, edges)))}
    ours["cde_loss"] -= ends
    for name, value in got.items():  # on the exported CDEs: the same numbers
        assert value == pytest.approx(ours[name], rel=1e-9, abs=1e-12), name
    saved = json.loads((run / "metrics.json").read_text())["test"]
    saved["cde_loss"] -= ends
    for name, value in got.items():  # against metrics.json (float32 CDEs): 1e-4 relative
        assert value == pytest.approx(saved[name], rel=1e-4), name


def test_export_refuses_a_directory_without_runs(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=f"{tmp_path}: neither a run directory"):
        export.export(tmp_path)
    assert export.main([str(tmp_path)]) == 2


def test_cli_exports_a_run(run: Path, capsys: pytest.CaptureFixture) -> None:
    assert export.main([str(run)]) == 0
    assert f"wrote {run / 'predictions.qp.hdf5'}" in capsys.readouterr().out
    assert not list(run.glob(".*tmp*"))
