"""Time the data side: load a split, feed batches (resident vs streamed), build a universe.

    python -m benchmarks.data --n 8192 --device cpu --json data.json
    python -m benchmarks.data --n 65536 --device cuda --universe-n 0 --json data_gpu.json

- **load**: ``load_split`` of the training split of a photoz-study/1 file onto the device
  (galaxies/s and MB/s of images), the file written once beforehand with ``write_dataset``
  (sky noise plus a galaxy per cutout, float16 or float32 images, a flux table).
- **feed**: batches per second over one epoch of ``batch_indices`` order, the way the trainer
  draws them: ``resident_batches`` (the split on the device; a gather and a float16 -> float32
  cast per batch) against ``streamed_batches`` (the split in pageable host memory; a
  background thread gathers and copies ahead on a side stream). Epochs interleaved, median
  and IQR over the repeats.
- **universe**: galaxies per second of ``build_universe`` (the real builder, every stage:
  population, rendering, noise, flux table, HDF5 write), one in-process build of
  ``--universe-n`` galaxies. The universe worker's ``python -m benchmarks.universe speed``
  gives the end-to-end figure over several repeats in fresh processes.

Wall time on CUDA; on the CPU process CPU time too (the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.timing import Clock, device_info, interleaved, summary
from study.data.dataset import batch_indices, draw_split, load_split, write_dataset
from study.data.layout import bin_edges
from study.data.stream import resident_batches, streamed_batches
from study.errors import UserError
from study.machine import pick_device


def write_file(path: Path, n: int, dtype: str, n_bins: int = 180, seed: int = 0) -> Path:
    """A photoz-study/1 file of n galaxies shaped like the data (values irrelevant to speed)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:64, 0:64]
    r = np.hypot(xx - 31.5, yy - 31.5).astype(np.float32)
    images = np.empty((n, 5, 64, 64), dtype=dtype)
    for s in range(0, n, 1024):  # bounded memory for large n
        m = min(1024, n - s)
        scale = rng.uniform(2, 6, (m, 1, 1, 1)).astype(np.float32)
        amp = rng.uniform(0.5, 5.5, (m, 5, 1, 1)).astype(np.float32)
        noise = rng.normal(0, 0.05, (m, 5, 64, 64)).astype(np.float32)
        images[s : s + m] = amp * np.exp(-r / scale) + noise
    edges = bin_edges(n_bins)
    table = (1.0 + 0.2 * rng.standard_normal((n, 5, n_bins))).astype(np.float32)
    return write_dataset(
        path,
        images=images,
        zs=rng.uniform(0.0, 0.4, n),
        ebv=rng.uniform(0.0, 0.1, n).astype(np.float32),
        flux=rng.uniform(1, 100, (n, 5)).astype(np.float32),
        split=draw_split(n, 0),
        ids=np.arange(n, dtype=np.int64),
        bin_edges=edges,
        source="synthetic",
        data_seed=0,
        flux_table=table,
        image_dtype=dtype,
    )


def time_load(path: Path, device: torch.device, dtype: torch.dtype, repeats: int) -> dict:
    """load_split of the training split: seconds, galaxies/s and image MB/s."""
    secs, n, nbytes = [], 0, 0
    for _ in range(repeats):
        with Clock(device) as clock:
            split = load_split(path, "train", device, dtype)
        secs.append(clock.wall)
        n, nbytes = len(split), split.images.numel() * split.images.element_size()
        del split
    s = summary(secs)
    return {
        **s,
        "galaxies": n,
        "galaxies_per_s": n / s["median_s"],
        "image_mb_per_s": nbytes / 2**20 / s["median_s"],
    }


def time_feeds(
    path: Path, device: torch.device, dtype: torch.dtype, batch_size: int, repeats: int
) -> dict[str, Any]:
    """Batches/s of one epoch, resident vs streamed, epochs interleaved."""
    host = load_split(path, "train", "cpu", dtype)
    dev = load_split(path, "train", device, dtype)
    order = torch.Generator().manual_seed(0)
    n_batches = len(host) // batch_size

    def epoch(resident: bool) -> None:
        idx = batch_indices(len(host), batch_size, order, shuffle=True, drop_last=True)
        feed = resident_batches(dev, idx) if resident else streamed_batches(host, idx, device)
        for _ in feed:
            pass

    fns = {"resident": lambda: epoch(True), "streamed": lambda: epoch(False)}
    times = interleaved(fns, calls=1, repeats=repeats, warmup=1, device=device)
    clock = "wall" if device.type == "cuda" else "cpu"
    out: dict[str, Any] = {"batches_per_epoch": n_batches, "batch_size": batch_size}
    for name, t in times.items():
        s = summary(t[clock])
        out[name] = {
            "batches_per_s": n_batches / s["median_s"],
            "epoch": s,
            "epoch_wall": summary(t["wall"]),
            "raw": t,
        }
    out["streamed_over_resident_batches_per_s"] = (
        out["streamed"]["batches_per_s"] / out["resident"]["batches_per_s"]
    )
    return out


def time_universe(n: int, workers: int, dtype: str, tmp: Path) -> dict[str, Any]:
    """One in-process build_universe of n galaxies: wall seconds and galaxies/s."""
    from study.universe.build import build_universe  # astropy, speclite, kcorrect

    with Clock() as clock:
        build_universe(
            n, 0, tmp / "universe.h5", workers=workers, image_dtype=dtype, progress=False
        )
    wall, cpu = clock.wall, clock.cpu
    return {
        "n": n,
        "workers": workers,
        "wall_s": wall,
        "galaxies_per_s": n / wall,
        "main_process_cpu_s": cpu,
        "repeats": 1,
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.data", description=__doc__.split("\n")[0]
    )
    p.add_argument("--n", type=int, default=8192, help="galaxies in the test file")
    p.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--universe-n", type=int, default=256, help="0 skips the universe build")
    p.add_argument("--workers", type=int, default=1, help="universe build processes")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    try:
        device = pick_device(args.device, flag="--device")
        if args.n < 2 * args.batch_size:
            raise UserError(f"--n {args.n}: need at least two batches of --batch-size")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    res: dict[str, Any] = {
        "benchmark": "benchmarks.data",
        "command": "python -m benchmarks.data " + " ".join(argv),
        "device": device_info(device),
        "n": args.n,
        "image_dtype": args.dtype,
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = write_file(Path(tmp) / "data.h5", args.n, args.dtype)
        res["load"] = time_load(path, device, dtype, min(args.repeats, 3))
        res["feed"] = time_feeds(path, device, dtype, args.batch_size, args.repeats)
        if args.universe_n:
            res["universe"] = time_universe(args.universe_n, args.workers, "float32", Path(tmp))
    feed = res["feed"]
    print(
        f"{res['device']['device_name']}: {args.n} galaxies ({args.dtype}), batch "
        f"{args.batch_size}, n={args.repeats} epochs each"
    )
    print(
        f"  load_split train  {res['load']['galaxies_per_s']:10.0f} galaxies/s  "
        f"{res['load']['image_mb_per_s']:8.0f} MB/s"
    )
    for name in ("resident", "streamed"):
        print(
            f"  {name:9s} feed   {feed[name]['batches_per_s']:10.1f} batches/s  "
            f"(IQR of epoch {1e3 * feed[name]['epoch']['iqr_s']:.1f} ms)"
        )
    if "universe" in res:
        u = res["universe"]
        print(
            f"  build_universe    {u['galaxies_per_s']:10.1f} galaxies/s  "
            f"({u['n']} galaxies, {u['workers']} worker(s), one build)"
        )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
