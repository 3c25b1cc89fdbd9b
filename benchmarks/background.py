"""The trainer's once-per-run background statistics (``augment.background_stats``) by chunk.

    python -m benchmarks.background --data FILE.h5 [--n 3040] [--repeats 3]

Times ``background_stats`` on the first ``n`` cutouts of the file (the demo's training split
has 3,040), one torch thread, for each chunk size, interleaved (``benchmarks.timing``); checks
that every chunk gives the same values. Process CPU seconds, median and min-max.
"""

from __future__ import annotations

import argparse
import os

import h5py
import torch

from benchmarks.timing import Clock
from study.augment import background_stats

CHUNKS = (4096, 256, 64, 16)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.background")
    ap.add_argument("--data", required=True, help="photoz-study/1 HDF5 file")
    ap.add_argument("--n", type=int, default=3040, help="cutouts (default: the demo's train split)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    with h5py.File(args.data, "r") as f:
        images = torch.from_numpy(f["images"][: args.n])
    print(f"load average {os.getloadavg()[0]:.2f}; images {tuple(images.shape)}; one thread")
    background_stats(images[:64], chunk=64)  # code warm
    times: dict[int, list[float]] = {c: [] for c in CHUNKS}
    reference = None
    for r in range(args.repeats):
        for chunk in CHUNKS[r % len(CHUNKS) :] + CHUNKS[: r % len(CHUNKS)]:
            with Clock() as clock:
                out = background_stats(images, chunk=chunk)
            times[chunk].append(clock.cpu)
            if reference is None:
                reference = out
            assert torch.equal(out, reference), f"chunk {chunk} changed the values"
    for chunk, t in times.items():
        t.sort()
        print(f"chunk {chunk:5d}: {t[len(t) // 2]:.2f} CPU s (min {t[0]:.2f}, max {t[-1]:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
