"""Paired early stopping (study.halving) on real Ray: the invariants, a killed driver, a lost node.

One module-scoped study runs the demo search with ``scheduler: paired_halving`` (rungs at
epochs 1 and 2 of 3, reduction 3) on the tiny preset, 5 configurations x 2 seeds, on a local
Ray of 2 CPUs. The tests read what it left: the frame, the ledger, Tune's per-trial results and
the Optuna journal, each checked against a rule computed here independently.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml
from test_tune import LIGHT_RAY, ROOT, _journal, tiny_file

from study import halving
from study import search_space as ss
from study import tune as st
from study.errors import UserError
from study.run import main

RUNGS, EPOCHS, K = [1, 2], 3, 2


def halving_space(path: Path, num_samples: int = 5, rungs=RUNGS, reduction=3) -> Path:
    """search_spaces/demo_halving.yaml on the tiny preset, written to ``path``."""
    raw = yaml.safe_load((ROOT / "search_spaces" / "demo_halving.yaml").read_text())
    raw |= {"preset": "tiny", "num_samples": num_samples, "seeds": K}
    raw["scheduler"] = {"kind": "paired_halving", "rungs": rungs, "reduction": reduction}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run_argv(space: Path, data: Path, out: Path) -> list[str]:
    return ["--search", str(space), "--epochs", str(EPOCHS), "--data", str(data), "--out", str(out)]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    return tiny_file(tmp_path_factory.mktemp("data") / "tiny.h5")


@pytest.fixture(scope="module")
def study(tmp_path_factory, data_file) -> Path:
    root = tmp_path_factory.mktemp("halving")
    space, out = halving_space(root / "space.yaml"), root / "study"
    assert main([*run_argv(space, data_file, out), *LIGHT_RAY]) == 0
    return out


def _trial_epochs(study_dir: Path) -> dict[tuple[str, int], list[int]]:
    """(config_id, seed) -> the epochs of every result Tune got from that trial, in order."""
    out = {}
    for lines in (study_dir / "ray" / st.EXPERIMENT).glob("trial_*/result.json"):
        reports = [json.loads(line) for line in lines.read_text().splitlines()]
        out[(reports[0]["config_id"], reports[0]["seed"])] = [r["epoch"] for r in reports]
    return out


# ---- the invariants, on one real study --------------------------------------------------------


def test_seeds_of_every_configuration_end_at_the_same_epoch(study):
    frame = pd.read_parquet(study / "frame.parquet")
    assert len(frame) == 5 * K and not frame.duplicated(["config_id", "seed"]).any()
    for cid, runs in frame.groupby("config_id"):
        assert sorted(runs.seed) == [0, 1], cid
        assert runs.epochs.nunique() == 1 and runs.stopped.nunique() == 1, cid
    # Tune's own record agrees: a trial of a stopped configuration never went past its rung
    # (a result.json restarts when Tune resumes a paused trial in a new actor: a set, not a list)
    epochs = _trial_epochs(study)
    history = pd.read_parquet(study / "history.parquet")
    for row in frame.itertuples():
        assert set(epochs[(row.config_id, row.seed)]) <= set(range(1, row.epochs + 1))
        assert max(epochs[(row.config_id, row.seed)]) == row.epochs
        if not row.stopped:  # a finished run trained every epoch once
            mine = history[(history.config_id == row.config_id) & (history.seed == row.seed)]
            assert mine.epoch.tolist() == list(range(1, EPOCHS + 1))


def test_stopped_configurations_keep_their_rung_results_and_never_count_as_finished(study):
    frame = pd.read_parquet(study / "frame.parquet")
    ledger = json.loads((study / halving.LEDGER).read_text())["configs"]
    stopped = frame[frame.stopped]
    assert len(stopped) >= K, "this study is meant to stop at least one configuration"
    for row in stopped.itertuples():
        assert row.epochs in RUNGS and row.group == "search"
        rung = ledger[row.config_id]["rungs"][str(row.epochs)]
        assert rung["decision"] == "stop"
        assert row.val_cde_loss == rung["rows"][str(row.seed)]["val_cde_loss"]
        assert math.isnan(row.test_cde_loss)  # never evaluated on the test split
        assert not (study / row.run_dir / "metrics.json").exists()
    finished = frame[~frame.stopped]
    assert (finished.epochs == EPOCHS).all() and np.isfinite(finished.test_cde_loss).all()
    # the report's study reader does not count them either
    from analysis.results import load_study

    loaded = load_study(study)
    assert set(loaded.frame.config_id) == set(finished.config_id)
    assert set(loaded.stopped.config_id) == set(stopped.config_id)


def test_reference_points_are_never_stopped(study):
    frame = pd.read_parquet(study / "frame.parquet")
    refs = frame[frame.group.isin(["baseline_aug", "constrained"])]
    assert sorted(refs.group.unique()) == ["baseline_aug", "constrained"] and len(refs) == 2 * K
    assert not refs.stopped.any() and (refs.epochs == EPOCHS).all()


def test_decisions_follow_the_rule_on_seed_means(study):
    """Replay each rung's decisions in the order made: continue iff fewer than ceil(n/3) better."""
    ledger = json.loads((study / halving.LEDGER).read_text())["configs"]
    for rung in RUNGS:
        entries = [(c, e["rungs"][str(rung)]) for c, e in ledger.items() if str(rung) in e["rungs"]]
        entries.sort(key=lambda ce: ce[1]["order"])
        assert [e["order"] for _, e in entries] == list(range(len(entries)))
        for i, (cid, e) in enumerate(entries):
            seeds = e["rows"]
            assert sorted(seeds) == ["0", "1"]  # judged only with both seeds at the rung
            mean = (seeds["0"]["val_cde_loss"] + seeds["1"]["val_cde_loss"]) / 2
            assert e["mean"] == pytest.approx(mean, rel=1e-12)
            if ledger[cid]["label"] != "search":
                assert e["decision"] == "reference"
                continue
            before = [x["mean"] for _, x in entries[:i]]
            n_better = sum(m < mean for m in before)
            allowed = -(-(i + 1) // 3)  # ceil((i + 1) / 3)
            assert e["decision"] == ("continue" if n_better < allowed else "stop"), (cid, rung)
    # a configuration stopped at rung 1 has no later rung
    for e in ledger.values():
        if e["rungs"].get("1", {}).get("decision") == "stop":
            assert list(e["rungs"]) == ["1"]


def test_optuna_sees_rung_values_and_pruned_trials(study):
    frame = pd.read_parquet(study / "frame.parquet")
    ledger = json.loads((study / halving.LEDGER).read_text())["configs"]
    trials = _journal(study).trials
    assert len(trials) == 5
    states = {t.state for t in trials}
    assert states == {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}
    space = ss.load("demo_halving")
    for trial in trials:
        values = ss.values_of(space, trial.params)
        rows = frame[(frame.lr == values["lr"]) & (frame.g_cde == values["g_cde"])]
        cid = rows.config_id.iloc[0]
        rungs = ledger[cid]["rungs"]
        assert trial.intermediate_values == {int(r): e["mean"] for r, e in rungs.items()}
        if rows.stopped.iloc[0]:
            assert trial.state == optuna.trial.TrialState.PRUNED
            last = max(trial.intermediate_values)  # Optuna's value of a pruned trial
            assert trial.value == trial.intermediate_values[last] and last == rows.epochs.iloc[0]
        else:
            assert trial.state == optuna.trial.TrialState.COMPLETE
            assert trial.value == pytest.approx(rows.val_cde_loss.mean(), rel=1e-12)


def test_a_paused_seed_resumes_exactly(study):
    """A continued configuration's seed was paused at each rung (its worker freed, then restored
    from the checkpoint): it equals an uninterrupted run."""
    from study.config import apply_overrides, load_yaml
    from study.train import train

    frame = pd.read_parquet(study / "frame.parquet")
    row = frame[(frame.group == "search") & ~frame.stopped].iloc[0]
    run_dir = study / row.run_dir
    cfg = apply_overrides(load_yaml(run_dir / "config.yaml"), {"run.threads": 1})
    fresh = train(cfg, study.parent / "uninterrupted")
    assert fresh.metrics["val"] == json.loads((run_dir / "metrics.json").read_text())["val"]


def test_trial_epochs_and_summary(study):
    frame = pd.read_parquet(study / "frame.parquet")
    ran, unpruned = halving.trial_epochs(frame)
    assert unpruned == 5 * K * EPOCHS
    assert ran == int(frame.epochs.sum()) < unpruned
    space = ss.parse(yaml.safe_load((study / "search_space.yaml").read_text()))
    assert space.scheduler == halving.Halving((1, 2), 3.0)
    text = st.summary(frame, space)
    assert f"{ran} trial-epochs run of {unpruned} unpruned" in text.splitlines()[0]
    stopped = set(frame.config_id[frame.stopped])
    assert not any(cid in line for cid in stopped for line in text.splitlines()[1:])


# ---- pure parts ---------------------------------------------------------------------------


def test_keeps_against_hand_counts():
    assert halving.keeps(1.0, [], 3, "min")  # the first judged always continues
    assert not halving.keeps(1.0, [0.5, 2.0], 3, "min")  # n=3: only the best continues
    assert halving.keeps(1.0, [0.5, 2.0, 3.0], 3, "min")  # n=4: ceil(4/3)=2, one better
    assert not halving.keeps(1.0, [0.5, 0.7, 3.0], 3, "min")
    assert halving.keeps(1.0, [0.5, 0.7, 3.0], 3, "max")  # only 3.0 is better when maximising
    assert halving.keeps(1.0, [1.0, 1.0], 3, "min")  # ties are not better
    assert not halving.keeps(float("nan"), [], 3, "min")


def test_trial_epochs_of_a_frame():
    frame = pd.DataFrame({"epochs": [20, 20, 2, 2, 6, 6], "stopped": [0, 0, 1, 1, 1, 1]})
    frame["stopped"] = frame.stopped.astype(bool)
    assert halving.trial_epochs(frame) == (56, 120)
    assert halving.trial_epochs(pd.DataFrame({"epochs": [5, 5]})) == (10, 10)


def test_ledger_round_trip_and_waiting(tmp_path):
    led = halving.Ledger.load(tmp_path)
    led.record("a", "search", 0, 2, {"val_cde_loss": 1.0})
    led.record("a", "search", 0, 2, {"val_cde_loss": 9.0})  # a retry's repeat: the first counts
    assert led.waiting_rung("a", 0) == 2 and led.waiting_rung("a", 1) is None
    led.record("a", "search", 1, 2, {"val_cde_loss": 3.0})
    led.decide("a", 2, 2.0, halving.STOP)
    led.save()
    again = halving.Ledger.load(tmp_path)
    assert again.stopped_at("a") == 2 and again.waiting_rung("a", 0) is None
    assert again.intermediate("a") == [(2, 2.0)] and again.judged(2) == [2.0]
    assert [(c, s, r) for c, s, r, _ in again.stopped_rows()] == [("a", 0, 2), ("a", 1, 2)]
    assert again.rows("a", 2)[0] == {"val_cde_loss": 1.0}


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"kind": "asha", "rungs": [2]}, "scheduler.kind: unknown 'asha'; use paired_halving"),
        ({"kind": "paired_halving", "rungs": [6, 2]}, "scheduler.rungs: [6, 2]: a non-empty"),
        ({"kind": "paired_halving", "rungs": []}, "scheduler.rungs: []: a non-empty"),
        ({"kind": "paired_halving", "rungs": [2], "reduction": 1}, "scheduler.reduction: 1"),
        ({"kind": "paired_halving", "rungs": [2], "eta": 3}, "scheduler.eta: unknown key"),
    ],
)
def test_scheduler_block_errors_are_one_line(block, message):
    raw = yaml.safe_load((ROOT / "search_spaces" / "demo_halving.yaml").read_text())
    with pytest.raises(UserError) as err:
        ss.parse({**raw, "scheduler": block}, "x.yaml")
    assert str(err.value).startswith(f"x.yaml: {message}") and "\n" not in str(err.value)


def test_scheduler_takes_one_objective():
    """Paired halving ranks configurations on one seed mean: several objectives are refused."""
    raw = yaml.safe_load((ROOT / "search_spaces" / "demo_halving.yaml").read_text())
    raw.pop("objective", None)
    two = [{"metric": "val_sigma_nmad", "mode": "min"}, {"metric": "val_cde_loss", "mode": "min"}]
    with pytest.raises(UserError) as err:
        ss.parse({**raw, "objectives": two}, "x.yaml")
    assert (
        str(err.value)
        == "x.yaml: scheduler: paired_halving judges one objective; use objective: (one)"
    )


def test_off_by_default_and_rungs_must_fit_the_epochs(tmp_path, data_file, capsys):
    for name in ("gamma", "demo", "ablation"):
        space = ss.load(name)
        assert space.scheduler is None and "scheduler" not in space.to_dict()
    space = halving_space(tmp_path / "s.yaml", rungs=[1, 3])
    argv = ["--search", str(space), "--epochs", "3", "--data", str(data_file)]
    assert main([*argv, "--out", str(tmp_path / "out"), *LIGHT_RAY]) == 2
    err = capsys.readouterr().err
    assert "scheduler.rungs: [1, 3] must end below the 3 epochs" in err
    assert not (tmp_path / "out").exists()


# ---- a killed driver, between two rungs ---------------------------------------------------


def _decided(study_dir: Path) -> dict:
    path = study_dir / halving.LEDGER  # written by rename: never read half-written
    configs = json.loads(path.read_text())["configs"] if path.is_file() else {}
    return {
        (cid, r): (e["decision"], e["order"], e["mean"])
        for cid, c in configs.items()
        for r, e in c["rungs"].items()
        if "decision" in e
    }


@pytest.mark.slow
def test_killed_driver_resumes_with_the_same_decisions(tmp_path, data_file):
    """SIGKILL the driver and its Ray once a sampled configuration was judged at rung 1 and none
    at rung 2, then --resume: the decisions made stay, the rest follow, all paired."""
    space, out = halving_space(tmp_path / "space.yaml"), tmp_path / "study"
    cmd = [sys.executable, "-m", "study.run", *run_argv(space, data_file, out), *LIGHT_RAY]
    log = (tmp_path / "driver.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True, cwd=ROOT)
    try:
        deadline = time.time() + 600
        while time.time() < deadline:
            assert proc.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
            decided = _decided(out)
            labels = json.loads((out / halving.LEDGER).read_text())["configs"] if decided else {}
            search_r1 = [c for c, r in decided if r == "1" and labels[c]["label"] == "search"]
            if search_r1:
                break
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = _decided(out)
    assert any(r == "1" for _, r in before), "no configuration was judged before the kill"
    assert not any(r == "2" and labels[c]["label"] == "search" for c, r in before), (
        "killed too late: a sampled configuration was already judged at rung 2"
    )
    assert main(["--resume", str(out), *LIGHT_RAY]) == 0
    after = _decided(out)
    assert {k: after[k] for k in before} == before  # the same decisions, in the same order
    frame = pd.read_parquet(out / "frame.parquet")
    assert len(frame) == 5 * K and not frame.duplicated(["config_id", "seed"]).any()
    for _, runs in frame.groupby("config_id"):
        assert sorted(runs.seed) == [0, 1] and runs.epochs.nunique() == 1
    for (cid, rung), (decision, _, _) in after.items():
        runs = frame[frame.config_id == cid]
        if decision == "stop":
            assert runs.stopped.all() and (runs.epochs == int(rung)).all()
    assert not frame[frame.group != "search"].stopped.any()
    journal = _journal(out)
    assert not journal.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    done = journal.get_trials(
        states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    )
    assert len(done) == 5  # (a trial asked just before the kill may be left as FAIL)
    n_pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in done)
    assert n_pruned == frame[frame.stopped].config_id.nunique()


def test_report_states_the_saving_and_shows_no_stopped_configuration(study):
    from analysis import report

    args = [str(study), "--no-png", "--no-landscape", "--no-augment", "--peers", "none"]
    assert report.main(args) == 0
    frame = pd.read_parquet(study / "frame.parquet")
    ran, n_stopped = int(frame.epochs.sum()), frame[frame.stopped].config_id.nunique()
    line = (
        f"Paired early stopping: {ran} trial-epochs run of the {5 * K * EPOCHS} an unpruned "
        f"study would run ({ran / (5 * K * EPOCHS):.0%}); {n_stopped} of 5 configurations stopped"
    )
    assert line in (study / "report" / "report.html").read_text()
    assert json.loads((study / "report" / "report.json").read_text())["halving"].startswith(line)
    table1 = (study / "report" / "table1.md").read_text()
    for cid in frame.config_id[frame.stopped]:
        assert cid not in table1
    # the kept sampled configurations are there: by id when several, as the one "search" row when
    # one is left (Table 1 names a group's configuration only when it has several); which ones
    # the asynchronous rule stops depends on the order the seed means arrive in
    kept = frame.config_id[(frame.group == "search") & ~frame.stopped].unique()
    if len(kept) == 1:
        assert "| **search** |" in table1
    elif len(kept) > 1:
        assert any(cid in table1 for cid in kept)
