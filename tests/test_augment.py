"""D4 and background resampling: exact permutations, group closure, astropy-matching stats."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from astropy.stats import sigma_clipped_stats as astropy_sigma_clipped_stats

from study.augment import (
    augment,
    background_stats,
    d4,
    d4_permutations,
    random_d4,
    resample_background,
    sigma_clipped_stats,
)

ELEMENTS = [(k, f) for f in (False, True) for k in range(4)]


def _apply(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    b = x.shape[0]
    return d4(x, torch.full((b,), k), torch.full((b,), flip))


def test_d4_elements_match_rot90_and_flip():
    x = torch.randn(3, 5, 8, 8)
    for k, flip in ELEMENTS:
        ref = torch.rot90(x, k, dims=(-2, -1))
        ref = ref.flip(-1) if flip else ref
        assert torch.equal(_apply(x, k, flip), ref)


def test_d4_elements_are_exact_permutations_and_distinct():
    x = torch.randn(1, 5, 16, 16)  # generic: no symmetry, so the 8 images differ
    outs = [_apply(x, k, f) for k, f in ELEMENTS]
    for y in outs:
        # same multiset of values per band, bit for bit
        assert torch.equal(y.flatten(2).sort(-1).values, x.flatten(2).sort(-1).values)
    for a, b in itertools.combinations(outs, 2):
        assert not torch.equal(a, b)
    perms = d4_permutations(16)
    for row in perms:
        assert torch.equal(row.sort().values, torch.arange(256))


def test_d4_keeps_channels_last():
    x = torch.randn(2, 5, 8, 8).contiguous(memory_format=torch.channels_last)
    y = _apply(x, 1, True)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(y, torch.rot90(x, 1, dims=(-2, -1)).flip(-1))


def test_d4_group_closes():
    x = torch.randn(1, 2, 6, 6)
    outs = [_apply(x, k, f) for k, f in ELEMENTS]
    for (k1, f1), (k2, f2) in itertools.product(ELEMENTS, ELEMENTS):
        y = _apply(_apply(x, k1, f1), k2, f2)
        assert sum(torch.equal(y, o) for o in outs) == 1


def test_d4_per_sample_elements_and_rng():
    x = torch.randn(64, 5, 8, 8)
    g = torch.Generator().manual_seed(0)
    y = random_d4(x, g)
    seen = set()
    for i in range(64):
        hits = [
            j
            for j, (k, f) in enumerate(ELEMENTS)
            if torch.equal(y[i], _apply(x[i : i + 1], k, f)[0])
        ]
        assert len(hits) == 1
        seen.add(hits[0])
    assert len(seen) == 8  # 64 draws hit every element (probability of a miss ~ 1e-3)
    y2 = random_d4(x, torch.Generator().manual_seed(0))
    assert torch.equal(y, y2)


def _galaxy_images(g: torch.Generator, b: int = 6) -> torch.Tensor:
    """(b, 5, 64, 64): N(0.02, 0.05^2) sky plus a bright blob and a hot pixel."""
    x = 0.02 + 0.05 * torch.randn(b, 5, 64, 64, generator=g, dtype=torch.float64)
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    blob = 20.0 * torch.exp(-((yy - 32) ** 2 + (xx - 30) ** 2) / (2 * 4.0**2))
    x = x + blob.double() * torch.rand(b, 5, 1, 1, generator=g, dtype=torch.float64)
    x[:, :, 5, 7] = 300.0
    return x


def test_sigma_clipped_stats_match_astropy():
    g = torch.Generator().manual_seed(1)
    x = torch.cat([_galaxy_images(g), torch.rand(2, 5, 64, 64, generator=g).double()])
    for iters in (1, 3, 5):
        mean, std = sigma_clipped_stats(x, clip=3.0, iters=iters)
        for i, b in itertools.product(range(x.shape[0]), range(5)):
            a_mean, _, a_std = astropy_sigma_clipped_stats(
                x[i, b].numpy(), sigma=3.0, maxiters=iters
            )
            assert mean[i, b].item() == pytest.approx(a_mean, rel=1e-12, abs=1e-12)
            assert std[i, b].item() == pytest.approx(a_std, rel=1e-12)
    # float32 input: the same up to float32 rounding of the pixels
    mean32, std32 = sigma_clipped_stats(x.float())
    a_mean, _, a_std = astropy_sigma_clipped_stats(x[0, 2].float().numpy(), sigma=3.0, maxiters=3)
    assert mean32[0, 2].item() == pytest.approx(float(a_mean), rel=1e-5)
    assert std32[0, 2].item() == pytest.approx(float(a_std), rel=1e-5)


def test_background_stats_do_not_depend_on_the_chunk():
    """Per image and band, so any chunk gives the same values as one sort of everything."""
    x = _galaxy_images(torch.Generator().manual_seed(5), b=10).float()  # as stored
    mean, std = sigma_clipped_stats(x)
    whole = torch.stack([mean, std], dim=-1)
    for chunk in (None, 1, 3, 64, 4096):
        assert torch.equal(background_stats(x, chunk=chunk), whole)


def test_background_resampling_keeps_sources_and_matches_stats():
    g = torch.Generator().manual_seed(2)
    x = _galaxy_images(g, b=8)
    mean, std = sigma_clipped_stats(x)
    y = resample_background(x, torch.Generator().manual_seed(3))
    source = x >= (mean + std)[..., None, None]
    assert torch.equal(y[source], x[source])
    bg = ~source
    assert bg.float().mean() > 0.7  # most of a cutout is sky
    # The new background pixels are N(mu, s^2) draws, independent of the mask; per image and
    # band about 3,500 of them, so the standardised mean has sd 1/sqrt(n): allow 5 sd.
    z = (y - mean[..., None, None]) / std[..., None, None]
    for i, b in itertools.product(range(8), range(5)):
        zz = z[i, b][bg[i, b]]
        n = zz.numel()
        assert abs(zz.mean().item()) < 5 / np.sqrt(n)
        assert abs(zz.std().item() - 1) < 5 / np.sqrt(2 * n)
    # pooled over all 40 images and bands: tighter
    zz = z[bg]
    assert abs(zz.mean().item()) < 5 / np.sqrt(zz.numel())
    assert abs(zz.std().item() - 1) < 5 / np.sqrt(2 * zz.numel())


def test_truncated_fill_keeps_the_sky_distribution():
    """``fill="truncated"`` redraws background pixels from N(mu, s^2) cut at the threshold.

    On pure sky, scipy's truncated normal gives what a background pixel's old value was
    distributed as (mean mu - 0.288 s at n_sigma = 1): the new values must have its mean and
    std, so the image's mean is unchanged; the paper's ``"normal"`` fill raises it by about
    Phi(1) * 0.288 s = 0.242 s per pixel, the offset the truncated fill removes.
    """
    truncnorm = pytest.importorskip("scipy.stats").truncnorm
    sky = 0.02 + 0.05 * torch.randn(16, 5, 64, 64, generator=torch.Generator().manual_seed(7))
    sky = sky.double()
    mean, std = sigma_clipped_stats(sky)
    mu, s = mean[..., None, None], std[..., None, None]
    background = sky < mu + s
    for fill, offset in (("truncated", 0.0), ("normal", 0.8413 * 0.2876)):
        y = resample_background(sky, torch.Generator().manual_seed(8), fill=fill)
        assert torch.equal(y[~background], sky[~background])
        z = ((y - mu) / s)[background]  # standardised new values
        n = z.numel()
        ref = truncnorm(-np.inf, 1.0) if fill == "truncated" else None
        want_mean, want_std = (ref.mean(), ref.std()) if ref else (0.0, 1.0)
        assert abs(z.mean().item() - want_mean) < 5 * want_std / np.sqrt(n)
        assert abs(z.std().item() - want_std) < 5 * want_std / np.sqrt(2 * n)
        assert z.max().item() <= 1.0 + 1e-9 or fill == "normal"
        shift = ((y - sky) / s).mean().item()  # per pixel, in units of s
        assert shift == pytest.approx(offset, abs=0.01)


def test_truncated_fill_is_seeded_and_keeps_dtype():
    x = _galaxy_images(torch.Generator().manual_seed(9), b=2).float()
    a = resample_background(x, torch.Generator().manual_seed(1), fill="truncated")
    b = resample_background(x, torch.Generator().manual_seed(1), fill="truncated")
    assert torch.equal(a, b) and torch.isfinite(a).all()
    half = resample_background(x.half(), torch.Generator().manual_seed(1), fill="truncated")
    assert half.dtype == torch.float16
    with pytest.raises(ValueError, match="fill"):
        resample_background(x, torch.Generator().manual_seed(1), fill="uniform")  # type: ignore[arg-type]


def test_resampling_is_seeded_and_keeps_dtype():
    x = _galaxy_images(torch.Generator().manual_seed(4), b=2).float()
    a = augment(x, torch.Generator().manual_seed(5))
    b = augment(x, torch.Generator().manual_seed(5))
    c = augment(x, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.dtype == torch.float32
    assert resample_background(x.half(), torch.Generator().manual_seed(0)).dtype == torch.float16


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_augment_on_cuda_matches_device():
    x = _galaxy_images(torch.Generator().manual_seed(7), b=4).float().cuda()
    g = torch.Generator(device="cuda").manual_seed(0)
    y = augment(x, g)
    assert y.device == x.device and torch.isfinite(y).all()
    mean, std = sigma_clipped_stats(x)
    ref_mean, ref_std = sigma_clipped_stats(x.cpu())
    torch.testing.assert_close(mean.cpu(), ref_mean)
    torch.testing.assert_close(std.cpu(), ref_std)
