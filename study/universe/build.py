"""The synthetic SDSS-like universe: ``python -m study.data universe --n N --seed S --out F.h5``.

Writes a photoz-study/1 file (SPEC 5) with a ``truth/`` group, from real ingredients: the
Blanton et al. (2003) luminosity function over Planck18 volumes with the r < 17.77 main-sample
cut (``population.py``), kcorrect template SEDs through the SDSS filters (``sed.py``), and
bulge + disk cutouts with PSF, sky and noise (``render.py``); ``phot``/``phot_err`` are the
aperture photometry of those noisy cutouts (``study.data.aperture.measure`` with the
renderer's gain), what a catalogue-based peer is given; ``source_mask`` is each cutout's central
source segment (``study.data.masks``), for the segmentation mode of background resampling.

Determinism: galaxies come in fixed blocks of 1024, each with its own random streams keyed by
``(seed, block)``; all batched math runs per fixed block, single-threaded, with no BLAS; every
result of exp/log/power (whose SIMD code differs between CPUs) is rounded to float32
precision before use and complex products are spelt out in real ufuncs (no fused
multiply-adds). So the same seed gives a byte-identical file for any ``chunk``, any number
of ``workers`` and any x86-64 machine with the same numpy/scipy versions (tested with numpy's
SIMD dispatch disabled); a universe of n galaxies is the first n of the seed's sequence. The
split is ``dataset.draw_split(n, data_seed)``.

Flux and spectrum conventions:
- ``flux`` is each galaxy's noiseless total band flux as observed (nanomaggies, Galactic
  extinction applied per band as 10^(-0.4 R_b E(B-V))); the cutout's pixel sum recovers it up
  to noise, neighbours and the light beyond the 64 x 64 frame.
- The "known spectrum" behind ``flux_table`` is the intrinsic observed-frame spectrum
  (redshifted template mix, no Galactic extinction: extinction is smooth and enters T only as
  a per-band ratio close to 1) on the spectrograph range (default 3800-9200 A, ``--spectral-
  range``), zero outside it, sampled on the template grid: ``study.data.spectra.FluxTableMaker``.
- ``truth/coeffs_bulge`` and ``truth/coeffs_disk`` are kcorrect template coefficients (flux at
  10 pc): the observed spectrum is ``(10 pc / D_L)^2 sum_k a_k S_k(l/(1+z)) / (1+z)``.
"""

from __future__ import annotations

import argparse
import functools
import mmap
import multiprocessing as mp
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from study.data import aperture
from study.data import masks as masks_mod
from study.data.dataset import DatasetWriter, draw_split
from study.data.layout import bin_centers, bin_edges
from study.data.spectra import FluxTableMaker
from study.errors import UserError
from study.files import refuse_existing
from study.universe import population as pop_mod
from study.universe import render as render_mod
from study.universe import sed

if TYPE_CHECKING:
    from study.config import Config

# bump when the physics or the file's contents change: cached universes are keyed by it.
# 3: the file now carries phot/phot_err (aperture photometry of its own noisy cutouts); a
# cached v2 file has none, and the peers need them
# 4: the file carries source_mask (the central source's segment, study.data.masks); images, zs
# and every other dataset are the bytes of v3 for the same seed
# 5: phot_err's pixel noise from adjacent annulus pixels' differences (study.data.aperture:
# the annulus' own clipped std took the galaxy wings' spread for noise); every other dataset,
# phot too, is the bytes of v4 for the same seed
VERSION = 5
DEFAULT_RANGE = (3800.0, 9200.0)  # A, the SDSS spectrograph
BLOCK = pop_mod.BLOCK
CATALOGUE_TRUTH: dict[str, tuple[tuple[int, ...], str]] = {
    "abs_mag_r01": ((), "<f4"),  # M_{0.1r} (h = 0.6766), Blanton et al. 2003's band
    "r_dered": ((), "<f4"),  # apparent r without extinction (< 17.77)
    "red": ((), "u1"),  # 1 red sequence, 0 blue cloud
    "sed_t": ((), "<f4"),  # position on the blue (0) - red (1) template axis
    "bulge_frac": ((), "<f4"),  # bulge-to-total in ^{0.1}r light
    "coeffs_bulge": ((5,), "<f8"),  # kcorrect coefficients (flux at 10 pc)
    "coeffs_disk": ((5,), "<f8"),
    "flux_bulge": ((5,), "<f4"),  # nanomaggies, extinction applied
    "flux_disk": ((5,), "<f4"),
    "re_bulge_arcsec": ((), "<f4"),  # de Vaucouleurs half-light radius (major axis)
    "re_disk_arcsec": ((), "<f4"),  # exponential half-light radius (major axis)
    "q_bulge": ((), "<f4"),
    "q_disk": ((), "<f4"),
    "pa_rad": ((), "<f4"),  # position angle of both components
    "offset_px": ((2,), "<f4"),  # centre (x, y) relative to pixel (32, 32)
}
IMAGE_TRUTH: dict[str, tuple[tuple[int, ...], str]] = {
    "psf_fwhm_arcsec": ((5,), "<f4"),
    "neighbour_kind": ((), "u1"),  # 0 none, 1 galaxy, 2 star
    "neighbour_offset_px": ((2,), "<f4"),
    "neighbour_flux": ((5,), "<f4"),  # nanomaggies
    "neighbour_re_arcsec": ((), "<f4"),
    "neighbour_q": ((), "<f4"),
    "neighbour_pa_rad": ((), "<f4"),
    "spectral_range_A": ((2,), "<f4"),  # where the spectrum behind flux_table is known
}
_RENAME = {"abs_mag": "abs_mag_r01", "t": "sed_t"}


def _catalogue_block(g: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The catalogue columns (and catalogue truth) of one population block."""
    out = {"zs": g["zs"], "ebv": g["ebv"], "flux": g["flux"]}
    for key, value in g.items():
        name = _RENAME.get(key, key)
        if name in CATALOGUE_TRUTH:
            out[f"truth/{name}"] = value
    return out


@functools.lru_cache(maxsize=4)
def flux_table_maker(n_bins: int, z_max: float, spectral_range: tuple[float, float]):
    """The process-wide FluxTableMaker of a binning and spectral range."""
    return FluxTableMaker(bin_centers(bin_edges(n_bins, z_max)), spectral_range)


def make_block(
    seed: int,
    block: int,
    *,
    images: bool = True,
    table: tuple[int, float, tuple[float, float]] | None = (180, 0.4, DEFAULT_RANGE),
    image_dtype: str = "float32",
    image_out: np.ndarray | None = None,
    n_images: int = BLOCK,
) -> dict[str, np.ndarray]:
    """All columns of one block of BLOCK galaxies (rows ``block * BLOCK`` onwards).

    Args:
        images: render cutouts (else only the catalogue: ``build_catalogue``'s fast path).
        table: (n_bins, z_max, spectral_range) for ``flux_table``, or None for no table.
        image_out: (BLOCK, 5, 64, 64) array of ``image_dtype`` to render into (else a new one).
        n_images: render only the first n_images cutouts (at least; see
            ``Renderer.render_block``), the rows a universe's last block keeps; the rest of
            ``images`` is left unset and their ``phot``/``phot_err`` are NaN. Every other
            column covers the whole block.
    """
    g = pop_mod.population().draw_block(seed, block)
    out = _catalogue_block(g)
    if table is not None:
        maker = flux_table_maker(*table)
        coeffs = g["coeffs_bulge"] + g["coeffs_disk"]
        out["flux_table"] = maker(coeffs, g["zs"]).astype(np.float32)
        out["truth/spectral_range_A"] = np.tile(np.asarray(table[2], np.float32), (BLOCK, 1))
    if images:
        if image_out is None:
            image_out = np.empty((BLOCK, 5, 64, 64), image_dtype)
        obs = render_mod.renderer().render_block(g, seed, block, image_out, n_images)
        out["images"] = image_out
        out |= {f"truth/{k}": v for k, v in obs.items()}
        out |= _photometry(image_out[: min(n_images, BLOCK)])
        out["source_mask"] = _masks(image_out[: min(n_images, BLOCK)])
    return out


def _masks(images: np.ndarray) -> np.ndarray:
    """``source_mask`` (BLOCK, 64, 8) packed central-source masks of a block's rendered cutouts
    (as stored), empty past them; each row depends on its own cutout alone."""
    out = np.zeros((BLOCK, 64, 8), np.uint8)
    out[: len(images)] = masks_mod.pack(masks_mod.measure_masks(images))
    return out


def _photometry(images: np.ndarray) -> dict[str, np.ndarray]:
    """``phot``/``phot_err`` (BLOCK, 5) of a block's rendered cutouts (as stored: float16 too),
    NaN past them. One thread (the workers are the parallelism); each row's value depends on
    that row's pixels alone, so neither the block's length nor ``chunk`` changes a bit.
    """
    phot, err = aperture.measure(images, gain=render_mod.universe_gain(), threads=1)
    out = {k: np.full((BLOCK, 5), np.nan, np.float32) for k in aperture.MEASURED}
    out["phot"][: len(images)], out["phot_err"][: len(images)] = phot, err
    return out


def _concat(blocks: list[dict[str, np.ndarray]], n: int) -> dict[str, np.ndarray]:
    return {k: np.concatenate([b[k] for b in blocks])[:n] for k in blocks[0]}


def build_catalogue(
    n: int,
    seed: int = 0,
    *,
    flux_table: bool = False,
    n_bins: int = 180,
    z_max: float = 0.4,
    spectral_range: tuple[float, float] = DEFAULT_RANGE,
) -> dict[str, np.ndarray]:
    """The universe's catalogue without images (zs, ebv, flux, catalogue truth; flux_table).

    Identical, row for row, to the same columns of ``build_universe(n, seed, ...)``.
    """
    _check_n(n)
    lo, hi = spectral_range
    table = (n_bins, z_max, (float(lo), float(hi))) if flux_table else None
    blocks = [make_block(seed, b, images=False, table=table) for b in range(-(-n // BLOCK))]
    return _concat(blocks, n)


# The image buffers the forked workers render into, shared memory set up by BlockSource. Sending a
# block's images back through the pool's pipe instead costs 0.3-0.4 s more per block than
# allocating them (80 MiB of float32; measured 418-562 ms against 112-155 ms, n = 3, 2 cores),
# where rendering a block takes about 0.5 s: shared slots keep the builder at ~2,000 galaxies/s.
_SLOTS: np.ndarray | None = None


def warm_tables(table: tuple | None) -> None:
    """Build the process-wide tables (population, renderer, flux table) once, before forking.

    The forked workers inherit them (copy on write). Building them in forked helpers side by side
    instead was measured no faster (paired wall ratio 1.26, 0.96-1.83, n = 5, at n = 4,000) and is
    gone, with the cross-process memos it needed.
    """
    sed.template_tables()
    if table is not None:
        flux_table_maker(*table)
    pop_mod.population()
    render_mod.renderer()
    aperture.masks()  # imports photutils (~1 CPU-s) once here, not in every worker
    masks_mod.warm()  # and photutils.segmentation, scikit-image


def _work(args: tuple) -> dict[str, np.ndarray]:
    seed, block, table, image_dtype, slot, n_images = args
    assert _SLOTS is not None
    out = make_block(
        seed, block, table=table, image_dtype=image_dtype, image_out=_SLOTS[slot],
        n_images=n_images,
    )  # fmt: skip
    del out["images"]  # already in the shared slot: only the small columns are pickled back
    return out


class BlockSource:
    """Blocks 0..n_blocks-1 in order, rendered by forked worker processes.

    Workers render straight into shared memory (2 slots per worker), so a block's images are
    never pickled; at most 2 blocks per worker are in flight, which bounds memory for any n.
    A context manager: the pool is forked on entry (before any progress-bar thread starts).
    """

    def __init__(self, seed: int, n: int, table: tuple, image_dtype: str, workers: int):
        self.seed, self.n, self.table, self.dtype = seed, n, table, image_dtype
        self.n_blocks = -(-n // BLOCK)
        self.workers = workers if self.n_blocks > 1 else 1
        self.pool: Any = None

    def __enter__(self) -> BlockSource:
        global _SLOTS
        warm_tables(self.table)
        if self.workers > 1:
            # the tables are built here once; the forked workers inherit them (copy on write)
            n_slots = 2 * self.workers
            shape = (n_slots, BLOCK, 5, render_mod.N_OUT, render_mod.N_OUT)
            buf = mmap.mmap(-1, int(np.prod(shape)) * np.dtype(self.dtype).itemsize)
            _SLOTS = np.frombuffer(buf, self.dtype).reshape(shape)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*fork.*", category=DeprecationWarning)
                self.pool = mp.get_context("fork").Pool(self.workers)
        return self

    def __exit__(self, *exc: Any) -> None:
        global _SLOTS
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
        _SLOTS = None

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        if self.pool is None:
            for b in range(self.n_blocks):
                yield make_block(
                    self.seed, b, table=self.table, image_dtype=self.dtype,
                    n_images=self.n - b * BLOCK,
                )  # fmt: skip
            return
        n_slots = 2 * self.workers

        def submit(b: int) -> Any:
            job = (self.seed, b, self.table, self.dtype, b % n_slots, self.n - b * BLOCK)
            return self.pool.apply_async(_work, (job,))

        pending = {b: submit(b) for b in range(min(n_slots, self.n_blocks))}
        for b in range(self.n_blocks):
            out = pending.pop(b).get()
            assert _SLOTS is not None
            out["images"] = _SLOTS[b % n_slots]
            yield out  # the consumer has written the block when we resume: its slot is free
            if b + n_slots < self.n_blocks:
                pending[b + n_slots] = submit(b + n_slots)


def _check_n(n: Any) -> None:
    if not isinstance(n, int | np.integer) or n < 1:
        raise UserError(f"--n must be a whole number >= 1, got {n!r}; pass e.g. --n 4000")


def check_args(
    n: int,
    out: str | os.PathLike,
    image_dtype: str,
    spectral_range: tuple[float, float],
    n_bins: int = 180,
    z_max: float = 0.4,
    overwrite: bool = False,
) -> Path:
    """Validate a build's arguments before any work; returns the output path."""
    _check_n(n)
    if image_dtype not in ("float32", "float16"):
        raise UserError(f"--dtype must be float32 or float16, got {image_dtype!r}")
    lo, hi = spectral_range
    if not 2200.0 <= lo < hi <= 12500.0:
        raise UserError(
            f"--spectral-range {lo:g} {hi:g}: need 2200 <= A < B <= 12500 Angstrom "
            "(the templates' coverage at z <= 0.45); e.g. --spectral-range 3800 9200"
        )
    if n_bins < 1 or not 0 < z_max <= 1:
        raise UserError(f"bins: need n_bins >= 1 and 0 < z_max <= 1, got {n_bins}, {z_max}")
    path = refuse_existing(out, overwrite=overwrite)
    if path.is_dir():
        raise UserError(
            f"{path}: --out is a directory; give a file name such as {path}/universe.h5"
        )
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(
            f"{path}: --out is not writable ({parent} is read-only); choose another path"
        )
    return path


def build_universe(
    n: int,
    seed: int,
    out: str | os.PathLike,
    *,
    chunk: int = 1024,
    image_dtype: str = "float32",
    spectral_range: tuple[float, float] = DEFAULT_RANGE,
    n_bins: int = 180,
    z_max: float = 0.4,
    data_seed: int = 0,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Build the universe file (atomically: a temporary name, renamed when complete).

    Args:
        chunk: at most this many galaxies per HDF5 write (blocks of 1024 are split, never
            merged); does not change a byte of the file.
        workers: processes rendering blocks (default: the CPU count, at most 8).
        progress: show a tqdm bar on stderr.

    Returns:
        The path written. Memory stays bounded (about 0.4 GB per worker) for any n.
    """
    path = check_args(n, out, image_dtype, spectral_range, n_bins, z_max, overwrite)
    if chunk < 1:
        raise UserError(f"chunk must be >= 1, got {chunk}")
    workers = min(os.cpu_count() or 1, 8) if workers is None else max(1, int(workers))
    table = (int(n_bins), float(z_max), (float(spectral_range[0]), float(spectral_range[1])))
    split = draw_split(n, data_seed)
    source = BlockSource(seed, n, table, image_dtype, workers)
    writer = DatasetWriter(
        path,
        n,
        bin_edges=bin_edges(n_bins, z_max),
        source="synthetic",
        data_seed=data_seed,
        pixel_scale_arcsec=render_mod.PIXEL_SCALE,
        image_dtype=image_dtype,
        with_flux_table=True,
        with_phot=True,
        with_masks=True,
        truth=CATALOGUE_TRUTH | IMAGE_TRUTH,
        overwrite=overwrite,
        flux_table_source="synthetic-exact",
    )
    with source, writer:
        bar = tqdm(total=n, unit="gal", desc=f"universe {path.name}", disable=not progress)
        with bar:
            for b, block in enumerate(source):
                start = b * BLOCK
                rows = min(BLOCK, n - start)
                for off in range(0, rows, chunk):  # blocks are split, never merged: no copies
                    m = min(chunk, rows - off)
                    piece = {k: v[off : off + m] for k, v in block.items()}
                    _write(writer, start + off, piece, split)
                    bar.update(m)
    return path


def _write(
    writer: DatasetWriter, start: int, rows: dict[str, np.ndarray], split: np.ndarray
) -> None:
    m = len(rows["zs"])
    writer.write(
        start,
        images=rows["images"],
        zs=rows["zs"],
        ebv=rows["ebv"],
        flux=rows["flux"],
        split=split[start : start + m],
        ids=np.arange(start, start + m, dtype=np.int64),
        flux_table=rows["flux_table"],
        phot=rows["phot"],
        phot_err=rows["phot_err"],
        source_mask=rows["source_mask"],
        truth={k[6:]: v for k, v in rows.items() if k.startswith("truth/")},
    )


def cache_dir() -> Path:
    """$PHOTOZ_CACHE, or ~/.cache/photoz-study."""
    env = os.environ.get("PHOTOZ_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "photoz-study"


def cached_universe(n: int, seed: int = 0, image_dtype: str = "float32") -> Path:
    """The universe (n, seed, dtype) in the cache dir, built once.

    Safe when several processes on one node ask at once: the first takes an exclusive file
    lock and builds (the writer renames a finished temporary file into place); the others
    wait on the lock and then find the file. A build killed half-way leaves only a hidden
    temporary file, which the next build (holding the lock) removes.
    """
    _check_n(n)
    path = cache_dir() / f"universe-v{VERSION}-n{n}-seed{seed}-{image_dtype}.h5"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    import fcntl

    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not path.exists():
                for stale in path.parent.glob(f".{path.name}.*.tmp"):  # a killed build's leftovers
                    stale.unlink(missing_ok=True)
                build_universe(n, seed, path, image_dtype=image_dtype)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return path


def resolve_data(config: Config) -> Path:
    """The file a run trains on: ``config.data.path``, or the cached universe of its size.

    Called at the edges (``python -m study.train``, ``study.run``'s driver, the Tune trainable on
    each node, ``analysis``), never by the training core, which takes the path it is given.
    """
    if config.data.path is not None:
        path = Path(config.data.path)
        if not path.is_file():
            raise UserError(f"{path}: data file not found; fix --data (or data.path)")
        return path
    data = config.data
    return cached_universe(data.universe_n, data.universe_seed, image_dtype=data.image_dtype)


def add_universe_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``universe`` subcommand to ``python -m study.data``."""
    p = subparsers.add_parser(
        "universe",
        help="build the synthetic SDSS-like universe (photoz-study/1 file with truth/)",
        description=(__doc__ or "").split("\n")[0],
    )
    p.add_argument("--n", type=int, required=True, help="number of galaxies")
    p.add_argument("--seed", type=int, default=0, help="universe seed (same seed, same bytes)")
    p.add_argument("--out", required=True, help="output .h5 file (must not exist)")
    p.add_argument("--dtype", default="float32", help="image dtype: float32 or float16")
    p.add_argument("--spectral-range", type=float, nargs=2, default=DEFAULT_RANGE, metavar=("A", "B"),
                   help="observed range (Angstrom) where the spectrum behind flux_table is known")  # fmt: skip
    p.add_argument("--n-bins", type=int, default=180, help="redshift bins of flux_table")
    p.add_argument("--z-max", type=float, default=0.4, help="upper edge of the bins")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the train/val/test split")
    p.add_argument(
        "--chunk", type=int, default=1024, help="max galaxies per write (bytes unchanged)"
    )
    p.add_argument(
        "--workers", type=int, default=None, help="rendering processes (default: CPUs, <= 8)"
    )
    p.add_argument("--force", action="store_true", help="overwrite an existing --out")
    p.set_defaults(func=universe_command)
    return p


def universe_command(args: argparse.Namespace) -> int:
    """Handler of ``python -m study.data universe``; raises UserError on bad arguments."""
    path = build_universe(
        args.n,
        args.seed,
        args.out,
        chunk=args.chunk,
        image_dtype=args.dtype,
        spectral_range=tuple(args.spectral_range),
        n_bins=args.n_bins,
        z_max=args.z_max,
        data_seed=args.data_seed,
        workers=args.workers,
        overwrite=args.force,
    )
    print(f"wrote {path} ({args.n} galaxies, seed {args.seed}, {args.dtype} images)")
    return 0
