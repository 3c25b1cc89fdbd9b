"""Loss terms (SPEC 2): each a small pure function returning a scalar tensor (a batch mean).

Total: ``L = CE + g_l2 * ||theta||^2 + g_flux * P_flux + g_inv * P_inv + g_cde * P_cde``,
formed by ``total_loss`` as one explicit weighted sum.

Shapes: ``p`` (B, C) probabilities (softmax of the logits), ``zs`` (B,) spectroscopic redshifts,
``edges`` (C + 1,) bin edges in redshift (a tensor on the same device, or anything
``torch.as_tensor`` accepts).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def _edges(edges: torch.Tensor | Sequence[float], like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(edges, device=like.device).to(like.dtype)


def bin_index(zs: torch.Tensor, edges: torch.Tensor | Sequence[float]) -> torch.Tensor:
    """Index c of the bin [edges[c], edges[c+1]) holding each zs; clamped to [0, C - 1].

    zs equal to the last edge falls in the last bin; values outside the range go to the end bins.
    """
    inner = _edges(edges, zs)[1:-1].contiguous()  # (C - 1,)
    return torch.bucketize(zs.contiguous(), inner, right=True)


def cross_entropy(
    logits: torch.Tensor, zs: torch.Tensor, edges: torch.Tensor | Sequence[float]
) -> torch.Tensor:
    """Cross entropy of softmax(logits) (B, C) against the bin holding zs; batch mean."""
    return F.cross_entropy(logits.float(), bin_index(zs.float(), edges))


def l2_penalty(model: nn.Module) -> torch.Tensor:
    """Sum of squares of the model's kernels: every parameter with ndim >= 2.

    That is the conv and linear weights; biases and BatchNorm scales/shifts are not penalised
    (Hayat et al. and the paper put the L2 regulariser on the kernels, as Keras'
    ``kernel_regularizer`` does).
    """
    kernels = [w for w in model.parameters() if w.ndim >= 2]
    return torch.stack([w.float().pow(2).sum() for w in kernels]).sum()


def flux_loss(p: torch.Tensor, flux_table: torch.Tensor) -> torch.Tensor:
    """P_flux from the precomputed table T: mean over usable bands of |T[b] . p - 1|.

    Args:
        p: (B, C) probabilities.
        flux_table: (B, 5, C), ``T[b, c] = Phi'_b(nu_c) / Phi'_b(1)``; a band whose row holds
            NaN (Phi'_b(1) <= 0) is left out.

    Returns:
        Mean over the galaxies with at least one usable band of the per-galaxy band mean
        (0 when no galaxy in the batch has one).
    """
    usable = torch.isfinite(flux_table).all(dim=2)  # (B, 5)
    table = torch.where(usable[:, :, None], flux_table, 0.0).to(p.dtype)
    expected = torch.einsum("bkc,bc->bk", table, p)  # (B, 5) = E[Phi'_b] / Phi'_b(1)
    return _masked_band_mean((expected - 1.0).abs(), usable)


def _masked_band_mean(err: torch.Tensor, usable: torch.Tensor) -> torch.Tensor:
    """(B, K) errors -> mean over usable bands per galaxy, then over galaxies with any band."""
    n_bands = usable.sum(dim=1)  # (B,)
    per_galaxy = torch.where(usable, err, 0.0).sum(dim=1) / n_bands.clamp(min=1)
    has_band = n_bands > 0
    return per_galaxy.sum() / has_band.sum().clamp(min=1)


def _interp_zero(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of (xp, fp) at x (any shape), zero outside [xp[0], xp[-1]]."""
    i = torch.searchsorted(xp, x.contiguous()).clamp(1, xp.numel() - 1)
    x0, x1, f0, f1 = xp[i - 1], xp[i], fp[i - 1], fp[i]
    y = f0 + (f1 - f0) * (x - x0) / (x1 - x0)
    return torch.where((x >= xp[0]) & (x <= xp[-1]), y, torch.zeros_like(y))


def flux_loss_reference(
    p: torch.Tensor,
    zs: torch.Tensor,
    wave: torch.Tensor | np.ndarray,
    spectra: torch.Tensor | np.ndarray,
    edges: torch.Tensor | Sequence[float],
    filters: Sequence[tuple[torch.Tensor | np.ndarray, torch.Tensor | np.ndarray]],
) -> torch.Tensor:
    """P_flux the paper's way: trapezoid integrals recomputed inside the graph (slow).

    With the change of variables of the paper's Appendix D, the shifted spectrum
    F(lambda / nu) needs no resampling: ``Phi'_b(nu) ∝ nu^2 * int F(l) R_b(nu l) l dl`` on the
    spectrum's own (fine) grid, R_b linearly interpolated (zero outside its curve; F zero
    outside the spectrograph range). The band's normalisation ``int c R_b / l dl`` cancels in
    ``Phi'_b(nu) / Phi'_b(1)``. Memory is O(B * C * L) per band.

    Args:
        p: (B, C) probabilities.
        zs: (B,) spectroscopic redshifts.
        wave: (L,) observed-frame wavelength grid of the spectra, Angstrom, increasing.
        spectra: (B, L) observed F_lambda, erg/s/cm^2/A (any common scale).
        edges: (C + 1,) redshift bin edges.
        filters: per band (wavelength in A (M,), response (M,)), tensors or arrays, e.g.
            ``study.data.photometry.filter_curves()`` (the SDSS 2010 curves).

    Returns:
        Scalar, the same quantity as ``flux_loss(p, T)`` with T built from these spectra.
    """
    e = _edges(edges, p)
    centers = 0.5 * (e[:-1] + e[1:])  # (C,)
    nu = (1.0 + centers)[None, :] / (1.0 + zs.to(p.dtype))[:, None]  # (B, C)
    wave = torch.as_tensor(wave, device=p.device).to(p.dtype)
    weighted = torch.as_tensor(spectra, device=p.device).to(p.dtype) * wave  # (B, L), F(l) * l
    errs, usables = [], []
    for band_wave, band_resp in filters:
        bw = torch.as_tensor(band_wave, device=p.device).to(p.dtype)
        br = torch.as_tensor(band_resp, device=p.device).to(p.dtype)
        resp_shift = _interp_zero(nu[:, :, None] * wave, bw, br)  # (B, C, L) R_b(nu l)
        phi_nu = nu**2 * torch.trapezoid(weighted[:, None, :] * resp_shift, wave, dim=-1)
        phi_1 = torch.trapezoid(weighted * _interp_zero(wave, bw, br), wave, dim=-1)  # (B,)
        usable = phi_1 > 0
        ratio = phi_nu / torch.where(usable, phi_1, 1.0)[:, None]  # (B, C) row of T
        errs.append(((ratio * p).sum(dim=1) - 1.0).abs())
        usables.append(usable)
    return _masked_band_mean(torch.stack(errs, dim=1), torch.stack(usables, dim=1))


def invariance_loss(p: torch.Tensor, p_view: torch.Tensor) -> torch.Tensor:
    """P_inv: sum over bins of (p - p_view)^2, batch mean; gradients flow through both."""
    return (p - p_view).pow(2).sum(dim=1).mean()


def cde_loss(
    p: torch.Tensor, zs: torch.Tensor, edges: torch.Tensor | Sequence[float]
) -> torch.Tensor:
    """P_cde (Izbicki & Lee 2017): sum_c f_c^2 dz_c - 2 f_{c(zs)}, f = p / dz; batch mean.

    In density units (1 / redshift); a perfect delta-like CDE tends to -1 / dz.
    """
    e = _edges(edges, p)
    dz = e[1:] - e[:-1]  # (C,)
    f = p / dz  # (B, C) density
    f_true = f.gather(1, bin_index(zs, e)[:, None]).squeeze(1)  # (B,)
    return ((f**2 * dz).sum(dim=1) - 2.0 * f_true).mean()


def total_loss(terms: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> torch.Tensor:
    """One explicit weighted sum ``sum_k weights[k] * terms[k]`` over the given terms.

    Every term needs a weight (e.g. ``{"ce": 1.0, "l2": 1e-6, "flux": 0.1}``); a missing one is
    a ``KeyError`` rather than a silent zero.
    """
    if not terms:
        raise ValueError("total_loss: no terms")
    missing = set(terms) - set(weights)
    if missing:
        raise KeyError(f"total_loss: no weight for term(s) {sorted(missing)}")
    total = sum(weights[k] * v for k, v in terms.items())
    assert isinstance(total, torch.Tensor)
    return total
