"""The kcorrect template spectra and the exact flux table T (SPEC 2) of their combinations.

The five kcorrect v4 templates (Blanton & Roweis 2007, ``kcorrect-default-v4.fits`` shipped in
the ``kcorrect`` package), rest frame, at 10 pc per unit coefficient. A spectrum that is a
non-negative combination of them, ``F(l) ∝ sum_k a_k S_k(l / (1 + z))``, has its flux table
from cumulative integrals precomputed once per binning (``FluxTableMaker``): two table look-ups
per galaxy instead of 180 x 5 integrals. The universe's galaxies are such spectra
(``study.universe``), and so are the template fits to any file's photometry
(``study.data.templates``); both make T here, so the data package never imports the universe.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

K_TEMPLATES = 5
REST_RANGE = (1500.0, 12500.0)  # A: rest wavelengths that reach u..z (2980-11230 A) for z <= 0.45
FT_BATCH = 64  # galaxies per batch of FluxTableMaker: temporaries of ~1 MB stay in cache


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
