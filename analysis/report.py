"""``python -m analysis.report STUDY_DIR``: the study's report in ``STUDY_DIR/report/``.

Writes ``report.html`` (self-contained: plotly.js inline once, so it opens offline), the
tables (``table1.md``, ``table1.csv``, ``summary.csv``, ``paired.csv``, ``variance.csv``,
``landscape.csv``) and every figure as its own HTML file (and PNG where kaleido can start a
Chromium) under ``report/figures/``. The text leads with the paper's question: the paired
difference constrained - baseline_aug on the same seeds, with its bootstrap CI.
"""

from __future__ import annotations

import argparse
import html
import json
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from analysis import figures
from analysis.results import Study, load_study
from analysis.stats import format_mean_std, paired_table, summarize, variance_split
from analysis.table import COLUMNS, EXTRA_COLUMNS, PAPER_COLUMNS, select_rows, table1, to_markdown
from study.errors import UserError
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


def _excludes_zero(r: pd.Series) -> bool:
    return bool(np.isfinite(r["ci_low"]) and (r["ci_low"] > 0 or r["ci_high"] < 0))


def headline(paired: pd.DataFrame) -> list[str]:
    """HTML for the paired differences that answer the paper's question, that one first."""
    blocks = []
    for value, ref in QUESTIONS:
        sub = paired[(paired["label"] == value) & (paired["reference"] == ref)]
        if sub.empty:
            continue
        n = int(sub["n"].max())
        n_excl = sum(_excludes_zero(r) for _, r in sub.iterrows())
        rows = "".join(
            f"<tr><td>{r['metric'].removeprefix('test_')}</td><td>{r['mean_diff']:+.3g}</td>"
            f"<td>[{r['ci_low']:.3g}, {r['ci_high']:.3g}]</td><td>{r['p_wilcoxon']:.2g}</td>"
            f"<td>{'<b>excludes 0</b>' if _excludes_zero(r) else 'includes 0'}</td></tr>"
            for _, r in sub.iterrows()
        )
        small = sub["note"].iloc[0]
        if n < 5:
            small += (
                f"; with n={n} the bootstrap CI is about the range of the per-seed differences "
                "and undercovers, so read 'excludes 0' as descriptive"
            )
        blocks.append(
            f"<h3>{value} &minus; {ref} (n={n} paired seeds)</h3>"
            f"<p>{n_excl} of {len(sub)} metrics have a 95% bootstrap CI of the mean paired difference "
            f"that excludes zero{' (' + small + ')' if small else ''}.</p>"
            "<table><thead><tr><th>metric</th><th>mean difference</th><th>95% CI</th>"
            f"<th>Wilcoxon p</th><th>CI</th></tr></thead><tbody>{rows}</tbody></table>"
        )
    if not blocks:
        blocks.append("<p>No two groups share seeds, so no paired comparison is possible.</p>")
    return blocks


def _pits(study: Study, frame: pd.DataFrame) -> dict[str, list[np.ndarray]]:
    from study.metrics import pit

    out: dict[str, list[np.ndarray]] = {}
    for label, runs in frame.groupby("label", sort=False):
        for _, row in runs.iterrows():
            pr = study.predictions(study.run_dir(row))
            out.setdefault(str(label), []).append(np.asarray(pit(pr.p, pr.zs, pr.edges)))
    return out


def _first_runs(frame: pd.DataFrame) -> dict[str, pd.Series]:
    return {str(k): g.sort_values("seed").iloc[0] for k, g in frame.groupby("label", sort=False)}


def _table_html(table: pd.DataFrame, columns) -> str:
    head = "".join(
        f"<th>{html.escape(lbl)}</th>" for lbl in ["row", "source"] + [c[1] for c in columns]
    )
    body = []
    for _, rec in table.iterrows():
        lit = str(rec["source"]).startswith("literature")
        cells = [
            f"<td>{html.escape(str(rec['row']))}</td>",
            f"<td>{html.escape(str(rec['source']))}</td>",
        ]
        for metric, _, scale in columns:
            mean, std = rec[f"{metric}_mean"], rec[f"{metric}_std"]
            if lit:
                cells.append(
                    f"<td>{mean * scale:.3g}</td>" if np.isfinite(mean) else "<td>&ndash;</td>"
                )
            else:
                cells.append(
                    f"<td>{format_mean_std(mean, std, int(rec[f'{metric}_n']), scale=scale)}</td>"
                )
        body.append(f"<tr class='{'lit' if lit else 'ours'}'>{''.join(cells)}</tr>")
    return f"<div class='wide'><table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"


def _pivot(land: pd.DataFrame, value: str) -> pd.DataFrame:
    wide = land.pivot_table(index=["label", "seed"], columns="term", values=value).reset_index()
    wide.columns.name = None
    return wide


def _df_html(df: pd.DataFrame, floatfmt: str = "{:.4g}") -> str:
    return df.to_html(index=False, float_format=lambda v: floatfmt.format(v), border=0, na_rep="–")


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
) -> Path:
    """Write ``STUDY_DIR/report/`` and return the path of ``report.html``."""
    t0 = time.perf_counter()
    study = load_study(study_dir)
    out = study.path / "report"
    if out.exists() and any(out.iterdir()):
        if not force:
            raise UserError(f"{out}: a report exists already; pass --force to overwrite it")
        shutil.rmtree(out)
    figdir = out / "figures"
    figdir.mkdir(parents=True)
    select_on, mode = study.objective()
    frame = labelled(study.frame, best=best, select_on=select_on, mode=mode)
    by = "label"
    test_cols = [f"test_{m}" for m, _, _ in COLUMNS if f"test_{m}" in frame]

    table = table1(study.frame, best=best, select_on=select_on, mode=mode)
    (out / "table1.md").write_text(to_markdown(table))
    table.to_csv(out / "table1.csv", index=False)
    summ = summarize(frame, test_cols, by=by)
    summ.to_csv(out / "summary.csv", index=False)
    refs = list(
        dict.fromkeys(frame.loc[frame["group"].isin(["baseline", "baseline_aug"]), "label"])
    )
    paired = paired_table(
        frame, [f"test_{m}" for m in KEY_METRICS if f"test_{m}" in frame], refs, by=by
    )
    if not paired.empty:
        paired.drop(columns=["seeds"]).to_csv(out / "paired.csv", index=False)
    var_rows = [
        {"metric": c.removeprefix("test_"), **variance_split(study.frame, c)} for c in test_cols
    ]
    variance = pd.DataFrame(var_rows)
    variance.to_csv(out / "variance.csv", index=False)

    figs: list[tuple[str, go.Figure]] = []
    notes: list[str] = []
    timings: dict[str, float] = {"tables": time.perf_counter() - t0}
    tic = time.perf_counter()
    figs.append(("pit", figures.pit_histograms(_pits(study, frame))))
    firsts = _first_runs(frame)
    preds = {k: study.predictions(study.run_dir(r)) for k, r in firsts.items()}
    n_runs = {k: int(g["seed"].nunique()) for k, g in frame.groupby("label")}
    figs.append(("zp_zs", figures.zp_zs(preds, n_runs=n_runs, seed=seed)))
    timings["pit_zp_zs"], tic = time.perf_counter() - tic, time.perf_counter()
    if augmentations:
        figs += _augmentation_figs(study, firsts, preds, seed=seed, device=device, notes=notes)
    timings["augmentations"], tic = time.perf_counter() - tic, time.perf_counter()
    hist = study.history
    if not hist.empty and {"config_id", "epoch"} <= set(hist.columns):
        labels = frame.drop_duplicates("config_id").set_index("config_id")["label"]
        h = hist[hist["config_id"].isin(labels.index)].copy()
        h["group"] = h["config_id"].map(labels)
        figs.append(("learning_curves", figures.learning_curves(h)))
    if not paired.empty:
        figs.append(("paired_forest", figures.forest(paired, by=by)))
    storage = study.optuna_storage()
    if storage:
        try:
            figs += list(figures.optuna_figures(storage).items())
        except Exception as exc:  # a foreign or half-written journal should not sink the report
            notes.append(f"Optuna figures skipped: {type(exc).__name__}: {exc}")
    timings["curves_forest_optuna"], tic = time.perf_counter() - tic, time.perf_counter()
    land = pd.DataFrame()
    if landscape:
        fig, land = _landscape(study, firsts, seed=seed, device=device, notes=notes)
        if fig is not None:
            figs.append(("landscape_1d", fig))
            land.to_csv(out / "landscape.csv", index=False)

    timings["landscape"], tic = time.perf_counter() - tic, time.perf_counter()
    for name, fig in figs:
        figures.save(fig, figdir / name)
    if png and not figures.write_pngs([f for _, f in figs], [figdir / f"{n}.png" for n, _ in figs]):
        notes.append(
            "PNG export skipped: kaleido could not start Chrome/Chromium (apt-get install chromium)."
        )
    timings["write_figures"] = time.perf_counter() - tic
    seconds = time.perf_counter() - t0
    page = _page(study, frame, table, paired, summ, variance, land, figs, notes, seconds)
    (out / "report.html").write_text(page)
    (out / "report.json").write_text(
        json.dumps(
            {"seconds": seconds, "timings": timings, "figures": [n for n, _ in figs]}, indent=1
        )
    )
    return out / "report.html"


def _augmentation_figs(study, firsts, preds, *, seed, device, notes) -> list[tuple[str, go.Figure]]:
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
        try:
            p, zs, edges = augmented_cdes(
                study.run_dir(row), index[pick], n_draws=20, seed=seed, device=pick_device(device)
            )
        except UserError as exc:
            notes.append(f"Appendix H figure for {label} skipped: {exc}")
            continue
        out.append(
            (
                f"augment_{label}",
                figures.augmentation_cdes(f"{label} (seed {int(row['seed'])})", p, zs, edges),
            )
        )
    return out


def _landscape(study, firsts, *, seed, device, notes) -> tuple[go.Figure | None, pd.DataFrame]:
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


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1400px;margin:24px auto;padding:0 16px;color:#222}
h1{font-size:1.6em}h3{margin:14px 0 4px}h2{margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:12.5px;margin:8px 0}th,td{padding:3px 7px;white-space:nowrap;border-bottom:1px solid #eee;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}tr.lit td{color:#666;font-style:italic;background:#fafafa}
.wide{overflow-x:auto}.note{color:#555;font-size:0.92em}.fig{margin:18px 0}
"""


def _page(study, frame, table, paired, summ, variance, land, figs, notes, seconds) -> str:
    f = study.frame
    prov = {}
    if (study.path / "provenance.json").is_file():
        prov = json.loads((study.path / "provenance.json").read_text())
    kind = "ablation" if study.by == "group" else "search"
    head = (
        f"<p>{len(f)} runs: {f['config_id'].nunique()} configurations &times; seeds "
        f"{sorted(int(s) for s in f['seed'].unique())}; groups {', '.join(study.groups)} ({kind} study). "
        f"Devices: {', '.join(sorted(set(map(str, f.get('device', pd.Series(['?']))))))}. "
        f"Git commit: {html.escape(str(prov.get('git_commit', '?')))}. Report built in {seconds:.0f} s.</p>"
    )
    paired_view = paired.drop(columns=["seeds"]) if not paired.empty else paired
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>photoz-study report: {html.escape(study.path.name)}</title><style>{CSS}</style>",
        f"<script type='text/javascript'>{get_plotlyjs()}</script></head><body>",
        f"<h1>photoz-study report: {html.escape(study.path.name)}</h1>",
        head,
        "<h2>What the numbers say</h2>",
        "<p class='note'>Differences are paired: each seed gives both groups the same weight initialisation "
        "and batch order, so the difference is taken seed by seed. With fewer than 6 seeds the Wilcoxon "
        "signed-rank test cannot reach p &lt; 0.05; read the bootstrap CI and n.</p>",
        *headline(paired),
        "<h2>Table 1, reproduced</h2>",
        "<p class='note'>mean ± std (n seeds) of the test-set metrics; italic rows are literature values "
        "from the paper's Table 1, not reproduced here. The paper's CDE loss is on another scale "
        "(about −8e-4); ours is in density units (SPEC 2). Outlier fractions in per cent.</p>",
        _table_html(table, PAPER_COLUMNS),
        "<h3>Table 1b: RAIL variants and PIT statistics (this study only)</h3>",
        _table_html(table[table["source"] == "this study"], EXTRA_COLUMNS),
        "<h2>Paired comparisons, all</h2>",
        "<details><summary>every group against each reference (paired.csv)</summary>",
        _df_html(paired_view) if not paired_view.empty else "<p>none</p>",
        "</details>",
        "<h2>Trial variance (seeds) and study variance (configurations)</h2>",
        "<p class='note'>trial_std: pooled std over seeds within a configuration; study_std: std of the "
        "configurations' means; study_var_component: the part of the study variance the seeds do not explain.</p>",
        _df_html(variance),
    ]
    if not land.empty:
        parts += [
            "<h2>Loss-landscape summary (1D, one run per group)</h2>",
            "<p class='note'>curvature: second derivative of a quadratic fit on |a| ≤ 0.2 along one "
            "filter-normalised direction (the same Gaussian draw for every group); sharpness: largest rise "
            "over a ∈ [−1, 1]. Full 2D surfaces: <code>python -m analysis.landscape RUN_DIR</code>.</p>",
            "<p>curvature per loss term:</p>",
            _df_html(_pivot(land, "curvature")),
            "<p>sharpness per loss term:</p>",
            _df_html(_pivot(land, "sharpness")),
        ]
    parts.append("<h2>Figures</h2>")
    for name, fig in figs:
        parts.append(
            f"<div class='fig' id='{name}'>{fig.to_html(full_html=False, include_plotlyjs=False)}</div>"
        )
    if notes:
        parts.append(
            "<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>"
        )
    parts.append(
        "<h2>Per-group summary</h2>"
        + _df_html(summ[summ["metric"].isin([f"test_{m}" for m in KEY_METRICS])])
        + "</body></html>"
    )
    return "\n".join(parts)


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
            )
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
