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
from typing import Any

import h5py
import numpy as np
import pandas as pd
import torch
import yaml

from study.config import GROUPS  # noqa: F401  (re-exported for analysis.table)
from study.data.layout import bin_centers, bin_edges
from study.errors import UserError
from study.metrics import (
    METRIC_NAMES,  # noqa: F401  (re-exported: SPEC 3 names, one list)
    point_estimate,
)

REFERENCES = ("baseline", "baseline_aug")
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
        return bin_centers(self.edges)

    @property
    def zp(self) -> np.ndarray:
        """Point estimate: mean of the CDE with bin centres (SPEC 3), (N,)."""
        return point_estimate(self.p, self.edges)


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
    if frame.empty:
        raise UserError(
            f"{path}: no rows, no run of this study finished; check runs/*/ and the study log"
        )
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
    return bin_edges(n_bins, z_max)


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


def run_dataset(config: dict, run_dir: str | Path | None = None) -> Path:
    """The dataset file a run was trained on: ``data.path``, the path its metrics.json
    records, or the cached synthetic universe of the config's size (``study.universe.build.resolve_data``)."""
    path = (config.get("data") or {}).get("path")
    if path and Path(path).is_file():
        return Path(path)
    if run_dir is not None and (Path(run_dir) / "metrics.json").is_file():
        recorded = load_run_metrics(run_dir).get("data")
        if recorded and Path(recorded).is_file():
            return Path(recorded)
    from study.config import config_from_dict
    from study.universe.build import resolve_data

    return resolve_data(config_from_dict(config))


def load_trained_model(
    run_dir: str | Path, *, device: str | torch.device = "cpu"
) -> tuple[dict, torch.nn.Module]:
    """(resolved config dict, trained model in eval mode on ``device``) of a run directory.

    Reads ``config.yaml`` and the model state of ``checkpoint/state.pt`` (study.train's
    checkpoint: a dict whose ``"model"`` entry is the state_dict).
    """
    from study.config import config_from_dict
    from study.model import model_from_config

    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    ckpt = run_dir / "checkpoint" / "state.pt"
    if not ckpt.is_file():
        raise UserError(f"{ckpt}: checkpoint is missing (was the run finished?); {_FIX}")
    m = config.get("model", {})
    model = model_from_config(config_from_dict(config, where=str(run_dir / "config.yaml")).model)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    if state.get("reported") is not None:  # optim.reported=best_val_ce: the run's model
        state = state["reported"]
    try:
        model.load_state_dict(state["model"] if "model" in state else state)
    except (RuntimeError, KeyError) as exc:
        raise UserError(
            f"{ckpt}: does not match model {m.get('arch')!r} of config.yaml; {_FIX}"
        ) from exc
    return config, model.to(device).eval()


def read_rows(path: str | Path, rows: np.ndarray, *, device: str | torch.device = "cpu") -> dict:
    """Rows of a photoz-study/1 file (any order): images, ebv, zs, flux_table (or None), id, edges,
    masks (the packed ``source_mask`` rows as uint8 (n, 64, 8), or None).

    Reads only those rows (sorted fancy indexing), so picking a dozen test galaxies of a
    600k-galaxy file does not load the whole test split.
    """
    # h5py needs strictly increasing indices: read the unique sorted rows, then expand back
    srt, back = np.unique(np.asarray(rows, dtype=np.int64), return_inverse=True)
    try:
        with h5py.File(path, "r") as f:
            out = {k: f[k][srt][back] for k in ("images", "ebv", "zs", "id")}
            out["flux_table"] = f["flux_table"][srt][back] if "flux_table" in f else None
            masks = f["source_mask"][srt][back] if "source_mask" in f else None
            edges = np.asarray(f.attrs["bin_edges"], dtype=np.float64)
    except (OSError, KeyError) as exc:
        raise UserError(
            f"{path}: cannot read galaxy rows ({exc}); check the run's data file"
        ) from exc
    t: dict[str, Any] = {
        k: torch.as_tensor(np.asarray(v, dtype=np.float32), device=device)
        for k, v in out.items()
        if k != "id" and v is not None
    }
    t["flux_table"] = t.get("flux_table")
    t["masks"] = None if masks is None else torch.as_tensor(masks, device=device)
    t["id"] = out["id"]
    t["edges"] = torch.as_tensor(edges, dtype=torch.float32, device=device)
    return t


def first_test_rows(path: str | Path, n: int) -> np.ndarray:
    """File rows of the first ``n`` test galaxies (split == 2)."""
    with h5py.File(path, "r") as f:
        return np.flatnonzero(f["split"][:] == 2)[:n]


def run_background(config: dict) -> str:
    """A run's ``augment.background`` from its config.yaml dict (``threshold`` before the field)."""
    return str((config.get("augment") or {}).get("background", "threshold"))


@torch.no_grad()
def augmented_cdes(
    run_dir: str | Path,
    rows: np.ndarray,
    *,
    n_draws: int = 20,
    seed: int = 0,
    device: str | torch.device = "cpu",
    background: str | None = None,
    data: str | Path | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CDEs of some galaxies under ``n_draws`` random D4 + background resamplings (App. H).

    Args:
        run_dir: a finished run (config.yaml and checkpoint/state.pt).
        rows: row numbers of the galaxies in the run's data file (e.g. predictions.h5 ``index``).
        n_draws: augmentations per galaxy (the paper: 20).
        seed: seed of the augmentation draws (the same draws for every run).
        background: ``threshold`` or ``segmentation`` resampling (``augment.background``);
            None: the run's own (its config.yaml; ``threshold`` for a run made before the field).
        data: read the galaxies (and masks) from this file instead of the run's own, e.g. the
            same universe with ``source_mask`` added (same rows, same pixels).

    Returns:
        (p (G, n_draws, C), zs (G,), edges (C+1,)).
    """
    from study.augment import augment, unpack_bits

    config, model = load_trained_model(run_dir, device=device)
    mode = background or run_background(config)
    path = Path(data) if data is not None else run_dataset(config, run_dir)
    gals = read_rows(path, rows, device=device)
    if mode == "segmentation" and gals["masks"] is None:
        raise UserError(
            f"{path}: has no source_mask for segmentation resampling; add it with "
            f"`python -m study.data masks {path}`"
        )
    gen = torch.Generator(device=device).manual_seed(seed)
    g = gals["zs"].shape[0]
    x = gals["images"].repeat_interleave(n_draws, dim=0)  # (G * n_draws, 5, 64, 64)
    ebv = gals["ebv"].repeat_interleave(n_draws, dim=0)
    keep = None  # (G * n_draws, 64, 64) bool central-source pixels (segmentation mode)
    if mode == "segmentation":
        keep = unpack_bits(gals["masks"]).repeat_interleave(n_draws, dim=0)
    fill = config.get("augment", {}).get("fill", "normal")  # the run's own operator
    p = torch.softmax(model(augment(x, gen, fill=fill, keep=keep), ebv).float(), dim=1)
    return (
        p.reshape(g, n_draws, -1).cpu().numpy(),
        gals["zs"].cpu().numpy().astype(np.float64),
        read_bin_edges(Path(run_dir)),
    )


@dataclass
class Study:
    """A study directory; ``frame`` is read at load, the rest on first use."""

    path: Path
    frame: pd.DataFrame  # the finished runs (what every table and figure is made of)
    # paired halving: the rows of configurations stopped at a rung (their validation metrics
    # at that epoch, no test metrics); empty for an unpruned study
    stopped: pd.DataFrame = field(default_factory=pd.DataFrame)
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

    def objective(self) -> tuple[str, str]:
        """(validation column, "min"/"max") the study optimised (its first, if several)."""
        return self.objectives()[0]

    def objectives(self) -> list[tuple[str, str]]:
        """[(frame column, "min"/"max"), ...] the study optimised, from search_space.yaml.

        One for ``objective:``, several for ``objectives:``; val_cde_loss (min) without a file.
        """
        path = self.path / "search_space.yaml"
        try:
            raw = yaml.safe_load(path.read_text()) or {}
            items = raw["objectives"] if "objectives" in raw else [raw.get("objective", {})]
            return [
                (str(o.get("metric", "val_cde_loss")), str(o.get("mode", "min"))) for o in items
            ]
        except (OSError, yaml.YAMLError, AttributeError, TypeError):
            return [("val_cde_loss", "min")]

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
    frame = load_frame(path)
    if "stopped" not in frame:
        return Study(path=path, frame=frame)
    stopped = frame["stopped"].astype(bool)
    finished = frame[~stopped].drop(columns="stopped").reset_index(drop=True)
    return Study(path=path, frame=finished, stopped=frame[stopped].reset_index(drop=True))
