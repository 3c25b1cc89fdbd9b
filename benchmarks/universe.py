"""Benchmarks and summary tables of the synthetic universe.

    python -m benchmarks.universe speed --n 20000 --repeats 3 [--workers W] [--dtype float32]
    python -m benchmarks.universe tables --n 20000 [--seed 0]
    python -m benchmarks.universe precision --n 2048

``speed`` runs the real command (``python -m study.data universe``) in a fresh process per
repeat, so each figure is end to end: imports, tables, rendering, noise, flux table, HDF5
write and content hash. It reports wall time and galaxies per second (median and min-max
over the repeats), the CPU seconds of the whole process tree, the peak proportional memory
(PSS, shared pages counted once) of the tree, and the load average before each repeat (the
machine may be shared). ``tables`` prints the n(z) quantiles and median colours per redshift
bin (catalogue fluxes, no images). ``precision`` measures what float16 storage keeps relative
to each pixel's own noise.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np

from benchmarks.timing import Clock


def _tree_pss_mb(pid: int) -> float:
    """Proportional set size (MB) of a process and its descendants (psutil's memory_full_info)."""
    import psutil

    total = 0.0
    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    for p in procs:
        try:
            total += p.memory_full_info().pss / 2**20
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def _tree_cpu(pid: int, seen: dict[int, float]) -> None:
    """Record the latest user + system CPU seconds of each process of the tree."""
    import psutil

    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            t = p.cpu_times()
            seen[p.pid] = t.user + t.system
        except psutil.NoSuchProcess:
            pass


def run_once(n: int, seed: int, dtype: str, workers: int | None, out: Path) -> dict:
    """One end-to-end build in a fresh process; wall, CPU (tree) and peak PSS."""
    cmd = [sys.executable, "-m", "study.data", "universe", "--n", str(n), "--seed", str(seed)]
    cmd += ["--out", str(out), "--dtype", dtype]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    load = os.getloadavg()[0]
    with Clock() as clock:  # the build, from launch to exit
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        peak, cpu, done = 0.0, {}, threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, _tree_pss_mb(proc.pid))
                _tree_cpu(proc.pid, cpu)
                done.wait(0.25)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        rc = proc.wait()
    wall = clock.wall
    done.set()
    thread.join()
    if rc != 0:
        raise SystemExit(f"error: {' '.join(cmd)} exited with {rc}")
    return {
        "wall_s": wall,
        "rate": n / wall,
        "cpu_s": sum(cpu.values()),
        "peak_pss_mb": peak,
        "load1": load,
    }


def speed(args: argparse.Namespace) -> dict:
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            out = Path(tmp) / f"u{r}.h5"
            runs.append(run_once(args.n, args.seed, args.dtype, args.workers, out))
            out.unlink()
            print(json.dumps({"repeat": r, **{k: round(v, 3) for k, v in runs[-1].items()}}))
    walls = [x["wall_s"] for x in runs]
    med = statistics.median(walls)
    summary = {
        "command": f"python -m study.data universe --n {args.n} --seed {args.seed} --dtype {args.dtype}"
        + (f" --workers {args.workers}" if args.workers else ""),
        "n_galaxies": args.n,
        "repeats": args.repeats,
        "cpus": os.cpu_count(),
        "wall_s_median": med,
        "wall_s_min_max": [min(walls), max(walls)],
        "gal_per_s_median": args.n / med,
        "gal_per_s_min_max": [args.n / max(walls), args.n / min(walls)],
        "cpu_s_per_1000_gal_median": 1000 * statistics.median(x["cpu_s"] for x in runs) / args.n,
        "peak_pss_mb_max": max(x["peak_pss_mb"] for x in runs),
        "load1_before": [round(x["load1"], 2) for x in runs],
    }
    print(json.dumps(summary, indent=1))
    return summary


def tables(args: argparse.Namespace) -> None:
    from study.data.layout import EXTINCTION_R as R_EXT
    from study.universe.build import build_catalogue

    cat = build_catalogue(args.n, args.seed)
    z = cat["zs"]
    qs = [0.05, 0.25, 0.5, 0.75, 0.95]
    print(f"n(z) of {args.n} galaxies (seed {args.seed}):\n")
    print("| quantile | " + " | ".join(f"{q:.0%}" for q in qs) + " | mean |")
    print("|---" * (len(qs) + 2) + "|")
    print("| z | " + " | ".join(f"{v:.3f}" for v in np.quantile(z, qs)) + f" | {z.mean():.3f} |")
    mags = 22.5 - 2.5 * np.log10(cat["flux"]) - R_EXT * cat["ebv"][:, None]  # dereddened
    red = cat["truth/red"].astype(bool)
    print("\nMedian dereddened colours per redshift bin (all / red sequence / blue cloud):\n")
    print("| z bin | N | red frac | u-g | g-r | r-i | i-z | g-r red | g-r blue |")
    print("|---" * 9 + "|")
    edges = [0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4]
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        s = (z >= lo) & (z < hi)
        if s.sum() < 5:
            continue
        col = np.median(mags[s, :-1] - mags[s, 1:], axis=0)
        gr = mags[:, 1] - mags[:, 2]
        gr_red = np.median(gr[s & red]) if (s & red).any() else np.nan
        gr_blue = np.median(gr[s & ~red]) if (s & ~red).any() else np.nan
        print(
            f"| {lo:.2f}-{hi:.2f} | {s.sum()} | {red[s].mean():.2f} | "
            + " | ".join(f"{c:.2f}" for c in col)
            + f" | {gr_red:.2f} | {gr_blue:.2f} |"
        )


def precision(args: argparse.Namespace) -> None:
    import h5py

    from study.universe import render
    from study.universe.build import build_universe

    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for dtype in ("float32", "float16"):
            paths[dtype] = build_universe(
                args.n, args.seed, Path(tmp) / f"{dtype}.h5", image_dtype=dtype, progress=False
            )
        with h5py.File(paths["float32"]) as f, h5py.File(paths["float16"]) as g:
            x32 = f["images"][:]
            x16 = g["images"][:].astype(np.float32)
            size = {k: Path(p).stat().st_size / args.n / 1024 for k, p in paths.items()}
    r = render.renderer()
    sigma = np.sqrt(
        r.sky_var[None, :, None, None] + np.maximum(x32, 0) / r.gain[None, :, None, None]
    )
    err = np.abs(x16 - x32) / sigma
    qs = [0.5, 0.99, 0.999, 0.99999, 1.0]
    print(f"float16 rounding error / pixel noise over {x32.size:,} pixels ({args.n} galaxies):")
    print(
        "  quantiles "
        + ", ".join(f"{q}: {v:.2e}" for q, v in zip(qs, np.quantile(err, qs), strict=True))
    )
    print(f"  fraction of pixels with error > 1% of their noise: {np.mean(err > 0.01):.2e}")
    print(f"  KiB per galaxy: float32 {size['float32']:.1f}, float16 {size['float16']:.1f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.universe", description=__doc__)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("speed", help="end-to-end build rate")
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--json", type=Path, default=None, help="also write the summary here")
    p = sub.add_parser("tables", help="n(z) quantiles and colour-redshift table (Markdown)")
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("precision", help="float16 storage error relative to the pixel noise")
    p.add_argument("--n", type=int, default=2048)
    p.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.what == "speed":
        summary = speed(args)
        if args.json:
            args.json.write_text(json.dumps(summary, indent=1))
    elif args.what == "tables":
        tables(args)
    else:
        precision(args)


if __name__ == "__main__":
    main()
