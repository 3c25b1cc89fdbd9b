"""Timing helpers shared by the benchmarks: synchronised clocks, interleaved repeats, median/IQR.

Every figure is the median over ``repeats`` of a per-call time, each repeat timing ``calls``
back-to-back calls after a warm-up; the spread is the interquartile range. Candidates are
interleaved (repeat r runs every candidate once, in an order rotated by r), so background load
on a shared machine falls on all candidates alike and ratios stay meaningful.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where a device needs it: the numpy benchmarks skip it
    import torch


def synchronize(device: torch.device | str) -> None:
    """Wait for queued work on ``device`` (a no-op on the CPU)."""
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize(torch.device(device))


class Clock:
    """Wall and process-CPU seconds of a ``with`` block, ``device`` synchronised at both ends.

    Process CPU time (all threads of this process) is what the CPU benchmarks report: on a
    machine shared with other jobs it counts only this process's work, whereas wall time also
    counts the time the scheduler gave to others. With one torch thread and an idle machine the
    two agree. After the block: ``wall`` and ``cpu``, in seconds.
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = device
        self.wall = self.cpu = float("nan")

    def __enter__(self) -> Clock:
        synchronize(self.device)
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: Any) -> None:
        synchronize(self.device)
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu


def time_calls(
    fn: Callable[[], object], calls: int, device: torch.device | str
) -> tuple[float, float]:
    """(wall, process CPU) seconds per call of ``fn`` over ``calls`` calls (``Clock``)."""
    with Clock(device) as clock:
        for _ in range(calls):
            fn()
    return clock.wall / calls, clock.cpu / calls


def interleaved(
    candidates: Mapping[str, Callable[[], object]],
    *,
    calls: int,
    repeats: int,
    warmup: int,
    device: torch.device | str,
) -> dict[str, dict[str, list[float]]]:
    """Per-call seconds of each candidate, one entry per repeat, candidates interleaved.

    Returns ``{name: {"wall": [...], "cpu": [...]}}`` (see ``time_calls``).

    Args:
        candidates: name -> zero-argument callable (one training step, one batch, ...).
        calls: calls timed together per repeat (amortises the clock and the sync).
        repeats: repeats per candidate; report their median and IQR.
        warmup: untimed calls per candidate first (compilation, allocator, autotuning).
        device: synchronised around each timed block.
    """
    names = list(candidates)
    for name in names:
        for _ in range(warmup):
            candidates[name]()
    synchronize(device)
    out: dict[str, dict[str, list[float]]] = {n: {"wall": [], "cpu": []} for n in names}
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            wall, cpu = time_calls(candidates[name], calls, device)
            out[name]["wall"].append(wall)
            out[name]["cpu"].append(cpu)
    return out


def summary(seconds: list[float]) -> dict[str, float]:
    """Median, interquartile range, min and n of a list of per-call seconds."""
    if len(seconds) >= 2:
        q1, _, q3 = statistics.quantiles(seconds, n=4, method="inclusive")
    else:
        q1 = q3 = seconds[0]
    return {
        "median_s": statistics.median(seconds),
        "iqr_s": q3 - q1,
        "min_s": min(seconds),
        "n": len(seconds),
    }


def ratio_summary(num: list[float], den: list[float]) -> dict[str, float]:
    """Median and IQR of the per-repeat ratios num[r] / den[r] (paired: same repeat, same load)."""
    ratios = [a / b for a, b in zip(num, den, strict=True)]
    s = summary(ratios)
    return {"median": s["median_s"], "iqr": s["iqr_s"], "n": s["n"]}


def device_info(device: torch.device | str) -> dict[str, object]:
    """What the numbers were measured on: device name, threads, torch version."""
    import torch

    device = torch.device(device)
    info: dict[str, object] = {
        "device": str(device),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "num_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["device_name"] = props.name
        info["device_memory_gb"] = round(props.total_memory / 2**30, 1)
    else:
        info["device_name"] = "cpu"
    return info
