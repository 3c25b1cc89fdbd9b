"""A real two-node Ray cluster on this machine (``ray.cluster_utils.Cluster``: a head and a worker
raylet of one CPU each) whose worker node is removed without grace while it runs a trial.

The study (tiny preset, in-process driver joined with ``--address``) must finish by itself, its
lost trial retried on the head from its checkpoint, every configuration's seeds paired: the
unpruned demo search, and the same search with paired early stopping.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import psutil
import pytest
from test_halving import K, halving_space
from test_tune import _journal, tiny_file

from study import halving
from study import tune as st
from study.run import main

KILL_TIMEOUT_S = 600
# epochs per trial: more than test_halving's 3, so that a trial that continues past the rung
# (epoch 1) trains three epochs (2-4) where it can be killed. With 3 there was one, under a
# second on the tiny preset: 2 of 35 runs failed, one of them because the killer never saw a
# worker-node trial there (one actor ran 7 of the 8 trials, the other ran one, whose epoch 2
# went by between two looks); the other failure's log was lost
EPOCHS = 5


def _on_node(pid: int, node: Any) -> bool:
    """Whether ``pid`` is a worker process of ``node`` (a descendant of its raylet)."""
    raylet = psutil.Process(node.all_processes["raylet"][0].process.pid)
    return any(p.pid == pid for p in raylet.children(recursive=True))


def _last_results(study_dir: Path):
    """Each trial folder with its last report, from Tune's per-trial ``result.json`` (written by
    the driver as each result arrives, unlike the experiment snapshot, which lags by seconds and
    may be written only once or twice in a study this short)."""
    for results in (study_dir / "ray" / st.EXPERIMENT).glob("trial_*/result.json"):
        lines = results.read_text().splitlines()
        try:
            last = json.loads(lines[-1]) if lines else {}
        except json.JSONDecodeError:  # a line being written: read it on the next poll
            continue
        if "pid" in last:
            yield results.parent, last


def _running_on(node: Any, study_dir: Path, rungs: list[int]) -> dict | None:
    """The last report of a trial training on ``node``: its worker is a child of the node's
    raylet, a checkpoint of it is in storage (each epoch reports one, uploaded before the report),
    and its last epoch is neither the last one nor a rung (where a paired-halving trial may be
    paused, its actor idle)."""
    for trial_dir, last in _last_results(study_dir):
        if not 1 <= last.get("epoch", 0) < EPOCHS or last["epoch"] in rungs:
            continue
        run = study_dir / "runs" / st.run_name(last["config_id"], last["seed"])
        if (run / "metrics.json").exists() or not any(trial_dir.glob("checkpoint_*")):
            continue
        if psutil.pid_exists(int(last["pid"])) and _on_node(int(last["pid"]), node):
            return {**last, "run": run.name}
    return None


def _mid_trial(study_dir: Path, pid: int, rungs: list[int]) -> bool:
    """Whether the (frozen) worker ``pid`` is inside a trial: the last report of some trial came
    from it, and that run is neither finished nor waiting at a rung. A reused actor leaves a trial
    unfinished only when paused at a rung, so such a trial is the one it is training."""
    for _, last in _last_results(study_dir):
        if last["pid"] != pid or last.get("epoch") in rungs or last.get("epoch", 0) >= EPOCHS:
            continue
        run = study_dir / "runs" / st.run_name(last["config_id"], last["seed"])
        if not (run / "metrics.json").exists():
            return True
    return False


def remove_node_under_a_trial(
    cluster: Any, node: Any, study_dir: Path, rungs: list[int], record: dict, stop: threading.Event
) -> None:
    """Remove ``node`` without grace (its raylet and workers are killed) under a training trial."""
    deadline = time.monotonic() + KILL_TIMEOUT_S
    try:
        while not stop.wait(0.2) and time.monotonic() < deadline:
            last = _running_on(node, study_dir, rungs)
            if last is None:
                continue
            worker = psutil.Process(int(last["pid"]))
            # Tune's snapshot lags: frozen, the worker can no longer finish its trial between the
            # check and the removal (on loaded cores it did, and nothing failed)
            worker.send_signal(signal.SIGSTOP)
            if not _mid_trial(study_dir, worker.pid, rungs):
                worker.send_signal(signal.SIGCONT)
                continue
            cluster.remove_node(node, allow_graceful=False)
            if worker.is_running():  # a frozen process may miss its raylet's death
                worker.kill()
            record.update(trial_id=last["trial_id"], epoch=last["epoch"], run=last["run"])
            return
        record["error"] = "no trial trained on the worker node past a checkpoint"
    except Exception as exc:  # reported by the test
        record["error"] = f"{type(exc).__name__}: {exc}"


@pytest.fixture
def cluster():
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    worker = c.add_node(num_cpus=1)
    c.wait_for_nodes()
    yield c, worker
    c.shutdown()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["unpruned", "paired_halving"])
def test_study_survives_losing_a_node(tmp_path, cluster, mode):
    c, worker = cluster
    data = tiny_file(tmp_path / "tiny.h5")
    out = tmp_path / "study"
    if mode == "unpruned":
        argv, n_configs, rungs = (
            ["--search", "demo", "--preset", "tiny", "--num-samples", "3"],
            3,
            [],
        )
    else:
        rungs = [1]
        argv, n_configs = ["--search", str(halving_space(tmp_path / "h.yaml", 4, rungs))], 4
    argv += ["--seeds", str(K), "--epochs", str(EPOCHS), "--data", str(data), "--out", str(out)]
    record: dict = {}
    stop = threading.Event()
    killer = threading.Thread(
        target=remove_node_under_a_trial, args=(c, worker, out, rungs, record, stop)
    )
    killer.start()
    try:
        rc = main([*argv, "--address", c.address])
    finally:
        stop.set()
        killer.join(timeout=120)
    assert "error" not in record and "trial_id" in record, record
    assert rc == 0
    # one trial (the one the node's worker ran when it went: with reused actors, maybe not the
    # one the snapshot named) failed once and was retried from its checkpoint on the head
    errors = list((out / "ray" / st.EXPERIMENT).glob("trial_*/error.txt"))
    assert len(errors) == 1, errors
    frame = pd.read_parquet(out / "frame.parquet")
    assert frame.config_id.nunique() == n_configs and len(frame) == n_configs * K
    for _, runs in frame.groupby("config_id"):
        assert sorted(runs.seed) == list(range(K)) and runs.epochs.nunique() == 1
    path = errors[0].parent / "result.json"
    results = path.read_text().splitlines() if path.is_file() else []
    first = json.loads(results[0]) if results else {}  # none: it died before its first epoch
    lost = frame[(frame.config_id == first.get("config_id")) & (frame.seed == first.get("seed"))]
    if len(lost) and not lost.iloc[0].get("stopped", False):
        lost = lost.iloc[0]
        history = pd.read_parquet(out / lost.run_dir / "history.parquet")
        assert history.epoch.tolist() == list(range(1, EPOCHS + 1))
    states = [t.state for t in _journal(out).trials]
    if mode == "unpruned":
        assert "stopped" not in frame and (frame.epochs == EPOCHS).all()
        assert states == [optuna.trial.TrialState.COMPLETE] * n_configs
    else:
        assert (out / halving.LEDGER).is_file()
        assert not frame[frame.group != "search"].stopped.any()
        assert (frame[frame.stopped].epochs == 1).all()
        assert (frame[~frame.stopped].epochs == EPOCHS).all()
        pruned = states.count(optuna.trial.TrialState.PRUNED)
        assert pruned == frame[frame.stopped].config_id.nunique()
        assert pruned + states.count(optuna.trial.TrialState.COMPLETE) == n_configs
