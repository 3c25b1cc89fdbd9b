"""Paired successive halving: stop a configuration early as a whole, judged on its seed mean.

Per-trial early stopping (ASHA, Hyperband) breaks paired seeds: a configuration is stopped on
one unlucky seed or kept on one lucky one, and the seed sets no longer match across
configurations. Here the unit of decision is the configuration. With
``scheduler: {kind: paired_halving, rungs: [r1, r2, ...], reduction: eta}`` in a search space:

- every (configuration, seed) trial that reports a rung epoch ``r`` is PAUSED there (Tune
  saves its checkpoint and frees its CPU/GPU) until the configuration's other K-1 seeds have
  reported epoch ``r`` too;
- then the configuration is judged once, on the mean over its K seeds of the objective at
  epoch ``r``: it continues if fewer than ``ceil(n / eta)`` of the ``n`` configurations judged
  at rung ``r`` so far (itself included) have a strictly better mean, else all K trials are
  STOPPED together (the asynchronous rule of ASHA, Li et al. 2020, applied to seed means);
- reference points (``baseline_aug``, ``constrained``) are never paused nor stopped: their
  seed means join each rung's ranking as comparisons.

So a configuration's K seeds always end at the same epoch: the last epoch, or the rung it was
stopped at.

Why this design (a scheduler over the Repeater's groups): it keeps one Tune trial per
(configuration, seed), so the trainable, its checkpoint retries after a lost worker, the run
directories and the frame stay those of an unpruned study; pausing releases a trial's
resources, so a waiting seed never blocks the sibling it waits for, on any number of nodes. One
Tune trial per configuration advancing its K seeds in lockstep would need K seeds' state in one
trainable and a new retry story. Ray's ASHA cannot be used: it decides per trial.

The ledger, ``STUDY_DIR/halving.json`` (written atomically with ``study.files.atomic_write`` on
every rung result and decision, before Tune is told): each configuration's per-seed rung rows
and each decision in the order made. The scheduler reads it back when a study is resumed, so a
restored study replays the same decisions instead of re-deciding with a different arrival order,
keeps a seed that was waiting at a rung paused, and stops what was decided stopped.

The Ray side (the scheduler and ``PairedRepeater``) is in ``study.tune_halving``; this module
imports neither Ray nor Optuna.

Optuna. ``PairedRepeater`` (a ``ray.tune.search.Repeater``) reports, when a configuration's K
trials are over, each rung's seed mean as an intermediate value (``trial.report(mean, step=r)``
through ``OptunaSearch.on_trial_result``) and then tells Optuna the trial: COMPLETE with the
seed mean of the final objective, or PRUNED for a stopped configuration (Optuna's TPE ranks a
pruned trial by its last intermediate value; the dashboard shows the rung curves).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from study.files import atomic_write_text

KIND = "paired_halving"
LEDGER = "halving.json"
CONTINUE, STOP, REFERENCE = "continue", "stop", "reference"  # a rung's decision


@dataclass(frozen=True)
class Halving:
    """The ``scheduler:`` block of a search space."""

    rungs: tuple[int, ...]  # epochs (1-based, increasing) at which configurations are judged
    reduction: float  # eta: about 1/eta of the configurations judged at a rung continue

    def to_dict(self) -> dict[str, Any]:
        return {"kind": KIND, "rungs": list(self.rungs), "reduction": self.reduction}


def parse(raw: Any, fail: Callable[[str, str], Exception]) -> Halving:
    """Validate ``scheduler: {kind: paired_halving, rungs: [...], reduction: eta}``."""
    if not isinstance(raw, dict):
        raise fail("scheduler", f"expected a mapping {{kind: {KIND}, rungs: [...], reduction: 3}}")
    for key in raw:
        if key not in ("kind", "rungs", "reduction"):
            raise fail(f"scheduler.{key}", "unknown key; allowed: kind, reduction, rungs")
    if raw.get("kind") != KIND:
        raise fail("scheduler.kind", f"unknown {raw.get('kind')!r}; use {KIND}")
    rungs = raw.get("rungs")
    ints = isinstance(rungs, list) and all(
        isinstance(r, int) and not isinstance(r, bool) for r in rungs
    )
    if (
        not ints
        or not rungs
        or rungs[0] < 1
        or any(b <= a for a, b in zip(rungs[:-1], rungs[1:], strict=True))
    ):
        raise fail("scheduler.rungs", f"{rungs!r}: a non-empty increasing list of epochs >= 1")
    eta = raw.get("reduction", 3)
    if isinstance(eta, bool) or not isinstance(eta, int | float) or not eta > 1:
        raise fail("scheduler.reduction", f"{eta!r}: a number > 1 (3 keeps about a third)")
    return Halving(tuple(rungs), float(eta))


def keeps(mean: float, judged: list[float], reduction: float, mode: str) -> bool:
    """Whether a configuration with seed mean ``mean`` continues past a rung.

    ``judged`` holds the seed means of the configurations already judged at that rung (reference
    points included). It continues if fewer than ``ceil(n / reduction)`` of the ``n = len(judged)
    + 1`` are strictly better. A NaN mean (a diverged configuration) is stopped.
    """
    if math.isnan(mean):
        return False
    n = len(judged) + 1
    better = sum(1 for m in judged if (m < mean if mode == "min" else m > mean))
    return better < math.ceil(n / reduction)


def trial_epochs(frame: Any) -> tuple[int, int]:
    """(trial-epochs run, trial-epochs of the unpruned study) of a study frame.

    Every row ran ``epochs`` epochs (a stopped one: its rung); unpruned, every configuration
    would have run every seed for the finished rows' epochs.
    """
    if frame.empty:
        return 0, 0
    done = frame[~frame["stopped"]] if "stopped" in frame else frame
    full = int(done["epochs"].max()) if len(done) else int(frame["epochs"].max())
    return int(frame["epochs"].sum()), len(frame) * full


# ---- the ledger --------------------------------------------------------------------------


class Ledger:
    """``STUDY_DIR/halving.json``: rung rows per (configuration, seed) and the decisions.

    ``configs[cid] = {"label": ..., "rungs": {"r": {"rows": {seed: row}, "mean": m,
    "decision": d, "order": i}}}``; ``order`` numbers the decisions of a rung as made.
    """

    def __init__(self, path: Path, data: dict[str, Any] | None = None):
        self.path = path
        self.data = data or {"configs": {}}

    @classmethod
    def load(cls, study_dir: str | Path) -> Ledger:
        path = Path(study_dir) / LEDGER
        return cls(path, json.loads(path.read_text()) if path.is_file() else None)

    def save(self) -> None:
        atomic_write_text(self.path, json.dumps(self.data, indent=1, sort_keys=True))

    def _rung(self, cid: str, label: str, rung: int) -> dict[str, Any]:
        entry = self.data["configs"].setdefault(cid, {"label": label, "rungs": {}})
        return entry["rungs"].setdefault(str(rung), {"rows": {}})

    def record(self, cid: str, label: str, seed: int, rung: int, row: dict[str, Any]) -> None:
        """A seed's result at a rung (the first one counts: a retry repeats the same epoch)."""
        self._rung(cid, label, rung)["rows"].setdefault(str(seed), row)

    def rows(self, cid: str, rung: int) -> dict[int, dict[str, Any]]:
        got = self.data["configs"].get(cid, {}).get("rungs", {}).get(str(rung), {})
        return {int(s): r for s, r in got.get("rows", {}).items()}

    def decision(self, cid: str, rung: int) -> str | None:
        got = self.data["configs"].get(cid, {}).get("rungs", {}).get(str(rung), {})
        return got.get("decision")

    def decide(self, cid: str, rung: int, mean: float, decision: str) -> None:
        rung_entry = self.data["configs"][cid]["rungs"][str(rung)]
        rung_entry.update(mean=mean, decision=decision, order=len(self.judged(rung)))

    def judged(self, rung: int) -> list[float]:
        """Seed means of every configuration already judged at ``rung`` (decision order)."""
        entries = [
            c["rungs"][str(rung)]
            for c in self.data["configs"].values()
            if "decision" in c["rungs"].get(str(rung), {})
        ]
        return [float(e["mean"]) for e in sorted(entries, key=lambda e: e["order"])]

    def stopped_at(self, cid: str) -> int | None:
        """The rung at which ``cid`` was stopped, or None."""
        rungs = self.data["configs"].get(cid, {}).get("rungs", {})
        stops = [int(r) for r, e in rungs.items() if e.get("decision") == STOP]
        return min(stops) if stops else None

    def waiting_rung(self, cid: str, seed: int) -> int | None:
        """The rung at which this seed waits for its siblings' verdict, or None."""
        rungs = self.data["configs"].get(cid, {}).get("rungs", {})
        for r in sorted(rungs, key=int):
            e = rungs[r]
            if str(seed) in e["rows"] and "decision" not in e:
                return int(r)
        return None

    def stopped_rows(self) -> list[tuple[str, int, int, dict[str, Any]]]:
        """(config_id, seed, rung, row) of every seed of every stopped configuration."""
        out = []
        for cid in sorted(self.data["configs"]):
            rung = self.stopped_at(cid)
            if rung is not None:
                out += [(cid, s, rung, row) for s, row in sorted(self.rows(cid, rung).items())]
        return out

    def intermediate(self, cid: str) -> list[tuple[int, float]]:
        """(rung, seed mean) of every rung at which ``cid`` was judged, in epoch order."""
        rungs = self.data["configs"].get(cid, {}).get("rungs", {})
        return sorted((int(r), float(e["mean"])) for r, e in rungs.items() if "mean" in e)
