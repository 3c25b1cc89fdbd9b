"""Loss terms (SPEC 2): each a small pure function returning a scalar tensor (a batch mean).

Total: ``L = CE + g_l2 * ||theta||^2 + g_flux * P_flux + g_inv * P_inv + g_cde * P_cde``.
P_cde is trained on one of two scales (``loss.cde_scale``, ``CDE_SCALES``): ``density``, the
Izbicki & Lee loss in density units (``cde_loss``, as the metric), or ``paper``, the paper's
(``cde_loss_paper``, ``dz / C`` times smaller on equal bins; README "The CDE term's scale").
The objective lives here once, for the trainer, the landscape and the benchmarks alike:
``loss_terms`` gives every term of a batch, ``weights_of`` the weights of a loss config, and
``total_loss`` their one explicit weighted sum.

Shapes: ``p`` (B, C) probabilities (softmax of the logits), ``zs`` (B,) spectroscopic redshifts,
``edges`` (C + 1,) bin edges in redshift (a tensor on the same device, or anything
``torch.as_tensor`` accepts).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, TypedDict

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from study.config import LossConfig

# The scales the CDE training term can be on (``loss.cde_scale``): the metric is always density.
CDE_SCALES = ("density", "paper")


def _edges(edges: torch.Tensor | Sequence[float], like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(edges, device=like.device).to(like.dtype)


def bin_index(zs: torch.Tensor, edges: torch.Tensor | Sequence[float]) -> torch.Tensor:
    """Index c of the bin [edges[c], edges[c+1]) holding each zs; clamped to [0, C - 1].

    zs equal to the last edge falls in the last bin; values outside the range go to the end bins.
    """
    inner = _edges(edges, zs)[1:-1].contiguous()  # (C - 1,)
    return torch.bucketize(zs.contiguous(), inner, right=True)


def cross_entropy(
    logits: torch.Tensor,
    zs: torch.Tensor,
    edges: torch.Tensor | Sequence[float],
    target_sigma: float = 0.0,
) -> torch.Tensor:
    """Cross entropy of softmax(logits) (B, C) against the bin holding zs; batch mean.

    With ``target_sigma > 0`` (redshift units) the target is ``gaussian_targets`` instead of
    the one-hot bin: ``-sum_c q_c log p_c``.
    """
    if target_sigma <= 0:
        return F.cross_entropy(logits.float(), bin_index(zs.float(), edges))
    q = gaussian_targets(zs, edges, target_sigma)
    return -(q * torch.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


def gaussian_targets(
    zs: torch.Tensor, edges: torch.Tensor | Sequence[float], sigma: float
) -> torch.Tensor:
    """(B, C) soft targets: the mass of N(zs, sigma^2) in each bin, renormalised to sum to 1.

    Computed in float64 from the normal CDF at the edges, so a target keeps where inside its
    bin zs lies; the mass beyond the end edges is folded back by the renormalisation.
    """
    e = torch.as_tensor(edges, device=zs.device).to(torch.float64)  # (C + 1,)
    u = (e[None, :] - zs.to(torch.float64)[:, None]) / sigma  # (B, C + 1)
    mass = torch.diff(torch.special.ndtr(u), dim=1).clamp(min=0)  # (B, C)
    return (mass / mass.sum(dim=1, keepdim=True)).float()


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
    p: torch.Tensor,
    zs: torch.Tensor,
    edges: torch.Tensor | Sequence[float],
    target_sigma: float = 0.0,
) -> torch.Tensor:
    """P_cde (Izbicki & Lee 2017): sum_c f_c^2 dz_c - 2 f_{c(zs)}, f = p / dz; batch mean.

    In density units (1 / redshift); a perfect delta-like CDE tends to -1 / dz. With
    ``target_sigma > 0`` (a training target, as in ``cross_entropy``) ``f_{c(zs)}`` becomes
    its expectation under ``gaussian_targets``, ``sum_c q_c f_c``: the term is then minimised
    by p = q instead of a spike in one bin.
    """
    e = _edges(edges, p)
    dz = e[1:] - e[:-1]  # (C,)
    f = p / dz  # (B, C) density
    if target_sigma > 0:
        f_true = (gaussian_targets(zs, e, target_sigma).to(f.dtype) * f).sum(dim=1)  # (B,)
    else:
        f_true = f.gather(1, bin_index(zs, e)[:, None]).squeeze(1)  # (B,)
    return ((f**2 * dz).sum(dim=1) - 2.0 * f_true).mean()


def cde_loss_paper(
    p: torch.Tensor,
    zs: torch.Tensor,
    edges: torch.Tensor | Sequence[float],
    target_sigma: float = 0.0,
) -> torch.Tensor:
    """P_cde on the paper's scale: the mean over batch *and bins* of ``p_c^2 - 2 p_c t_c``.

    That is ``(sum_c p_c^2 - 2 p_{c(zs)}) / C`` per galaxy, in probability units, with ``t``
    the one-hot bin holding zs (or ``gaussian_targets`` when ``target_sigma > 0``, as in
    ``cde_loss``). On C equal bins of width dz it is ``cde_loss * dz / C`` exactly (the same
    minimiser, a constant factor: 1.23e-5 on 180 bins over [0, 0.4]); it is the normalisation
    that puts a network of sigma_nmad near 0.012 at the paper's Table 1 values of about -8e-4
    (README "The CDE term's scale": the candidates and their numbers).
    """
    e = _edges(edges, p)
    if target_sigma > 0:
        t = gaussian_targets(zs, e, target_sigma).to(p.dtype)  # (B, C)
    else:
        t = F.one_hot(bin_index(zs, e), p.shape[1]).to(p.dtype)  # (B, C)
    return (p**2 - 2.0 * p * t).mean()


def cde_term(
    p: torch.Tensor,
    zs: torch.Tensor,
    edges: torch.Tensor | Sequence[float],
    target_sigma: float = 0.0,
    scale: str = "density",
) -> torch.Tensor:
    """The CDE training term on ``scale`` (``CDE_SCALES``): ``cde_loss`` or ``cde_loss_paper``."""
    if scale == "density":
        return cde_loss(p, zs, edges, target_sigma)
    if scale == "paper":
        return cde_loss_paper(p, zs, edges, target_sigma)
    raise ValueError(f"cde_term: unknown scale {scale!r}; use one of {', '.join(CDE_SCALES)}")


def cde_scale_factor(scale: str, edges: Sequence[float] | np.ndarray) -> float:
    """What the CDE term on ``scale`` is, as a multiple of the density-unit term (equal bins).

    1 for ``density``; ``mean(dz) / C`` for ``paper`` (exact on equal bins), so a weight
    ``g_cde`` on that scale is the density-unit weight ``g_cde * cde_scale_factor``: the
    paper's 0.1 is 1.23e-6 on 180 bins over [0, 0.4].
    """
    e = np.asarray(edges, dtype=float)
    if scale == "density":
        return 1.0
    if scale == "paper":
        return float(np.mean(np.diff(e)) / (len(e) - 1))
    raise ValueError(
        f"cde_scale_factor: unknown scale {scale!r}; use one of {', '.join(CDE_SCALES)}"
    )


def loss_terms(
    logits: torch.Tensor,
    zs: torch.Tensor,
    edges: torch.Tensor | Sequence[float],
    model: nn.Module,
    *,
    flux_table: torch.Tensor | None = None,
    logits_view: torch.Tensor | None = None,
    target_sigma: float = 0.0,
    cde_scale: str = "density",
) -> dict[str, torch.Tensor]:
    """Every term of SPEC 2 for one batch: ce, l2, flux, cde, inv, each a scalar tensor.

    A term that cannot be computed is NaN: ``flux`` without a flux table, ``inv`` without a
    second view. The others are always computed (cheap functions of ``p``), so they can be
    logged whatever their weight; ``total_loss`` leaves a zero-weighted term out of the sum,
    so it costs no gradient.

    Args:
        logits: (B, C) network outputs for the batch (any float dtype, e.g. bf16 under
            autocast; the terms are computed in float32).
        zs: (B,) spectroscopic redshifts.
        edges: (C + 1,) redshift bin edges.
        model: the network (its kernels give ``l2``).
        flux_table: (B, 5, C) the batch's T (``flux_loss``), or None.
        logits_view: (B, C) the network's outputs for the second view ``Theta(B(x))`` of the
            same galaxies (``invariance_loss``; gradients flow through both), or None.
        target_sigma: the Gaussian target width in redshift of the CE and CDE terms
            (``loss.target_sigma``; 0 = the bin holding zs).
        cde_scale: the scale of the ``cde`` term (``loss.cde_scale``, ``cde_term``); the
            metric ``cde_loss`` (study.metrics) is density whatever this is.

    Returns:
        ``{"ce", "l2", "flux", "cde", "inv"}``, in the order ``total_loss`` adds them (the
        order the trainer has always summed in: float addition is not associative, and a
        reordered sum would change a run's numbers in the last bit).
    """
    p = torch.softmax(logits.float(), dim=1)  # (B, C)
    nan = torch.full((), float("nan"), device=logits.device)
    terms = {"ce": cross_entropy(logits, zs, edges, target_sigma), "l2": l2_penalty(model)}
    terms["flux"] = flux_loss(p, flux_table) if flux_table is not None else nan
    terms["cde"] = cde_term(p, zs, edges, target_sigma, cde_scale)
    if logits_view is None:
        terms["inv"] = nan
    else:
        terms["inv"] = invariance_loss(p, torch.softmax(logits_view.float(), dim=1))
    return terms


class LossSettings(TypedDict):
    """``loss_terms``'s keyword settings (``settings_of``)."""

    target_sigma: float  # redshift units; 0 = the bin holding zs
    cde_scale: str  # one of CDE_SCALES


def settings_of(loss: LossConfig) -> LossSettings:
    """The keyword settings of ``loss_terms`` under a loss config: its target width and CDE scale.

    The one place a config's loss settings become ``loss_terms``'s arguments: the trainer
    (``study.train.batch_terms``), its benchmark and the landscape all call ``loss_terms(...,
    **settings_of(cfg.loss))``, so none of them can leave one out (the landscape once did).
    """
    return {"target_sigma": loss.target_sigma, "cde_scale": loss.cde_scale}


def weights_of(loss: LossConfig) -> dict[str, float]:
    """The weight of each term of ``loss_terms`` under a loss config (SPEC 2: CE's is 1)."""
    return {"ce": 1.0, "l2": loss.g_l2, "flux": loss.g_flux, "inv": loss.g_inv, "cde": loss.g_cde}


def total_loss(terms: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> torch.Tensor:
    """One explicit weighted sum ``sum_k weights[k] * terms[k]``, over the terms with weight != 0.

    Every term needs a weight (e.g. ``weights_of(cfg.loss)``); a missing one is a ``KeyError``
    rather than a silent zero. A term whose weight is 0 is left out, not multiplied by 0: a
    NaN term (``inv`` with no second view) then cannot poison the total, and backward never
    reaches it. A NaN term with a nonzero weight gives a NaN total, as it should.
    """
    missing = set(terms) - set(weights)
    if missing:
        raise KeyError(f"total_loss: no weight for term(s) {sorted(missing)}")
    weighted = [weights[k] * v for k, v in terms.items() if weights[k] != 0]
    if not weighted:
        raise ValueError("total_loss: no term with a nonzero weight")
    total = sum(weighted)
    assert isinstance(total, torch.Tensor)
    return total
