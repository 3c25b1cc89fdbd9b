"""Where a run's redshift bias comes from: its splits, and its training view of the test images.

For each finished run (``python -m study.train``'s directory), its reported model scores every
split of its data file with no augmentation: ``bias`` = mean (zp - zs)/(1 + zs) with its standard
error, and sigma_nmad (``study.metrics``). Then the test images as the network saw its training
images: the central crop, background-resampled with the run's own ``augment.fill``
(``--draws`` independent draws, zp averaged), and the per-band mean pixel change that
resampling makes, in units of the clipped sky std. Last, the test bias by spectroscopic-redshift
range (ZBINS), beside every peer cached for the same file (``python -m analysis.peers``), so
that a network's bias can be set against the estimators it is compared with on the same
galaxies. With ``--sample FILE``, also every galaxy of another file (a universe of another seed:
the same population, a sample five times the test split's, none of it seen in training), and
RAIL's KNN and FlexZBoost informed on the first run's training split, on the same galaxies. Used
for README "The demo preset (issue 12)".

    python -m benchmarks.bias RUN_DIR [RUN_DIR ...] [--draws 4] [--sample OTHER.h5]
"""

from __future__ import annotations

import argparse
import dataclasses

import h5py
import numpy as np
import torch

from analysis.results import load_trained_model, read_rows, run_dataset
from study.augment import background_stats, resample_background
from study.metrics import all_metrics, cde_loss, point_estimate, point_metrics
from study.model import centre_crop

SPLITS = {0: "train", 1: "val", 2: "test"}
ZBINS = (0.0, 0.05, 0.08, 0.12, 0.16, 0.2, 0.25, 0.4)  # zs ranges of the by-redshift lines


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
    # the trainer's stats: each whole cutout's clipped sky (augment.background_stats), not the
    # crop's, whose clipped mean holds some of the galaxy's light
    bg = background_stats(d["images"])
    stats = (bg[..., 0].float(), bg[..., 1].float())
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
    lines += by_redshift(path, zs, edges, dz)
    return "\n".join(lines)


def _by_range(k: np.ndarray, dz: np.ndarray) -> str:
    """Mean ``dz`` of each ZBINS range, ``k`` the range of each galaxy."""
    cells = [f"{dz[k == i].mean():+.4f}" if (k == i).any() else "-" for i in range(len(ZBINS) - 1)]
    return " ".join(f"{c:>9s}" for c in cells)


def by_redshift(path: str, zs: np.ndarray, edges: np.ndarray, dz: np.ndarray) -> list[str]:
    """The test bias per ZBINS range: this run's (``dz``, its test residuals), then each cached
    peer's on the same galaxies."""
    from analysis.peers import cache_dir, peer_cdes
    from study.data.dataset import read_info

    k = np.digitize(zs, ZBINS[1:-1])
    ranges = " ".join(f"{lo:.2f}-{hi:.2f}" for lo, hi in zip(ZBINS[:-1], ZBINS[1:], strict=True))
    counts = " ".join(f"{(k == i).sum():9d}" for i in range(len(ZBINS) - 1))
    lines = [
        f"  test bias by zs range {'all':>7s} | {ranges}",
        f"    {'galaxies':16s} {len(zs):7d} | {counts}",
    ]
    lines.append(f"    {'this run':16s} {dz.mean():+.4f} | {_by_range(k, dz)}")
    for cached in sorted(cache_dir(read_info(path).content_hash).glob("*.h5")):
        dq = (point_estimate(peer_cdes(path, cached.stem), edges) - zs) / (1 + zs)
        lines.append(f"    {cached.stem:16s} {dq.mean():+.4f} | {_by_range(k, dq)}")
    return lines


def sample_report(run: str, path: str) -> str:
    """The run's reported model on every galaxy of another file ``path``: an independent sample
    of the same population when ``path`` is a universe of another seed (``--sample``)."""
    _, model = load_trained_model(run)
    with h5py.File(path, "r") as f:
        n = len(f["zs"])
    d = read_rows(path, np.arange(n))
    edges, zs = d["edges"].double().numpy(), d["zs"].double().numpy()
    p = _probs(model, d["images"], d["ebv"])
    dz = (point_estimate(p, edges) - zs) / (1 + zs)
    m = point_metrics(p, zs, edges)
    return (
        f"  {path} (all {n} galaxies): bias {dz.mean():+.4f} (se {dz.std() / np.sqrt(n):.4f})"
        f" sigma_nmad {m['sigma_nmad']:.4f} outlier_frac {m['outlier_frac']:.2%}"
        f" cde_loss {cde_loss(p, zs, edges):.2f}"
    )


def sample_peers(
    path: str, sample: str, estimators: tuple[str, ...] = ("knn", "flexzboost")
) -> str:
    """RAIL's peers informed on ``path``'s training split (as ``analysis.peers``, RAIL's own
    settings), estimated on every galaxy of ``sample``: the networks' ``sample_report`` beside
    the estimators they are compared with, on the same independent galaxies."""
    from analysis import peers

    base, other = peers.load_catalogue(path), peers.load_catalogue(sample)
    train = base.split == 0
    both = dataclasses.replace(
        base,
        mags=np.concatenate([base.mags[train], other.mags]),
        mag_errs=np.concatenate([base.mag_errs[train], other.mag_errs]),
        zs=np.concatenate([base.zs[train], other.zs]),
        ids=np.concatenate([base.ids[train], other.ids]),
        split=np.concatenate(
            [np.zeros(train.sum(), np.uint8), np.full(len(other.zs), 2, np.uint8)]
        ),
    )  # the limiting magnitudes stay the training split's
    lines = [f"  peers informed on {path}'s training split, on all of {sample}:"]
    for name in estimators:
        m = all_metrics(peers.run_peer(both, name, peers.SETTINGS[name]), other.zs, other.edges)
        lines.append(
            f"    {name:10s} bias {m['bias']:+.4f} sigma_nmad {m['sigma_nmad']:.4f} "
            f"outlier_frac {m['outlier_frac']:.2%} cde_loss {m['cde_loss']:.2f}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="finished run directories")
    parser.add_argument("--draws", type=int, default=4, help="resampling draws per test galaxy")
    parser.add_argument(
        "--sample", metavar="FILE",
        help="also score each run on every galaxy of FILE (a universe of another seed: "
        "`python -m study.data universe --n 4000 --seed 1 --out FILE`)",
    )  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(1)
    for run in args.runs:
        print(run_report(run, args.draws))
        if args.sample:
            print(sample_report(run, args.sample))
    if args.sample:
        config, _ = load_trained_model(args.runs[0])
        print(sample_peers(str(run_dataset(config, args.runs[0])), args.sample))


if __name__ == "__main__":
    main()
