"""Search-space files: the shipped ones, the one-line errors, and the Optuna define-by-run space."""

from __future__ import annotations

import math
import time

import optuna
import pytest
import yaml
from _spec import SPEC3_METRICS

from study import search_space as ss
from study.errors import UserError

SPEC3 = set(SPEC3_METRICS) - {"cde_loss_se"}  # objectives


def test_gamma_file():
    space = ss.load("gamma")
    assert space.kind == "optuna" and space.base_group == "baseline_aug"
    # issue 14: two objectives no loss term trains on (not cde_loss, which P_cde trains)
    assert space.objectives == [
        ss.Objective("val_sigma_nmad", "min"),
        ss.Objective("val_outlier_frac", "min"),
    ]
    assert space.multi_objective and (space.metric, space.mode) == ("val_sigma_nmad", "min")
    assert space.seeds == [0, 1, 2, 3, 4] and space.num_samples == 40
    # g_cde's range reaches down to the paper's effective weight in density units, 0.1 * dz / C
    # = 1.23e-6 (issue 13); the other two weights keep [1e-3, 1]
    for name, low in (("g_flux", 1e-3), ("g_inv", 1e-3), ("g_cde", 1e-7)):
        p = space.parameters[name]
        assert (p.role, p.distribution, p.low, p.high, p.or_zero) == (
            "scientific",
            "log_uniform",
            low,
            1.0,
            True,
        )
    assert space.parameters["g_cde"].low < 0.1 * 0.4 / 180**2 < space.parameters["g_cde"].high
    assert space.parameters["lr"].role == "nuisance"
    assert space.parameters["lr"].distribution == "log_uniform"
    assert space.fixed == {"loss.g_l2": 1e-6}
    groups = [p["group"] for p in space.reference_points]
    assert groups == ["baseline_aug", "constrained"]
    assert space.reference_points[1] | {} == {
        "group": "constrained",
        "g_flux": 0.1,
        "g_inv": 0.1,
        "g_cde": 0.1,
        "lr": 1e-3,
    }


def test_ablation_and_demo_files():
    ablation = ss.load("ablation")
    assert ablation.kind == "grid" and not ablation.searched
    assert ablation.groups == list(ss.GROUPS) and ablation.n_configurations == 6
    demo = ss.load("demo")
    assert demo.preset == "demo" and demo.seeds == [0, 1]
    assert demo.num_samples - len(demo.reference_points) == 2  # two sampled configurations
    assert demo.objectives == [ss.Objective("val_cde_loss", "min")]  # make demo as before
    # demo_pareto: the demo with gamma's two objectives, and nothing else changed
    pareto = ss.load("demo_pareto")
    assert pareto.objectives == ss.load("gamma").objectives
    drop = ("name", "description", "objective", "objectives")
    same = [{k: v for k, v in s.to_dict().items() if k not in drop} for s in (demo, pareto)]
    assert same[0] == same[1]


def test_constants_agree_with_the_rest_of_the_code():
    from study.config import GROUPS

    assert ss.GROUPS == GROUPS
    assert set(ss.OBJECTIVE_METRICS) == SPEC3
    assert ss.OBJECTIVE_EXTRA == ("train_seconds",)  # a frame column (SPEC 8)


def test_overrides():
    space = ss.load("gamma").with_overrides(seeds=3, num_samples=7)
    assert space.seeds == [0, 1, 2] and space.num_samples == 7
    with pytest.raises(UserError, match="--seeds 0"):
        ss.load("gamma").with_overrides(seeds=0)
    with pytest.raises(UserError, match="reference points"):
        ss.load("gamma").with_overrides(num_samples=1)


def test_resolved_space_round_trips():
    for name in ("gamma", "ablation", "demo", "demo_pareto"):
        space = ss.load(name)
        again = ss.parse(yaml.safe_load(yaml.safe_dump(space.to_dict())), space.path)
        assert again.to_dict() == space.to_dict()


def _gamma_raw() -> dict:
    return yaml.safe_load(ss.resolve_path("gamma").read_text())


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda r: r.update(seeds_k=3), "seeds_k"),  # unknown top-level key
        (lambda r: r["parameters"]["g_flux"].update(lo=0.1), "parameters.g_flux.lo"),
        (lambda r: r["parameters"]["lr"].update(low=1e-2, high=1e-4), "parameters.lr.low"),
        (
            lambda r: r["parameters"]["g_inv"].update(distribution="log_unifrom"),
            "parameters.g_inv.distribution",
        ),
        (lambda r: r.update(seeds=0), "seeds"),
        (lambda r: r["parameters"]["lr"].update(role="nuisanse"), "parameters.lr.role"),
        (lambda r: r["objectives"][1].update(metric="val_outliers"), "objectives[1].metric"),
        (lambda r: r["objectives"][0].update(mode="minimize"), "objectives[0].mode"),
        (lambda r: r["objectives"][0].update(direction="min"), "objectives[0].direction"),
        (lambda r: r["objectives"].pop(), "objectives"),  # one: that is objective's form
        (lambda r: r["objectives"].append(r["objectives"][0]), "objectives[2].metric"),  # twice
        (lambda r: r.update(objective={"metric": "val_ks"}), "objectives"),  # both forms
        (lambda r: r["sampler"].update(type="nsga3"), "sampler.type"),
        (lambda r: r["sampler"].update(population_size=20), "sampler.population_size"),  # tpe
        (lambda r: r["reference_points"][0].update(g_flux=5.0), "reference_points[0].g_flux"),
        (lambda r: r.update(num_samples=1), "num_samples"),
    ],
)
def test_malformed_file_is_one_line_naming_file_and_key(tmp_path, edit, key):
    raw = _gamma_raw()
    edit(raw)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(UserError) as err:
        ss.load(str(path))
    msg = str(err.value)
    assert msg.startswith(f"{path}: {key}:"), msg
    assert "\n" not in msg


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda r: r["objective"].update(metric="val_cde"), "objective.metric"),
        (lambda r: r["objective"].update(metric="cde_loss"), "objective.metric"),  # no val_
        (lambda r: r["objective"].update(mode="maximise"), "objective.mode"),
        (lambda r: r.update(objective="val_ks"), "objective"),
        (lambda r: r["sampler"].update(type="nsga2", population_size=1), "sampler.population_size"),
    ],
)
def test_malformed_single_objective_is_one_line(tmp_path, edit, key):
    raw = yaml.safe_load(ss.resolve_path("demo").read_text())
    edit(raw)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(UserError) as err:
        ss.load(str(path))
    assert str(err.value).startswith(f"{path}: {key}:") and "\n" not in str(err.value)


def test_objectives_forms_parse():
    raw = yaml.safe_load(ss.resolve_path("demo").read_text())
    raw["objectives"] = [{"metric": "val_ks"}, {"metric": "train_seconds", "mode": "min"}]
    raw["objectives"].append({"metric": "val_coverage_68", "mode": "max"})
    del raw["objective"]
    raw["sampler"] = {"type": "nsga2", "seed": 3, "population_size": 8}
    space = ss.parse(raw, "x.yaml")
    assert [(o.metric, o.mode) for o in space.objectives] == [
        ("val_ks", "min"),  # mode defaults to min
        ("train_seconds", "min"),
        ("val_coverage_68", "max"),
    ]
    assert (space.sampler_type, space.sampler_seed, space.population_size) == ("nsga2", 3, 8)
    again = ss.parse(yaml.safe_load(yaml.safe_dump(space.to_dict())), "x.yaml")
    assert again.to_dict() == space.to_dict() and "objective" not in space.to_dict()
    # the single form without a metric keeps its default (files from before issue 14)
    del raw["objectives"]
    assert ss.parse(raw | {"objective": {}}, "x.yaml").objectives == [
        ss.Objective("val_cde_loss", "min")
    ]


def test_pareto_optimal_by_hand():
    # (1, 4), (2, 2), (4, 1) trade off; (3, 3) is beaten by (2, 2); (2, 5) by (1, 4)
    pts = [(1, 4), (2, 2), (3, 3), (4, 1), (2, 5)]
    assert ss.pareto_optimal(pts, ["min", "min"]) == [True, True, False, True, False]
    # maximising the second: (2, 5) beats (2, 2), (3, 3) and (4, 1); (1, 4) has the best first
    assert ss.pareto_optimal(pts, ["min", "max"]) == [True, False, False, False, True]
    # ties are all optimal; NaN is never optimal and beats nothing
    nan = float("nan")
    assert ss.pareto_optimal([(1, 1), (1, 1), (nan, 0), (2, 0)], ["min", "min"]) == [
        True,
        True,
        False,
        True,
    ]
    assert ss.pareto_optimal([], ["min", "min"]) == []


def test_unknown_search_name_and_bad_yaml(tmp_path):
    with pytest.raises(UserError, match="gamma"):
        ss.load("gama")
    path = tmp_path / "broken.yaml"
    path.write_text("kind: [optuna\n")
    with pytest.raises(UserError, match="not valid YAML"):
        ss.load(str(path))


def test_cli_rejects_bad_space_before_ray_starts(tmp_path, capsys):
    import ray

    from study.run import main

    raw = _gamma_raw()
    raw["parameters"]["g_cde"]["distribution"] = "loguniform"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    t0 = time.perf_counter()
    assert main(["--search", str(path), "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"error: {path}: parameters.g_cde.distribution: unknown 'loguniform'; "
        "use one of log_uniform, uniform, categorical"
    )
    assert not ray.is_initialized() and time.perf_counter() - t0 < 5
    assert not (tmp_path / "s").exists()


def test_cli_rejects_bad_objectives_before_ray_starts(tmp_path, capsys):
    import ray

    from study.run import main

    raw = _gamma_raw()
    raw["objectives"][1]["mode"] = "minimize"  # Optuna's word; the file's is Ray's (min | max)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["--search", str(path), "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {path}: objectives[1].mode: unknown 'minimize'; use min or max"
    assert not ray.is_initialized() and not (tmp_path / "s").exists()


def test_cli_refuses_non_empty_out(tmp_path, capsys):
    from study.run import main

    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "x").write_text("x")
    assert main(["--search", "demo", "--out", str(tmp_path / "s")]) == 2
    assert "not empty" in capsys.readouterr().err


def _sample(space: ss.SearchSpace, seed: int, n: int) -> list[dict]:
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed))
    for point in space.reference_points:
        study.enqueue_trial(ss.optuna_point(space, point))
    fn = ss.define_by_run(space)
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append(fn(trial))
        study.tell(trial, 0.0)
    return out


def test_define_by_run_reference_points_then_conditional_samples():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = ss.load("gamma")
    values = _sample(space, seed=0, n=30)
    assert values[0] == {"g_flux": 0.0, "g_inv": 0.0, "g_cde": 0.0, "lr": 1e-3}
    assert values[1] == {"g_flux": 0.1, "g_inv": 0.1, "g_cde": 0.1, "lr": 1e-3}
    assert [ss.label(space, v) for v in values[:3]] == ["baseline_aug", "constrained", "search"]
    zeros = 0
    for v in values[2:]:
        for name, low in (("g_flux", 1e-3), ("g_inv", 1e-3), ("g_cde", 1e-7)):
            zeros += v[name] == 0.0
            assert v[name] == 0.0 or low <= v[name] <= 1.0
        assert 1e-4 <= v["lr"] <= 3e-3 and math.isfinite(v["lr"])
    assert 0 < zeros < 3 * 28  # both branches of the "or 0" switch are drawn
    # reproducible by sampler seed: same seed same draws, another seed other draws
    assert _sample(space, seed=0, n=6) == values[:6]
    assert _sample(space, seed=1, n=6)[2:] != values[2:6]
