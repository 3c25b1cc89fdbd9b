"""Seed groups reconciled with the trials Tune restored (study.seed_groups), without a Ray cluster.

The study's real searcher (``ReissuingRepeater`` over ``OptunaSearch`` with a journal) inside a
``SeedGroupGenerator``, saved with Tune's own ``save_to_dir`` and restored with its
``restore_from_dir`` beside an experiment state file in Tune's format (its ``trial_data`` rows
are real ``Trial.get_json_state()``), written from two different moments as a torn snapshot
leaves them. ``tests/test_resume_seeds.py`` does the same with a real killed study.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import optuna
import pytest
from ray.tune.experiment import Trial
from ray.tune.search import Repeater
from ray.tune.utils.serialization import TuneFunctionEncoder
from ray.tune.utils.util import flatten_dict

from study import search_space as ss
from study import tune as st
from study.seed_groups import SeedGroupGenerator, restored_trials

SESSION = "2026-12-01_00-00-00"


@pytest.fixture(autouse=True)
def _quiet():
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def generator(study_dir: Path, name: str = "demo") -> SeedGroupGenerator:
    """A fresh generator as make_tuner builds it (K = 2 seeds, 3 configurations).

    demo: ReissuingRepeater; demo_pareto: SeedMeanRepeater (two objectives); demo_halving:
    PairedRepeater (paired halving's, which needs the trainable's constants).
    """
    space = ss.load(name).with_overrides(seeds=2, num_samples=3)
    study_dir.mkdir(parents=True, exist_ok=True)
    study = {"study_dir": str(study_dir), "space": space.to_dict(), "space_path": space.path}
    study |= {"preset": "tiny", "epochs": 5, "data_path": "unused.h5", "data_default": False}
    gen = SeedGroupGenerator(st._searcher(space, study_dir, {"study": study}))
    gen._total_samples = 6  # what add_configurations reads from TuneConfig(num_samples=3 x 2)
    return gen


def issue(gen: SeedGroupGenerator, trial_ids: str) -> dict[str, dict]:
    """Suggestions for these trial ids, counted as Tune's create_trial_if_possible counts them."""
    configs = {t: gen.searcher.suggest(t) for t in trial_ids}
    gen._counter += len(configs)
    return configs


def save(gen: SeedGroupGenerator, path: Path) -> None:
    """Tune's own save of the search algorithm (search_gen_state and the searcher's pickle)."""
    path.mkdir(parents=True, exist_ok=True)
    gen.save_to_dir(str(path), SESSION)


def write_trials(path: Path, configs: dict[str, dict], finished: dict | None = None) -> None:
    """An experiment state file holding these trials (TuneController.save_to_dir's layout).

    ``finished``: {trial id: last result} of the trials that are TERMINATED.
    """
    rows = []
    for t, c in configs.items():
        trial = Trial(
            "trainable", config=c, trial_id=t, evaluated_params=flatten_dict(c), stub=True
        )
        if t in (finished or {}):
            trial.set_status(Trial.TERMINATED)
            trial.run_metadata.last_result = finished[t]
        rows.append(trial)
    state = {"trial_data": [t.get_json_state() for t in rows], "runner_data": {}, "stats": {}}
    path.mkdir(parents=True, exist_ok=True)
    (path / f"experiment_state-{SESSION}.json").write_text(
        json.dumps(state, cls=TuneFunctionEncoder)
    )


def restore(study_dir: Path, ckpt: Path, name: str = "demo") -> SeedGroupGenerator:
    gen = generator(study_dir, name)  # Tuner.restore unpickles the generator as it was built
    gen.restore_from_dir(str(ckpt))
    return gen


def result(gen: SeedGroupGenerator, score: float) -> dict[str, float]:
    """A final result with ``score`` for each of the searcher's objectives."""
    metric = gen.searcher.searcher.metric
    return {m: score for m in (metric if isinstance(metric, list) else [metric])}


def seed_means(study_dir: Path) -> list[float]:
    """The first objective of the journal's COMPLETE trials, in the order they were asked."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(study_dir / st.JOURNAL)))
    study = optuna.load_study(study_name=st.OPTUNA_STUDY, storage=storage)
    return [t.values[0] for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))]


def test_without_a_kill_the_suggestions_are_rays_repeaters(tmp_path):
    ours = generator(tmp_path / "a").searcher
    space = ss.load("demo").with_overrides(seeds=2, num_samples=3)
    (tmp_path / "b").mkdir()
    rays = Repeater(st._searcher(space, tmp_path / "b").searcher, repeat=2, set_index=True)
    assert [ours.suggest(f"t{i}") for i in range(6)] == [rays.suggest(f"t{i}") for i in range(6)]


def test_consistent_files_restore_unchanged(tmp_path):
    gen, ckpt = generator(tmp_path), tmp_path / "ckpt"
    configs = issue(gen, "abc")
    save(gen, ckpt)
    write_trials(ckpt, configs)
    assert set(restored_trials(ckpt)) == set("abc")
    again = restore(tmp_path, ckpt)
    assert again._counter == 3 and not again.searcher._reissue
    assert again.searcher.suggest("d") == {**configs["c"], "__trial_index__": 1}


SPACES = ["demo", "demo_pareto", "demo_halving"]


@pytest.mark.parametrize("name", SPACES)
def test_a_seed_the_searcher_issued_but_tune_never_saved_is_issued_again(tmp_path, name):
    """The CI failure: groups [a, b] [c, d] saved, trials a b c saved; d must run again."""
    gen, ckpt = generator(tmp_path, name), tmp_path / "ckpt"
    configs = issue(gen, "abcd")
    save(gen, ckpt)
    write_trials(ckpt, {t: configs[t] for t in "abc"})
    again = restore(tmp_path, ckpt, name)
    assert again._counter == 3 and not again.is_finished()
    e = again.searcher.suggest("e")  # d's place: the same values, seed index 1
    assert e == configs["d"] and e["__trial_index__"] == 1
    f = again.searcher.suggest("f")  # then a new configuration
    assert f["__trial_index__"] == 0 and f != {**configs["c"], "__trial_index__": 0}
    # Optuna is told each configuration's seed mean once, under the id it knows (c, not e)
    for t, score in zip("abce", [1.0, 3.0, 10.0, 20.0], strict=True):
        again.on_trial_complete(t, result=result(again, score))
    assert seed_means(tmp_path) == [2.0, 15.0]


def test_a_lost_seed_zero_keeps_the_id_the_searcher_knows(tmp_path):
    gen, ckpt = generator(tmp_path), tmp_path / "ckpt"
    configs = issue(gen, "abcd")
    save(gen, ckpt)
    write_trials(ckpt, {t: configs[t] for t in "ab"})  # c and d (its whole group) lost
    again = restore(tmp_path, ckpt)
    assert again._counter == 2
    assert [again.searcher.suggest(t) for t in "ef"] == [configs["c"], configs["d"]]
    for t, score in zip("abef", [1.0, 3.0, 10.0, 20.0], strict=True):
        again.on_trial_complete(t, result=result(again, score))
    assert seed_means(tmp_path) == [2.0, 15.0]


@pytest.mark.parametrize("name", SPACES)
def test_a_trial_tune_saved_after_the_searcher_joins_its_group(tmp_path, name):
    """The reverse: groups [a, b] [c] saved, trials a b c d saved (d: c's seed 1)."""
    gen, ckpt = generator(tmp_path, name), tmp_path / "ckpt"
    configs = issue(gen, "abc")
    save(gen, ckpt)
    configs |= issue(gen, "d")
    write_trials(ckpt, configs)
    again = restore(tmp_path, ckpt, name)
    assert again._counter == 4
    assert again.searcher.suggest("e")["__trial_index__"] == 0  # d's group is full
    for t, score in zip("abcd", [1.0, 3.0, 10.0, 20.0], strict=True):
        again.on_trial_complete(t, result=result(again, score))
    assert seed_means(tmp_path) == [2.0, 15.0]


def test_a_configuration_sampled_after_the_saved_groups_gets_its_group(tmp_path):
    """Groups [a, b] saved; the searcher's own file and the trials (a b c) from after c's ask."""
    gen, old, ckpt = generator(tmp_path), tmp_path / "old", tmp_path / "ckpt"
    configs = issue(gen, "ab")
    save(gen, old)
    configs |= issue(gen, "c")
    save(gen, ckpt)
    shutil.copy(old / f"search_gen_state-{SESSION}.json", ckpt)  # the older groups
    write_trials(ckpt, configs)
    again = restore(tmp_path, ckpt)
    assert again._counter == 3
    assert again.searcher.suggest("d") == {**configs["c"], "__trial_index__": 1}
    for t, score in zip("abcd", [1.0, 3.0, 10.0, 20.0], strict=True):
        again.on_trial_complete(t, result=result(again, score))
    assert seed_means(tmp_path) == [2.0, 15.0]


@pytest.mark.parametrize("name", SPACES)
def test_a_completion_the_saved_groups_missed_is_told_on_restore(tmp_path, name):
    """Groups saved before b finished; the trials after: b is TERMINATED, Tune won't rerun it."""
    gen, ckpt = generator(tmp_path, name), tmp_path / "ckpt"
    configs = issue(gen, "ab")
    gen.on_trial_complete("a", result=result(gen, 1.0))
    save(gen, ckpt)
    write_trials(ckpt, configs, finished={"a": result(gen, 1.0), "b": result(gen, 3.0)})
    again = restore(tmp_path, ckpt, name)
    assert again._counter == 2 and seed_means(tmp_path) == [2.0]
