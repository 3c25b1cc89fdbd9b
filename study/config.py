"""Run configuration: plain dataclasses with defaults, named presets and groups, YAML/CLI overrides.

A config is resolved in this order, each step overriding the one before:
preset (``paper``, ``fast``, ``resnet18``, ``demo``, ``tiny``) -> group (the loss weights of one
of the six groups) -> a YAML file -> dedicated CLI flags (``--seed``, ``--data``, ``--epochs``)
-> ``--set section.field=value``. The resolved config is written as ``config.yaml`` beside every
result, and ``config_from_dict`` reads it back to the identical config.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from study.errors import UserError

PRESETS = ("paper", "fast", "resnet18", "demo", "tiny")
GROUPS = ("baseline", "baseline_aug", "constrained", "flux_only", "inv_only", "cde_only")
# "custom": no group switches at all; the caller sets the loss fields (e.g. a search trial)
GROUP_LABELS = (*GROUPS, "custom")

Arch = Literal["resnet50_hayat", "resnet50", "resnet18", "small_cnn", "tiny_cnn"]
ImageDtype = Literal["float32", "float16"]
Device = Literal["auto", "cuda", "cpu"]
CdeScale = Literal["density", "paper"]  # study.losses.CDE_SCALES


@dataclass
class DataConfig:
    # photoz-study/1 HDF5 file; None = the synthetic universe of universe_n galaxies, built once
    # and cached (see study.universe.build.cached_universe)
    path: str | None = None
    # galaxies in the synthetic universe: the paper's SDSS sample has 607,712
    universe_n: int = 607_712
    # seed of the synthetic universe; independent of the trial seed (run.seed)
    universe_seed: int = 0
    # dtype of the images held on the training device; float16 halves the memory (relative
    # precision 5e-4, far below the pixel noise). Batches are cast to float32 before the model.
    image_dtype: ImageDtype = "float32"
    # True: the whole split lives on the training device (airbench style). False: it stays in
    # (pinned) host memory and batches are streamed ahead on a side stream (study.data.stream),
    # for sets larger than the device memory. Same numbers either way.
    resident: bool = True


@dataclass
class ModelConfig:
    # resnet50_hayat: the paper's (7x7 stride-1 stem, no max-pool); resnet50: standard stem
    # (about 16x cheaper); resnet18; small_cnn (demo); tiny_cnn (tests)
    arch: Arch = "resnet50_hayat"
    # redshift bins: equal bins on [0, z_max] (Pasquet et al. 2019, Hayat et al. 2021); must
    # match the data file's bin_edges
    n_bins: int = 180
    z_max: float = 0.4
    # width of the hidden fully connected layer before E(B-V) is concatenated
    hidden: int = 1024
    # small_cnn only (the other archs ignore these five fields): side in px of the central crop the
    # network sees, both its conv trunk and its apertures (64 = the whole cutout; 32 costs about
    # a quarter: half-light radii are a few px). The trainer crops each batch to it before
    # augmenting, so augmentation works on what the network sees. Even: centred, D4-symmetric.
    crop: int = 64
    # small_cnn only: sigmas in px of the centred Gaussian apertures (on the crop) whose band
    # fluxes feed its colour path
    apertures: tuple[float, ...] = (4.0,)
    # small_cnn only: width of a hidden Linear + ReLU on the aperture fluxes (0 = none)
    aperture_hidden: int = 0
    # small_cnn only: deredden the aperture fluxes with E(B-V) and the SDSS R_b before asinh
    deredden: bool = False
    # small_cnn only: channels of its six conv-BN-ReLU blocks (strides 2, 1, 2, 1, 2, 1); the
    # conv cost goes with their products. A resolved config.yaml written before the field reads
    # as these, the widths every small_cnn had then (LEGACY_MODEL_FIELDS).
    widths: tuple[int, ...] = (24, 32, 48, 64, 96, 96)


@dataclass
class LossConfig:
    # L = CE + g_l2 ||theta||^2 + g_flux P_flux + g_inv P_inv + g_cde P_cde (SPEC 2)
    g_l2: float = 1e-6  # paper Table 2
    g_flux: float = 0.0  # spectrophotometric flux constraint; needs the file's flux_table
    g_inv: float = 0.0  # D4 rotation + background-resampling invariance (second view per step)
    g_cde: float = 0.0  # Izbicki & Lee CDE loss, on the scale cde_scale names
    # the scale of the CDE *training* term g_cde multiplies (the metric cde_loss is always
    # density): "density" = sum_c f_c^2 dz_c - 2 f_c(zs), f = p / dz (SPEC 2); "paper" =
    # (sum_c p_c^2 - 2 p_c(zs)) / C, the scale of the paper's Table 1 values (about -8e-4),
    # dz / C = 1.23e-5 times the density term on 180 bins over [0, 0.4]. So g_cde = 0.1 on
    # "paper" is 1.23e-6 on "density": the paper's CDE term was nearly off (README "The CDE
    # term's scale"). Default density: what every run before this field trained on.
    cde_scale: CdeScale = "density"
    # random D4 element + background resampling of every training batch (the paper's
    # "augmented" input pipeline)
    augment: bool = False
    # training target of the CE and CDE terms: 0 = the bin holding zs (paper); > 0 =
    # N(zs, target_sigma^2) integrated over the bins (redshift units), so neighbouring bins
    # share the target and it keeps where in its bin zs lies. Training only: validation CE (the
    # schedule's signal) and every metric use the bin holding zs.
    target_sigma: float = 0.0


@dataclass
class AugmentConfig:
    # which pixels background resampling redraws (with loss.augment or g_inv > 0):
    # "threshold" = those below the band's sigma-clipped mean + 1 std, every source kept,
    # neighbours too (the paper's); "segmentation" = every pixel outside the central source's
    # segment (the file's source_mask: `python -m study.data masks`), neighbours redrawn too
    background: Literal["threshold", "segmentation"] = "threshold"
    # what the threshold rule redraws background pixels from (augment.resample_background):
    # "normal" N(mu, s^2) (SPEC 2, the paper), which adds about 0.24 s of sky per pixel to every
    # training image, a flux offset evaluation images never see; "truncated" N(mu, s^2) below
    # the threshold, the distribution a sky pixel called background has, so only the noise is
    # new. The segmentation mode redraws every sky pixel, so N(mu, s^2) already keeps the sky's
    # distribution there: it takes "normal" only.
    fill: Literal["normal", "truncated"] = "normal"


@dataclass
class OptimConfig:
    lr: float = 1e-3  # Adam learning rate (paper Table 2)
    batch_size: int = 128  # galaxies per step (paper)
    epochs: int = 50  # passes over the training split (paper)
    # ReduceLROnPlateau on the validation cross entropy: lr *= factor after `patience` epochs
    # without improvement (paper Table 2)
    plateau_factor: float = 0.1
    plateau_patience: int = 2
    eval_batch_size: int = 512  # galaxies per forward pass when evaluating (no gradients)
    # "plateau": ReduceLROnPlateau above (paper); "onecycle": torch's OneCycleLR stepped per
    # batch, cosine warm-up from lr/25 to lr over warmup_frac of the steps, then cosine down
    # to lr/25e4 at the last step (Smith & Topin 2019): it ends low whatever the epochs
    schedule: Literal["plateau", "onecycle"] = "plateau"
    warmup_frac: float = 0.25  # onecycle only: fraction of the steps spent rising to lr
    # the model that is evaluated on the test set and saved as the run's model: "last" epoch's
    # (paper), or "best_val_ce": the epoch with the lowest validation cross entropy (the
    # schedule's signal); metrics.json names it (reported_epoch)
    reported: Literal["last", "best_val_ce"] = "last"


@dataclass
class RunConfig:
    # trial seed: weight init, batch order and augmentation draws (the data split has its own
    # seed, stored in the data file)
    seed: int = 0
    device: Device = "auto"  # auto = cuda when available, else cpu
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    channels_last: bool = True  # NHWC memory layout on CUDA (ignored on CPU)
    compile: bool = False  # torch.compile the model (CUDA; minutes of compile time)
    compile_mode: str = "max-autotune-no-cudagraphs"  # torch.compile mode
    threads: int = 0  # torch CPU threads; 0 = leave torch's default
    progress: bool = True  # tqdm bar with loss terms and throughput


@dataclass
class Config:
    preset: str = "paper"  # name of the preset the config started from (informational)
    group: str = "baseline"  # name of the group the loss weights came from (informational)
    data: DataConfig = field(default_factory=DataConfig)  # which galaxies
    model: ModelConfig = field(default_factory=ModelConfig)  # which network
    loss: LossConfig = field(default_factory=LossConfig)  # the objective (the group)
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # what resampling redraws
    optim: OptimConfig = field(default_factory=OptimConfig)  # Adam + plateau schedule
    run: RunConfig = field(default_factory=RunConfig)  # seed, device, speed switches


SECTIONS = ("data", "model", "loss", "augment", "optim", "run")
# The loss fields every resolved config.yaml held before loss.cde_scale (issue 13): such a file
# trained its CDE term on the density scale, whatever its group's scale is now.
LEGACY_LOSS_FIELDS = frozenset({"g_l2", "g_flux", "g_inv", "g_cde", "augment"})
# The model fields every resolved config.yaml held before model.widths (issue 12's narrow demo
# trunk): such a file's small_cnn had the default widths, whatever its preset's are now.
LEGACY_MODEL_FIELDS = frozenset(
    {"arch", "n_bins", "z_max", "hidden", "crop", "apertures", "aperture_hidden", "deredden"}
)
# (section, the fields a resolved file of that section held before `field` existed, field, the
# value such a file trained with): config_from_dict reads an old file as what it trained on
_LEGACY_VALUES: tuple[tuple[str, frozenset[str], str, Any], ...] = (
    ("loss", LEGACY_LOSS_FIELDS, "cde_scale", "density"),
    ("model", LEGACY_MODEL_FIELDS, "widths", ModelConfig.widths),
)

# Each preset: overrides of the defaults above (the defaults are the paper's Table 2).
_PRESET_OVERRIDES: dict[str, dict[str, Any]] = {
    # the paper: Hayat's ResNet50 on a universe of the paper's size; 50 epochs of batch 128.
    # Images as float16 on the GPU so that the 486k-galaxy training split fits with room for
    # the stride-1 ResNet50's activations.
    "paper": {"data.image_dtype": "float16"},
    # standard ResNet50 stem (stride-2 conv + max-pool): about 16x fewer FLOPs
    "fast": {"data.image_dtype": "float16", "model.arch": "resnet50"},
    "resnet18": {"data.image_dtype": "float16", "model.arch": "resnet18"},
    # a small CNN on a small universe, trained to convergence in about a CPU minute per
    # baseline trial (issue 12; each lever measured in README "The demo preset"): a universe of
    # 8,000 galaxies (6,080 training), the central 16 px (6.3") of the cutout (crop-then-
    # augment) through six narrow conv blocks (16, 16, 32, 32, 64, 64 channels: 0.43-0.45x the step
    # of the 24 px, 24-96-channel trunk at the same population sigma_nmad), band fluxes in
    # Gaussian apertures of sigma 2, 4, 8 px, dereddened, through a hidden layer of 512 beside
    # the trunk, head width 512; one-cycle lr up to 3e-3 over 20 epochs of batch 64; CE and CDE
    # targets smoothed by a Gaussian of sigma 0.008 in z; the reported model is the epoch of
    # lowest validation CE.
    "demo": {
        "data.universe_n": 8000,
        "model.arch": "small_cnn",
        "model.crop": 16,
        "model.widths": (16, 16, 32, 32, 64, 64),
        "model.apertures": (2.0, 4.0, 8.0),
        "model.aperture_hidden": 512,
        "model.deredden": True,
        "model.hidden": 512,
        "loss.target_sigma": 0.008,
        "optim.batch_size": 64,
        "optim.epochs": 20,
        "optim.lr": 3e-3,
        "optim.schedule": "onecycle",
        "optim.reported": "best_val_ce",
    },
    # unit tests: seconds on a CPU
    "tiny": {
        "data.universe_n": 512,
        "model.arch": "tiny_cnn",
        "model.hidden": 32,
        "optim.batch_size": 32,
        "optim.epochs": 2,
        "optim.eval_batch_size": 256,
        "run.progress": False,
    },
}

# Each group: the loss switches. The paper's three, then one constraint at a time.
# constrained and cde_only train their CDE term on the paper's scale, so that g_cde = 0.1 is
# the paper's effective weight (issue 13; on the density scale the same 0.1 is about 8e4
# times larger, a term as large as the cross entropy: a different experiment). cde_only
# follows constrained so that the one-at-a-time groups decompose it with the same weights.
# The density-scale experiment is `--set loss.cde_scale=density` (README "The CDE term's
# scale"), or a gamma-search sample (whose g_cde is on the density scale).
_GROUP_OVERRIDES: dict[str, dict[str, Any]] = {
    "baseline": {"loss.augment": False},
    "baseline_aug": {"loss.augment": True},
    "constrained": {
        "loss.augment": True,
        "loss.g_flux": 0.1,
        "loss.g_inv": 0.1,
        "loss.g_cde": 0.1,
        "loss.cde_scale": "paper",
    },
    "flux_only": {"loss.augment": True, "loss.g_flux": 0.1},
    "inv_only": {"loss.augment": True, "loss.g_inv": 0.1},
    "cde_only": {"loss.augment": True, "loss.g_cde": 0.1, "loss.cde_scale": "paper"},
    "custom": {},
}


def make_config(
    preset: str = "paper",
    group: str = "baseline",
    seed: int = 0,
    overrides: dict[str, Any] | None = None,
) -> Config:
    """The config of a named preset and group with a trial seed and ``section.field`` overrides."""
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if group not in GROUP_LABELS:
        raise UserError(f"unknown group {group!r}; choose one of {', '.join(GROUP_LABELS)}")
    cfg = Config(preset=preset, group=group)
    cfg = apply_overrides(cfg, _PRESET_OVERRIDES[preset])
    cfg = apply_overrides(cfg, _GROUP_OVERRIDES[group])
    cfg = apply_overrides(cfg, {"run.seed": seed})
    return apply_overrides(cfg, overrides or {})


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Nested plain dict (YAML/JSON-ready) of a config."""
    return dataclasses.asdict(cfg)


def config_from_dict(d: dict[str, Any], where: str = "config") -> Config:
    """Config from a nested dict such as a ``config.yaml``; missing fields keep the defaults.

    The dict's ``preset`` and ``group`` (default ``paper`` / ``baseline``) are applied first, then
    every other field in it, so a partial dict overrides only what it names. One exception: a
    resolved ``config.yaml`` written before ``loss.cde_scale`` existed (its loss section has
    every field of that time, ``LEGACY_LOSS_FIELDS``, and no ``cde_scale``) reads as
    ``cde_scale: density``, the scale it trained on, not its group's scale of today; likewise a
    model section written before ``model.widths`` (``LEGACY_MODEL_FIELDS``, no ``widths``) reads
    as the default widths, the trunk it trained, not its preset's of today.

    Raises:
        UserError: an unknown preset, group, section or field, or a value of the wrong type.
    """
    if not isinstance(d, dict):
        raise UserError(f"{where}: expected a mapping of sections, got {type(d).__name__}")
    flat: dict[str, Any] = {}
    for key, value in d.items():
        if key in ("preset", "group"):
            continue
        if key not in SECTIONS:
            raise UserError(
                f"{where}: unknown section {key!r}; sections are preset, group, {', '.join(SECTIONS)}"
            )
        if not isinstance(value, dict):
            raise UserError(f"{where}: section {key!r} must be a mapping of fields")
        for name, v in value.items():
            flat[f"{key}.{name}"] = v
    for section, fields, name, value in _LEGACY_VALUES:
        given = d.get(section)
        if isinstance(given, dict) and fields <= set(given) and name not in given:
            flat[f"{section}.{name}"] = value
    cfg = make_config(
        _str_field(d, "preset", "paper", where), _str_field(d, "group", "baseline", where)
    )
    return apply_overrides(cfg, flat, where=where)


def apply_overrides(cfg: Config, overrides: dict[str, Any], where: str = "--set") -> Config:
    """A copy of ``cfg`` with ``{"section.field": value}`` applied, type-checked field by field.

    Values may be native (from YAML or code) or strings (from the command line: ``"3e-4"``,
    ``"true"``, ``"none"``), which are parsed according to the field's type.

    Raises:
        UserError: naming the unknown field or the value of the wrong type.
    """
    sections = {name: dataclasses.replace(getattr(cfg, name)) for name in SECTIONS}
    for key, value in overrides.items():
        if key in ("preset", "group"):
            raise UserError(f"{where}: {key} cannot be overridden; choose it with --{key}")
        section, _, name = key.partition(".")
        if section not in sections or not name:
            raise UserError(
                f"{where}: unknown field {key!r}; use section.field with section one of {', '.join(SECTIONS)}"
            )
        hints = _field_types(type(sections[section]))
        if name not in hints:
            raise UserError(
                f"{where}: unknown field {key!r}; fields of {section} are {', '.join(hints)}"
            )
        setattr(sections[section], name, _coerce(value, hints[name], key, where))
    out = Config(preset=cfg.preset, group=cfg.group, **sections)
    _check_ranges(out, where)
    return out


def load_yaml(path: str | Path, *, preset: str | None = None, group: str | None = None) -> Config:
    """Config from a (possibly partial) YAML file, e.g. a run's ``config.yaml``.

    ``preset`` / ``group``, when given (the CLI's ``--preset`` / ``--group``), replace the file's.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: config file not found; fix the path")
    try:
        d = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(d, dict):
        raise UserError(f"{path}: expected a mapping of sections")
    d = dict(d)
    if preset is not None:
        d["preset"] = preset
    if group is not None:
        d["group"] = group
    return config_from_dict(d, where=str(path))


def save_yaml(cfg: Config, path: str | Path) -> None:
    """Write the resolved config (every field) as YAML."""
    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=False)
    Path(path).write_text(text)


def parse_set(items: list[str]) -> dict[str, str]:
    """``["optim.lr=3e-4", ...]`` -> ``{"optim.lr": "3e-4"}`` (values parsed later by type)."""
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise UserError(f"--set {item!r}: expected section.field=value, e.g. optim.lr=3e-4")
        out[key.strip()] = value.strip()
    return out


def _check_ranges(cfg: Config, where: str) -> None:
    checks = [
        ("data.universe_n", cfg.data.universe_n >= 3, ">= 3"),
        ("model.n_bins", cfg.model.n_bins >= 2, ">= 2"),
        ("model.z_max", cfg.model.z_max > 0, "> 0"),
        ("model.hidden", cfg.model.hidden >= 1, ">= 1"),
        ("model.crop", 8 <= cfg.model.crop <= 64 and cfg.model.crop % 2 == 0, "even, in [8, 64]"),
        ("model.apertures", len(cfg.model.apertures) >= 1, "at least one sigma"),
        ("model.apertures", all(a > 0 for a in cfg.model.apertures), "positive sigmas (px)"),
        ("model.aperture_hidden", cfg.model.aperture_hidden >= 0, ">= 0"),
        ("model.widths", len(cfg.model.widths) == 6, "six channel counts, one per conv block"),
        ("model.widths", all(w >= 1 for w in cfg.model.widths), "positive channel counts"),
        ("loss.target_sigma", cfg.loss.target_sigma >= 0, ">= 0"),
        (
            "augment.fill",
            cfg.augment.fill == "normal" or cfg.augment.background == "threshold",
            "normal with augment.background=segmentation (it redraws every sky pixel)",
        ),
        ("optim.warmup_frac", 0 < cfg.optim.warmup_frac < 1, "in (0, 1)"),
        ("optim.lr", cfg.optim.lr > 0, "> 0"),
        ("optim.batch_size", cfg.optim.batch_size >= 2, ">= 2 (batch norm)"),
        ("optim.epochs", cfg.optim.epochs >= 1, ">= 1"),
        ("optim.plateau_factor", 0 < cfg.optim.plateau_factor < 1, "in (0, 1)"),
        ("optim.plateau_patience", cfg.optim.plateau_patience >= 0, ">= 0"),
        ("optim.eval_batch_size", cfg.optim.eval_batch_size >= 1, ">= 1"),
        ("run.threads", cfg.run.threads >= 0, ">= 0"),
    ]
    checks += [
        (f"loss.{g}", getattr(cfg.loss, g) >= 0, ">= 0")
        for g in ("g_l2", "g_flux", "g_inv", "g_cde")
    ]
    for key, ok, rule in checks:
        if not ok:
            section, name = key.split(".")
            value = getattr(getattr(cfg, section), name)
            raise UserError(f"{where}: {key}={value!r} must be {rule}")


def _str_field(d: dict[str, Any], key: str, default: str, where: str) -> str:
    value = d.get(key, default)
    if not isinstance(value, str):
        raise UserError(f"{where}: {key} must be a string, got {value!r}")
    return value


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    """``value`` as type ``tp`` (bool, int, float, str, Literal[...], X | None) or UserError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if type(None) in args and (
            value is None or (isinstance(value, str) and value.lower() in ("none", "null", "~"))
        ):
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, key, where)
    if origin is tuple:  # tuple[float, ...]: a YAML list, or "2,4,8" on the command line
        (inner, _) = typing.get_args(tp)
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not items:
            raise UserError(f"{where}: {key}={value!r} is not a list; e.g. {key}=2,4,8")
        return tuple(
            _coerce(v.strip() if isinstance(v, str) else v, inner, key, where) for v in items
        )
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise UserError(
                f"{where}: {key}={value!r} is not one of {', '.join(map(str, choices))}"
            )
        return value
    bad = UserError(f"{where}: {key}={value!r} is not a {tp.__name__}; fix the value")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                raise bad from None
        raise bad
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise bad from None
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    raise TypeError(f"unsupported config field type {tp!r} for {key}")
