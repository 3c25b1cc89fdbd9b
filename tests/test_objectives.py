"""Several objectives (issue 14): seed means per objective, a known Pareto front, the report.

The synthetic objective is ZDT1 in two variables (Zitzler, Deb and Thiele 2000): with
x = g_flux and y = g_inv on [0, 1], g = 1 + 9y, f1 = x and f2 = g (1 - sqrt(f1 / g)). Its Pareto
front is y = 0, f2 = 1 - sqrt(f1): every point with y = 0 is Pareto-optimal, whatever else is
sampled, and the front's hypervolume against (1, 1) is the integral of sqrt(x), 2/3. Each
"seed" adds +-0.3 in opposite directions, so only the seed mean is exactly on the function.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml
from _fake_study import make_fake_study

from study import search_space as ss
from study import tune as st

OBJECTIVES = [("val_sigma_nmad", "min"), ("val_outlier_frac", "min")]
NOISE = (0.3, -0.3)  # seed k adds NOISE[k] to f1 and subtracts it from f2: the mean is exact
ON_FRONT, OFF_FRONT = (0.25, 0.0), (0.25, 0.5)  # the reference points' (x, y)


def zdt1_space(sampler: dict, n: int) -> ss.SearchSpace:
    """A two-objective space over (g_flux, g_inv) on [0, 1]^2 with two reference points."""
    unit = {"role": "scientific", "distribution": "uniform", "low": 0.0, "high": 1.0}
    raw = {
        "name": "zdt1",
        "kind": "optuna",
        "seeds": len(NOISE),
        "num_samples": n,
        "objectives": [{"metric": m, "mode": d} for m, d in OBJECTIVES],
        "sampler": sampler,
        "reference_points": [
            {"group": "baseline_aug", "g_flux": ON_FRONT[0], "g_inv": ON_FRONT[1]},
            {"group": "constrained", "g_flux": OFF_FRONT[0], "g_inv": OFF_FRONT[1]},
        ],
        "parameters": {"g_flux": unit, "g_inv": unit},
    }
    return ss.parse(raw, "zdt1.yaml")


def zdt1(x: float, y: float) -> tuple[float, float]:
    g = 1.0 + 9.0 * y
    return x, g * (1.0 - math.sqrt(x / g))


def seed_result(config: dict, k: int) -> dict[str, float]:
    f1, f2 = zdt1(config["g_flux"], config["g_inv"])
    return {"val_sigma_nmad": f1 + NOISE[k], "val_outlier_frac": f2 - NOISE[k]}


def hypervolume(points: list[tuple[float, ...]], ref: tuple[float, float] = (1.0, 1.0)) -> float:
    """Area dominated by ``points`` (both minimised) inside the box up to ``ref``, by hand."""
    area, best_y = 0.0, ref[1]
    for x, y in sorted(p for p in points if p[0] < ref[0] and p[1] < ref[1]):
        if y < best_y:
            area, best_y = area + (ref[0] - x) * (best_y - y), y
    return area


def journal(study_dir: Path) -> optuna.Study:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(study_dir / st.JOURNAL)))
    return optuna.load_study(study_name=st.OPTUNA_STUDY, storage=storage)


def drive(space: ss.SearchSpace, study_dir: Path) -> optuna.Study:
    """The study's real searcher (SeedMeanRepeater over OptunaSearch) as Tune calls it."""
    searcher = st._searcher(space, study_dir)
    for c in range(space.num_samples):
        ids = [f"t{c}-{k}" for k in range(len(space.seeds))]
        configs = [searcher.suggest(i) for i in ids]  # one suggestion, once per seed
        assert [cfg["__trial_index__"] for cfg in configs] == list(range(len(space.seeds)))
        for k, (i, cfg) in enumerate(zip(ids, configs, strict=True)):
            searcher.on_trial_complete(i, result=seed_result(cfg, k))
    return journal(study_dir)


def check_known_front(study: optuna.Study) -> list[tuple[float, ...]]:
    trials = study.trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * len(trials)
    assert study.metric_names == [m for m, _ in OBJECTIVES]
    for t in trials:  # Optuna was told the seed means: exactly the function, the noise gone
        x, y = t.params["g_flux"], t.params["g_inv"]
        assert t.values == pytest.approx(zdt1(x, y), abs=1e-12)
    values = [tuple(t.values) for t in trials]
    optimal = ss.pareto_optimal(values, [d for _, d in OBJECTIVES])
    best = {t.number for t in study.best_trials}  # Optuna's own non-dominated sort
    assert optimal == [t.number in best for t in trials]
    assert optimal[0] and not optimal[1]  # y = 0 is on the front; (0.25, 0.5) is beaten by it
    return values


@pytest.mark.parametrize(
    "sampler", [{"type": "tpe", "seed": 0}, {"type": "nsga2", "seed": 0, "population_size": 8}]
)
def test_multi_objective_samplers_find_the_known_front(tmp_path, sampler):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    n = 24
    values = check_known_front(drive(zdt1_space(sampler, n), tmp_path))
    # better than random search with the same budget, both against the true front's 2/3
    rng = np.random.default_rng(0)
    random = [zdt1(*rng.uniform(0, 1, 2)) for _ in range(n)]
    assert hypervolume(random) < hypervolume(values) < 2 / 3


def test_seed_means_per_objective_by_hand():
    from study.seed_means import seed_means

    scores = [(1.0, 10.0), (2.0, math.nan), (4.0, 40.0)]  # seed 1 lost its second metric
    assert seed_means(scores) == pytest.approx([7 / 3, 25.0])
    assert math.isnan(seed_means([(math.nan,), (math.nan,)])[0])


def test_rays_own_repeater_cannot_average_a_list_of_metrics(tmp_path):
    """Why study.seed_means exists: Ray 2.60's Repeater tests ``metric in result`` on a list."""
    from ray.tune.search import Repeater

    space = zdt1_space({"type": "tpe", "seed": 0}, 2)
    plain = Repeater(st._searcher(space, tmp_path).searcher, repeat=2)
    plain.suggest("a")
    with pytest.raises(TypeError, match="unhashable"):
        plain.on_trial_complete("a", result={"val_sigma_nmad": 1.0, "val_outlier_frac": 2.0})


@pytest.mark.slow
def test_known_front_through_ray_tune(tmp_path):
    """The same searcher inside a real Tuner (local Ray) with a trivial function trainable."""
    import ray
    from ray import tune

    def trainable(config: dict) -> None:  # self-contained: the workers cannot import tests/
        from ray import tune

        x, y, noise = config["g_flux"], config["g_inv"], (0.3, -0.3)[config["__trial_index__"]]
        g = 1.0 + 9.0 * y
        f2 = g * (1.0 - (x / g) ** 0.5)
        tune.report({"val_sigma_nmad": x + noise, "val_outlier_frac": f2 - noise})

    space = zdt1_space({"type": "tpe", "seed": 0}, 10)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=st._searcher(space, tmp_path),
                num_samples=space.num_samples * len(space.seeds),
                reuse_actors=True,
                trial_dirname_creator=st.trial_dirname,
            ),
            run_config=tune.RunConfig(storage_path=str(tmp_path / "ray"), verbose=0),
        )
        results = tuner.fit()
    finally:
        ray.shutdown()
    assert results.num_errors == 0 and len(results) == 20
    study = journal(tmp_path)
    assert len(study.trials) == 10
    check_known_front(study)


# ---- the report --------------------------------------------------------------------------


def pareto_frame() -> pd.DataFrame:
    """Four configurations x 3 seeds with known means: a (1, 4), b (2, 2), c (3, 3), ref (4, 1)."""
    means = {"a": (1, 4), "b": (2, 2), "c": (3, 3), "r1": (4, 1), "r2": (3.5, 3.5)}
    groups = {"a": "search", "b": "search", "c": "search", "r1": "baseline_aug"}
    groups["r2"] = "constrained"
    rows = []
    for cid, (x, y) in means.items():
        for seed, e in enumerate((-0.1, 0.0, 0.1)):
            rows.append({"config_id": cid, "seed": seed, "group": groups[cid], "g_flux": 0.0,
                         "g_inv": 0.0, "g_cde": 0.0, "lr": 1e-3,
                         "val_sigma_nmad": x + e, "val_outlier_frac": y - 2 * e})  # fmt: skip
    return pd.DataFrame(rows)


def test_pareto_table_and_figure_by_hand():
    from analysis.figures import pareto_front
    from analysis.stats import pareto_table

    table = pareto_table(pareto_frame(), OBJECTIVES).set_index("config_id")
    assert table.loc["b", "val_sigma_nmad_mean"] == pytest.approx(2.0)
    assert table.loc["b", "val_sigma_nmad_std"] == pytest.approx(0.1)  # std of (-0.1, 0, 0.1)
    assert table.loc["b", "val_outlier_frac_std"] == pytest.approx(0.2)
    assert (table["n"] == 3).all()
    assert table["pareto"].to_dict() == {"a": True, "b": True, "c": False, "r1": True, "r2": False}
    fig = pareto_front(table.reset_index(), OBJECTIVES)
    traces = {t.name: t for t in fig.data}
    assert set(traces) >= {"searched configurations", "baseline_aug (reference point)",
                           "constrained (reference point)", "Pareto-optimal (3 of 5)"}  # fmt: skip
    ring = traces["Pareto-optimal (3 of 5)"]
    np.testing.assert_allclose(sorted(zip(ring.x, ring.y, strict=True)), [(1, 4), (2, 2), (4, 1)])
    search = traces["searched configurations"]
    assert list(search.x) == pytest.approx([1, 2, 3])
    assert list(search.error_x.array) == pytest.approx([0.1] * 3)
    assert list(search.error_y.array) == pytest.approx([0.2] * 3)
    ref = traces["baseline_aug (reference point)"]
    assert (list(ref.x), ref.marker.symbol) == ([pytest.approx(4.0)], "diamond")
    assert "n=3 seeds" in fig.layout.title.text
    # an ablation's other groups are named as themselves, not as searched configurations
    groups = ["search", "search", "cde_only", "baseline_aug", "constrained"]
    traces = {
        t.name: t for t in pareto_front(table.reset_index().assign(group=groups), OBJECTIVES).data
    }
    assert list(traces["cde_only"].x) == [3.0]
    assert list(traces["searched configurations"].x) == [1.0, 2.0]


def test_report_of_a_multi_objective_study(tmp_path):
    """A fake search with an objectives: search_space.yaml: Pareto section, figure, pareto.csv."""
    from analysis import report
    from analysis.results import load_study

    study = make_fake_study(
        tmp_path / "mo", groups=("baseline_aug", "constrained"), seeds=(0, 1), searched=3,
        n_test=60,
    )  # fmt: skip
    space = {"objectives": [{"metric": m, "mode": d} for m, d in OBJECTIVES]}
    (study / "search_space.yaml").write_text(yaml.safe_dump(space))
    assert load_study(study).objectives() == OBJECTIVES
    report.build_report(study, png=False, landscape=False, augmentations=False, peers=())
    page = (study / "report" / "report.html").read_text()
    assert "<h2>Pareto front: val_sigma_nmad (minimise) vs val_outlier_frac (minimise)</h2>" in page
    assert "id='pareto_front'" in page and (study / "report/figures/pareto_front.html").is_file()
    frame = load_study(study).frame
    csv = pd.read_csv(study / "report" / "pareto.csv").set_index("config_id")
    means = frame.groupby("config_id")[[m for m, _ in OBJECTIVES]].mean()
    for m, _ in OBJECTIVES:
        assert csv[f"{m}_mean"].to_dict() == pytest.approx(means[m].to_dict())
    expected = ss.pareto_optimal(means.loc[csv.index].to_numpy().tolist(), ["min", "min"])
    assert csv["pareto"].tolist() == expected
    # the fake journal is one-objective: Optuna's own figures are as before
    assert "id='optuna_history'" in page


# ---- a real multi-objective study: study.run, killed, resumed, reported -------------------


@pytest.mark.slow
def test_multi_objective_study_end_to_end(tmp_path):
    """demo_pareto on the tiny preset: kill the driver after its first run, --resume, report.

    The frame has one row per (configuration, seed), the journal one two-valued trial per
    configuration holding exactly the frame's seed means, and the report its Pareto front.
    """
    import os
    import signal
    import subprocess
    import sys
    import time

    from test_tune import LIGHT_RAY, ROOT, tiny_file

    from analysis import report
    from study.run import main

    data, out = tiny_file(tmp_path / "tiny.h5"), tmp_path / "study"
    argv = ["--search", "demo_pareto", "--preset", "tiny", "--seeds", "2", "--num-samples", "3"]
    argv += ["--epochs", "1", "--data", str(data), "--out", str(out), *LIGHT_RAY]
    log = (tmp_path / "driver.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "study.run", *argv], stdout=log, stderr=log,
                            start_new_session=True, cwd=ROOT)  # fmt: skip
    try:
        deadline = time.time() + 300
        while not list(out.glob("runs/*/metrics.json")) and time.time() < deadline:
            assert proc.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
            time.sleep(0.5)
    finally:
        if proc.poll() is None:  # (a driver that failed by itself has shut its Ray down)
            os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started
        proc.wait()
    assert 1 <= len(list(out.glob("runs/*/metrics.json"))) < 6
    assert main(["--resume", str(out), *LIGHT_RAY]) == 0
    frame = pd.read_parquet(out / "frame.parquet")
    assert len(frame) == 6 and not frame.duplicated(["config_id", "seed"]).any()
    seeds = frame.groupby("config_id")["seed"].apply(sorted)
    assert len(seeds) == 3 and all(s == [0, 1] for s in seeds)  # paired: the same seeds
    study = journal(out)
    assert study.metric_names == [m for m, _ in OBJECTIVES]
    assert [d.name for d in study.directions] == ["MINIMIZE", "MINIMIZE"]
    done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(done) == 3 and not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    means = frame.groupby("config_id")[[m for m, _ in OBJECTIVES]].mean()
    told = sorted(tuple(t.values) for t in done)
    assert np.allclose(told, sorted(map(tuple, means.to_numpy())), rtol=1e-12, atol=0)
    report.build_report(out, png=False, landscape=False, augmentations=False, peers=())
    csv = pd.read_csv(out / "report" / "pareto.csv").set_index("config_id")
    assert set(csv.index) == set(means.index)

    def config_of(values: list[float]) -> str:
        return str(means.index[np.isclose(means.to_numpy(), values, rtol=1e-12).all(axis=1)][0])

    # Optuna's own front over the journal is the report's front over the frame
    assert {config_of(t.values) for t in study.best_trials} == set(csv.index[csv["pareto"]])
    page = (out / "report" / "report.html").read_text()
    assert "id='pareto_front'" in page and "id='optuna_history_val_sigma_nmad'" in page
