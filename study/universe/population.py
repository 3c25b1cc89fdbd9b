"""The galaxy population of the synthetic universe: who is where, how bright, what colour, what shape.

Galaxies are drawn in fixed blocks of ``BLOCK`` = 1024 from a random stream keyed by
``(seed, block)``, so galaxy i is the same in every universe of that seed whatever its size or
write chunk (a universe of n galaxies is the first n of an endless sequence).

- Redshift and luminosity: the SDSS ^{0.1}r Schechter luminosity function of Blanton et al.
  (2003): M* - 5 log10 h = -20.44, alpha = -1.05, luminosity evolution Q = 1.62
  (M*(z) = M* - Q (z - 0.1)), over the Planck18 comoving volume for 0.005 <= z <= 0.4.
  (z, M) is drawn from the volume-weighted LF restricted to M <= M_lim(z), the faintest
  galaxy that any template mix could still show at r < 17.77 (an exact bound: a mix's
  k-correction lies between its templates'), then the main-galaxy-sample cut
  r_dered < 17.77 is applied with each galaxy's own k-correction; rejected draws are replaced.
- SED: non-negative mixes of the five kcorrect templates, in fractions of ^{0.1}r light,
  along a blue-to-red axis t, each template weight scattered by a lognormal factor
  (sigma 0.7) for diversity off the axis. The red fraction rises with luminosity; both the red sequence
  and the blue cloud redden with luminosity. Bulge and disk share the galaxy's mix but the
  bulge is moved redward (t_B = t + (1 - BT) dt, t_D = t - BT dt), so the light-weighted
  total stays at t and colours vary across the image. Bulge-to-total rises with t.
- Sizes: half-light radii from the SDSS size-luminosity relations of Shen et al. (2003)
  (early types for the red sequence, late types for the blue cloud, with their
  luminosity-dependent scatter), turned into arcsec with Planck18 angular-diameter distances.
- Galactic extinction: E(B-V) lognormal with median 0.03 mag (like the SDSS footprint's),
  applied per band with R = (4.239, 3.303, 2.285, 1.698, 1.263).
"""

from __future__ import annotations

import functools

import numpy as np
from scipy.integrate import cumulative_trapezoid

from study.data.layout import EXTINCTION_R
from study.universe import sed

BLOCK = 1024  # galaxies per generation block: the unit of randomness and of batched math
CANDIDATES = 2048  # draws per rejection round
R_LIMIT = 17.77  # SDSS main galaxy sample, dereddened Petrosian r
Z_MIN, Z_MAX = 0.005, 0.4
Z_GRID = np.linspace(Z_MIN, Z_MAX, 3951)  # redshift grid of the volume and magnitude limit
H = 0.6766  # Planck18 H0 / 100
M_STAR = -20.44 + 5 * np.log10(H)  # Blanton et al. 2003, ^{0.1}r, in h = 0.6766 units
ALPHA = -1.05
Q_EVOL = 1.62  # Blanton et al. 2003 luminosity evolution, mag per unit redshift
# light fractions (^{0.1}r) of the five kcorrect templates at the ends of the blue-red axis
RED = np.array([0.12, 0.0, 0.03, 0.85, 0.0])
BLUE = np.array([0.0, 0.04, 0.46, 0.05, 0.45])
DT_BULGE = 0.35  # bulge-disk separation along t
STREAM_POPULATION, STREAM_IMAGE = 0, 1


def block_rng(seed: int, block: int, stream: int) -> np.random.Generator:
    """The random stream of one block: independent of every other (seed, block, stream)."""
    return np.random.Generator(
        np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(block, stream)))
    )


class Population:
    """Tables for drawing galaxies (built once per process, about a second)."""

    def __init__(self) -> None:
        tt = sed.template_tables()
        self.tables = tt
        self.unit = sed.round32(
            tt.bz / tt.rest01[None, :, None]
        )  # (Z, K, 5) per unit ^{0.1}r light
        self.rest01 = sed.round32(tt.rest01)
        # faintest M that any mix could show at r < R_LIMIT, on a fine z grid
        self.z = Z_GRID
        u_r = np.stack([np.interp(self.z, sed.Z_TABLE, self.unit[:, k, 2]) for k in range(5)])
        m_lim = R_LIMIT + 2.5 * np.log10(sed.dimming(self.z) * u_r.max(axis=0))
        # Schechter cumulative in x = M - M*(z), bright end first
        self.x = np.linspace(-7.0, 12.0, 19001)
        lum = 10 ** (-0.4 * self.x)
        phi = lum ** (ALPHA + 1) * np.exp(-lum)
        self.psi = cumulative_trapezoid(phi, self.x, initial=0.0)
        self.x_lim = m_lim - self.m_star(self.z)
        dvdz = sed.planck18("differential_comoving_volume", self.z)  # Mpc^3 / sr
        pz = dvdz * np.interp(self.x_lim, self.x, self.psi)
        cdf = cumulative_trapezoid(pz, self.z, initial=0.0)
        self.z_cdf = sed.round32(cdf / cdf[-1])
        self.x_lim = sed.round32(self.x_lim)
        self.psi = sed.round32(self.psi / self.psi[-1])

    @staticmethod
    def m_star(z: np.ndarray) -> np.ndarray:
        return M_STAR - Q_EVOL * (z - 0.1)

    def unit_maggies(self, light: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Observed maggies (N, 5) of ^{0.1}r-light fractions (N, K) for M = 0, no extinction."""
        pos = np.interp(z, sed.Z_TABLE, np.arange(sed.Z_TABLE.size))
        i = np.minimum(pos.astype(np.int64), sed.Z_TABLE.size - 2)
        f = (pos - i)[:, None]
        out = np.zeros((len(z), 5))
        for k in range(5):
            out += light[:, k, None] * (self.unit[i, k] * (1 - f) + self.unit[i + 1, k] * f)
        return out * sed.dimming(z)[:, None]

    def candidates(self, rng: np.random.Generator, m: int) -> dict[str, np.ndarray]:
        """m draws from the volume-weighted LF with SEDs and bulge fractions (before the cut)."""
        z = np.interp(rng.random(m), self.z_cdf, self.z)
        cap = np.interp(np.interp(z, self.z, self.x_lim), self.x, self.psi)
        x = np.interp(rng.random(m) * cap, self.psi, self.x)
        mag = x + self.m_star(z)
        p_red = 1 / (1 + np.exp((mag + 20.6) / 0.9))
        red = rng.random(m) < p_red
        t_red = np.clip(0.9 - 0.03 * (mag + 21) + 0.05 * rng.standard_normal(m), 0.6, 1.0)
        t_blue = np.clip(0.4 - 0.1 * (mag + 20) + 0.15 * rng.standard_normal(m), 0.0, 0.75)
        t = np.where(red, t_red, t_blue)
        bt = np.clip(0.75 * t - 0.05 + 0.1 * rng.standard_normal(m), 0.0, 1.0)
        scatter = np.exp(
            0.7 * rng.standard_normal((m, 5))
        )  # SED diversity off the t axis (lognormal)

        def mix(tt: np.ndarray) -> np.ndarray:
            c = ((1 - tt)[:, None] * BLUE + tt[:, None] * RED) * scatter
            return c / c.sum(axis=1, keepdims=True)

        light_b = mix(np.clip(t + (1 - bt) * DT_BULGE, 0, 1))
        light_d = mix(np.clip(t - bt * DT_BULGE, 0, 1))
        light = bt[:, None] * light_b + (1 - bt)[:, None] * light_d
        r_mag = mag - 2.5 * np.log10(self.unit_maggies(light, z)[:, 2])
        return {"zs": z, "abs_mag": mag, "red": red, "t": t, "bulge_frac": bt,
                "light_b": light_b, "light_d": light_d, "r_dered": r_mag}  # fmt: skip

    def draw_block(self, seed: int, block: int) -> dict[str, np.ndarray]:
        """The BLOCK galaxies of one block: catalogue, fluxes and morphology (see module doc)."""
        rng = block_rng(seed, block, STREAM_POPULATION)
        kept: list[dict[str, np.ndarray]] = []
        count = 0
        while count < BLOCK:
            cand = self.candidates(rng, CANDIDATES)
            ok = cand["r_dered"] < R_LIMIT
            kept.append({k: v[ok] for k, v in cand.items()})
            count += int(ok.sum())
        g = {k: np.concatenate([d[k] for d in kept])[:BLOCK] for k in kept[0]}
        n, mag, red = BLOCK, g["abs_mag"], g["red"]
        scale = 10 ** (-0.4 * mag)[:, None] / self.rest01  # light fraction -> kcorrect coefficient
        g["coeffs_bulge"] = sed.round32(g.pop("light_b") * g["bulge_frac"][:, None] * scale)
        g["coeffs_disk"] = sed.round32(g.pop("light_d") * (1 - g["bulge_frac"])[:, None] * scale)
        g["ebv"] = sed.round32(np.clip(0.03 * np.exp(0.5 * rng.standard_normal(n)), 0.003, 0.5))
        ext = sed.round32(10 ** (-0.4 * EXTINCTION_R[None, :] * g["ebv"][:, None]))
        g["flux_bulge"] = 1e9 * ext * self.tables.band_maggies(g["coeffs_bulge"], g["zs"])
        g["flux_disk"] = 1e9 * ext * self.tables.band_maggies(g["coeffs_disk"], g["zs"])
        g["flux"] = g["flux_bulge"] + g["flux_disk"]  # nanomaggies, as observed
        # Shen et al. (2003) eqs. 14-16 and Table 1: R50 in kpc (h = 0.7), M_r
        m0 = -20.52
        log_early = -0.4 * 0.65 * mag - 5.06
        log_late = (
            -0.4 * 0.21 * mag + (0.53 - 0.21) * np.log10(1 + 10 ** (-0.4 * (mag - m0))) - 1.31
        )
        sig = 0.25 + (0.48 - 0.25) / (1 + 10 ** (-0.8 * (mag - m0)))
        r50_kpc = 10 ** np.where(red, log_early, log_late) * np.exp(sig * rng.standard_normal(n))
        r50 = np.clip(
            r50_kpc / (1e3 * sed.angular_diameter_distance(g["zs"])) * 206264.806, 0.2, 20.0
        )
        g["re_disk_arcsec"] = r50
        g["re_bulge_arcsec"] = r50 * (0.3 + 0.7 * g["bulge_frac"])
        cos_i = rng.random(n)
        g["q_disk"] = np.sqrt(cos_i**2 * (1 - 0.2**2) + 0.2**2)  # intrinsic thickness 0.2
        g["q_bulge"] = np.clip(0.8 + 0.12 * rng.standard_normal(n), 0.5, 1.0)
        g["pa_rad"] = np.pi * rng.random(n)
        g["offset_px"] = rng.random((n, 2)) - 0.5  # sub-pixel centre offset (x, y)
        g["red"] = red.astype(np.uint8)
        # every float to float32 precision: machine-independent bits downstream (sed.round32)
        return {k: sed.round32(v) if v.dtype == np.float64 else v for k, v in g.items()}


@functools.lru_cache(maxsize=1)
def population() -> Population:
    """The process-wide Population tables."""
    return Population()
