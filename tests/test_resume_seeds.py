"""A driver killed while a configuration's seeds are being created, then --resume (K = 2 seeds).

The demo search (one objective) and demo_pareto (two: SeedMeanRepeater), tiny preset, 2 CPUs.

Ray Tune keeps a study's restore point as two files under ``STUDY_DIR/ray/tune``: the trials
(``experiment_state-*.json``) and the searcher (``search_gen_state-*.json``: the Repeater's seed
groups and the trial counter). Tune writes them one after the other into a staging directory and
a background thread copies them to storage; a copy still running while the next snapshot is
written leaves storage with the file of one snapshot beside the file of the next (see
``study.seed_groups``), and a driver killed then resumes from that pair. The window is a few
milliseconds and not reproducible by timing, so the reproducer makes the pair itself, from the
study's own files: it watches ``ray/tune`` and keeps every version of both files that storage
held; once both list the two seeds of the second configuration it kills the driver and its Ray
(SIGKILL, process group), and puts back the older version of one of the two files:

- ``searcher_newer``: the trials from before that configuration's seed 1 was created, the
  searcher from after (the CI failure: that seed was never asked for again, "interrupted after
  5 of 6 runs", exit 130 on every --resume);
- ``trials_newer``: the searcher from before seed 1 was created, the trials from after (Ray's
  Repeater raises KeyError when that trial completes; its counter is one short).

The resumed study must end with exit 0, every configuration on seeds 0 and 1 once with the same
parameters (the frame, the run directories' config.yaml and Tune's own trials), and Optuna's
journal with each configuration's seed mean once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import ray.cloudpickle as cloudpickle
import yaml
from ray.tune.utils.serialization import _loads_with_cloudpickle
from test_tune import LIGHT_RAY, ROOT, tiny_file

from study import search_space as ss
from study import tune as st
from study.run import main

K, CONFIGS = 2, 3
ARGV = ["--preset", "tiny", "--seeds", str(K), "--num-samples", str(CONFIGS), "--epochs", "1"]


def _newest(exp: Path, pattern: str) -> Path | None:
    paths = sorted(exp.glob(pattern))  # Tune restores the newest by name
    return paths[-1] if paths else None


def trial_configs(es: bytes) -> dict[str, dict]:
    """``{trial_id: config}`` of an experiment state file's trials."""
    state = _loads_with_cloudpickle(es.decode())
    trials = [_loads_with_cloudpickle(t) for t, _ in state["trial_data"]]
    return {t["trial_id"]: t["config"] for t in trials}


def seed_groups(sgs: bytes) -> list[list[str]]:
    """The Repeater's groups (trial ids, seed order) in a search_gen_state file."""
    state = cloudpickle.loads(sgs)
    (repeater,) = [v for k, v in state.items() if k.startswith("name:") and "_groups" in v]
    return [list(g._trials) for g in repeater["_groups"]]


class Watch:
    """Every complete version of the two files that storage held, oldest first."""

    def __init__(self, exp: Path):
        self.exp, self.trials, self.searchers = exp, [], []  # [(bytes, parsed)]

    def poll(self) -> None:
        for pattern, versions, parse in (
            ("experiment_state-*.json", self.trials, trial_configs),
            ("search_gen_state-*.json", self.searchers, seed_groups),
        ):
            path = _newest(self.exp, pattern)
            try:
                data = path.read_bytes() if path else b""
                if data and (not versions or versions[-1][0] != data):
                    versions.append((data, parse(data)))
            except (OSError, ValueError, EOFError, cloudpickle.pickle.UnpicklingError):
                pass  # a file being copied: read it on the next poll

    def both_list(self, index: int) -> list[str] | None:
        """The ids of group ``index`` once storage's trials and searcher both hold its K seeds."""
        if not (self.trials and self.searchers):
            return None
        groups = self.searchers[-1][1]
        if len(groups) <= index or len(groups[index]) < K:
            return None
        return groups[index] if set(groups[index]) <= set(self.trials[-1][1]) else None


def kill_while_seeds_are_created(
    search: str, data: Path, out: Path, log: Path, index: int = 1
) -> tuple[Watch, list[str]]:
    """Run the study in a subprocess; SIGKILL it (and its Ray) once group ``index`` is saved."""
    argv = ["--search", search, *ARGV, "--data", str(data), "--out", str(out), *LIGHT_RAY]
    with log.open("w") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "study.run", *argv],
            stdout=f,
            stderr=f,
            start_new_session=True,  # its own process group: the driver and the Ray it started
            cwd=ROOT,
        )
    watch, ids = Watch(out / "ray" / st.EXPERIMENT), None
    try:
        deadline = time.time() + 300
        while ids is None and time.time() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            watch.poll()
            ids = watch.both_list(index)
            time.sleep(0.002)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert ids is not None, f"group {index} never saved with {K} seeds: {log.read_text()[-3000:]}"
    watch.poll()  # what storage holds after the kill
    return watch, ids


def make_torn_snapshot(watch: Watch, ids: list[str], mode: str) -> None:
    """Put back the older version of one file: storage's two files from two snapshots."""
    exp, seed1 = watch.exp, ids[1]
    if mode == "searcher_newer":  # the newest trials without seed 1
        data = next(d for d, trials in reversed(watch.trials) if seed1 not in trials)
        _newest(exp, "experiment_state-*.json").write_bytes(data)
        assert seed1 not in trial_configs(data)
        assert seed1 in sum(seed_groups(watch.searchers[-1][0]), [])
    else:  # the newest searcher whose group has not issued seed 1
        data = next(d for d, groups in reversed(watch.searchers) if seed1 not in sum(groups, []))
        _newest(exp, "search_gen_state-*.json").write_bytes(data)
        assert seed1 in trial_configs(watch.trials[-1][0])


def check_complete_and_paired(search: str, out: Path) -> None:
    frame = pd.read_parquet(out / "frame.parquet")
    assert len(frame) == K * CONFIGS and not frame.duplicated(["config_id", "seed"]).any()
    seeds = frame.groupby("config_id")["seed"].apply(sorted)
    assert len(seeds) == CONFIGS and all(s == list(range(K)) for s in seeds)
    params = ["g_flux", "g_inv", "g_cde", "lr"]
    assert (frame.groupby("config_id")[params].nunique() == 1).all().all()
    for _, rows in frame.groupby("config_id"):  # each seed's run trained those parameters
        cfgs = [yaml.safe_load((out / r / "config.yaml").read_text()) for r in rows.run_dir]
        assert len({json.dumps(c["loss"] | {"lr": c["optim"]["lr"]}) for c in cfgs}) == 1
        assert sorted(c["run"]["seed"] for c in cfgs) == list(range(K))
    # Tune's own trials: one per (configuration, seed), the seeds of a group sharing its values
    exp = out / "ray" / st.EXPERIMENT
    trials = trial_configs(_newest(exp, "experiment_state-*.json").read_bytes())
    keys = [st.trial_key(c)[:2] for c in trials.values()]
    assert len(keys) == K * CONFIGS and len(set(keys)) == len(keys)
    by_config: dict[str, list[dict]] = {}
    for config in trials.values():
        by_config.setdefault(st.trial_key(config)[0], []).append(config)
    for configs in by_config.values():
        assert sorted(c["__trial_index__"] for c in configs) == list(range(K))
        values = [
            {k: v for k, v in c.items() if k not in ("study", "__trial_index__")} for c in configs
        ]
        assert all(v == values[0] for v in values)
    # Optuna: each configuration's seed mean, once
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(out / st.JOURNAL)))
    study = optuna.load_study(study_name=st.OPTUNA_STUDY, storage=storage)
    done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    metrics = [o.metric for o in ss.load(search).objectives]
    means = frame.groupby("config_id")[metrics].mean().to_numpy().tolist()
    told = sorted(t.values for t in done)
    assert len(told) == CONFIGS
    for values, mean in zip(told, sorted(means), strict=True):
        assert values == pytest.approx(mean, rel=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize(
    "search, mode",
    [("demo", "trials_newer"), ("demo_pareto", "searcher_newer")],
)
def test_resume_after_a_kill_between_two_snapshots(tmp_path, search, mode):
    """demo: Ray's reduction (ReissuingRepeater); demo_pareto: two objectives (SeedMeanRepeater,
    a ReissuingRepeater: its re-issue is the same code). Each direction once, to keep CI's time;
    tests/test_seed_groups.py covers both directions for all three repeaters without a cluster."""
    data, out = tiny_file(tmp_path / "tiny.h5"), tmp_path / "study"
    watch, ids = kill_while_seeds_are_created(search, data, out, tmp_path / "driver.log")
    make_torn_snapshot(watch, ids, mode)
    assert main(["--resume", str(out), *LIGHT_RAY]) == 0
    check_complete_and_paired(search, out)
