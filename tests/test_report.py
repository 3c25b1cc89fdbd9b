"""python -m analysis.report on a fake study (fast) and on a real tiny study made by study.run (slow)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import h5py
import pandas as pd
import pytest
import yaml
from _fake_study import make_fake_study

from analysis import report
from analysis.figures import cde_quantiles, pit_band
from analysis.peers import ESTIMATORS
from analysis.results import load_study

ROOT = Path(__file__).resolve().parents[1]
# RAIL FlexZBoost's grids shrunk so that it informs in seconds (as tests/test_peers.py)
FAST = {"flexzboost": {"nbump": 3, "nsharp": 3, "max_basis": 15}}
ABLATION_FIGURES = ("pit", "zp_zs", "augment_baseline", "augment_baseline_aug", "augment_constrained",
                    "learning_curves", "paired_forest", "landscape_1d")  # fmt: skip


def _check_report(study_dir: Path, figures: tuple[str, ...]) -> str:
    out = study_dir / "report"
    page = (out / "report.html").read_text()
    for name in figures:
        assert f"id='{name}'" in page, name
        assert (out / "figures" / f"{name}.html").is_file(), name
    assert (out / "figures" / "plotly.min.js").is_file()  # figure files open offline
    assert "<script src=" not in page  # report.html carries plotly.js inline: works offline
    # Table 1 fits a 1366 px screen: labels wrap, "(n=k)" on its own line under mean ± std
    assert "<table class='t1'>" in page and "table.t1 td,table.t1 th{white-space:normal" in page
    assert re.search(
        r"<td><span class='v'>[^<]* ± [^<]*</span> <span class='n'>\(n=\d+\)</span>", page
    )
    md = (out / "table1.md").read_text()
    assert "Pasquet et al." in md and "(n=" in md
    table = pd.read_csv(out / "table1.csv")
    assert set(table["source"]) >= {"this study", "literature: the paper"}
    return page


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    """The peers' cache (and a data file's copy with phot) under the test's tmp_path."""
    monkeypatch.setenv("PHOTOZ_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _check_peers(study_dir: Path, page: str, peers: tuple[str, ...], n_seeds: int) -> None:
    """The verdict leads the page; Table 1 and 1b have the peer rows; qp exports exist."""
    out = study_dir / "report"
    names = {"knn": "RAIL KNN", "flexzboost": "RAIL FlexZBoost", "bpz": "RAIL BPZ"}
    body = page.split("<body>", 1)[1]
    assert body.index("id='verdict'") < body.index("<h2>")  # the verdict comes first
    assert "Do the networks beat RAIL " in page and "the best peer on the same" in page
    verdict = pd.read_csv(out / "verdict.csv")
    labels = set(pd.read_csv(out / "summary.csv")["label"])
    assert set(verdict["label"]) == labels and (verdict["n_seeds"] == n_seeds).all()
    assert set(verdict["metric"]) == {"sigma_nmad", "outlier_frac", "cde_loss"}
    assert set(verdict["outcome"]) <= {"better", "worse", "indistinguishable"}
    for _, r in verdict.iterrows():
        assert r["ci_low"] <= r["ci_high"]
        assert f"{r['value']:.3g}" in page or r["metric"] == "outlier_frac"
    table = pd.read_csv(out / "table1.csv")
    peer_rows = table[table["source"] == "peer"]
    assert sorted(peer_rows["row"]) == sorted(f"{names[e]} (phot)" for e in peers)
    assert (peer_rows["n"] == 1).all() and peer_rows["sigma_nmad_std"].isna().all()
    md = (out / "table1.md").read_text()
    t1, t1b = md.split("### Table 1b")
    for e in peers:
        assert f"| {names[e]} (phot) | peer |" in t1 and f"| {names[e]} (phot) | peer |" in t1b
        assert f"<td>{names[e]} (phot)</td><td>peer</td>" in page
    assert "peer: RAIL" in (out / "figures" / "pit.html").read_text()  # the best peer's panel
    assert "peer: RAIL" in (out / "figures" / "zp_zs.html").read_text()
    assert set(pd.read_csv(out / "peers.csv")["name"]) == {f"{e}-phot" for e in peers}
    assert "Best peer (sigma_nmad)" in (out / "peers.md").read_text()
    frame = load_study(study_dir).frame
    for run in frame["run_dir"]:
        assert (study_dir / run / "predictions.qp.hdf5").is_file()


def test_report_on_fake_ablation(tmp_path, capsys):
    study = make_fake_study(tmp_path / "abl", seeds=(0, 1), n_test=200)
    html = report.build_report(study, png=False, peers=("knn",))  # FlexZBoost: the slow test
    page = _check_report(study, ABLATION_FIGURES)
    assert html == study / "report" / "report.html"
    assert "constrained &minus; baseline_aug (n=2 paired seeds)" in page
    assert "cannot reach 0.05" in page
    # every group's background mode is named (issue 13): none without augmentation
    assert "baseline none; baseline_aug threshold; constrained threshold" in page
    assert "D4 + background (threshold) resamplings" in page
    # and its flux table, as the data file records it (issue 13): only where g_flux > 0
    with h5py.File(study / "data.h5", "r") as f:
        source = str(f.attrs["flux_table_source"])
    assert f"baseline unused; baseline_aug unused; constrained {source}." in page
    summary = json.loads((study / "report" / "report.json").read_text())
    assert summary["flux_tables"]["constrained"] == source
    assert summary["backgrounds"]["baseline"] == "none"
    paired = pd.read_csv(study / "report" / "paired.csv")
    assert set(paired["reference"]) == {"baseline", "baseline_aug"} and (paired["n"] == 2).all()
    _check_peers(study, page, ("knn",), n_seeds=2)
    assert "has no measured photometry (phot), so the peers ran on a copy" in page
    capsys.readouterr()
    # refuses to overwrite (exit 2, one line), then --force rebuilds
    args = [str(study), "--no-png", "--no-landscape", "--no-augment", "--peers", "knn"]
    assert report.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--force" in err and err.count("\n") == 1
    assert report.main([*args, "--force"]) == 0
    _check_peers(study, (study / "report" / "report.html").read_text(), ("knn",), n_seeds=2)
    assert report.main([*args[:-2], "--peers", "none", "--force"]) == 0
    page = (study / "report" / "report.html").read_text()
    assert "id='verdict'" not in page and not (study / "report" / "verdict.csv").exists()
    assert "| peer |" not in (study / "report" / "table1.md").read_text()


def test_peers_flag_and_other_galaxies_are_one_line_errors(tmp_path, capsys):
    study = make_fake_study(tmp_path / "abl", groups=("baseline",), seeds=(0,), n_test=50)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        report.main([str(study), "--peers", "knn,lephare"])
    assert exit_.value.code == 2 and "unknown peer 'lephare'" in capsys.readouterr().err
    run = study / "runs" / "baseline-s0" / "predictions.h5"
    with h5py.File(run, "r+") as f:
        f["id"][0] = -7  # a galaxy that is not in the data file's test split
    assert report.main([str(study), "--no-png", "--no-landscape", "--no-augment",
                        "--peers", "knn"]) == 2  # fmt: skip
    err = capsys.readouterr().err.splitlines()  # progress bars, then the error: one line
    assert err[-1].startswith("error: ") and sum(e.startswith("error") for e in err) == 1
    assert "group 'baseline', run 0: its 50 test galaxies" in err[-1]
    assert "--peers none" in err[-1]


def test_report_on_fake_search_has_optuna_figures(tmp_path):
    study = make_fake_study(
        tmp_path / "gam",
        groups=("baseline_aug", "constrained"),
        seeds=(0, 1),
        searched=3,
        n_test=100,
    )
    report.build_report(study, png=False, landscape=False, augmentations=False, best=2,
                        peers=("knn",))  # fmt: skip
    page = _check_report(
        study, ("pit", "zp_zs", "optuna_history", "optuna_slice", "optuna_importance")
    )
    frame = load_study(study).frame
    best = (
        frame[frame["group"] == "search"]
        .groupby("config_id")["val_cde_loss"]
        .mean()
        .nsmallest(2)
        .index
    )
    for cid in best:  # the best configurations on validation are in the table and compared
        assert cid in page
        assert f"<td>search {cid}</td>" in page  # and have their verdict line
    _check_peers(study, page, ("knn",), n_seeds=2)
    slice_plot = page[page.index("id='optuna_slice'") :]
    assert (
        'plotly-graph-div" style="height:100%; width:100%;"' in slice_plot[:2000]
    )  # not 300 px/param
    # every row's CDE training scale (issue 13), on the page and in report.json / the CSV
    rows = {
        r["label"]: r
        for r in json.loads((study / "report" / "report.json").read_text())["cde_training"]
    }
    assert set(rows) == set(pd.read_csv(study / "report" / "summary.csv")["label"])
    assert rows["constrained"]["cde_scale"] == "paper"  # the group's own scale
    assert rows["constrained"]["g_cde_density"] == 0.0  # the fake study switches its term off
    assert "<b>constrained</b>: no CDE term (paper)" in page
    for cid in best:
        r = rows[cid]
        assert r["cde_scale"] == "density" and r["g_cde_density"] == pytest.approx(r["g_cde"])
        assert f"<b>search {cid}</b>: density, g_cde {r['g_cde']:.3g}" in page
    assert pd.read_csv(study / "report" / "cde_training.csv").shape[0] == len(rows)


def test_cde_training_converts_the_paper_scale_to_density_units(tmp_path):
    """g_cde = 0.1 on the paper's scale is 0.1 * dz / C in density units (hand value, 40 bins)."""
    study_dir = make_fake_study(tmp_path / "abl", groups=("baseline", "constrained"), seeds=(0, 1))
    for seed in (0, 1):
        path = study_dir / "runs" / f"constrained-s{seed}" / "config.yaml"
        cfg = yaml.safe_load(path.read_text())
        cfg["loss"]["g_cde"] = 0.1
        if seed == 1:
            del cfg["loss"]["cde_scale"]  # a run from before the field: read as density
        path.write_text(yaml.safe_dump(cfg))
    study = load_study(study_dir)
    table = report.cde_training(study, report.table_frame(study, best=3)).set_index("label")
    assert table.loc["baseline", "cde_scale"] == "density"
    assert table.loc["constrained", "cde_scale"] == "paper/density"  # mixed runs: both named
    dz_over_c = (0.4 / 40) / 40
    want = (0.1 * dz_over_c + 0.1) / 2  # seed 0 on the paper's scale, seed 1 on density
    assert table.loc["constrained", "g_cde_density"] == pytest.approx(want, rel=1e-12)


def test_not_a_study_is_one_line_error(tmp_path, capsys):
    assert report.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "frame.parquet" in err


def test_cli_runs_as_module(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run(
        [sys.executable, "-m", "analysis.report", "--help"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert res.returncode == 0 and "STUDY_DIR" in res.stdout


def test_pit_band_and_quantiles_by_hand():
    import numpy as np
    from scipy import stats

    lo, hi = pit_band(1000, 10)  # counts ~ Binomial(1000, 0.1): 95% interval [82, 119]
    assert (lo, hi) == pytest.approx(tuple(np.array(stats.binom.interval(0.95, 1000, 0.1)) / 100))
    p = np.array([[0.0, 0.5, 0.5, 0.0]])  # uniform on [0.1, 0.3] with edges 0, 0.1, ..., 0.4
    q = cde_quantiles(p, np.linspace(0, 0.4, 5), [0.05, 0.5, 0.95])
    np.testing.assert_allclose(q[0], [0.11, 0.2, 0.29])


MINI_SPACE = """
name: mini
description: the paper's three groups on two paired seeds (analysis tests)
kind: grid
groups: [baseline, baseline_aug, constrained]
seeds: 2
objective: {metric: val_cde_loss, mode: min}
parameters:
  lr: {role: fixed, value: 1.0e-3}
  g_l2: {role: fixed, value: 1.0e-6}
"""


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory) -> Path:
    """A real study: study.run, tiny preset, 3 groups x 2 seeds (about 2 minutes on 2 cores)."""
    tmp = tmp_path_factory.mktemp("tiny_study")
    space = tmp / "mini.yaml"
    space.write_text(MINI_SPACE)
    out = tmp / "study"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PHOTOZ_CACHE": str(tmp / "cache")}
    cmd = [sys.executable, "-m", "study.run", "--search", str(space), "--preset", "tiny",
           "--out", str(out), "--num-cpus", "2", "--no-dashboard"]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    return out


@pytest.mark.slow
def test_report_on_real_tiny_study(tiny_study, monkeypatch):
    monkeypatch.setenv("PHOTOZ_CACHE", str(tiny_study.parent / "cache"))
    report.build_report(tiny_study, png=False, peer_settings=FAST)
    page = _check_report(tiny_study, ABLATION_FIGURES)
    assert "constrained &minus; baseline_aug (n=2 paired seeds)" in page
    _check_peers(tiny_study, page, ESTIMATORS, n_seeds=2)
    land = pd.read_csv(tiny_study / "report" / "landscape.csv")
    assert set(land["label"]) == {"baseline", "baseline_aug", "constrained"}
    assert land["curvature"].notna().all()
    # a real ablation's CDE training scales (issue 13): the paper's for constrained, whose
    # g_cde = 0.1 is 0.1 * dz / C in density units (tiny preset: 180 bins over [0, 0.4])
    rows = json.loads((tiny_study / "report" / "report.json").read_text())["cde_training"]
    scale = {r["label"]: (r["cde_scale"], r["g_cde_density"]) for r in rows}
    assert scale["baseline"] == ("density", 0.0) and scale["baseline_aug"] == ("density", 0.0)
    assert scale["constrained"][0] == "paper"
    assert scale["constrained"][1] == pytest.approx(0.1 * 0.4 / 180**2, rel=1e-9)


def test_png_export_falls_back_gracefully(tmp_path, monkeypatch):
    import plotly.graph_objects as go
    import plotly.io as pio

    from analysis import figures

    fig = go.Figure(go.Scatter(x=[0, 1], y=[1, 0]))

    def no_browser(*args, **kwargs):
        raise RuntimeError("no Chrome found")

    monkeypatch.setattr(pio, "write_images", no_browser)
    with pytest.warns(UserWarning, match="PNG export skipped"):
        assert figures.write_pngs([fig], [tmp_path / "a.png"]) is False
    assert not (tmp_path / "a.png").exists()
