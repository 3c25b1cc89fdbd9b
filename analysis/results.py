"""Load a study directory (SPEC 8): its frame, its history and each run's test predictions.

Everything is lazy: ``load_study`` only checks that the directory looks like a study and
reads ``frame.parquet``; the history and the per-run predictions are read when asked for.
A missing or foreign file is a one-line ``UserError`` that names it and says what to do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import yaml

from study.errors import UserError

GROUPS = ("baseline", "baseline_aug", "constrained", "flux_only", "inv_only", "cde_only")
REFERENCES = ("baseline", "baseline_aug")
METRICS = (
    "sigma_nmad",
    "sigma_iqr",
    "bias",
    "bias_median",
    "outlier_frac",
    "outlier_frac_rail",
    "cde_loss",
    "cde_loss_se",
    "ks",
    "cvm",
    "ad",
    "pit_outlier_rate",
    "coverage_68",
    "coverage_95",
)
FRAME_COLUMNS = ("config_id", "seed", "group", "run_dir")
_FIX = "point at a directory written by `python -m study.run`"


@dataclass
class Predictions:
    """One run's test-set CDEs: ``p`` (N, C) float32, ``zs`` (N,), ``ids`` (N,), ``edges`` (C+1,)."""

    p: np.ndarray
    zs: np.ndarray
    ids: np.ndarray
    edges: np.ndarray

    @property
    def centers(self) -> np.ndarray:
        """Bin centres (C,)."""
        return 0.5 * (self.edges[1:] + self.edges[:-1])

    @property
    def zp(self) -> np.ndarray:
        """Point estimate: mean of the CDE with bin centres (SPEC 3), (N,)."""
        return self.p @ self.centers


def _read_parquet(path: Path, what: str) -> pd.DataFrame:
    if not path.is_file():
        raise UserError(f"{path}: {what} is missing; {_FIX}")
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a foreign file
        raise UserError(f"{path}: not a Parquet {what} ({type(exc).__name__}); {_FIX}") from exc


def load_frame(study_dir: str | Path) -> pd.DataFrame:
    """The study's ``frame.parquet``: one row per (configuration, seed)."""
    path = Path(study_dir) / "frame.parquet"
    frame = _read_parquet(path, "results frame")
    missing = [c for c in FRAME_COLUMNS if c not in frame.columns]
    if missing:
        raise UserError(f"{path}: column {missing[0]!r} missing, not a study frame; {_FIX}")
    if not any(c.startswith("test_") for c in frame.columns):
        raise UserError(f"{path}: no test_<metric> columns, not a study frame; {_FIX}")
    return frame


def load_history(study_dir: str | Path) -> pd.DataFrame:
    """The study's ``history.parquet``: one row per (run, epoch)."""
    return _read_parquet(Path(study_dir) / "history.parquet", "history")


def resolve_run_dir(study_dir: str | Path, run_dir: str | Path) -> Path:
    """A frame's ``run_dir`` entry as a path: absolute, or relative to the study directory.

    Studies may be moved or copied (a cluster's results synced to a laptop), so a relative
    path is tried first against the study directory, then an absolute one whose
    ``runs/<name>`` tail exists under this study directory.
    """
    study_dir = Path(study_dir)
    p = Path(run_dir)
    if not p.is_absolute():
        return study_dir / p
    if p.exists():
        return p
    parts = p.parts
    if "runs" in parts:
        moved = study_dir.joinpath(*parts[parts.index("runs") :])
        if moved.exists():
            return moved
    return p


def read_bin_edges(run_dir: Path) -> np.ndarray:
    """Bin edges of a run: the predictions file's attribute, else from its config.yaml."""
    pred = run_dir / "predictions.h5"
    if pred.is_file():
        with h5py.File(pred, "r") as f:
            for key in ("bin_edges", "edges"):
                if key in f.attrs:
                    return np.asarray(f.attrs[key], dtype=np.float64)
                if key in f:
                    return np.asarray(f[key][...], dtype=np.float64)
    model = load_run_config(run_dir).get("model", {})
    n_bins, z_max = int(model.get("n_bins", 180)), float(model.get("z_max", 0.4))
    return np.linspace(0.0, z_max, n_bins + 1)


def load_run_config(run_dir: str | Path) -> dict:
    """The run's resolved ``config.yaml`` as a nested dict."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise UserError(f"{path}: run config is missing; {_FIX}")
    with open(path) as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict):
        raise UserError(f"{path}: not a run config (a YAML mapping expected); {_FIX}")
    return data


def load_run_metrics(run_dir: str | Path) -> dict:
    """The run's ``metrics.json``."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        raise UserError(f"{path}: run metrics are missing; {_FIX}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not JSON ({exc.msg} at line {exc.lineno}); {_FIX}") from exc


def load_predictions(run_dir: str | Path) -> Predictions:
    """The run's ``predictions.h5``: test-set ``p`` (float16 on disk) as float32, ``zs``, ``id``."""
    run_dir = Path(run_dir)
    path = run_dir / "predictions.h5"
    if not path.is_file():
        raise UserError(f"{path}: predictions are missing; {_FIX}")
    try:
        with h5py.File(path, "r") as f:
            for key in ("p", "zs"):
                if key not in f:
                    raise UserError(
                        f"{path}: dataset {key!r} missing, not a predictions file; {_FIX}"
                    )
            p = f["p"][...].astype(np.float32)
            zs = f["zs"][...].astype(np.float64)
            ids = f["id"][...] if "id" in f else np.arange(len(zs))
    except OSError as exc:
        raise UserError(f"{path}: not an HDF5 file ({exc}); {_FIX}") from exc
    # float16 storage: renormalise so each CDE sums to one again
    p /= np.maximum(p.sum(axis=1, keepdims=True), 1e-12)
    return Predictions(p=p, zs=zs, ids=np.asarray(ids), edges=read_bin_edges(run_dir))


@dataclass
class Study:
    """A study directory; ``frame`` is read at load, the rest on first use."""

    path: Path
    frame: pd.DataFrame
    _predictions: dict[str, Predictions] = field(default_factory=dict, repr=False)

    @cached_property
    def history(self) -> pd.DataFrame:
        """Per-epoch history of every run (empty frame if the study has none)."""
        if not (self.path / "history.parquet").is_file():
            return pd.DataFrame()
        return load_history(self.path)

    @property
    def by(self) -> str:
        """The column rows are grouped by: ``group`` for an ablation, ``config_id`` otherwise."""
        return "group" if is_ablation(self.frame) else "config_id"

    @property
    def groups(self) -> list[str]:
        """Groups present, in the SPEC order first, then any others in frame order."""
        present = list(dict.fromkeys(self.frame["group"].astype(str)))
        return [g for g in GROUPS if g in present] + [g for g in present if g not in GROUPS]

    def run_dir(self, row: pd.Series | str) -> Path:
        """Path of a frame row's run directory."""
        raw = row if isinstance(row, str) else row["run_dir"]
        return resolve_run_dir(self.path, raw)

    def runs(self, group: str) -> pd.DataFrame:
        """The frame rows of one group, sorted by seed."""
        return self.frame[self.frame["group"].astype(str) == group].sort_values("seed")

    def predictions(self, run_dir: str | Path) -> Predictions:
        """A run's predictions, cached."""
        key = str(run_dir)
        if key not in self._predictions:
            self._predictions[key] = load_predictions(run_dir)
        return self._predictions[key]

    def optuna_storage(self) -> str | None:
        """URL of the study's Optuna storage if it has one (sqlite or journal file)."""
        for name in ("optuna.db", "optuna.sqlite3", "optuna.sqlite"):
            if (self.path / name).is_file():
                return f"sqlite:///{(self.path / name).resolve()}"
        for name in ("optuna.log", "optuna_journal.log", "optuna.journal"):
            if (self.path / name).is_file():
                return str((self.path / name).resolve())
        return None


def is_ablation(frame: pd.DataFrame) -> bool:
    """True when each group is one configuration (an ablation), False for a search."""
    return bool((frame.groupby("group")["config_id"].nunique() <= 1).all())


def load_study(study_dir: str | Path) -> Study:
    """Open a study directory; raises UserError when it is not one."""
    path = Path(study_dir)
    if not path.is_dir():
        raise UserError(f"{path}: no such study directory; {_FIX}")
    return Study(path=path, frame=load_frame(path))
