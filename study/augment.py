"""Augmentations on the training device, batched: random D4 and background resampling (SPEC 2).

Background resampling has two modes (``augment.background`` in the config): ``threshold`` (the
paper's: pixels below the clipped mean + 1 std are redrawn, every source kept, neighbours too)
and ``segmentation`` (every pixel outside the central source's segment, ``source_mask`` from
``study.data.masks``, is redrawn from the same clipped mean and std: neighbours are removed).

All functions take images ``x`` (B, 5, H, W) in nanomaggies per pixel and a ``torch.Generator``
on ``x.device`` (the trial's generator, so a seed reproduces the draws). Nothing loops over
images in Python.

D4 element ``(k, flip)``: rotate by k * 90 degrees (``torch.rot90(x, k, dims=(-2, -1))``),
then, if ``flip``, mirror left-right (``torch.flip(x, dims=(-1,))``). Elements are applied as
one gather with a per-sample pixel permutation, so they are exact (no interpolation).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch


def d4_permutations(size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(8, size * size) flat pixel indices: row ``k + 4 * flip`` is the element (k, flip).

    ``out.flatten()[j] = x.flatten()[perm[j]]``, found by applying the element to the index
    image itself.
    """
    idx = torch.arange(size * size, device=device).reshape(size, size)
    rows = []
    for flip in (False, True):
        for k in range(4):
            r = torch.rot90(idx, k, dims=(0, 1))
            rows.append((r.flip(-1) if flip else r).reshape(-1))
    return torch.stack(rows)


def d4(x: torch.Tensor, k: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Apply the D4 element (k quarter turns, then optional left-right flip) to each sample.

    Args:
        x: (B, C, H, W) with H == W.
        k: (B,) integers (taken mod 4).
        flip: (B,) booleans.

    Returns:
        (B, C, H, W), a pixel permutation of each image.
    """
    b, c, h, w = x.shape
    if h != w:
        raise ValueError(f"d4: images must be square, got {h}x{w}")
    perms = d4_permutations(h, x.device)  # (8, H*W)
    element = (k.to(x.device).long() % 4) + 4 * flip.to(x.device).long()  # (B,)
    index = perms[element][:, None, :].expand(b, c, h * w)  # (B, C, H*W)
    out = x.reshape(b, c, h * w).gather(2, index).reshape(b, c, h, w)
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        out = out.contiguous(memory_format=torch.channels_last)  # keep the conv-friendly layout
    return out


def random_d4(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Apply one uniformly drawn D4 element per sample."""
    element = torch.randint(0, 8, (x.shape[0],), generator=generator, device=x.device)
    return d4(x, element % 4, element >= 4)


def random_d4_pair(
    x: torch.Tensor, keep: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``random_d4`` of images x (B, C, H, W) and masks keep (B, H, W), the same element each.

    The same draw as ``random_d4(x, generator)``, so x's result is the same bits."""
    element = torch.randint(0, 8, (x.shape[0],), generator=generator, device=x.device)
    k, flip = element % 4, element >= 4
    return d4(x, k, flip), d4(keep[:, None], k, flip)[:, 0]


def unpack_bits(packed: torch.Tensor) -> torch.Tensor:
    """(..., W / 8) uint8 packed rows (``np.packbits(axis=-1)``, big bit order) -> (..., W) bool.

    On the tensor's device: the trainer keeps ``source_mask`` packed there (512 bytes per
    galaxy) and unpacks each batch's rows."""
    shifts = torch.arange(7, -1, -1, device=packed.device, dtype=torch.uint8)  # bit 7 first
    bits = (packed[..., None] >> shifts) & 1  # (..., W / 8, 8)
    return bits.flatten(-2).bool()


def sigma_clipped_stats(
    x: torch.Tensor, clip: float = 3.0, iters: int = 3
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sigma-clipped mean and std over the last two dims, the way astropy computes them.

    As ``astropy.stats.sigma_clipped_stats(data, sigma=clip, maxiters=iters)`` with its
    defaults (centre: median, spread: population std): each iteration keeps the pixels with
    ``median - clip * std <= v <= median + clip * std`` among the pixels kept so far; the
    result is the mean and std (ddof 0) of the final kept set. (astropy stops early once
    nothing changes; later iterations would change nothing either.)

    The kept set is always an interval of values, i.e. a run ``[start, stop)`` of the sorted
    pixels, so one sort and float64 prefix sums give each iteration's exact median, mean and
    std in O(1) per image and band.

    Args:
        x: (..., H, W).

    Returns:
        mean, std: each of shape (...), float64.
    """
    srt_raw = _sorted_pixels(x)  # (..., N)
    csum, csq = _prefix_sums(srt_raw)  # (..., N + 1); csum[i] = sum of srt[:i]
    srt = srt_raw.double()
    start = torch.zeros_like(srt[..., :1], dtype=torch.long)  # (..., 1)
    stop = torch.full_like(start, srt.shape[-1])

    def run_stats(start: torch.Tensor, stop: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n = (stop - start).clamp(min=1)
        total = csum.gather(-1, stop) - csum.gather(-1, start)
        total_sq = csq.gather(-1, stop) - csq.gather(-1, start)
        mean = total / n
        var = (total_sq / n - mean * mean).clamp(min=0.0)
        return n, mean, var.sqrt()

    for _ in range(iters):
        n, _, std = run_stats(start, stop)
        median = 0.5 * (srt.gather(-1, start + (n - 1) // 2) + srt.gather(-1, start + n // 2))
        lo, hi = median - clip * std, median + clip * std
        # astropy clips cumulatively: the new run lies inside the old one.
        start = torch.maximum(start, torch.searchsorted(srt, lo, side="left"))
        stop = torch.minimum(stop, torch.searchsorted(srt, hi, side="right"))
        stop = torch.maximum(stop, start + 1)  # never empty (only possible when std is 0)
    _, mean, std = run_stats(start, stop)
    return mean.squeeze(-1), std.squeeze(-1)


def background_stats(
    images: torch.Tensor, device: torch.device | str | None = None, chunk: int | None = None
) -> torch.Tensor:
    """``sigma_clipped_stats`` of every image and band of a split, computed once: (n, C, 2).

    Like the flux table, these depend only on the stored pixels, never on the weights or the
    draws, and every D4 image of a cutout has the same ones; so the trainer computes them once
    per run and each augmentation gathers its batch's rows instead of sorting every band of
    every image at every step (most of the augmentation's cost). Identical values.

    Args:
        images: (n, C, H, W), any float dtype, on any device.
        device: where to compute (default: the images' device); the result goes back there.
        chunk: images per computation (bounds the memory of the sort); default 64 on the CPU,
            4096 elsewhere. On the CPU small chunks keep the float64 prefix sums in cache: the
            demo's 3,040-image training split took 1.13 CPU s with 64 against 4.72 with 4096
            (same values, one thread; BENCHMARKS.md "Background statistics per trial").

    Returns:
        (n, C, 2) float64: [..., 0] the clipped mean, [..., 1] the clipped std.
    """
    out = torch.empty((*images.shape[:2], 2), dtype=torch.float64, device=images.device)
    work = images.device if device is None else torch.device(device)
    if chunk is None:
        chunk = 64 if work.type == "cpu" else 4096
    for s in range(0, images.shape[0], chunk):
        x = images[s : s + chunk].to(work, non_blocking=True).float()
        mean, std = sigma_clipped_stats(x)
        out[s : s + chunk] = torch.stack([mean, std], dim=-1).to(images.device)
    return out


def _sorted_pixels(x: torch.Tensor) -> torch.Tensor:
    """(..., H, W) -> (..., H * W) pixel values sorted ascending (float32 or wider).

    On the CPU numpy's vectorised sort is 10-50x faster than ``torch.sort`` (which also builds
    an index we do not need): it was most of the augmentation's cost there. Sorting in float32
    and widening afterwards gives the same values as sorting in float64 (exact, monotone cast).
    """
    flat = x.detach().flatten(-2).contiguous()  # (..., H * W); NHWC input would stay strided
    if flat.dtype in (torch.float16, torch.bfloat16):
        flat = flat.float()
    if flat.device.type == "cpu":
        return torch.from_numpy(np.sort(flat.numpy(), axis=-1))
    return flat.sort(dim=-1).values


def _prefix_sums(srt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 prefix sums of v and v^2 along the last dim, with a leading 0: (..., N + 1).

    On the CPU numpy accumulates straight from float32 into preallocated float64 buffers (no
    widened copy, no concatenation: each fresh 10 MB buffer costs page faults); the values are
    the same sequential float64 sums either way.
    """
    if srt.device.type == "cpu":
        a = srt.numpy()
        shape = (*a.shape[:-1], a.shape[-1] + 1)
        csum, csq = np.zeros(shape), np.zeros(shape)
        np.cumsum(a, axis=-1, dtype=np.float64, out=csum[..., 1:])
        np.cumsum(np.square(a, dtype=np.float64), axis=-1, out=csq[..., 1:])
        return torch.from_numpy(csum), torch.from_numpy(csq)
    s = srt.double()
    zero = torch.zeros_like(s[..., :1])
    return torch.cat([zero, s.cumsum(-1)], -1), torch.cat([zero, (s * s).cumsum(-1)], -1)


def resample_background(
    x: torch.Tensor,
    generator: torch.Generator,
    n_sigma: float = 1.0,
    clip: float = 3.0,
    iters: int = 3,
    stats: tuple[torch.Tensor, torch.Tensor] | None = None,
    fill: Literal["normal", "truncated"] = "normal",
    keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """Replace background pixels with fresh noise, per image and band (SPEC 2).

    With mu, s the sigma-clipped mean and std of a band's pixels (``sigma_clipped_stats``),
    pixels below ``mu + n_sigma * s`` are background and are redrawn; the others (the sources)
    are kept exactly. With ``keep`` (the ``segmentation`` mode) the background is instead every
    pixel outside the central source's segment, in every band, neighbours included: the kept
    pixels are exactly those of ``keep``.

    ``fill`` says what the threshold rule redraws from. ``"normal"`` (SPEC 2, the paper's
    operator): N(mu, s^2). A pure-sky pixel is background only when it lies below the
    threshold, so with n_sigma = 1 its old value averaged mu - 0.288 s (the truncated normal's
    mean) and its new one averages mu: the resampled image holds about 0.24 s more sky per pixel
    than the one it came from, in every band, a flux offset between training (augmented) and
    evaluation (never augmented) images. ``"truncated"``: N(mu, s^2) truncated to below the
    threshold, the distribution a sky pixel that was called background has, so sky statistics
    (and the fluxes a network reads) are unchanged and only the noise realisation is new. Drawn
    by inverse CDF (``torch.special.ndtri`` of a uniform on (0, Phi(n_sigma))), on the device,
    one buffer. The segmentation mode redraws every sky pixel whatever its value, so there
    N(mu, s^2) already keeps the sky's distribution: it takes ``"normal"`` only.

    Args:
        x: (B, C, H, W) images.
        generator: on x.device.
        n_sigma: background threshold in units of s.
        clip: sigma-clipping threshold.
        iters: sigma-clipping iterations.
        stats: ``sigma_clipped_stats(x, clip, iters)`` if already computed. They depend only on
            the multiset of a band's pixels, so every D4 image of x has the same ones: several
            views of one batch can share one computation (the sort is most of the cost).
        fill: ``"normal"`` or ``"truncated"``, above.
        keep: (B, H, W) bool, True on the central source's pixels (``source_mask``, after the
            same D4 element as x); None: the threshold rule.

    Returns:
        (B, C, H, W), same dtype as x.
    """
    mean, std = stats if stats is not None else sigma_clipped_stats(x, clip=clip, iters=iters)
    work = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    mean, std = mean.to(work)[..., None, None], std.to(work)[..., None, None]  # (B, C, 1, 1)
    if fill == "normal":
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=work)
    elif fill == "truncated" and keep is None:
        # u on (0, Phi(n_sigma)]: 1 - U[0, 1) never reaches 0, so ndtri stays finite
        top = float(torch.special.ndtr(torch.tensor(n_sigma, dtype=torch.float64)))
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=work)
        noise = torch.special.ndtri(u.neg_().add_(1.0).mul_(top))
    else:
        raise ValueError(
            f"fill must be 'normal' or (threshold rule only) 'truncated', not {fill!r}"
        )
    background = x < mean + n_sigma * std if keep is None else ~keep[:, None]
    fill_values = noise.mul_(std).add_(mean)  # in place: mean + std * noise, one buffer
    return torch.where(background, fill_values.to(x.dtype), x)


def augment(
    x: torch.Tensor,
    generator: torch.Generator,
    stats: tuple[torch.Tensor, torch.Tensor] | None = None,
    fill: Literal["normal", "truncated"] = "normal",
    keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """The training augmentation: ``resample_background(random_d4(x), fill=fill, keep=...)``.

    ``stats``: ``sigma_clipped_stats(x)``, when several views of the same x are drawn (D4 does
    not change them); the result is identical to computing them each time. ``keep``: (B, H, W)
    bool central-source masks (``augment.background=segmentation``): D4 turns them with x and
    every pixel outside them is redrawn; None: the threshold rule (the paper's, the default).
    """
    if keep is None:
        return resample_background(random_d4(x, generator), generator, stats=stats, fill=fill)
    turned, keep = random_d4_pair(x, keep, generator)
    return resample_background(turned, generator, stats=stats, fill=fill, keep=keep)
