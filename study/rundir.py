"""The run directory (SPEC 8): the resumable checkpoint, predictions, and reading a finished run.

``out/config.yaml``, ``out/checkpoint/state.pt`` (rewritten atomically after every epoch),
``out/predictions.h5``, ``out/history.parquet`` and, last, ``out/metrics.json``, whose presence
marks a finished run.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np
import pandas as pd
import torch

from study.files import atomic_write

if TYPE_CHECKING:
    from study.data.dataset import DatasetInfo, SplitData


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, Any]  # the content of metrics.json
    history: pd.DataFrame  # one row per epoch (history.parquet)


def save_checkpoint(
    path: Path,
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    sched: Any,
    gens: dict[str, torch.Generator],
    history: list[dict[str, Any]],
    reported: dict[str, Any] | None = None,
) -> None:
    """``reported``: ``{"epoch", "model"}``, the best-validation weights so far (the run's model
    with ``optim.reported=best_val_ce``), kept beside the last epoch's resumable state."""
    path.parent.mkdir(exist_ok=True)
    state = {
        "epoch": len(history),
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "generators": {k: g.get_state() for k, g in gens.items()},
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "history": history,
        "reported": reported,
    }
    atomic_write(path, lambda p: torch.save(state, p))


def load_checkpoint(
    path: Path,
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    sched: Any,
    gens: dict[str, torch.Generator],
    device: torch.device,
) -> list[dict[str, Any]]:
    state = torch.load(path, map_location=device, weights_only=True)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    for k, g in gens.items():
        g.set_state(state["generators"][k].cpu())
    torch.set_rng_state(state["torch_rng"].cpu())
    if state["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
    return list(state["history"])


def load_reported(path: Path, device: torch.device | str = "cpu") -> dict[str, Any] | None:
    """The checkpoint's ``reported`` entry (``{"epoch", "model"}``), or None (last epoch's)."""
    state = torch.load(path, map_location=device, weights_only=True)
    return state.get("reported")


def write_predictions(
    path: Path, p: np.ndarray, zs: np.ndarray, data: SplitData, info: DatasetInfo
) -> None:
    with h5py.File(path, "w", track_order=True) as f:
        f.create_dataset("p", data=p.astype(np.float16), track_times=False)  # (N, C)
        f.create_dataset("zs", data=zs, track_times=False)  # (N,) float64
        f.create_dataset("id", data=np.asarray(data.ids, dtype=np.int64), track_times=False)
        f.create_dataset("index", data=data.index, track_times=False)  # row in the data file
        f.attrs["bin_edges"] = info.bin_edges
        f.attrs["data_hash"] = info.content_hash


def read_finished_run(run_dir: str | os.PathLike) -> RunResult:
    """A finished run directory's metrics and history."""
    run_dir = Path(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return RunResult(run_dir, metrics, pd.read_parquet(run_dir / "history.parquet"))
