"""Search spaces as YAML: parse, validate and resolve them before Ray or Optuna start.

A search-space file (``search_spaces/NAME.yaml``) labels every parameter the way the tuning
playbook does: *scientific* (what the study measures: the constraint weights), *nuisance*
(tuned so that the comparison is fair: the learning rate) or *fixed*. Two kinds of study:

- ``kind: optuna``: Optuna's TPE samples the scientific and nuisance parameters; every sampled
  configuration runs on the same seed list and Optuna sees the seed mean. The reference points
  run first, on the same seeds, and count toward ``num_samples``.
- ``kind: grid``: every named group of SPEC 4 on the same seed list (the ablation); no sampler.

The objective is one metric (``objective: {metric, mode}``) or several (``objectives:`` a list
of 2 or 3 ``{metric, mode}``): Optuna's multi-objective TPE (or NSGA-II, ``sampler.type:
nsga2``) then searches them all on the seed means, and the report draws the Pareto front.

This module imports neither Ray nor Optuna: the define-by-run function it builds only calls the
``suggest_*`` methods of whatever trial object it is handed.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from study.config import GROUPS  # the six groups of SPEC 4
from study.errors import UserError
from study.halving import Halving
from study.halving import parse as parse_halving
from study.metrics import METRIC_NAMES

# The metrics a search may optimise: an objective is val_<one of these> (SPEC 3, not the s.e.).
OBJECTIVE_METRICS = tuple(m for m in METRIC_NAMES if m != "cde_loss_se")
# ...or the run's cost, a frame column too (seconds of train(); a metric vs cost trade-off).
OBJECTIVE_EXTRA = ("train_seconds",)
MAX_OBJECTIVES = 3  # the report draws every pair of objectives; Optuna's own plot takes 2 or 3
SAMPLERS = ("tpe", "nsga2")  # Optuna's TPE (multi-objective too) and NSGA-II
# Short parameter names and the config fields they override (apply_overrides keys).
PARAM_KEYS = {
    "g_flux": "loss.g_flux",
    "g_inv": "loss.g_inv",
    "g_cde": "loss.g_cde",
    "g_l2": "loss.g_l2",
    "lr": "optim.lr",
    "batch_size": "optim.batch_size",
}
ROLES = ("scientific", "nuisance", "fixed")
DISTRIBUTIONS = ("log_uniform", "uniform", "categorical")
KINDS = ("optuna", "grid")
SEARCH_DIR = Path(__file__).resolve().parent.parent / "search_spaces"

_TOP_KEYS = {
    "name",
    "description",
    "kind",
    "preset",
    "base_group",
    "groups",
    "seeds",
    "num_samples",
    "objective",
    "objectives",
    "sampler",
    "reference_points",
    "parameters",
    "scheduler",
}
_PARAM_KEYS = {"role", "distribution", "low", "high", "or_zero", "choices", "value", "description"}


@dataclass
class Param:
    """One parameter: its role and, for searched ones, its distribution."""

    name: str
    role: str  # scientific | nuisance | fixed
    distribution: str | None = None  # log_uniform | uniform | categorical; None when fixed
    low: float | None = None
    high: float | None = None
    or_zero: bool = False  # log_uniform only: also allow exactly 0 (switched off)
    choices: list[Any] | None = None
    value: Any = None  # fixed only

    @property
    def key(self) -> str:
        """The config field this parameter overrides, e.g. ``loss.g_flux``."""
        return PARAM_KEYS.get(self.name, self.name)


@dataclass(frozen=True)
class Objective:
    """One metric the search optimises, on the seed means of a configuration."""

    metric: str  # a frame column: val_<SPEC 3 metric> or train_seconds
    mode: str  # min | max (Ray's word for Optuna's minimize | maximize)


@dataclass
class SearchSpace:
    """A validated search space (after any command-line overrides)."""

    name: str
    path: str
    kind: str
    seeds: list[int]
    num_samples: int  # configurations, reference points included (optuna); ignored for grid
    # one (``objective:``) or 2-3 (``objectives:``); the first ranks the summary and Table 1
    objectives: list[Objective] = field(default_factory=lambda: [Objective("val_cde_loss", "min")])
    sampler_seed: int = 0
    sampler_type: str = "tpe"  # tpe | nsga2
    population_size: int | None = None  # nsga2 only: configurations per generation
    preset: str | None = None
    base_group: str = "baseline_aug"
    groups: list[str] = field(default_factory=list)
    reference_points: list[dict[str, Any]] = field(default_factory=list)
    parameters: dict[str, Param] = field(default_factory=dict)
    description: str = ""
    scheduler: Halving | None = None  # paired early stopping (study.halving); None: off

    @property
    def metric(self) -> str:
        """The (first) objective's metric, e.g. ``val_cde_loss``."""
        return self.objectives[0].metric

    @property
    def mode(self) -> str:
        """The (first) objective's direction, ``min`` or ``max``."""
        return self.objectives[0].mode

    @property
    def multi_objective(self) -> bool:
        """Two or more objectives: Optuna searches a Pareto front."""
        return len(self.objectives) > 1

    @property
    def searched(self) -> list[Param]:
        """Scientific and nuisance parameters, in file order."""
        return [p for p in self.parameters.values() if p.role != "fixed"]

    @property
    def fixed(self) -> dict[str, Any]:
        """Fixed parameters as config overrides ``{"optim.lr": 1e-3}``."""
        return {p.key: p.value for p in self.parameters.values() if p.role == "fixed"}

    @property
    def n_configurations(self) -> int:
        """How many configurations the study runs (each on every seed)."""
        return len(self.groups) if self.kind == "grid" else self.num_samples

    def with_overrides(
        self, seeds: int | None = None, num_samples: int | None = None
    ) -> SearchSpace:
        """Apply ``--seeds K`` (seeds 0..K-1) and ``--num-samples N``; validated like the file."""
        space = copy.deepcopy(self)
        if seeds is not None:
            if seeds < 1:
                raise UserError(f"--seeds {seeds}: K must be >= 1")
            space.seeds = list(range(seeds))
        if num_samples is not None:
            if num_samples < max(1, len(space.reference_points)):
                raise UserError(
                    f"--num-samples {num_samples}: must be >= the {len(space.reference_points)} "
                    f"reference points of {space.path} (they count toward it)"
                )
            space.num_samples = num_samples
        return space

    def to_dict(self) -> dict[str, Any]:
        """The resolved space, in the file's own format (written as ``search_space.yaml``)."""
        params: dict[str, Any] = {}
        for p in self.parameters.values():
            d: dict[str, Any] = {"role": p.role}
            if p.role == "fixed":
                d["value"] = p.value
            else:
                d["distribution"] = p.distribution
                if p.distribution == "categorical":
                    d["choices"] = list(p.choices or [])
                else:
                    d.update(low=p.low, high=p.high)
                    if p.or_zero:
                        d["or_zero"] = True
            params[p.name] = d
        out: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "kind": self.kind,
            "preset": self.preset,
            "seeds": list(self.seeds),
            **self._objectives_dict(),
            "parameters": params,
        }
        if self.kind == "grid":
            out["groups"] = list(self.groups)
        else:
            sampler: dict[str, Any] = {"type": self.sampler_type, "seed": self.sampler_seed}
            if self.population_size is not None:
                sampler["population_size"] = self.population_size
            out.update(
                base_group=self.base_group,
                num_samples=self.num_samples,
                sampler=sampler,
                reference_points=copy.deepcopy(self.reference_points),
            )
            if self.scheduler is not None:
                out["scheduler"] = self.scheduler.to_dict()
        return out

    def _objectives_dict(self) -> dict[str, Any]:
        """``objective: {...}`` for one, ``objectives: [...]`` for several (the file's forms)."""
        objectives = [{"metric": o.metric, "mode": o.mode} for o in self.objectives]
        return {"objectives": objectives} if self.multi_objective else {"objective": objectives[0]}


def resolve_path(search: str) -> Path:
    """``gamma`` -> ``search_spaces/gamma.yaml``; anything with a suffix or slash is a path."""
    if search.endswith((".yaml", ".yml")) or "/" in search:
        path = Path(search)
    else:  # the checkout's search_spaces/, else ./search_spaces/ (a non-editable install)
        path = SEARCH_DIR / f"{search}.yaml"
        if not path.is_file() and (Path("search_spaces") / f"{search}.yaml").is_file():
            path = Path("search_spaces") / f"{search}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in SEARCH_DIR.glob("*.yaml")))
        raise UserError(f"--search {search}: no file {path}; use one of {known} or a YAML path")
    return path


def load(search: str | Path) -> SearchSpace:
    """Read and validate a search-space file; every problem is a one-line UserError."""
    path = resolve_path(str(search))
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", -1) + 1
        raise UserError(f"{path}: not valid YAML (line {line}); fix the syntax") from None
    return parse(raw, str(path))


def parse(raw: Any, path: str = "<search space>") -> SearchSpace:
    """Validate a search space given as a dict (the parsed YAML)."""

    def fail(key: str, msg: str) -> UserError:
        return UserError(f"{path}: {key}: {msg}")

    if not isinstance(raw, dict):
        raise fail("(top level)", "expected a mapping of keys such as kind, seeds, parameters")
    _no_unknown(raw, _TOP_KEYS, "", fail)
    kind = raw.get("kind", "optuna")
    if kind not in KINDS:
        raise fail("kind", f"unknown {kind!r}; use one of {', '.join(KINDS)}")
    space = SearchSpace(
        name=str(raw.get("name", Path(path).stem)),
        path=path,
        kind=kind,
        seeds=_seeds(raw.get("seeds", 5), fail),
        num_samples=0,
        description=str(raw.get("description", "")).strip(),
        preset=raw.get("preset"),
    )
    space.objectives = _objectives(raw, fail)
    space.parameters = _parameters(raw.get("parameters", {}), fail)
    if kind == "grid":
        _grid(raw, space, fail)
    else:
        _optuna(raw, space, fail)
    if raw.get("scheduler") is not None:
        if kind == "grid":
            raise fail("scheduler", "only for kind: optuna (a grid runs every group); remove it")
        if space.multi_objective:  # a rung ranks configurations on one seed mean
            raise fail("scheduler", "paired_halving judges one objective; use objective: (one)")
        space.scheduler = parse_halving(raw["scheduler"], fail)
    return space


def _no_unknown(d: dict, allowed: set[str], prefix: str, fail: Callable[..., UserError]) -> None:
    for key in d:
        if key not in allowed:
            raise fail(f"{prefix}{key}", f"unknown key; allowed: {', '.join(sorted(allowed))}")


def _seeds(value: Any, fail: Callable[..., UserError]) -> list[int]:
    if isinstance(value, bool) or not isinstance(value, int | list):
        raise fail("seeds", "give K (seeds 0..K-1) or a list of distinct integers")
    if isinstance(value, int):
        if value < 1:
            raise fail("seeds", f"K = {value}; K must be >= 1")
        return list(range(value))
    if not value or not all(isinstance(s, int) and not isinstance(s, bool) for s in value):
        raise fail("seeds", "a seed list must be non-empty integers")
    if len(set(value)) != len(value):
        raise fail("seeds", "seeds must be distinct")
    return list(value)


def _objectives(raw: dict, fail: Callable[..., UserError]) -> list[Objective]:
    """``objective: {metric, mode}`` (one) or ``objectives: [{metric, mode}, ...]`` (2-3)."""
    if "objectives" not in raw:
        return [_objective(raw.get("objective", {}), "objective", fail, default="val_cde_loss")]
    if "objective" in raw:
        raise fail("objectives", "give objective (one metric) or objectives (several), not both")
    items = raw["objectives"]
    if not isinstance(items, list) or not 2 <= len(items) <= MAX_OBJECTIVES:
        raise fail(
            "objectives",
            f"a list of 2 to {MAX_OBJECTIVES} mappings {{metric, mode}}; for one use objective:",
        )
    objectives = [_objective(item, f"objectives[{i}]", fail) for i, item in enumerate(items)]
    for i, o in enumerate(objectives):
        if o.metric in [p.metric for p in objectives[:i]]:
            raise fail(f"objectives[{i}].metric", f"{o.metric!r} is listed twice")
    return objectives


def _objective(
    raw: Any, key: str, fail: Callable[..., UserError], default: str | None = None
) -> Objective:
    if not isinstance(raw, dict):
        raise fail(key, "expected a mapping with metric and mode")
    _no_unknown(raw, {"metric", "mode"}, f"{key}.", fail)
    metric, mode = raw.get("metric", default), raw.get("mode", "min")
    names = [f"val_{m}" for m in OBJECTIVE_METRICS] + list(OBJECTIVE_EXTRA)
    if metric not in names:
        raise fail(
            f"{key}.metric",
            f"unknown {metric!r}; use val_<SPEC 3 metric> (e.g. val_sigma_nmad) or train_seconds",
        )
    if mode not in ("min", "max"):
        raise fail(f"{key}.mode", f"unknown {mode!r}; use min or max")
    return Objective(metric, mode)


def _parameters(raw: Any, fail: Callable[..., UserError]) -> dict[str, Param]:
    if not isinstance(raw, dict):
        raise fail("parameters", "expected a mapping name -> {role, distribution, ...}")
    params = {}
    for name, spec in raw.items():
        key = f"parameters.{name}"
        if name not in PARAM_KEYS and "." not in str(name):
            raise fail(
                key, f"unknown parameter; use one of {', '.join(PARAM_KEYS)} or section.field"
            )
        if not isinstance(spec, dict):
            raise fail(key, "expected a mapping with role and distribution (or value)")
        _no_unknown(spec, _PARAM_KEYS, f"{key}.", fail)
        params[name] = _param(str(name), spec, key, fail)
    return params


def _param(name: str, spec: dict, key: str, fail: Callable[..., UserError]) -> Param:
    role = spec.get("role")
    if role not in ROLES:
        raise fail(f"{key}.role", f"unknown {role!r}; use one of {', '.join(ROLES)}")
    if role == "fixed":
        if "value" not in spec or "distribution" in spec:
            raise fail(key, "a fixed parameter takes a value and no distribution")
        return Param(name, role, value=spec["value"])
    dist = spec.get("distribution")
    if dist not in DISTRIBUTIONS:
        raise fail(
            f"{key}.distribution", f"unknown {dist!r}; use one of {', '.join(DISTRIBUTIONS)}"
        )
    if dist == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise fail(f"{key}.choices", "a categorical parameter needs a non-empty list")
        return Param(name, role, dist, choices=choices)
    for bound in ("low", "high"):
        v = spec.get(bound)
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise fail(f"{key}.{bound}", f"needs a finite number, got {v!r}")
    low, high = float(spec["low"]), float(spec["high"])
    if not low < high:
        raise fail(f"{key}.low", f"bounds reversed or empty: low={low} >= high={high}")
    if dist == "log_uniform" and low <= 0:
        raise fail(f"{key}.low", f"log_uniform needs low > 0, got {low}; use or_zero for 0")
    or_zero = spec.get("or_zero", False)
    if not isinstance(or_zero, bool) or (or_zero and dist != "log_uniform"):
        raise fail(f"{key}.or_zero", "true or false, and only for log_uniform")
    return Param(name, role, dist, low=low, high=high, or_zero=or_zero)


def _grid(raw: dict, space: SearchSpace, fail: Callable[..., UserError]) -> None:
    for key in ("num_samples", "sampler", "reference_points", "base_group"):
        if key in raw:
            raise fail(key, "not used by kind: grid (every group runs on every seed); remove it")
    if space.searched:
        name = space.searched[0].name
        raise fail(f"parameters.{name}.role", "kind: grid takes only fixed parameters")
    groups = raw.get("groups", list(GROUPS))
    if not isinstance(groups, list) or not groups:
        raise fail("groups", f"a non-empty list of {', '.join(GROUPS)}")
    for g in groups:
        if g not in GROUPS:
            raise fail("groups", f"unknown group {g!r}; use {', '.join(GROUPS)}")
    if len(set(groups)) != len(groups):
        raise fail("groups", "groups must be distinct")
    space.groups = list(groups)


def _optuna(raw: dict, space: SearchSpace, fail: Callable[..., UserError]) -> None:
    if "groups" in raw:
        raise fail("groups", "only for kind: grid; the optuna kind uses base_group")
    space.base_group = raw.get("base_group", "baseline_aug")
    if space.base_group not in GROUPS:
        raise fail("base_group", f"unknown {space.base_group!r}; use {', '.join(GROUPS)}")
    if not space.searched:
        raise fail("parameters", "kind: optuna needs at least one scientific or nuisance parameter")
    _sampler(raw.get("sampler", {}), space, fail)
    space.reference_points = [
        _point(p, i, space, fail) for i, p in enumerate(raw.get("reference_points") or [])
    ]
    n = raw.get("num_samples", 40)
    if isinstance(n, bool) or not isinstance(n, int) or n < max(1, len(space.reference_points)):
        raise fail(
            "num_samples",
            f"{n!r}: an integer >= the {len(space.reference_points)} reference points",
        )
    space.num_samples = n


def _sampler(sampler: Any, space: SearchSpace, fail: Callable[..., UserError]) -> None:
    if not isinstance(sampler, dict):
        raise fail("sampler", "expected a mapping {type: tpe, seed: S}")
    _no_unknown(sampler, {"type", "seed", "population_size"}, "sampler.", fail)
    space.sampler_type = sampler.get("type", "tpe")
    if space.sampler_type not in SAMPLERS:
        raise fail(
            "sampler.type", f"unknown {space.sampler_type!r}; use one of {', '.join(SAMPLERS)}"
        )
    seed = sampler.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise fail("sampler.seed", f"needs an integer, got {seed!r}")
    space.sampler_seed = seed
    if "population_size" in sampler:
        size = sampler["population_size"]
        if space.sampler_type != "nsga2":
            raise fail("sampler.population_size", "only for type: nsga2; remove it")
        if isinstance(size, bool) or not isinstance(size, int) or size < 2:
            raise fail("sampler.population_size", f"needs an integer >= 2, got {size!r}")
        space.population_size = size


def _point(raw: Any, i: int, space: SearchSpace, fail: Callable[..., UserError]) -> dict[str, Any]:
    key = f"reference_points[{i}]"
    if not isinstance(raw, dict):
        raise fail(key, "expected a mapping {group: ..., <parameter>: value, ...}")
    group = raw.get("group")
    if group not in GROUPS:
        raise fail(f"{key}.group", f"unknown {group!r}; label it with one of {', '.join(GROUPS)}")
    point = {"group": group}
    for p in space.searched:
        if p.name not in raw:
            raise fail(
                f"{key}.{p.name}", "missing; a reference point sets every searched parameter"
            )
        v = raw[p.name]
        if not _allowed(p, v):
            raise fail(f"{key}.{p.name}", f"{v!r} is outside the parameter's distribution")
        point[p.name] = v
    for name in raw:
        if name != "group" and name not in point:
            raise fail(f"{key}.{name}", "not a searched parameter of this file")
    return point


def _allowed(p: Param, v: Any) -> bool:
    if p.distribution == "categorical":
        return v in (p.choices or [])
    if isinstance(v, bool) or not isinstance(v, int | float):
        return False
    if p.or_zero and v == 0:
        return True
    assert p.low is not None and p.high is not None
    return p.low <= v <= p.high


# ---- Optuna's define-by-run space (duck-typed trial: only suggest_* is called) ----------------


def _switch(name: str) -> str:
    """The categorical that switches an ``or_zero`` parameter on (``use_g_flux``)."""
    return f"use_{name}"


class DefineByRun:
    """The conditional space for OptunaSearch: ``use_g_flux`` in {True, False}, then log g_flux.

    Calling it with an Optuna trial gives the value of every searched parameter (0.0 when
    switched off). A class, not a closure, so that Ray can pickle the searcher for resume.
    """

    def __init__(self, space: SearchSpace):
        self.space = space

    def __call__(self, trial: Any) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for p in self.space.searched:
            if p.distribution == "categorical":
                values[p.name] = trial.suggest_categorical(p.name, p.choices)
            elif p.or_zero and not trial.suggest_categorical(_switch(p.name), [True, False]):
                values[p.name] = 0.0
            else:
                log = p.distribution == "log_uniform"
                values[p.name] = trial.suggest_float(p.name, p.low, p.high, log=log)
        return values


def define_by_run(space: SearchSpace) -> DefineByRun:
    """The define-by-run function of ``space`` (see ``DefineByRun``)."""
    return DefineByRun(space)


def optuna_point(space: SearchSpace, point: dict[str, Any]) -> dict[str, Any]:
    """A reference point as the Optuna parameters the define-by-run space would draw."""
    params: dict[str, Any] = {}
    for p in space.searched:
        v = point[p.name]
        if p.or_zero:
            params[_switch(p.name)] = v != 0
            if v == 0:
                continue
        params[p.name] = float(v) if p.distribution != "categorical" else v
    return params


def values_of(space: SearchSpace, config: dict[str, Any]) -> dict[str, Any]:
    """The searched parameter values of a trial config (0.0 for switched-off weights)."""
    out = {}
    for p in space.searched:
        if p.or_zero and config.get(_switch(p.name)) is False:
            out[p.name] = 0.0
        else:
            out[p.name] = config[p.name]
    return out


def label(space: SearchSpace, values: dict[str, Any]) -> str:
    """``search`` for a sampled configuration, the group name for a reference point."""
    for point in space.reference_points:
        if all(point[k] == v for k, v in values.items()):
            return point["group"]
    return "search"


# ---- several objectives ----------------------------------------------------------------------


def pareto_optimal(points: Sequence[Sequence[float]], modes: Sequence[str]) -> list[bool]:
    """Which points no other point dominates (as good on every objective and better on one).

    Args:
        points: one row of objective values per configuration (its seed means).
        modes: ``min`` or ``max`` per objective.

    A point with a NaN (or infinite) value is never optimal and dominates nothing; points
    with equal values are all optimal.
    """
    signs = [1.0 if m == "min" else -1.0 for m in modes]
    rows = [[s * float(v) for s, v in zip(signs, p, strict=True)] for p in points]
    finite = [all(math.isfinite(v) for v in r) for r in rows]

    def dominates(a: list[float], b: list[float]) -> bool:
        pairs = list(zip(a, b, strict=True))
        return all(x <= y for x, y in pairs) and any(x < y for x, y in pairs)

    return [
        finite[i] and not any(finite[j] and dominates(rows[j], r) for j in range(len(rows)))
        for i, r in enumerate(rows)
    ]
