"""Ray Tune's side of paired halving: the scheduler and the Repeater (see ``study.halving``).

``study.tune`` imports this module only for a search space with ``scheduler: paired_halving``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from optuna.exceptions import UpdateFinishedTrialError
from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from study.halving import CONTINUE, REFERENCE, STOP, Halving, Ledger, keeps
from study.seed_groups import ReissuingRepeater


def _identity(trial_config: dict[str, Any]) -> tuple[str, int, str]:
    from study.tune import trial_key

    return trial_key(trial_config)


class PairedHalvingScheduler(FIFOScheduler):
    """PAUSE each seed at a rung until its K-1 siblings are there; then judge the seed mean once.

    The decision (continue, or STOP all K seeds) and every rung row are in the study's ledger
    before Tune is told, so a restored study replays them.
    """

    _supports_buffered_results = False  # one result per train() call: never run past a rung

    def __init__(self, study_dir: str, halving: Halving, metric: str, mode: str, seeds: int):
        super().__init__()
        self.study_dir, self.halving = study_dir, halving
        self._metric, self.mode, self.k = metric, mode, seeds
        self._ledger: Ledger | None = None
        self._keys: dict[str, tuple[str, int, str]] = {}

    @property
    def ledger(self) -> Ledger:
        """The study's ledger, read from disk on first use (a new or a restored scheduler)."""
        if self._ledger is None:
            self._ledger = Ledger.load(self.study_dir)
        return self._ledger

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_ledger": None, "_keys": {}}  # the file is the truth

    def key(self, trial: Any) -> tuple[str, int, str]:
        """(config_id, seed, label) of a trial, from its config."""
        if trial.trial_id not in self._keys:
            self._keys[trial.trial_id] = _identity(trial.config)
        return self._keys[trial.trial_id]

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return True  # metric and mode are the search space's

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        # Tune requeues a restored PAUSED trial as PENDING; one waiting at a rung, or of a
        # configuration already stopped, must not start: hold it PAUSED (add_trial files the
        # trial under its status after this hook)
        cid, seed, label = self.key(trial)
        if trial.status != Trial.PENDING or label != "search":  # a reference point never waits
            return
        waiting = self.ledger.waiting_rung(cid, seed) is not None
        if waiting or self.ledger.stopped_at(cid) is not None:
            trial.set_status(Trial.PAUSED)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        epoch = result.get("epoch")
        if epoch not in self.halving.rungs or self.metric not in result:
            return TrialScheduler.CONTINUE  # not a rung (the final report's epoch is none)
        cid, seed, label = self.key(trial)
        ledger = self.ledger
        row = {k: v for k, v in result.items() if k.startswith("val_")}
        row |= {"epoch": epoch, "time_total_s": result.get("time_total_s")}
        ledger.record(cid, label, seed, epoch, row)
        decision = ledger.decision(cid, epoch)
        if decision is None:
            rows = ledger.rows(cid, epoch)
            if len(rows) < self.k:  # wait for the siblings (a reference point need not)
                ledger.save()
                return TrialScheduler.PAUSE if label == "search" else TrialScheduler.CONTINUE
            mean = float(np.mean([float(r[self.metric]) for r in rows.values()]))
            if label != "search":
                decision = REFERENCE
            else:
                kept = keeps(mean, ledger.judged(epoch), self.halving.reduction, self.mode)
                decision = CONTINUE if kept else STOP
            ledger.decide(cid, epoch, mean, decision)
            ledger.save()
        if decision != STOP:
            return TrialScheduler.CONTINUE
        for other in tune_controller.get_trials():
            if other is not trial and other.status == Trial.PAUSED and self.key(other)[0] == cid:
                tune_controller.stop_trial(other)
        return TrialScheduler.STOP

    def choose_trial_to_run(self, tune_controller: Any) -> Any:
        trials = tune_controller.get_trials()
        for trial in [t for t in trials if t.status == Trial.PAUSED]:
            cid, seed, label = self.key(trial)
            if label != "search":  # paused by Tune itself, never by this scheduler
                return trial
            if self.ledger.stopped_at(cid) is not None:  # a sibling paused while being stopped
                tune_controller.stop_trial(trial)
            elif any(t.status == Trial.ERROR and self.key(t)[0] == cid for t in trials):
                tune_controller.stop_trial(trial)  # a seed failed for good: nothing to wait for
            elif self.ledger.waiting_rung(cid, seed) is None:
                return trial  # its configuration continues: resume it first
        for trial in trials:
            if trial.status == Trial.PENDING:
                return trial
        return None

    def debug_string(self) -> str:
        rungs, eta = list(self.halving.rungs), self.halving.reduction
        return f"Paired halving: seed means judged at epochs {rungs}, about 1/{eta:g} continue."


class PairedRepeater(ReissuingRepeater):
    """A ``Repeater`` that tells Optuna each rung's seed mean, and PRUNED for a stopped group.

    ``constants`` is the param space's ``study`` block (the trials' configs carry it, the
    searcher's suggestions do not): with it a group's config gives its config id.
    """

    def __init__(self, searcher: Any, repeat: int, constants: dict[str, Any]):
        super().__init__(searcher, repeat=repeat, set_index=True)
        self.constants = constants

    def on_trial_complete(  # type: ignore[override]  # Repeater's **kwargs, Searcher's error
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        group = self._trial_id_to_group[trial_id]
        metric = self.searcher.metric
        group.report(trial_id, result.get(metric, np.nan) if result else np.nan)
        if not group.finished_reporting():
            return
        primary = group.primary_trial_id
        config = {**group.config, "study": self.constants, "__trial_index__": 0}
        cid = _identity(config)[0]
        ledger = Ledger.load(self.constants["study_dir"])
        try:
            for rung, mean in ledger.intermediate(cid):
                self.searcher.on_trial_result(primary, {metric: mean, "training_iteration": rung})
        except UpdateFinishedTrialError:
            # told before a killed driver's last Tune snapshot caught up: the journal holds it.
            # (Raising here would leave a paused trial that Tune is stopping paused for ever.)
            return
        if ledger.stopped_at(cid) is not None:  # OptunaSearch tells PRUNED when given no value
            self.searcher.on_trial_complete(primary, result=None, error=error)
        else:
            mean = float(np.nanmean(group.scores()))
            self.searcher.on_trial_complete(primary, result={metric: mean}, error=error)
