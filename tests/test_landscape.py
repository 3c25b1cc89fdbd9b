"""Loss-landscape directions and slices (Li et al. 2018) on tiny models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from analysis.landscape import (
    TERMS,
    LandscapeBatch,
    load_batch,
    loss_settings,
    loss_weights,
    normalize_filters_,
    photoz_evaluator,
    random_direction,
    slice_1d,
    slice_2d,
    summarize_frame,
    summarize_slice,
)
from study.config import apply_overrides, config_from_dict
from study.data.stream import Batch
from study.model import build_model


def _tiny(n_bins=12):
    torch.manual_seed(0)
    return build_model("tiny_cnn", n_bins=n_bins, hidden=16).eval()


def test_filter_normalisation_matches_weights_and_zeroes_biasbn():
    model = _tiny()
    d = random_direction(model, torch.Generator().manual_seed(1))
    n_bn = 0
    for (name, w), di in zip(model.named_parameters(), d, strict=True):
        assert di.shape == w.shape
        if w.dim() <= 1:  # biases and BatchNorm weight/bias: zeroed ("biasbn")
            assert torch.count_nonzero(di) == 0, name
            n_bn += 1
            continue
        for i in range(w.shape[0]):  # every output filter has its weight filter's norm
            torch.testing.assert_close(di[i].norm(), w[i].detach().norm(), rtol=1e-5, atol=1e-8)
        assert not torch.allclose(di, w.detach())  # random, not a copy of the weights
    assert n_bn > 0
    bn_names = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert bn_names, "tiny_cnn should have BatchNorm to exercise the biasbn option"


def test_ignore_biasbn_false_copies_weights():
    w = [torch.randn(4, 3), torch.randn(4)]
    d = [torch.randn(4, 3), torch.randn(4)]
    normalize_filters_(d, w, ignore_biasbn=False)
    torch.testing.assert_close(d[1], w[1])
    torch.testing.assert_close(d[0].norm(dim=1), w[0].norm(dim=1))


def _batch(n_bins=12, n=10):
    g = torch.Generator().manual_seed(2)
    images = torch.rand(n, 5, 64, 64, generator=g) * 2
    zs = torch.rand(n, generator=g) * 0.39
    return LandscapeBatch(
        images=images,
        view=torch.flip(images, dims=[3]),
        ebv=torch.rand(n, generator=g) * 0.1,
        zs=zs,
        flux_table=0.5 + torch.rand(n, 5, n_bins, generator=g),
        edges=torch.linspace(0, 0.4, n_bins + 1),
    )


def test_slice_at_zero_equals_loss_on_batch():
    model, batch = _tiny(), _batch()
    weights = {"ce": 1.0, "l2": 1e-6, "flux": 0.1, "inv": 0.2, "cde": 0.3}
    before = [p.detach().clone() for p in model.parameters()]
    d = random_direction(model, torch.Generator().manual_seed(3))
    s = slice_1d(model, photoz_evaluator(batch, weights, chunk=4), d, np.array([-0.5, 0.0, 0.5]))
    for p, q in zip(model.parameters(), before, strict=True):  # weights restored
        assert torch.equal(p, q)
    at0 = s[s["alpha"] == 0.0].iloc[0]
    # independent reference: plain torch / numpy formulas on the whole batch at once
    with torch.no_grad():
        logits = model(batch.images, batch.ebv)
        p = torch.softmax(logits, 1).double().numpy()
        pv = torch.softmax(model(batch.view, batch.ebv), 1).double().numpy()
    zs, edges = batch.zs.numpy(), batch.edges.numpy()
    idx = np.clip(np.digitize(zs, edges) - 1, 0, len(edges) - 2)
    ce = float(F.cross_entropy(logits, torch.as_tensor(idx)))
    dz = np.diff(edges)
    f = p / dz
    cde = np.mean((f**2 * dz).sum(1) - 2 * f[np.arange(len(zs)), idx])
    inv = np.mean(((p - pv) ** 2).sum(1))
    flux = np.mean(
        np.abs(np.einsum("nbc,nc->nb", batch.flux_table.double().numpy(), p) - 1).mean(1)
    )
    l2 = sum(float((w.detach().double() ** 2).sum()) for w in model.parameters() if w.dim() >= 2)
    assert at0["ce"] == pytest.approx(ce, rel=1e-5)
    assert at0["cde"] == pytest.approx(cde, rel=1e-4)
    assert at0["inv"] == pytest.approx(inv, rel=1e-4, abs=1e-7)
    assert at0["flux"] == pytest.approx(flux, rel=1e-4)
    assert at0["l2"] == pytest.approx(l2, rel=1e-5)
    total = ce + 1e-6 * l2 + 0.1 * flux + 0.2 * inv + 0.3 * cde
    assert at0["total"] == pytest.approx(total, rel=1e-5)
    assert s["ce"].iloc[0] != pytest.approx(ce)  # moving along d changes the loss


# The run's loss settings the landscape must follow: the tiny preset's (one-hot targets, the
# group's paper CDE scale), the demo preset's Gaussian targets (loss.target_sigma=0.008, which
# the landscape once left out), and the demo's model shape (a 16 px crop, augmented after the
# crop, the narrow trunk) with truncated background draws and the density CDE scale.
ORIGIN_CASES = {
    "tiny": {},
    "target_sigma": {"loss.target_sigma": 0.008},
    "demo_shape": {
        "loss.target_sigma": 0.008,
        "loss.cde_scale": "density",
        "model.arch": "small_cnn",
        "model.crop": 16,
        "model.widths": (16, 16, 32, 32, 64, 64),
        "augment.fill": "truncated",
    },
}


@pytest.mark.parametrize("case", ORIGIN_CASES)
def test_landscape_origin_is_the_trainers_loss_term_by_term(tmp_path, case):
    """At the origin, the landscape's terms and total are train_step's, on a trained tiny run.

    Both go through study.losses (loss_terms, total_loss, the run's weights). Made comparable:
    the same mode (eval: train_step does not set it, so the model is put in eval mode first,
    as the evaluator does), the same view (the landscape's fixed view is
    ``augment(images, Generator().manual_seed(seed))``; train_step with ``loss.augment=False``
    forwards the plain images, as the landscape does, and draws its invariance view first from
    a generator with the same seed), and one chunk (no averaging over chunks). Then every
    value is the same float32 computation, so they agree exactly.
    """
    from test_train import make_file, tiny

    from analysis.results import load_trained_model
    from study.train import TERMS as TRAIN_TERMS
    from study.train import train, train_step

    data = make_file(tmp_path / "d.h5", n=120)
    over = ORIGIN_CASES[case]
    train(tiny(data, "constrained", **over), tmp_path / "run")
    config, model = load_trained_model(tmp_path / "run")
    batch = load_batch(config, tmp_path / "run", n_galaxies=16, seed=5)
    at0 = photoz_evaluator(batch, loss_weights(config), chunk=16, settings=loss_settings(config))(
        model
    )

    cfg = apply_overrides(config_from_dict(config), {"loss.augment": False})
    assert cfg.loss.g_flux > 0 and cfg.loss.g_inv > 0 and cfg.loss.g_cde > 0
    # the group's scale (issue 13) or the case's, and the case's target width: the evaluator
    # must follow both
    assert cfg.loss.cde_scale == over.get("loss.cde_scale", "paper")
    assert cfg.loss.target_sigma == over.get("loss.target_sigma", 0.0)
    trainer_batch = Batch(batch.images, batch.ebv, batch.zs, batch.flux_table)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # the values are those before the step
    model.eval()
    step = train_step(
        model, model, opt, trainer_batch, batch.edges, torch.Generator().manual_seed(5), cfg
    )
    trainer = dict(zip(TRAIN_TERMS, step.tolist(), strict=True))
    assert set(trainer) == set(TERMS)
    for term in TERMS:
        assert np.isfinite(trainer[term]), term
        assert at0[term] == trainer[term], term


class _Quadratic(nn.Module):
    """L(W) = ||W - W*||^2 with W* = the initial W: a bowl whose curvature is known."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 4)
        self.target = self.lin.weight.detach().clone()


def test_quadratic_toy_recovers_curvature():
    model = _Quadratic()
    w_norm2 = float(model.lin.weight.detach().pow(2).sum())

    def evaluate(m):
        return {"total": float((m.lin.weight.detach() - m.target).pow(2).sum())}

    d = random_direction(model, torch.Generator().manual_seed(4))
    alphas = np.linspace(-1, 1, 51)
    s = slice_1d(model, evaluate, d, alphas)
    # filter-normalised: ||d||^2 = sum of filter norms^2 = ||W||^2, bias direction zeroed,
    # so L(a) = a^2 ||W||^2 and d2L/da2 = 2 ||W||^2
    summ = summarize_frame(s).set_index("term").loc["total"]
    assert summ["curvature"] == pytest.approx(2 * w_norm2, rel=1e-6)
    assert summ["sharpness"] == pytest.approx(w_norm2, rel=1e-6)
    assert summ["value"] == pytest.approx(0.0, abs=1e-10)
    # 2D: L(a, b) = ||a d1 + b d2||^2; the corner (1, 1) gives ||d1 + d2||^2
    d2 = random_direction(model, torch.Generator().manual_seed(5))
    axis = np.linspace(-1, 1, 5)
    grid = slice_2d(model, evaluate, (d, d2), axis, axis)["total"]
    assert grid.shape == (5, 5)
    corner = float((d[0] + d2[0]).pow(2).sum())
    assert grid[-1, -1] == pytest.approx(corner, rel=1e-5)
    assert grid[2, 2] == pytest.approx(0.0, abs=1e-10)


def test_summarize_slice_hand_values():
    a = np.linspace(-1, 1, 21)
    s = summarize_slice(a, 3 * a**2 + a + 1)
    assert s["curvature"] == pytest.approx(6.0)
    assert s["value"] == pytest.approx(1.0)
    assert s["sharpness"] == pytest.approx(4.0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_slice_on_gpu_matches_cpu():
    model, batch = _tiny(), _batch()
    weights = {"ce": 1.0, "l2": 1e-6, "flux": 0.1, "inv": 0.1, "cde": 0.1}
    d = random_direction(model, torch.Generator().manual_seed(3))
    alphas = np.array([-0.5, 0.0, 0.5])
    cpu = slice_1d(model, photoz_evaluator(batch, weights), d, alphas)
    dev = torch.device("cuda")
    gpu_batch = LandscapeBatch(
        **{k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in vars(batch).items()}
    )
    gpu = slice_1d(
        model.to(dev), photoz_evaluator(gpu_batch, weights), [t.to(dev) for t in d], alphas
    )
    for term in ("ce", "flux", "inv", "cde", "total"):
        np.testing.assert_allclose(gpu[term], cpu[term], rtol=2e-3, atol=1e-5)
