"""Write a photoz-study/1 file: streamed in row chunks, atomic, byte-identical for identical content.

Identical content gives a byte-identical file: no timestamps (``track_times=False``), fixed
chunk shapes, chunks allocated at creation (so the layout does not depend on write order),
attributes written in a fixed order. ``content_hash`` is a SHA-256 over every dataset's name,
dtype, shape and bytes and over the other attributes, so it depends on content only. The layout
itself is described in ``study.data.dataset``, which re-exports everything here.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from study.data.layout import (
    BANDS,
    FIT_INPUTS,
    FLUX_TABLE_SOURCES,
    FORMAT,
    IMAGE_SHAPE,
    MASK,
    MASK_ATTRS,
    MEASURED,
    PHOT_ATTRS,
    SOURCES,
)
from study.errors import UserError
from study.files import refuse_existing, temporary_path

IMAGE_CHUNK = 32  # galaxies per HDF5 chunk of `images`: 32 x 80 KiB = 2.6 MB (float32)
READ_ROWS = 4096  # galaxies per read when scanning or loading: ~330 MB of float32 images
CORE_DATASETS = (  # every file has these; flux_table, phot/phot_err, source_mask, truth/ optional
    "images",
    "zs",
    "ebv",
    "flux",
    "split",
    "id",
)


def draw_split(
    n: int, data_seed: int, test_frac: float = 0.2, n_val: int = 20000, val_frac: float = 0.04
) -> np.ndarray:
    """Draw the train/validation/test split, fixed by the data seed alone.

    ``ceil(test_frac * n)`` galaxies go to test (121,543 of 607,712 as in the paper); validation
    takes ``min(n_val, ceil(val_frac * n))`` of the rest (20,000 for the paper's set, 4% of a
    small set); the remainder trains.

    Returns:
        uint8 (n,): 0 train, 1 validation, 2 test.
    """
    if n < 3:
        raise UserError(f"a split needs at least 3 galaxies, got n={n}; use a larger input")
    perm = np.random.default_rng(int(data_seed)).permutation(n)
    n_test = min(n - 2, max(1, int(np.ceil(test_frac * n))))
    n_v = min(n - n_test - 1, n_val, max(1, int(np.ceil(val_frac * n))))
    split = np.zeros(n, np.uint8)
    split[perm[:n_test]] = 2
    split[perm[n_test : n_test + n_v]] = 1
    return split


def dataset_properties(chunks: tuple[int, ...] | None) -> h5py.h5p.PropDCID:
    """Dataset creation properties: no timestamps, chunks allocated up front in index order."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    if chunks is not None:
        dcpl.set_chunk(chunks)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    dcpl.set_obj_track_times(False)
    return dcpl


def create_dataset(
    f: h5py.File,
    name: str,
    shape: tuple[int, ...],
    dtype: np.dtype,
    chunks: tuple[int, ...] | None,
    attrs: Mapping[str, Any] | None = None,
) -> None:
    """An empty dataset with ``dataset_properties(chunks)``, then its attributes in order."""
    space = h5py.h5s.create_simple(shape)
    tid = h5py.h5t.py_create(dtype, logical=True)
    h5py.h5d.create(f.id, name.encode(), tid, space, dcpl=dataset_properties(chunks))
    for key, value in (attrs or {}).items():
        f[name].attrs[key] = value


def check_edges(bin_edges: Any, where: str) -> np.ndarray:
    edges = np.asarray(bin_edges, np.float64)
    if edges.ndim != 1 or edges.size < 2 or not np.all(np.isfinite(edges)):
        raise UserError(f"{where}: field 'bin_edges' must be a finite 1-D array of >= 2 edges")
    bad = np.flatnonzero(np.diff(edges) <= 0)
    if bad.size or edges[0] < 0:
        i = int(bad[0]) + 1 if bad.size else 0
        raise UserError(
            f"{where}: field 'bin_edges' is not increasing from >= 0 at index {i}; "
            "pass strictly increasing redshift edges"
        )
    return edges


class DatasetWriter:
    """Stream a photoz-study/1 file in row chunks; atomic (temp name, renamed on success).

    Use as a context manager. ``write(start, ...)`` fills rows ``[start, start + m)``; every row
    must be written once before the context exits. On an exception the temporary file is
    deleted and nothing appears at ``path``. ``with_phot`` adds ``phot``/``phot_err`` (N, 5)
    float32 nanomaggies, measured by ``study.data.aperture.measure`` (attributes
    ``layout.PHOT_ATTRS``); without it the file is byte for byte what it was before they
    existed. ``flux_table_source`` (with a flux table): ``synthetic-exact``, ``spectra`` or
    ``templates`` (then ``flux_table_fit_from``: ``flux`` or ``phot``); None means the only
    tables that existed before the attribute did: ``synthetic-exact`` for a synthetic file,
    ``spectra`` otherwise.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        n: int,
        *,
        bin_edges: Any,
        source: str,
        data_seed: int,
        pixel_scale_arcsec: float = 0.396,
        image_dtype: str = "float32",
        with_flux_table: bool = False,
        with_phot: bool = False,
        truth: dict[str, tuple[tuple[int, ...], Any]] | None = None,
        overwrite: bool = False,
        flux_table_source: str | None = None,
        flux_table_fit_from: str | None = None,
        with_masks: bool = False,
    ) -> None:
        self.path = refuse_existing(path, overwrite=overwrite)
        if n < 1:
            raise UserError(f"{self.path}: field 'n' must be >= 1, got {n}")
        if image_dtype not in ("float32", "float16"):
            raise UserError(f"image_dtype must be 'float32' or 'float16', got {image_dtype!r}")
        if source not in SOURCES:
            raise UserError(f"source must be one of {SOURCES}, got {source!r}")
        self.n = int(n)
        self.edges = check_edges(bin_edges, str(self.path))
        self.attrs: dict[str, Any] = {
            "format": FORMAT,
            "bands": BANDS,
            "bin_edges": self.edges,
            "pixel_scale_arcsec": float(pixel_scale_arcsec),
            "source": source,
            "data_seed": int(data_seed),
        }
        self.attrs |= table_attrs(with_flux_table, source, flux_table_source, flux_table_fit_from)
        c = self.edges.size - 1
        self.specs: dict[str, tuple[tuple[int, ...], np.dtype, tuple[int, ...] | None]] = {
            "images": (
                (n, *IMAGE_SHAPE),
                np.dtype(image_dtype),
                (min(n, IMAGE_CHUNK), *IMAGE_SHAPE),
            ),
            "zs": ((n,), np.dtype("<f8"), None),
            "ebv": ((n,), np.dtype("<f4"), None),
            "flux": ((n, 5), np.dtype("<f4"), None),
            "split": ((n,), np.dtype("u1"), None),
            "id": ((n,), np.dtype("<i8"), None),
        }
        if with_flux_table:
            self.specs["flux_table"] = ((n, 5, c), np.dtype("<f4"), None)
        self.dataset_attrs: dict[str, Mapping[str, Any]] = {}
        if with_phot:
            for name in MEASURED:
                self.specs[name] = ((n, 5), np.dtype("<f4"), None)
                self.dataset_attrs[name] = PHOT_ATTRS
        if with_masks:  # (n, 64, 8) packed bits, study.data.masks
            self.specs[MASK] = ((n, IMAGE_SHAPE[1], IMAGE_SHAPE[2] // 8), np.dtype("u1"), None)
            self.dataset_attrs[MASK] = MASK_ATTRS
        for name, (shape, dtype) in sorted((truth or {}).items()):
            self.specs[f"truth/{name}"] = ((n, *tuple(shape)), np.dtype(dtype), None)
        self.tmp = temporary_path(self.path)
        self.file: h5py.File | None = None
        self.written = np.zeros(n, bool)
        self._next = 0  # rows written in order so far: hash on the fly while writes are in order
        self._hashers = {name: hashlib.sha256() for name in self.specs}
        self._pool: ThreadPoolExecutor | None = None  # the hashing thread, started on first write

    def __enter__(self) -> DatasetWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = h5py.File(self.tmp, "w", track_order=False)
        for name, (shape, dtype, chunks) in self.specs.items():
            if name.startswith("truth/") and "truth" not in self.file:
                self.file.create_group("truth", track_times=False)
            create_dataset(self.file, name, shape, dtype, chunks, self.dataset_attrs.get(name))
        return self

    def write(
        self,
        start: int,
        *,
        images: np.ndarray,
        zs: np.ndarray,
        ebv: np.ndarray,
        flux: np.ndarray,
        split: np.ndarray,
        ids: np.ndarray,
        flux_table: np.ndarray | None = None,
        phot: np.ndarray | None = None,
        phot_err: np.ndarray | None = None,
        truth: dict[str, np.ndarray] | None = None,
        source_mask: np.ndarray | None = None,
    ) -> None:
        """Write rows ``[start, start + len(zs))``; arrays are cast to the stored dtypes."""
        assert self.file is not None, "use DatasetWriter as a context manager"
        m = len(zs)
        rows: dict[str, Any] = {"images": images, "zs": zs, "ebv": ebv, "flux": flux}
        rows |= {"split": split, "id": ids}
        if "flux_table" in self.specs:
            if flux_table is None:
                raise ValueError("this writer has a flux_table: pass flux_table=")
            rows["flux_table"] = flux_table
        if "phot" in self.specs:
            if phot is None or phot_err is None:
                raise ValueError("this writer has phot/phot_err: pass phot= and phot_err=")
            rows |= {"phot": phot, "phot_err": phot_err}
        if MASK in self.specs:
            if source_mask is None:
                raise ValueError("this writer has source_mask: pass source_mask= (packed bits)")
            rows[MASK] = source_mask
        for name, value in (truth or {}).items():
            rows[f"truth/{name}"] = value
        missing = [k for k in self.specs if k not in rows]
        if missing or not 0 <= start <= self.n - m:
            raise ValueError(f"write({start}, m={m}): missing {missing} or rows out of range")
        arrays: dict[str, np.ndarray] = {}
        for name, value in rows.items():
            shape, dtype, _ = self.specs[name]
            with np.errstate(over="ignore"):  # float16 overflow is reported just below
                arr = np.ascontiguousarray(np.asarray(value).astype(dtype, copy=False))
            if arr.shape != (m, *shape[1:]):
                raise ValueError(f"{name}: shape {arr.shape}, expected {(m, *shape[1:])}")
            if name == "images" and dtype == np.float16:
                self._check_float16(start, np.asarray(value), arr)
            arrays[name] = arr
        # in order: hash on a thread (hashlib releases the GIL) while HDF5 writes the same
        # arrays; both only read them, and the hash is done before write() returns
        hashing = self._hash_thread().submit(self._hash, arrays) if start == self._next else None
        try:
            for name, arr in arrays.items():
                self.file[name][start : start + m] = arr
        finally:
            if hashing is not None:
                hashing.result()
        self._next = self._next + m if start == self._next else -1
        self.written[start : start + m] = True

    def _hash_thread(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="content-hash")
        return self._pool

    def _hash(self, arrays: dict[str, np.ndarray]) -> None:
        for name, arr in arrays.items():
            self._hashers[name].update(arr.data)  # contiguous: hashed in place, no copy

    def _check_float16(self, start: int, src: np.ndarray, arr: np.ndarray) -> None:
        bad = np.isinf(arr) & np.isfinite(src)
        if bad.any():
            i = start + int(np.argwhere(bad)[0][0])
            raise UserError(
                f"{self.path}: field 'images' overflows float16 at index {i}; "
                "use image_dtype float32 (--dtype float32)"
            )

    def _content_hash(self) -> str:
        assert self.file is not None
        digests = []
        for name in self.specs:
            shape, dtype, _ = self.specs[name]
            if self._next != self.n:  # out-of-order writes: hash by re-reading the file
                self._hashers[name] = digest_dataset(self.file[name])
            digests.append((name, dtype, shape, self._hashers[name].digest()))
        return content_hash(digests, self.attrs)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        assert self.file is not None
        try:
            if exc_type is None:
                if not self.written.all():
                    i = int(np.argmin(self.written))
                    raise ValueError(f"{self.path}: row {i} was never written")
                for key, value in self.attrs.items():
                    self.file.attrs[key] = value
                self.file.attrs["content_hash"] = self._content_hash()
            self.file.close()
            if exc_type is None:
                os.replace(self.tmp, self.path)
        finally:
            if self._pool is not None:
                self._pool.shutdown()
                self._pool = None
            if self.tmp.exists():
                self.file.close()
                self.tmp.unlink()


HASHED_ATTRS = ("format", "bands", "bin_edges", "pixel_scale_arcsec", "source", "data_seed")
# hashed when present: a file written before they existed keeps its hash
OPTIONAL_HASHED_ATTRS = ("flux_table_source", "flux_table_fit_from")


def table_attrs(
    with_table: bool, source: str, table_source: str | None, fit_from: str | None
) -> dict[str, str]:
    """The flux-table attributes of a new file (checked), empty without a table."""
    if not with_table:
        return {}
    if table_source is None:  # the two kinds that existed before the attribute did
        table_source = "synthetic-exact" if source == "synthetic" else "spectra"
    if table_source not in FLUX_TABLE_SOURCES:
        raise ValueError(f"flux_table_source must be in {FLUX_TABLE_SOURCES}: {table_source!r}")
    wanted = FIT_INPUTS if table_source == "templates" else (None,)
    if fit_from not in wanted:
        raise ValueError(f"flux_table_fit_from must be in {wanted} here, got {fit_from!r}")
    out = {"flux_table_source": table_source}
    return out | ({"flux_table_fit_from": fit_from} if fit_from is not None else {})


def hashed_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The attributes ``content_hash`` covers, taken from a file's (or a writer's) attributes."""
    out = {key: attrs[key] for key in HASHED_ATTRS}
    return out | {key: attrs[key] for key in OPTIONAL_HASHED_ATTRS if key in attrs}


def content_hash(
    digests: Iterable[tuple[str, np.dtype, tuple[int, ...], bytes]], attrs: Mapping[str, Any]
) -> str:
    """The file's ``content_hash``: SHA-256 over each dataset's (name, dtype, shape, SHA-256 of
    its bytes), in name order, then over the attributes of ``HASHED_ATTRS`` and those of
    ``OPTIONAL_HASHED_ATTRS`` that are present.

    The writer feeds it the digests it computed while writing; ``dataset.validate`` the ones it
    computes while reading the file back: the same function, so the two cannot drift.
    """
    h = hashlib.sha256()
    for name, dtype, shape, digest in sorted(digests, key=lambda d: d[0]):
        h.update(f"{name}|{np.dtype(dtype).str}|{tuple(shape)}|".encode())
        h.update(digest)
    for key in HASHED_ATTRS:
        h.update(f"{key}={_attr_bytes(attrs[key]).hex()};".encode())
    for key in OPTIONAL_HASHED_ATTRS:
        if key in attrs:
            h.update(f"{key}={_attr_bytes(attrs[key]).hex()};".encode())
    return h.hexdigest()


def digest_blocks(
    blocks: Iterable[tuple[int, np.ndarray]],
    on_block: Callable[[int, np.ndarray], None] | None = None,
) -> Any:
    """SHA-256 of a dataset's bytes from its ``(start, rows)`` blocks, in row order: the
    per-dataset digest ``content_hash`` takes (every reader of a file computes it here).

    ``on_block(start, rows)`` sees each block after it is hashed (``validate`` checks its
    rows there, so the file is read once).
    """
    h = hashlib.sha256()
    for s, a in blocks:
        block = np.ascontiguousarray(a)
        h.update(block.data)
        if on_block is not None:
            on_block(s, block)
    return h


def row_blocks(ds: h5py.Dataset) -> Iterator[tuple[int, np.ndarray]]:
    """A dataset's rows as ``(start, rows)`` blocks of ``READ_ROWS``."""
    for s in range(0, ds.shape[0], READ_ROWS):
        yield s, ds[s : s + READ_ROWS]


def digest_dataset(
    ds: h5py.Dataset, on_block: Callable[[int, np.ndarray], None] | None = None
) -> Any:
    """SHA-256 of a dataset's bytes read in blocks (``digest_blocks``, as ``validate`` hashes)."""
    return digest_blocks(row_blocks(ds), on_block)


def write_dataset(
    path: str | os.PathLike,
    *,
    images: np.ndarray,
    zs: np.ndarray,
    ebv: np.ndarray,
    flux: np.ndarray,
    split: np.ndarray,
    ids: np.ndarray,
    bin_edges: Any,
    source: str,
    data_seed: int,
    flux_table: np.ndarray | None = None,
    phot: np.ndarray | None = None,
    phot_err: np.ndarray | None = None,
    truth: dict[str, np.ndarray] | None = None,
    source_mask: np.ndarray | None = None,
    **kwargs: Any,
) -> Path:
    """Write a whole dataset in one chunk (small sets and tests); kwargs go to DatasetWriter.

    ``phot`` and ``phot_err`` come together (``aperture.measure(images)``) or not at all;
    ``source_mask`` is packed bits (``masks.pack(masks.measure_masks(images))``).
    """
    if (phot is None) != (phot_err is None):
        raise ValueError("phot and phot_err come together: pass both or neither")
    truth_spec = {k: (v.shape[1:], v.dtype) for k, v in (truth or {}).items()}
    with DatasetWriter(
        path,
        len(zs),
        bin_edges=bin_edges,
        source=source,
        data_seed=data_seed,
        with_flux_table=flux_table is not None,
        with_phot=phot is not None,
        with_masks=source_mask is not None,
        truth=truth_spec,
        **kwargs,
    ) as w:
        w.write(
            0,
            images=images,
            zs=zs,
            ebv=ebv,
            flux=flux,
            split=split,
            ids=ids,
            flux_table=flux_table,
            phot=phot,
            phot_err=phot_err,
            truth=truth,
            source_mask=source_mask,
        )
    return Path(path)


def _attr_bytes(value: Any) -> bytes:
    """Bytes of an attribute as written: str as UTF-8, numbers in their numpy form."""
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str):
        return np.asarray(value).tobytes()
    return np.asarray(value).tobytes()
