"""Photo-z networks: the Hayat-style ResNet50 of the paper and smaller presets.

Every network is a ``PhotoZNet``: a convolutional backbone that maps a (B, 5, 64, 64) cutout
to a feature vector (``forward_features``), and the paper's head (``forward_head``):
Linear(F -> hidden) + ReLU, E(B-V) concatenated (width hidden + 1), Linear(hidden + 1 -> C).
Logits come out; ``softmax(logits)`` is the CDE over the C redshift bins.

Architectures (``build_model(arch)``):

- ``resnet50_hayat`` (paper): torchvision ResNet50, 5-channel 7x7 *stride-1* first conv,
  no max-pool, global average pool to 2048 (Hayat et al. 2021's repository, SPEC 4).
- ``resnet50``: the standard stride-2 stem with max-pool on 5 channels, about 16x cheaper.
- ``resnet18``: the Hayat stem on a ResNet18 (512 features).
- ``small_cnn``: a small CNN for CPU demos (0.19 M backbone parameters) with a fixed
  central-aperture colour path (``SmallCNN``).
- ``tiny_cnn``: a very small CNN for tests.

Weights use He-normal initialisation (``kaiming_normal_``, fan-in, ReLU gain) on every conv and
linear kernel, zero biases, BatchNorm at (1, 0); no dropout.

Input scaling (the one place it happens): images are sky-subtracted nanomaggies per pixel
(roughly -0.1 .. 100); ``scale_input`` maps them with ``asinh(x / INPUT_SOFTENING)``, a fixed
transform that is linear near the noise level and logarithmic for bright pixels (no learned
normalisation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from study.errors import UserError

ARCHS = ("resnet50_hayat", "resnet50", "resnet18", "small_cnn", "tiny_cnn")
N_BANDS = 5  # u, g, r, i, z
INPUT_SOFTENING = 0.1  # nanomaggies per pixel; asinh softening (about the SDSS sky noise level)


def scale_input(x: torch.Tensor) -> torch.Tensor:
    """Fixed input transform ``asinh(x / INPUT_SOFTENING)``.

    Args:
        x: (B, 5, H, W) images in nanomaggies per pixel.

    Returns:
        Tensor of the same shape, dimensionless, roughly in [-1, 8].
    """
    return torch.asinh(x / INPUT_SOFTENING)


def _resnet_backbone(arch: str) -> tuple[nn.Module, int]:
    """A torchvision ResNet with a 5-band stem and the fc removed; returns (module, features)."""
    if arch in ("resnet50_hayat", "resnet50"):
        net = torchvision.models.resnet50(weights=None)
    else:
        net = torchvision.models.resnet18(weights=None)
    hayat_stem = arch != "resnet50"
    # Same 7x7 kernel as torchvision; stride 1 and no max-pool keep 64x64 resolution (Hayat).
    net.conv1 = nn.Conv2d(N_BANDS, 64, 7, stride=1 if hayat_stem else 2, padding=3, bias=False)
    if hayat_stem:
        net.maxpool = nn.Identity()
    features = net.fc.in_features  # 2048 for ResNet50, 512 for ResNet18
    net.fc = nn.Identity()  # torchvision's forward ends with avgpool + flatten -> (B, features)
    return net, features


def _conv_bn_relu(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def _plain_cnn(
    widths: tuple[int, ...], strides: tuple[int, ...], pool: bool = True
) -> tuple[nn.Module, int]:
    """Conv-BN-ReLU blocks, then (if pool) global average pool; returns (module, channels)."""
    layers: list[nn.Module] = []
    c_in = N_BANDS
    for c_out, stride in zip(widths, strides, strict=True):
        layers.append(_conv_bn_relu(c_in, c_out, stride))
        c_in = c_out
    if pool:
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers), c_in


class CentrePool(nn.Module):
    """Weighted sum over the spatial dims with a fixed, centred Gaussian window.

    The cutouts are centred on the galaxy, so this pools the galaxy rather than the sky and
    the neighbours; the window is D4-symmetric, so the pooling is D4-invariant.

    Args:
        sigma_frac: the window's standard deviation as a fraction of the map's side.
        aperture: False: weights sum to 1 (a weighted mean); True: peak weight 1 (a Gaussian
            aperture sum, e.g. a flux in the pixels' unit).
    """

    def __init__(self, sigma_frac: float, aperture: bool = False) -> None:
        super().__init__()
        self.sigma_frac = sigma_frac
        self.aperture = aperture

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C)."""
        size_h, size_w = h.shape[-2:]
        yy = (torch.arange(size_h, device=h.device, dtype=h.dtype) - (size_h - 1) / 2) / size_h
        xx = (torch.arange(size_w, device=h.device, dtype=h.dtype) - (size_w - 1) / 2) / size_w
        w = torch.exp(-0.5 * (yy[:, None] ** 2 + xx[None, :] ** 2) / self.sigma_frac**2)
        return (h * (w if self.aperture else w / w.sum())).sum(dim=(-2, -1))


APERTURE_SOFTENING = 1.0  # nanomaggies; asinh softening of the aperture fluxes


class SmallCNN(nn.Module):
    """The demo network: a small conv trunk plus a fixed central-aperture photometry path.

    Trunk: six conv-BN-ReLU blocks (64 -> 32 -> 16 -> 8 pixels) on the scaled images, pooled
    with a centred Gaussian window (``CentrePool``, sigma = 1/4 of the 8x8 map). Aperture
    path: each band's flux in a Gaussian aperture (sigma = 4 px = 1.6"), in nanomaggies,
    mapped by ``asinh(flux / APERTURE_SOFTENING)`` (about a magnitude, so band differences are
    colours) and BatchNorm'd. It puts the colours one linear layer from the head, so the
    network learns photo-z from a few thousand galaxies in a few CPU epochs; the plain trunk
    alone overfits first. Output: 96 + 5 features.
    """

    widths = (24, 32, 48, 64, 96, 96)
    strides = (2, 1, 2, 1, 2, 1)

    def __init__(self) -> None:
        super().__init__()
        self.trunk, n_trunk = _plain_cnn(self.widths, self.strides, pool=False)
        self.pool = CentrePool(0.25)
        self.aperture = CentrePool(4.0 / 64, aperture=True)
        self.aperture_norm = nn.BatchNorm1d(N_BANDS)
        self.num_features = n_trunk + N_BANDS

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        """(B, 5, H, W) scaled images -> (B, 101)."""
        x = INPUT_SOFTENING * torch.sinh(s)  # back to nanomaggies (scale_input's inverse)
        mags = torch.asinh(self.aperture(x) / APERTURE_SOFTENING)  # (B, 5)
        return torch.cat([self.pool(self.trunk(s)), self.aperture_norm(mags)], dim=1)


def _backbone(arch: str) -> tuple[nn.Module, int]:
    if arch in ("resnet50_hayat", "resnet50", "resnet18"):
        return _resnet_backbone(arch)
    if arch == "small_cnn":
        # 0.19 M parameters, about 28 M MACs per image
        net = SmallCNN()
        return net, net.num_features
    if arch == "tiny_cnn":
        return _plain_cnn((8, 16), (2, 2))
    raise UserError(f"model.arch: unknown architecture {arch!r}; use one of {', '.join(ARCHS)}")


class PhotoZNet(nn.Module):
    """Backbone + the paper's head: logits over redshift bins from images and E(B-V).

    Args:
        backbone: maps scaled (B, 5, H, W) images to (B, num_features).
        num_features: the backbone's output width.
        n_bins: number of redshift bins C.
        hidden: width of the hidden layer (1024 in the paper).
    """

    def __init__(self, backbone: nn.Module, num_features: int, n_bins: int, hidden: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_features = num_features
        self.n_bins = n_bins
        self.fc_hidden = nn.Linear(num_features, hidden)
        self.fc_out = nn.Linear(hidden + 1, n_bins)  # +1: E(B-V) joins after the ReLU
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He-normal (fan-in, ReLU gain) kernels, zero biases, BatchNorm weight 1 bias 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 5, H, W) nanomaggies per pixel -> (B, num_features) pooled features."""
        return self.backbone(scale_input(x))

    def forward_head(self, features: torch.Tensor, ebv: torch.Tensor) -> torch.Tensor:
        """(B, F) features and (B,) E(B-V) in mag -> (B, C) logits."""
        h = F.relu(self.fc_hidden(features))
        h = torch.cat([h, ebv.reshape(-1, 1).to(h.dtype)], dim=1)  # (B, hidden + 1)
        return self.fc_out(h)

    def forward(self, x: torch.Tensor, ebv: torch.Tensor) -> torch.Tensor:
        """(B, 5, H, W) images and (B,) E(B-V) -> (B, C) logits."""
        return self.forward_head(self.forward_features(x), ebv)


def build_model(arch: str, n_bins: int = 180, hidden: int = 1024) -> PhotoZNet:
    """Build a ``PhotoZNet`` by architecture name (see the module docstring).

    Weights are drawn from torch's global RNG: seed it (``torch.manual_seed``) first.
    """
    backbone, num_features = _backbone(arch)
    return PhotoZNet(backbone, num_features, n_bins=n_bins, hidden=hidden)
