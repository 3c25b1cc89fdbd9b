"""Source masks (issue 13): the central segment of a rendered cutout, the packed dataset, and the
segmentation mode of background resampling.

References: the renderer's own separate light of the central galaxy and of its neighbour (the
noiseless components, independent of photutils), numpy's packbits, and a hand-written D4 + noise
draw with a cloned generator.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from study.augment import augment, sigma_clipped_stats, unpack_bits
from study.config import make_config
from study.data import masks
from study.data.dataset import draw_split, load_split, validate, write_dataset
from study.errors import UserError
from study.train import train
from study.universe import render

EDGES = np.linspace(0.0, 0.4, 181)


def _galaxy_and_star() -> tuple[dict, dict]:
    """One disk-dominated galaxy (r ~ 17, bulge 10% of the light) with a star (r ~ 18.5) 18 px away."""
    r_flux = 10 ** (-0.4 * (17.0 - 22.5))  # nanomaggies
    colour = np.array([0.3, 0.7, 1.0, 1.3, 1.5])
    g = {
        "re_bulge_arcsec": np.array([0.8]), "re_disk_arcsec": np.array([1.6]),
        "q_bulge": np.array([0.8]), "q_disk": np.array([0.6]), "pa_rad": np.array([0.4]),
        "flux_bulge": (0.1 * r_flux * colour)[None], "flux_disk": (0.9 * r_flux * colour)[None],
        "offset_px": np.array([[0.2, -0.3]]),
    }  # fmt: skip
    star = 10 ** (-0.4 * (18.5 - 22.5)) * np.array([0.5, 0.8, 1.0, 1.1, 1.15])
    obs = {
        "psf_fwhm_arcsec": np.full((1, 5), 1.4), "neighbour_kind": np.array([2], np.uint8),
        "neighbour_offset_px": np.array([[17.0, 6.0]]), "neighbour_flux": star[None],
        "neighbour_re_arcsec": np.zeros(1), "neighbour_q": np.ones(1),
        "neighbour_pa_rad": np.zeros(1),
    }  # fmt: skip
    return g, obs


def test_central_segment_holds_the_galaxy_and_not_the_neighbour_centre() -> None:
    rend = render.Renderer()
    g, obs = _galaxy_and_star()
    full = np.array(rend.noiseless(g, obs))  # (1, 5, 64, 64)
    alone = obs | {"neighbour_kind": np.zeros(1, np.uint8)}
    central = np.array(rend.noiseless(g, alone))[0]
    dark = g | {"flux_bulge": np.zeros((1, 5)), "flux_disk": np.zeros((1, 5))}
    neighbour = np.array(rend.noiseless(dark, obs))[0]
    np.testing.assert_allclose(central + neighbour, full[0], atol=1e-4 * full.max())
    noisy = np.empty_like(full)
    rend.add_noise(full, np.random.default_rng(0), noisy)
    keep = masks.central_mask(noisy[0])
    assert (central * keep).sum() >= 0.99 * central.sum()  # 99% of the galaxy's light, all bands
    x, y = 32 + 0.2 + 17.0, 32 - 0.3 + 6.0  # the star's centre, (x, y) pixel coordinates
    iy, ix = int(round(y)), int(round(x))
    assert not keep[iy - 1 : iy + 2, ix - 1 : ix + 2].any()  # none of its central 3 x 3 pixels
    assert (neighbour * keep).sum() < 0.1 * neighbour.sum()


def test_a_source_away_from_the_centre_is_never_the_central_one() -> None:
    image = np.random.default_rng(1).standard_normal((5, 64, 64)).astype(np.float32)
    yy, xx = np.mgrid[:64, :64]
    image += 50.0 * np.exp(-((xx - 10.0) ** 2 + (yy - 12.0) ** 2) / 8.0)[None]
    keep = masks.central_mask(image)
    assert not keep[8:17, 6:15].any()  # at most a noise peak at the centre, never that source


def test_packed_bits_round_trip_as_numpy_packs_them() -> None:
    m = np.random.default_rng(2).random((3, 64, 64)) < 0.4
    packed = masks.pack(m)
    assert packed.shape == (3, 64, 8) and packed.dtype == np.uint8
    np.testing.assert_array_equal(packed, np.packbits(m, axis=-1))
    np.testing.assert_array_equal(masks.unpack(packed), m)
    np.testing.assert_array_equal(unpack_bits(torch.from_numpy(packed)).numpy(), m)


def _hand_d4(t: torch.Tensor, element: int) -> torch.Tensor:
    out = torch.rot90(t, element % 4, dims=(-2, -1))
    return torch.flip(out, dims=(-1,)) if element >= 4 else out


def test_segmentation_mode_keeps_central_pixels_bit_identical_and_redraws_the_rest() -> None:
    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.normal(0.0, 1.0, (6, 5, 16, 16)).astype(np.float32))
    x[:, :, 5:11, 5:11] += 20.0  # a bright central source
    x[:, :, 0:3, 0:3] += 20.0  # a bright neighbour, outside the mask
    keep = torch.zeros((6, 16, 16), dtype=torch.bool)
    keep[:, 4:12, 4:12] = True
    keep[0, 4, 4] = False  # masks differ between images (not D4-symmetric)
    stats = sigma_clipped_stats(x)
    gen = torch.Generator().manual_seed(7)
    ref_gen = torch.Generator().manual_seed(7)
    out = augment(x, gen, stats, keep=keep)
    # the reference: the same element per image, then N(mu, s) everywhere outside the mask
    element = torch.randint(0, 8, (6,), generator=ref_gen)
    noise = torch.randn(x.shape, generator=ref_gen)
    for i in range(6):
        e = int(element[i])
        xi, ki = _hand_d4(x[i], e), _hand_d4(keep[i], e)
        fill = stats[0][i, :, None, None].float() + stats[1][i, :, None, None].float() * noise[i]
        assert torch.equal(out[i][:, ki], xi[:, ki])  # central pixels: the same bits
        assert torch.equal(out[i][:, ~ki], fill[:, ~ki])  # the rest, neighbour included: sky
    # the neighbour's bright pixels are gone; the threshold mode would have kept them
    thr = augment(x, torch.Generator().manual_seed(7), stats)
    assert out.amax(dim=(1, 2, 3)).min() > 15 and (out > 15).sum() < (thr > 15).sum()


def _file(path: Path, n: int = 96) -> Path:
    rng = np.random.default_rng(4)
    yy, xx = np.mgrid[:64, :64] - 31.5
    blob = np.exp(-(xx**2 + yy**2) / (2 * 3.0**2))
    zs = rng.uniform(0.01, 0.39, n)
    colour = np.exp(np.arange(-2, 3)[None, :] * 6.0 * zs[:, None])
    images = 5 * colour[:, :, None, None] * blob + 0.05 * rng.standard_normal((n, 5, 64, 64))
    return write_dataset(
        path, images=images.astype(np.float32), zs=zs, ebv=np.zeros(n, np.float32),
        flux=np.full((n, 5), np.nan, np.float32), split=draw_split(n, 0),
        ids=np.arange(n, dtype=np.int64), bin_edges=EDGES, source="synthetic", data_seed=0,
    )  # fmt: skip


def test_add_masks_keeps_every_other_byte_and_validates(tmp_path: Path) -> None:
    src = _file(tmp_path / "a.h5")
    out = masks.add_masks(src, tmp_path / "b.h5", progress=False)
    info = validate(out)
    assert info.has_masks and not validate(src).has_masks
    with h5py.File(src, "r") as a, h5py.File(out, "r") as b:
        for k in a:
            np.testing.assert_array_equal(a[k][...], b[k][...])
        m = masks.unpack(b["source_mask"][...])
        assert b["source_mask"].shape == (96, 64, 8)
        ref = masks.measure_masks(a["images"][:4])
    np.testing.assert_array_equal(m[:4], ref)
    assert m[:, 28:36, 28:36].all()  # every blob's core is its own
    split = load_split(out, "train", masks=True)
    assert split.masks is not None and split.masks.shape == (info.split_counts["train"], 64, 8)
    with pytest.raises(UserError, match="already has dataset 'source_mask'"):
        masks.add_masks(out, tmp_path / "c.h5", progress=False)
    cfg = make_config("tiny", "baseline_aug", overrides={"augment.background": "segmentation"})
    with pytest.raises(UserError, match="python -m study.data masks"):
        train(cfg, tmp_path / "run", data=src)


def test_threshold_mode_ignores_the_masks_and_segmentation_trains(tmp_path: Path) -> None:
    src = _file(tmp_path / "a.h5")
    with_masks = masks.add_masks(src, tmp_path / "b.h5", progress=False)
    over = {"run.threads": 1, "optim.epochs": 1}
    a = train(make_config("tiny", "inv_only", overrides=over), tmp_path / "ra", data=src)
    b = train(make_config("tiny", "inv_only", overrides=over), tmp_path / "rb", data=with_masks)
    assert a.metrics["test"] == b.metrics["test"]  # bit for bit: the default never reads them
    seg = over | {"augment.background": "segmentation"}
    c = train(make_config("tiny", "inv_only", overrides=seg), tmp_path / "rc", data=with_masks)
    assert np.isfinite(c.metrics["test"]["sigma_nmad"])
    assert c.history["total"].iloc[0] != a.history["total"].iloc[0]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_segmentation_mode_on_cuda_keeps_the_masked_pixels() -> None:
    yy, xx = np.mgrid[:24, :24] - 11.5
    r2 = xx**2 + yy**2  # D4-symmetric images and masks: every element leaves them as they are
    amp = np.random.default_rng(5).uniform(1, 5, (64, 5, 1, 1))
    x = torch.from_numpy((amp * np.exp(-r2 / 20.0)).astype(np.float32)).cuda()
    keep = torch.from_numpy(np.broadcast_to(r2 < 30, (64, 24, 24)).copy()).cuda()
    packed = torch.from_numpy(masks.pack(keep.cpu().numpy())).cuda()
    assert torch.equal(unpack_bits(packed), keep)
    out = augment(x, torch.Generator(device="cuda").manual_seed(0), keep=keep)
    assert torch.equal(out.permute(1, 0, 2, 3)[:, keep], x.permute(1, 0, 2, 3)[:, keep])
    assert (out.permute(1, 0, 2, 3)[:, ~keep] != x.permute(1, 0, 2, 3)[:, ~keep]).all()
