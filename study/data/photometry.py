"""Band fluxes (AB maggies) through the SDSS 2010 filters, and the flux table of SPEC 2.

Conventions (SPEC 2): a spectrum F (erg/s/cm^2/A) is known on its own wavelength grid (A) and is
zero outside it; the photon response R_b is linearly interpolated onto that grid and is zero
outside the filter's tabulation; integrals use the trapezoid rule on the spectrum's grid:

    Phi_b[F] = int F(l) R_b(l) l dl / int (3631 Jy) c R_b(l) / l dl.

The flux table T[b, c] = Phi'_b(nu_c) / Phi'_b(1), with nu_c = (1 + z_c) / (1 + zs) and the
spectrum moved as F(l / nu). Substituting l = nu u on the shifted grid l_j = nu u_j,

    Phi'_b(nu) = nu^2 sum_j a_j R_b(nu u_j) / norm_b,   a_j = w_j F(u_j) u_j,

(w_j the trapezoid weights of the grid u), which is exactly the trapezoid rule applied to the
explicitly shifted spectrum. Since R_b is piecewise linear with knots r_k, R_b(x) = alpha_k +
beta_k x on [r_k, r_k+1), so with prefix sums S0[p] = sum_{j<p} a_j, S1[p] = sum_{j<p} a_j u_j
and P_k = #{j : u_j < r_k / nu},

    sum_j a_j R_b(nu u_j) = sum_k (alpha_{k-1} - alpha_k) S0[P_k] + nu (beta_{k-1} - beta_k) S1[P_k].

This costs O(knots) per (galaxy, bin) instead of O(grid), with no approximation; the P_k of all
(knot, bin) pairs of a galaxy come from one merge of its grid against the sorted r_k (1 + zs) /
(1 + z_c) (a searchsorted of the grid plus a bincount / cumsum). speclite is used only to load
the filter curves.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any

import numpy as np

from study.data.layout import BANDS

C_ANGSTROM = 2.99792458e18  # speed of light, A/s
AB_FNU = 3631e-23  # 3631 Jy in erg/s/cm^2/Hz
CHUNK = 2  # galaxies per block in flux_table: ~3 MB of temporaries stay in cache (fastest)
MAX_THREADS = 8  # flux_table threads: numpy releases the GIL in its heavy steps


@lru_cache(maxsize=1)
def load_filters() -> Any:
    """The speclite FilterSequence sdss2010-u, -g, -r, -i, -z (cached)."""
    import speclite.filters

    return speclite.filters.load_filters(*(f"sdss2010-{b}" for b in BANDS))


@lru_cache(maxsize=1)
def filter_curves() -> list[tuple[np.ndarray, np.ndarray]]:
    """Wavelength (A) and photon response of each band, u to z, as float64 arrays."""
    return [
        (np.asarray(f.wavelength, np.float64), np.asarray(f.response, np.float64))
        for f in load_filters()
    ]


@lru_cache(maxsize=1)
def _norms() -> np.ndarray:
    """norm_b = int 3631 Jy c R_b(l) / l dl, (5,), on each filter's grid refined 32-fold.

    The refinement makes this the integral of the piecewise-linear R_b to ~1e-7, so that a flat
    f_nu spectrum sampled finely gives equal maggies in every band.
    """
    out = []
    for wave, resp in filter_curves():
        fine = np.interp(np.arange(32 * (wave.size - 1) + 1) / 32, np.arange(wave.size), wave)
        out.append(np.trapezoid(np.interp(fine, wave, resp) / fine, fine) * AB_FNU * C_ANGSTROM)
    return np.asarray(out)


def _trapezoid_weights(wave: np.ndarray) -> np.ndarray:
    """w such that sum_j w_j y_j is the trapezoid integral of y on the grid ``wave``."""
    d = np.diff(wave)
    w = np.zeros_like(wave)
    w[:-1] += d / 2
    w[1:] += d / 2
    return w


def _check_grid(wave: Any, flux: Any) -> tuple[np.ndarray, np.ndarray]:
    wave = np.asarray(wave, np.float64)
    flux = np.asarray(flux)
    if wave.ndim != 1 or wave.size < 2 or not np.all(np.diff(wave) > 0) or wave[0] <= 0:
        raise ValueError("wave must be a 1-D, strictly increasing, positive grid in Angstrom")
    if flux.shape[-1] != wave.size or flux.ndim not in (1, 2):
        raise ValueError(f"flux must be (L,) or (N, L) with L={wave.size}, got {flux.shape}")
    return wave, flux


def band_fluxes(wave: Any, flux: Any) -> np.ndarray:
    """AB maggies of spectra through the SDSS 2010 u, g, r, i, z filters.

    Args:
        wave: (L,) wavelength grid in Angstrom, strictly increasing.
        flux: (N, L) or (L,) spectra in erg/s/cm^2/A, zero outside ``wave``.

    Returns:
        (N, 5) or (5,) float64 maggies (multiply by 1e9 for nanomaggies).
    """
    wave, flux = _check_grid(wave, flux)
    resp = np.stack([np.interp(wave, fw, fr, left=0.0, right=0.0) for fw, fr in filter_curves()])
    weights = (_trapezoid_weights(wave) * wave)[:, None] * resp.T  # (L, 5)
    return (flux.astype(np.float64) @ weights) / _norms()


@lru_cache(maxsize=4)
def _knots(centers: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The (knot, bin) pairs of all bands, sorted by v = r_k / (1 + z_c).

    Returns:
        v: (V,) sorted r_k / (1 + z_c) over the knots k where R_b changes slope, and all bins c.
        weight: (V + 1,) complex d_alpha_k - 1j d_beta_k (1 + z_c) per sorted pair (the extra
            last entry is 0), so Re(weight * (S0[P_t] + 1j S1[P_t] / (1 + zs))) is the term.
        column: (V + 1,) the output column b * C + c of each pair (the extra entry: column 0).
    """
    zc = np.asarray(centers, np.float64)
    n_bins = zc.size
    r_all, da_all, db_all, band_all = [], [], [], []
    for b, (r, resp) in enumerate(filter_curves()):
        beta = np.diff(resp) / np.diff(r)  # slope on each segment [r_k, r_k+1)
        alpha = resp[:-1] - beta * r[:-1]
        pad_a, pad_b = np.r_[0.0, alpha, 0.0], np.r_[0.0, beta, 0.0]
        da, db = pad_a[:-1] - pad_a[1:], pad_b[:-1] - pad_b[1:]
        keep = (da != 0) | (db != 0)  # knots inside a straight run (e.g. zero tails) add nothing
        r_all.append(r[keep])
        da_all.append(da[keep])
        db_all.append(db[keep])
        band_all.append(np.full(int(keep.sum()), b))
    r_k, d_alpha, d_beta, band = map(np.concatenate, (r_all, da_all, db_all, band_all))
    vals = (r_k[:, None] / (1.0 + zc[None, :])).ravel()  # (K C,), knot-major
    order = np.argsort(vals, kind="stable")
    knot, cbin = np.divmod(order, n_bins)
    weight = np.r_[d_alpha[knot] - 1j * d_beta[knot] * (1.0 + zc[cbin]), 0.0]
    column = np.r_[band[knot] * n_bins + cbin, 0]
    return vals[order], weight, column


def flux_table(
    wave: Any, flux: Any, zs: Any, centers: Any, chunk: int = CHUNK, threads: int | None = None
) -> np.ndarray:
    """The flux table T[i, b, c] = Phi'_b(nu_ic) / Phi'_b(1), nu_ic = (1 + centers[c]) / (1 + zs[i]).

    Exactly the trapezoid rule on each spectrum moved to z_c (module docstring), vectorised
    over galaxies and bins. A band with Phi'_b(1) <= 0 (no flux of the spectrum in the band,
    e.g. u for a spectrum starting at 3800 A at high z, or negative noise) has an all-NaN row:
    the band is unusable for that galaxy and the flux loss masks it.

    Args:
        wave: (L,) spectrum grid in Angstrom (observed frame, at redshift zs).
        flux: (N, L) or (L,) observed spectra, erg/s/cm^2/A (any common scale: T is a ratio).
        zs: (N,) or scalar spectroscopic redshifts.
        centers: (C,) redshift bin centres z_c.
        chunk: galaxies per block (memory ~ chunk x 4 MB at 180 bins).

    Returns:
        (N, 5, C) float64, or (5, C) for a single spectrum.
    """
    wave, flux = _check_grid(wave, flux)
    single = flux.ndim == 1
    flux2 = np.atleast_2d(flux)
    zs = np.broadcast_to(np.asarray(zs, np.float64), (flux2.shape[0],))
    zc = np.asarray(centers, np.float64)
    knots = _knots(tuple(zc.tolist()))
    resp = np.stack([np.interp(wave, fw, fr, left=0.0, right=0.0) for fw, fr in filter_curves()])
    wu = _trapezoid_weights(wave) * wave  # a_j = w_j F_j u_j
    out = np.empty((flux2.shape[0], 5, zc.size))
    cols = (knots[2][None, :] + (np.arange(chunk) * 5 * zc.size)[:, None]).ravel()

    def fill(s: int) -> None:  # blocks write disjoint rows: same result for any thread count
        block = slice(s, s + chunk)
        out[block] = _table_block(wave, wu, resp, flux2[block], zs[block], zc, knots, cols)

    starts = range(0, flux2.shape[0], chunk)
    if threads is None:
        cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
        threads = min(MAX_THREADS, len(cores) if cores else os.cpu_count() or 1)
    if threads > 1 and len(starts) > 1:  # numpy releases the GIL in take/cumsum/searchsorted
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(fill, starts))
    else:
        for s in starts:
            fill(s)
    return out[0] if single else out


def _table_block(
    wave: np.ndarray,
    wu: np.ndarray,
    resp: np.ndarray,
    flux: np.ndarray,
    zs: np.ndarray,
    zc: np.ndarray,
    knots: tuple[np.ndarray, np.ndarray, np.ndarray],
    cols: np.ndarray,
) -> np.ndarray:
    """flux_table for one block of g galaxies: (g, 5, C)."""
    v, weight, _ = knots
    g, n_l, n_v = flux.shape[0], wave.size, v.size
    a = flux.astype(np.float64) * wu  # (g, L)
    # prefix sums S0 (real) and S1 / (1 + zs) (imaginary), one complex gather fetches both
    sums = np.zeros((g, n_l + 1), np.complex128)
    np.cumsum(a, axis=1, out=sums.real[:, 1:])
    np.cumsum(a * wave / (1.0 + zs[:, None]), axis=1, out=sums.imag[:, 1:])
    # P_t = #{j : u_j < r_k / nu_c} = #{j : x_j < v_t} with x_j = u_j / (1 + zs): merge each
    # galaxy's x into v. pos_j = #{t : v_t <= x_j}, so P_t = #{j : pos_j <= t}, a cumulative
    # bincount. One count per row in the spare slot t = V makes each row total L + 1, so a flat
    # cumsum yields P_t + i (L + 1): flat indices into `sums` with no per-row offset pass.
    x = wave[None, :] / (1.0 + zs[:, None])
    pos = np.searchsorted(v, x, side="right") + (np.arange(g) * (n_v + 1))[:, None]
    counts = np.bincount(pos.ravel(), minlength=g * (n_v + 1))
    counts[n_v :: n_v + 1] += 1
    index = np.cumsum(counts)
    index[n_v :: n_v + 1] = 0  # the spare slot gathers anything; its weight is 0
    gathered = np.take(sums.ravel(), index).reshape(g, n_v + 1)
    gathered *= weight  # real part: d_alpha S0[P] + d_beta' S1'[P] (weight holds the conjugate)
    cols = cols[: g * (n_v + 1)]  # output column of each term, rows offset by 5 C per galaxy
    total = np.bincount(cols, weights=gathered.real.ravel(), minlength=g * 5 * zc.size)
    total = total.reshape(g, 5, zc.size)  # sum_j a_j R_b(nu_c u_j)
    nu = (1.0 + zc)[None, :] / (1.0 + zs[:, None])  # (g, C)
    at_one = a @ resp.T  # (g, 5): sum_j a_j R_b(u_j), i.e. nu = 1
    with np.errstate(divide="ignore", invalid="ignore"):
        table = nu[:, None, :] ** 2 * total / at_one[:, :, None]
    table[at_one <= 0] = np.nan
    return table
