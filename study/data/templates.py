"""The flux table without spectra: kcorrect templates fitted to each galaxy's photometry.

``python -m study.data flux-table FILE.h5 --from {flux,phot} [--out NEW.h5]`` adds one to a
photoz-study/1 file; ``convert --flux-table templates`` writes one while converting.

For each galaxy: its five band fluxes (the catalogue ``flux``, or the measured ``phot`` with
``phot_err``) are dereddened with the file's E(B-V) and the SF11 R_b (``layout.EXTINCTION_R``,
the convention of every converter and of the universe), turned into AB maggies (real SDSS data:
``kcorrect.utils.sdss_ab_correct``; the universe is AB by construction), and fitted with the
five kcorrect v4 templates at the spectroscopic redshift, non-negatively:
``kcorrect.kcorrect.Kcorrect(responses=[sdss_u0 .. sdss_z0]).fit_coeffs`` (a
``scipy.optimize.nnls`` per galaxy). The fitted observed-frame SED over the templates' whole
wavelength range (no spectrograph cut: ``spectra.REST_RANGE`` covers every rest wavelength the
filters see for bin centres up to ``Z_COVERED``) gives T exactly as for the universe
(``study.data.spectra.FluxTableMaker``, linear in the coefficients).

Filters: the fit uses kcorrect's SDSS responses (``sdss_u0``..``sdss_z0``, the 2.5 m system the
templates were built against, and the one catalogue magnitudes are in), T uses ours (speclite
``sdss2010``, SPEC 2), so T is the same functional of the SED as the training loss. This is
consistent because T[b, c] = Phi'_b(nu_c) / Phi'_b(1) is a ratio through one filter of one SED:
a small difference between the two filter sets enters only through the shape of the fitted
SED (second order), never as a band-flux offset. Measured on the universe (README, Data):
fitting with our own filters instead changes T by less than the fit's own error.

Extinction: the catalogue and measured fluxes are as observed; the fit is made to the
dereddened fluxes (kcorrect's templates are intrinsic SEDs), so the SED and T are the
intrinsic ones, the universe's convention (``study.universe.build``). Galactic extinction is a
smooth screen fixed in the observed frame: through one band it multiplies Phi'_b(nu) and
Phi'_b(1) by nearly the same factor 10^(-0.4 A_b), so it cancels from T at first order (what
remains is its slope across the band times the shift of the band's flux-weighted wavelength).
Fitting un-dereddened fluxes instead would tilt the fitted SED by E(B-V)(R_u - R_z), which
does change T; hence the dereddening.
"""

from __future__ import annotations

import argparse
import functools
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from tqdm import tqdm

from study.data.layout import BANDS, EXTINCTION_R, FIT_INPUTS, bin_centers
from study.errors import UserError
from study.files import refuse_existing

RESPONSES = tuple(f"sdss_{b}0" for b in BANDS)  # kcorrect's SDSS 2.5 m responses, for the fit
# fractional error floor per band added in quadrature (the calibration floors usually used with
# kcorrect on SDSS photometry); the catalogue ``flux`` carries no errors, so for it the floor
# alone weights the bands
ERROR_FLOOR = np.array([0.05, 0.02, 0.02, 0.02, 0.03])
FIT_DZ = 1e-3  # redshift step of kcorrect's design-matrix grid (linear between nodes)
BATCH = 4096  # galaxies per fit-and-table block: ~13 MB of table per block at 180 bins
Z_COVERED = 0.98  # bin centres up to here: (1 + z_c) * 1500 A (REST_RANGE[0]) < u's blue edge
# the design-matrix grid spans [0, FIT_Z_HI] whatever the block (a valid file's zs lie within its
# bins, which end near Z_COVERED): a galaxy's fit must not depend on which galaxies share its
# block, and a grid ending at the block's own max z moves its nodes by rounding (measured: T
# differed by one float32 ulp in 1% of entries between blocks of 5 and the whole file)
FIT_Z_HI = 1.0


@functools.lru_cache(maxsize=2)
def fitter(z_hi: float) -> Any:
    """kcorrect's ``Kcorrect`` on the SDSS responses for redshifts [0, z_hi] (a few seconds)."""
    import kcorrect.kcorrect

    n = max(2, int(np.ceil(z_hi / FIT_DZ)) + 1)
    return kcorrect.kcorrect.Kcorrect(
        responses=list(RESPONSES), redshift_range=[0.0, float(z_hi)], nredshift=n
    )


@functools.lru_cache(maxsize=2)
def table_maker(centers: tuple[float, ...]) -> Any:
    """``spectra.FluxTableMaker`` over the templates' whole wavelength range (no spectrograph cut)."""
    from study.data import spectra

    return spectra.FluxTableMaker(np.asarray(centers, np.float64), (0.0, np.inf))


def fit_input(
    flux: np.ndarray, err: np.ndarray | None, ebv: np.ndarray, ab_correct: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Dereddened AB maggies and inverse variances (N, 5) for the fit from observed nanomaggies.

    A band whose flux or error is not finite gets ivar 0 (the fit ignores it).

    Args:
        flux: (N, 5) nanomaggies as observed. err: (N, 5) their errors, or None (floor only).
        ebv: (N,) E(B-V). ab_correct: SDSS-system fluxes (real data) to AB (kcorrect's helper).
    """
    from kcorrect.utils import sdss_ab_correct

    dered = 10 ** (0.4 * EXTINCTION_R[None, :] * np.asarray(ebv, np.float64)[:, None])
    maggies = np.asarray(flux, np.float64) * 1e-9 * dered
    var = (ERROR_FLOOR * maggies) ** 2
    if err is not None:
        var = var + (np.asarray(err, np.float64) * 1e-9 * dered) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        ivar = np.where(np.isfinite(maggies) & np.isfinite(var) & (var > 0), 1 / var, 0.0)
    maggies = np.where(ivar > 0, maggies, 0.0)
    if ab_correct:  # float32 inside kcorrect: its own precision, as for any of its fits
        maggies, ivar = (np.asarray(a, np.float64) for a in sdss_ab_correct(maggies, ivar))
    return maggies, ivar


def fit_coeffs(zs: np.ndarray, maggies: np.ndarray, ivar: np.ndarray) -> np.ndarray:
    """Non-negative template coefficients (N, 5) at the redshifts zs (kcorrect's fit_coeffs)."""
    zs = np.asarray(zs, np.float64)
    z_hi = max(FIT_Z_HI, float(np.ceil(zs.max() / FIT_DZ) * FIT_DZ)) if zs.size else FIT_Z_HI
    kc = fitter(z_hi)
    if zs.size == 1:  # kcorrect returns a 1-D array for one galaxy
        return np.asarray(kc.fit_coeffs(zs[0], maggies[0], ivar[0]), np.float64)[None, :]
    return np.asarray(kc.fit_coeffs(redshift=zs, maggies=maggies, ivar=ivar), np.float64)


def check_centers(centers: np.ndarray, where: str) -> None:
    if np.max(centers) > Z_COVERED:
        raise UserError(
            f"{where}: bin centres reach z = {np.max(centers):.3g}, beyond the {Z_COVERED} the "
            "kcorrect templates' wavelength range covers for u; use bins up to z < 0.98"
        )


def template_table(
    zs: np.ndarray, maggies: np.ndarray, ivar: np.ndarray, centers: np.ndarray
) -> np.ndarray:
    """T (N, 5, C) float32 from the fitted templates; all-NaN rows where a band has no flux."""
    if len(zs) == 0:
        return np.empty((0, 5, len(centers)), np.float32)
    coeffs = fit_coeffs(zs, maggies, ivar)
    return table_maker(tuple(np.asarray(centers, np.float64).tolist()))(coeffs, zs).astype(
        np.float32
    )


def table_for_rows(
    zs: np.ndarray,
    ebv: np.ndarray,
    flux: np.ndarray,
    err: np.ndarray | None,
    centers: np.ndarray,
    source: str,
) -> np.ndarray:
    """T of one block of a file's galaxies from its fluxes as observed (nanomaggies)."""
    maggies, ivar = fit_input(flux, err, ebv, ab_correct=source != "synthetic")
    return template_table(zs, maggies, ivar, centers)


def add_template_table(
    path: str | os.PathLike,
    fit_from: str,
    out: str | os.PathLike | None = None,
    *,
    replace: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Add a template-fit ``flux_table`` to a photoz-study/1 file; nothing else is lost.

    As ``aperture.add_photometry``: the file is copied byte for byte to a temporary name beside
    the output, its stored ``content_hash`` is checked against the copy, ``flux_table`` is
    written (streamed, in blocks of ``BATCH``), the attributes ``flux_table_source`` =
    ``templates`` and ``flux_table_fit_from`` are set, ``content_hash`` is recomputed
    (``writer.content_hash``), the copy is validated, flushed and renamed onto ``out``
    (default: ``path``, atomically in place).

    Args:
        fit_from: ``flux`` (catalogue fluxes) or ``phot`` (measured, with ``phot_err``).
        replace: replace an existing flux table (e.g. one from spectra; HDF5 keeps the old
            table's space in the file). Without it a file with a table is refused.
        overwrite: replace an existing ``out`` other than ``path``.
    """
    from study.data.dataset import (
        OPTIONAL_DATASETS,
        amend_copy,
        digest_dataset,
        file_content_hash,
        read_info,
    )
    from study.data.writer import CORE_DATASETS, create_dataset

    src = Path(path)
    dst = src if out is None else Path(out)
    info = read_info(src)
    _check_add(src, dst, info, fit_from, replace, overwrite)
    centers = bin_centers(info.bin_edges)
    check_centers(centers, str(src))

    def edit(f: h5py.File) -> None:
        names = [k for k in (*CORE_DATASETS, *OPTIONAL_DATASETS) if k in f]
        names += [f"truth/{k}" for k in f["truth"]] if "truth" in f else []
        old = {k: digest_dataset(f[k]) for k in names}
        if file_content_hash(f, old) != str(f.attrs.get("content_hash", "")):
            raise UserError(
                f"{src}: attribute 'content_hash' does not match the content (modified or "
                "corrupt file); rebuild it with `python -m study.data convert` first"
            )
        if "flux_table" in f:
            del f["flux_table"]
        create_dataset(f, "flux_table", (info.n, 5, centers.size), np.dtype("<f4"), None)
        _fill(f, src, fit_from, centers, info.source, progress)
        f.attrs["flux_table_source"] = "templates"
        f.attrs["flux_table_fit_from"] = fit_from
        old["flux_table"] = digest_dataset(f["flux_table"])
        f.attrs["content_hash"] = file_content_hash(f, old)

    return amend_copy(src, dst, edit)


def _check_add(
    src: Path, dst: Path, info: Any, fit_from: str, replace: bool, overwrite: bool
) -> None:
    """Every refusal of ``add_template_table``, before any copy."""
    if fit_from not in FIT_INPUTS:
        raise UserError(f"--from must be one of {FIT_INPUTS}, got {fit_from!r}")
    if fit_from == "phot" and not info.has_phot:
        raise UserError(
            f"{src}: has no 'phot' (measured photometry); add it with `python -m study.data "
            "photometry FILE`, or fit the catalogue fluxes with --from flux"
        )
    if fit_from == "flux":
        with h5py.File(src, "r") as f:
            known = bool(np.isfinite(f["flux"][:]).all(axis=1).any())
        if not known:
            raise UserError(
                f"{src}: dataset 'flux' is unknown (NaN) for every galaxy; "
                "fit the measured photometry with --from phot"
            )
    if info.has_flux_table and not replace:
        raise UserError(
            f"{src}: already has a flux_table (flux_table_source {info.flux_table_source}); "
            "pass --replace (with --out NEW.h5 to keep this file as it is)"
        )
    if dst != src:
        refuse_existing(dst, overwrite=overwrite, source=src)
    if dst.is_dir():
        raise UserError(f"{dst}: --out is a directory; give a file name such as {dst}/data.h5")


def _fill(
    f: h5py.File, src: Path, fit_from: str, centers: np.ndarray, source: str, progress: bool
) -> None:
    n = f["zs"].shape[0]
    bar = tqdm(total=n, unit="gal", desc=f"flux-table {src.name}", disable=not progress)
    with bar:
        for s in range(0, n, BATCH):
            rows = slice(s, s + BATCH)
            err = f["phot_err"][rows] if fit_from == "phot" else None
            flux = f[fit_from][rows]
            table = table_for_rows(f["zs"][rows], f["ebv"][rows], flux, err, centers, source)
            f["flux_table"][rows] = table
            bar.update(len(table))


def add_flux_table_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``flux-table`` subcommand to ``python -m study.data``."""
    p = subparsers.add_parser(
        "flux-table",
        help="add a flux table from kcorrect templates fitted to the photometry",
        description=(__doc__ or "").split("\n")[0],
    )
    p.add_argument("input", type=Path, help="a photoz-study/1 file")
    p.add_argument("--from", dest="fit_from", required=True, choices=FIT_INPUTS,
                   help="fit the catalogue 'flux' or the measured 'phot' (with phot_err)")  # fmt: skip
    p.add_argument("--out", type=Path, help="write a new file here (default: add in place)")
    p.add_argument("--replace", action="store_true", help="replace an existing flux_table")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.set_defaults(func=flux_table_command)
    return p


def flux_table_command(args: argparse.Namespace) -> int:
    """Handler of ``python -m study.data flux-table``; raises UserError on bad input."""
    out = add_template_table(
        args.input, args.fit_from, args.out, replace=args.replace, overwrite=args.force
    )
    print(f"wrote {out} (flux_table from kcorrect templates fitted to '{args.fit_from}')")
    return 0
