"""Train one network on one dataset and write its run directory; ``python -m study.train``.

One flat loop, airbench style: the training and validation splits live on the device, batches
are index tensors into them (``batch_indices``), augmentation runs batched on the device, and
loss sums stay on the device until the end of the epoch (no host sync per step).

Objective per step (SPEC 2): ``L = CE + g_l2 ||theta||^2 + g_flux P_flux + g_inv P_inv +
g_cde P_cde``, computed once, in ``study.losses`` (``loss_terms`` gives every term, ``total_loss``
weighs them with ``weights_of(cfg.loss)``), the same functions the loss landscape and the
benchmarks call. Only the terms with a nonzero weight enter the sum and carry gradients; P_flux
(when the file has a flux table) and P_cde are cheap functions of ``p`` and are always logged;
P_inv needs a second view of the batch (a second forward pass, see ``train_step``) and is logged
only when ``g_inv > 0`` (NaN otherwise).

The plateau schedule and the history's ``val_loss`` use the **validation cross entropy** (no
augmentation, no penalty terms), the same number for every group, so groups are compared on the
same schedule signal (``optim.schedule=onecycle`` instead steps a one-cycle schedule per
batch). The reported model is the one after the last epoch, or with
``optim.reported=best_val_ce`` the epoch of lowest validation CE (metrics.json names it).

Seeds: ``run.seed`` seeds the weight init (``torch.manual_seed``) and one ``torch.Generator`` on
the device that draws the batch order and every augmentation. On CPU a run is reproducible bit
for bit, also across an interruption: every epoch ends with an atomic checkpoint (model,
optimiser, scheduler, generator and torch RNG states, history), and ``resume=True`` continues
from it.

Run directory (SPEC 8): ``config.yaml``, ``metrics.json``, ``history.parquet``,
``predictions.h5``, ``checkpoint/state.pt``. ``metrics.json`` is written last: its presence marks
a finished run.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from study.augment import augment, background_stats, sigma_clipped_stats, unpack_bits
from study.config import (
    Config,
    load_yaml,
    save_yaml,
)
from study.data.dataset import DatasetInfo, SplitData, batch_indices, load_split, read_info
from study.data.stream import Batch, batches
from study.errors import UserError
from study.files import atomic_write, refuse_nonempty_dir
from study.losses import cross_entropy, loss_terms, settings_of, total_loss, weights_of
from study.machine import device_name, git_commit, pick_device, require_cuda_for_paper
from study.metrics import all_metrics
from study.model import centre_crop, model_from_config
from study.rundir import (
    RunResult,
    load_checkpoint,
    load_reported,
    read_finished_run,
    save_checkpoint,
    write_predictions,
)

TERMS = ("ce", "l2", "flux", "inv", "cde", "total")  # logged train loss terms, per-batch means
CHECKPOINT = "checkpoint/state.pt"
LOG_EVERY = 50  # steps between progress-bar updates (each costs one host sync)


def resolve_device(config: Config) -> torch.device:
    """The training device; refuses preset ``paper`` without CUDA (before any expensive work)."""
    device = pick_device(config.run.device)
    require_cuda_for_paper(config.preset, device.type == "cuda")
    if device.type != "cuda" and config.model.arch.startswith("resnet"):
        warnings.warn(
            f"training {config.model.arch} on a CPU is very slow; --preset demo is the CPU preset",
            stacklevel=2,
        )
    return device


def _data_file(config: Config, data: str | os.PathLike | None) -> Path:
    """The file to train on: ``data``, else ``config.data.path``; it must exist."""
    given = data if data is not None else config.data.path
    if given is None:
        raise UserError(
            "no dataset: data.path is unset and train() builds none; pass --data FILE.h5, or "
            "resolve the default universe first (study.universe.build.resolve_data)"
        )
    path = Path(given)
    if not path.is_file():
        raise UserError(f"{path}: data file not found; fix --data (or data.path)")
    return path


def _check_data(config: Config, info: DatasetInfo) -> None:
    """Refuse a file the config cannot train on, naming the field and the fix."""
    p = info.path
    if info.n_bins != config.model.n_bins:
        raise UserError(
            f"{p}: has {info.n_bins} redshift bins but model.n_bins={config.model.n_bins}; "
            f"set model.n_bins={info.n_bins}"
        )
    if abs(float(info.bin_edges[-1]) - config.model.z_max) > 1e-6:
        raise UserError(
            f"{p}: bins end at z={float(info.bin_edges[-1]):g} but model.z_max="
            f"{config.model.z_max:g}; set model.z_max={float(info.bin_edges[-1]):g}"
        )
    if _segmenting(config) and not info.has_masks:
        raise UserError(
            f"{p}: has no source_mask but augment.background=segmentation; add it with "
            f"`python -m study.data masks {p}` (or set augment.background=threshold)"
        )
    if config.loss.g_flux > 0 and not info.has_flux_table:
        raise UserError(
            f"{p}: has no flux_table but loss.g_flux={config.loss.g_flux:g}; use a file built "
            "with spectra (the synthetic universe, or convert --spectra) or set loss.g_flux=0"
        )
    for split, least in (("train", 2), ("val", 1), ("test", 1)):
        if info.split_counts.get(split, 0) < least:
            raise UserError(
                f"{p}: split {split!r} has {info.split_counts.get(split, 0)} galaxies; "
                f"need at least {least} (rebuild the file with more galaxies)"
            )


def _segmenting(cfg: Config) -> bool:
    """True when the run resamples backgrounds in the segmentation mode (needs source_mask)."""
    augmenting = cfg.loss.augment or cfg.loss.g_inv > 0
    return augmenting and cfg.augment.background == "segmentation"


def check_run_dir(out: Path, resume: bool) -> None:
    if resume:
        if not (out / "config.yaml").is_file():
            raise UserError(f"{out}: no config.yaml, nothing to resume; drop --resume")
    else:
        refuse_nonempty_dir(out, "choose a new --out or add --resume")


# Fields that may change when a run is resumed: the length of training and how it is executed.
_RESUMABLE = {"optim.epochs", "run.device", "run.progress", "run.compile", "run.compile_mode"}
_RESUMABLE |= {"run.threads", "run.amp", "run.channels_last"}


def _check_resume_config(saved: Config, config: Config, out: Path) -> None:
    a, b = _flat(saved), _flat(config)
    if a["optim.schedule"] == "onecycle" and a["optim.epochs"] != b["optim.epochs"]:
        raise UserError(
            f"{out}/config.yaml: optim.epochs={a['optim.epochs']} but the resumed run asks "
            f"{b['optim.epochs']}; a one-cycle schedule is laid out over its epochs: keep them"
        )
    for key in a:
        if key not in _RESUMABLE and a[key] != b[key]:
            raise UserError(
                f"{out}/config.yaml: {key}={a[key]!r} but the resumed run asks {b[key]!r}; "
                "resume with the same config (only epochs and run.* execution fields may change)"
            )


def _flat(cfg: Config) -> dict[str, Any]:
    from study.config import config_to_dict

    d = config_to_dict(cfg)
    flat = {k: d[k] for k in ("preset", "group")}
    for section, fields in d.items():
        if isinstance(fields, dict):
            flat.update({f"{section}.{k}": v for k, v in fields.items()})
    return flat


@contextlib.contextmanager
def torch_settings(config: Config, device: torch.device) -> Iterator[None]:
    """Deterministic kernels on CPU, thread count, TF32 on CUDA; restored afterwards.

    Public so that ``benchmarks.step`` times the step under the trainer's own settings.
    """
    det, warn_only = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    threads, benchmark = torch.get_num_threads(), torch.backends.cudnn.benchmark
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        if device.type == "cpu":
            torch.use_deterministic_algorithms(True, warn_only=True)
        else:
            torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest conv kernels
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        if config.run.threads:
            torch.set_num_threads(config.run.threads)
        yield
    finally:
        torch.use_deterministic_algorithms(det, warn_only=warn_only)
        torch.set_num_threads(threads)
        torch.backends.cudnn.benchmark = benchmark
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


def train(
    config: Config,
    out: str | os.PathLike,
    *,
    data: str | os.PathLike | None = None,
    resume: bool = False,
    on_epoch: Callable[[dict[str, Any], Path], None] | None = None,
) -> RunResult:
    """Train ``config`` and write the run directory ``out`` (SPEC 8).

    Args:
        config: the resolved config (written to ``out/config.yaml``).
        out: the run directory; must be new or empty unless ``resume``.
        data: the photoz-study/1 file to train on (default ``config.data.path``). The trainer
            never builds a dataset: with ``data.path`` unset (the default universe) the caller
            resolves the file first (``study.universe.build.resolve_data``, as the CLIs and the
            Tune trainable do) and passes it here.
        resume: continue from ``out/checkpoint/`` (a finished run is returned as it is).
        on_epoch: called as ``on_epoch(history_row, checkpoint_dir)`` after each epoch's
            checkpoint is written (Ray Tune reports from it). An exception from it stops the
            run, leaving a resumable checkpoint.

    Returns:
        The run's metrics (the content of metrics.json) and history.
    """
    out = Path(out)
    check_run_dir(out, resume)
    if resume:
        _check_resume_config(load_yaml(out / "config.yaml"), config, out)
        if (out / "metrics.json").is_file():
            return read_finished_run(out)
    device = resolve_device(config)
    info = read_info(_data_file(config, data))
    _check_data(config, info)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "config.yaml", lambda p: save_yaml(config, p))
    with torch_settings(config, device):
        return _train(config, out, device, info, resume, on_epoch)


def _train(
    cfg: Config,
    out: Path,
    device: torch.device,
    info: DatasetInfo,
    resume: bool,
    on_epoch: Callable[[dict[str, Any], Path], None] | None,
) -> RunResult:
    cuda = device.type == "cuda"
    model, step_model, opt = setup_training(cfg, device)
    train_data = _load(info, "train", device, cfg, masks=_segmenting(cfg))
    val_data = _load(info, "val", device, cfg)
    # (n, 5, 2) sigma-clipped background stats of every training image, computed once on the
    # device, kept beside the split: each augmentation gathers its rows instead of sorting
    # every band of every image at every step (identical values)
    augmenting = cfg.loss.augment or cfg.loss.g_inv > 0
    background = _background(info, train_data, device, cfg) if augmenting else None
    edges = torch.as_tensor(info.bin_edges, dtype=torch.float32, device=device)  # (C+1,)
    sched = make_scheduler(opt, cfg, steps_per_epoch(len(train_data), cfg))
    gens = _generators(cfg.run.seed, device)
    history: list[dict[str, Any]] = []
    reported: dict[str, Any] | None = None  # {"epoch", "model"} with optim.reported best_val_ce
    ckpt = out / CHECKPOINT
    if resume and ckpt.is_file():
        history = load_checkpoint(ckpt, model, opt, sched, gens, device)
        reported = load_reported(ckpt, device)
    zs_val = _file_zs(info.path, val_data.index)
    per_step = sched if cfg.optim.schedule == "onecycle" else None
    for epoch in range(len(history) + 1, cfg.optim.epochs + 1):
        t0 = time.perf_counter()
        lr = opt.param_groups[0]["lr"]
        terms, n_images = _train_epoch(
            step_model, model, opt, train_data, edges, gens, cfg, epoch, background, per_step
        )
        if cuda:
            torch.cuda.synchronize()
        train_s = time.perf_counter() - t0
        p_val, val_ce = _predict(model, val_data, edges, cfg)
        if cfg.optim.schedule == "plateau":
            sched.step(val_ce)
        val_m = all_metrics(p_val, zs_val, info.bin_edges)
        row = {"epoch": epoch, "lr": lr, **terms}
        row |= {f"val_{k}": v for k, v in val_m.items()}
        row |= {"val_loss": val_ce, "seconds": time.perf_counter() - t0}
        row |= {"train_seconds": train_s, "images_per_s": n_images / train_s}
        history.append(row)
        if cfg.optim.reported == "best_val_ce" and (
            reported is None or val_ce < history[reported["epoch"] - 1]["val_loss"]
        ):
            reported = {"epoch": epoch, "model": _state_copy(model)}
        save_checkpoint(ckpt, model, opt, sched, gens, history, reported)
        if on_epoch is not None:
            on_epoch(row, ckpt.parent)
    del train_data, val_data
    if reported is not None:  # evaluate the reported epoch's weights, not the last ones
        model.load_state_dict(reported["model"])
    epoch = reported["epoch"] if reported is not None else len(history)
    return _finish(cfg, out, model, device, info, history, epoch)


def steps_per_epoch(n_train: int, cfg: Config) -> int:
    """Optimiser steps per epoch: full batches only (``_train_epoch`` drops the remainder)."""
    return max(n_train // min(cfg.optim.batch_size, n_train), 1)


def make_scheduler(opt: torch.optim.Optimizer, cfg: Config, steps: int) -> Any:
    """The learning-rate schedule of ``optim.schedule``: plateau (per epoch, on the validation
    CE) or one-cycle (per step, over ``optim.epochs * steps`` steps)."""
    if cfg.optim.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            opt,
            max_lr=cfg.optim.lr,
            total_steps=cfg.optim.epochs * steps,
            pct_start=cfg.optim.warmup_frac,
        )
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="min", factor=cfg.optim.plateau_factor, patience=cfg.optim.plateau_patience
    )


def _state_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def setup_training(
    cfg: Config, device: torch.device
) -> tuple[torch.nn.Module, Callable[..., torch.Tensor], torch.optim.Optimizer]:
    """The model (seeded init, on ``device``), the callable the step uses, and the optimiser.

    Shared by ``train`` and ``benchmarks.step`` so that the benchmark times the trainer's own
    step. Fused Adam (one kernel for all parameters) on every device; on CUDA channels_last
    weights (``run.channels_last``); ``run.compile`` wraps the model in
    ``torch.compile(mode=run.compile_mode)`` (the uncompiled module is returned too:
    checkpoints, evaluation and the L2 sum use it).
    """
    torch.manual_seed(cfg.run.seed)  # weight init
    model = model_from_config(cfg.model)
    model = model.to(device)
    if device.type == "cuda" and cfg.run.channels_last:
        model = model.to(memory_format=torch.channels_last)
    step_model = torch.compile(model, mode=cfg.run.compile_mode) if cfg.run.compile else model
    # fused: one kernel for every parameter, on the CPU too (3-12% of the demo step there:
    # BENCHMARKS.md "The 8,000-galaxy demo preset")
    opt = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, fused=True)
    return model, step_model, opt


# The splits (and the training split's background stats) this process read last, kept for its
# next run on the same file: a Ray Tune actor trains trial after trial on one file
# (reuse_actors), and reading and gathering the demo's splits took 3.7 of a trial's ~50 CPU-s,
# the background stats 1.1 more (BENCHMARKS.md "make demo"). Keyed by everything that decides
# their bytes, the file's size and mtime too (a file rewritten in place is read again); one
# file at a time (another file, or another device or dtype, drops the rest first: no second
# copy of a 20 GB resident split). The trainer never writes into them: every crop, view and
# cast it makes is a new tensor.
_MEMO: dict[tuple[Any, ...], Any] = {}


def _memo_key(info: DatasetInfo, device: torch.device, cfg: Config) -> tuple[Any, ...]:
    st = info.path.stat()
    where = str(device) if cfg.data.resident else "cpu"
    return (str(info.path.resolve()), st.st_size, st.st_mtime_ns, info.content_hash, where,
            cfg.data.image_dtype)  # fmt: skip


def _remembered(key: tuple[Any, ...], what: tuple[Any, ...], make: Callable[[], Any]) -> Any:
    """``make()``, or what it gave before for the same file ``key`` and ``what``."""
    if any(k[0] != key for k in _MEMO):
        _MEMO.clear()
    if (key, what) not in _MEMO:
        _MEMO[(key, what)] = make()
    return _MEMO[(key, what)]


def _load(
    info: DatasetInfo, split: str, device: torch.device, cfg: Config, masks: bool = False
) -> SplitData:
    """A split on the device (data.resident) or in host memory (streamed); ``_MEMO``.

    The streamed split needs no page-locking: ``streamed_batches`` gathers each batch's rows
    into small pinned staging buffers (pinning the whole 25 GB split would double host memory).
    ``masks``: with its packed ``source_mask`` rows (512 bytes per galaxy) beside the images.
    """
    dtype = getattr(torch, cfg.data.image_dtype)
    where = device if cfg.data.resident else "cpu"
    return _remembered(
        _memo_key(info, device, cfg),
        ("split", split, masks),
        lambda: load_split(info.path, split, where, dtype, masks=masks),
    )


def _background(
    info: DatasetInfo, data: SplitData, device: torch.device, cfg: Config
) -> torch.Tensor:
    """``augment.background_stats`` of the training split ``data``; ``_MEMO``."""
    return _remembered(
        _memo_key(info, device, cfg), ("background",), lambda: background_stats(data.images, device)
    )


def _generators(seed: int, device: torch.device) -> dict[str, torch.Generator]:
    """Two streams from the trial seed: batch order (CPU, as streaming needs CPU indices) and
    augmentation draws (on the device). Seeded apart so that they never share numbers."""
    order_seed, aug_seed = np.random.SeedSequence(seed).generate_state(2, dtype=np.uint64)
    order = torch.Generator().manual_seed(int(order_seed) >> 1)
    aug = torch.Generator(device=device).manual_seed(int(aug_seed) >> 1)
    return {"order": order, "augment": aug}


def _train_epoch(
    step_model: Callable[..., torch.Tensor],
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    data: SplitData,
    edges: torch.Tensor,
    gens: dict[str, torch.Generator],
    cfg: Config,
    epoch: int,
    background: torch.Tensor | None = None,
    sched: Any = None,
) -> tuple[dict[str, float], int]:
    """One pass over the training split; returns the mean of each loss term and #images.

    ``sched``: a per-step learning-rate schedule (one-cycle), stepped after every step.
    """
    n, bs = len(data), min(cfg.optim.batch_size, len(data))
    # the last partial batch is dropped (a different random remainder each epoch): static
    # shapes for torch.compile and never a batch of one for batch norm
    index_batches = batch_indices(n, bs, gens["order"], shuffle=True, drop_last=True)
    device = edges.device
    sums = torch.zeros(len(TERMS), device=device)  # sum over batches of B * term
    seen = 0
    bar = tqdm(
        total=len(index_batches) * bs,
        desc=f"epoch {epoch}/{cfg.optim.epochs}",
        unit="img",
        unit_scale=True,
        leave=False,
        disable=not cfg.run.progress,
    )
    model.train()
    feed = batches(data, index_batches, device, resident=cfg.data.resident, background=background)
    for step, batch in enumerate(feed, 1):
        terms = train_step(step_model, model, opt, batch, edges, gens["augment"], cfg)
        if sched is not None:
            sched.step()
        sums += terms * bs
        seen += bs
        bar.update(bs)
        if cfg.run.progress and (step % LOG_EVERY == 0 or step == len(index_batches)):
            means = (sums / seen).tolist()  # one host sync every LOG_EVERY steps
            bar.set_postfix({k: f"{v:.4g}" for k, v in zip(TERMS, means, strict=True)})
    bar.close()
    means = (sums / max(seen, 1)).tolist()  # the epoch's one host sync
    return dict(zip(TERMS, means, strict=True)), seen


def train_step(
    step_model: Callable[..., torch.Tensor],
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    batch: Batch,
    edges: torch.Tensor,
    gen: torch.Generator,
    cfg: Config,
) -> torch.Tensor:
    """One optimiser step on ``batch``; returns the (len(TERMS),) detached loss terms.

    ``gen`` (on the device) draws the augmentations; ``model`` is the uncompiled module
    (for the L2 sum), ``step_model`` the one to call (compiled or not). With ``g_inv > 0`` the
    second view goes through the network in a second forward pass of B, so each view is
    normalised by BatchNorm with its own batch statistics, exactly as a training batch is (the
    paper's formula read literally; ``benchmarks.step`` also times one joint pass of 2B).
    """
    x, keep = step_inputs(batch, edges.device, cfg)
    first, view = augmented_views(x, batch.background, gen, cfg, keep)
    with _autocast(x.device, cfg):
        logits = step_model(first, batch.ebv)  # (B, C)
        logits_view = step_model(view, batch.ebv) if view is not None else None
    terms = batch_terms(logits, logits_view, batch, edges, model, cfg)
    total = total_loss(terms, weights_of(cfg.loss))
    opt.zero_grad(set_to_none=True)
    total.backward()
    opt.step()
    return torch.stack([terms[k].detach().float() for k in TERMS[:-1]] + [total.detach()])


def step_inputs(
    batch: Batch, device: torch.device, cfg: Config
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """What a step augments: the batch's images as the network sees them, (B, 5, S, S) float32
    nanomaggies on ``device`` with S = ``model.crop`` (only what the network sees is augmented),
    and its (B, S, S) bool central-source pixels (the batch's masks, for
    ``augment.background=segmentation``), or None. Shared with the landscape's fixed view."""
    x = centre_crop(_on_device(batch.images, device, cfg), cfg.model.crop)
    if batch.masks is None:
        return x, None
    return x, centre_crop(unpack_bits(batch.masks.to(device)), cfg.model.crop)


def batch_terms(
    logits: torch.Tensor,
    logits_view: torch.Tensor | None,
    batch: Batch,
    edges: torch.Tensor,
    model: torch.nn.Module,
    cfg: Config,
) -> dict[str, torch.Tensor]:
    """Every SPEC 2 term of a batch's logits (``study.losses.loss_terms``) with the run's loss
    settings; the one call the step and ``benchmarks.step`` share, so they cannot drift."""
    return loss_terms(
        logits,
        batch.zs,
        edges,
        model,
        flux_table=batch.flux_table,
        logits_view=logits_view,
        **settings_of(cfg.loss),
    )


def augmented_views(
    x: torch.Tensor,
    background: torch.Tensor | None,
    gen: torch.Generator,
    cfg: Config,
    keep: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The step's inputs: the batch as the network sees it, and the invariance term's view.

    The first is ``augment(x)`` with ``loss.augment``, else ``x``; the second, with
    ``g_inv > 0``, an independent draw ``Theta(B(x))`` (drawn after the first, from the same
    ``gen``), else None. Every view of a batch uses the same sigma-clipped background stats
    (D4 leaves them unchanged; the sort behind them is most of the augmentation's cost): the
    batch's precomputed ones (``background``, (B, 5, 2), ``augment.background_stats``), else
    computed here once for all views. ``keep`` ((B, S, S) bool, the batch's central-source
    masks): the segmentation mode, every pixel outside them redrawn; None: the threshold rule.
    """
    w = cfg.loss
    if not (w.augment or w.g_inv > 0):
        return x, None
    if background is not None:
        stats = (background[..., 0], background[..., 1])  # (B, 5) each
    else:
        stats = sigma_clipped_stats(x)
    fill = cfg.augment.fill
    first = augment(x, gen, stats, fill=fill, keep=keep) if w.augment else x
    view = augment(x, gen, stats, fill=fill, keep=keep) if w.g_inv > 0 else None
    return first, view


def _on_device(images: torch.Tensor, device: torch.device, cfg: Config) -> torch.Tensor:
    """A batch of images as float32 on the device (float16 storage is cast once per batch)."""
    x = images.to(device, non_blocking=True).float()
    if x.is_cuda and cfg.run.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def _autocast(device: torch.device, cfg: Config) -> contextlib.AbstractContextManager:
    if device.type == "cuda" and cfg.run.amp:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def _predict(
    model: torch.nn.Module, data: SplitData, edges: torch.Tensor, cfg: Config
) -> tuple[np.ndarray, float]:
    """(N, C) float64 probabilities of a split (no augmentation, eval mode) and its mean CE."""
    model.eval()
    device = edges.device
    ps, ce = [], torch.zeros((), device=device)
    for s in range(0, len(data), cfg.optim.eval_batch_size):
        sl = slice(s, s + cfg.optim.eval_batch_size)
        x = _on_device(data.images[sl], device, cfg)
        ebv, zs = data.ebv[sl].to(device), data.zs[sl].to(device)
        with _autocast(device, cfg):
            logits = model(x, ebv).float()
        ce += cross_entropy(logits, zs, edges) * len(x)
        ps.append(torch.softmax(logits, dim=1))
    model.train()
    p = torch.cat(ps).double().cpu().numpy()
    return p, float(ce) / len(data)


def _file_zs(path: Path, index: np.ndarray) -> np.ndarray:
    """float64 spectroscopic redshifts of file rows ``index`` (metrics use full precision)."""
    with h5py.File(path, "r") as f:
        return np.asarray(f["zs"][:], dtype=np.float64)[index]


def _finish(
    cfg: Config,
    out: Path,
    model: torch.nn.Module,
    device: torch.device,
    info: DatasetInfo,
    history: list[dict[str, Any]],
    reported_epoch: int,
) -> RunResult:
    """Evaluate the test split with the model of ``reported_epoch`` (1-based; loaded in
    ``model``); write predictions.h5, history.parquet, then metrics.json."""
    test_data = _load(info, "test", device, cfg)
    edges = torch.as_tensor(info.bin_edges, dtype=torch.float32, device=device)
    p_test, _ = _predict(model, test_data, edges, cfg)
    zs_test = _file_zs(info.path, test_data.index)
    atomic_write(
        out / "predictions.h5", lambda p: write_predictions(p, p_test, zs_test, test_data, info)
    )
    frame = pd.DataFrame(history)
    atomic_write(out / "history.parquet", lambda p: frame.to_parquet(p, index=False))
    last = history[reported_epoch - 1]  # the val block of the reported model
    step_s = float(frame["train_seconds"].sum())  # time inside training steps, all epochs
    n_images = float((frame["images_per_s"] * frame["train_seconds"]).sum())
    metrics = {
        "val": {k[4:]: last[k] for k in last if k.startswith("val_") and k != "val_loss"},
        "test": all_metrics(p_test, zs_test, info.bin_edges),
        "train_seconds": float(frame["seconds"].sum()),
        "epochs": len(history),
        "reported": cfg.optim.reported,  # which epoch's model the test block scores
        "reported_epoch": reported_epoch,
        "device": device_name(device),
        "n_train": info.split_counts["train"],
        "n_val": info.split_counts["val"],
        "n_test": len(test_data),
        "images_per_s": n_images / step_s if step_s > 0 else float("nan"),
        "preset": cfg.preset,
        "group": cfg.group,
        "seed": cfg.run.seed,
        "data": str(info.path),
        "data_hash": info.content_hash,
        "git_commit": git_commit(),
        "torch": torch.__version__,
    }
    atomic_write(out / "metrics.json", lambda p: p.write_text(json.dumps(metrics, indent=2)))
    return RunResult(out, metrics, frame)


if __name__ == "__main__":
    from study.train_cli import main  # the command line, an edge: it resolves the default data

    sys.exit(main())
