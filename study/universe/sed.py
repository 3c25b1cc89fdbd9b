"""Spectra of the synthetic universe: kcorrect templates, Planck18 distances, fast band fluxes.

The templates and the flux-table maker are ``study.data.spectra``'s (shared with the template
fits of ``study.data.templates``).

A galaxy's spectrum is a non-negative combination of the five kcorrect templates (Blanton &
Roweis 2007, ``kcorrect-default-v4.fits`` shipped in the ``kcorrect`` package). Their flux
is defined at 10 pc, so the coefficients ``a`` (K=5) are in kcorrect's units and the
observed spectrum of a galaxy at redshift z is

    F(l) = (10 pc / D_L(z))^2 * sum_k a_k S_k(l / (1 + z)) / (1 + z)    [erg/s/cm^2/A]

with D_L from ``astropy.cosmology.Planck18``. Everything that depends on the galaxy is linear
in ``a``, so band fluxes come from small per-template tables (``TemplateTables``) and the
flux table T (SPEC 2) from cumulative integrals precomputed once per binning
(``study.data.spectra.FluxTableMaker``): two table look-ups per galaxy instead of 180 x 5
integrals.
"""

from __future__ import annotations

import functools

import numpy as np

# the template spectra and the exact flux table live with the data file (the templates flux
# table fits them to any file's photometry); the universe combines them into its galaxies
from study.data.spectra import K_TEMPLATES, templates

Z_TABLE = np.linspace(0.0, 0.45, 901)  # redshift grid of the template band-flux table (dz 5e-4)
PC10_MPC = 1e-5  # 10 pc in Mpc


def round32(x: np.ndarray) -> np.ndarray:
    """Round to float32 precision (kept as float64).

    numpy evaluates exp, log, power, sin... with CPU-specific SIMD code (and BLAS picks
    CPU-specific kernels), so their last float64 bits differ between machines. Rounding every
    such result to float32 precision before it is used makes the output identical on any
    machine (barring a ~1e-9 chance per value of a tie at a rounding boundary).
    """
    return np.asarray(x, np.float32).astype(np.float64)


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
