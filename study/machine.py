"""The machine a run is on: which torch device to use, its name, and the code's git commit.

One place for these, so that the trainer, the study driver, the landscape and the benchmarks
choose a device the same way and record the same provenance.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import torch

from study.errors import UserError

REPO = Path(__file__).resolve().parent.parent  # the checkout (an editable install)


def pick_device(want: str = "auto", *, flag: str = "run.device") -> torch.device:
    """``auto`` (CUDA when there is one, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.

    Args:
        want: the requested device.
        flag: how the user asked for it, for the error message (``--device``, ``run.device``).

    Raises:
        UserError: CUDA asked for but absent.
    """
    has_cuda = torch.cuda.is_available()
    if want == "auto":
        return torch.device("cuda" if has_cuda else "cpu")
    if want.startswith("cuda") and not has_cuda:
        raise UserError(f"{flag}={want} but no CUDA device is available; use {flag}=auto or cpu")
    return torch.device(want)


def require_cuda_for_paper(preset: str, has_cuda: bool) -> None:
    """The ``paper`` preset (a stride-1 ResNet50 on 607,712 galaxies) refuses to run on CPUs."""
    if preset == "paper" and not has_cuda:
        raise UserError(
            "--preset paper needs CUDA and none was found (a stride-1 ResNet50 on 607,712 "
            "galaxies); use --preset demo for a CPU run"
        )


def device_name(device: torch.device) -> str:
    """What metrics.json records: ``cuda (NVIDIA H100 ...)`` or ``cpu (N threads)``."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def _git(*args: str) -> str | None:
    try:
        res = subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


def git_commit() -> str | None:
    """The checkout's HEAD commit, or None outside a git checkout."""
    return _git("rev-parse", "HEAD") or None


def git_dirty() -> bool:
    """Whether ``study/`` has uncommitted changes (the commit then does not tell the code)."""
    return bool(_git("status", "--porcelain", "--", "study"))
