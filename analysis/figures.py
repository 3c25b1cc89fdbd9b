"""Plotly figures of a study; every title states its n (seeds, galaxies, draws).

The figures follow the paper's appendices: PIT histograms with the uniform line and its
sampling band (F), the zp-vs-zs density with catastrophic outliers and their 5-95% CDE
intervals (G), the CDEs of test galaxies under random D4 + background resamplings (H); and
add learning curves with a band over seeds, a forest plot of paired differences, Optuna's
history / importance / slice plots (per objective when there are several), the Pareto front of a
multi-objective study and loss-landscape slices.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots
from scipy import stats as sstats

from analysis.results import Predictions
from study.data.layout import bin_centers
from study.metrics import point_estimate

COLORS = {
    "baseline": "#1f77b4",
    "baseline_aug": "#ff7f0e",
    "constrained": "#2ca02c",
    "flux_only": "#d62728",
    "inv_only": "#9467bd",
    "cde_only": "#8c564b",
}
_PALETTE = ["#17becf", "#bcbd22", "#e377c2", "#7f7f7f", "#aec7e8", "#ffbb78"]
LAYOUT = {
    "template": "plotly_white",
    "font": {"size": 13},
    "margin": {"t": 70, "l": 60, "r": 20, "b": 50},
}


PEER_COLOR = "#4d4d4d"  # the RAIL peer's panel: dark grey, apart from every group's colour


def color(name: str, i: int = 0) -> str:
    """Fixed colour per group, grey for a peer (``peer: ...``), a palette colour otherwise."""
    if name.startswith("peer"):
        return PEER_COLOR
    return COLORS.get(name, _PALETTE[i % len(_PALETTE)])


def _rgba(hex_color: str, alpha: float) -> str:
    h = hex_color.lstrip("#")
    r, g, b = (int(h[i : i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def _grid(n: int, max_cols: int = 3) -> tuple[int, int]:
    cols = min(n, max_cols)
    return (n + cols - 1) // cols, cols


def pit_band(n_values: int, n_bins: int, level: float = 0.95) -> tuple[float, float]:
    """Central ``level`` band of a PIT histogram's density under uniformity.

    Each bin count is Binomial(N, 1/n_bins); density = count * n_bins / N.
    """
    lo, hi = sstats.binom.interval(level, n_values, 1.0 / n_bins)
    return lo * n_bins / n_values, hi * n_bins / n_values


def pit_histograms(pits: Mapping[str, Sequence[np.ndarray]], *, n_bins: int = 25) -> go.Figure:
    """PIT density per group (pooled over its runs) with the uniform line and its 95% band.

    Args:
        pits: group -> list of per-run PIT arrays (each (N_test,)).
        n_bins: histogram bins on [0, 1].
    """
    rows, cols = _grid(len(pits))
    titles = []
    for g, runs in pits.items():
        titles.append(f"{g} (n={len(runs)} runs, N={sum(len(r) for r in runs)})")
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles, shared_yaxes=True)
    edges = np.linspace(0, 1, n_bins + 1)
    for i, (g, runs) in enumerate(pits.items()):
        r, c = i // cols + 1, i % cols + 1
        values = np.concatenate(list(runs))
        counts, _ = np.histogram(values, bins=edges)
        density = counts * n_bins / values.size
        lo, hi = pit_band(values.size, n_bins)
        fig.add_trace(
            go.Scatter(
                x=[0, 1, 1, 0], y=[lo, lo, hi, hi], fill="toself", fillcolor="rgba(0,0,0,0.12)", mode="lines",
                line={"width": 0}, name="95% band if uniform", showlegend=i == 0, hoverinfo="skip",
            ),
            row=r, col=c,
        )  # fmt: skip
        fig.add_trace(
            go.Bar(
                x=bin_centers(edges), y=density, width=1 / n_bins,
                marker_color=color(g, i), name=g, showlegend=False,
            ),
            row=r, col=c,
        )  # fmt: skip
        fig.add_trace(
            go.Scatter(x=[0, 1], y=[1, 1], mode="lines", line={"color": "black"}, name="uniform", showlegend=i == 0),
            row=r, col=c,
        )  # fmt: skip
        fig.update_xaxes(title_text="PIT", range=[0, 1], row=r, col=c)
    fig.update_yaxes(title_text="density", col=1)
    fig.update_layout(
        title="PIT histograms (Appendix F): flat = calibrated; band: 95% range of a uniform histogram",
        height=320 * rows, **LAYOUT,
    )  # fmt: skip
    return fig


def cde_quantiles(p: np.ndarray, edges: np.ndarray, qs: Sequence[float]) -> np.ndarray:
    """Quantiles of histogram CDEs (CDF linear inside each bin): (N, len(qs))."""
    cdf = np.concatenate([np.zeros((p.shape[0], 1)), np.cumsum(p, axis=1)], axis=1)  # (N, C+1)
    cdf /= cdf[:, -1:]
    out = np.empty((p.shape[0], len(qs)))
    for i in range(p.shape[0]):
        out[i] = np.interp(qs, cdf[i], edges)
    return out


def zp_zs(
    preds: Mapping[str, Predictions],
    *,
    threshold: float = 0.05,
    n_intervals: int = 12,
    seed: int = 0,
    n_runs: Mapping[str, int] | None = None,
) -> go.Figure:
    """zp vs zs density per group; outliers |dz|/(1+zs) > threshold as points (Appendix G).

    A random ``n_intervals`` of the outliers get their 5-95% CDE interval as error bars.
    """
    rows, cols = _grid(len(preds))
    titles = []
    for g, pr in preds.items():
        out = np.abs(pr.zp - pr.zs) / (1 + pr.zs) > threshold
        titles.append(f"{g} (N={len(pr.zs)}, {out.sum()} outliers)")
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles, shared_yaxes=True)
    rng = np.random.default_rng(seed)
    for i, pr in enumerate(preds.values()):
        r, c = i // cols + 1, i % cols + 1
        zmax = float(pr.edges[-1])
        bins = np.linspace(0, zmax, 61)
        h, _, _ = np.histogram2d(pr.zs, pr.zp, bins=[bins, bins])
        centers = bin_centers(bins)
        fig.add_trace(
            go.Heatmap(
                x=centers, y=centers, z=np.where(h.T > 0, np.log10(np.maximum(h.T, 1)), np.nan),
                colorscale="Blues", showscale=i == 0, colorbar={"title": "log10 N", "len": 0.5},
                hovertemplate="zs %{x:.3f}<br>zp %{y:.3f}<br>log10 N %{z:.2f}<extra></extra>",
            ),
            row=r, col=c,
        )  # fmt: skip
        fig.add_trace(
            go.Scatter(x=[0, zmax], y=[0, zmax], mode="lines", line={"color": "gray", "dash": "dot"}, showlegend=False),
            row=r, col=c,
        )  # fmt: skip
        out = np.flatnonzero(np.abs(pr.zp - pr.zs) / (1 + pr.zs) > threshold)
        fig.add_trace(
            go.Scatter(
                x=pr.zs[out], y=pr.zp[out], mode="markers", marker={"size": 4, "color": "#d62728"},
                name=f"outlier |Δz|/(1+zs) > {threshold}", showlegend=i == 0,
            ),
            row=r, col=c,
        )  # fmt: skip
        if out.size:
            pick = rng.choice(out, size=min(n_intervals, out.size), replace=False)
            q = cde_quantiles(pr.p[pick], pr.edges, [0.05, 0.95])
            fig.add_trace(
                go.Scatter(
                    x=pr.zs[pick], y=pr.zp[pick], mode="markers", marker={"size": 7, "color": "black", "symbol": "diamond"},
                    error_y={"type": "data", "symmetric": False, "array": q[:, 1] - pr.zp[pick],
                             "arrayminus": pr.zp[pick] - q[:, 0], "color": "black", "thickness": 1.2},
                    name="5-95% CDE interval (random outliers)", showlegend=i == 0,
                ),
                row=r, col=c,
            )  # fmt: skip
        fig.update_xaxes(title_text="zs", range=[0, zmax], row=r, col=c)
    fig.update_yaxes(title_text="zp (CDE mean)", col=1)
    runs = f", one run each of n={min(n_runs.values())} seeds" if n_runs else ""
    fig.update_layout(
        title=f"Photo-z vs spec-z (Appendix G){runs}; outlier threshold {threshold}",
        height=360 * rows, **LAYOUT,
    )  # fmt: skip
    return fig


def augmentation_spread(p: np.ndarray, edges: np.ndarray) -> float:
    """Appendix H's spread: the mean over galaxies of the std over draws of zp; p (G, D, C)."""
    return float(np.mean(np.std(point_estimate(p, edges), axis=1)))


def augmentation_cdes(
    group: str, p: np.ndarray, zs: np.ndarray, edges: np.ndarray, background: str = "threshold"
) -> go.Figure:
    """CDEs of G galaxies under D random augmentations each (Appendix H); p (G, D, C).

    ``background``: the resampling mode of the draws (``augment.background``), named in the title.
    """
    n_gal, n_draws, _ = p.shape
    rows, cols = _grid(n_gal, 4)
    centers = bin_centers(edges)
    dens = p / np.diff(edges)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[f"zs = {z:.3f}" for z in zs])
    col = color(group.split(" ")[0])
    for gi in range(n_gal):
        r, c = gi // cols + 1, gi % cols + 1
        # all draws of one galaxy as one trace, separated by None gaps (fast to draw)
        xs = np.tile(np.append(centers, np.nan), n_draws)
        ys = np.concatenate([np.append(dens[gi, d], np.nan) for d in range(n_draws)])
        fig.add_trace(
            go.Scatter(x=xs, y=ys, mode="lines", line={"color": _rgba(col, 0.35), "width": 1},
                       showlegend=False, hoverinfo="skip", connectgaps=False),
            row=r, col=c,
        )  # fmt: skip
        top = float(np.nanmax(dens[gi]))
        fig.add_trace(
            go.Scatter(x=[zs[gi], zs[gi]], y=[0, top], mode="lines", line={"color": "red", "dash": "dash"},
                       showlegend=False, hoverinfo="skip"),
            row=r, col=c,
        )  # fmt: skip
    fig.update_xaxes(range=[0, float(edges[-1])])
    spread = augmentation_spread(p, edges)
    fig.update_layout(
        title=(
            f"{group}: CDEs of {n_gal} test galaxies under {n_draws} random D4 + background "
            f"({background}) resamplings each (Appendix H); mean std of zp over draws {spread:.4f}"
        ),
        height=230 * rows, showlegend=False, **LAYOUT,
    )  # fmt: skip
    return fig


def learning_curves(
    history: pd.DataFrame, terms: Sequence[str] = ("ce", "flux", "inv", "cde", "total", "val_loss")
) -> go.Figure:
    """Per-epoch loss terms: mean over seeds per group, with a +-1 std band; n in the legend."""
    terms = [t for t in terms if t in history and history[t].notna().any()]
    rows, cols = _grid(len(terms))
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=terms)
    groups = list(dict.fromkeys(history["group"]))
    for ti, term in enumerate(terms):
        r, c = ti // cols + 1, ti % cols + 1
        for gi, g in enumerate(groups):
            sub = history[history["group"] == g]
            if sub[term].isna().all():
                continue
            agg = sub.groupby("epoch")[term].agg(["mean", "std", "count"]).reset_index()
            n = int(sub["seed"].nunique()) if "seed" in sub else int(agg["count"].max())
            std = agg["std"].fillna(0.0)
            x = agg["epoch"].tolist()
            col = color(g, gi)
            fig.add_trace(
                go.Scatter(
                    x=x + x[::-1], y=(agg["mean"] + std).tolist() + (agg["mean"] - std).tolist()[::-1],
                    fill="toself", fillcolor=_rgba(col, 0.18), line={"width": 0}, mode="lines",
                    showlegend=False, hoverinfo="skip", legendgroup=g,
                ),
                row=r, col=c,
            )  # fmt: skip
            fig.add_trace(
                go.Scatter(x=x, y=agg["mean"], mode="lines+markers", line={"color": col},
                           name=f"{g} (n={n} seeds)", showlegend=ti == 0, legendgroup=g),
                row=r, col=c,
            )  # fmt: skip
        fig.update_xaxes(title_text="epoch", row=r, col=c)
    fig.update_layout(
        title="Learning curves per loss term: mean ± std over seeds (train terms are epoch means)",
        height=320 * rows, **LAYOUT,
    )  # fmt: skip
    return fig


def forest(paired: pd.DataFrame, *, by: str = "group") -> go.Figure:
    """Paired differences (value - reference) with bootstrap 95% CIs, one panel per metric."""
    metrics = list(dict.fromkeys(paired["metric"]))
    rows, cols = _grid(len(metrics), 3)
    fig = make_subplots(
        rows=rows, cols=cols, shared_yaxes=True, horizontal_spacing=0.03,
        subplot_titles=[m.removeprefix("test_") for m in metrics],
    )  # fmt: skip
    for mi, m in enumerate(metrics):
        r, c = mi // cols + 1, mi % cols + 1
        sub = paired[paired["metric"] == m]
        labels = [
            f"{v} − {ref} (n={n})"
            for v, ref, n in zip(sub[by], sub["reference"], sub["n"], strict=True)
        ]
        fig.add_trace(
            go.Scatter(
                x=sub["mean_diff"], y=labels, mode="markers", marker={"size": 9, "color": [color(str(v)) for v in sub[by]]},
                error_x={"type": "data", "symmetric": False, "array": sub["ci_high"] - sub["mean_diff"],
                         "arrayminus": sub["mean_diff"] - sub["ci_low"]},
                customdata=np.stack([sub["p_wilcoxon"], sub["ci_low"], sub["ci_high"]], axis=1),
                hovertemplate="%{y}<br>diff %{x:.3g} [%{customdata[1]:.3g}, %{customdata[2]:.3g}]"
                "<br>Wilcoxon p %{customdata[0]:.3g}<extra></extra>",
                showlegend=False,
            ),
            row=r, col=c,
        )  # fmt: skip
        fig.add_vline(x=0, line={"color": "gray", "dash": "dot"}, row=r, col=c)
    fig.update_layout(
        title="Paired differences on the same seeds (mean, bootstrap 95% CI); left of 0 = lower metric",
        height=(45 * (len(paired) // max(len(metrics), 1)) + 120) * rows + 80, **LAYOUT,
    )  # fmt: skip
    return fig


def landscape_1d(
    slices: Mapping[str, pd.DataFrame], *, n_galaxies: int, terms: Sequence[str] | None = None
) -> go.Figure:
    """1D loss slices per term; one line per label (e.g. group), L(a) - L(0) for comparability."""
    first = next(iter(slices.values()))
    terms = [
        t
        for t in (terms or ("ce", "flux", "inv", "cde", "total"))
        if t in first and first[t].notna().any()
    ]
    rows, cols = _grid(len(terms))
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[f"{t}: L(a) − L(0)" for t in terms])
    for ti, t in enumerate(terms):
        r, c = ti // cols + 1, ti % cols + 1
        for li, (label, s) in enumerate(slices.items()):
            a = s["alpha"].to_numpy()
            y = s[t].to_numpy() - s[t].to_numpy()[np.argmin(np.abs(a))]
            fig.add_trace(
                go.Scatter(x=a, y=y, mode="lines", line={"color": color(label.split(" ")[0], li)},
                           name=label, showlegend=ti == 0, legendgroup=label),
                row=r, col=c,
            )  # fmt: skip
        fig.update_xaxes(title_text="step a along a filter-normalised direction", row=r, col=c)
    fig.update_layout(
        title=f"Loss landscape, 1D slices (Li et al. 2018), eval mode, N={n_galaxies} test galaxies",
        height=320 * rows, **LAYOUT,
    )  # fmt: skip
    return fig


def landscape_2d(
    axis: np.ndarray, grids: Mapping[str, np.ndarray], *, title: str, n_galaxies: int
) -> go.Figure:
    """2D loss surfaces as contour plots, one panel per term."""
    terms = [
        t
        for t in ("ce", "flux", "inv", "cde", "total")
        if t in grids and np.isfinite(grids[t]).any()
    ]
    rows, cols = _grid(len(terms))
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=terms)
    for ti, t in enumerate(terms):
        r, c = ti // cols + 1, ti % cols + 1
        fig.add_trace(
            go.Contour(x=axis, y=axis, z=grids[t], colorscale="Viridis", showscale=False, ncontours=25,
                       contours={"coloring": "heatmap"}),
            row=r, col=c,
        )  # fmt: skip
        fig.add_trace(
            go.Scatter(x=[0], y=[0], mode="markers", marker={"color": "red", "symbol": "x"}, showlegend=False),
            row=r, col=c,
        )  # fmt: skip
    fig.update_layout(
        title=f"{title}: 2D loss surface ({len(axis)}x{len(axis)} grid, N={n_galaxies} test galaxies)",
        height=340 * rows, **LAYOUT,
    )  # fmt: skip
    return fig


REFERENCE_GROUPS = ("baseline_aug", "constrained")  # an optuna study's reference points


def pareto_front(table: pd.DataFrame, objectives: Sequence[tuple[str, str]]) -> go.Figure:
    """Configurations' seed means of two (or three: each pair) objectives, with ±1 std bars.

    Args:
        table: ``analysis.stats.pareto_table`` (one row per configuration).
        objectives: ``(column, "min" | "max")`` per objective, as the study optimised them.

    Searched configurations are dots, the reference points (baseline_aug, constrained)
    diamonds in their group colours; a ring marks each Pareto-optimal configuration (on all
    objectives' seed means) and, for two objectives, a dashed step line joins the front.
    """
    pairs = [(i, j) for i in range(len(objectives)) for j in range(i + 1, len(objectives))]
    fig = make_subplots(rows=1, cols=len(pairs), horizontal_spacing=0.08)
    n = table["n"]
    n_text = (
        f"n={int(n.min())} seeds"
        if n.min() == n.max()
        else f"n={int(n.min())}-{int(n.max())} seeds"
    )
    for k, (i, j) in enumerate(pairs):
        (cx, mx), (cy, my) = objectives[i], objectives[j]
        for name, sub, marker in _pareto_kinds(table):
            fig.add_trace(_pareto_points(sub, cx, cy, name, marker, show=k == 0), row=1, col=k + 1)
        front = table[table["pareto"]].sort_values(f"{cx}_mean")
        fig.add_trace(
            go.Scatter(
                x=front[f"{cx}_mean"], y=front[f"{cy}_mean"], mode="markers",
                marker={"symbol": "circle-open", "size": 20, "color": "black", "line": {"width": 2}},
                name=f"Pareto-optimal ({len(front)} of {len(table)})", legendgroup="pareto",
                showlegend=k == 0, hoverinfo="skip",
            ),
            row=1, col=k + 1,
        )  # fmt: skip
        if len(objectives) == 2 and len(front) > 1:
            fig.add_trace(
                go.Scatter(x=front[f"{cx}_mean"], y=front[f"{cy}_mean"], mode="lines",
                           line={"color": "black", "dash": "dash", "width": 1, "shape": _step(mx)},
                           name="front", showlegend=False, hoverinfo="skip"),
                row=1, col=k + 1,
            )  # fmt: skip
        fig.update_xaxes(title_text=f"{cx} ({mx}imise)", row=1, col=k + 1)
        fig.update_yaxes(title_text=f"{cy} ({my}imise)", row=1, col=k + 1)
    fig.update_layout(
        title=f"Pareto front of the seed means ({n_text}, bars ±1 std over seeds; "
        f"{len(table)} configurations)" + ("; ringed: optimal on all three" if len(pairs) > 1 else ""),
        height=480, **LAYOUT,
    )  # fmt: skip
    return fig


def _step(mode_x: str) -> str:
    """The dominated region's edge between front points sorted by x: across then up or down
    when x is minimised, up or down then across when it is maximised (whatever y's mode)."""
    return "hv" if mode_x == "min" else "vh"


def _pareto_kinds(table: pd.DataFrame) -> list[tuple[str, pd.DataFrame, dict]]:
    """(legend name, rows, marker): searched configurations, any other group (an ablation's),
    then the reference points as diamonds."""
    groups = table["group"].astype(str) if "group" in table else pd.Series("search", table.index)
    out = [("searched configurations", table[groups == "search"],
            {"symbol": "circle", "size": 9, "color": _PALETTE[0]})]  # fmt: skip
    others = [g for g in dict.fromkeys(groups) if g != "search" and g not in REFERENCE_GROUPS]
    for i, g in enumerate(others):
        out.append(
            (g, table[groups == g], {"symbol": "circle", "size": 10, "color": color(g, i + 1)})
        )
    for g in REFERENCE_GROUPS:
        out.append((f"{g} (reference point)", table[groups == g],
                    {"symbol": "diamond", "size": 13, "color": color(g), "line": {"width": 1, "color": "black"}}))  # fmt: skip
    return [(name, sub, marker) for name, sub, marker in out if len(sub)]


def _pareto_points(
    sub: pd.DataFrame, cx: str, cy: str, name: str, marker: dict, *, show: bool
) -> go.Scatter:
    """One kind of configuration: its seed means with ±1 std error bars on both axes."""
    ids = sub["config_id"] if "config_id" in sub else sub.index.astype(str)
    return go.Scatter(
        x=sub[f"{cx}_mean"], y=sub[f"{cy}_mean"], mode="markers", marker=marker, name=name,
        legendgroup=name, showlegend=show,
        error_x={"type": "data", "array": sub[f"{cx}_std"].fillna(0.0), "thickness": 1},
        error_y={"type": "data", "array": sub[f"{cy}_std"].fillna(0.0), "thickness": 1},
        customdata=np.stack([ids, sub["n"], sub[f"{cx}_std"], sub[f"{cy}_std"]], axis=1),
        hovertemplate=f"%{{customdata[0]}} ({name})<br>{cx} %{{x:.4g}} ± %{{customdata[2]:.2g}}"
        f"<br>{cy} %{{y:.4g}} ± %{{customdata[3]:.2g}}<br>n=%{{customdata[1]}} seeds<extra></extra>",
    )  # fmt: skip


def optuna_figures(storage: str, study_name: str | None = None) -> dict[str, go.Figure]:
    """Optuna's optimisation history, parameter importances and slice plot (empty if no trials)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from optuna.storages import BaseStorage, JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage_obj: str | BaseStorage = storage
    if storage.endswith((".log", ".journal")):
        storage_obj = JournalStorage(JournalFileBackend(storage))
    names = [s.study_name for s in optuna.get_all_study_summaries(storage_obj)]
    if not names:
        return {}
    study = optuna.load_study(study_name=study_name or names[0], storage=storage_obj)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        return {}
    vis = optuna.visualization
    if len(study.directions) > 1:  # several objectives: history and slices per objective
        figs = _per_objective(study)
    else:
        figs = {"optuna_history": vis.plot_optimization_history(study)}
        # Optuna fixes the slice plot at 300 px per parameter (2100 px for 7): fit the page
        figs["optuna_slice"] = vis.plot_slice(study).update_layout(width=None)
    if len(done) >= 2 and study.trials[0].params:
        try:
            figs["optuna_importance"] = vis.plot_param_importances(study)
        except (RuntimeError, ValueError) as exc:  # e.g. a parameter with a single value
            warnings.warn(f"no parameter importances: {exc}", stacklevel=2)
    for name, f in figs.items():
        f.update_layout(title=f"{f.layout.title.text or name} (n={len(done)} trials)", **LAYOUT)
    return figs


def _per_objective(study) -> dict[str, go.Figure]:
    """Optuna's history and slice plot of each objective of a multi-objective study, by name."""
    import optuna

    vis = optuna.visualization
    names = study.metric_names or [f"objective{i}" for i in range(len(study.directions))]
    figs = {}
    for i, name in enumerate(names):
        kw = {"target": lambda t, i=i: t.values[i], "target_name": name}
        figs[f"optuna_history_{name}"] = vis.plot_optimization_history(study, **kw)
        figs[f"optuna_slice_{name}"] = vis.plot_slice(study, **kw).update_layout(width=None)
    return figs


def save(fig: go.Figure, stem: Path, *, plotlyjs: str | bool = "directory") -> Path:
    """Write ``stem.html``; plotly.js goes beside it once per folder, so it opens offline."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    html = stem.with_suffix(".html")
    fig.write_html(html, include_plotlyjs=plotlyjs, full_html=True)
    return html


def write_pngs(figs: Sequence[go.Figure], paths: Sequence[Path], *, width: int = 1200) -> bool:
    """PNGs via kaleido in one browser session (needs Chrome or Chromium); False when unavailable.

    kaleido 1.x drives a local Chrome/Chromium (Debian: ``apt-get install chromium``); it works
    offline. Without one, PNG export is skipped and the caller says so.
    """
    if not figs:
        return True
    try:
        import plotly.io as pio

        heights = [int(f.layout.height or 500) for f in figs]
        pio.write_images(list(figs), [str(p) for p in paths], width=width, height=heights, scale=1)
    except Exception as exc:  # kaleido missing, or no browser it can start: carry on without PNGs
        warnings.warn(f"PNG export skipped ({type(exc).__name__}: {exc})", stacklevel=2)
        return False
    return True
