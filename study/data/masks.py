"""Which pixels are the galaxy's: ``source_mask``, the central source's segment (photutils).

Background resampling in its ``segmentation`` mode (``augment.background``, study.augment) redraws
every pixel outside the central source's segment from the sky, neighbours included; the
``threshold`` mode (the paper's) redraws pixels below the clipped mean + 1 std and keeps every
source, neighbours too. The segment is computed once per cutout when a file is built (the
universe, ``convert``) or added to an existing file (``python -m study.data masks FILE``):

1. Detection image: the sum over the five bands of each band's pixels over its clipped noise
   ``(x_b - m_b) / s_b`` (m_b, s_b: the 3-sigma-clipped median and std of the band's pixels,
   ``aperture.clipped_stats``), smoothed by a Gaussian of ``DETECT_FWHM_PX`` (the median SDSS
   seeing, 1.4" / 0.396"/px): a matched filter for point-like light.
2. ``photutils.segmentation.detect_sources`` at ``DETECT_NSIGMA`` times the detection image's own
   clipped std above its clipped median, at least ``N_PIXELS`` connected pixels (8-connected).
3. ``deblend_sources`` (multi-thresholding, ``N_LEVELS`` levels, contrast ``CONTRAST``, then a
   watershed; scikit-image) of the segment under the central pixel (32, 32) only: the neighbours'
   own segments need no splitting, and deblending every segment costs more.
4. The central segment (the label at (32, 32) after deblending; none there: an empty mask, so the
   whole cutout is redrawn) dilated by a disk of radius ``DILATE_PX`` (the detection FWHM: the
   PSF) + ``DILATE_SCALE`` x the segment's equivalent radius sqrt(area / pi) (the faint outskirts
   below the threshold grow with the galaxy: de Vaucouleurs wings hold several per cent of the
   light beyond any 1.5-sigma isophote), never into another segment's pixels: the neighbours'
   own segments are always redrawn.

Stored as ``source_mask`` uint8 (N, 64, 8): each row of 64 pixels packed into 8 bytes,
``np.packbits(mask, axis=-1)`` (big-endian bit order: pixel 0 is the top bit of byte 0). 512 bytes
per galaxy: 311 MB at the paper's N = 607,712 (2.5 GB as uint8 (N, 64, 64)). The trainer keeps it
packed on the device and unpacks each batch there (``unpack_bits``).

Measured on the universe (README "Source masks"): what each mode alters of the central galaxy's
true light and keeps of the neighbours', and the rate of this module.
"""

from __future__ import annotations

import argparse
import os
import warnings
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from tqdm import tqdm

from study.data.aperture import clipped_stats
from study.data.layout import (
    CONTRAST,
    DETECT_FWHM_PX,
    DETECT_NSIGMA,
    DILATE_PX,
    DILATE_SCALE,
    MASK,
    MASK_ATTRS,
    N_LEVELS,
    N_PIXELS,
)
from study.errors import UserError
from study.files import refuse_existing

SIDE = 64  # cutout side, px


def warm() -> None:
    """Import photutils.segmentation and scikit-image's watershed once (before forking workers)."""
    import photutils.segmentation  # noqa: F401
    import skimage.segmentation  # noqa: F401


def detection_image(image: np.ndarray) -> np.ndarray:
    """(64, 64) float64 band-summed S/N of one (5, 64, 64) cutout, smoothed by the PSF."""
    from scipy import ndimage

    med, std, _ = clipped_stats(image.reshape(len(image), -1).astype(np.float32))
    std = np.where(std > 0, std, 1.0)
    snr = ((image - med[:, None, None]) / std[:, None, None]).sum(axis=0)
    sigma = DETECT_FWHM_PX / 2.3548
    return ndimage.gaussian_filter(snr.astype(np.float64), sigma, mode="constant", truncate=3.0)


def central_mask(image: np.ndarray) -> np.ndarray:
    """(64, 64) bool: the central source's deblended, dilated segment of one (5, 64, 64) cutout."""
    from photutils.segmentation import deblend_sources, detect_sources
    from scipy import ndimage

    det = detection_image(image)
    med, std, _ = clipped_stats(det.reshape(1, -1))
    segm = detect_sources(det, float(med[0] + DETECT_NSIGMA * std[0]), N_PIXELS)
    c = SIDE // 2
    if segm is None or segm.data[c, c] == 0:
        return np.zeros((SIDE, SIDE), bool)
    with warnings.catch_warnings():  # "the deblending mode ... no sources were deblended" etc.
        warnings.simplefilter("ignore")
        segm = deblend_sources(
            det, segm, N_PIXELS, labels=[int(segm.data[c, c])], n_levels=N_LEVELS,
            contrast=CONTRAST, progress_bar=False,
        )  # fmt: skip
    labels = segm.data
    central = labels == labels[c, c]
    radius = DILATE_PX + DILATE_SCALE * np.sqrt(central.sum() / np.pi)
    # the dilation by a disk of that radius: every pixel within it of a central pixel (the
    # Euclidean distance transform: 20x cheaper than binary_dilation with a 40 px disk)
    grown = ndimage.distance_transform_edt(~central) <= radius
    return grown & (central | (labels == 0))


def measure_masks(images: np.ndarray, bar: tqdm | None = None) -> np.ndarray:
    """(n, 64, 64) bool central-source masks of (n, 5, 64, 64) cutouts (any float dtype).

    Each row depends on its own cutout alone (a file's masks are the same bits whatever the
    chunking or the number of workers). ``bar``: a tqdm bar advanced per cutout.
    """
    out = np.zeros((len(images), SIDE, SIDE), bool)
    for i in range(len(images)):
        out[i] = central_mask(np.asarray(images[i], np.float32))
        if bar is not None:
            bar.update(1)
    return out


def pack(masks: np.ndarray) -> np.ndarray:
    """(n, 64, 64) bool -> (n, 64, 8) uint8, the stored ``source_mask``."""
    return np.packbits(masks.astype(bool), axis=-1)


def unpack(packed: np.ndarray) -> np.ndarray:
    """(n, 64, 8) uint8 -> (n, 64, 64) bool (numpy; the trainer uses ``augment.unpack_bits``)."""
    return np.unpackbits(packed, axis=-1, count=SIDE).astype(bool)


def add_masks(
    path: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Add ``source_mask`` to a photoz-study/1 file (``dataset.amend_copy``: atomic, validated).

    Every existing dataset and attribute other than ``content_hash`` keeps its bytes; the hash
    is checked against the input's content, then renewed to cover the masks.

    Args:
        path: an existing photoz-study/1 file without ``source_mask``.
        out: where the new file goes; None replaces ``path`` atomically.
        overwrite: replace an existing ``out``.
        progress: a tqdm bar on stderr.
    """
    from study.data.dataset import amend_copy, read_info

    src = Path(path)
    dst = src if out is None else Path(out)
    info = read_info(src)
    with h5py.File(src, "r") as f:
        if MASK in f:
            raise UserError(
                f"{src}: already has dataset '{MASK}'; nothing to add: use the file as it is"
            )
    if dst != src:
        refuse_existing(dst, overwrite=overwrite)
    if dst.is_dir():
        raise UserError(f"{dst}: --out is a directory; give a file name such as {dst}/data.h5")

    def edit(f: h5py.File) -> None:
        _create(f, info.n)
        _fill(f, src, progress)

    return amend_copy(src, dst, edit)


def _create(f: h5py.File, n: int) -> None:
    from study.data.writer import create_dataset

    create_dataset(f, MASK, (n, SIDE, SIDE // 8), np.dtype("u1"), None, MASK_ATTRS)


def _fill(f: h5py.File, src: Path, progress: bool) -> None:
    """Measure every cutout into ``source_mask`` and renew ``content_hash`` (one pass)."""
    from study.data.dataset import OPTIONAL_DATASETS, digest_dataset, file_content_hash
    from study.data.writer import CORE_DATASETS

    n = f["zs"].shape[0]
    bar = tqdm(total=n, unit="gal", desc=f"masks {src.name}", disable=not progress)

    def on_images(s: int, block: np.ndarray) -> None:
        f[MASK][s : s + len(block)] = pack(measure_masks(block, bar))

    names = [k for k in (*CORE_DATASETS, *OPTIONAL_DATASETS) if k in f and k != MASK]
    names += [f"truth/{k}" for k in f["truth"]] if "truth" in f else []
    with bar:
        old = {k: digest_dataset(f[k], on_images if k == "images" else None) for k in names}
    if file_content_hash(f, old) != str(f.attrs.get("content_hash", "")):
        raise UserError(
            f"{src}: attribute 'content_hash' does not match the content (modified or corrupt "
            "file); rebuild it with `python -m study.data convert` / `universe` first"
        )
    f.attrs["content_hash"] = file_content_hash(f, old | {MASK: digest_dataset(f[MASK])})


def add_masks_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``masks`` subcommand to ``python -m study.data``."""
    p = subparsers.add_parser(
        "masks",
        help="add the central source's segmentation mask (source_mask) to a photoz-study/1 file",
        description=(__doc__ or "").split("\n")[0],
    )
    p.add_argument("input", type=Path, help="a photoz-study/1 file without 'source_mask'")
    p.add_argument("--out", type=Path, help="write a new file here (default: add in place)")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.set_defaults(func=masks_command)
    return p


def masks_command(args: argparse.Namespace) -> int:
    """Handler of ``python -m study.data masks``; raises UserError on bad input."""
    out = add_masks(args.input, args.out, overwrite=args.force)
    print(f"wrote {out} ({MASK}: the central source's segment, packed bits)")
    return 0
