"""Time the trainer's own training step, per group, in one process: ``python -m benchmarks.step``.

Every candidate is a zero-argument callable timed by ``benchmarks.timing.interleaved``
(warm-up excluded, repeats interleaved across candidates, median and IQR):

- one ``study.train.train_step`` per group (the trainer's step: same setup via
  ``setup_training``, same augmentation, losses, autocast, channels_last, compile), on one fixed
  synthetic batch on the device; for a group with an invariance term also ``joint_step``, the
  same step with both views in one forward pass of 2B instead of two passes of B;
- with ``--feeds``, the first group fed from a resident split (``resident_batches``: index
  gather + float16 -> float32 on the device) and from host memory (``streamed_batches``);
- the augmentation alone (D4 + background resampling of the batch, ``study.augment.augment``,
  given the precomputed background stats as in the step), and the background stats themselves
  (``augment.background_stats``: computed once per run for each training image, not per step);
- the flux term, forward + backward given ``p`` requiring grad, both ways on the same batch:
  ``losses.flux_loss`` (precomputed table) and ``losses.flux_loss_reference`` (the paper's
  in-graph trapezoid integrals over an SDSS-like spectrum grid).

On the CPU the headline figures use process CPU time (the development machine is shared) and
one torch thread unless ``--threads`` says otherwise; wall times are in the JSON too. On CUDA
they use wall time with the device synchronised.

    python -m benchmarks.step --quick --json cpu.json      # demo preset, CPU, < 2 minutes
    python -m benchmarks.step --preset paper --device cuda --feeds --json gpu.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.timing import device_info, interleaved, ratio_summary, summary
from study.augment import augment, background_stats
from study.config import GROUPS, PRESETS, Config, make_config
from study.data.dataset import SplitData
from study.data.layout import bin_edges
from study.data.stream import Batch, resident_batches, streamed_batches
from study.errors import UserError
from study.losses import flux_loss, flux_loss_reference, total_loss, weights_of
from study.machine import pick_device
from study.train import (
    TERMS,
    augmented_views,
    batch_terms,
    setup_training,
    torch_settings,
    train_step,
)

# SDSS spectrograph: 3800-9200 A on a log-lambda grid of 1e-4 dex (3,840 pixels), the grid
# the paper's in-graph integrals ran on.
SDSS_WAVE = (3800.0, 9200.0, 1e-4)
FEED_POOL = 16  # batches in the split behind the resident / streamed feeds


def synthetic_batch(batch_size: int, n_bins: int, device: torch.device, seed: int = 0) -> Batch:
    """A fixed batch shaped like the data: sky noise plus a galaxy, E(B-V), zs, a flux table.

    The values only matter where cost depends on them (the sigma clipping sorts pixels), so
    images are 0.05 nanomaggy sky noise plus an exponential-profile galaxy of random size.
    """
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    r = torch.sqrt((xx - 31.5) ** 2 + (yy - 31.5) ** 2)  # (64, 64), pixels
    scale = 2.0 + 4.0 * torch.rand(batch_size, 1, 1, 1, generator=g)  # scale length, pixels
    amp = 0.5 + 5.0 * torch.rand(batch_size, 5, 1, 1, generator=g)  # nanomaggies, per band
    images = amp * torch.exp(-r / scale) + 0.05 * torch.randn(batch_size, 5, 64, 64, generator=g)
    table = 1.0 + 0.2 * torch.randn(batch_size, 5, n_bins, generator=g)  # (B, 5, C), ~1
    images = images.to(device)
    return Batch(
        images=images,
        ebv=(0.1 * torch.rand(batch_size, generator=g)).to(device),
        zs=(0.4 * torch.rand(batch_size, generator=g)).to(device),
        flux_table=table.to(device),
        background=background_stats(images),  # as the trainer precomputes them per split
    )


def _config(preset: str, group: str, device: torch.device, args: argparse.Namespace) -> Config:
    over: dict[str, Any] = {"run.device": device.type, "run.compile": args.compile}
    if args.compile_mode:
        over["run.compile_mode"] = args.compile_mode
    if args.batch_size:
        over["optim.batch_size"] = args.batch_size
    return make_config(preset, group, overrides=over)


def joint_step(
    step_model: Callable[..., torch.Tensor],
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    batch: Batch,
    edges: torch.Tensor,
    gen: torch.Generator,
    cfg: Config,
) -> torch.Tensor:
    """``study.train.train_step`` with both views in one forward pass of 2B (``g_inv > 0``).

    As many self-supervised codes do: BatchNorm then pools the two views' statistics and
    updates its running statistics once per step. The trainer keeps two passes of B (each
    view normalised with its own batch statistics, as any training batch is; also faster on
    the CPU, BENCHMARKS.md); this variant stays so that the GPU can be measured too. Same
    augmentation draws, same loss terms and total (``study.losses``) as the trainer's step;
    ``batch`` must already be float32 on the device (as ``synthetic_batch`` is).
    """
    x = batch.images
    if x.is_cuda and cfg.run.channels_last:  # the trainer's layout (study.train._on_device)
        x = x.contiguous(memory_format=torch.channels_last)
    first, view = augmented_views(x, batch.background, gen, cfg)
    assert view is not None, "joint_step needs loss.g_inv > 0 (a second view)"
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=x.is_cuda and cfg.run.amp):
        both = step_model(torch.cat([first, view]), torch.cat([batch.ebv, batch.ebv]))
    logits, logits_view = both.chunk(2)  # (B, C) each
    terms = batch_terms(logits, logits_view, batch, edges, model, cfg)
    total = total_loss(terms, weights_of(cfg.loss))
    opt.zero_grad(set_to_none=True)
    total.backward()
    opt.step()
    return torch.stack([terms[k].detach().float() for k in TERMS[:-1]] + [total.detach()])


def _edges(n_bins: int, device: torch.device) -> torch.Tensor:
    """(n_bins + 1,) float32 redshift edges on the device, as the trainer makes a file's."""
    return torch.as_tensor(bin_edges(n_bins), dtype=torch.float32, device=device)


def step_candidates(
    cfgs: dict[str, Config], batch: Batch, device: torch.device, joint: bool
) -> tuple[dict[str, Callable[[], object]], dict[str, Any]]:
    """One train_step closure per group (plus ``<group>_joint`` where P_inv is on)."""
    edges = _edges(batch.flux_table.shape[-1], device)
    fns: dict[str, Callable[[], object]] = {}
    state: dict[str, Any] = {}
    for group, cfg in cfgs.items():
        variants = [(group, train_step)]
        if joint and cfg.loss.g_inv > 0:
            variants.append((f"{group}_joint", joint_step))
        for name, step in variants:
            model, step_model, opt = setup_training(cfg, device)
            gen = torch.Generator(device=device).manual_seed(0)

            def fn(sm=step_model, m=model, o=opt, g=gen, c=cfg, f=step, b=batch) -> object:
                return f(sm, m, o, b, edges, g, c)

            fns[name] = fn
            state[name] = (model, opt)
    return fns, state


def feed_candidates(
    cfg: Config, batch: Batch, device: torch.device
) -> dict[str, Callable[[], object]]:
    """The first group's step fed from a resident and from a streamed split (float16 images)."""
    b = batch.images.shape[0]
    host = SplitData(
        images=batch.images.cpu().repeat(FEED_POOL, 1, 1, 1).to(torch.float16),
        ebv=batch.ebv.cpu().repeat(FEED_POOL),
        zs=batch.zs.cpu().repeat(FEED_POOL),
        flux_table=batch.flux_table.cpu().repeat(FEED_POOL, 1, 1),
        ids=np.arange(FEED_POOL * b),
        index=np.arange(FEED_POOL * b),
    )
    bg_host = batch.background.cpu().repeat(FEED_POOL, 1, 1)
    dev = SplitData(
        images=host.images.to(device),
        ebv=host.ebv.to(device),
        zs=host.zs.to(device),
        flux_table=host.flux_table.to(device),
        ids=host.ids,
        index=host.index,
    )
    bg_dev = bg_host.to(device)
    order = torch.Generator().manual_seed(1)
    edges = _edges(batch.flux_table.shape[-1], device)

    def endless(make: Callable[[list[torch.Tensor]], Any]) -> Any:
        while True:  # a new epoch of FEED_POOL batches, as the trainer draws them
            yield from make(list(torch.randperm(FEED_POOL * b, generator=order).split(b)))

    feeds = {
        "resident": endless(lambda idx: resident_batches(dev, idx, background=bg_dev)),
        "streamed": endless(lambda idx: streamed_batches(host, idx, device, background=bg_host)),
    }
    fns: dict[str, Callable[[], object]] = {}
    for name, feed in feeds.items():
        model, step_model, opt = setup_training(cfg, device)
        gen = torch.Generator(device=device).manual_seed(0)

        def fn(f=feed, sm=step_model, m=model, o=opt, g=gen) -> object:
            return train_step(sm, m, o, next(f), edges, g, cfg)

        fns[f"{cfg.group}@{name}"] = fn
    return fns


def sdss_spectra(zs: torch.Tensor, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(L,) SDSS-like log-lambda grid in A and (B, L) positive galaxy-like spectra on it.

    A power law with a 4000 A break and an H-alpha line at each galaxy's redshift: enough
    structure for the integrals to be the real work; the values do not change the cost.
    """
    lo, hi, dex = SDSS_WAVE
    wave = 10 ** np.arange(np.log10(lo), np.log10(hi), dex)  # (L,)
    rng = np.random.default_rng(seed)
    z = zs.double().cpu().numpy()[:, None]  # (B, 1)
    rest = wave[None, :] / (1 + z)  # (B, L) rest-frame wavelength
    slope = rng.uniform(-2.5, -0.5, size=(len(z), 1))
    cont = (rest / 5000.0) ** slope * np.where(rest > 4000.0, 1.0, 0.6)
    line = 3.0 * np.exp(-0.5 * ((rest - 6563.0) / 3.0) ** 2)
    return wave, (cont + line) * 1e-17  # erg/s/cm^2/A


def sdss_filters() -> tuple[list[tuple[np.ndarray, np.ndarray]], str]:
    """The SDSS 2010 curves (speclite), or Gaussian stand-ins where speclite is not installed.

    The stand-ins (the GPU image has no speclite) have the SDSS effective wavelengths and 100
    points each, like the real curves, so the in-graph integrals cost the same.
    """
    try:
        from study.data.photometry import filter_curves  # speclite

        return filter_curves(), "speclite sdss2010-ugriz"
    except ImportError:
        curves = []
        for centre, width in ((3551, 300), (4686, 500), (6166, 500), (7480, 550), (8932, 600)):
            w = np.linspace(centre - 3 * width, centre + 3 * width, 100)
            curves.append((w, np.exp(-0.5 * ((w - centre) / width) ** 2)))
        return curves, "gaussian stand-ins (speclite not installed)"


def flux_candidates(
    batch: Batch, device: torch.device, size: int = 0
) -> tuple[dict[str, Callable[[], object]], dict[str, Any]]:
    """P_flux forward + backward given p (requiring grad): table vs in-graph integrals.

    ``size`` > 0 times both on the first ``size`` galaxies of the batch only (the in-graph
    version takes seconds per galaxy-batch on a CPU; both costs grow linearly with the batch, the
    table's more slowly, so a smaller batch understates the ratio).
    """
    if size:
        batch = Batch(*(None if t is None else t[:size] for t in batch))
    b, n_bins = batch.flux_table.shape[0], batch.flux_table.shape[-1]
    edges = _edges(n_bins, device)
    g = torch.Generator().manual_seed(2)
    p = torch.softmax(torch.randn(b, n_bins, generator=g), dim=1).to(device).requires_grad_()
    wave, spectra = sdss_spectra(batch.zs)
    curves, filters_name = sdss_filters()
    filters = [
        (torch.as_tensor(w, device=device), torch.as_tensor(r, device=device)) for w, r in curves
    ]
    wave_t = torch.as_tensor(wave, dtype=torch.float32, device=device)
    spectra_t = torch.as_tensor(spectra * 1e17, dtype=torch.float32, device=device)

    def fast() -> object:
        p.grad = None
        flux_loss(p, batch.flux_table).backward()
        return None

    def reference() -> object:
        p.grad = None
        flux_loss_reference(p, batch.zs, wave_t, spectra_t, edges, filters).backward()
        return None

    meta = {
        "batch_size": b,
        "n_bins": n_bins,
        "n_wave": len(wave),
        "grid": list(SDSS_WAVE),
        "filters": filters_name,
    }
    return {"flux_fast": fast, "flux_reference": reference}, meta


def peak_memory_mb(
    fns: dict[str, Callable[[], object]], state: dict[str, Any], device: torch.device
) -> dict[str, float] | None:
    """Per group on CUDA: peak memory of one step plus the group's weights, grads, Adam state."""
    if device.type != "cuda":
        return None
    out = {}
    for name, fn in fns.items():
        if name not in state:
            continue
        model, opt = state[name]
        tensors = list(model.parameters()) + [p.grad for p in model.parameters()]
        tensors += [t for s in opt.state.values() for t in s.values() if torch.is_tensor(t)]
        own = sum(t.numel() * t.element_size() for t in tensors if t is not None)
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        step = torch.cuda.max_memory_allocated(device) - before
        out[name] = round((own + step) / 2**20, 1)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = pick_device(args.device, flag="--device")
    groups = [g.strip() for g in args.groups.split(",") if g.strip()]
    for g in groups:
        if g not in GROUPS:
            raise UserError(f"--groups: unknown group {g!r}; choose from {', '.join(GROUPS)}")
    cfgs = {g: _config(args.preset, g, device, args) for g in groups}
    first = cfgs[groups[0]]
    with torch_settings(first, device):
        if device.type == "cpu":
            torch.set_num_threads(args.threads or 1)
        batch = synthetic_batch(first.optim.batch_size, first.model.n_bins, device)
        fns, state = step_candidates(cfgs, batch, device, joint=not args.no_joint)
        if args.feeds:
            fns |= feed_candidates(first, batch, device)
        x = batch.images
        if device.type == "cuda" and first.run.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        aug_gen = torch.Generator(device=device).manual_seed(3)
        stats = (batch.background[..., 0], batch.background[..., 1])
        fns["augment"] = lambda: augment(x, aug_gen, stats)  # per view, as in the step
        fns["background_stats"] = lambda: background_stats(x)  # once per run and image
        flux_fns, flux_meta = flux_candidates(batch, device, args.flux_batch)
        times = interleaved(
            fns, calls=args.steps, repeats=args.repeats, warmup=args.warmup, device=device
        )
        times |= interleaved(flux_fns, calls=1, repeats=args.flux_repeats, warmup=1, device=device)
        memory = peak_memory_mb(fns, state, device)
        info = device_info(device)
    return report(args, cfgs, times, memory, info, flux_meta, device)


def report(
    args: argparse.Namespace,
    cfgs: dict[str, Config],
    times: dict[str, dict[str, list[float]]],
    memory: dict[str, float] | None,
    info: dict[str, Any],
    flux_meta: dict[str, Any],
    device: torch.device,
) -> dict[str, Any]:
    """The JSON: raw timings, per-candidate summaries, and the headline ratios."""
    clock = "wall" if device.type == "cuda" else "cpu"
    first = next(iter(cfgs.values()))
    b = first.optim.batch_size
    t = {name: v[clock] for name, v in times.items()}

    def ratio(num: str, den: str) -> dict[str, float] | None:
        return ratio_summary(t[num], t[den]) if num in t and den in t else None

    ratios = {
        "aug_over_baseline": ratio("baseline_aug", "baseline"),
        "constrained_over_baseline": ratio("constrained", "baseline"),
        "constrained_joint_over_baseline": ratio("constrained_joint", "baseline"),
        "constrained_joint_over_two_pass": ratio("constrained_joint", "constrained"),
        "flux_reference_over_fast": ratio("flux_reference", "flux_fast"),
        "aug_fraction_of_step": ratio("augment", "baseline_aug"),
        "background_stats_over_baseline_step": ratio("background_stats", "baseline"),
        "resident_over_synthetic": ratio(f"{first.group}@resident", first.group),
        "streamed_over_resident": ratio(f"{first.group}@streamed", f"{first.group}@resident"),
    }
    ratios = {k: v for k, v in ratios.items() if v is not None}
    not_steps = ("augment", "background_stats")
    steps = {n: summary(v) for n, v in t.items() if not n.startswith("flux") and n not in not_steps}
    out: dict[str, Any] = {
        "benchmark": "benchmarks.step",
        "command": "python -m benchmarks.step " + " ".join(args.argv),
        "device": info,
        "clock": clock,
        "preset": args.preset,
        "arch": first.model.arch,
        "batch_size": b,
        "compile": first.run.compile,
        "compile_mode": first.run.compile_mode if first.run.compile else None,
        "amp_bf16": device.type == "cuda" and first.run.amp,
        "channels_last": device.type == "cuda" and first.run.channels_last,
        "steps_per_repeat": args.steps,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "images_per_s": {n: b / s["median_s"] for n, s in steps.items()},
        **{k: v["median"] for k, v in ratios.items()},
        "peak_memory_mb": memory,
        "spread": {k: {"iqr": v["iqr"], "n": v["n"]} for k, v in ratios.items()},
        "seconds": {n: summary(v) for n, v in t.items()},
        "flux": flux_meta,
        "raw": times,
    }
    if device.type == "cuda" and memory and "constrained" in memory:
        out["paper_scale_resident"] = resident_fit(info, memory["constrained"], first)
    return out


def resident_fit(info: dict[str, Any], constrained_mb: float, cfg: Config) -> dict[str, Any]:
    """Does the paper's whole set (float16 images + float32 flux table) fit beside a trial?"""
    n = 607_712
    data_gb = n * (5 * 64 * 64 * 2 + 5 * cfg.model.n_bins * 4 + 3 * 4) / 1e9
    total_gb = float(info.get("device_memory_gb", math.nan)) * 2**30 / 1e9
    need_gb = data_gb + constrained_mb * 2**20 / 1e9
    return {
        "data_gb": round(data_gb, 1),
        "trial_gb": round(constrained_mb * 2**20 / 1e9, 1),
        "device_gb": round(total_gb, 1),
        "fits": need_gb < 0.95 * total_gb,
    }


def print_table(res: dict[str, Any]) -> None:
    clock = res["clock"]
    print(
        f"{res['device']['device_name']} ({clock} time), preset {res['preset']} "
        f"({res['arch']}), batch {res['batch_size']}, n={res['repeats']} repeats"
    )
    for name, s in res["seconds"].items():
        ips = res["images_per_s"].get(name)
        extra = f"  {ips:8.1f} img/s" if ips else ""
        print(f"  {name:28s} {1e3 * s['median_s']:9.2f} ms  IQR {1e3 * s['iqr_s']:7.2f}{extra}")
    for k, v in res["spread"].items():
        print(f"  {k:36s} {res[k]:8.3f}  IQR {v['iqr']:.3f}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.step", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--preset", choices=PRESETS, default="demo")
    parser.add_argument("--groups", default="baseline,baseline_aug,constrained")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--steps", type=int, default=2, help="steps timed together per repeat")
    parser.add_argument("--repeats", type=int, default=9, help="repeats per candidate (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per candidate")
    parser.add_argument("--flux-repeats", type=int, default=5)
    parser.add_argument(
        "--flux-batch", type=int, default=0, help="galaxies for the flux timing (default: batch)"
    )
    parser.add_argument("--batch-size", type=int, default=0, help="override the preset's batch")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default 1)")
    parser.add_argument("--compile", action="store_true", help="torch.compile (run.compile)")
    parser.add_argument("--compile-mode", default="", help="run.compile_mode")
    parser.add_argument("--feeds", action="store_true", help="also resident and streamed feeds")
    parser.add_argument("--no-joint", action="store_true", help="skip the joint 2B variant")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="demo preset on the CPU with the feeds, in under 2 minutes",
    )
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    args.argv = argv
    if args.quick:
        args.preset, args.device, args.feeds = "demo", "cpu", True
        args.steps, args.repeats, args.warmup, args.flux_repeats = 1, 9, 1, 3
        args.flux_batch = args.flux_batch or 8
    try:
        res = run(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_table(res)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
