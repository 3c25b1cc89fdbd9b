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

import numpy as np
import torch
from torch import nn

from analysis.results import read_rows
from study.config import Config, make_config
from study.data.dataset import load_split, read_info
from study.losses import cross_entropy
from study.metrics import all_metrics
from study.model import SmallCNN
from study.train import make_scheduler, steps_per_epoch

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
    x: torch.Tensor, zs: torch.Tensor, edges: torch.Tensor, seed: int, cfg: Config
) -> nn.Module:
    """The MLP, trained on standardised ``x`` for ``cfg.optim.epochs`` with the config's batch,
    one-cycle schedule and targets (the demo preset's)."""
    torch.manual_seed(seed)
    n_bins = len(edges) - 1
    net = nn.Sequential(
        nn.Linear(x.shape[1], HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(),
        nn.Linear(HIDDEN, n_bins),
    )  # fmt: skip
    bs, steps = cfg.optim.batch_size, steps_per_epoch(len(x), cfg)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.optim.lr, fused=True)
    sched = make_scheduler(opt, cfg, steps)  # the trainer's one-cycle over cfg.optim.epochs
    gen = torch.Generator().manual_seed(seed)
    for _ in range(cfg.optim.epochs):
        order = torch.randperm(len(x), generator=gen)
        for k in range(steps):
            b = order[k * bs : (k + 1) * bs]
            loss = cross_entropy(net(x[b]), zs[b], edges, cfg.loss.target_sigma)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return net.eval()


def _scores(net: nn.Module, x: torch.Tensor, zs: torch.Tensor, edges: np.ndarray) -> str:
    """The SPEC 3 metrics of the probe on (x, zs), as one line's fields."""
    with torch.no_grad():
        p = torch.softmax(net(x), dim=1).double().numpy()
    m = all_metrics(p, zs.double().numpy(), edges)
    return (
        f"sigma_nmad {m['sigma_nmad']:.4f} outlier_frac {m['outlier_frac']:.2%} "
        f"cde_loss {m['cde_loss']:.2f} bias {m['bias']:+.4f}"
    )


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
    if args.data is None:
        from study.universe.build import resolve_data  # the edge builds the cached universe

        args.data = str(resolve_data(make_config("demo", "baseline_aug")))
    info = read_info(args.data)
    edges = torch.as_tensor(info.bin_edges, dtype=torch.float32)
    apertures = tuple(args.apertures)
    train, test = load_split(args.data, "train"), load_split(args.data, "test")
    x_train = features(train.images, train.ebv, args.crop, apertures)
    mu, sd = x_train.mean(0), x_train.std(0).clamp_min(1e-6)
    x_train = (x_train - mu) / sd
    x_test = (features(test.images, test.ebv, args.crop, apertures) - mu) / sd
    sample = None  # (standardised features, zs) of every galaxy of --sample
    if args.sample:
        rows = read_rows(args.sample, np.arange(read_info(args.sample).n))
        x = (features(rows["images"], rows["ebv"], args.crop, apertures) - mu) / sd
        sample = (x, rows["zs"])
    print(f"probe on {args.data}: {len(train)} training, {len(test)} test galaxies, "
          f"apertures {apertures} px on the central {args.crop} px")  # fmt: skip
    for epochs in args.epochs:
        for seed in args.seeds:
            cfg = make_config("demo", "baseline_aug", overrides={"optim.epochs": epochs})
            t0 = time.process_time()
            net = train_probe(x_train, train.zs.float(), edges, seed, cfg)
            cpu_s = time.process_time() - t0
            line = f"  epochs {epochs:3d} seed {seed}: test {_scores(net, x_test, test.zs, info.bin_edges)}"
            line += f" ({cpu_s:.0f} CPU-s)"
            if sample is not None:
                line += f" | sample {_scores(net, *sample, info.bin_edges)}"
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
