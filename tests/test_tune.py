"""A real study on a local Ray (2 CPUs, tiny preset): paired seeds, Optuna seed means, retry, resume.

One module-scoped study runs ``python -m study.run --search demo --preset tiny`` in-process with
three configurations (the two reference points and one TPE sample) on seeds 0 and 1; the
worker process of one trial is killed (SIGKILL) once Tune holds a checkpoint of it (frozen at
its first report, so usually after epoch 1 of 2),
so Tune must retry it from there. The tests below read what the study left behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import psutil
import pytest
import yaml
from _spec import SPEC3_METRICS

from study import search_space as ss
from study import tune as st
from study.data.dataset import draw_split, write_dataset
from study.run import main

ROOT = Path(__file__).resolve().parents[1]
SPEC3 = list(SPEC3_METRICS)
COLUMNS = [
    "config_id",
    "seed",
    "group",
    "g_flux",
    "g_inv",
    "g_cde",
    "lr",
    *[f"val_{m}" for m in SPEC3],
    *[f"test_{m}" for m in SPEC3],
    "epochs",
    "train_seconds",
    "device",
    "run_dir",
]
LIGHT_RAY = ["--num-cpus", "2", "--no-dashboard"]
EDGES = np.linspace(0.0, 0.4, 181)

# the reference points' learning rate in search_spaces/demo.yaml (the demo preset's)
DEMO_REF_LR = ss.load("demo").reference_points[0]["lr"]


def tiny_file(path: Path, n: int = 160) -> Path:
    """A small photoz-study/1 file: a blob whose colours encode z, and a flux table (1 at nu=1)."""
    rng = np.random.default_rng(0)
    zs = rng.uniform(0.01, 0.39, n)
    yy, xx = np.mgrid[:64, :64] - 31.5
    blob = np.exp(-(xx**2 + yy**2) / 18.0)  # (64, 64)
    colour = np.exp(np.arange(-2, 3)[None, :] * 6.0 * zs[:, None])  # (N, 5)
    images = 4.0 * colour[:, :, None, None] * blob + 0.05 * rng.standard_normal((n, 5, 64, 64))
    nu = (1 + 0.5 * (EDGES[:-1] + EDGES[1:]))[None, :] / (1 + zs)[:, None]  # (N, C)
    table = nu[:, None, :] ** np.arange(1.0, 6.0)[None, :, None]  # (N, 5, C)
    return write_dataset(
        path,
        images=images.astype(np.float32),
        zs=zs,
        ebv=rng.uniform(0.0, 0.1, n).astype(np.float32),
        flux=np.full((n, 5), np.nan, np.float32),
        split=draw_split(n, data_seed=0),
        ids=np.arange(n, dtype=np.int64),
        bin_edges=EDGES,
        source="synthetic",
        data_seed=0,
        flux_table=table.astype(np.float32),
    )


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    return tiny_file(tmp_path_factory.mktemp("data") / "tiny.h5")


KILL_TRIAL = ("constrained", 1)  # (group, seed) of the trial whose worker is killed
KILL_TIMEOUT_S = 600  # the study takes under a minute on 2 cores


def _first_report(experiment: Path, group: str, seed: int) -> dict | None:
    """The first epoch report of (group, seed) in Tune's per-trial ``result.json``, or None.

    Tune's JSON logger writes and flushes each result as the driver receives it, well before the
    next experiment snapshot, so polling these files finds the worker within its second epoch.
    """
    for results in experiment.glob("trial_*/result.json"):
        for line in results.read_text().splitlines():
            try:
                report = json.loads(line)
            except json.JSONDecodeError:  # a line being written: read it on the next poll
                break
            if (report.get("group"), report.get("seed")) == (group, seed) and "epoch" in report:
                return {**report, "trial_dir": results.parent.name}
    return None


def _reports_of(experiment: Path, trial_dir: str, pid: int) -> list[int]:
    """Epochs the driver has received from worker ``pid`` for the trial in ``trial_dir``."""
    lines = (experiment / trial_dir / "result.json").read_text().splitlines()
    reports = [json.loads(line) for line in lines if line.strip()]
    return [r["epoch"] for r in reports if r["pid"] == pid]


def _snapshot_epoch(experiment: Path, trial_id: str, seen: list[str]) -> int | None:
    """The last epoch of ``trial_id`` in the driver's experiment snapshot, if it has a checkpoint.

    The snapshot is what a retry restores from: the driver saves it after registering a trial's
    checkpoint (``CheckpointConfig(num_to_keep=1)`` forces that save for every checkpoint).
    """
    from ray.tune import ExperimentAnalysis

    try:
        trials = ExperimentAnalysis(str(experiment)).trials
    except Exception as exc:  # a snapshot being copied into place: read it on the next poll
        seen[:] = [f"last snapshot read failed: {type(exc).__name__}: {exc}"]
        return None
    seen[:] = [f"{len(trials)} trials in the last snapshot"]
    for trial in trials:
        if trial.trial_id == trial_id and trial.checkpoint is not None:
            return (trial.last_result or {}).get("epoch")
    return None


def _ray_worker(pid: int) -> psutil.Process:
    """``pid`` as a live Ray worker started by this (driver) process, or an AssertionError."""
    try:
        proc = psutil.Process(pid)
        title = " ".join(proc.cmdline())
        ours = any(p.pid == os.getpid() for p in proc.parents())
    except psutil.NoSuchProcess as exc:
        raise AssertionError(f"Tune's worker pid {pid} is gone before the kill") from exc
    assert title.startswith("ray::") and ours, f"pid {pid} is not our Ray worker: {title!r}"
    return proc


def kill_worker_after_first_checkpoint(
    study_dir: Path, record: Path, stop: threading.Event, errors: list[str]
) -> None:
    """SIGKILL the worker of KILL_TRIAL once Tune holds a checkpoint of it; note it in ``record``.

    Runs in a thread beside the in-process driver. The worker's pid is the one Tune's own
    results carry (``pid``, auto-filled on every report). The worker is frozen (SIGSTOP) as soon
    as its first report reaches the driver, and killed only once the driver's snapshot has caught
    up with every report it sent, so that ``record`` holds the epoch a retry must resume after.
    On a loaded machine the worker may have sent its second epoch before the freeze; the test
    reads that epoch from ``record`` rather than assuming it. The poll interval is no deadline.
    """
    group, seed = KILL_TRIAL
    experiment, seen = study_dir / "ray" / st.EXPERIMENT, ["no snapshot yet"]
    deadline = time.monotonic() + KILL_TIMEOUT_S

    def wait(what: str) -> None:
        if stop.wait(0.05) or time.monotonic() > deadline:
            raise AssertionError(f"{what} of trial {group}:{seed} in {experiment}; {seen[0]}")

    try:
        while (first := _first_report(experiment, group, seed)) is None:
            wait("no report")
        proc = _ray_worker(int(first["pid"]))
        proc.send_signal(signal.SIGSTOP)  # frozen: no further report, and what is checked holds
        try:
            trial_id = first["trial_id"]
            # the driver catches up with what the frozen worker sent: its result.json and snapshot
            epochs = _reports_of(experiment, first["trial_dir"], proc.pid)
            while _snapshot_epoch(experiment, trial_id, seen) != epochs[-1]:
                wait(f"no snapshot with epoch {epochs[-1]}'s checkpoint")
                epochs = _reports_of(experiment, first["trial_dir"], proc.pid)
            run_dir = study_dir / "runs" / st.run_name(first["config_id"], seed)
            assert (run_dir / "checkpoint" / "state.pt").is_file(), f"{run_dir}: no checkpoint"
            assert not (run_dir / "metrics.json").is_file(), f"{run_dir} finished before the kill"
        except BaseException:
            proc.send_signal(signal.SIGCONT)  # let the study end; the fixture reports the error
            raise
        proc.kill()  # SIGKILL
        info = {"pid": proc.pid, "trial_id": trial_id, "epoch": epochs[-1], "epochs": epochs}
        record.write_text(json.dumps({**info, "run_dir": str(run_dir.relative_to(study_dir))}))
    except Exception as exc:  # reported by the fixture, which owns the test's failure
        errors.append(f"{type(exc).__name__}: {exc}")


@pytest.fixture(scope="module")
def study(tmp_path_factory, data_file) -> Path:
    out = tmp_path_factory.mktemp("studies") / "demo"
    record, stop, errors = out.parent / "killed.json", threading.Event(), []
    killer = threading.Thread(
        target=kill_worker_after_first_checkpoint, args=(out, record, stop, errors), daemon=True
    )
    killer.start()
    try:
        argv = ["--search", "demo", "--preset", "tiny", "--num-samples", "3"]
        rc = main([*argv, "--data", str(data_file), "--out", str(out), *LIGHT_RAY])
    finally:
        stop.set()
        killer.join(timeout=60)
    assert not errors and record.is_file(), f"the worker kill did not happen: {errors}"
    assert rc == 0
    return out


def _journal(study_dir: Path) -> optuna.Study:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(study_dir / st.JOURNAL)))
    return optuna.load_study(study_name=st.OPTUNA_STUDY, storage=storage)


def test_frame_has_one_row_per_configuration_and_seed(study):
    frame = pd.read_parquet(study / "frame.parquet")
    assert list(frame.columns) == COLUMNS
    assert len(frame) == 6 and not frame.duplicated(["config_id", "seed"]).any()
    seeds = frame.groupby("config_id")["seed"].apply(lambda s: sorted(s))
    assert len(seeds) == 3 and all(s == [0, 1] for s in seeds)  # the same seeds everywhere
    assert (frame.epochs == 2).all() and np.isfinite(frame.test_cde_loss).all()
    for row in frame.itertuples():
        assert row.run_dir == f"runs/{row.config_id}-s{row.seed}"
        metrics = json.loads((study / row.run_dir / "metrics.json").read_text())
        assert row.val_cde_loss == metrics["val"]["cde_loss"]  # the frame is the run dirs'
        cfg = yaml.safe_load((study / row.run_dir / "config.yaml").read_text())
        assert cfg["run"]["seed"] == row.seed and cfg["loss"]["g_cde"] == row.g_cde


def test_reference_points_are_there(study):
    frame = pd.read_parquet(study / "frame.parquet")
    by_group = frame.groupby("group")
    assert sorted(by_group.groups) == ["baseline_aug", "constrained", "search"]
    base = frame[frame.group == "baseline_aug"]
    assert (base[["g_flux", "g_inv", "g_cde"]] == 0).all().all() and (base.lr == DEMO_REF_LR).all()
    con = frame[frame.group == "constrained"]
    assert (con[["g_flux", "g_inv", "g_cde"]] == 0.1).all().all() and (con.lr == DEMO_REF_LR).all()


def test_optuna_storage_holds_the_seed_means(study):
    frame = pd.read_parquet(study / "frame.parquet")
    trials = _journal(study).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3
    means = frame.groupby("config_id").val_cde_loss.mean()
    for trial in trials:
        values = ss.values_of(ss.load("demo"), trial.params)
        rows = frame[(frame.lr == values["lr"]) & (frame.g_cde == values["g_cde"])]
        assert len(rows) == 2
        assert trial.value == pytest.approx(means[rows.config_id.iloc[0]], rel=1e-12)
    # reference points first, in the file's order
    assert trials[0].params == {
        "use_g_flux": False,
        "use_g_inv": False,
        "use_g_cde": False,
        "lr": DEMO_REF_LR,
    }
    assert trials[1].params["g_flux"] == 0.1


def test_failed_trial_was_retried_from_its_checkpoint(study):
    """The trial whose worker was killed after epoch k resumed at k + 1 and equals an uninterrupted run."""
    from study.config import apply_overrides, load_yaml
    from study.train import train

    frame = pd.read_parquet(study / "frame.parquet")
    row = frame[(frame.group == "constrained") & (frame.seed == 1)].iloc[0]
    killed = json.loads((study.parent / "killed.json").read_text())
    epochs, k = int(row.epochs), killed["epoch"]
    assert killed["run_dir"] == row.run_dir
    # killed mid-training: after its first checkpoint (usually epoch 1 of 2), before its final report
    assert 1 <= k <= epochs and killed["epochs"] == list(range(1, k + 1))
    assert len(list((study / "ray" / st.EXPERIMENT).glob("*/error.txt"))) == 1
    # Tune's results of that trial, both attempts: epochs 1..k once (the retry did not start
    # over), from the killed worker; then epochs k+1.. and the final report from a new one
    lines = study / "ray" / st.EXPERIMENT / f"trial_{killed['trial_id']}" / "result.json"
    reports = [json.loads(line) for line in lines.read_text().splitlines()]
    expected = [(e, e <= k) for e in range(1, epochs + 1)] + [(epochs, False)]
    assert [(r["epoch"], r["pid"] == killed["pid"]) for r in reports] == expected
    run_dir = study / row.run_dir
    history = pd.read_parquet(run_dir / "history.parquet")
    assert history.epoch.tolist() == [1, 2]
    # one thread, as in the 1-CPU Ray trial (float sums depend on the thread count)
    cfg = apply_overrides(load_yaml(run_dir / "config.yaml"), {"run.threads": 1})
    fresh = train(cfg, study.parent / "uninterrupted")
    assert fresh.metrics["val"] == json.loads((run_dir / "metrics.json").read_text())["val"]


def test_history_provenance_and_dashboards(study):
    history = pd.read_parquet(study / "history.parquet")
    assert {"config_id", "seed", "epoch", "val_cde_loss"} <= set(history.columns)
    assert len(history) == 6 * 2 and not history.duplicated(["config_id", "seed", "epoch"]).any()
    prov = json.loads((study / "provenance.json").read_text())
    assert prov["dataset"]["content_hash"] and prov["packages"]["ray"] and prov["devices"]
    assert prov["search_space"]["seeds"] == [0, 1] and prov["search_space"]["preset"] == "tiny"
    resolved = ss.parse(yaml.safe_load((study / "search_space.yaml").read_text()))
    assert resolved.num_samples == 3 and resolved.seeds == [0, 1]
    # `optuna-dashboard STUDY_DIR/optuna.journal` recognises the file as a journal storage
    get_storage = pytest.importorskip("optuna_dashboard._storage_url").get_storage

    storage = get_storage(str(study / st.JOURNAL))
    assert len(storage.get_all_studies()) == 1


def test_config_id_is_deterministic():
    a = st.config_id("baseline_aug", {"loss.g_flux": 0.1, "optim.lr": 1e-3})
    b = st.config_id("baseline_aug", {"optim.lr": 1e-3, "loss.g_flux": 0.1})
    assert a == b and len(a) == 8
    assert st.config_id("baseline_aug", {"loss.g_flux": 0.2, "optim.lr": 1e-3}) != a
    assert st.config_id("baseline", {"loss.g_flux": 0.1, "optim.lr": 1e-3}) != a


@pytest.mark.slow
def test_killed_driver_resumes_without_duplicates(tmp_path, data_file):
    """Kill the driver (and its Ray) after the first finished trial, then --resume."""
    out = tmp_path / "study"
    argv = ["--search", "demo", "--preset", "tiny", "--seeds", "1", "--num-samples", "3"]
    argv += ["--epochs", "1"]
    cmd = [sys.executable, "-m", "study.run", *argv, "--data", str(data_file), "--out", str(out)]
    log = (tmp_path / "driver.log").open("w")
    # its own process group, so that the driver and the Ray it started are killed together
    proc = subprocess.Popen(
        [*cmd, *LIGHT_RAY], stdout=log, stderr=log, start_new_session=True, cwd=ROOT
    )
    try:
        deadline = time.time() + 240
        while not list(out.glob("runs/*/metrics.json")) and time.time() < deadline:
            assert proc.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finished = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/metrics.json")}
    assert 1 <= len(finished) < 3
    assert main(["--resume", str(out), *LIGHT_RAY]) == 0
    frame = pd.read_parquet(out / "frame.parquet")
    assert len(frame) == 3 and not frame.duplicated(["config_id", "seed"]).any()
    assert sorted(frame.group)[:2] == ["baseline_aug", "constrained"]
    assert all(p.stat().st_mtime_ns == t for p, t in finished.items())  # not rerun
    trials = _journal(out).get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(trials) == 3  # (a trial asked just before the kill may be left as FAIL)
    assert not _journal(out).get_trials(states=(optuna.trial.TrialState.RUNNING,))
    assert sorted(t.value for t in trials) == pytest.approx(sorted(frame.val_cde_loss), rel=1e-12)


def _constants(space: ss.SearchSpace, tmp_path: Path, data: Path) -> dict:
    study = {"study_dir": str(tmp_path), "space": space.to_dict(), "space_path": space.path}
    study |= {"preset": "tiny", "epochs": 3, "data_path": str(data), "data_default": False}
    return {"study": study}


def test_trial_plan_turns_trial_configs_into_run_configs(tmp_path, data_file):
    """What each trial trains, without Ray: the grid's group x seed and Optuna's samples."""
    ablation = ss.load("ablation").with_overrides(seeds=2)
    plan = st.trial_plan(
        {**_constants(ablation, tmp_path, data_file), "group": "inv_only", "seed": 1}
    )
    cfg = plan["config"]
    assert (plan["label"], plan["seed"], cfg.group, cfg.run.seed) == ("inv_only", 1, "inv_only", 1)
    assert (cfg.loss.g_inv, cfg.loss.g_flux, cfg.loss.augment, cfg.optim.epochs) == (
        0.1,
        0.0,
        True,
        3,
    )
    assert cfg.data.path == str(data_file) and not cfg.run.progress
    assert plan["run_dir"] == tmp_path / "runs" / f"{plan['config_id']}-s1"

    demo = ss.load("demo")
    sampled = {
        "use_g_flux": False,
        "use_g_inv": True,
        "g_inv": 0.02,
        "use_g_cde": False,
        "lr": 2e-4,
    }
    sampled |= {"g_flux": 0.0, "g_cde": 0.0, "__trial_index__": 1}  # what OptunaSearch hands over
    plan = st.trial_plan({**_constants(demo, tmp_path, data_file), **sampled})
    cfg = plan["config"]
    assert (plan["label"], plan["seed"], cfg.group) == ("search", demo.seeds[1], "custom")
    assert (cfg.loss.g_flux, cfg.loss.g_inv, cfg.loss.g_cde, cfg.optim.lr) == (0.0, 0.02, 0.0, 2e-4)
    assert cfg.loss.augment and cfg.loss.g_l2 == 1e-6  # base group baseline_aug, fixed g_l2
    reference = {"use_g_flux": True, "g_flux": 0.1, "use_g_inv": True, "g_inv": 0.1}
    reference |= {"use_g_cde": True, "g_cde": 0.1, "lr": DEMO_REF_LR, "__trial_index__": 0}
    plan = st.trial_plan({**_constants(demo, tmp_path, data_file), **reference})
    assert (plan["label"], plan["config"].group, plan["seed"]) == ("constrained", "constrained", 0)


def test_paper_preset_refuses_to_start_without_cuda(tmp_path, capsys):
    import ray
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["--search", "demo", "--preset", "paper", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --preset paper needs CUDA") and "--preset demo" in err
    assert not ray.is_initialized() and not (tmp_path / "s").exists()
