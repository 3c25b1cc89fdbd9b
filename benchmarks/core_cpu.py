"""CPU timings of the training core (one thread): model step, augmentation, flux loss forms.

Run: ``.venv/bin/python -m benchmarks.core_cpu``. Prints median and range over n repeats.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from study.augment import augment
from study.data.photometry import filter_curves
from study.losses import flux_loss, flux_loss_reference
from study.model import build_model


def timed(f: Callable[[], object], n: int = 7, warm: int = 2) -> tuple[float, float, float]:
    """(median, min, max) seconds of f over n calls after warm-up calls."""
    for _ in range(warm):
        f()
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts), min(ts), max(ts)


def report(name: str, per: int, t: tuple[float, float, float], n: int) -> None:
    md, lo, hi = t
    print(
        f"{name}: median {md * 1e3:.1f} ms ({md / per * 1e3:.2f} ms per image), "
        f"range {lo * 1e3:.1f}-{hi * 1e3:.1f} ms, n={n}"
    )


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    b = 128
    x = torch.rand(b, 5, 64, 64) * 2 - 0.1  # nanomaggies
    ebv = torch.rand(b) * 0.1
    for arch in ("tiny_cnn", "small_cnn"):
        m = build_model(arch)

        def step(m=m) -> None:
            m.zero_grad()
            m(x, ebv).logsumexp(1).sum().backward()

        report(f"{arch} forward+backward, batch {b}", b, timed(step), 7)
    g = torch.Generator().manual_seed(0)
    report(f"augment (D4 + background), batch {b}", b, timed(lambda: augment(x, g)), 7)

    # flux loss: stored table (one mat-vec) vs the paper's in-graph integrals, float32,
    # an SDSS-like spectrum grid (3800-9200 A, 3840 log-spaced pixels), 180 bins
    bf = 8
    wave = torch.from_numpy(np.geomspace(3800.0, 9200.0, 3840)).float()
    spectra = torch.rand(bf, 3840) + 0.5
    zs = torch.rand(bf) * 0.3 + 0.02
    edges = torch.linspace(0.0, 0.4, 181)
    filters = [
        (torch.from_numpy(w).float(), torch.from_numpy(r).float()) for w, r in filter_curves()
    ]
    logits = torch.randn(bf, 180, requires_grad=True)
    table = torch.rand(bf, 5, 180)
    t_table = timed(lambda: flux_loss(logits.softmax(1), table).backward())
    t_ref = timed(
        lambda: flux_loss_reference(
            logits.softmax(1), zs, wave, spectra, edges, filters
        ).backward(),
        n=3,
        warm=1,
    )
    report(f"flux_loss (table) forward+backward, batch {bf}", bf, t_table, 7)
    report(f"flux_loss_reference (in-graph) forward+backward, batch {bf}", bf, t_ref, 3)
    print(f"in-graph / table: {t_ref[0] / t_table[0]:.0f}x")


if __name__ == "__main__":
    main()
