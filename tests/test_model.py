"""Model presets: shapes, parameter arithmetic, gradients, input scaling."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import nn

from study.errors import UserError
from study.model import ARCHS, INPUT_SOFTENING, build_model, scale_input


def _n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("n_bins", [180, 7])
def test_paper_model_parameter_count_matches_torchvision_arithmetic(n_bins):
    ref = _n_params(torchvision.models.resnet50(weights=None))  # 25,557,032
    expected = (
        ref
        - 64 * 3 * 7 * 7  # torchvision's 3-channel conv1 (no bias)
        - (2048 * 1000 + 1000)  # torchvision's fc
        + 64 * 5 * 7 * 7  # 5-band conv1
        + (2048 * 1024 + 1024)  # Linear(2048 -> 1024)
        + (1025 * n_bins + n_bins)  # Linear(1025 -> C)
    )
    m = build_model("resnet50_hayat", n_bins=n_bins)
    assert _n_params(m) == expected
    assert m.backbone.conv1.stride == (1, 1) and m.backbone.conv1.in_channels == 5
    assert isinstance(m.backbone.maxpool, nn.Identity)
    fast = build_model("resnet50", n_bins=n_bins)
    assert _n_params(fast) == expected
    assert fast.backbone.conv1.stride == (2, 2)
    assert isinstance(fast.backbone.maxpool, nn.MaxPool2d)


def test_no_dropout_and_he_normal_init():
    torch.manual_seed(0)
    m = build_model("resnet18", n_bins=10, hidden=64)
    assert not any(isinstance(x, nn.Dropout) for x in m.modules())
    # He-normal, fan-in: std = sqrt(2 / fan_in)
    w = m.fc_hidden.weight  # (64, 512)
    assert abs(w.std().item() / (2.0 / 512) ** 0.5 - 1) < 0.05
    assert abs(w.mean().item()) < 0.01
    assert torch.all(m.fc_hidden.bias == 0)
    conv = m.backbone.layer1[0].conv1.weight  # (64, 64, 3, 3)
    assert abs(conv.std().item() / (2.0 / (64 * 9)) ** 0.5 - 1) < 0.05


def test_unknown_arch_is_user_error():
    with pytest.raises(UserError, match="model.arch"):
        build_model("vgg")


def test_scale_input_is_asinh():
    x = torch.tensor([-0.1, 0.0, 0.05, 100.0])
    expected = torch.log(x / INPUT_SOFTENING + torch.sqrt((x / INPUT_SOFTENING) ** 2 + 1))
    torch.testing.assert_close(scale_input(x), expected)


@pytest.mark.parametrize("arch", ["tiny_cnn", "small_cnn", "resnet18"])
def test_every_parameter_gets_a_finite_gradient(arch):
    torch.manual_seed(1)
    m = build_model(arch, n_bins=12, hidden=32)
    x = torch.rand(2, 5, 64, 64) * 3.0 - 0.1  # nanomaggies
    ebv = torch.rand(2) * 0.1
    feats = m.forward_features(x)
    assert feats.shape == (2, m.num_features)
    logits = m.forward_head(feats, ebv)
    assert logits.shape == (2, 12)
    torch.testing.assert_close(logits, m(x, ebv))
    logits.logsumexp(1).sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert torch.isfinite(logits).all()


def test_ebv_enters_the_head():
    torch.manual_seed(2)
    m = build_model("tiny_cnn", n_bins=5, hidden=8).eval()
    x = torch.rand(1, 5, 64, 64)
    a = m(x, torch.tensor([0.0]))
    b = m(x, torch.tensor([0.3]))
    torch.testing.assert_close(b - a, 0.3 * m.fc_out.weight[:, -1][None, :])


def test_archs_list_builds():
    for arch in ARCHS:
        if arch.startswith("resnet50"):
            continue  # covered by the parameter-count test
        assert isinstance(build_model(arch, n_bins=4, hidden=8), nn.Module)


def test_paper_model_forward_backward_at_64px():
    torch.manual_seed(3)
    m = build_model("resnet50_hayat", n_bins=180)
    x = torch.rand(1, 5, 64, 64)
    logits = m(x, torch.tensor([0.02]))
    assert logits.shape == (1, 180)
    m.eval()  # batch of one: BatchNorm in eval mode for the backward check too
    m(x, torch.tensor([0.02])).logsumexp(1).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


def test_centre_pool_is_a_normalised_d4_invariant_window():
    from study.augment import random_d4
    from study.model import CentrePool

    pool = CentrePool(0.25)
    h = torch.randn(16, 3, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(pool(torch.ones(1, 1, 8, 8)), torch.ones(1, 1))
    g = torch.Generator().manual_seed(0)
    torch.testing.assert_close(pool(random_d4(h, g)), pool(h), rtol=1e-12, atol=1e-12)
    # the centre weighs more than the corner
    corner, centre = torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8)
    corner[..., 0, 0], centre[..., 3, 4] = 1.0, 1.0
    assert pool(centre).item() > 10 * pool(corner).item()


def test_gaussian_apertures_equal_centre_pool_apertures():
    from study.model import CentrePool, gaussian_apertures

    x = torch.rand(3, 5, 64, 64, dtype=torch.float64)
    w = gaussian_apertures(64, (2.0, 8.0)).double()  # (4096, 2)
    got = x.reshape(3, 5, -1) @ w
    for k, sigma in enumerate((2.0, 8.0)):
        ref = CentrePool(sigma / 64, aperture=True)(x)
        torch.testing.assert_close(got[..., k], ref)
    # a hand value: the centre pixels sit 0.5 px off the centre on each axis
    assert float(w[32 * 64 + 32, 0]) == pytest.approx(math.exp(-0.5 * 0.5 / 4.0))


def test_centre_crop_commutes_with_d4():
    from study.augment import d4
    from study.model import centre_crop

    x = torch.rand(8, 5, 64, 64)
    k, flip = torch.arange(8) % 4, torch.arange(8) >= 4
    for size in (24, 32):
        torch.testing.assert_close(
            centre_crop(d4(x, k, flip), size), d4(centre_crop(x, size).contiguous(), k, flip)
        )
    assert centre_crop(x, 64) is x


def test_small_cnn_dereddening_undoes_extinction():
    from study.data.layout import EXTINCTION_R
    from study.model import SmallCNN

    net = SmallCNN(crop=32, apertures=(2.0, 4.0), deredden=True).eval()
    x = torch.rand(4, 5, 64, 64, dtype=torch.float64) * 5.0
    ebv = torch.tensor([0.0, 0.05, 0.1, 0.3], dtype=torch.float64)
    dimmed = (
        x
        * (10.0 ** (-0.4 * torch.as_tensor(EXTINCTION_R)[None, :] * ebv[:, None]))[..., None, None]
    )
    net = net.double()
    torch.testing.assert_close(
        net.aperture_mags(dimmed, ebv), net.aperture_mags(x, torch.zeros(4, dtype=torch.float64))
    )
    feats = net(dimmed, ebv)
    assert feats.shape == (4, net.num_features) and torch.isfinite(feats).all()


def test_small_cnn_options_build_every_parameter_with_gradients():
    torch.manual_seed(4)
    opts = {"crop": 24, "apertures": (2.0, 4.0, 8.0), "aperture_hidden": 16, "deredden": True}
    m = build_model("small_cnn", n_bins=12, hidden=32, small_cnn=opts)
    x, ebv = torch.rand(3, 5, 64, 64), torch.rand(3) * 0.1
    m(x, ebv).logsumexp(1).sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_small_cnn_widths_set_its_conv_blocks_and_old_configs_keep_theirs():
    from study.config import config_from_dict, config_to_dict, make_config
    from study.model import model_from_config

    narrow = model_from_config(make_config("demo").model).backbone
    convs = [m for m in narrow.trunk.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 16, 32, 32, 64, 64]
    assert narrow.num_features == 64 + 512  # the last block's channels + the aperture layer
    # a config.yaml written before model.widths existed: the widths every small_cnn had then
    d = config_to_dict(make_config("demo"))
    del d["model"]["widths"]
    old = model_from_config(config_from_dict(d).model).backbone
    assert [m.out_channels for m in old.trunk.modules() if isinstance(m, torch.nn.Conv2d)] == [
        24,
        32,
        48,
        64,
        96,
        96,
    ]
    with pytest.raises(UserError, match="model.widths"):
        make_config("demo", overrides={"model.widths": (16, 32)})
