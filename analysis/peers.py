"""Peers on the same galaxies: LSST DESC RAIL estimators, scored with the networks' metrics.

``python -m analysis.peers DATA.h5 [--estimators knn flexzboost bpz] [--inputs phot truth-flux]``

RAIL's KNN (pz-rail-sklearn ``KNearNeighInformer``/``Estimator``), FlexZBoost
(pz-rail-flexzboost ``FlexZBoostInformer``/``Estimator``) and BPZ (pz-rail-bpz's three stages
with SDSS filters and a prior fitted on training: ``analysis.bpz``) are informed on the
training split and estimate the test split of a photoz-study/1 file, in-process (``make_stage`` with
``output_mode="return"``: no pipeline file, nothing written by RAIL). Their qp ensembles are put
on the file's redshift bins (``bin_edges``) as (N, C) probabilities and scored with
``study.metrics.all_metrics``: the metric names of every network run.

Inputs (the ``inputs`` column says which):
- ``phot``: the measured aperture photometry (``python -m study.data photometry``), as AB
  magnitudes ``m = 22.5 - 2.5 log10(f / nanomaggy)``, dereddened with the SDSS coefficients
  (the networks see E(B-V) too). Non-positive fluxes are non-detections: RAIL's
  ``nondetect_val`` (99), which its stages replace by ``mag_limits`` (here each band's
  1-sigma limit from the training split's median ``phot_err``) and, in FlexZBoost, an error
  of 1 mag.
- ``truth-flux``: the synthetic ``flux`` column, the noiseless catalogue truth, only in
  synthetic files; an upper bound on what colours can give, never a fair peer.

Results are cached per dataset content hash in ``$PHOTOZ_CACHE/peers/<hash>/`` (default
``~/.cache/photoz-study``): ``metrics.parquet`` (one row per estimator and inputs, every
metric) and ``<estimator>-<inputs>.h5`` (the test CDEs: ``p`` float16 (N, C), ``id``, ``zs``).
Seeded (KNN ``seed`` 0, FlexZBoost ``seed`` 1138 and XGBoost's fixed default; BPZ has no random
step): the same file gives the same numbers. BPZ's data directory (SDSS filters, templates,
model fluxes) is written once per cache: ``$PHOTOZ_CACHE/peers/bpz-sdss-<desc-bpz version>/``.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np
import pandas as pd
from tqdm import tqdm

from analysis import bpz
from study.config import PRESETS, make_config
from study.data import layout
from study.errors import UserError
from study.files import atomic_write
from study.metrics import METRIC_NAMES, all_metrics

if TYPE_CHECKING:
    import qp

ESTIMATORS = ("knn", "flexzboost", "bpz")
INPUTS = ("phot", "truth-flux")
NONDETECT = 99.0  # RAIL's default `nondetect_val`: replaced by `mag_limits` inside the stages
BANDS = [f"mag_{b}" for b in layout.BANDS]  # RAIL column names, in the file's band order
ERR_BANDS = [f"mag_err_{b}" for b in layout.BANDS]
LABELS = {
    "knn": "RAIL KNN",
    "flexzboost": "RAIL FlexZBoost",
    "bpz": "RAIL BPZ",
    "phot": "measured aperture photometry",
    "truth-flux": "noiseless catalogue flux (synthetic truth, not a fair peer)",
}
# RAIL's own defaults, written out so the cache key and the report say what ran
SETTINGS: dict[str, dict[str, Any]] = {
    "knn": {"seed": 0, "train_frac": 0.75, "nneigh_min": 3, "nneigh_max": 7},
    "flexzboost": {
        "seed": 1138,
        "trainfrac": 0.75,
        "nbump": 20,
        "nsharp": 15,
        "max_basis": 35,
        "regression_params": {"max_depth": 8, "objective": "reg:squarederror"},
    },
    # RAIL's defaults except where an r < 17.77 universe of 5 SDSS bands needs otherwise
    "bpz": {
        "spectra_file": "CWWSB4.list",  # desc-bpz's CWW+SB set (8 templates)
        "nt_array": [1, 2, 5],  # templates per broad type: elliptical, spiral, irregular/SB
        "only_type": True,  # broad types fitted at each training galaxy's spectroscopic z
        "output_hdfn": False,  # fit the prior on the training split (HDFN's is for r ~ 20-28)
        "m0": 14.0,  # mag, the prior's pivot: the bright end of r < 17.77 (RAIL: 20)
        "mmin": 10.0,  # mag, training galaxies brighter are left out of the fit (RAIL: 18)
        "mmax": 29.0,  # mag, ... fainter (non-detections, 99, too)
        "zp_errors": [0.1] * len(layout.BANDS),  # mag, added in quadrature (RAIL's per band)
        "mag_err_min": 0.005,  # mag, error floor
        "p_min": 0.005,  # posterior below p_min * its peak set to 0
        "madau_flag": "no",  # IGM absorption: irrelevant at z < 1
    },
}


@dataclass
class Catalogue:
    """A file's photometry as RAIL sees it, with the split and the bins."""

    mags: np.ndarray  # (N, 5) dereddened AB magnitudes, NONDETECT where flux <= 0
    mag_errs: np.ndarray  # (N, 5) magnitudes, NONDETECT where flux <= 0
    limits: np.ndarray  # (5,) 1-sigma limiting magnitudes (training split's median error)
    zs: np.ndarray  # (N,) float64
    ids: np.ndarray  # (N,) int64
    split: np.ndarray  # (N,) uint8: 0 train, 1 validation, 2 test
    edges: np.ndarray  # (C + 1,) redshift bin edges
    content_hash: str


def magnitudes(
    flux: np.ndarray, flux_err: np.ndarray, ebv: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Dereddened AB magnitudes and their errors from nanomaggies; NONDETECT where flux <= 0.

    Args:
        flux: (N, 5) nanomaggies. flux_err: (N, 5) nanomaggies. ebv: (N,) E(B-V), mag.

    Returns:
        (N, 5) magnitudes and (N, 5) magnitude errors ``2.5 / ln 10 * err / flux``.
    """
    f = np.asarray(flux, np.float64)
    detected = f > 0  # NaN compares False: unknown is a non-detection too
    safe = np.where(detected, f, 1.0)
    mag = 22.5 - 2.5 * np.log10(safe) - layout.EXTINCTION_R * np.asarray(ebv, np.float64)[:, None]
    err = 2.5 / np.log(10) * np.asarray(flux_err, np.float64) / safe
    return np.where(detected, mag, NONDETECT), np.where(detected, err, NONDETECT)


def _read(path: Path, inputs: str) -> dict[str, np.ndarray]:
    """The columns of ``path`` that ``inputs`` needs; a UserError naming the fix if absent."""
    from study.data.dataset import read_info

    info = read_info(path)
    with h5py.File(path, "r") as f:
        cols = {k: f[k][:] for k in ("zs", "ebv", "split", "id")}
        cols["edges"], cols["hash"] = info.bin_edges, np.asarray(info.content_hash)
        if "phot" not in f and inputs == "phot":
            raise UserError(
                f"{path}: dataset 'phot' is missing; measure it first with "
                f"`python -m study.data photometry {path}`"
            )
        if inputs == "truth-flux" and info.source != "synthetic":
            raise UserError(
                f"{path}: inputs 'truth-flux' (the noiseless flux) exist only in synthetic "
                f"files, this one is '{info.source}'; use --inputs phot"
            )
        cols["flux"] = f["phot"][:] if inputs == "phot" else f["flux"][:]
        cols["phot_err"] = f["phot_err"][:] if "phot_err" in f else None
    return cols


def load_catalogue(path: str | os.PathLike, inputs: str = "phot") -> Catalogue:
    """Read a photoz-study/1 file's ``phot`` (or its ``flux``: ``truth-flux``) as magnitudes.

    ``truth-flux`` has no errors of its own: it takes ``phot_err`` where the file has it (only
    BPZ-like fitters would use them), else 1% of the flux.
    """
    if inputs not in INPUTS:
        raise UserError(f"inputs must be one of {INPUTS}, got {inputs!r}")
    cols = _read(Path(path), inputs)
    err = cols["phot_err"] if cols["phot_err"] is not None else 0.01 * np.abs(cols["flux"])
    mags, mag_errs = magnitudes(cols["flux"], err, cols["ebv"])
    train = cols["split"] == 0
    limits = 22.5 - 2.5 * np.log10(np.median(np.asarray(err, np.float64)[train], axis=0))
    return Catalogue(
        mags=mags,
        mag_errs=mag_errs,
        limits=limits,
        zs=cols["zs"].astype(np.float64),
        ids=cols["id"].astype(np.int64),
        split=cols["split"],
        edges=np.asarray(cols["edges"], np.float64),
        content_hash=str(cols["hash"]),
    )


def rail_table(cat: Catalogue, split: int) -> dict[str, np.ndarray]:
    """One split as the numpy-dict table RAIL's stages read (``hdf5_groupname=""``)."""
    rows = cat.split == split
    table = {b: cat.mags[rows, i] for i, b in enumerate(BANDS)}
    table |= {b: cat.mag_errs[rows, i] for i, b in enumerate(ERR_BANDS)}
    table["redshift"] = cat.zs[rows]
    return table


def on_bins(ensemble: qp.Ensemble, edges: np.ndarray) -> np.ndarray:
    """(N, C) bin probabilities of a qp ensemble: CDF differences at the edges, renormalised.

    The mass outside [edges[0], edges[-1]] (KNN's Gaussians reach below z = 0) is dropped and
    each row renormalised, as the networks' softmax covers exactly these bins.
    """
    cdf = np.asarray(ensemble.cdf(np.asarray(edges, np.float64)), np.float64)  # (N, C + 1)
    p = np.clip(np.diff(cdf, axis=1), 0.0, None)
    total = p.sum(axis=1, keepdims=True)
    return np.where(total > 0, p / np.where(total > 0, total, 1.0), 1.0 / p.shape[1])


def _stage_classes(estimator: str) -> tuple[Any, Any]:
    if estimator == "knn":
        from rail.estimation.algos.k_nearneigh import KNearNeighEstimator, KNearNeighInformer

        return KNearNeighInformer, KNearNeighEstimator
    if estimator == "flexzboost":
        from rail.estimation.algos.flexzboost import FlexZBoostEstimator, FlexZBoostInformer

        return FlexZBoostInformer, FlexZBoostEstimator
    if estimator == "bpz":
        from rail.estimation.algos.bpz_lite import BPZliteEstimator, BPZliteInformer

        return BPZliteInformer, BPZliteEstimator
    raise UserError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")


def _quiet_rail() -> None:
    """RAIL's stages log through structlog at info level: keep warnings and errors only."""
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


def run_peer(cat: Catalogue, estimator: str, settings: dict[str, Any]) -> np.ndarray:
    """Inform ``estimator`` on the training split, estimate the test split.

    Returns:
        (N_test, C) float64 bin probabilities, in the file's row order of the test split.
    """
    informer_cls, estimator_cls = _stage_classes(estimator)
    _quiet_rail()
    settings = copy.deepcopy(settings)  # RAIL fills nested options (regression_params) in place
    common = _common(cat)
    if estimator == "bpz":
        train, test = rail_table(cat, 0), rail_table(cat, 2)
        return on_bins(bpz.run_bpz(train, test, common, settings, peers_root()), cat.edges)
    tag = f"{estimator}_{next(_STAGES)}"  # stage names are unique per call
    inform = informer_cls.make_stage(name=f"inform_{tag}", model=f"{tag}.pkl", **common, **settings)
    inform.inform(rail_table(cat, 0))
    est = estimator_cls.make_stage(
        name=f"estimate_{tag}", model=inform.get_handle("model"), **common
    )
    return on_bins(est.estimate(rail_table(cat, 2)).data, cat.edges)


_STAGES = itertools.count()  # RAIL's data store keys on stage names: one per stage made


def _common(cat: Catalogue) -> dict[str, Any]:
    """The RAIL options every peer gets: columns, non-detections, the file's redshift grid."""
    return {
        "bands": BANDS,
        "err_bands": ERR_BANDS,
        "ref_band": "mag_r",
        "mag_limits": dict(zip(BANDS, map(float, cat.limits), strict=True)),
        "nondetect_val": NONDETECT,
        "zmin": float(cat.edges[0]),
        "zmax": float(cat.edges[-1]),
        "nzbins": len(cat.edges),  # the grid's points sit on the bin edges
        "hdf5_groupname": "",
        "redshift_col": "redshift",
        "output_mode": "return",  # nothing is written to disk by RAIL
    }


def peers_root() -> Path:
    """``$PHOTOZ_CACHE/peers`` (default cache: ``~/.cache/photoz-study``)."""
    env = os.environ.get("PHOTOZ_CACHE")
    root = Path(env) if env else Path.home() / ".cache" / "photoz-study"
    return root / "peers"


def cache_dir(content_hash: str) -> Path:
    """``$PHOTOZ_CACHE/peers/<content_hash>``: one data file's peers."""
    return peers_root() / content_hash


def peer_name(estimator: str, inputs: str) -> str:
    """The name of one peer: ``<estimator>-<inputs>``, e.g. ``flexzboost-phot``."""
    return f"{estimator}-{inputs}"


def _settings(estimator: str, overrides: dict[str, dict[str, Any]] | None) -> dict[str, Any]:
    return SETTINGS[estimator] | dict((overrides or {}).get(estimator, {}))


def _cached_row(folder: Path, name: str, settings_json: str) -> dict[str, Any] | None:
    """The cached metrics row of ``name`` if it was made with the same settings."""
    table = folder / "metrics.parquet"
    if not table.exists() or not (folder / f"{name}.h5").exists():
        return None
    frame = pd.read_parquet(table)
    hit = frame[(frame["name"] == name) & (frame["settings"] == settings_json)]
    return None if hit.empty else hit.iloc[0].to_dict()


def _store(folder: Path, row: dict[str, Any], p: np.ndarray, cat: Catalogue) -> None:
    """Write one peer's CDEs and put its row into ``metrics.parquet`` (both atomically)."""
    folder.mkdir(parents=True, exist_ok=True)
    test = cat.split == 2

    def cdes(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("p", data=p.astype(np.float16), track_times=False)  # (N, C)
            f.create_dataset("id", data=cat.ids[test], track_times=False)
            f.create_dataset("zs", data=cat.zs[test], track_times=False)
            f.attrs["bin_edges"] = cat.edges
            f.attrs["settings"] = row["settings"]

    atomic_write(folder / f"{row['name']}.h5", cdes)
    table = folder / "metrics.parquet"
    old = pd.read_parquet(table) if table.exists() else pd.DataFrame()
    keep = old[old["name"] != row["name"]] if len(old) else old
    frame = pd.concat([keep, pd.DataFrame([row])], ignore_index=True)
    atomic_write(table, lambda tmp: frame.to_parquet(tmp, index=False))


def _versions(estimator: str) -> str:
    from importlib.metadata import version

    pkgs = ["pz-rail-base", "pz-rail-sklearn", "pz-rail-flexzboost", "qp-prob"]
    pkgs += ["pz-rail-bpz", "desc-bpz"] if estimator == "bpz" else []
    return " ".join(f"{p}=={version(p)}" for p in pkgs)


def _compute(cat: Catalogue, estimator: str, inputs: str, settings: dict[str, Any]) -> Any:
    """Run one peer and score it: (metrics row, (N_test, C) probabilities)."""
    start = time.perf_counter()
    p = run_peer(cat, estimator, settings)
    seconds = time.perf_counter() - start
    test = cat.split == 2
    row: dict[str, Any] = {"name": peer_name(estimator, inputs), "estimator": estimator}
    row |= {"inputs": inputs, "label": f"{LABELS[estimator]} on {LABELS[inputs]}"}
    row |= all_metrics(p, cat.zs[test], cat.edges)
    row |= {"n_train": int((cat.split == 0).sum()), "n_test": int(test.sum())}
    row |= {"seconds": seconds, "settings": json.dumps(settings, sort_keys=True)}
    row |= {"versions": _versions(estimator), "content_hash": cat.content_hash}
    return row, p


def peer_results(
    path: str | os.PathLike,
    *,
    estimators: tuple[str, ...] = ESTIMATORS,
    inputs: tuple[str, ...] = ("phot",),
    cache: bool = True,
    settings: dict[str, dict[str, Any]] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Every (estimator, inputs) peer of a file, scored on its test split; cached per hash.

    Args:
        path: a photoz-study/1 file with ``phot`` (``python -m study.data photometry``).
        estimators: from ESTIMATORS. inputs: from INPUTS (``truth-flux``: synthetic only).
        cache: reuse rows computed before for the same content hash and settings (and store
            new ones); False recomputes and stores nothing.
        settings: per-estimator overrides of SETTINGS (RAIL config options), part of the
            cache key, e.g. ``{"flexzboost": {"nbump": 5}}``.
        progress: a tqdm bar over the peers on stderr.

    Returns:
        One row per peer: name, estimator, inputs, label, every SPEC 3 metric, n_train,
        n_test, seconds (inform + estimate, when computed), settings, versions, content_hash,
        cached (True when read from the cache).
    """
    for e in estimators:
        _stage_classes(e)  # a bad name fails before any work
    cats = {i: load_catalogue(path, i) for i in inputs}
    rows, jobs = [], [(e, i) for i in inputs for e in estimators]
    for estimator, inp in tqdm(jobs, desc="peers", unit="peer", disable=not progress):
        cat, conf = cats[inp], _settings(estimator, settings)
        folder, name = cache_dir(cat.content_hash), peer_name(estimator, inp)
        hit = _cached_row(folder, name, json.dumps(conf, sort_keys=True)) if cache else None
        if hit is not None:
            rows.append(hit | {"cached": True})
            continue
        row, p = _compute(cat, estimator, inp, conf)
        if cache:
            _store(folder, row, p, cat)
        rows.append(row | {"cached": False})
    return pd.DataFrame(rows)[COLUMNS]


COLUMNS = ["name", "estimator", "inputs", "label", *METRIC_NAMES, "n_train", "n_test"]
COLUMNS += ["seconds", "settings", "versions", "content_hash", "cached"]


def peer_cdes(path: str | os.PathLike, name: str) -> np.ndarray:
    """A cached peer's test CDEs (N_test, C) float32, in the file's row order of the test split.

    Args:
        path: the data file (its ``content_hash`` finds the cache folder).
        name: ``<estimator>-<inputs>``, e.g. ``knn-phot`` (``peer_results`` computes it).
    """
    from study.data.dataset import read_info

    folder = cache_dir(read_info(path).content_hash)
    cdes = folder / f"{name}.h5"
    if not cdes.exists():
        raise UserError(
            f"{cdes}: no cached CDEs of peer '{name}' for {path}; compute them with "
            f"`python -m analysis.peers {path}` (names: <estimator>-<inputs>)"
        )
    with h5py.File(cdes, "r") as f:
        return f["p"][:].astype(np.float32)


# how far a metric is from its ideal value (smaller is better for every one)
_DISTANCE = {
    "bias": abs,
    "bias_median": abs,
    "ad": abs,  # scipy's normalised k-sample statistic can be negative; 0 is ideal
    "coverage_68": lambda x: abs(x - 0.68),
    "coverage_95": lambda x: abs(x - 0.95),
}


def best_peer(frame: pd.DataFrame, metric: str = "sigma_nmad") -> pd.Series:
    """The row of ``frame`` best on ``metric``, fair peers only (``truth-flux`` rows excluded).

    Best is the smallest value, or the smallest distance to the ideal for the signed and
    coverage metrics (|bias|, |coverage_68 - 0.68|, ...).
    """
    if metric not in METRIC_NAMES:
        raise UserError(f"metric must be one of {METRIC_NAMES}, got {metric!r}")
    fair = frame[frame["inputs"] != "truth-flux"]
    if fair.empty:
        raise UserError("no fair peer in the frame (only truth-flux rows); run inputs=('phot',)")
    distance = fair[metric].map(_DISTANCE.get(metric, lambda x: x))
    return fair.loc[distance.idxmin()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m analysis.peers", description=__doc__)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("data", type=Path, nargs="?", help="a photoz-study/1 file with phot")
    where.add_argument(
        "--preset", choices=PRESETS,
        help="instead of a file: the synthetic universe the preset trains on ($PHOTOZ_CACHE), "
        "built first if missing, as study.run and study.train build it",
    )  # fmt: skip
    parser.add_argument(
        "--nice", type=int, default=0, metavar="N",
        help="lower this process's priority by N (os.nice) once the file is there, before the "
        "estimators run: `make demo` runs the peers beside its study with --nice 19",
    )  # fmt: skip
    parser.add_argument("--estimators", nargs="+", default=list(ESTIMATORS), choices=ESTIMATORS)
    parser.add_argument("--inputs", nargs="+", default=["phot"], choices=INPUTS)
    parser.add_argument("--no-cache", action="store_true", help="recompute, store nothing")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.preset is not None:
            from study.universe.build import resolve_data

            args.data = resolve_data(make_config(args.preset))
        if args.nice:
            os.nice(args.nice)
        frame = peer_results(
            args.data,
            estimators=tuple(args.estimators),
            inputs=tuple(args.inputs),
            cache=not args.no_cache,
        )
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    shown = ["name", "sigma_nmad", "bias", "outlier_frac", "cde_loss", "ks", "seconds", "cached"]
    print(f"{args.data}: n_test = {int(frame['n_test'].iloc[0])}, test split")
    print(frame[shown].to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    for label in frame["label"]:
        print(f"  {label}")
    if not args.no_cache:
        print(f"cache: {cache_dir(str(frame['content_hash'].iloc[0]))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
