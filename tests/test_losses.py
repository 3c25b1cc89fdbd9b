"""Loss terms against hand computations, numpy/speclite references and each other."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch import nn

from study.augment import random_d4
from study.losses import (
    bin_index,
    cde_loss,
    cde_loss_paper,
    cde_scale_factor,
    cross_entropy,
    flux_loss,
    flux_loss_reference,
    invariance_loss,
    l2_penalty,
    loss_terms,
    total_loss,
    weights_of,
)

EDGES = torch.linspace(0.0, 0.4, 181, dtype=torch.float64)


def test_bin_index_matches_numpy_digitize():
    zs = torch.tensor([0.0, 0.0011, 0.0022222, 0.1, 0.2345, 0.39999, 0.4], dtype=torch.float64)
    ref = np.clip(np.digitize(zs.numpy(), EDGES.numpy()) - 1, 0, 179)
    assert bin_index(zs, EDGES).tolist() == ref.tolist()
    assert bin_index(zs, EDGES)[-1] == 179  # the last edge belongs to the last bin


def test_cross_entropy_is_minus_log_p_of_true_bin():
    logits = torch.randn(4, 180, dtype=torch.float64)
    zs = torch.tensor([0.01, 0.1, 0.25, 0.399], dtype=torch.float64)
    idx = (zs / (0.4 / 180)).floor().long()
    ref = -torch.log_softmax(logits, 1)[torch.arange(4), idx].mean()
    assert cross_entropy(logits, zs, EDGES).item() == pytest.approx(ref.item(), rel=1e-6)


def test_cde_loss_hand_computation():
    # three bins of widths 0.1, 0.1, 0.2 on [0, 0.4]
    edges = torch.tensor([0.0, 0.1, 0.2, 0.4], dtype=torch.float64)
    p = torch.tensor([[0.2, 0.5, 0.3], [1.0, 0.0, 0.0]], dtype=torch.float64)
    zs = torch.tensor([0.15, 0.3], dtype=torch.float64)
    # galaxy 1: f = (2, 5, 1.5); sum f^2 dz = 0.4 + 2.5 + 0.45 = 3.35; f(zs) = 5 -> -6.65
    # galaxy 2: f = (10, 0, 0); sum = 10; f(zs) = 0 -> 10
    assert cde_loss(p, zs, edges).item() == pytest.approx((-6.65 + 10.0) / 2, rel=1e-12)


def test_cde_loss_paper_hand_computation():
    """The paper's scale: mean over batch and bins of p^2 - 2 p t (README "The CDE term's scale")."""
    edges = torch.tensor([0.0, 0.1, 0.2, 0.3], dtype=torch.float64)  # C = 3
    p = torch.tensor([[0.2, 0.5, 0.3], [1.0, 0.0, 0.0]], dtype=torch.float64)
    zs = torch.tensor([0.15, 0.25], dtype=torch.float64)
    # galaxy 1: (0.04 + 0.25 + 0.09 - 2 * 0.5) / 3 = -0.62 / 3; galaxy 2: (1 - 0) / 3
    want = (-0.62 / 3 + 1.0 / 3) / 2
    assert cde_loss_paper(p, zs, edges).item() == pytest.approx(want, rel=1e-12)
    # on equal bins, dz / C times the density-unit loss (dz = 0.1, C = 3)
    assert cde_scale_factor("paper", edges.numpy()) == pytest.approx(0.1 / 3, rel=1e-12)
    assert cde_loss_paper(p, zs, edges).item() == pytest.approx(
        cde_loss(p, zs, edges).item() * 0.1 / 3, rel=1e-12
    )
    assert cde_scale_factor("density", edges.numpy()) == 1.0
    # the paper's 180 bins over [0, 0.4]: 0.4 / 180^2, so the paper's g_cde = 0.1 is 1.23e-6
    assert cde_scale_factor("paper", EDGES.numpy()) == pytest.approx(0.4 / 180**2, rel=1e-12)
    with pytest.raises(ValueError, match="unknown scale"):
        cde_scale_factor("per_bin", edges.numpy())


def test_cde_loss_paper_gaussian_target_is_the_density_one_rescaled():
    g = torch.Generator().manual_seed(1)
    p = torch.softmax(3 * torch.randn(6, 180, generator=g, dtype=torch.float64), 1)
    zs = torch.rand(6, generator=g, dtype=torch.float64) * 0.4
    # the expectation of p_c(zs) under N(zs, 0.01^2) over the bins, computed here with scipy
    from scipy.special import ndtr

    e = EDGES.numpy()
    q = np.diff(ndtr((e[None, :] - zs.numpy()[:, None]) / 0.01), axis=1)
    q /= q.sum(axis=1, keepdims=True)
    pn = p.numpy()
    want = np.mean(((pn**2).sum(1) - 2 * (q * pn).sum(1)) / 180)
    got = cde_loss_paper(p, zs, EDGES, target_sigma=0.01).item()
    assert got == pytest.approx(want, rel=1e-6)  # the targets are float32
    dens = cde_loss(p, zs, EDGES, target_sigma=0.01).item()
    assert got == pytest.approx(dens * cde_scale_factor("paper", e), rel=1e-6)


def test_invariance_loss_hand_computation():
    p = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    q = torch.tensor([[0.4, 0.5, 0.1], [0.2, 0.3, 0.5]])
    assert invariance_loss(p, q).item() == pytest.approx((0.01 + 0.01) / 2, rel=1e-6)


def test_l2_penalty_sums_conv_and_linear_kernels_only():
    m = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(3, 4))
    ref = (m[0].weight ** 2).sum() + (m[3].weight ** 2).sum()
    torch.testing.assert_close(l2_penalty(m), ref)


def test_total_loss_is_the_weighted_sum():
    terms = {"ce": torch.tensor(2.0), "l2": torch.tensor(300.0), "flux": torch.tensor(0.5)}
    weights = {"ce": 1.0, "l2": 1e-6, "flux": 0.1, "cde": 0.1}
    assert total_loss(terms, weights).item() == pytest.approx(2.0 + 3e-4 + 0.05)
    with pytest.raises(KeyError):
        total_loss({"inv": torch.tensor(1.0)}, weights)


def test_zero_weighted_nan_term_neither_poisons_the_total_nor_gets_a_gradient():
    x = torch.tensor(2.0, requires_grad=True)
    y = torch.tensor(3.0, requires_grad=True)
    terms = {"ce": x, "l2": y * y, "inv": torch.tensor(float("nan"))}
    total = total_loss(terms, {"ce": 1.0, "l2": 0.0, "inv": 0.0})
    assert total.item() == 2.0
    total.backward()
    assert x.grad.item() == 1.0 and y.grad is None  # the zero-weighted term is not in the graph
    assert torch.isnan(total_loss(terms, {"ce": 1.0, "l2": 0.0, "inv": 0.5}))  # weighted NaN


def test_loss_terms_are_the_single_terms_and_nan_where_not_computable():
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 180))
    logits = model(torch.randn(5, 4, generator=g))
    view = model(torch.randn(5, 4, generator=g))
    zs = torch.rand(5, generator=g) * 0.4
    table = 0.5 + torch.rand(5, 5, 180, generator=g)
    edges = EDGES.float()
    p, pv = torch.softmax(logits, 1), torch.softmax(view, 1)
    t = loss_terms(logits, zs, edges, model, flux_table=table, logits_view=view)
    assert set(t) == {"ce", "l2", "flux", "inv", "cde"}
    torch.testing.assert_close(t["ce"], cross_entropy(logits, zs, edges))
    torch.testing.assert_close(t["l2"], l2_penalty(model))
    torch.testing.assert_close(t["flux"], flux_loss(p, table))
    torch.testing.assert_close(t["inv"], invariance_loss(p, pv))
    torch.testing.assert_close(t["cde"], cde_loss(p, zs, edges))
    paper = loss_terms(logits, zs, edges, model, cde_scale="paper")
    torch.testing.assert_close(paper["cde"], cde_loss_paper(p, zs, edges))
    assert all(torch.equal(paper[k], t[k]) for k in ("ce", "l2"))  # only the CDE term moves
    bare = loss_terms(logits, zs, edges, model)  # no flux table, no second view
    assert torch.isnan(bare["flux"]) and torch.isnan(bare["inv"])
    weights = {"ce": 1.0, "l2": 1e-6, "flux": 0.0, "inv": 0.0, "cde": 0.1}
    want = t["ce"] + 1e-6 * t["l2"] + 0.1 * t["cde"]
    torch.testing.assert_close(total_loss(bare, weights), want)


def test_weights_of_a_loss_config():
    from study.config import make_config

    loss = make_config("tiny", "constrained").loss
    w = weights_of(loss)
    assert w == {"ce": 1.0, "l2": loss.g_l2, "flux": 0.1, "inv": 0.1, "cde": 0.1}


class _PixelStatsNet(nn.Module):
    """D4-invariant by construction: a linear map of each band's sorted pixel values."""

    def __init__(self, n_pix: int, n_bins: int) -> None:
        super().__init__()
        self.fc = nn.Linear(5 * n_pix, n_bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = x.flatten(2).sort(-1).values.flatten(1)
        return self.fc(v).softmax(1)


def test_d4_invariant_model_has_zero_invariance_loss():
    torch.manual_seed(0)
    x = torch.randn(16, 5, 12, 12)
    net = _PixelStatsNet(144, 20)
    g = torch.Generator().manual_seed(0)
    assert invariance_loss(net(x), net(random_d4(x, g))).item() == 0.0
    # ...and a pooled-mean model is invariant up to the summation order's rounding
    pooled = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 20), nn.Softmax(1))
    xd = x.double()
    pooled = pooled.double()
    assert invariance_loss(pooled(xd), pooled(random_d4(xd, g))).item() < 1e-28
    # a model that sees pixel positions is not
    flat = nn.Sequential(nn.Flatten(), nn.Linear(5 * 144, 20), nn.Softmax(1))
    assert invariance_loss(flat(x), flat(random_d4(x, g))).item() > 1e-6


# ---- flux loss: table (one mat-vec) vs the paper's in-graph integrals, on kcorrect templates


def _templates() -> tuple[np.ndarray, np.ndarray]:
    """kcorrect default v4 templates: rest-frame wavelength (A) and (5, L) F_lambda."""
    kcorrect = pytest.importorskip("kcorrect")
    from astropy.io import fits

    path = os.path.join(
        os.path.dirname(kcorrect.__file__), "data", "templates", "kcorrect-default-v4.fits"
    )
    data = fits.getdata(path, "FLUX")
    return np.asarray(data["wave"][0], np.float64), np.asarray(data["flux"][0], np.float64)


def _sdss_curves() -> list[tuple[np.ndarray, np.ndarray]]:
    sf = pytest.importorskip("speclite.filters")
    return [
        (np.asarray(f.wavelength, np.float64), np.asarray(f.response, np.float64))
        for f in sf.load_filters("sdss2010-*")
    ]


def _galaxies(wave_obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Four template mixtures observed at four redshifts, on the common grid wave_obs."""
    rest_wave, rest_flux = _templates()
    coeffs = np.array(
        [[1, 0, 0, 0, 0], [0.2, 0.5, 0, 0.3, 0], [0, 0, 1, 0, 0], [0.1, 0.1, 0.1, 0.1, 0.6]]
    )
    zs = np.array([0.03, 0.11, 0.2, 0.37])
    spectra = np.stack(
        [
            np.interp(wave_obs / (1 + z), rest_wave, c @ rest_flux) / (1 + z)
            for c, z in zip(coeffs, zs, strict=True)
        ]
    )
    return zs, spectra / spectra.max()


def _numpy_flux_table(wave, spectra, zs, centers, curves) -> np.ndarray:
    """T[i, b, c] = Phi'_b(nu_c) / Phi'_b(1) by the trapezoid rule (Appendix D/E), numpy."""
    t = np.empty((len(zs), len(curves), len(centers)))
    for i, (z, f) in enumerate(zip(zs, spectra, strict=True)):
        for b, (bw, br) in enumerate(curves):
            phi1 = np.trapezoid(f * np.interp(wave, bw, br, left=0, right=0) * wave, wave)
            for c, zc in enumerate(centers):
                nu = (1 + zc) / (1 + z)
                # the shifted spectrum F(l / nu) on its own grid nu * wave
                lw = nu * wave
                t[i, b, c] = (
                    np.trapezoid(f * np.interp(lw, bw, br, left=0, right=0) * lw, lw) / phi1
                )
    return t


def test_flux_table_reference_matches_speclite_maggies():
    """Spot-check the numpy table against speclite's AB maggies of the shifted spectrum."""
    sf = pytest.importorskip("speclite.filters")
    filters = sf.load_filters("sdss2010-*")
    wave = np.linspace(2000.0, 16000.0, 7001)  # 2 A; covers every filter for 0.71 < nu < 1.4
    zs, spectra = _galaxies(wave)
    centers = np.array([0.001, 0.05, 0.15, 0.3, 0.399])
    table = _numpy_flux_table(wave, spectra[:2], zs[:2], centers, _sdss_curves())
    for i in range(2):
        m1 = np.array(filters.get_ab_maggies(spectra[i], wave).as_array().tolist()[0])
        for c, zc in enumerate(centers):
            nu = (1 + zc) / (1 + zs[i])
            m = np.array(filters.get_ab_maggies(spectra[i], nu * wave).as_array().tolist()[0])
            # speclite trims the quadrature to the filter's ends: agreement to 1e-4
            np.testing.assert_allclose(table[i, :, c], m / m1, rtol=1e-4)


@pytest.fixture(scope="module")
def flux_case():
    wave = np.linspace(3800.0, 9200.0, 2701)  # spectrograph range, 2 A; zero outside
    zs, spectra = _galaxies(wave)
    centers = 0.5 * (EDGES[1:] + EDGES[:-1]).numpy()
    curves = _sdss_curves()
    table = _numpy_flux_table(wave, spectra, zs, centers, curves)
    return wave, zs, spectra, curves, table


def test_flux_loss_table_and_in_graph_reference_agree(flux_case):
    wave, zs, spectra, curves, table = flux_case
    torch.manual_seed(0)
    logits = torch.randn(4, 180, dtype=torch.float64) * 2
    filters = [(torch.from_numpy(w), torch.from_numpy(r)) for w, r in curves]

    def values_and_grads(fn):
        lg = logits.clone().requires_grad_(True)
        loss = fn(lg.softmax(1))
        (grad,) = torch.autograd.grad(loss, lg)
        return loss.detach(), grad

    a, ga = values_and_grads(lambda p: flux_loss(p, torch.from_numpy(table)))
    b, gb = values_and_grads(
        lambda p: flux_loss_reference(
            p,
            torch.from_numpy(zs),
            torch.from_numpy(wave),
            torch.from_numpy(spectra),
            EDGES,
            filters,
        )
    )
    assert a.item() > 0.01  # a random CDE is far from flux-consistent
    assert b.item() == pytest.approx(a.item(), rel=1e-5)
    torch.testing.assert_close(gb, ga, rtol=1e-5, atol=1e-12)
    # hand check of the table form: mean over bands of |T p - 1|, batch mean
    p = logits.softmax(1).numpy()
    ref = np.mean(np.abs(np.einsum("ibc,ic->ib", table, p) - 1).mean(1))
    assert a.item() == pytest.approx(ref, rel=1e-12)


def test_flux_loss_is_zero_at_the_true_redshift_and_masks_nan_bands(flux_case):
    _, zs, _, _, table = flux_case
    # a delta at bin c gives T[b, c]; T is 1 at nu = 1, so near zs the loss is small
    idx = bin_index(torch.from_numpy(zs), EDGES)
    p = torch.nn.functional.one_hot(idx, 180).double()
    t = torch.from_numpy(table.copy())
    assert flux_loss(p, t).item() < 0.02
    # NaN rows (unusable bands) are left out of the band mean; an all-NaN galaxy is dropped
    t[0, 1] = float("nan")
    t[3] = float("nan")
    pr = torch.rand(4, 180, dtype=torch.float64)
    pr = pr / pr.sum(1, keepdim=True)
    err = (torch.einsum("ibc,ic->ib", torch.nan_to_num(t), pr) - 1).abs()
    ref = (torch.cat([err[0, [0, 2, 3, 4]]]).mean() + err[1].mean() + err[2].mean()) / 3
    assert flux_loss(pr, t).item() == pytest.approx(ref.item(), rel=1e-12)


def test_flux_loss_on_the_data_modules_table_matches_the_reference(flux_case):
    """The stored table (study.data.photometry.flux_table) and the in-graph integrals agree."""
    photometry = pytest.importorskip("study.data.photometry")
    wave, zs, spectra, _, _ = flux_case
    centers = 0.5 * (EDGES[1:] + EDGES[:-1]).numpy()
    table = torch.from_numpy(photometry.flux_table(wave, spectra, zs, centers))
    filters = [(torch.from_numpy(w), torch.from_numpy(r)) for w, r in photometry.filter_curves()]
    torch.manual_seed(1)
    logits = torch.randn(4, 180, dtype=torch.float64, requires_grad=True)
    a = flux_loss(logits.softmax(1), table)
    (ga,) = torch.autograd.grad(a, logits)
    b = flux_loss_reference(
        logits.softmax(1),
        torch.from_numpy(zs),
        torch.from_numpy(wave),
        torch.from_numpy(spectra),
        EDGES,
        filters,
    )
    (gb,) = torch.autograd.grad(b, logits)
    assert b.item() == pytest.approx(a.item(), rel=1e-5)
    torch.testing.assert_close(gb, ga, rtol=1e-5, atol=1e-12)


def test_gaussian_targets_are_normal_bin_masses_and_smoothed_terms_match_by_hand():
    from scipy.stats import norm

    from study.losses import cross_entropy, gaussian_targets

    edges = np.linspace(0.0, 0.4, 181)
    zs = torch.tensor([0.1013, 0.0021, 0.3987], dtype=torch.float64)
    q = gaussian_targets(zs, edges, 0.008).double()
    for i, z in enumerate(zs.tolist()):
        mass = np.diff(norm.cdf(edges, loc=z, scale=0.008))
        np.testing.assert_allclose(q[i].numpy(), mass / mass.sum(), atol=1e-7)
    logits = torch.randn(3, 180, dtype=torch.float64)
    logp = torch.log_softmax(logits, dim=1)
    want_ce = -(q * logp).sum(1).mean()
    torch.testing.assert_close(
        cross_entropy(logits, zs, edges, 0.008).double(), want_ce, atol=1e-6, rtol=1e-6
    )
    p, dz = logp.exp(), 0.4 / 180
    want_cde = ((p / dz) ** 2 * dz).sum(1) - 2 * (q * p / dz).sum(1)
    torch.testing.assert_close(
        cde_loss(p, zs, edges, 0.008).double(), want_cde.mean(), atol=1e-4, rtol=1e-6
    )
    # a width far below a bin: the one-hot target again (zs away from the bin edges)
    torch.testing.assert_close(
        cross_entropy(logits, zs, edges, 1e-6), cross_entropy(logits, zs, edges), atol=1e-5, rtol=0
    )
