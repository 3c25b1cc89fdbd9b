"""``python -m analysis.report STUDY_DIR``: the study's report in ``STUDY_DIR/report/``.

Writes ``report.html`` (self-contained: plotly.js inline once, so it opens offline), the
tables (``table1.md``, ``table1.csv``, ``peers.md``, ``peers.csv``, ``verdict.csv``,
``summary.csv``, ``paired.csv``, ``variance.csv``, ``landscape.csv``; ``pareto.csv`` for a study
with several objectives, whose Pareto front also leads the figures) and every figure as its own
HTML file (and PNG where kaleido can start a Chromium) under ``report/figures/``.

The page leads with the verdict: each Table 1 row's seed mean against the best RAIL peer
(``analysis.peers``, on the measured photometry of the same data file) on the same test
galaxies, with a paired bootstrap CI over galaxies (``analysis.verdict``). Then the paper's
question: the paired difference constrained - baseline_aug on the same seeds. Every run of the
study also gets its test CDEs as a qp Ensemble (``analysis.export``), where it has none yet.

The parts: ``make_tables`` / ``write_tables`` (the numbers), ``make_figures`` / ``write_figures``,
and ``render_page``, which fills ``analysis/templates/report.html.j2`` (Jinja2, autoescaped).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup
from plotly.offline import get_plotlyjs

from analysis import figures
from analysis.peers import ESTIMATORS
from analysis.results import Predictions, Study, load_run_config, load_study, read_bin_edges
from analysis.stats import format_mean_std, paired_table, pareto_table, summarize, variance_split
from analysis.table import (
    COLUMNS,
    EXTRA_COLUMNS,
    PAPER_COLUMNS,
    PEER,
    TRUTH,
    select_rows,
    table1,
    to_markdown,
)
from analysis.verdict import StudyPeers, headline, study_verdict, verdict_rows
from study.config import config_from_dict
from study.errors import UserError
from study.halving import LEDGER, trial_epochs
from study.losses import cde_scale_factor
from study.machine import pick_device

KEY_METRICS = ("sigma_nmad", "bias", "outlier_frac", "cde_loss", "ks", "coverage_68")
LANDSCAPE_GALAXIES = 64  # report: a quick 1D slice per group; the full one is analysis.landscape
QUESTIONS = (
    ("constrained", "baseline_aug"),
    ("baseline_aug", "baseline"),
    ("constrained", "baseline"),
)


def labelled(frame: pd.DataFrame, best: int = 3, **select) -> pd.DataFrame:
    """The frame rows shown in Table 1 with a ``label`` column (group, or group + config)."""
    parts = []
    for label, runs in select_rows(frame, best=best, **select):
        name = (
            runs["group"].iloc[0]
            if not label.startswith(("search ", "custom "))
            else runs["config_id"].iloc[0]
        )
        parts.append(runs.assign(label=str(name)))
    return pd.concat(parts, ignore_index=True)


@dataclass
class Tables:
    """The report's numbers; each frame but ``frame`` is also written as a CSV file."""

    frame: pd.DataFrame  # the study's rows shown in Table 1, with a ``label`` column
    table1: pd.DataFrame  # table1.md, table1.csv: this study and the literature
    summary: pd.DataFrame  # summary.csv: mean, std, CI per label and test metric
    paired: pd.DataFrame  # paired.csv: every label against each reference, on shared seeds
    variance: pd.DataFrame  # variance.csv: trial (seed) and study (configuration) variance
    peers: StudyPeers | None = None  # peers.csv, verdict.csv: None with peers=()
    # pareto.csv: seed mean and std per objective and configuration; empty for one objective
    pareto: pd.DataFrame = field(default_factory=pd.DataFrame)
    # cde_training.csv (and report.json's cde_training): per label, the scale its CDE training
    # term was on and its weight in both units (issue 13; the metric cde_loss is density)
    cde_training: pd.DataFrame = field(default_factory=pd.DataFrame)
    # per label, read once from its first run: background mode, flux table (page and report.json)
    backgrounds: dict[str, str] = field(default_factory=dict)
    flux_tables: dict[str, str] = field(default_factory=dict)


@dataclass
class Figures:
    """The report's figures, in page order, and what the passes behind them left."""

    figures: list[tuple[str, go.Figure]] = field(default_factory=list)
    landscape: pd.DataFrame = field(default_factory=pd.DataFrame)  # landscape.csv, if any
    notes: list[str] = field(default_factory=list)  # what was skipped, and why
    timings: dict[str, float] = field(default_factory=dict)  # seconds per pass


def build_report(
    study_dir: str | Path,
    *,
    force: bool = False,
    best: int = 3,
    landscape: bool = True,
    augmentations: bool = True,
    png: bool = True,
    seed: int = 0,
    device: str = "auto",
    peers: tuple[str, ...] = ESTIMATORS,
    peer_settings: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """Write ``STUDY_DIR/report/`` and return the path of ``report.html``.

    Args:
        peers: RAIL estimators to place the networks against (``analysis.peers``); ``()``
            leaves out the peers and the verdict.
        peer_settings: RAIL option overrides per estimator (``peer_results``' ``settings``).
        (the others: as the command-line flags)
    """
    t0 = time.perf_counter()
    study = load_study(study_dir)
    out = _empty_report_dir(study, force)
    timings: dict[str, float] = {}
    with _timed(timings, "peers_verdict"):
        the_peers = _peers(study, best, peers, peer_settings, seed)
    with _timed(timings, "tables"):
        tables = make_tables(study, best, the_peers)
        write_tables(tables, out)
    with _timed(timings, "qp_export"):
        exported = export_runs(study)
    figs = Figures(timings=timings, notes=[*exported])
    make_figures(study, tables, figs, landscape=landscape, augmentations=augmentations,
                 seed=seed, device=device)  # fmt: skip
    write_figures(figs, out, png=png)
    seconds = time.perf_counter() - t0
    (out / "report.html").write_text(render_page(study, tables, figs, seconds))
    summary = {
        "seconds": seconds,
        "timings": figs.timings,
        "figures": [n for n, _ in figs.figures],
        "cde_training": tables.cde_training.to_dict(orient="records"),
        "backgrounds": tables.backgrounds,
        "flux_tables": tables.flux_tables,
    }
    if (line := halving_line(study)) is not None:
        summary["halving"] = line
    (out / "report.json").write_text(json.dumps(summary, indent=1))
    return out / "report.html"


def _peers(
    study: Study,
    best: int,
    estimators: tuple[str, ...],
    settings: dict[str, dict[str, Any]] | None,
    seed: int,
) -> StudyPeers | None:
    """The peers and the verdict, first: a failure is one line that also names --peers none."""
    if not estimators:
        return None
    try:
        return study_verdict(study, table_frame(study, best), estimators=estimators,
                             settings=settings, seed=seed)  # fmt: skip
    except UserError as exc:
        raise UserError(f"{exc} (or leave the peers out: --peers none)") from exc


def export_runs(study: Study) -> list[str]:
    """Every run's test CDEs as ``predictions.qp.hdf5`` (analysis.export), where missing.

    Returns the page's note. An existing export is kept (the same predictions give the same
    ensemble), as nothing in a run directory is overwritten.
    """
    from analysis.export import QP_NAME, export_run

    runs = [study.run_dir(r) for _, r in study.frame.iterrows()]
    todo = [r for r in runs if (r / "predictions.h5").is_file() and not (r / QP_NAME).is_file()]
    for run in todo:
        export_run(run)
    return [
        f"qp export: {len(runs)} runs' test CDEs as RUN_DIR/{QP_NAME} (qp.hist, for RAIL's "
        f"evaluators): {len(todo)} written now, {len(runs) - len(todo)} there already."
    ]


def _empty_report_dir(study: Study, force: bool) -> Path:
    """``STUDY_DIR/report/`` with an empty ``figures/``; an existing report needs ``force``."""
    out = study.path / "report"
    if out.exists() and any(out.iterdir()):
        if not force:
            raise UserError(f"{out}: a report exists already; pass --force to overwrite it")
        shutil.rmtree(out)
    (out / "figures").mkdir(parents=True)
    return out


# ---- the tables ------------------------------------------------------------------------------


def table_frame(study: Study, best: int) -> pd.DataFrame:
    """The study's rows shown in Table 1, labelled, selected on the study's objective."""
    select_on, mode = study.objective()
    return labelled(study.frame, best=best, select_on=select_on, mode=mode)


def make_tables(study: Study, best: int, peers: StudyPeers | None = None) -> Tables:
    """Table 1 (with the peers' rows), the per-label summary, the paired comparisons and the
    variance split."""
    select_on, mode = study.objective()
    frame = table_frame(study, best)
    test_cols = [f"test_{m}" for m, _, _ in COLUMNS if f"test_{m}" in frame]
    refs = list(
        dict.fromkeys(frame.loc[frame["group"].isin(["baseline", "baseline_aug"]), "label"])
    )
    key_cols = [f"test_{m}" for m in KEY_METRICS if f"test_{m}" in frame]
    var_rows = [
        {"metric": c.removeprefix("test_"), **variance_split(study.frame, c)} for c in test_cols
    ]
    return Tables(
        frame=frame,
        table1=table1(
            study.frame,
            best=best,
            select_on=select_on,
            mode=mode,
            peers=None if peers is None else peers.frame,
        ),  # fmt: skip
        summary=summarize(frame, test_cols, by="label"),
        paired=paired_table(frame, key_cols, refs, by="label"),
        variance=pd.DataFrame(var_rows),
        peers=peers,
        pareto=pareto(study),
        cde_training=cde_training(study, frame),
        backgrounds=backgrounds(study, frame),
        flux_tables=flux_tables(study, frame),
    )


def cde_training(study: Study, frame: pd.DataFrame) -> pd.DataFrame:
    """Per label: the CDE training term's scale (``loss.cde_scale``), g_cde and its density weight.

    Read from every run's ``config.yaml`` (a run from before the field: density, what it
    trained on). ``g_cde_density`` is ``g_cde`` times ``study.losses.cde_scale_factor``, so
    rows on different scales compare in one unit; 0 means no CDE term.
    """
    rows = []
    for label, runs in frame.groupby("label", sort=False):
        scales, weights = [], []
        for _, row in runs.iterrows():
            run_dir = study.run_dir(row)
            loss = config_from_dict(load_run_config(run_dir)).loss
            scales.append(loss.cde_scale)
            weights.append(loss.g_cde * cde_scale_factor(loss.cde_scale, read_bin_edges(run_dir)))
        rows.append({
            "label": str(label),
            "group": str(runs["group"].iloc[0]),
            "cde_scale": "/".join(dict.fromkeys(scales)),  # one, unless the label mixes runs
            "g_cde": float(runs["g_cde"].iloc[0]) if "g_cde" in runs else float("nan"),
            "g_cde_density": float(np.mean(weights)),
            "n_runs": len(runs),
        })  # fmt: skip
    return pd.DataFrame(
        rows, columns=["label", "group", "cde_scale", "g_cde", "g_cde_density", "n_runs"]
    )


def pareto(study: Study) -> pd.DataFrame:
    """A study with several objectives: every configuration's seed means and its front."""
    objectives = [(c, m) for c, m in study.objectives() if c in study.frame]
    if len(objectives) < 2:
        return pd.DataFrame()
    return pareto_table(study.frame, objectives)


PEER_TABLE = ["name", "label", *KEY_METRICS, "outlier_frac_rail", "n_train", "n_test",
              "seconds", "settings", "versions"]  # fmt: skip


def write_tables(tables: Tables, out: Path) -> None:
    """table1.md/.csv, peers.md/.csv and verdict.csv (with peers), summary.csv, paired.csv (if
    any pair) and variance.csv."""
    (out / "table1.md").write_text(to_markdown(tables.table1))
    tables.table1.to_csv(out / "table1.csv", index=False)
    if tables.peers is not None:
        frame = tables.peers.frame
        frame.to_csv(out / "peers.csv", index=False)
        (out / "peers.md").write_text(_peers_markdown(tables.peers))
        tables.peers.verdict.to_csv(out / "verdict.csv", index=False)
    tables.summary.to_csv(out / "summary.csv", index=False)
    if not tables.paired.empty:
        tables.paired.drop(columns=["seeds"]).to_csv(out / "paired.csv", index=False)
    tables.variance.to_csv(out / "variance.csv", index=False)
    if not tables.pareto.empty:
        tables.pareto.to_csv(out / "pareto.csv", index=False)
    tables.cde_training.to_csv(out / "cde_training.csv", index=False)


def _peers_markdown(peers: StudyPeers) -> str:
    """peers.md: the peers' own table (one run each) and the best one's name."""
    cols = [c for c in PEER_TABLE if c not in ("settings", "versions")]
    view = peers.frame[cols]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in view.iterrows():
        lines.append("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v)
                                       for v in r) + " |")  # fmt: skip
    return "\n".join([
        f"### Peers on {peers.source.name}: RAIL estimators on measured photometry, one run each",
        "", *lines, "",
        f"Best peer (sigma_nmad): {peers.best['label']}. Settings and versions: peers.csv.", "",
    ])  # fmt: skip


# ---- the figures -----------------------------------------------------------------------------


@contextmanager
def _timed(timings: dict[str, float], name: str) -> Iterator[None]:
    tic = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - tic


def make_figures(
    study: Study,
    tables: Tables,
    figs: Figures,
    *,
    landscape: bool,
    augmentations: bool,
    seed: int,
    device: str,
) -> None:
    """Add the report's figures to ``figs``, in page order, timing each pass."""
    frame = tables.frame
    firsts = _first_runs(frame)
    if not tables.pareto.empty:  # several objectives: the search's answer comes first
        objectives = [(c, m) for c, m in study.objectives() if c in study.frame]
        figs.figures.append(("pareto_front", figures.pareto_front(tables.pareto, objectives)))
    with _timed(figs.timings, "pit_zp_zs"):
        preds = {k: study.predictions(study.run_dir(r)) for k, r in firsts.items()}
        n_runs = {k: int(g["seed"].nunique()) for k, g in frame.groupby("label")}
        pits, shown = _pits(study, frame), dict(preds)
        if tables.peers is not None:  # the best peer beside the groups, in grey
            key, pred = _peer_panel(tables.peers)
            pits[key], shown[key] = [_pit(pred)], pred
        figs.figures.append(("pit", figures.pit_histograms(pits)))
        figs.figures.append(("zp_zs", figures.zp_zs(shown, n_runs=n_runs, seed=seed)))
    with _timed(figs.timings, "augmentations"):
        if augmentations:
            figs.figures += _augmentation_figs(study, firsts, preds, seed, device, figs.notes)
    with _timed(figs.timings, "curves_forest_optuna"):
        figs.figures += _history_figs(study, frame, tables.paired, figs.notes)
    with _timed(figs.timings, "landscape"):
        if landscape:
            fig, figs.landscape = _landscape(study, firsts, seed, device, figs.notes)
            if fig is not None:
                figs.figures.append(("landscape_1d", fig))


def _pit(pr: Predictions) -> np.ndarray:
    from study.metrics import pit

    return np.asarray(pit(pr.p, pr.zs, pr.edges))


def _pits(study: Study, frame: pd.DataFrame) -> dict[str, list[np.ndarray]]:
    out: dict[str, list[np.ndarray]] = {}
    for label, runs in frame.groupby("label", sort=False):
        for _, row in runs.iterrows():
            out.setdefault(str(label), []).append(_pit(study.predictions(study.run_dir(row))))
    return out


def _peer_panel(peers: StudyPeers) -> tuple[str, Predictions]:
    """The best peer's figure panel: ``peer: RAIL FlexZBoost (phot)`` and its CDEs."""
    return f"peer: {str(peers.best['label']).split(' on ')[0]} ({peers.best['inputs']})", (
        peers.predictions
    )


def _first_runs(frame: pd.DataFrame) -> dict[str, pd.Series]:
    return {str(k): g.sort_values("seed").iloc[0] for k, g in frame.groupby("label", sort=False)}


def _history_figs(
    study: Study, frame: pd.DataFrame, paired: pd.DataFrame, notes: list[str]
) -> list[tuple[str, go.Figure]]:
    """Learning curves, the paired forest plot and Optuna's own figures, where there is data."""
    out = []
    hist = study.history
    if not hist.empty and {"config_id", "epoch"} <= set(hist.columns):
        labels = frame.drop_duplicates("config_id").set_index("config_id")["label"]
        h = hist[hist["config_id"].isin(labels.index)].copy()
        h["group"] = h["config_id"].map(labels)
        out.append(("learning_curves", figures.learning_curves(h)))
    if not paired.empty:
        out.append(("paired_forest", figures.forest(paired, by="label")))
    storage = study.optuna_storage()
    if storage:
        try:
            out += list(figures.optuna_figures(storage).items())
        except Exception as exc:  # a foreign or half-written journal should not sink the report
            notes.append(f"Optuna figures skipped: {type(exc).__name__}: {exc}")
    return out


def _augmentation_figs(study, firsts, preds, seed, device, notes) -> list[tuple[str, go.Figure]]:
    from analysis.results import augmented_cdes

    first = next(iter(preds.values()))
    with __import__("h5py").File(
        study.run_dir(next(iter(firsts.values()))) / "predictions.h5", "r"
    ) as f:
        index = f["index"][...] if "index" in f else None
    if index is None:
        notes.append("Appendix H figures skipped: predictions.h5 has no 'index' of data-file rows.")
        return []
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(first.zs), size=min(12, len(first.zs)), replace=False))
    out = []
    modes = backgrounds(study, pd.DataFrame(list(firsts.values())))
    for label, row in firsts.items():
        mode = modes.get(label, "none")
        mode = "threshold" if mode == "none" else mode  # a run without augmentation: the paper's
        try:
            p, zs, edges = augmented_cdes(
                study.run_dir(row), index[pick], n_draws=20, seed=seed, device=pick_device(device),
                background=mode,
            )  # fmt: skip
        except UserError as exc:
            notes.append(f"Appendix H figure for {label} skipped: {exc}")
            continue
        title = f"{label} (seed {int(row['seed'])})"
        out.append((f"augment_{label}", figures.augmentation_cdes(title, p, zs, edges, mode)))
    return out


def _landscape(study, firsts, seed, device, notes) -> tuple[go.Figure | None, pd.DataFrame]:
    from analysis import landscape as ls

    slices, rows, n_gal = {}, [], 0
    for label, row in firsts.items():
        try:
            res = ls.run_landscape(
                study.run_dir(row),
                points=21,
                n_galaxies=LANDSCAPE_GALAXIES,
                seed=seed,
                device=device,
                two_d=False,
            )
        except UserError as exc:
            notes.append(f"landscape for {label} skipped: {exc}")
            continue
        slices[f"{label} (seed {int(row['seed'])})"] = res["slice1d"]
        n_gal = res["n_galaxies"]
        rows.append(res["summary"].assign(label=label, seed=int(row["seed"])))
    if not slices:
        return None, pd.DataFrame()
    return figures.landscape_1d(slices, n_galaxies=n_gal), pd.concat(rows, ignore_index=True)


def write_figures(figs: Figures, out: Path, *, png: bool) -> None:
    """Each figure as ``figures/<name>.html`` (and ``.png``); ``landscape.csv`` if it ran."""
    with _timed(figs.timings, "write_figures"):
        if not figs.landscape.empty:
            figs.landscape.to_csv(out / "landscape.csv", index=False)
        figdir = out / "figures"
        for name, fig in figs.figures:
            figures.save(fig, figdir / name)
        pngs = [figdir / f"{name}.png" for name, _ in figs.figures]
        if png and not figures.write_pngs([f for _, f in figs.figures], pngs):
            figs.notes.append(
                "PNG export skipped: kaleido could not start Chrome/Chromium "
                "(apt-get install chromium)."
            )


# ---- the page --------------------------------------------------------------------------------


def render_page(study: Study, tables: Tables, figs: Figures, seconds: float) -> str:
    """``report.html`` from ``templates/report.html.j2``: numbers first, then the figures."""
    paired, land, summ = tables.paired, figs.landscape, tables.summary
    paired_view = paired.drop(columns=["seeds"]) if not paired.empty else paired
    this_study = tables.table1[tables.table1["source"].isin(["this study", PEER, TRUTH])]
    landscape = None
    if not land.empty:
        landscape = {v: _df_html(_pivot(land, v)) for v in ("curvature", "sharpness")}
    return PAGE.render(
        name=study.path.name,
        plotlyjs=Markup(get_plotlyjs()),
        runs=_runs(study),
        backgrounds=tables.backgrounds,
        flux_tables=tables.flux_tables,
        seconds=seconds,
        verdict=verdict_view(tables),
        questions=questions(paired),
        table1_paper=_table1_view(tables.table1, PAPER_COLUMNS),
        table1_extra=_table1_view(this_study, EXTRA_COLUMNS),
        paired=_df_html(paired_view) if not paired_view.empty else None,
        variance=_df_html(tables.variance),
        pareto=pareto_view(study, tables.pareto),
        landscape=landscape,
        figures=[
            (name, Markup(fig.to_html(full_html=False, include_plotlyjs=False)))
            for name, fig in figs.figures
        ],
        notes=figs.notes,
        summary=_df_html(summ[summ["metric"].isin([f"test_{m}" for m in KEY_METRICS])]),
        cde_training=cde_training_view(tables.cde_training),
    )


def pareto_view(study: Study, table: pd.DataFrame) -> dict[str, Any] | None:
    """The page's Pareto section: the objectives, and the front's rows then the references'."""
    if table.empty:
        return None
    objectives = [(c, m) for c, m in study.objectives() if c in study.frame]
    (first, mode), *_ = objectives
    shown = table[table["pareto"] | table["group"].isin(figures.REFERENCE_GROUPS)]
    shown = shown.sort_values(["pareto", f"{first}_mean"], ascending=[False, mode == "min"])
    cells = ["config_id", "group", "g_flux", "g_inv", "g_cde", "lr", "n"]
    view = shown[[c for c in cells if c in shown]].copy()
    for c, _ in objectives:
        view[c] = [
            format_mean_std(m, s, int(n), digits=3)
            for m, s, n in zip(shown[f"{c}_mean"], shown[f"{c}_std"], shown["n"], strict=True)
        ]
    view["pareto"] = np.where(shown["pareto"], "yes", "no")
    return {
        "objectives": [f"{c} ({m}imise)" for c, m in objectives],
        "n_front": int(table["pareto"].sum()),
        "n": len(table),
        "table": _df_html(view),
    }


def cde_training_view(table: pd.DataFrame) -> list[dict[str, str]]:
    """The page's rows of ``cde_training``: label, scale (or 'no CDE term'), both weights."""
    return [
        {
            "label": r["label"] if r["label"] == r["group"] else f"{r['group']} {r['label']}",
            "scale": r["cde_scale"]
            if r["g_cde_density"] != 0
            else f"no CDE term ({r['cde_scale']})",
            "g_cde": f"{r['g_cde']:.3g}",
            "g_cde_density": f"{r['g_cde_density']:.3g}",
        }
        for _, r in table.iterrows()
    ]


def verdict_view(tables: Tables) -> dict[str, Any] | None:
    """The page's first lines: the headline and one row per Table 1 row against the best peer."""
    if tables.peers is None:
        return None
    peers, frame = tables.peers, tables.frame
    names = {str(k): _row_name(g) for k, g in frame.groupby("label", sort=False)}
    best = peers.best
    return {
        "headline": headline(peers.verdict, str(best["label"])),
        "peer": str(best["label"]),
        "n_galaxies": int(peers.verdict["n_galaxies"].iloc[0]),
        "n_boot": int(peers.verdict["n_boot"].iloc[0]),
        "rows": verdict_rows(peers.verdict, names),
        "notes": peers.notes,
    }


def _row_name(runs: pd.DataFrame) -> str:
    """A label as the verdict names it: the group, or ``search <config_id>``."""
    group, label = str(runs["group"].iloc[0]), str(runs["label"].iloc[0])
    return group if group == label else f"{group} {label}"


def backgrounds(study: Study, frame: pd.DataFrame) -> dict[str, str]:
    """Each label's background resampling (``augment.background`` of its first run's config):
    ``threshold`` or ``segmentation``; ``none`` without augmentation or invariance term."""
    import yaml

    from analysis.results import run_background

    out = {}
    for label, row in _first_runs(frame).items():
        path = study.run_dir(row) / "config.yaml"
        cfg = yaml.safe_load(path.read_text()) if path.is_file() else {}
        loss = (cfg or {}).get("loss") or {}
        augmenting = bool(loss.get("augment")) or float(loss.get("g_inv", 0) or 0) > 0
        out[label] = run_background(cfg or {}) if augmenting else "none"
    return out


def flux_tables(study: Study, frame: pd.DataFrame) -> dict[str, str]:
    """Each label's flux table T (its first run's data file): ``flux_table_source`` (spectra,
    templates with what they were fitted to, synthetic-exact), or ``unused`` where g_flux = 0."""
    import h5py
    import yaml

    from analysis.results import run_dataset

    out = {}
    for label, row in _first_runs(frame).items():
        run_dir = study.run_dir(row)
        path = run_dir / "config.yaml"
        cfg = (yaml.safe_load(path.read_text()) if path.is_file() else {}) or {}
        if float(((cfg.get("loss") or {}).get("g_flux", 0)) or 0) == 0:
            out[label] = "unused"
            continue
        try:
            with h5py.File(run_dataset(cfg, run_dir), "r") as f:
                source = str(f.attrs.get("flux_table_source", "unknown"))
                fit = f.attrs.get("flux_table_fit_from")
        except (OSError, UserError):
            out[label] = "unknown (data file not found)"
            continue
        out[label] = f"{source} (fitted to {fit})" if fit is not None else source
    return out


def _runs(study: Study) -> dict[str, Any]:
    """The page's first line: what ran, on what, from which commit."""
    f = study.frame
    prov = {}
    if (study.path / "provenance.json").is_file():
        prov = json.loads((study.path / "provenance.json").read_text())
    return {
        "n": len(f),
        "configurations": f["config_id"].nunique(),
        "seeds": sorted(int(s) for s in f["seed"].unique()),
        "groups": study.groups,
        "kind": "ablation" if study.by == "group" else "search",
        "devices": sorted(set(map(str, f.get("device", pd.Series(["?"]))))),
        "git_commit": str(prov.get("git_commit", "?")),
        "halving": halving_line(study),
    }


def halving_line(study: Study) -> str | None:
    """A paired-halving study's cost: trial-epochs run against the unpruned study's, or None."""
    if not (study.path / LEDGER).is_file():
        return None
    stopped = study.stopped
    both = [study.frame.assign(stopped=False), stopped.assign(stopped=True)]
    ran, unpruned = trial_epochs(pd.concat(both, ignore_index=True))
    n_stopped = int(stopped["config_id"].nunique()) if len(stopped) else 0
    n_all = int(study.frame["config_id"].nunique()) + n_stopped
    rungs = ", ".join(str(int(r)) for r in sorted(set(stopped["epochs"]))) if n_stopped else "-"
    return (
        f"Paired early stopping: {ran} trial-epochs run of the {unpruned} an unpruned study "
        f"would run ({ran / unpruned:.0%}); {n_stopped} of {n_all} configurations stopped, "
        f"all seeds together, at epoch(s) {rungs} (in frame.parquet, in no table)."
    )


def _excludes_zero(r: pd.Series) -> bool:
    return bool(np.isfinite(r["ci_low"]) and (r["ci_low"] > 0 or r["ci_high"] < 0))


def questions(paired: pd.DataFrame) -> list[dict[str, Any]]:
    """The paired differences that answer the paper's question, that one first, as shown."""
    out = []
    for value, ref in QUESTIONS:
        sub = paired[(paired["label"] == value) & (paired["reference"] == ref)]
        if sub.empty:
            continue
        n = int(sub["n"].max())
        note = sub["note"].iloc[0]
        if n < 5:
            note += (
                f"; with n={n} the bootstrap CI is about the range of the per-seed differences "
                "and undercovers, so read 'excludes 0' as descriptive"
            )
        rows = [
            {
                "metric": r["metric"].removeprefix("test_"),
                "mean_diff": f"{r['mean_diff']:+.3g}",
                "ci": f"[{r['ci_low']:.3g}, {r['ci_high']:.3g}]",
                "p": f"{r['p_wilcoxon']:.2g}",
                "excludes_zero": _excludes_zero(r),
            }
            for _, r in sub.iterrows()
        ]
        n_excluding = sum(r["excludes_zero"] for r in rows)
        out.append({"value": value, "reference": ref, "n": n, "n_excluding": n_excluding,
                    "note": note, "rows": rows})  # fmt: skip
    return out


def _table1_view(table: pd.DataFrame, columns) -> dict[str, Any]:
    """Table 1's header and cells as shown: mean ± std (n), literature values as they are."""
    rows = []
    for _, rec in table.iterrows():
        lit = str(rec["source"]).startswith("literature")
        peer = rec["source"] in (PEER, TRUTH)
        cells = [str(rec["row"]), str(rec["source"])]
        for metric, _, scale in columns:
            mean, std = rec[f"{metric}_mean"], rec[f"{metric}_std"]
            if lit or peer:  # one value each: no std, no n
                cells.append(f"{mean * scale:.3g}" if np.isfinite(mean) else "–")
            else:
                cells.append(format_mean_std(mean, std, int(rec[f"{metric}_n"]), scale=scale))
        kind = "lit" if lit else ("truth" if rec["source"] == TRUTH else "peer" if peer else "ours")
        rows.append({"kind": kind, "cells": cells})
    return {"header": ["row", "source"] + [c[1] for c in columns], "rows": rows}


def _pivot(land: pd.DataFrame, value: str) -> pd.DataFrame:
    wide = land.pivot_table(index=["label", "seed"], columns="term", values=value).reset_index()
    wide.columns.name = None
    return wide


def _df_html(df: pd.DataFrame, floatfmt: str = "{:.4g}") -> Markup:
    """pandas' HTML table (it escapes the cells), marked safe for the template."""
    html = df.to_html(index=False, float_format=lambda v: floatfmt.format(v), border=0, na_rep="–")
    return Markup(html)


PAGE = Environment(
    loader=PackageLoader("analysis", "templates"),
    autoescape=select_autoescape(["html", "html.j2"]),
    undefined=StrictUndefined,
    keep_trailing_newline=True,
).get_template("report.html.j2")


def _estimators(text: str) -> tuple[str, ...]:
    """``--peers``: 'knn,flexzboost' -> ('knn', 'flexzboost'); 'none' -> ()."""
    names = tuple(n.strip() for n in text.split(",") if n.strip() and n.strip() != "none")
    bad = [n for n in names if n not in ESTIMATORS]
    if bad:
        raise argparse.ArgumentTypeError(
            f"unknown peer {bad[0]!r}; choose from {','.join(ESTIMATORS)} or none"
        )
    return names


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; exit 2 on a user error."""
    ap = argparse.ArgumentParser(
        prog="python -m analysis.report", description="Write STUDY_DIR/report/."
    )
    ap.add_argument("study_dir", type=Path, help="a study directory written by python -m study.run")
    ap.add_argument("--force", action="store_true", help="overwrite an existing report")
    ap.add_argument(
        "--best", type=int, default=3, help="searched configurations shown (chosen on validation)"
    )
    ap.add_argument("--no-landscape", action="store_true", help="skip the 1D loss-landscape slices")
    ap.add_argument(
        "--no-augment", action="store_true", help="skip the Appendix H augmentation figures"
    )
    ap.add_argument("--no-png", action="store_true", help="HTML figures only")
    ap.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA if any), cpu or cuda: landscape and App. H passes",
    )
    ap.add_argument("--seed", type=int, default=0, help="seed of every random choice in the report")
    ap.add_argument(
        "--peers", type=_estimators, default=ESTIMATORS, metavar="knn,flexzboost",
        help="RAIL peers the verdict and Table 1 place the networks against, comma-separated "
        "(default: knn,flexzboost; 'none' leaves them out); cached per data file",
    )  # fmt: skip
    ap.add_argument(
        "--threads", type=int, default=1,
        help="torch CPU threads (default 1: the passes are small, and one thread is 2-4x faster "
        "than two on a busy 2-core machine; 0 keeps torch's default)",
    )  # fmt: skip
    args = ap.parse_args(argv)
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            path = build_report(
                args.study_dir,
                force=args.force,
                best=args.best,
                landscape=not args.no_landscape,
                augmentations=not args.no_augment,
                png=not args.no_png,
                seed=args.seed,
                device=args.device,
                peers=args.peers,
            )
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
