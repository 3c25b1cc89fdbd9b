"""Cutouts of the synthetic universe: bulge + disk + neighbours, PSF, pixels and noise.

Each galaxy is drawn analytically in Fourier space on an 80 x 80 grid and cropped to the
central 64 x 64 (0.396"/px), so no light is lost to sampling and the padding keeps light
that leaves the frame from wrapping back into it (light beyond 40 px of the centre, a few
per cent of the largest galaxies', still does):

    image_b(k) = [B_b f_bulge(k) + D_b f_disk(k)] P_b(k) W(k) e^{-i k.x0} + neighbours,

with B_b, D_b the bulge and disk band fluxes (nanomaggies, extinction applied), f the
normalised transforms of a de Vaucouleurs (Sersic n = 4, tabulated once by a Hankel
transform) and an exponential profile ((1 + k^2 r_s^2)^-3/2), sheared to their axis ratio
and position angle; P_b a Gaussian PSF of the band's FWHM; W the pixel box
(sinc x sinc), so pixels are integrals; x0 the centre (pixel 32 + a sub-pixel offset).
A pixel sum over the whole padded frame is the total flux exactly; the 64 x 64 crop loses
only the light beyond it.

Seeing: r-band FWHM lognormal, median 1.32" (SDSS), scaled per band as lambda^-0.2, so
u is worst (median 1.47"). Sky: typical SDSS dark-sky brightness per band; the noise per
pixel is sky + source Poisson (Gaussian with the Poisson variance: every pixel carries
>= ~20 sky electrons) + read noise, with electrons per nanomaggy set so that a point source
at the SDSS 95%-completeness magnitude (22.0, 22.2, 22.2, 21.3, 20.5) has S/N = 5 at the
median seeing. Images are sky-subtracted, in nanomaggies per pixel.

A fraction of cutouts carry one neighbour: a star (blackbody colours) or an exponential-disk
galaxy (template colours at another redshift), 6-40 px from the centre.
"""

from __future__ import annotations

import functools

import numpy as np
import scipy.fft
from scipy.special import gammaincinv, j0

from study.data.layout import EXTINCTION_R
from study.universe import population as pop_mod
from study.universe import sed

PIXEL_SCALE = 0.396  # arcsec per pixel
N_OUT = 64
N_PAD = 80
CROP = (N_PAD - N_OUT) // 2
SUB = 32  # galaxies per rendering batch: small enough for its arrays to stay in cache
LAMBDA_EFF = np.array([3551.0, 4686.0, 6166.0, 7480.0, 8932.0])  # A
SEEING_R = 1.32  # arcsec, median r-band FWHM
SEEING_SCALE = (LAMBDA_EFF / LAMBDA_EFF[2]) ** -0.2
SKY_MAG = np.array([22.1, 21.8, 21.0, 20.3, 19.0])  # mag / arcsec^2, SDSS dark sky
DEPTH_5SIG = np.array([22.0, 22.2, 22.2, 21.3, 20.5])  # SDSS 95% completeness, point sources
READ_NOISE_E = 5.0  # electrons per pixel
NEIGHBOUR_FRAC = 0.3
STAR_FRAC = 0.4  # of neighbours
KAPPA_MAX = 300.0  # largest k r_e of the de Vaucouleurs table (k <= pi sqrt 2, r_e <= 50 px)
TABLE_SIZE = 2048


@functools.cache
def devauc_table() -> np.ndarray:
    """Normalised 2-D Fourier transform of the de Vaucouleurs profile on kappa = k r_e.

    Hankel transform f(kappa) = int I(r) J0(kappa r) r dr / int I(r) r dr with
    I = exp(-b4 r^(1/4)) (r in units of r_e), integrated in t = r^(1/4) (trapezoid, 8000 nodes;
    3e-6 from 8x finer). Linear interpolation in sqrt(kappa) is good to 2e-5.

    Returns:
        (TABLE_SIZE,) float64 on sqrt(kappa) = linspace(0, sqrt(KAPPA_MAX), TABLE_SIZE).
    """
    b4 = gammaincinv(8, 0.5)
    t = np.linspace(0.0, 3.5, 8001)[1:]
    weight = np.exp(-b4 * t) * 4 * t**7
    kappa = np.linspace(0.0, KAPPA_MAX**0.5, TABLE_SIZE) ** 2
    r = t**4
    out = np.array([(j0(k * r) * weight).sum() for k in kappa])
    return out / weight.sum()


def _exp_ft(s: np.ndarray) -> np.ndarray:
    """(1 + s)^-3/2, the exponential disk's transform at s = (k r_s)^2: IEEE ops only (no pow,
    whose SIMD code differs between CPUs)."""
    t = 1 + s
    return 1 / (t * np.sqrt(t))


def _gauss_powers(q: np.ndarray, m_max: int) -> np.ndarray:
    """q^(m^2) for m = 0..m_max along a new last axis, by repeated multiplication (float64)."""
    out = np.empty((*q.shape, m_max + 1))
    out[..., 0] = 1.0
    step, q2 = q.copy(), q * q  # q^(2m - 1)
    for m in range(1, m_max + 1):
        out[..., m] = out[..., m - 1] * step
        step = step * q2
    return out


def _phase_powers(thetas: list[np.ndarray], ms: list[np.ndarray]) -> list[np.ndarray]:
    """e^{-i m theta} (B, len(m)) complex64 for each (theta, m) pair, integer m, from
    w = e^{-i theta} by repeated multiplication spelt out in real float64 ufuncs (no fused
    multiply-adds); m < 0 uses conj(w^|m|). All pairs share one recurrence (fewer, longer
    ufunc calls); every element's arithmetic is the same as alone."""
    theta = np.concatenate(thetas)
    c, s = sed.round32(np.cos(theta)), -sed.round32(np.sin(theta))
    m_max = max(int(np.abs(m).max()) for m in ms)
    re, im = np.empty((len(theta), m_max + 1)), np.empty((len(theta), m_max + 1))
    re[:, 0], im[:, 0] = 1.0, 0.0
    for k in range(1, m_max + 1):
        re[:, k] = re[:, k - 1] * c - im[:, k - 1] * s
        im[:, k] = re[:, k - 1] * s + im[:, k - 1] * c
    outs, start = [], 0
    for t, m in zip(thetas, ms, strict=True):
        rows = slice(start, start + len(t))
        out = np.empty((len(t), m.size), np.complex64)
        out.real = re[rows][:, np.abs(m)]
        out.imag = np.where(m < 0, -im[rows][:, np.abs(m)], im[rows][:, np.abs(m)])
        outs.append(out)
        start += len(t)
    return outs


def _outer(py: np.ndarray, px: np.ndarray) -> np.ndarray:
    """py (B, ky) x px (B, kx) -> (B, ky, kx) complex64, in real float32 ufuncs (no FMA)."""
    yr, yi = py.real[:, :, None], py.imag[:, :, None]
    xr, xi = px.real[:, None, :], px.imag[:, None, :]
    out = np.empty((py.shape[0], py.shape[1], px.shape[1]), np.complex64)
    out.real = yr * xr - yi * xi
    out.imag = yr * xi + yi * xr
    return out


class Renderer:
    """Renders blocks of galaxies; all constant grids are built once."""

    def __init__(self) -> None:
        ky = 2 * np.pi * np.fft.fftfreq(N_PAD)
        kx = 2 * np.pi * np.fft.rfftfreq(N_PAD)
        self.kx, self.ky = kx, ky
        self.kx2 = np.broadcast_to(kx**2, (N_PAD, kx.size)).astype(np.float32)
        self.ky2 = np.broadcast_to(ky[:, None] ** 2, (N_PAD, kx.size)).astype(np.float32)
        self.kxy = (ky[:, None] * kx[None, :]).astype(np.float32)
        self.my = np.rint(np.fft.fftfreq(N_PAD) * N_PAD).astype(np.int64)  # k = 2 pi m / N_PAD
        self.mx = np.arange(N_PAD // 2 + 1)
        self.wy = sed.round32(np.sinc(self.my / N_PAD))  # pixel box, sin(k/2) / (k/2)
        self.wx = sed.round32(np.sinc(self.mx / N_PAD))
        table = devauc_table()
        self.table = table.astype(np.float32)
        self.table_step = np.float32((TABLE_SIZE - 1) / KAPPA_MAX**0.5)
        # noise model (module doc): sky per pixel, electrons per nanomaggy, sky variance
        self.sky = 10 ** (-0.4 * (SKY_MAG - 22.5)) * PIXEL_SCALE**2  # nanomaggies / pixel
        sig_psf = SEEING_R * SEEING_SCALE / 2.3548 / PIXEL_SCALE  # px
        sigma = 10 ** (-0.4 * (DEPTH_5SIG - 22.5)) / 5 / np.sqrt(4 * np.pi * sig_psf**2)
        self.gain = (self.sky + np.sqrt(self.sky**2 + 4 * sigma**2 * READ_NOISE_E**2)) / (
            2 * sigma**2
        )
        self.sky_var = (self.sky * self.gain + READ_NOISE_E**2) / self.gain**2  # nanomaggies^2
        self.inv_gain32 = (1 / self.gain).astype(np.float32)[None, :, None, None]
        self.sky_var32 = self.sky_var.astype(np.float32)[None, :, None, None]
        self._bufs: dict[str, np.ndarray] = {}
        self.pop = pop_mod.population()

    def observing(self, rng: np.random.Generator, n: int, ebv: np.ndarray) -> dict[str, np.ndarray]:
        """Per-galaxy PSF and neighbour parameters (the image stream's first draws)."""
        fwhm_r = np.clip(SEEING_R * np.exp(0.15 * rng.standard_normal(n)), 0.8, 2.5)
        has = rng.random(n) < NEIGHBOUR_FRAC
        star = rng.random(n) < STAR_FRAC
        kind = np.where(has, np.where(star, 2, 1), 0).astype(np.uint8)
        radius = rng.uniform(6.0, 40.0, n)
        angle = rng.uniform(0.0, 2 * np.pi, n)
        r_mag = np.where(star, rng.uniform(14.5, 21.5, n), rng.uniform(16.0, 21.5, n))
        temp = rng.uniform(3500.0, 10000.0, n)
        t = rng.random(n)
        z_n = rng.uniform(0.02, 0.4, n)
        light = (1 - t)[:, None] * pop_mod.BLUE + t[:, None] * pop_mod.RED
        gal_colour = self.pop.unit_maggies(light, z_n)
        colour = np.where(
            star[:, None], self.pop.tables.star_maggies(temp), gal_colour / gal_colour[:, 2:3]
        )
        ext = 10 ** (-0.4 * EXTINCTION_R[None, :] * ebv[:, None])
        flux = np.where(has[:, None], colour * ext * 10 ** (-0.4 * (r_mag - 22.5))[:, None], 0.0)
        obs = {
            "psf_fwhm_arcsec": fwhm_r[:, None] * SEEING_SCALE[None, :],
            "neighbour_kind": kind,  # 0 none, 1 galaxy, 2 star
            "neighbour_offset_px": np.where(
                has[:, None], np.stack([radius * np.cos(angle), radius * np.sin(angle)], 1), 0.0
            ),
            "neighbour_flux": flux,  # nanomaggies, extinction applied
            "neighbour_re_arcsec": np.where(
                kind == 1, np.exp(np.log(1.2) + 0.4 * rng.standard_normal(n)), 0.0
            ),
            "neighbour_q": rng.uniform(0.3, 1.0, n),
            "neighbour_pa_rad": rng.uniform(0.0, np.pi, n),
        }
        return {k: sed.round32(v) if v.dtype == np.float64 else v for k, v in obs.items()}

    def _shape(self, re_px: np.ndarray, q: np.ndarray, pa: np.ndarray) -> np.ndarray:
        """(k r_e)^2 along the sheared ellipse, (B, N_PAD, N_PAD//2+1) float32."""
        c, s = np.cos(pa), np.sin(pa)
        a = (re_px**2 * (c**2 + q**2 * s**2)).astype(np.float32)[:, None, None]
        b = (re_px**2 * (s**2 + q**2 * c**2)).astype(np.float32)[:, None, None]
        h = (re_px**2 * 2 * c * s * (1 - q**2)).astype(np.float32)[:, None, None]
        return a * self.kx2 + b * self.ky2 + h * self.kxy

    def _devauc(self, s: np.ndarray) -> np.ndarray:
        x = np.sqrt(np.sqrt(s)) * self.table_step  # sqrt(kappa)
        i = np.minimum(x.astype(np.int32), TABLE_SIZE - 2)
        f = x - i.astype(np.float32)
        return self.table[i] * (1 - f) + self.table[i + 1] * f

    def factors(
        self, g: dict[str, np.ndarray], obs: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """Separable Fourier factors: PSF x pixel box and the centres' shifts.

        ``gy`` (B, 5, ky) and ``gx`` (B, 5, kx) are the Gaussian PSF times the pixel box (real,
        float32); ``py``/``px`` (B, ky)/(B, kx) the shift e^{-i k x0} of the galaxy and
        ``npy``/``npx`` its neighbour's (complex64). The grid is k = 2 pi m / N_PAD with integer
        m, so exp(-s k^2) = q^(m^2) and e^{-i k x0} = w^m follow from one q or w per galaxy by
        repeated IEEE multiplication: no per-frequency exp/sin/cos, whose SIMD code differs
        between CPUs, and so identical bits on any machine.
        """
        dk = 2 * np.pi / N_PAD
        sig2 = (obs["psf_fwhm_arcsec"] / 2.3548 / PIXEL_SCALE) ** 2 / 2  # (B, 5) px^2
        q = sed.round32(np.exp(-sig2 * dk**2))
        g_pos = _gauss_powers(q, N_PAD // 2)  # (B, 5, N_PAD/2 + 1) for m = 0..N/2
        out = {
            "gy": (g_pos[:, :, np.abs(self.my)] * self.wy).astype(np.float32),
            "gx": (g_pos[:, :, self.mx] * self.wx).astype(np.float32),
        }
        centre = N_PAD / 2 + g["offset_px"]  # (B, 2) x, y in padded pixels
        offset = obs.get("neighbour_offset_px", np.zeros_like(centre))
        near = centre + offset
        thetas = [centre[:, 0] * dk, centre[:, 1] * dk, near[:, 0] * dk, near[:, 1] * dk]
        ms = [self.mx, self.my, self.mx, self.my]
        out["px"], out["py"], out["npx"], out["npy"] = _phase_powers(thetas, ms)
        return out

    def noiseless(self, g: dict[str, np.ndarray], obs: dict[str, np.ndarray]) -> np.ndarray:
        """Noiseless cutouts (B, 5, 64, 64) float32 (a view into the padded frame), nanomaggies/px."""
        to_px = 1.0 / PIXEL_SCALE
        f_b = self._devauc(self._shape(g["re_bulge_arcsec"] * to_px, g["q_bulge"], g["pa_rad"]))
        s_d = self._shape(g["re_disk_arcsec"] * to_px / 1.6783, g["q_disk"], g["pa_rad"])
        f_d = _exp_ft(s_d)
        bulge = g["flux_bulge"].astype(np.float32)[:, :, None, None]
        disk = g["flux_disk"].astype(np.float32)[:, :, None, None]
        fac = self.factors(g, obs)
        gy, gx = fac["gy"], fac["gx"]
        amp = bulge * f_b[:, None] + disk * f_d[:, None]  # (B, 5, ky, kx) real
        amp *= gy[:, :, :, None]
        amp *= gx[:, :, None, :]
        ft = amp * _outer(fac["py"], fac["px"])[:, None]  # real x complex: exact
        idx = np.flatnonzero(obs["neighbour_kind"] > 0)
        if idx.size:
            prof = np.ones((idx.size, *self.kx2.shape), np.float32)
            gal = obs["neighbour_kind"][idx] == 1
            if gal.any():
                s_n = self._shape(
                    obs["neighbour_re_arcsec"][idx][gal] * to_px / 1.6783,
                    obs["neighbour_q"][idx][gal],
                    obs["neighbour_pa_rad"][idx][gal],
                )
                prof[gal] = _exp_ft(s_n)
            amp_n = obs["neighbour_flux"][idx].astype(np.float32)[:, :, None, None] * prof[:, None]
            amp_n *= gy[idx][:, :, :, None]
            amp_n *= gx[idx][:, :, None, :]
            ft[idx] += amp_n * _outer(fac["npy"][idx], fac["npx"][idx])[:, None]
        # inverse transform along ky, keep the 64 rows of the crop, then along kx
        rows = scipy.fft.ifft(ft, axis=2, overwrite_x=True)[:, :, CROP : CROP + N_OUT]
        return scipy.fft.irfft(rows, n=N_PAD, axis=3)[:, :, :, CROP : CROP + N_OUT]

    def add_noise(self, img: np.ndarray, rng: np.random.Generator, out: np.ndarray) -> None:
        """out = img + sky, source Poisson (Gaussian approximation) and read noise; sky-subtracted."""
        sigma = np.maximum(img, np.float32(0), out=self._buf("sigma", img.shape))
        sigma *= self.inv_gain32  # Poisson variance of the source, nanomaggies^2
        sigma += self.sky_var32
        np.sqrt(sigma, out=sigma)
        noise = rng.standard_normal(dtype=np.float32, out=self._buf("noise", img.shape))
        noise *= sigma
        np.add(img, noise, out=out)

    def _buf(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """A reusable float32 scratch array (no page faults from fresh allocations)."""
        buf = self._bufs.get(name)
        if buf is None or buf.shape != shape:
            buf = self._bufs[name] = np.empty(shape, np.float32)
        return buf

    def render_block(
        self,
        g: dict[str, np.ndarray],
        seed: int,
        block: int,
        out: np.ndarray,
        n_images: int | None = None,
    ) -> dict[str, np.ndarray]:
        """Render one population block into ``out`` (BLOCK, 5, 64, 64); returns observing truth.

        ``n_images``: render only the first n_images cutouts (rounded up to a batch of SUB; the
        rest of ``out`` is left unset), e.g. for a universe's last, partial block. The cutouts
        rendered are the same bits either way: the noise of a batch is drawn after that of the
        batches before it, and nothing later changes them.
        """
        rng = pop_mod.block_rng(seed, block, pop_mod.STREAM_IMAGE)
        n = len(g["zs"])
        obs = self.observing(rng, n, g["ebv"])
        buf = out if out.dtype == np.float32 else np.empty((SUB, 5, N_OUT, N_OUT), np.float32)
        for s in range(0, n if n_images is None else min(n, n_images), SUB):
            sl = slice(s, s + SUB)
            sub = self.noiseless(
                {k: v[sl] for k, v in g.items()}, {k: v[sl] for k, v in obs.items()}
            )
            if out.dtype == np.float32:
                self.add_noise(sub, rng, out[sl])
            else:
                self.add_noise(sub, rng, buf[: len(sub)])
                out[sl] = buf[: len(sub)]
        return obs

    def components(
        self, g: dict[str, np.ndarray], seed: int, block: int, n_images: int | None = None
    ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """The noiseless light of the central galaxy and of its neighbour, apart (measurements).

        The same block as ``render_block(g, seed, block, ...)`` (the same observing draws), each
        component rendered alone: ``central`` with the neighbour switched off, ``neighbour`` with
        the galaxy's fluxes set to 0. Their sum is that block's noiseless cutouts up to float32
        rounding (the transform is linear); the universe's own bytes are not touched.

        Returns:
            ``central``, ``neighbour``: (n, 5, 64, 64) float32 nanomaggies/px, n = ``n_images``
            (default the whole block); and the block's observing truth.
        """
        rng = pop_mod.block_rng(seed, block, pop_mod.STREAM_IMAGE)
        n = len(g["zs"]) if n_images is None else min(len(g["zs"]), n_images)
        obs = self.observing(rng, len(g["zs"]), g["ebv"])
        alone = obs | {"neighbour_kind": np.zeros_like(obs["neighbour_kind"])}
        dark = g | {k: np.zeros_like(g[k]) for k in ("flux_bulge", "flux_disk")}
        out = {k: np.empty((n, 5, N_OUT, N_OUT), np.float32) for k in ("central", "neighbour")}
        for s in range(0, n, SUB):
            sl = slice(s, min(s + SUB, n))
            for key, gal, ob in (("central", g, alone), ("neighbour", dark, obs)):
                sub = self.noiseless(
                    {k: v[sl] for k, v in gal.items()}, {k: v[sl] for k, v in ob.items()}
                )
                out[key][sl] = sub
        return out["central"], out["neighbour"], obs


@functools.lru_cache(maxsize=1)
def renderer() -> Renderer:
    """The process-wide Renderer."""
    return Renderer()


def universe_gain() -> np.ndarray:
    """(5,) electrons per nanomaggy of the noise model, u g r i z: the source Poisson term of
    the universe's ``phot_err`` (``study.data.aperture.measure``'s ``gain``, passed in by the
    builder and by ``python -m study.data photometry`` for a synthetic file)."""
    return np.asarray(renderer().gain, np.float64)
