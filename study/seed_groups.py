"""Paired seeds across a killed driver: Tune's saved seed groups reconciled with its saved trials.

Ray Tune (2.60) snapshots an experiment as separate files, written one after the other into the
driver's staging directory (``/tmp/ray/session_*/artifacts/...``) and then copied to the storage
path (``STUDY_DIR/ray/tune``) by a background thread: ``experiment_state-<session>.json`` (every
Trial with its config) and ``search_gen_state-<session>.json`` (the search algorithm: its trial
counter and the ``Repeater``'s seed groups), which ``Tuner.restore`` reads back separately. A
copy still running while the next snapshot is written (a forced snapshot per trial checkpoint,
``CheckpointConfig(num_to_keep=1)``: the K seeds of a configuration finish together) can leave
storage with the trials of one snapshot and the groups of the next; a driver killed before the
next copy completes leaves them so. Restored as they are:

- the groups newer than the trials: a group handed out a seed whose Trial was never saved; the
  Repeater counts it as running and the counter as created, so it is never asked for again (the
  study ends a run short, "interrupted after 5 of 6 runs", on every --resume);
- the trials newer than the groups: a restored Trial that no group knows (Ray's Repeater raises
  KeyError when it completes), and a counter one short (one trial too many would be created).

``SeedGroupGenerator.restore_from_dir`` (Tune calls it on resume after reading the trials, with
the storage's state files copied beside it) compares the two: each seed a group issued that no
restored trial carries is re-issued by ``ReissuingRepeater.suggest``, before any new
configuration, as a new trial of the same group (its config, its ``__trial_index__``); each
restored trial no group knows joins the group whose config it carries; the counter moves by the
same numbers. Without a kill (or with consistent files) nothing changes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, NamedTuple

from ray.tune.search import Repeater
from ray.tune.search.repeater import TRIAL_INDEX, _TrialGroup
from ray.tune.search.search_generator import SearchGenerator

logger = logging.getLogger(__name__)

EXPERIMENT_STATE = "experiment_state-*.json"  # TuneController.CKPT_FILE_TMPL; newest by name


class RestoredTrial(NamedTuple):
    """What Tune restored of one trial."""

    config: dict[str, Any]  # what the Repeater suggested: searcher values + __trial_index__
    status: str  # Trial.TERMINATED ones are not run again
    last_result: dict[str, Any]  # flattened, as Tune passes it to on_trial_complete


def restored_trials(dirpath: str | Path) -> dict[str, RestoredTrial] | None:
    """The trials of the newest experiment state in ``dirpath``, by trial id.

    That file is the one Tune restored its trials from; a trial's config here is what the
    Repeater gave it (Tune's ``evaluated_params``). None where there is no such file (a
    searcher restored by hand, outside a Tune resume).
    """
    from ray.tune.trainable.metadata import _TrainingRunMetadata
    from ray.tune.utils.serialization import _loads_with_cloudpickle
    from ray.tune.utils.util import flatten_dict, unflatten_dict

    paths = sorted(Path(dirpath).glob(EXPERIMENT_STATE))
    if not paths:
        return None
    state = _loads_with_cloudpickle(paths[-1].read_text())  # the study's own files: trusted
    trials = {}
    for trial_json, metadata_json in state["trial_data"]:
        trial = _loads_with_cloudpickle(trial_json)
        last = _TrainingRunMetadata.from_json_state(metadata_json).last_result
        config = unflatten_dict(trial.get("evaluated_params") or {})
        trials[trial["trial_id"]] = RestoredTrial(config, trial["status"], flatten_dict(last))
    return trials


def _carries(config: dict[str, Any], group: _TrialGroup) -> bool:
    """Whether a trial's suggested config is the group's (plus a seed index)."""
    return {k: v for k, v in config.items() if k != TRIAL_INDEX} == group.config


class ReissuingRepeater(Repeater):
    """Ray's ``Repeater`` that can re-issue, after a resume, the seeds Tune lost (see module).

    ``_reissue`` holds ``(group, lost trial id)`` pairs: the next suggestions give each lost
    trial's place in its group (so its seed index, and the group's primary id that the wrapped
    searcher knows, stay as they were) to a new trial id, before anything new is sampled.
    """

    def __init__(self, searcher: Any, repeat: int = 1, set_index: bool = True):
        super().__init__(searcher, repeat=repeat, set_index=set_index)
        self._reissue: list[tuple[_TrialGroup, str]] = []

    def suggest(self, trial_id: str) -> dict | None:
        if not self._reissue:
            return super().suggest(trial_id)
        group, lost = self._reissue.pop(0)
        index = list(group._trials).index(lost)  # a group's order is its seed order
        group._trials = {(trial_id if t == lost else t): s for t, s in group._trials.items()}
        self._trial_id_to_group[trial_id] = group
        config = group.config.copy()
        if self._set_index:
            config[TRIAL_INDEX] = index
        logger.warning("re-issuing seed %d of trial %s's group as trial %s", index, lost, trial_id)
        return config

    def reconcile(self, restored: dict[str, RestoredTrial]) -> int:
        """Match the groups to the trials Tune restored; returns how many more trials exist.

        A group's trial id not restored is queued for re-issue (and forgotten by id). A restored
        trial no group knows joins the newest group of its config if its seed index is that
        group's next one, or starts a group if it is a seed 0 the wrapped searcher knows. A
        finished trial whose completion the groups miss is completed again with its last result
        (Tune will not run it again; the searcher ignores a second completion). The return value
        (joined - lost) corrects the generator's trial counter.
        """
        self._reissue = [
            (group, tid) for group in self._groups for tid in group._trials if tid not in restored
        ]
        for _, tid in self._reissue:
            self._trial_id_to_group.pop(tid, None)
        orphans = [
            (trial.config[TRIAL_INDEX], tid, trial.config)
            for tid, trial in restored.items()
            if tid not in self._trial_id_to_group and TRIAL_INDEX in trial.config
        ]
        joined = 0
        for index, tid, config in sorted(orphans, key=lambda o: o[0]):
            group = next((g for g in reversed(self._groups) if _carries(config, g)), None)
            if group is not None and not group.full() and index == group.count():
                group.add(tid)
            elif index == 0 and tid in getattr(self.searcher, "_ot_trials", {}):
                params = {k: v for k, v in config.items() if k != TRIAL_INDEX}
                group = _TrialGroup(tid, params, max_trials=self.repeat)
                self._groups.append(group)
                self._current_group = group  # type: ignore[assignment]  # the newest group
            else:
                logger.warning("restored trial %s (seed index %s) fits no seed group", tid, index)
                continue
            self._trial_id_to_group[tid] = group
            joined += 1
        for tid, trial in restored.items():
            group = self._trial_id_to_group.get(tid)
            if trial.status == "TERMINATED" and group is not None and group._trials[tid] is None:
                self.on_trial_complete(tid, result=trial.last_result)
        return joined - len(self._reissue)


class SeedGroupGenerator(SearchGenerator):
    """Tune's ``SearchGenerator`` that reconciles a ``ReissuingRepeater`` on restore."""

    def restore_from_dir(self, dirpath: str) -> None:
        super().restore_from_dir(dirpath)
        restored = restored_trials(dirpath)
        if restored is not None and isinstance(self.searcher, ReissuingRepeater):
            moved = self.searcher.reconcile(restored)
            if moved:
                logger.warning("trial counter %d -> %d", self._counter, self._counter + moved)
            self._counter += moved
