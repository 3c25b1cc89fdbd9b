"""Issue 12's probe: a plain MLP on aperture magnitudes, the bar a network reading pixels should clear.

What the issue measured before the demo preset existed ("a plain MLP (two hidden layers of 256)
on the asinh fluxes in three centred Gaussian apertures (sigma 2, 4, 8 px) plus E(B-V) ...
one-cycle LR, targets smoothed over neighbouring bins"), made reproducible on any
photoz-study/1 file. Its inputs are the demo network's own aperture path
(``SmallCNN.aperture_mags``: band fluxes in centred Gaussian apertures of the ``--crop`` px
central crop, dereddened, asinh) plus E(B-V), standardised on the training split, never
augmented; its training is the demo preset's (one-cycle to lr 3e-3, batch 64, CE against
``gaussian_targets`` of sigma ``loss.target_sigma``), the last epoch reported; its metrics are
``study.metrics``' (the test split; with ``--sample FILE`` every galaxy of another file, as in
``benchmarks.bias``). No library fits it: it is a few lines of torch. One line per (epochs, seed),
with the CPU seconds of training. Used for README "The demo preset (issue 12)".

    python -m benchmarks.probe [--data U.h5] [--epochs 20 60] [--seeds 0 1] [--crop 64]
        [--sample OTHER.h5]
"""

from __future__ import annotations

import argparse
import time

import h5py
import numpy as np
import torch
from torch import nn

from analysis.results import read_rows
from study.config import Config, make_config
from study.data.dataset import load_split, read_info
from study.losses import cross_entropy
from study.metrics import all_metrics, cde_loss, point_metrics
from study.model import SmallCNN

HIDDEN = 256  # the two hidden layers
READ = 1024  # images per block when computing the aperture magnitudes


def features(
    images: torch.Tensor, ebv: torch.Tensor, crop: int, apertures: tuple[float, ...]
) -> torch.Tensor:
    """(n, 5 K + 1): the demo network's dereddened asinh aperture magnitudes, then E(B-V)."""
    path = SmallCNN(crop=crop, apertures=apertures, deredden=True)
    with torch.no_grad():
        mags = [
            path.aperture_mags(images[i : i + READ].float(), ebv[i : i + READ].float())
            for i in range(0, len(images), READ)
        ]
    return torch.cat([torch.cat(mags), ebv.float().reshape(-1, 1)], dim=1)


def train_probe(
    x: torch.Tensor, zs: torch.Tensor, edges: torch.Tensor, epochs: int, seed: int, cfg: Config
) -> nn.Module:
    """The MLP, trained on standardised ``x`` with the demo preset's schedule and targets."""
    torch.manual_seed(seed)
    n_bins = len(edges) - 1
    net = nn.Sequential(
        nn.Linear(x.shape[1], HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(),
        nn.Linear(HIDDEN, n_bins),
    )  # fmt: skip
    bs = cfg.optim.batch_size
    steps = len(x) // bs
    opt = torch.optim.Adam(net.parameters(), lr=cfg.optim.lr, fused=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.optim.lr, total_steps=epochs * steps, pct_start=cfg.optim.warmup_frac
    )
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for k in range(steps):
            b = order[k * bs : (k + 1) * bs]
            loss = cross_entropy(net(x[b]), zs[b], edges, cfg.loss.target_sigma)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return net.eval()


def _probs(net: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(net(x), dim=1).double().numpy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--data", help="photoz-study/1 file (default: the demo preset's universe)")
    parser.add_argument("--epochs", type=int, nargs="+", default=[20, 60])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--crop", type=int, default=64, help="central crop of the apertures, px")
    parser.add_argument("--apertures", type=float, nargs="+", default=[2.0, 4.0, 8.0])
    parser.add_argument("--sample", metavar="FILE", help="also score on every galaxy of FILE")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cfg = make_config("demo", "baseline_aug")
    if args.data is None:
        from study.universe.build import resolve_data  # the edge builds the cached universe

        args.data = str(resolve_data(cfg))
    info = read_info(args.data)
    edges = torch.as_tensor(info.bin_edges, dtype=torch.float32)
    apertures = tuple(args.apertures)
    train, test = load_split(args.data, "train"), load_split(args.data, "test")
    x_train = features(train.images, train.ebv, args.crop, apertures)
    mu, sd = x_train.mean(0), x_train.std(0).clamp_min(1e-6)
    x_train = (x_train - mu) / sd
    x_test = (features(test.images, test.ebv, args.crop, apertures) - mu) / sd
    sample = x_sample = None
    if args.sample:
        with h5py.File(args.sample, "r") as f:
            sample = read_rows(args.sample, np.arange(len(f["zs"])))
        x_sample = (features(sample["images"], sample["ebv"], args.crop, apertures) - mu) / sd
    print(f"probe on {args.data}: {len(train)} training, {len(test)} test galaxies, "
          f"apertures {apertures} px on the central {args.crop} px")  # fmt: skip
    for epochs in args.epochs:
        for seed in args.seeds:
            t0 = time.process_time()
            net = train_probe(x_train, train.zs.float(), edges, epochs, seed, cfg)
            cpu_s = time.process_time() - t0
            m = all_metrics(_probs(net, x_test), test.zs.double().numpy(), info.bin_edges)
            line = (
                f"  epochs {epochs:3d} seed {seed}: test sigma_nmad {m['sigma_nmad']:.4f} "
                f"outlier_frac {m['outlier_frac']:.2%} cde_loss {m['cde_loss']:.2f} "
                f"bias {m['bias']:+.4f} ({cpu_s:.0f} CPU-s)"
            )
            if sample is not None and x_sample is not None:
                p, zs = _probs(net, x_sample), sample["zs"].double().numpy()
                s = point_metrics(p, zs, info.bin_edges)
                line += (
                    f" | sample sigma_nmad {s['sigma_nmad']:.4f} outlier_frac "
                    f"{s['outlier_frac']:.2%} cde_loss {cde_loss(p, zs, info.bin_edges):.2f}"
                )
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
