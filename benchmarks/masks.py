"""Source masks: what each background mode alters, the masks' speed, and the training comparison.

    python -m benchmarks.masks fractions --data UNIVERSE.h5 [--seed 0] [--crop 24]
    python -m benchmarks.masks rate --data FILE.h5 [--n 256]
    python -m benchmarks.masks compare --threshold RUN ... --segmentation RUN ... --data FILE.h5

``fractions`` re-renders, for the universe's seed, the noiseless light of each central galaxy and
of its neighbour apart (``Renderer.components``; the file's own bytes are never re-made) and
measures, per galaxy in the r band, the fraction of the central galaxy's light in the pixels each
mode redraws (threshold: below the band's clipped mean + 1 std of the noisy cutout, the trainer's
``background_stats``; segmentation: outside ``source_mask``) and the fraction of the neighbour's
light each leaves in place; over the whole 64 px frame and over the central ``--crop`` px (what
the demo network sees). ``rate`` times ``study.data.masks.measure_masks`` (process CPU time and
wall time, with the load average: the machine may be shared). ``compare`` pairs runs of the two
modes by seed: the test metrics per seed, the seed-mean difference segmentation - threshold with a
paired bootstrap over the test galaxies (the same draw for every run: ``analysis.verdict``), and
the Appendix H spread (mean over the first ``--app-h-galaxies`` test galaxies of the std of zp
under 20 random D4 + background draws, the same draws for every run) of every run under each mode.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import h5py
import numpy as np
import torch

from benchmarks.timing import Clock
from study.augment import background_stats
from study.data import masks as masks_mod
from study.model import centre_crop
from study.universe import population as pop_mod
from study.universe import render as render_mod

R_BAND = 2


def _fractions_block(
    images: np.ndarray, packed: np.ndarray, central: np.ndarray, neighbour: np.ndarray, crop: int
) -> dict[str, np.ndarray]:
    """Per-galaxy r-band fractions of one block, over the frame and over the central crop."""
    stats = background_stats(torch.from_numpy(images)).numpy()  # (n, 5, 2)
    thr = images < (stats[..., 0] + stats[..., 1])[:, :, None, None]  # redrawn, threshold mode
    keep = masks_mod.unpack(packed)  # (n, 64, 64) kept, segmentation mode
    out: dict[str, np.ndarray] = {}
    for where, size in (("frame", 64), ("crop", crop)):
        c = centre_crop(torch.from_numpy(central[:, R_BAND]), size).numpy()
        nb = centre_crop(torch.from_numpy(neighbour[:, R_BAND]), size).numpy()
        redrawn = {
            "threshold": centre_crop(torch.from_numpy(thr[:, R_BAND]), size).numpy(),
            "segmentation": ~centre_crop(torch.from_numpy(keep), size).numpy(),
        }
        c_tot, n_tot = c.sum(axis=(1, 2)), nb.sum(axis=(1, 2))
        out[f"{where}_neighbour_light"] = n_tot
        for mode, r in redrawn.items():
            out[f"{where}_{mode}_central_altered"] = (c * r).sum(axis=(1, 2)) / c_tot
            out[f"{where}_{mode}_neighbour_kept"] = (nb * ~r).sum(axis=(1, 2)) / np.where(
                n_tot > 0, n_tot, 1.0
            )
    return out


def fractions(path: str, seed: int, crop: int) -> dict[str, float]:
    with h5py.File(path, "r") as f:
        n = f["zs"].shape[0]
        images, packed = f["images"][:].astype(np.float32), f["source_mask"][:]
        kind = f["truth/neighbour_kind"][:]
        offset = f["truth/neighbour_offset_px"][:]
    parts = []
    for b in range(-(-n // pop_mod.BLOCK)):
        rows = slice(b * pop_mod.BLOCK, min((b + 1) * pop_mod.BLOCK, n))
        g = pop_mod.population().draw_block(seed, b)
        central, neighbour, obs = render_mod.renderer().components(
            g, seed, b, rows.stop - rows.start
        )
        if not np.array_equal(obs["neighbour_kind"][: rows.stop - rows.start], kind[rows]):
            raise SystemExit(
                f"{path}: truth/neighbour_kind differs from seed {seed}'s: wrong --seed"
            )
        parts.append(_fractions_block(images[rows], packed[rows], central, neighbour, crop))
    res = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    keep = masks_mod.unpack(packed)
    centre = np.rint(31.5 + 0.5 + offset).astype(int)  # pixel holding the neighbour's centre
    inside = (kind > 0) & (np.abs(offset) <= 31.5).all(axis=1)
    ix = np.clip(centre, 0, 63)
    centre_in = keep[np.arange(n), ix[:, 1], ix[:, 0]] & inside
    area = keep.sum(axis=(1, 2))
    summary: dict[str, float] = {"n": n, "n_neighbour": int((kind > 0).sum())}
    summary["neighbour_centre_in_frame"] = int(inside.sum())
    summary["neighbour_centre_in_mask"] = int(centre_in.sum())
    summary["mask_area_px_median"] = float(np.median(area))
    summary["mask_empty_frac"] = float(np.mean(area == 0))
    for where in ("frame", "crop"):
        has = (kind > 0) & (res[f"{where}_neighbour_light"] > 1e-3)  # a neighbour with light here
        summary[f"{where}_n_neighbour_with_light"] = int(has.sum())
        for mode in ("threshold", "segmentation"):
            alt = res[f"{where}_{mode}_central_altered"]
            kept = res[f"{where}_{mode}_neighbour_kept"][has]
            summary[f"{where}_{mode}_central_altered_mean"] = float(alt.mean())
            summary[f"{where}_{mode}_central_altered_median"] = float(np.median(alt))
            summary[f"{where}_{mode}_central_altered_p90"] = float(np.percentile(alt, 90))
            summary[f"{where}_{mode}_neighbour_kept_mean"] = float(kept.mean())
            summary[f"{where}_{mode}_neighbour_kept_median"] = float(np.median(kept))
        seg = res[f"{where}_segmentation_central_altered"]
        summary[f"{where}_segmentation_holds_99pct_frac"] = float(np.mean(seg <= 0.01))
    return summary


def rate(path: str, n: int) -> dict[str, float]:
    with h5py.File(path, "r") as f:
        images = f["images"][:n].astype(np.float32)
    masks_mod.warm()
    masks_mod.measure_masks(images[:4])  # code warm
    load = os.getloadavg()[0]
    with Clock() as clock:
        masks_mod.measure_masks(images)
    wall, cpu = clock.wall, clock.cpu
    return {"n": len(images), "load": load, "gal_per_wall_s": len(images) / wall,
            "gal_per_cpu_s": len(images) / cpu}  # fmt: skip


def _test_metrics(run: Path) -> dict[str, float]:
    return json.loads((run / "metrics.json").read_text())["test"]


def compare(thr: list[str], seg: list[str], data: str, n_boot: int, n_app_h: int) -> dict:
    from analysis.figures import augmentation_spread
    from analysis.results import augmented_cdes, load_predictions
    from analysis.verdict import VERDICT_METRICS, per_galaxy, resample_indices, statistics

    runs = {"threshold": [Path(r) for r in thr], "segmentation": [Path(r) for r in seg]}
    seeds = {
        m: [json.loads((r / "metrics.json").read_text())["seed"] for r in rs]
        for m, rs in runs.items()
    }
    if seeds["threshold"] != seeds["segmentation"]:
        raise SystemExit(f"the runs' seeds differ: {seeds}; pass them in the same seed order")
    out: dict = {"seeds": seeds["threshold"], "per_seed": {}, "spread": {}}
    d, loss = {}, {}
    for mode, rs in runs.items():
        out["per_seed"][mode] = [_test_metrics(r) for r in rs]
        preds = [load_predictions(r) for r in rs]
        if any(not np.array_equal(p.ids, preds[0].ids) for p in preds):
            raise SystemExit("the runs' test galaxies differ: not the same data file and split")
        pg = [per_galaxy(p.p, p.zs, p.edges) for p in preds]
        d[mode], loss[mode] = np.stack([g.d for g in pg]), np.stack([g.loss for g in pg])
    n = d["threshold"].shape[1]
    idx = resample_indices(n, n_boot, seed=0)
    diffs = {m: np.empty(n_boot) for m in VERDICT_METRICS}
    for b in range(n_boot):
        i = idx[b]
        a = statistics(d["segmentation"][:, i], loss["segmentation"][:, i])
        z = statistics(d["threshold"][:, i], loss["threshold"][:, i])
        for m in VERDICT_METRICS:
            diffs[m][b] = a[m].mean() - z[m].mean()
    full = {mode: statistics(d[mode], loss[mode]) for mode in runs}
    out["paired"] = {
        m: {
            "per_seed_diff": (full["segmentation"][m] - full["threshold"][m]).tolist(),
            "mean_diff": float(full["segmentation"][m].mean() - full["threshold"][m].mean()),
            "ci95": np.percentile(diffs[m], [2.5, 97.5]).tolist(),
        }
        for m in VERDICT_METRICS
    }
    out["n_galaxies"], out["n_boot"] = n, n_boot
    with h5py.File(data, "r") as f:
        rows = np.flatnonzero(f["split"][:] == 2)[:n_app_h]
    for rs in runs.values():
        for r in rs:
            for draw_mode in ("threshold", "segmentation"):
                p, _, edges = augmented_cdes(
                    r, rows, n_draws=20, seed=0, background=draw_mode, data=data
                )
                out["spread"][f"{r.name} under {draw_mode}"] = augmentation_spread(p, edges)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.masks", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("fractions")
    p.add_argument("--data", required=True, help="a universe file with source_mask")
    p.add_argument("--seed", type=int, default=0, help="the universe's seed")
    p.add_argument("--crop", type=int, default=24, help="central crop, px (the demo network's)")
    p = sub.add_parser("rate")
    p.add_argument("--data", required=True)
    p.add_argument("--n", type=int, default=256, help="galaxies to time")
    p = sub.add_parser("compare")
    p.add_argument("--threshold", nargs="+", required=True, help="runs of the threshold mode")
    p.add_argument(
        "--segmentation", nargs="+", required=True, help="the same seeds' runs, segmentation"
    )
    p.add_argument("--data", required=True, help="the data file with source_mask (App. H draws)")
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--app-h-galaxies", type=int, default=200, help="first test galaxies of App. H")
    args = parser.parse_args(argv)
    if args.command == "fractions":
        res = fractions(args.data, args.seed, args.crop)
    elif args.command == "rate":
        res = rate(args.data, args.n)
    else:
        res = compare(
            args.threshold, args.segmentation, args.data, args.n_boot, args.app_h_galaxies
        )
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
