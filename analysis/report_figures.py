"""The report's figures: the passes that make them, in page order, and writing them out.

``make_figures`` adds to a ``Figures`` each figure of the page, timing each pass (the Pareto
front of a study with several objectives, PIT and zp-zs with the best peer beside the groups,
Appendix H's augmentation CDEs, learning curves, the paired forest plot, Optuna's figures and a
quick 1D loss landscape per label); ``write_figures`` writes them under ``report/figures/``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from analysis import figures
from analysis.results import Predictions, Study
from analysis.verdict import StudyPeers
from study.errors import UserError
from study.machine import pick_device

if TYPE_CHECKING:
    from analysis.report import Tables

LANDSCAPE_GALAXIES = 64  # report: a quick 1D slice per group; the full one is analysis.landscape


@dataclass
class Figures:
    """The report's figures, in page order, and what the passes behind them left."""

    figures: list[tuple[str, go.Figure]] = field(default_factory=list)
    landscape: pd.DataFrame = field(default_factory=pd.DataFrame)  # landscape.csv, if any
    notes: list[str] = field(default_factory=list)  # what was skipped, and why
    timings: dict[str, float] = field(default_factory=dict)  # seconds per pass


@contextmanager
def timed(timings: dict[str, float], name: str) -> Iterator[None]:
    """Seconds of the ``with`` block, stored as ``timings[name]`` (the report's pass timings)."""
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
    firsts = first_runs(frame)
    if not tables.pareto.empty:  # several objectives: the search's answer comes first
        objectives = [(c, m) for c, m in study.objectives() if c in study.frame]
        figs.figures.append(("pareto_front", figures.pareto_front(tables.pareto, objectives)))
    with timed(figs.timings, "pit_zp_zs"):
        preds = {k: study.predictions(study.run_dir(r)) for k, r in firsts.items()}
        n_runs = {k: int(g["seed"].nunique()) for k, g in frame.groupby("label")}
        pits, shown = _pits(study, frame), dict(preds)
        if tables.peers is not None:  # the best peer beside the groups, in grey
            key, pred = _peer_panel(tables.peers)
            pits[key], shown[key] = [_pit(pred)], pred
        figs.figures.append(("pit", figures.pit_histograms(pits)))
        figs.figures.append(("zp_zs", figures.zp_zs(shown, n_runs=n_runs, seed=seed)))
    with timed(figs.timings, "augmentations"):
        if augmentations:
            figs.figures += _augmentation_figs(
                study, firsts, preds, tables.backgrounds, seed, device, figs.notes
            )
    with timed(figs.timings, "curves_forest_optuna"):
        figs.figures += _history_figs(study, frame, tables.paired, figs.notes)
    with timed(figs.timings, "landscape"):
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


def first_runs(frame: pd.DataFrame) -> dict[str, pd.Series]:
    """Each label's run of the lowest seed: the one its figures (and facts) are read from."""
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


def _augmentation_figs(
    study, firsts, preds, modes, seed, device, notes
) -> list[tuple[str, go.Figure]]:
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
    with timed(figs.timings, "write_figures"):
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
