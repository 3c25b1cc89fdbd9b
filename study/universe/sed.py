"""Spectra of the synthetic universe: kcorrect templates, Planck18 distances, fast band fluxes.

A galaxy's spectrum is a non-negative combination of the five kcorrect templates (Blanton &
Roweis 2007, ``kcorrect-default-v4.fits`` shipped in the ``kcorrect`` package). Their flux
is defined at 10 pc, so the coefficients ``a`` (K=5) are in kcorrect's units and the
observed spectrum of a galaxy at redshift z is

    F(l) = (10 pc / D_L(z))^2 * sum_k a_k S_k(l / (1 + z)) / (1 + z)    [erg/s/cm^2/A]

with D_L from ``astropy.cosmology.Planck18``. Everything that depends on the galaxy is linear
in ``a``, so band fluxes come from small per-template tables (``TemplateTables``) and the
flux table T (SPEC 2) from cumulative integrals precomputed once per binning
(``FluxTableMaker``): two table look-ups per galaxy instead of 180 x 5 integrals.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

K_TEMPLATES = 5
REST_RANGE = (1500.0, 12500.0)  # A: rest wavelengths that reach u..z (2980-11230 A) for z <= 0.45
Z_TABLE = np.linspace(0.0, 0.45, 901)  # redshift grid of the template band-flux table (dz 5e-4)
PC10_MPC = 1e-5  # 10 pc in Mpc
FT_BATCH = 64  # galaxies per batch of FluxTableMaker: temporaries of ~1 MB stay in cache


def round32(x: np.ndarray) -> np.ndarray:
    """Round to float32 precision (kept as float64).

    numpy evaluates exp, log, power, sin... with CPU-specific SIMD code (and BLAS picks
    CPU-specific kernels), so their last float64 bits differ between machines. Rounding every
    such result to float32 precision before it is used makes the output identical on any
    machine (barring a ~1e-9 chance per value of a tie at a rounding boundary).
    """
    return np.asarray(x, np.float32).astype(np.float64)


def template_path() -> Path:
    """The kcorrect default v4 template file shipped in the kcorrect package.

    Located without importing kcorrect (its import pulls in matplotlib: ~0.6 s of start-up).
    """
    import importlib.util

    spec = importlib.util.find_spec("kcorrect")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("the kcorrect package is needed for its templates")
    return Path(spec.origin).parent / "data" / "templates" / "kcorrect-default-v4.fits"


@functools.lru_cache(maxsize=1)
def templates() -> tuple[np.ndarray, np.ndarray]:
    """Rest-frame kcorrect templates on their own grid inside ``REST_RANGE``.

    Returns:
        wave (L,) A and flux (5, L) erg/s/cm^2/A at 10 pc per unit coefficient, float64.
    """
    from astropy.io import fits

    with fits.open(template_path()) as hdul:
        wave = np.asarray(hdul["FLUX"].data["wave"][0], np.float64)
        flux = np.asarray(hdul["FLUX"].data["flux"][0], np.float64)
    keep = (wave >= REST_RANGE[0]) & (wave <= REST_RANGE[1])
    return wave[keep], np.ascontiguousarray(flux[:, keep])


def planck18(quantity: str, z: np.ndarray) -> np.ndarray:
    """astropy's ``Planck18.<quantity>(z)`` in Mpc (distances) or Mpc^3/sr (volume), float64.

    Its callers (``distance_table``, ``population()``) are cached, so each grid is computed once
    per process.
    """
    from astropy.cosmology import Planck18  # ~0.5 s to import: only when a table is first built

    value = getattr(Planck18, quantity)(z)
    unit = "Mpc3 / sr" if quantity == "differential_comoving_volume" else "Mpc"
    return np.asarray(value.to_value(unit), np.float64)


DISTANCE_Z = np.linspace(0.0, 0.6, 6001)  # grid of distance_table (dz = 1e-4)


@functools.lru_cache(maxsize=1)
def distance_table() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Planck18 luminosity and angular-diameter distances on a fine grid (dz = 1e-4).

    Returns:
        z (M,), D_L (M,) Mpc, D_A (M,) Mpc. Linear interpolation is good to ~1e-8.
    """
    z = DISTANCE_Z
    d_l = planck18("luminosity_distance", z)
    d_a = planck18("angular_diameter_distance", z)
    return z, round32(d_l), round32(d_a)


def luminosity_distance(z: np.ndarray) -> np.ndarray:
    """Planck18 luminosity distance in Mpc (interpolated, 0 <= z <= 0.6)."""
    zg, d_l, _ = distance_table()
    return np.interp(z, zg, d_l)


def angular_diameter_distance(z: np.ndarray) -> np.ndarray:
    """Planck18 angular-diameter distance in Mpc (interpolated, 0 <= z <= 0.6)."""
    zg, _, d_a = distance_table()
    return np.interp(z, zg, d_a)


def dimming(z: np.ndarray) -> np.ndarray:
    """(10 pc / D_L)^2: turns a template's 10-pc flux into the flux observed from redshift z."""
    return (PC10_MPC / luminosity_distance(z)) ** 2  # IEEE ops only: identical everywhere


def planck_sed(wave: np.ndarray, temperature: np.ndarray) -> np.ndarray:
    """Blackbody B_lambda (arbitrary normalisation) for stars; wave (L,) A, temperature (T,) K."""
    hc_over_k = 1.438776877e8  # h c / k_B in A K
    x = hc_over_k / (wave[None, :] * np.asarray(temperature, np.float64)[:, None])
    return wave[None, :] ** -5.0 / np.expm1(x)


class TemplateTables:
    """Band fluxes of the templates on ``Z_TABLE`` (AB maggies at 10 pc per unit coefficient).

    ``bz[i, k, b]`` is the band-b flux of template k redshifted to ``Z_TABLE[i]`` (spectrum
    S_k(l/(1+z))/(1+z), no distance dimming), as ``photometry.band_fluxes`` computes it.
    ``rest01[k]`` is template k's ^{0.1}r flux (Blanton et al. 2003's band: r shifted to
    z = 0.1, so ``M_0.1r = -2.5 log10(sum_k a_k rest01_k)``).
    """

    def __init__(self) -> None:
        from study.data import photometry

        wave, flux = templates()
        self.bz = round32(_redshifted_band_fluxes(wave, flux, Z_TABLE))
        b01 = photometry.band_fluxes(wave * 1.1, flux / 1.1)  # (5 templates, 5 bands)
        self.rest01 = round32(b01[:, 2] / 1.1)  # Blanton et al. 2003: K_0.1r(0.1) = -2.5 log10 1.1
        self.star_t = np.linspace(3000.0, 12000.0, 181)  # K
        sw = np.linspace(2500.0, 12000.0, 4751)
        stars = photometry.band_fluxes(sw, planck_sed(sw, self.star_t))
        self.star_colors = round32(stars / stars[:, 2:3])  # (T, 5), r = 1

    def band_maggies(self, coeffs: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Observed band fluxes, AB maggies (N, 5), of coefficients (N, K) at redshifts (N,).

        No Galactic extinction. Linear in z between table nodes (error < 1e-5 relative).
        """
        pos = np.interp(z, Z_TABLE, np.arange(Z_TABLE.size))
        i = np.minimum(pos.astype(np.int64), Z_TABLE.size - 2)
        frac = (pos - i)[:, None, None]
        bz = self.bz[i] * (1 - frac) + self.bz[i + 1] * frac  # (N, K, 5)
        out = np.zeros((len(z), 5))
        for k in range(K_TEMPLATES):  # explicit order: identical bits for any batch size
            out += coeffs[:, k, None] * bz[:, k]
        return out * dimming(z)[:, None]

    def star_maggies(self, temperature: np.ndarray) -> np.ndarray:
        """Band fluxes relative to r (N, 5) of blackbody stars at the given temperatures (K)."""
        return np.stack(
            [np.interp(temperature, self.star_t, self.star_colors[:, b]) for b in range(5)], 1
        )


def _redshifted_band_fluxes(wave: np.ndarray, flux: np.ndarray, zs: np.ndarray) -> np.ndarray:
    """``photometry.band_fluxes(wave (1+z), flux / (1+z))`` for every z at once: (Z, K, 5).

    On the stretched grid the trapezoid rule of SPEC 2 becomes (1+z) sum_i t_i w_i S(w_i)
    R_b((1+z) w_i) over the rest grid (t_i its trapezoid weights); the filter normalisation is
    taken from ``photometry.band_fluxes`` itself at z = 0, so the two agree to rounding.
    """
    from study.data import photometry

    d = np.diff(wave)
    tw = np.zeros_like(wave)
    tw[:-1] += d / 2
    tw[1:] += d / 2
    out = np.empty((zs.size, flux.shape[0], 5))
    at_zero = np.empty((flux.shape[0], 5))
    for b, (fw, fr) in enumerate(photometry.filter_curves()):
        resp = np.interp(np.outer(1 + zs, wave), fw, fr, left=0, right=0)  # (Z, L)
        out[:, :, b] = (1 + zs)[:, None] * ((resp * (tw * wave)) @ flux.T)
        at_zero[:, b] = (np.interp(wave, fw, fr, left=0, right=0) * tw * wave) @ flux.T
    ref = photometry.band_fluxes(wave, flux)  # (K, 5) at z = 0
    k = np.argmax(ref, axis=0)  # the brightest template fixes each band's normalisation
    norm = at_zero[k, np.arange(5)] / ref[k, np.arange(5)]
    return out / norm


@functools.lru_cache(maxsize=1)
def template_tables() -> TemplateTables:
    """The process-wide TemplateTables (about a second to build)."""
    return TemplateTables()


class FluxTableMaker:
    """The flux table T[b, c] = Phi'_b(nu_c) / Phi'_b(1) of SPEC 2 for template spectra.

    The spectrum known to the study is the galaxy's observed-frame spectrum on the template
    grid, ``l_i = (1 + zs) w_i``, at the points with ``lo <= l_i <= hi`` (the spectrograph
    range; zero outside). For F(u) = sum_k a_k S_k(u / (1 + zs)) (constants cancel in T), the
    trapezoid rule on the stretched grid ``nu l_i`` gives exactly

        Phi'_b(nu_c) ∝ (1 + z_c)^2 sum_k a_k [G_bkc(i_hi) - G_bkc(i_lo)],

    where ``G_bkc(i)`` is the cumulative trapezoid integral over the rest grid w of
    ``S_k(w) R_b((1 + z_c) w) w`` (R_b linear in wavelength, SPEC 2), and Phi'_b(1) is the same
    sum at z_c = zs. G is computed once per (bins, range): (K, W, 5, C) float64, 53 MB at 180 bins.
    """

    def __init__(self, centers: np.ndarray, spectral_range: tuple[float, float]) -> None:
        from study.data import photometry

        wave, flux = templates()
        self.lo, self.hi = float(spectral_range[0]), float(spectral_range[1])
        keep = (wave >= self.lo / 1.46) & (wave <= self.hi)
        start = max(int(np.argmax(keep)) - 1, 0)
        stop = min(len(wave) - int(np.argmax(keep[::-1])) + 1, len(wave))
        self.w = wave[start:stop]  # (W,) rest A
        self.s = flux[:, start:stop]  # (K, W)
        self.centers = np.asarray(centers, np.float64)
        self.curves = photometry.filter_curves()
        self.g = np.zeros((K_TEMPLATES, self.w.size, 5, self.centers.size))  # (K, W, 5, C)
        for b, (fw, fr) in enumerate(self.curves):
            for c, zc in enumerate(self.centers):
                y = self.s * np.interp((1 + zc) * self.w, fw, fr, left=0, right=0) * self.w
                cells = 0.5 * (y[:, 1:] + y[:, :-1]) * np.diff(self.w)  # (K, W-1)
                self.g[:, 1:, b, c] = np.cumsum(cells, axis=1)
        # rest-wavelength window of each filter, for the per-galaxy Phi'_b(1)
        self.windows = [(fw[fr > 0].min(), fw[fr > 0].max()) for fw, fr in self.curves]

    def support(self, zs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """First and last grid index with lo <= (1 + zs) w_i <= hi, per galaxy."""
        lam = (1 + zs[:, None]) * self.w[None, :]  # (N, W) observed A
        inside = (lam >= self.lo) & (lam <= self.hi)
        first = np.argmax(inside, axis=1)
        last = self.w.size - 1 - np.argmax(inside[:, ::-1], axis=1)
        return first, last

    def spectrum(self, coeffs: np.ndarray, zs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The known observed-frame spectrum of one galaxy as (wave (L,) A, F (L,)).

        In kcorrect units at 10 pc up to the distance factor (T does not depend on it);
        for tests and for users who want the spectrum itself.
        """
        first, last = self.support(np.atleast_1d(np.float64(zs)))
        sl = slice(int(first[0]), int(last[0]) + 1)
        spec = sum(coeffs[k] * self.s[k, sl] for k in range(K_TEMPLATES))
        return (1 + zs) * self.w[sl], spec / (1 + zs)

    def __call__(self, coeffs: np.ndarray, zs: np.ndarray) -> np.ndarray:
        """T for coefficients (N, K) at redshifts (N,): (N, 5, C) float64, NaN where Phi'(1) <= 0.

        Computed in batches of ``FT_BATCH`` galaxies (their temporaries stay in cache: ~2x
        faster) with the filter windows of the whole call, so every row has the same bits as
        in one pass.
        """
        zs = np.asarray(zs, np.float64)
        first, last = self.support(zs)
        windows = self.filter_windows(zs)
        table = np.empty((len(zs), 5, self.centers.size))
        shift = (1 + self.centers) ** 2
        for s in range(0, len(zs), FT_BATCH):
            sl = slice(s, s + FT_BATCH)
            c, f, la = coeffs[sl], first[sl], last[sl]
            num = np.zeros((len(c), 5, self.centers.size))
            for k in range(K_TEMPLATES):  # gathers of (n, 5, C) rows of G, one template at a time
                num += c[:, k, None, None] * (self.g[k][la] - self.g[k][f])
            num *= shift
            win = [(i0[sl], width) for i0, width in windows]
            den = self.phi1(c, zs[sl], f, la, win) * (1 + zs[sl, None]) ** 2  # (n, 5)
            with np.errstate(divide="ignore", invalid="ignore"):
                np.divide(num, den[:, :, None], out=table[sl])
            table[sl][~(den > 0)] = np.nan
        return table

    def filter_windows(self, zs: np.ndarray) -> list[tuple[np.ndarray, int]]:
        """Per band, (first grid index i0 (N,), width): R_b((1 + zs) w) = 0 outside
        [i0, i0 + width), a window of one width for all the galaxies given."""
        w, out = self.w, []
        for lo_b, hi_b in self.windows:
            i0 = np.maximum(np.searchsorted(w, lo_b / (1 + zs)) - 1, 0)
            width = int((np.searchsorted(w, hi_b / (1 + zs)) + 1 - i0).max()) + 1
            out.append((np.minimum(i0, w.size - width), width))
        return out

    def phi1(
        self,
        coeffs: np.ndarray,
        zs: np.ndarray,
        first: np.ndarray,
        last: np.ndarray,
        windows: list[tuple[np.ndarray, int]] | None = None,
    ) -> np.ndarray:
        """Trapezoid sum over the known spectrum of sum_k a_k S_k(w) R_b((1+zs) w) w, (N, 5).

        ``windows``: ``filter_windows`` of these galaxies (or of a larger set containing them).
        """
        n, w = len(zs), self.w
        spec = np.zeros((n, w.size))
        for k in range(K_TEMPLATES):
            spec += coeffs[:, k, None] * self.s[k]
        grid = np.arange(w.size)
        spec *= (grid >= first[:, None]) & (grid <= last[:, None])
        # interior trapezoid weights times w; the two end points get half cells (fixed below)
        tw = np.zeros(w.size)
        tw[1:-1] = 0.5 * (w[2:] - w[:-2])
        spec *= tw * w
        out = np.zeros((n, 5))
        windows = self.filter_windows(zs) if windows is None else windows
        for b, (fw, fr) in enumerate(self.curves):
            i0, width = windows[b]
            spec_win = np.lib.stride_tricks.sliding_window_view(spec, width, axis=1)[
                np.arange(n), i0
            ]  # (N, width)
            w_win = np.lib.stride_tricks.sliding_window_view(w, width)[i0]
            resp = np.interp((1 + zs[:, None]) * w_win, fw, fr, left=0, right=0)
            out[:, b] = (spec_win * resp).sum(axis=1)
            for end, step in ((first, -1), (last, 1)):  # end points: drop the outer half cell
                nb = np.clip(end + step, 0, w.size - 1)
                half = 0.5 * np.abs(w[nb] - w[end]) * w[end]
                r_end = np.interp((1 + zs) * w[end], fw, fr, left=0, right=0)
                s_end = sum(coeffs[:, k] * self.s[k, end] for k in range(K_TEMPLATES))
                out[:, b] -= s_end * r_end * half
        return out
