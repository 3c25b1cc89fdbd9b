"""The verdict: each group's seed mean against the best RAIL peer on the same test galaxies.

For one group (its S seeds' test CDEs) and one peer (its test CDEs on the same data file), the
difference ``mean over seeds of metric(run) - metric(peer)`` of ``sigma_nmad``, ``outlier_frac``
(|dz|/(1+zs) > 0.05) and ``cde_loss``, with a paired bootstrap over galaxies: each resample
draws N galaxy indices with replacement and applies the *same* draw to every seed's predictions
and to the peer's, so what the runs and the peer share (hard galaxies, the test set's n(z))
cancels in the difference. The interval is the percentile interval of the B resampled
differences: the uncertainty from which galaxies happen to be in the test set, with the seeds
fixed (their spread is Table 1's std).

Galaxies are matched by id; a run whose test galaxies are not the peer's is refused with one
line. Per-galaxy quantities come from ``study.metrics`` (``point_estimate``, ``cde_losses``),
so the full-sample values are the SPEC 3 metrics of the same CDEs.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd

from analysis.results import Predictions, Study
from study.errors import UserError
from study.metrics import NMAD_SCALE, cde_losses, point_estimate

VERDICT_METRICS = ("sigma_nmad", "outlier_frac", "cde_loss")  # smaller is better for each
OUTLIER = 0.05  # |dz| / (1 + zs), the paper's outlier_frac (SPEC 3)
N_BOOT = 1000
CONFIDENCE = 0.95
_BLOCK = 2**24  # floats per resampled block (S * B_block * N): bounds memory at ~130 MB


@dataclass
class PerGalaxy:
    """What the three metrics need of each galaxy: d = (zp - zs)/(1 + zs) and its CDE loss."""

    d: np.ndarray  # (S, N) or (N,)
    loss: np.ndarray  # same shape, Izbicki & Lee per-galaxy CDE loss (density units)


def per_galaxy(p: np.ndarray, zs: np.ndarray, edges: np.ndarray) -> PerGalaxy:
    """(N,) ``d`` and CDE loss of one set of CDEs, with study.metrics' definitions."""
    zs = np.asarray(zs, np.float64)
    d = (point_estimate(p, edges) - zs) / (1.0 + zs)
    return PerGalaxy(d=d, loss=cde_losses(p, zs, edges))


def statistics(d: np.ndarray, loss: np.ndarray) -> dict[str, np.ndarray]:
    """sigma_nmad, outlier_frac and cde_loss along the last axis (galaxies), any leading shape.

    The same formulas as ``study.metrics.point_metrics`` / ``cde_loss``, vectorised over the
    leading axes (seeds, resamples).
    """
    med = np.median(d, axis=-1, keepdims=True)
    return {
        "sigma_nmad": NMAD_SCALE * np.median(np.abs(d - med), axis=-1),
        "outlier_frac": np.mean(np.abs(d) > OUTLIER, axis=-1),
        "cde_loss": np.mean(loss, axis=-1),
    }


def match(run_ids: np.ndarray, peer_ids: np.ndarray, what: str) -> np.ndarray:
    """Indices into the peer's rows that put them in the run's order of galaxies.

    Raises:
        UserError (one line) when the two sets of test galaxies differ.
    """
    run_ids, peer_ids = np.asarray(run_ids, np.int64), np.asarray(peer_ids, np.int64)
    order = np.argsort(peer_ids, kind="stable")
    pos = np.searchsorted(peer_ids[order], run_ids).clip(0, max(len(peer_ids) - 1, 0))
    idx = order[pos] if len(peer_ids) else pos
    found = len(peer_ids) > 0 and np.array_equal(peer_ids[idx], run_ids)
    if not found or len(run_ids) != len(peer_ids) or len(np.unique(run_ids)) != len(run_ids):
        missing = int(np.setdiff1d(run_ids, peer_ids).size)
        raise UserError(
            f"{what}: its {len(run_ids)} test galaxies are not the peer's {len(peer_ids)} "
            f"({missing} ids not among the peer's); run the peers on the run's own data file"
        )
    return idx


def resample_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) galaxy indices drawn with replacement (numpy's default generator)."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def paired_bootstrap(
    runs: PerGalaxy,
    peer: PerGalaxy,
    *,
    n_boot: int = N_BOOT,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> pd.DataFrame:
    """Seed-mean metric minus the peer's, with a paired bootstrap CI over galaxies.

    Args:
        runs: (S, N) per-galaxy values of a group's S seeds, galaxies in the peer's order.
        peer: (N,) per-galaxy values of the peer on the same galaxies.
        n_boot: resamples B. seed: the resampling seed (the report's is fixed).
        confidence: two-sided level of the percentile interval.

    Returns:
        One row per VERDICT_METRICS: ``metric``, ``value`` (seed mean), ``value_std`` (std
        over seeds, ddof 1), ``peer``, ``diff``, ``ci_low``, ``ci_high``, ``n_seeds``,
        ``n_galaxies``, ``n_boot``.
    """
    d, loss = np.atleast_2d(runs.d), np.atleast_2d(runs.loss)
    n_seeds, n = d.shape
    if peer.d.shape != (n,):
        raise ValueError(f"peer has {peer.d.shape} galaxies, the runs {n}")
    full_runs, full_peer = statistics(d, loss), statistics(peer.d, peer.loss)
    idx = resample_indices(n, n_boot, seed)
    diffs = {m: np.empty(n_boot) for m in VERDICT_METRICS}
    step = max(1, _BLOCK // ((n_seeds + 1) * n))
    for b in range(0, n_boot, step):
        i = idx[b : b + step]  # (b, N): the same draw for every seed and the peer
        ours, theirs = statistics(d[:, i], loss[:, i]), statistics(peer.d[i], peer.loss[i])
        for m in VERDICT_METRICS:
            diffs[m][b : b + step] = ours[m].mean(axis=0) - theirs[m]
    alpha = 100 * (1 - confidence) / 2
    rows = []
    for m in VERDICT_METRICS:
        low, high = np.percentile(diffs[m], [alpha, 100 - alpha])
        value = float(full_runs[m].mean())
        rows.append({
            "metric": m,
            "value": value,
            "value_std": float(full_runs[m].std(ddof=1)) if n_seeds > 1 else math.nan,
            "peer": float(full_peer[m]),
            "diff": value - float(full_peer[m]),
            "ci_low": float(low),
            "ci_high": float(high),
            "n_seeds": n_seeds,
            "n_galaxies": n,
            "n_boot": n_boot,
        })  # fmt: skip
    return pd.DataFrame(rows)


def outcome(diff_low: float, diff_high: float) -> str:
    """'better' / 'worse' when the CI excludes 0 (smaller is better), else 'indistinguishable'."""
    if diff_high < 0:
        return "better"
    if diff_low > 0:
        return "worse"
    return "indistinguishable"


def verdict_table(
    groups: Mapping[str, Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]],
    peer: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    *,
    n_boot: int = N_BOOT,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> pd.DataFrame:
    """The verdict of every group against one peer, matched by galaxy id.

    Args:
        groups: label -> one ``(p, zs, ids, edges)`` per seed (the runs' test predictions).
        peer: ``(p, zs, ids, edges)`` of the peer's test CDEs.
        n_boot, seed, confidence: as ``paired_bootstrap`` (the same draws for every group).

    Returns:
        ``paired_bootstrap``'s rows with a ``label`` and an ``outcome`` column.

    Raises:
        UserError: a run's test galaxies (ids), redshifts or bins are not the peer's.
    """
    p_peer, zs_peer, ids_peer, edges_peer = peer
    theirs = per_galaxy(p_peer, zs_peer, edges_peer)
    frames = []
    for label, runs in groups.items():
        ds, losses = [], []
        for k, (p, zs, ids, edges) in enumerate(runs):
            what = f"group {label!r}, run {k}"
            if not np.allclose(edges, edges_peer):
                raise UserError(f"{what}: its redshift bins are not the peer's; same data file?")
            order = match(ids, ids_peer, what)  # peer rows in this run's galaxy order
            if not np.allclose(zs, zs_peer[order], rtol=0, atol=1e-6):
                raise UserError(f"{what}: same galaxy ids as the peer but other zs; same file?")
            g = per_galaxy(p, zs, edges)
            back = np.argsort(order)  # this run's rows in the peer's galaxy order
            ds.append(g.d[back])
            losses.append(g.loss[back])
        res = paired_bootstrap(
            PerGalaxy(np.stack(ds), np.stack(losses)),
            theirs,
            n_boot=n_boot,
            seed=seed,
            confidence=confidence,
        )
        res.insert(0, "label", label)
        res["outcome"] = list(map(outcome, res["ci_low"], res["ci_high"]))
        frames.append(res)
    return pd.concat(frames, ignore_index=True)


# ---- the verdict of a study: its data file, the peers, the lines the report shows ----------


@dataclass
class StudyPeers:
    """The peers of a study's data file and the verdict of its groups against the best one."""

    source: Path  # the runs' data file
    data: Path  # the file the peers ran on: ``source``, or its copy with ``phot``
    frame: pd.DataFrame  # analysis.peers.peer_results rows (peers.csv)
    best: pd.Series  # the best fair peer's row (by sigma_nmad)
    predictions: Predictions  # the best peer's test CDEs, in the data file's test order
    verdict: pd.DataFrame  # verdict_table rows (verdict.csv), labels as in Table 1
    notes: list[str]  # what the page should say about how the peers were run


def with_photometry(path: Path) -> tuple[Path, str | None]:
    """``path`` if it has ``phot``; else its copy with ``phot`` added, in the peers cache.

    A file made before the universe measured photometry gets a copy
    (``$PHOTOZ_CACHE/peers/with-phot/<content_hash>.h5``, made once, reused) rather than an
    in-place addition: adding ``phot`` changes the file's content hash, which the study's runs
    recorded. Returns the path and a note for the page (None when nothing was copied).
    """
    from analysis.peers import cache_dir
    from study.data.aperture import add_photometry
    from study.data.dataset import read_info
    from study.universe.render import universe_gain

    with h5py.File(path, "r") as f:
        if "phot" in f:
            return path, None
    info = read_info(path)
    content_hash = info.content_hash
    copy = cache_dir(content_hash).parent / "with-phot" / f"{content_hash}.h5"
    if not copy.is_file():
        size = path.stat().st_size / 2**30
        print(f"{path} has no measured photometry ('phot'): adding it to a copy, {copy} "
              f"({size:.2f} GiB)", file=sys.stderr)  # fmt: skip
        copy.parent.mkdir(parents=True, exist_ok=True)
        add_photometry(path, copy, gain=universe_gain() if info.source == "synthetic" else None)
    return copy, (
        f"{path} has no measured photometry (phot), so the peers ran on a copy with it "
        f"added ({copy}); `python -m study.data photometry {path}` adds it to the file itself."
    )


def _test_split(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(zs, ids, bin_edges) of a data file's test split, in file row order (the peers' order)."""
    with h5py.File(path, "r") as f:
        test = f["split"][:] == 2
        return f["zs"][:][test].astype(np.float64), f["id"][:][test], f.attrs["bin_edges"][:]


def study_verdict(
    study: Study,
    frame: pd.DataFrame,
    *,
    estimators: tuple[str, ...] = ("knn", "flexzboost", "bpz"),  # analysis.peers.ESTIMATORS
    settings: dict[str, dict[str, Any]] | None = None,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> StudyPeers:
    """Run (or read from the cache) the peers of the study's data file and judge each label.

    Args:
        study: the study. frame: its rows shown in Table 1, with a ``label`` column.
        estimators: peers to run (analysis.peers.ESTIMATORS), on measured photometry.
        settings: RAIL option overrides per estimator (``peer_results``'s ``settings``).
        n_boot, seed: the paired bootstrap's resamples and seed.
    """
    from analysis.peers import LABELS, best_peer, peer_cdes, peer_results
    from analysis.results import load_run_config, run_dataset

    first = study.run_dir(frame.iloc[0])
    source = run_dataset(load_run_config(first), first)
    data, note = with_photometry(source)
    peers = peer_results(data, estimators=estimators, inputs=("phot",), settings=settings)
    best = best_peer(peers, "sigma_nmad")
    zs, ids, edges = _test_split(data)
    p = peer_cdes(data, str(best["name"]))
    pred = Predictions(p=p / p.sum(axis=1, keepdims=True), zs=zs, ids=ids, edges=edges)
    groups = {  # in Table 1's order, each label's runs by seed
        str(label): [
            (pr.p, pr.zs, pr.ids, pr.edges)
            for pr in (study.predictions(study.run_dir(r)) for _, r in runs.iterrows())
        ]
        for label, runs in frame.groupby("label", sort=False)
    }
    table = verdict_table(groups, (pred.p, pred.zs, pred.ids, pred.edges), n_boot=n_boot,
                          seed=seed)  # fmt: skip
    notes = [note] if note else []
    notes.append(
        "Peers: " + ", ".join(LABELS[str(e)] for e in peers["estimator"]) + " (RAIL settings "
        f"and versions: peers.csv), informed on the training split of {source.name}, scored on "
        "its test split."
    )
    return StudyPeers(source=source, data=data, frame=peers, best=best, predictions=pred,
                      verdict=table, notes=notes)  # fmt: skip


def _metric_cell(r: pd.Series) -> str:
    """'0.0291 vs 0.0186: +0.0105 [+0.0098, +0.0113]' (outlier_frac in per cent)."""
    s = 100.0 if r["metric"] == "outlier_frac" else 1.0
    return (
        f"{r['value'] * s:.3g} vs {r['peer'] * s:.3g}: {r['diff'] * s:+.3g} "
        f"[{r['ci_low'] * s:+.3g}, {r['ci_high'] * s:+.3g}]"
    )


def verdict_rows(table: pd.DataFrame, names: dict[str, str]) -> list[dict[str, Any]]:
    """One row per label for the page: its name, n seeds and a cell per metric with outcome."""
    rows = []
    for label, sub in table.groupby("label", sort=False):
        cells = [{"text": _metric_cell(r), "outcome": r["outcome"]} for _, r in sub.iterrows()]
        rows.append({"name": names.get(str(label), str(label)),
                     "n": int(sub["n_seeds"].iloc[0]), "cells": cells})  # fmt: skip
    return rows


def headline(table: pd.DataFrame, peer_label: str) -> str:
    """One line: do the networks beat the best peer? Counted per metric over the labels."""
    n_labels = table["label"].nunique()
    counts = {
        m: table.loc[table["metric"] == m, "outcome"].value_counts().to_dict()
        for m in VERDICT_METRICS
    }
    better_all = table.assign(b=table["outcome"] == "better").groupby("label")["b"].all().sum()
    any_better = sum(c.get("better", 0) for c in counts.values())
    answer = "Yes" if better_all else ("Partly" if any_better else "No")
    parts = [
        f"{m}: {c.get('better', 0)} better, {c.get('worse', 0)} worse" for m, c in counts.items()
    ]
    return (
        f"Do the networks beat {peer_label}, the best peer on the same "
        f"{int(table['n_galaxies'].iloc[0])} test galaxies? {answer}: "
        f"{int(better_all)} of {n_labels} rows better on all three metrics ("
        + "; ".join(parts)
        + "; 95% paired bootstrap CI over galaxies excluding 0)."
    )
