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
- ``small_cnn``: a small CNN for CPU demos (0.19 M trunk parameters) with a fixed
  central-aperture colour path (``SmallCNN``; its crop, apertures, aperture hidden layer and
  dereddening are config fields, ``model.crop`` etc.).
- ``tiny_cnn``: a very small CNN for tests.

Weights use He-normal initialisation (``kaiming_normal_``, fan-in, ReLU gain) on every conv and
linear kernel, zero biases, BatchNorm at (1, 0); no dropout.

Input scaling (the one place it happens): images are sky-subtracted nanomaggies per pixel
(roughly -0.1 .. 100); ``scale_input`` maps them with ``asinh(x / INPUT_SOFTENING)``, a fixed
transform that is linear near the noise level and logarithmic for bright pixels (no learned
normalisation).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from study.errors import UserError

if TYPE_CHECKING:
    from study.config import ModelConfig

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
# ln(10) / 2.5: a flux dimmed by A magnitudes is f * exp(-A * _MAG_TO_LN)
_MAG_TO_LN = 0.9210340371976184


def centre_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """The central ``size`` x ``size`` pixels of (B, C, H, W) maps (all of them if size >= H).

    On the 64-pixel cutouts with an even ``size`` the crop is centred on the cutout's centre
    (31.5, 31.5), so it commutes with every D4 element: D4 then crop = crop then D4.
    """
    h, w = x.shape[-2:]
    if size >= h and size >= w:
        return x
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top : top + size, left : left + size]


def gaussian_apertures(size: int, sigmas: tuple[float, ...]) -> torch.Tensor:
    """(size * size, K) centred Gaussian aperture weights, peak 1, one column per sigma (px).

    ``x.flatten(-2) @ W`` gives each band's Gaussian aperture flux, the same as
    ``CentrePool(sigma / size, aperture=True)`` (the centre at ((size - 1) / 2, (size - 1) / 2)).
    """
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    r2 = (r[:, None] ** 2 + r[None, :] ** 2).reshape(-1, 1)  # (size * size, 1)
    s = torch.as_tensor(sigmas, dtype=torch.float64)[None, :]  # (1, K)
    return torch.exp(-0.5 * r2 / s**2).float()


class SmallCNN(nn.Module):
    """The demo network: a small conv trunk plus a fixed central-aperture photometry path.

    It sees the central ``crop`` x ``crop`` pixels of the cutout (64: all of it; the trainer
    crops batches to this before augmenting them, and ``forward`` crops bigger inputs itself),
    in nanomaggies (``PhotoZNet`` hands them over unscaled). Trunk: the pixels scaled by
    ``scale_input``, six conv-BN-ReLU blocks (stride 2, 1, 2, 1, 2, 1; a 64 px input ends
    as an 8x8 map, 32 px as 4x4 at about a quarter of the cost), pooled with a centred
    Gaussian window (``CentrePool``, sigma = 1/4 of the final map). Aperture path: each band's
    flux in centred Gaussian apertures of the given sigmas (px; 4 px = 1.6"; a wide one is
    truncated by the crop), one matrix product, in nanomaggies, optionally dereddened with the SDSS
    coefficients (``f * 10^(0.4 R_b E(B-V))``), mapped by ``asinh(flux / APERTURE_SOFTENING)``
    (about a magnitude, so band differences are colours) and BatchNorm'd; with
    ``aperture_hidden > 0`` one more Linear + ReLU of that width on them (so the head sees two
    hidden layers over the colours). It puts the colours one or two layers from the head, so
    the network learns photo-z from a few thousand galaxies in a few CPU epochs; the plain
    trunk alone overfits first. The crop and every aperture are D4-symmetric, so the
    invariance constraint acts on the trunk and on the background resampling's effect.

    Args:
        crop: side in px of the central crop the network sees (64 = everything; even, so the
            crop is centred on the cutout's centre and commutes with D4).
        apertures: Gaussian aperture sigmas in px.
        aperture_hidden: width of the hidden layer on the aperture fluxes; 0 = none.
        deredden: deredden the aperture fluxes with E(B-V) (``forward``'s ``ebv``).
        widths: channels of the six conv blocks (``model.widths``).
    """

    aperture_weights: torch.Tensor  # (crop * crop, K) buffer: the Gaussian apertures
    extinction_r: torch.Tensor  # (5,) buffer: A_b / E(B-V)

    strides = (2, 1, 2, 1, 2, 1)

    def __init__(
        self,
        crop: int = 64,
        apertures: tuple[float, ...] = (4.0,),
        aperture_hidden: int = 0,
        deredden: bool = False,
        widths: tuple[int, ...] = (24, 32, 48, 64, 96, 96),
    ) -> None:
        super().__init__()
        self.crop = crop
        self.widths = tuple(widths)
        self.deredden = deredden
        self.n_apertures = len(apertures)
        self.trunk, n_trunk = _plain_cnn(self.widths, self.strides, pool=False)
        self.pool = CentrePool(0.25)
        n_mags = N_BANDS * len(apertures)
        self.aperture_norm = nn.BatchNorm1d(n_mags)
        self.aperture_mlp: nn.Module = nn.Identity()
        if aperture_hidden > 0:
            self.aperture_mlp = nn.Sequential(nn.Linear(n_mags, aperture_hidden), nn.ReLU())
        self.num_features = n_trunk + (aperture_hidden if aperture_hidden > 0 else n_mags)
        from study.data.layout import EXTINCTION_R  # constants only (numpy), the core's layer

        # fixed, not learned, not saved: rebuilt from the arguments
        weights = gaussian_apertures(crop, tuple(apertures))  # (crop * crop, K)
        self.register_buffer("aperture_weights", weights, persistent=False)
        r_b = torch.as_tensor(EXTINCTION_R, dtype=torch.float32)
        self.register_buffer("extinction_r", r_b, persistent=False)

    def forward(self, x: torch.Tensor, ebv: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 5, H, W) nanomaggies per pixel, H = W >= crop, and (B,) E(B-V) in mag ->
        (B, num_features). ``ebv`` is needed only with ``deredden``.
        """
        x = centre_crop(x, self.crop)
        trunk = self.pool(self.trunk(scale_input(x)))
        return torch.cat(
            [trunk, self.aperture_mlp(self.aperture_norm(self.aperture_mags(x, ebv)))], dim=1
        )

    def aperture_mags(self, x: torch.Tensor, ebv: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 5 * K) asinh aperture magnitudes (dereddened with ``deredden``) of the crop."""
        x = centre_crop(x, self.crop)
        b = x.shape[0]
        w = self.aperture_weights.to(x.dtype)
        flux = (x.reshape(b, N_BANDS, -1) @ w).transpose(1, 2)  # (B, K, 5) nanomaggies
        if self.deredden:
            if ebv is None:
                raise ValueError("SmallCNN(deredden=True) needs ebv")
            a_b = self.extinction_r.to(x.dtype)[None, :] * ebv.reshape(-1, 1).to(x.dtype)
            flux = flux * torch.exp(_MAG_TO_LN * a_b)[:, None, :]
        return torch.asinh(flux.reshape(b, -1) / APERTURE_SOFTENING)  # (B, K * 5)


def _backbone(arch: str, small_cnn: dict[str, Any] | None = None) -> tuple[nn.Module, int]:
    if arch in ("resnet50_hayat", "resnet50", "resnet18"):
        return _resnet_backbone(arch)
    if arch == "small_cnn":
        # 0.19 M parameters, about 28 M MACs per image at crop 64 (7 M at crop 32)
        net = SmallCNN(**(small_cnn or {}))
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

    def forward_features(self, x: torch.Tensor, ebv: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 5, H, W) nanomaggies per pixel -> (B, num_features) pooled features.

        ``ebv`` (B,) reaches the backbone only where it uses it (``SmallCNN(deredden=True)``).
        """
        if isinstance(self.backbone, SmallCNN):  # it scales the crop it uses itself
            return self.backbone(x, ebv)
        return self.backbone(scale_input(x))

    def forward_head(self, features: torch.Tensor, ebv: torch.Tensor) -> torch.Tensor:
        """(B, F) features and (B,) E(B-V) in mag -> (B, C) logits."""
        h = F.relu(self.fc_hidden(features))
        h = torch.cat([h, ebv.reshape(-1, 1).to(h.dtype)], dim=1)  # (B, hidden + 1)
        return self.fc_out(h)

    def forward(self, x: torch.Tensor, ebv: torch.Tensor) -> torch.Tensor:
        """(B, 5, H, W) images and (B,) E(B-V) -> (B, C) logits."""
        return self.forward_head(self.forward_features(x, ebv), ebv)


def build_model(
    arch: str, n_bins: int = 180, hidden: int = 1024, small_cnn: dict[str, Any] | None = None
) -> PhotoZNet:
    """Build a ``PhotoZNet`` by architecture name (see the module docstring).

    ``small_cnn``: ``SmallCNN``'s keyword arguments (crop, apertures, aperture_hidden,
    deredden) for that arch, e.g. ``small_cnn_options(cfg.model)``; ignored otherwise.
    Weights are drawn from torch's global RNG: seed it (``torch.manual_seed``) first.
    """
    backbone, num_features = _backbone(arch, small_cnn if arch == "small_cnn" else None)
    return PhotoZNet(backbone, num_features, n_bins=n_bins, hidden=hidden)


def small_cnn_options(model: ModelConfig) -> dict[str, Any]:
    """``SmallCNN``'s keyword arguments from a model config (``build_model(small_cnn=...)``)."""
    return {
        "crop": model.crop,
        "apertures": tuple(model.apertures),
        "aperture_hidden": model.aperture_hidden,
        "deredden": model.deredden,
        "widths": tuple(model.widths),
    }


def model_from_config(model: ModelConfig) -> PhotoZNet:
    """``build_model`` with every field of a model config (the trainer's and analysis' way)."""
    return build_model(
        model.arch, n_bins=model.n_bins, hidden=model.hidden, small_cnn=small_cnn_options(model)
    )
