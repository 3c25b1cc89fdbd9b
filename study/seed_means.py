"""Paired seeds for several objectives: Ray's ``Repeater``, telling Optuna every seed mean.

``ray.tune.search.Repeater`` (Ray 2.60) runs each suggestion once per seed and tells the wrapped
searcher the ``np.nanmean`` of *one* metric over the repeats: with the list of metrics that
``OptunaSearch`` takes for a multi-objective study, its ``searcher.metric not in result`` raises
(a list is unhashable). ``SeedMeanRepeater`` does the same reduction per metric: each seed's
final result gives one value per objective (NaN where a metric is missing), and once every seed
of the configuration has reported, the searcher gets ``{metric: mean over seeds}`` for each.

Only ``study.tune`` imports this module (it imports Ray), for studies with several objectives;
a one-objective study keeps Ray's reduction (``study.seed_groups.ReissuingRepeater``, the base of
both: Ray's ``Repeater`` that re-issues a seed lost by a killed driver).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from study.seed_groups import ReissuingRepeater


def seed_means(scores: list[tuple[float, ...]]) -> list[float]:
    """Per-objective mean over seeds, ignoring NaN (all NaN: NaN, as Ray's Repeater)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "Mean of empty slice"
        return np.nanmean(np.asarray(scores, dtype=float), axis=0).tolist()


class SeedMeanRepeater(ReissuingRepeater):
    """``Repeater`` whose searcher has a list of metrics (``OptunaSearch(metric=[...])``)."""

    @property
    def metrics(self) -> list[str]:
        """The wrapped searcher's metrics, always as a list."""
        metric = self.searcher.metric
        return list(metric) if isinstance(metric, list | tuple) else [metric]

    def on_trial_complete(
        self,
        trial_id: str,
        result: dict[Any, Any] | None = None,
        error: bool = False,
        **kwargs: Any,
    ) -> None:
        """Store this seed's values; once every seed reported, tell the searcher their means."""
        group = self._trial_id_to_group[trial_id]
        result = result or {}
        # a tuple, not an array: the group's "None not in scores" test compares with ==
        values = tuple(np.nan if result.get(m) is None else float(result[m]) for m in self.metrics)
        group.report(trial_id, values)
        if group.finished_reporting():
            means = seed_means(group.scores())
            self.searcher.on_trial_complete(
                group.primary_trial_id,
                result=dict(zip(self.metrics, means, strict=True)),
                error=error,
                **kwargs,
            )
