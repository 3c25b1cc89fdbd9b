"""Where a run's redshift bias comes from: its splits, and its training view of the test images.

    python -m benchmarks.bias RUN_DIR [RUN_DIR ...] [--draws 4]

For each finished run (``python -m study.train``'s directory), its reported model scores every
split of its data file with no augmentation: ``bias`` = mean (zp - zs)/(1 + zs) with its standard
error, and sigma_nmad (``study.metrics``). Then the test images as the network saw its training
images: the central crop, background-resampled with the run's own ``augment.fill``
(``--draws`` independent draws, zp averaged), and the per-band mean pixel change that
resampling makes, in units of the clipped sky std. Used for README "The demo preset (issue 12)".
"""

from __future__ import annotations

import argparse

import h5py
import numpy as np
import torch

from analysis.results import load_trained_model, read_rows, run_dataset
from study.augment import resample_background, sigma_clipped_stats
from study.metrics import point_estimate, point_metrics
from study.model import centre_crop

SPLITS = {0: "train", 1: "val", 2: "test"}


def _probs(model: torch.nn.Module, x: torch.Tensor, ebv: torch.Tensor) -> np.ndarray:
    """(N, C) float64 PDFs, in chunks of 512 galaxies."""
    with torch.no_grad():
        p = [
            torch.softmax(model(x[i : i + 512], ebv[i : i + 512]).double(), 1)
            for i in range(0, len(x), 512)
        ]
    return torch.cat(p).numpy()


def run_report(run: str, draws: int) -> str:
    config, model = load_trained_model(run)
    path = run_dataset(config, run)
    with h5py.File(path, "r") as f:
        split = f["split"][:]
    lines = [run]
    for code, name in SPLITS.items():
        d = read_rows(path, np.flatnonzero(split == code))
        edges, zs = d["edges"].double().numpy(), d["zs"].double().numpy()
        p = _probs(model, d["images"], d["ebv"])
        zp = point_estimate(p, edges)
        dz = (zp - zs) / (1 + zs)
        m = point_metrics(p, zs, edges)
        lines.append(
            f"  {name:5s} n={len(zs):5d} bias {dz.mean():+.4f} (se {dz.std() / np.sqrt(len(dz)):.4f})"
            f" sigma_nmad {m['sigma_nmad']:.4f}"
        )
    # d is the test split now: the same galaxies as the network saw its training batches
    fill = config.get("augment", {}).get("fill", "normal")
    x = centre_crop(d["images"], int(config.get("model", {}).get("crop", 64)))
    stats = sigma_clipped_stats(x)
    gen = torch.Generator().manual_seed(0)
    views = [resample_background(x, gen, stats=stats, fill=fill) for _ in range(draws)]
    zp_view = np.mean([point_estimate(_probs(model, v, d["ebv"]), edges) for v in views], axis=0)
    dz_view = (zp_view - zs) / (1 + zs)
    shift = ((views[0] - x).mean((2, 3)) / stats[1].float()).mean(0).numpy()
    lines.append(
        f"  test, resampled ({fill}, {draws} draws): bias {dz_view.mean():+.4f}, "
        f"zp shift {np.mean(zp_view - zp):+.4f}; mean pixel change / sky std by band "
        + " ".join(f"{v:+.3f}" for v in shift)
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="finished run directories")
    parser.add_argument("--draws", type=int, default=4, help="resampling draws per test galaxy")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for run in args.runs:
        print(run_report(run, args.draws))


if __name__ == "__main__":
    main()
