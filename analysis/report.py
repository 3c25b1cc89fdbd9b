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

The parts: ``make_tables`` / ``write_tables`` (the numbers, here), ``make_figures`` /
``write_figures`` (``analysis.report_figures``), and ``render_page`` (``analysis.page``), which
fills ``analysis/templates/report.html.j2`` (Jinja2, autoescaped) from the page's views.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.page import halving_line, render_page
from analysis.peers import ESTIMATORS
from analysis.report_figures import Figures, first_runs, make_figures, timed, write_figures
from analysis.results import Study, load_run_config, load_study, read_bin_edges
from analysis.stats import paired_table, pareto_table, summarize, variance_split
from analysis.table import (
    COLUMNS,
    KEY_METRICS,
    select_rows,
    table1,
    to_markdown,
)
from analysis.verdict import StudyPeers, study_verdict
from study.config import config_from_dict
from study.errors import UserError
from study.losses import cde_scale_factor


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
    with timed(timings, "peers_verdict"):
        the_peers = _peers(study, best, peers, peer_settings, seed)
    with timed(timings, "tables"):
        tables = make_tables(study, best, the_peers)
        write_tables(tables, out)
    with timed(timings, "qp_export"):
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


# ---- what each label's first run was trained on --------------------------------------------


def backgrounds(study: Study, frame: pd.DataFrame) -> dict[str, str]:
    """Each label's background resampling (``augment.background`` of its first run's config):
    ``threshold`` or ``segmentation``; ``none`` without augmentation or invariance term."""
    import yaml

    from analysis.results import run_background

    out = {}
    for label, row in first_runs(frame).items():
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
    for label, row in first_runs(frame).items():
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
        "--peers", type=_estimators, default=ESTIMATORS, metavar="knn,flexzboost,bpz",
        help="RAIL peers the verdict and Table 1 place the networks against, comma-separated "
        "(default: knn,flexzboost,bpz; 'none' leaves them out); cached per data file",
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
