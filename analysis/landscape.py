"""Loss-landscape slices around a trained checkpoint (Li et al. 2018), one per loss term.

Directions are Li et al.'s filter-normalised random directions, matching their reference
code (tomgoldstein/loss-landscape, ``net_plotter.create_random_direction`` with
``dir_type='weights', norm='filter', ignore='biasbn'``): a Gaussian draw with the shape of
every parameter; each output filter (index along dim 0 of a kernel: a conv filter, a row of a
linear layer) rescaled to the norm of the same filter of the trained weights; parameters with
ndim <= 1 (biases, BatchNorm scale and shift) zeroed. BatchNorm running statistics are not
perturbed and the model runs in eval mode, on a fixed set of test galaxies with a fixed
augmented view (so the invariance term is a deterministic function of the weights).

Each point ``theta + a d1 (+ b d2)`` is evaluated for every term separately (ce, flux, inv,
cde, l2) and for the run's total ``ce + g_l2 l2 + g_flux flux + g_inv inv + g_cde cde``.
Summary numbers per term let groups be compared over seeds: ``curvature`` (second derivative
of a quadratic fit on |a| <= 0.2) and ``sharpness`` (largest rise over the slice above a = 0).

    python -m analysis.landscape RUN_DIR [--out DIR] [--grid 21] [--points 51]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from study import losses
from study.data.stream import Batch
from study.errors import UserError
from study.files import refuse_nonempty_dir
from study.machine import pick_device

TERMS = ("ce", "flux", "inv", "cde", "l2", "total")
Evaluator = Callable[[nn.Module], dict[str, float]]


def normalize_filters_(
    direction: Sequence[torch.Tensor],
    weights: Sequence[torch.Tensor],
    *,
    ignore_biasbn: bool = True,
) -> None:
    """Li et al.'s filter normalisation, in place.

    Each slice ``d[i]`` along dim 0 of a >= 2-d tensor gets the norm of ``w[i]`` (their
    ``d.mul_(w.norm() / (d.norm() + 1e-10))``, here for all filters at once); 1-d tensors
    are zeroed (``ignore_biasbn``) or set equal to the weights (their other option).
    """
    for d, w in zip(direction, weights, strict=True):
        if d.dim() <= 1:
            if ignore_biasbn:
                d.zero_()
            else:
                d.copy_(w)
            continue
        d_norm = d.flatten(1).norm(dim=1)
        w_norm = w.flatten(1).norm(dim=1)
        d.mul_((w_norm / (d_norm + 1e-10)).view(-1, *([1] * (d.dim() - 1))))


def random_direction(
    model: nn.Module, generator: torch.Generator, *, ignore_biasbn: bool = True
) -> list[torch.Tensor]:
    """A filter-normalised Gaussian direction, one tensor per ``model.parameters()`` entry."""
    weights = [p.detach() for p in model.parameters()]
    direction = [
        torch.randn(w.shape, generator=generator, dtype=torch.float32).to(w.device, w.dtype)
        for w in weights
    ]
    normalize_filters_(direction, weights, ignore_biasbn=ignore_biasbn)
    return direction


@torch.no_grad()
def _set_weights(
    model: nn.Module, base: Sequence[torch.Tensor], dirs: Sequence[Sequence[torch.Tensor]], steps
) -> None:
    for i, p in enumerate(model.parameters()):
        new = base[i].clone()
        for d, s in zip(dirs, steps, strict=True):
            if s != 0.0:
                new.add_(d[i], alpha=float(s))
        p.copy_(new)


def slice_1d(
    model: nn.Module, evaluate: Evaluator, direction: Sequence[torch.Tensor], alphas: np.ndarray
) -> pd.DataFrame:
    """Terms at ``theta + a d`` for each a in ``alphas``; one row per a (column ``alpha``)."""
    base = [p.detach().clone() for p in model.parameters()]
    rows = []
    try:
        for a in alphas:
            _set_weights(model, base, [direction], [a])
            rows.append({"alpha": float(a), **evaluate(model)})
    finally:
        _set_weights(model, base, [], [])
    return pd.DataFrame(rows)


def slice_2d(
    model: nn.Module,
    evaluate: Evaluator,
    directions: tuple[Sequence[torch.Tensor], Sequence[torch.Tensor]],
    alphas: np.ndarray,
    betas: np.ndarray,
) -> dict[str, np.ndarray]:
    """Terms on the grid ``theta + a d1 + b d2``: dict term -> (len(betas), len(alphas))."""
    base = [p.detach().clone() for p in model.parameters()]
    out: dict[str, np.ndarray] = {}
    try:
        for j, b in enumerate(betas):
            for i, a in enumerate(alphas):
                _set_weights(model, base, list(directions), [a, b])
                for k, v in evaluate(model).items():
                    out.setdefault(k, np.full((len(betas), len(alphas)), np.nan))[j, i] = v
    finally:
        _set_weights(model, base, [], [])
    return out


def summarize_slice(
    alphas: np.ndarray, values: np.ndarray, *, fit_radius: float = 0.2
) -> dict[str, float]:
    """Curvature (2nd derivative of a quadratic fit on |a| <= fit_radius) and sharpness.

    ``sharpness`` = max over the slice of L(a) - L(0); ``value`` = L(0).
    """
    alphas, values = np.asarray(alphas, float), np.asarray(values, float)
    i0 = int(np.argmin(np.abs(alphas)))
    near = (np.abs(alphas) <= fit_radius + 1e-12) & np.isfinite(values)
    curvature = np.nan
    if near.sum() >= 3:
        curvature = 2.0 * float(np.polyfit(alphas[near], values[near], 2)[0])
    return {
        "value": float(values[i0]),
        "curvature": curvature,
        "sharpness": float(np.nanmax(values) - values[i0]),
    }


def summarize_frame(slice1d: pd.DataFrame, **kwargs) -> pd.DataFrame:
    """``summarize_slice`` for every term column of a 1D slice frame; one row per term."""
    alphas = slice1d["alpha"].to_numpy()
    rows = [
        {"term": t, **summarize_slice(alphas, slice1d[t].to_numpy(), **kwargs)}
        for t in TERMS
        if t in slice1d
    ]
    return pd.DataFrame(rows)


@dataclass
class LandscapeBatch:
    """The fixed galaxies a landscape is evaluated on (all on one device)."""

    images: torch.Tensor  # (N, 5, S, S) nanomaggies, S = the run's model.crop (or any, >= it)
    view: torch.Tensor  # (N, 5, S, S) one fixed augmented view (D4 + background)
    ebv: torch.Tensor  # (N,)
    zs: torch.Tensor  # (N,)
    flux_table: torch.Tensor | None  # (N, 5, C) or None
    edges: torch.Tensor  # (C + 1,)


def photoz_evaluator(
    batch: LandscapeBatch,
    weights: dict[str, float],
    *,
    chunk: int = 256,
    settings: losses.LossSettings | None = None,
) -> Evaluator:
    """Evaluator of every loss term and the total: the trainer's own objective, on fixed galaxies.

    Each term and the total come from ``study.losses.loss_terms`` and ``total_loss`` (with
    ``weights``, e.g. ``loss_weights(config)``), the functions ``study.train.train_step``
    calls, so the landscape of the total is the loss that was trained. Unlike a training step:
    the model runs in eval mode (BatchNorm's running statistics, a deterministic function of
    the weights), the first view is the plain images and the invariance term's view is the
    batch's fixed ``view``. Batch means over all galaxies, computed ``chunk`` galaxies at a time
    and averaged weighted by chunk size (one chunk: exactly the trainer's values).
    ``settings`` are the run's ``loss_terms`` settings (``loss_settings(config)``, i.e.
    ``study.losses.settings_of(cfg.loss)``, the trainer's: its target width and CDE scale);
    None: ``loss_terms``'s defaults (one-hot targets, the density scale).
    """
    kwargs: dict[str, Any] = dict(settings) if settings is not None else {}

    @torch.no_grad()
    def evaluate(model: nn.Module) -> dict[str, float]:
        model.eval()
        n = batch.zs.shape[0]
        means = dict.fromkeys(TERMS, 0.0)
        for s in range(0, n, chunk):
            sl = slice(s, min(s + chunk, n))
            table = batch.flux_table[sl] if batch.flux_table is not None else None
            terms = losses.loss_terms(
                model(batch.images[sl], batch.ebv[sl]),
                batch.zs[sl],
                batch.edges,
                model,
                flux_table=table,  # None: flux is NaN
                logits_view=model(batch.view[sl], batch.ebv[sl]),
                **kwargs,
            )
            terms["total"] = losses.total_loss(terms, weights)
            for k, v in terms.items():
                means[k] += (sl.stop - sl.start) / n * float(v)
        return means

    return evaluate


def loss_weights(config: dict) -> dict[str, float]:
    """The run's weight of every loss term (``study.losses.weights_of``) from its config dict."""
    from study.config import config_from_dict

    return losses.weights_of(config_from_dict(config).loss)


def loss_settings(config: dict) -> losses.LossSettings:
    """The run's ``loss_terms`` settings (``study.losses.settings_of``, as the trainer's
    ``batch_terms``) from its config dict: ``loss.target_sigma`` and ``loss.cde_scale`` (density
    for a run from before it)."""
    from study.config import config_from_dict

    return losses.settings_of(config_from_dict(config).loss)


def load_batch(
    config: dict,
    run_dir: str | Path | None = None,
    *,
    n_galaxies: int = 256,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> LandscapeBatch:
    """The first ``n_galaxies`` test galaxies of the run's dataset and a fixed augmented view.

    Both as the trainer makes them (``study.train.step_inputs``): the images cropped to the
    run's ``model.crop`` before the augmentation, and the view drawn with the run's
    ``augment.fill`` and, for ``augment.background=segmentation``, its source masks.
    """
    from analysis.results import first_test_rows, read_rows, run_dataset
    from study.augment import augment
    from study.config import config_from_dict
    from study.train import step_inputs

    cfg = config_from_dict(config)
    path = run_dataset(config, run_dir)
    data = read_rows(path, first_test_rows(path, n_galaxies), device=device)
    masks = data["masks"] if cfg.augment.background == "segmentation" else None
    rows = Batch(data["images"], data["ebv"], data["zs"], data["flux_table"], masks=masks)
    x, keep = step_inputs(rows, data["edges"].device, cfg)
    gen = torch.Generator(device=device).manual_seed(seed)
    return LandscapeBatch(
        images=x,
        view=augment(x, gen, fill=cfg.augment.fill, keep=keep),
        ebv=data["ebv"],
        zs=data["zs"],
        flux_table=data["flux_table"],
        edges=data["edges"],
    )


def run_landscape(
    run_dir: str | Path,
    *,
    points: int = 51,
    grid: int = 21,
    n_galaxies: int = 256,
    seed: int = 0,
    device: str = "auto",
    two_d: bool = True,
) -> dict[str, Any]:
    """1D (``points`` on [-1, 1]) and optional 2D (``grid`` x ``grid``) slices of one run."""
    from analysis.results import load_trained_model

    dev = pick_device(device)
    config, model = load_trained_model(run_dir, device=dev)
    batch = load_batch(config, run_dir, n_galaxies=n_galaxies, seed=seed, device=dev)
    evaluate = photoz_evaluator(batch, loss_weights(config), settings=loss_settings(config))
    gen = torch.Generator().manual_seed(seed)
    d1, d2 = random_direction(model, gen), random_direction(model, gen)
    t0 = time.perf_counter()
    s1 = slice_1d(model, evaluate, d1, np.linspace(-1.0, 1.0, points))
    out: dict[str, Any] = {"config": config, "slice1d": s1, "summary": summarize_frame(s1)}
    if two_d:
        axis = np.linspace(-1.0, 1.0, grid)
        out["axis"] = axis
        out["slice2d"] = slice_2d(model, evaluate, (d1, d2), axis, axis)
    out["seconds"] = time.perf_counter() - t0
    out["n_galaxies"] = int(batch.zs.shape[0])
    out["device"] = str(dev)
    return out


def write_landscape(result: dict, out: Path, *, title: str = "") -> list[Path]:
    """Write slice1d.parquet, summary.csv, slice2d.npz and the plotly figures into ``out``."""
    from analysis import figures

    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "slice1d.parquet", out / "summary.csv"]
    result["slice1d"].to_parquet(paths[0])
    result["summary"].to_csv(paths[1], index=False)
    n = result["n_galaxies"]
    fig = figures.landscape_1d({title or "run": result["slice1d"]}, n_galaxies=n)
    paths.append(figures.save(fig, out / "landscape_1d"))
    pngs = [(fig, out / "landscape_1d.png")]
    if "slice2d" in result:
        paths.append(out / "slice2d.npz")
        np.savez_compressed(paths[-1], axis=result["axis"], **result["slice2d"])
        fig2 = figures.landscape_2d(result["axis"], result["slice2d"], title=title, n_galaxies=n)
        paths.append(figures.save(fig2, out / "landscape_2d"))
        pngs.append((fig2, out / "landscape_2d.png"))
    if figures.write_pngs([f for f, _ in pngs], [p for _, p in pngs]):
        paths += [p for _, p in pngs]
    meta = {k: result[k] for k in ("seconds", "n_galaxies", "device")}
    (out / "landscape.json").write_text(json.dumps(meta, indent=2))
    return paths


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m analysis.landscape RUN_DIR [--out DIR] [--grid 21]``."""
    ap = argparse.ArgumentParser(
        prog="python -m analysis.landscape", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("run_dir", type=Path, help="a run directory written by study.train")
    ap.add_argument(
        "--out", type=Path, default=None, help="output folder (default RUN_DIR/landscape)"
    )
    ap.add_argument("--grid", type=int, default=21, help="2D grid size per axis (Li et al.: 51)")
    ap.add_argument("--points", type=int, default=51, help="1D slice points on [-1, 1]")
    ap.add_argument("--n-galaxies", type=int, default=256, help="fixed test galaxies evaluated")
    ap.add_argument(
        "--seed", type=int, default=0, help="seed of the directions and the augmented view"
    )
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--no-2d", action="store_true", help="only the 1D slice")
    ap.add_argument("--force", action="store_true", help="overwrite an existing output folder")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        out = args.out or args.run_dir / "landscape"
        if not args.force:
            refuse_nonempty_dir(out, "pass --force or another --out")
        if args.grid < 3 or args.points < 3:
            raise UserError("--grid/--points: need at least 3 points per axis")
        res = run_landscape(
            args.run_dir,
            points=args.points,
            grid=args.grid,
            n_galaxies=args.n_galaxies,
            seed=args.seed,
            device=args.device,
            two_d=not args.no_2d,
        )
        for p in write_landscape(res, out, title=args.run_dir.name):
            print(p)
        print(res["summary"].to_string(index=False))
        print(f"{res['seconds']:.1f} s on {res['device']}, {res['n_galaxies']} galaxies")
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
