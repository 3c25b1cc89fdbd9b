"""The photoz-study/1 HDF5 file: write it, validate it, and load a split onto a device.

Layout (SPEC 5): ``images`` (N, 5, 64, 64) float32/float16 nanomaggies, ``zs`` float64 (N,),
``ebv`` float32 (N,), ``flux`` float32 (N, 5) (NaN where unknown), optional ``flux_table``
float32 (N, 5, C), ``split`` uint8 (N,) (0 train, 1 validation, 2 test), ``id`` int64 (N,),
optional ``phot``/``phot_err`` float32 (N, 5) (measured aperture photometry, nanomaggies:
``study.data.aperture``; written by the universe and the converters), optional group
``truth/`` (synthetic data only). File attributes: ``format``, ``bands``,
``bin_edges``, ``pixel_scale_arcsec``, ``source``, ``data_seed``, ``content_hash``, and with a
flux table ``flux_table_source`` (``synthetic-exact``, ``spectra``, ``templates``; for templates
also ``flux_table_fit_from``: ``flux`` or ``phot``).

Writing lives in ``study.data.writer`` (re-exported here): identical content gives a
byte-identical file, and ``content_hash`` depends on content only.
"""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

if TYPE_CHECKING:  # torch is imported where it is used, so converters start fast and small
    import torch

from study.data.layout import BANDS, FORMAT, IMAGE_SHAPE, SOURCES, SPLITS
from study.data.writer import (  # re-exported: the dataset API is one import
    CORE_DATASETS,
    IMAGE_CHUNK,
    READ_ROWS,
    DatasetWriter,
    check_edges,
    content_hash,
    digest_blocks,
    digest_dataset,
    draw_split,
    hashed_attrs,
    write_dataset,
)
from study.errors import UserError
from study.files import atomic_write, refuse_existing

__all__ = [
    "BANDS",
    "FORMAT",
    "IMAGE_CHUNK",
    "IMAGE_SHAPE",
    "READ_ROWS",
    "SOURCES",
    "SPLITS",
    "DatasetInfo",
    "DatasetWriter",
    "SplitData",
    "batch_indices",
    "digest_dataset",
    "draw_split",
    "load_split",
    "read_info",
    "resplit",
    "validate",
    "write_dataset",
]


@dataclass
class DatasetInfo:
    """What a training run needs to know about a file, read from its attributes and `split`."""

    path: Path
    n: int
    bin_edges: np.ndarray = field(repr=False)  # (C+1,), redshift
    n_bins: int
    has_flux_table: bool
    split_counts: dict[str, int]
    source: str
    data_seed: int
    content_hash: str
    image_dtype: str  # "float32" or "float16"
    pixel_scale_arcsec: float = 0.396
    truth_fields: list[str] = field(default_factory=list)
    has_phot: bool = False  # measured photometry phot/phot_err (both or neither)
    has_masks: bool = False  # source_mask: the central source's segment (study.data.masks)
    # what the flux table was computed from: "synthetic-exact", "spectra" or "templates" (None
    # without a table); a file written before the attribute existed gets the only kind it could
    # hold then (synthetic-exact for a synthetic file, spectra otherwise)
    flux_table_source: str | None = None
    flux_table_fit_from: str | None = None  # templates only: the photometry fitted, flux or phot


@dataclass
class SplitData:
    """One split held on a device: images (n, 5, 64, 64), ebv (n,), zs (n,), flux_table (n, 5, C)."""

    images: torch.Tensor
    ebv: torch.Tensor
    zs: torch.Tensor
    flux_table: torch.Tensor | None
    ids: np.ndarray  # (n,) int64
    index: np.ndarray  # (n,) int64 row numbers in the file
    # (n, 64, 8) uint8 packed central-source masks (``source_mask``), loaded on request
    masks: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.zs.shape[0])


def _open(path: str | os.PathLike) -> h5py.File:
    p = Path(path)
    if not p.is_file():
        raise UserError(
            f"{p}: no such file; check the path or build one with "
            "`python -m study.data convert` / `python -m study.data universe`"
        )
    try:
        return h5py.File(p, "r")
    except OSError as e:
        raise UserError(
            f"{p}: not a readable HDF5 file ({str(e).splitlines()[0][:80]}); "
            "the file is truncated or corrupt: rebuild or re-copy it"
        ) from None


_DTYPES = {
    "zs": ("float64",),
    "ebv": ("float32",),
    "flux": ("float32",),
    "split": ("uint8",),
    "id": ("int64",),
    "images": ("float32", "float16"),
    "flux_table": ("float32",),
    "phot": ("float32",),
    "phot_err": ("float32",),
    "source_mask": ("uint8",),
}
OPTIONAL_DATASETS = (
    "flux_table",
    "phot",
    "phot_err",
    "source_mask",
)  # may be absent; checked and hashed when present
_REBUILD = "rebuild it with `python -m study.data convert` or `python -m study.data universe`"


def _structure(f: h5py.File, p: Path) -> DatasetInfo:
    """Check attributes, dataset presence, dtypes and shapes (cheap: reads only `split`)."""
    for key in ("format", "bands", "bin_edges", "pixel_scale_arcsec", "source", "data_seed"):
        if key not in f.attrs:
            raise UserError(f"{p}: file attribute '{key}' is missing; {_REBUILD}")
    fmt = f.attrs["format"]
    if fmt != FORMAT:
        raise UserError(f"{p}: attribute 'format' is {fmt!r}, expected {FORMAT!r}; {_REBUILD}")
    if f.attrs["bands"] != BANDS:
        raise UserError(f"{p}: attribute 'bands' is {f.attrs['bands']!r}, expected {BANDS!r}")
    edges = check_edges(f.attrs["bin_edges"], str(p))
    for name in (*CORE_DATASETS, *OPTIONAL_DATASETS):
        if name not in f:
            if name in OPTIONAL_DATASETS:
                continue
            raise UserError(f"{p}: dataset '{name}' is missing; {_REBUILD}")
        if not isinstance(f[name], h5py.Dataset) or f[name].dtype.name not in _DTYPES[name]:
            got = getattr(f[name], "dtype", "a group")
            raise UserError(
                f"{p}: dataset '{name}' has dtype {got}, expected {'/'.join(_DTYPES[name])}; {_REBUILD}"
            )
    if ("phot" in f) != ("phot_err" in f):
        raise UserError(
            f"{p}: datasets 'phot' and 'phot_err' come together, only one is present; "
            "add both with `python -m study.data photometry` on a file without them"
        )
    n = f["zs"].shape[0] if f["zs"].ndim == 1 else -1
    c = edges.size - 1
    expect = {
        "images": (n, *IMAGE_SHAPE),
        "zs": (n,),
        "ebv": (n,),
        "flux": (n, 5),
        "split": (n,),
        "id": (n,),
        "flux_table": (n, 5, c),
        "phot": (n, 5),
        "phot_err": (n, 5),
        "source_mask": (n, IMAGE_SHAPE[1], IMAGE_SHAPE[2] // 8),  # packed bits
    }
    for name, shape in expect.items():
        if name in f and f[name].shape != shape:
            raise UserError(
                f"{p}: dataset '{name}' has shape {f[name].shape}, expected {shape} "
                f"(N={n} from 'zs', C={c} from 'bin_edges'); {_REBUILD}"
            )
    if n < 1:
        raise UserError(f"{p}: dataset 'zs' is empty; {_REBUILD}")
    split = f["split"][:]
    counts = {name: int(np.count_nonzero(split == code)) for name, code in SPLITS.items()}
    truth = sorted(f["truth"].keys()) if "truth" in f else []
    return DatasetInfo(
        path=p,
        n=n,
        bin_edges=edges,
        n_bins=c,
        has_flux_table="flux_table" in f,
        split_counts=counts,
        source=str(f.attrs["source"]),
        data_seed=int(f.attrs["data_seed"]),
        content_hash=str(f.attrs.get("content_hash", "")),
        image_dtype=f["images"].dtype.name,
        pixel_scale_arcsec=float(f.attrs["pixel_scale_arcsec"]),
        truth_fields=truth,
        has_phot="phot" in f,
        has_masks="source_mask" in f,
        flux_table_source=_table_source(f),
        flux_table_fit_from=_str_attr(f, "flux_table_fit_from"),
    )


def _str_attr(f: h5py.File, key: str) -> str | None:
    value = f.attrs.get(key)
    return None if value is None else str(value.decode() if isinstance(value, bytes) else value)


def _table_source(f: h5py.File) -> str | None:
    if "flux_table" not in f:
        return None
    stored = _str_attr(f, "flux_table_source")
    if stored is not None:
        return stored
    return "synthetic-exact" if str(f.attrs["source"]) == "synthetic" else "spectra"


def read_info(path: str | os.PathLike) -> DatasetInfo:
    """Read a file's summary, checking its attributes, datasets, dtypes and shapes (not pixels)."""
    with _open(path) as f:
        return _structure(f, Path(path))


def _blocks(ds: h5py.Dataset, p: Path) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (start, rows) in blocks of READ_ROWS; a read failure is a corrupt-file UserError."""
    for s in range(0, ds.shape[0], READ_ROWS):
        try:
            yield s, ds[s : s + READ_ROWS]
        except OSError as e:
            raise UserError(
                f"{p}: dataset '{ds.name.lstrip('/')}' cannot be read near index {s} "
                f"({str(e).splitlines()[0][:60]}); the file is corrupt: {_REBUILD}"
            ) from None


def _first_bad(p: Path, name: str, bad: np.ndarray, start: int, what: str, fix: str) -> None:
    if bad.any():
        i = start + int(np.argwhere(bad)[0][0])
        raise UserError(f"{p}: dataset '{name}' {what} at index {i}; {fix}")


def validate(path: str | os.PathLike, check_hash: bool = True) -> DatasetInfo:
    """Check everything a training run relies on; raise a UserError naming the first problem.

    Checked: the format attributes; every dataset present with its dtype and shape (N rows
    everywhere, C = len(bin_edges) - 1 bins); bin edges strictly increasing from >= 0; images
    finite; ``bin_edges[0] <= zs <= bin_edges[-1]``; ``ebv`` finite and >= 0; ``flux`` finite or
    NaN (unknown), never inf; ``split`` in {0, 1, 2} with all three splits non-empty; ``id``
    unique; ``flux_table`` finite, except that a whole band row ``flux_table[i, b, :]`` may be
    NaN, meaning band b is unusable for galaxy i (its Phi'_b(1) <= 0): the flux loss masks such
    rows. ``phot``/``phot_err`` (optional, together) finite or NaN, errors >= 0. With
    ``check_hash`` the content is re-hashed and compared with ``content_hash``.
    Each message names the file, the dataset, the first bad index and the fix.
    """
    p = Path(path)
    with _open(p) as f:
        info = _structure(f, p)
        edges = info.bin_edges
        hashes = {}
        names = sorted(k for k in (*CORE_DATASETS, *OPTIONAL_DATASETS) if k in f)
        names += [f"truth/{k}" for k in info.truth_fields]
        for name in sorted(names):
            check = functools.partial(_check_rows, p, name, edges=edges)
            hashes[name] = digest_blocks(_blocks(f[name], p), check)
        counts = info.split_counts
        for split, k in counts.items():
            if k == 0:
                raise UserError(
                    f"{p}: dataset 'split' has no '{split}' rows; redraw it with "
                    "`python -m study.data split FILE --data-seed S --out NEW`"
                )
        ids = f["id"][:]
        order = np.argsort(ids, kind="stable")
        dup = np.flatnonzero(np.diff(ids[order]) == 0)
        if dup.size:
            i = int(order[dup[0] + 1])
            raise UserError(
                f"{p}: dataset 'id' repeats id {ids[i]} at index {i}; ids must be unique"
            )
        if check_hash:
            digests = [(k, f[k].dtype, f[k].shape, h.digest()) for k, h in hashes.items()]
            attrs = hashed_attrs(f.attrs) | {"bin_edges": edges}
            if content_hash(digests, attrs) != info.content_hash:
                raise UserError(
                    f"{p}: attribute 'content_hash' does not match the content (modified or "
                    f"corrupt file); {_REBUILD}"
                )
    return info


def _check_rows(p: Path, name: str, s: int, a: np.ndarray, edges: np.ndarray) -> None:
    """Content checks of one block of rows ``[s, s + len(a))`` of dataset ``name``."""
    regen = "fix the source data and convert again"
    if name == "images":
        bad = ~np.isfinite(a).reshape(len(a), -1).all(axis=1)
        _first_bad(p, name, bad, s, "has NaN/inf pixels", regen)
    elif name == "zs":
        bad = ~((a >= edges[0]) & (a <= edges[-1]))
        _first_bad(
            p,
            name,
            bad,
            s,
            f"is NaN or outside [{edges[0]:g}, {edges[-1]:g}]",
            "drop those galaxies or widen the bins",
        )
    elif name == "ebv":
        _first_bad(p, name, ~(a >= 0) | ~np.isfinite(a), s, "is NaN, inf or negative", regen)
    elif name == "flux":
        _first_bad(p, name, np.isinf(a).any(axis=1), s, "is infinite (use NaN for unknown)", regen)
    elif name == "split":
        _first_bad(p, name, a > 2, s, "is not 0/1/2", "redraw it with `python -m study.data split`")
    elif name in ("phot", "phot_err"):  # measured photometry: finite, or NaN where unmeasured
        bad = np.isinf(a).any(axis=1) | ((a < 0).any(axis=1) if name == "phot_err" else False)
        fix = "measure it again: `python -m study.data photometry` on the file without it"
        _first_bad(p, name, bad, s, "is infinite (or a negative error)", fix)
    elif name == "flux_table":
        nan = np.isnan(a)
        partial = nan.any(axis=2) & ~nan.all(axis=2)
        bad = partial.any(axis=1) | np.isinf(a).any(axis=(1, 2))
        _first_bad(
            p,
            name,
            bad,
            s,
            "has inf or a partly-NaN band row (only whole-row NaN is allowed)",
            "rebuild the flux table from the spectra (--spectra)",
        )


def load_split(
    path: str | os.PathLike,
    split: str,
    device: str | torch.device = "cpu",
    image_dtype: torch.dtype | None = None,
    masks: bool = False,
) -> SplitData:
    """Load one split onto ``device`` in one go, reading the file in blocks of READ_ROWS rows.

    Args:
        path: a photoz-study/1 file (structure checked; run ``validate`` once for the content).
        split: "train", "val" or "test".
        device: where the tensors live (the whole split stays there during training).
        image_dtype: torch.float32 (default) or torch.float16 for ``images`` (half the memory).
        masks: also load ``source_mask`` (packed, (n, 64, 8) uint8); a UserError without one.
    """
    import torch

    image_dtype = torch.float32 if image_dtype is None else image_dtype
    if split not in SPLITS:
        raise UserError(f"split must be one of {tuple(SPLITS)}, got {split!r}")
    p = Path(path)
    device = torch.device(device)
    with _open(p) as f:
        info = _structure(f, p)
        index = np.flatnonzero(f["split"][:] == SPLITS[split]).astype(np.int64)
        n = index.size
        images = torch.empty((n, *IMAGE_SHAPE), dtype=image_dtype, device=device)
        _gather(f["images"], index, images, p)
        table = None
        if info.has_flux_table:
            table = torch.empty((n, 5, info.n_bins), dtype=torch.float32, device=device)
            _gather(f["flux_table"], index, table, p)
        packed = None
        if masks:
            if not info.has_masks:
                raise UserError(
                    f"{p}: dataset 'source_mask' is missing (augment.background=segmentation "
                    "needs it); add it with `python -m study.data masks FILE`"
                )
            packed = torch.empty((n, *f["source_mask"].shape[1:]), dtype=torch.uint8, device=device)
            _gather(f["source_mask"], index, packed, p)
        zs = torch.from_numpy(f["zs"][:][index].astype(np.float32)).to(device)
        ebv = torch.from_numpy(f["ebv"][:][index]).to(device)
        ids = f["id"][:][index]
    return SplitData(
        images=images, ebv=ebv, zs=zs, flux_table=table, ids=ids, index=index, masks=packed
    )


def _gather(ds: h5py.Dataset, index: np.ndarray, out: torch.Tensor, p: Path) -> None:
    """Copy rows ``index`` (sorted) of ``ds`` into ``out``, reading contiguous blocks."""
    import torch

    if index.size == 0:
        return
    k = 0
    for s in range(int(index[0]) - int(index[0]) % READ_ROWS, int(index[-1]) + 1, READ_ROWS):
        lo, hi = np.searchsorted(index, [s, s + READ_ROWS])
        if hi == lo:
            continue
        e = int(index[hi - 1]) + 1
        try:
            block = ds[s:e]
        except OSError:
            raise UserError(
                f"{p}: dataset '{ds.name.lstrip('/')}' cannot be read near index {s}; "
                f"the file is corrupt: {_REBUILD}"
            ) from None
        rows = torch.from_numpy(np.ascontiguousarray(block[index[lo:hi] - s]))
        out[k : k + hi - lo].copy_(rows)
        k += hi - lo


def batch_indices(
    n: int,
    batch_size: int,
    generator: torch.Generator,
    shuffle: bool = True,
    drop_last: bool = False,
) -> list[torch.Tensor]:
    """Index tensors for one epoch (on the generator's device), from one ``torch.randperm``."""
    import torch

    dev = generator.device
    order = (
        torch.randperm(n, generator=generator, device=dev)
        if shuffle
        else torch.arange(n, device=dev)
    )
    batches = list(torch.split(order, batch_size))
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches.pop()
    return batches


def resplit(
    src: str | os.PathLike, out: str | os.PathLike, data_seed: int, *, overwrite: bool = False
) -> Path:
    """Copy ``src`` to a new file ``out`` with the split redrawn from ``data_seed``.

    Every dataset is carried over as it is (``phot``/``phot_err`` and ``source_mask`` too, when
    ``src`` has them).
    """
    src, out = Path(src), refuse_existing(out, overwrite=overwrite, source=src)
    info = read_info(src)
    split = draw_split(info.n, data_seed)
    with _open(src) as f:
        truth = {k: (f[f"truth/{k}"].shape[1:], f[f"truth/{k}"].dtype) for k in info.truth_fields}
        writer = DatasetWriter(
            out,
            info.n,
            bin_edges=info.bin_edges,
            source=info.source,
            data_seed=data_seed,
            pixel_scale_arcsec=info.pixel_scale_arcsec,
            image_dtype=info.image_dtype,
            with_flux_table=info.has_flux_table,
            with_phot=info.has_phot,
            with_masks=info.has_masks,
            truth=truth,
            overwrite=overwrite,
            flux_table_source=info.flux_table_source,
            flux_table_fit_from=info.flux_table_fit_from,
        )
        with writer:
            for s in range(0, info.n, READ_ROWS):
                rows = slice(s, s + READ_ROWS)
                table = f["flux_table"][rows] if info.has_flux_table else None
                phot = {k: f[k][rows] for k in ("phot", "phot_err")} if info.has_phot else {}
                mask = {"source_mask": f["source_mask"][rows]} if info.has_masks else {}
                writer.write(
                    s,
                    images=f["images"][rows],
                    zs=f["zs"][rows],
                    ebv=f["ebv"][rows],
                    flux=f["flux"][rows],
                    split=split[rows],
                    ids=f["id"][rows],
                    flux_table=table,
                    truth={k: f[f"truth/{k}"][rows] for k in info.truth_fields},
                    **phot,
                    **mask,
                )
    return out


def amend_copy(
    src: str | os.PathLike, dst: str | os.PathLike, edit: Callable[[h5py.File], None]
) -> Path:
    """Add to a photoz-study/1 file without touching the user's bytes until the end.

    ``edit`` changes a copy of ``src`` opened read-write (it must leave ``content_hash`` right,
    as ``aperture.add_photometry`` and ``templates.add_template_table`` do); the copy is
    validated, flushed to disk and renamed onto ``dst`` (``src`` itself for an in-place
    addition). An exception, or a copy that does not validate, leaves ``src`` and ``dst`` as
    they were.
    """
    src, dst = Path(src), Path(dst)

    def amended(tmp: Path) -> None:
        shutil.copyfile(src, tmp)
        with h5py.File(tmp, "r+") as f:
            edit(f)
        validate(tmp)  # what is renamed into place is a valid file, hash included
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())

    atomic_write(dst, amended)
    return dst


def file_content_hash(f: h5py.File, digests: dict[str, Any]) -> str:
    """The file's content hash from per-dataset digests (``writer.content_hash``, as validate)."""
    attrs = hashed_attrs(f.attrs)
    attrs["bin_edges"] = check_edges(attrs["bin_edges"], f.filename)
    items = [(k, f[k].dtype, f[k].shape, h.digest()) for k, h in digests.items()]
    return content_hash(items, attrs)
