"""The report page's views: what ``report.html.j2`` shows, built from the report's numbers.

``render_page`` fills ``analysis/templates/report.html.j2`` (Jinja2, autoescaped) from the
report's ``Tables`` and ``Figures`` (``analysis.report``): the verdict first (``verdict_view``),
the paper's question (``questions``), Table 1 as shown (``_table1_view``), the Pareto front, the
CDE training scales, and the study's first line (``_runs``). Each view is a plain dict or list
of strings; nothing here reads a run or computes a statistic.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup
from plotly.offline import get_plotlyjs

from analysis import figures
from analysis.results import Study
from analysis.stats import format_mean_std
from analysis.table import EXTRA_COLUMNS, KEY_METRICS, PAPER_COLUMNS, PEER, TRUTH
from analysis.verdict import headline, verdict_rows
from study.halving import LEDGER, trial_epochs

if TYPE_CHECKING:
    from analysis.report import Figures, Tables

QUESTIONS = (
    ("constrained", "baseline_aug"),
    ("baseline_aug", "baseline"),
    ("constrained", "baseline"),
)


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


def _excludes_zero(r: pd.Series) -> bool:
    return bool(np.isfinite(r["ci_low"]) and (r["ci_low"] > 0 or r["ci_high"] < 0))


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
