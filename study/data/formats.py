"""Converters from the three public layouts (SPEC 5) to a photoz-study/1 file.

- ``dey``: Dey et al.'s host of Pasquet's full set, ``sdss.npz`` with ``cube`` (N, 64, 64, 5)
  and ``labels``, a record array with columns ``z``, ``EBV``, ``specObjID`` (and ``ra``, ``dec``,
  ``dered_petro_r``, ...). ``labels`` is stored pickled: loading a pickle can run code, so it is
  read only with ``allow_pickle=True`` (``--allow-pickle``).
- ``pasquet``: Pasquet et al.'s example file (npz or HDF5): ``data`` (N, 64, 64, 5), ``z`` and
  ``ebv`` (N, 1) or (N,); ids are the row numbers.
- ``hayat``: Hayat et al.'s HDF5: ``images`` (N, 5, 107, 107) centre-cropped to 64 x 64,
  ``specz_redshift``, ``e_bv`` (N, 5): SDSS DR12's band extinctions A_b, made with the SFD98
  coefficients (5.155, 3.793, 2.751, 2.086, 1.479) = ``layout.EXTINCTION_R_SFD98``; E(B-V) is
  read back as their own code reads it (utils/sdss_dr12_galactic_reddening.py in
  mahayat/ssl-sky-surveys): mean_b(A_b / R_b^SFD98), the SFD98 E(B-V), to which they (and we:
  ``EXTINCTION_R``) apply the SF11 coefficients. Dividing by the SF11 set instead gave an
  E(B-V) about 1.19x too large. ``specObjID``.

Images are read in chunks (npz members are streamed through zipfile, never loaded whole), so a
600,000-galaxy input converts in bounded memory. ``flux`` (catalogue band fluxes, nanomaggies
as observed) is NaN unless the labels carry all five ``dered_petro_<band>`` magnitudes: SDSS
asinh magnitudes (SDSS system, dereddened with the SF11 R_b E(B-V) of DR8+), turned into maggies
with ``kcorrect.utils.sdss_asinh_to_maggies`` and reddened back with R_b E(B-V) (no AB offset:
``flux`` stays in the catalogue's system; the template fit applies kcorrect's
``sdss_ab_correct``). The flux table comes from an optional spectra file (``--spectra``: HDF5
with ``specObjID`` (M,), ``wave`` (L,) in A, ``flux`` (M, L) in erg/s/cm^2/A, on any common
scale; galaxies without a spectrum get all-NaN rows, masked by the flux loss), or from kcorrect
templates fitted to each galaxy's photometry (``flux_table="templates"``: the catalogue
``flux`` where the input carries it, else the measured ``phot``; ``study.data.templates``). The
file's ``flux_table_source`` (and ``flux_table_fit_from``) say which.

``phot``/``phot_err`` are measured from each converted chunk's cutouts as stored (after the
cast to ``image_dtype``) by ``study.data.aperture.measure`` with ``gain=None``: real cutouts
carry no gain (electrons per nanomaggy) here, so ``phot_err`` is the background-limited error,
without the source's own Poisson noise (too small for bright galaxies); ``python -m study.data
photometry --gain`` on a copy without them measures again with a known gain. ``source_mask``
(the central source's segment, ``study.data.masks``) is computed from the same stored cutouts,
unless ``masks=False`` (``--no-masks``).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from study.data import aperture
from study.data import masks as mask_mod
from study.data.dataset import DatasetWriter, draw_split
from study.data.layout import (
    BANDS,
    EXTINCTION_R,
    EXTINCTION_R_SFD98,
    bin_centers,
    bin_edges,
)
from study.errors import UserError
from study.files import refuse_existing

FORMATS = ("dey", "pasquet", "hayat")
TABLES = ("spectra", "templates")  # what convert builds the flux table from
CROP = 64


class _Npz:
    """Read-only view of an npz file's members without loading them: headers, and row streams."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.zip = zipfile.ZipFile(path)
        self.members = {n[:-4]: n for n in self.zip.namelist() if n.endswith(".npy")}

    def header(self, key: str) -> tuple[tuple[int, ...], np.dtype, bool]:
        with self.zip.open(self.members[key]) as f:
            return _npy_header(f)

    def __contains__(self, key: str) -> bool:
        return key in self.members

    def read(self, key: str, allow_pickle: bool = False) -> np.ndarray:
        with np.load(self.path, allow_pickle=allow_pickle) as z:
            return z[key]

    def rows(self, key: str, chunk: int) -> Iterator[np.ndarray]:
        """Stream a C-ordered array's rows, ``chunk`` at a time (decompressing as it goes)."""
        with self.zip.open(self.members[key]) as f:
            shape, dtype, _ = _npy_header(f)
            row_bytes = int(np.prod(shape[1:])) * dtype.itemsize
            for s in range(0, shape[0], chunk):
                m = min(chunk, shape[0] - s)
                buf = f.read(m * row_bytes)
                if len(buf) != m * row_bytes:
                    raise UserError(f"{self.path}: member '{key}' is truncated near row {s}")
                yield np.frombuffer(buf, dtype).reshape(m, *shape[1:])


def _npy_header(f: Any) -> tuple[tuple[int, ...], np.dtype, bool]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    return tuple(shape), np.dtype(dtype), bool(fortran)


class _Source:
    """A catalogue in memory (zs, ebv, ids, flux) plus a chunked image stream."""

    def __init__(self, path: Path, image_key: str, n: int) -> None:
        self.path, self.image_key, self.n = path, image_key, n
        self.zs = np.empty(0)
        self.ebv = np.empty(0, np.float32)
        self.ids = np.empty(0, np.int64)
        self.flux = np.full((n, 5), np.nan, np.float32)

    def images(self, chunk: int) -> Iterator[np.ndarray]:
        """(m, 5, 64, 64) float32 blocks in order."""
        raise NotImplementedError


class _NpzSource(_Source):
    def __init__(self, path: Path, npz: _Npz, key: str, n: int) -> None:
        super().__init__(path, key, n)
        self.npz = npz

    def images(self, chunk: int) -> Iterator[np.ndarray]:
        for block in self.npz.rows(self.image_key, chunk):
            yield np.ascontiguousarray(block.transpose(0, 3, 1, 2), np.float32)


class _H5Source(_Source):
    def __init__(self, path: Path, key: str, n: int, crop: int, channels_last: bool) -> None:
        super().__init__(path, key, n)
        self.crop = crop  # pixels cut from each side (0, or 21 for Hayat's 107 x 107)
        self.channels_last = channels_last  # (N, 64, 64, 5) as Pasquet stores them

    def images(self, chunk: int) -> Iterator[np.ndarray]:
        with h5py.File(self.path, "r") as f:
            ds = f[self.image_key]
            for s in range(0, self.n, chunk):
                block = ds[s : s + chunk]
                if self.channels_last:
                    block = block.transpose(0, 3, 1, 2)
                c = self.crop
                yield np.ascontiguousarray(block[:, :, c : c + CROP, c : c + CROP], np.float32)


def _need(path: Path, keys: Any, key: str, layout: str) -> None:
    if key not in keys:
        raise UserError(f"{path}: key '{key}' is missing; a {layout} file needs it (see --help)")


def _shape(path: Path, key: str, shape: tuple[int, ...], expect: tuple[int | None, ...]) -> None:
    ok = len(shape) == len(expect) and all(
        e is None or s == e for s, e in zip(shape, expect, strict=False)
    )
    if not ok:
        want = "(" + ", ".join("N" if e is None else str(e) for e in expect) + ")"
        raise UserError(f"{path}: key '{key}' has shape {shape}, expected {want}")


def _column(path: Path, key: str, values: Any, n: int) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.shape != (n,):
        raise UserError(f"{path}: key '{key}' has shape {arr.shape}, expected ({n},) or ({n}, 1)")
    return arr


def _open_dey(path: Path, allow_pickle: bool) -> _Source:
    npz = _npz(path)
    for key in ("cube", "labels"):
        _need(path, npz, key, "dey (sdss.npz)")
    shape, _, fortran = npz.header("cube")
    _shape(path, "cube", shape, (None, 64, 64, 5))
    if fortran:
        raise UserError(f"{path}: key 'cube' is Fortran-ordered; re-save it C-ordered")
    _, ldtype, _ = npz.header("labels")
    if ldtype.hasobject and not allow_pickle:
        raise UserError(
            f"{path}: key 'labels' is a pickled array (loading a pickle can run code); "
            "pass --allow-pickle if you trust this file"
        )
    labels = npz.read("labels", allow_pickle=allow_pickle)
    if labels.dtype.names is None and labels.dtype.hasobject and labels.ndim == 0:
        labels = labels.item()  # a record array pickled as a 0-d object array
    names = {n.lower(): n for n in (getattr(labels.dtype, "names", None) or ())}
    for col in ("z", "ebv", "specobjid"):
        if col not in names:
            raise UserError(f"{path}: key 'labels' has no column '{col}'; it has {sorted(names)}")
    src = _NpzSource(path, npz, "cube", shape[0])
    src.zs = _column(path, "labels.z", labels[names["z"]], src.n).astype(np.float64)
    src.ebv = _column(path, "labels.EBV", labels[names["ebv"]], src.n).astype(np.float32)
    src.ids = _ids(path, "labels.specObjID", labels[names["specobjid"]], src.n)
    mags = [names.get(f"dered_petro_{b}") for b in BANDS]
    if all(mags):
        from kcorrect.utils import sdss_asinh_to_maggies

        dered = np.stack([np.asarray(labels[m], np.float64) for m in mags], axis=1)
        maggies = np.asarray(sdss_asinh_to_maggies(mag=dered), np.float64)  # dereddened
        redden = 10 ** (-0.4 * EXTINCTION_R * src.ebv[:, None].astype(np.float64))
        src.flux = (maggies * 1e9 * redden).astype(np.float32)  # nanomaggies as observed
    return src


def _npz(path: Path) -> _Npz:
    try:
        return _Npz(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise UserError(
            f"{path}: not a readable npz file ({e}); check --format and the file"
        ) from None


def _open_pasquet(path: Path) -> _Source:
    if h5py.is_hdf5(path):
        with h5py.File(path, "r") as f:
            for key in ("data", "z", "ebv"):
                _need(path, f, key, "pasquet")
            shape = f["data"].shape
            _shape(path, "data", shape, (None, 64, 64, 5))
            src: _Source = _H5Source(path, "data", shape[0], crop=0, channels_last=True)
            zs, ebv = f["z"][:], f["ebv"][:]
    else:
        npz = _npz(path)
        for key in ("data", "z", "ebv"):
            _need(path, npz, key, "pasquet")
        shape, _, fortran = npz.header("data")
        _shape(path, "data", shape, (None, 64, 64, 5))
        if fortran:
            raise UserError(f"{path}: key 'data' is Fortran-ordered; re-save it C-ordered")
        src = _NpzSource(path, npz, "data", shape[0])
        zs, ebv = npz.read("z"), npz.read("ebv")
    src.zs = _column(path, "z", zs, src.n).astype(np.float64)
    src.ebv = _column(path, "ebv", ebv, src.n).astype(np.float32)
    src.ids = np.arange(src.n, dtype=np.int64)
    return src


def _open_hayat(path: Path) -> _Source:
    _hdf5(path)
    with h5py.File(path, "r") as f:
        for key in ("images", "specz_redshift", "e_bv", "specObjID"):
            _need(path, f, key, "hayat")
        shape = f["images"].shape
        _shape(path, "images", shape, (None, 5, 107, 107))
        n = shape[0]
        src = _H5Source(path, "images", n, crop=(107 - CROP) // 2, channels_last=False)
        src.zs = _column(path, "specz_redshift", f["specz_redshift"][:], n).astype(np.float64)
        ext = np.asarray(f["e_bv"][:], np.float64)
        if ext.shape == (n, 5):  # DR12's A_b (SFD98 coefficients) -> E(B-V), as Hayat et al.
            ebv = hayat_ebv(ext)
        else:
            ebv = _column(path, "e_bv", ext, n)
        src.ebv = ebv.astype(np.float32)
        src.ids = _ids(path, "specObjID", f["specObjID"][:], n)
    return src


def hayat_ebv(extinction: np.ndarray) -> np.ndarray:
    """E(B-V) (N,) from Hayat et al.'s ``e_bv`` (N, 5), DR12's A_b, exactly as their code reads it:
    ``np.mean(A_b / R_dr12)`` with the SFD98 coefficients of DR12 (``EXTINCTION_R_SFD98``)."""
    return np.mean(np.asarray(extinction, np.float64) / EXTINCTION_R_SFD98, axis=1)


def _hdf5(path: Path) -> None:
    try:
        with h5py.File(path, "r"):
            pass
    except OSError:
        raise UserError(
            f"{path}: not a readable HDF5 file (truncated or corrupt?); re-copy it"
        ) from None


def _ids(path: Path, key: str, values: Any, n: int) -> np.ndarray:
    arr = _column(path, key, values, n)
    if arr.dtype.kind not in "iu" or (arr.size and (arr.max() >= 2**63 or arr.min() < 0)):
        raise UserError(f"{path}: key '{key}' must hold non-negative integer ids below 2^63")
    ids = arr.astype(np.int64)
    order = np.argsort(ids, kind="stable")
    dup = np.flatnonzero(np.diff(ids[order]) == 0)
    if dup.size:
        i = int(order[dup[0] + 1])
        raise UserError(f"{path}: key '{key}' repeats id {ids[i]} at index {i}; ids must be unique")
    return ids


def _check_labels(src: _Source, z_max: float) -> None:
    p = src.path
    bad = np.flatnonzero(~((src.zs >= 0) & (src.zs <= z_max)))
    if bad.size:
        i = int(bad[0])
        raise UserError(
            f"{p}: redshift (z) is {src.zs[i]} at index {i}, outside [0, {z_max}] "
            f"({bad.size} such galaxies); drop them from the input first"
        )
    bad = np.flatnonzero(~(np.isfinite(src.ebv) & (src.ebv >= 0)))
    if bad.size:
        i = int(bad[0])
        raise UserError(f"{p}: E(B-V) is {src.ebv[i]} at index {i}; it must be finite and >= 0")


class _Spectra:
    """A spectra file matched to the catalogue by specObjID."""

    def __init__(self, path: Path, ids: np.ndarray) -> None:
        self.path = path
        _hdf5(path)
        with h5py.File(path, "r") as f:
            for key in ("specObjID", "wave", "flux"):
                _need(path, f, key, "spectra")
            self.wave = np.asarray(f["wave"][:], np.float64)
            spec_ids = np.asarray(f["specObjID"][:]).astype(np.int64)
            shape = f["flux"].shape
        if self.wave.ndim != 1 or not np.all(np.diff(self.wave) > 0):
            raise UserError(f"{path}: key 'wave' must be a 1-D increasing grid in Angstrom")
        _shape(path, "flux", shape, (spec_ids.size, self.wave.size))
        order = np.argsort(spec_ids, kind="stable")
        pos = np.clip(np.searchsorted(spec_ids[order], ids), 0, spec_ids.size - 1)
        found = spec_ids[order][pos] == ids
        if not found.any():
            raise UserError(
                f"{path}: key 'specObjID' matches none of the {ids.size} galaxies' ids; "
                "give the spectra of these galaxies (same specObjID)"
            )
        self.row = np.where(found, order[pos], -1)  # spectrum row per galaxy, -1 if none

    def table(self, start: int, stop: int, zs: np.ndarray, centers: np.ndarray) -> np.ndarray:
        from study.data.photometry import flux_table

        rows = self.row[start:stop]
        out = np.full((stop - start, 5, centers.size), np.nan, np.float32)
        have = np.flatnonzero(rows >= 0)
        if have.size:
            order = np.argsort(rows[have])
            with h5py.File(self.path, "r") as f:  # h5py reads increasing row lists
                spectra = np.empty((have.size, self.wave.size))
                spectra[order] = f["flux"][rows[have][order]]
            out[have] = flux_table(self.wave, spectra, zs[have], centers)
        return out


def convert(
    fmt: str,
    src_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    spectra: str | os.PathLike | None = None,
    flux_table: str | None = None,
    data_seed: int = 0,
    allow_pickle: bool = False,
    overwrite: bool = False,
    image_dtype: str = "float32",
    n_bins: int = 180,
    z_max: float = 0.4,
    chunk: int = 1024,
    progress: bool = True,
    masks: bool = True,
) -> Path:
    """Convert a public-layout file to photoz-study/1; every input check runs before any writing.

    Pixels are checked while streaming; a NaN/inf pixel aborts with the galaxy's index and
    leaves no output behind (the file is written under a temporary name and renamed at the end).

    Args:
        spectra: a spectra file: the flux table from them (``flux_table`` "spectra" or None).
        flux_table: None (a table only with ``spectra``), "spectra" (needs ``spectra``) or
            "templates" (kcorrect templates fitted to the catalogue ``flux``, else to ``phot``).
        masks: compute ``source_mask`` (``study.data.masks``) chunk by chunk; False leaves it
            out (add it later with ``python -m study.data masks``).
    """
    from tqdm import tqdm

    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {FORMATS}, got {fmt!r}")
    if flux_table is None and spectra is not None:
        flux_table = "spectra"
    if flux_table not in (None, *TABLES):
        raise UserError(f"--flux-table must be one of {TABLES}, got {flux_table!r}")
    if (flux_table == "spectra") != (spectra is not None):
        raise UserError(
            "--flux-table spectra needs --spectra FILE, and --spectra goes with it alone; "
            "for a table without spectra pass --flux-table templates"
        )
    src_path = Path(src_path)
    if not src_path.is_file():
        raise UserError(f"{src_path}: no such input file; check the path")
    out = refuse_existing(out, overwrite=overwrite, source=src_path)
    if fmt == "dey":
        src = _open_dey(src_path, allow_pickle)
    elif fmt == "pasquet":
        src = _open_pasquet(src_path)
    else:
        src = _open_hayat(src_path)
    _check_labels(src, z_max)
    spec = _Spectra(Path(spectra), src.ids) if spectra is not None else None
    edges = bin_edges(n_bins, z_max)
    centers = bin_centers(edges)
    split = draw_split(src.n, data_seed)
    fit_from = None
    if flux_table == "templates":
        from study.data import templates

        templates.check_centers(centers, str(src_path))
        # the catalogue fluxes where the input has them (dey's dered_petro_*), else the cutouts'
        fit_from = "flux" if np.isfinite(src.flux).all(axis=1).any() else "phot"
    writer = DatasetWriter(
        out,
        src.n,
        bin_edges=edges,
        source=fmt,
        data_seed=data_seed,
        image_dtype=image_dtype,
        with_flux_table=flux_table is not None,
        with_phot=True,
        with_masks=masks,
        overwrite=overwrite,
        flux_table_source=flux_table,
        flux_table_fit_from=fit_from,
    )
    with (
        writer,
        tqdm(total=src.n, unit="gal", desc="convert", disable=None if progress else True) as bar,
    ):
        start = 0
        for images in src.images(chunk):
            stop = start + len(images)
            bad = ~np.isfinite(images).reshape(len(images), -1).all(axis=1)
            if bad.any():
                i = start + int(np.argmax(bad))
                raise UserError(
                    f"{src_path}: key '{src.image_key}' has NaN/inf pixels at index {i}; "
                    "fix or drop that galaxy in the input"
                )
            rows = slice(start, stop)
            table = spec.table(start, stop, src.zs[rows], centers) if spec else None
            stored = images.astype(image_dtype, copy=False)  # measured as the file keeps them
            with np.errstate(over="ignore", invalid="ignore"):  # a float16 overflow is
                phot, phot_err = aperture.measure(stored)  # reported by the writer just below
            packed = None
            if masks:  # (an overflowed float16 chunk is refused by the writer: no masks needed)
                finite = np.isfinite(stored).all()
                packed = mask_mod.pack(mask_mod.measure_masks(stored)) if finite else None
                packed = np.zeros((len(stored), 64, 8), np.uint8) if packed is None else packed
            if fit_from is not None:
                flux, err = (src.flux[rows], None) if fit_from == "flux" else (phot, phot_err)
                table = templates.table_for_rows(
                    src.zs[rows], src.ebv[rows], flux, err, centers, fmt
                )
            writer.write(
                start,
                images=images,
                zs=src.zs[rows],
                ebv=src.ebv[rows],
                flux=src.flux[rows],
                split=split[rows],
                ids=src.ids[rows],
                flux_table=table,
                phot=phot,
                phot_err=phot_err,
                source_mask=packed,
            )
            bar.update(stop - start)
            start = stop
    return out
