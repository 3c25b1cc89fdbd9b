"""Paired early stopping against the unpruned study: ``python -m benchmarks.halving``.

    python -m benchmarks.halving PRUNED_STUDY UNPRUNED_STUDY [--json out.json]

Both studies are the same search (same sampler seed, seeds and ``--num-samples``), one with
``scheduler: paired_halving``. For each: its best finished configuration by the seed mean of the
search space's validation objective (mean +- std over its K seeds), and the trial-epochs it ran.
The target of issue 14: the pruned study's best within one seed standard deviation of the
unpruned best, for at most half the trial-epochs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from study.halving import trial_epochs


def best(frame: pd.DataFrame, metric: str, mode: str) -> dict[str, Any]:
    """The finished configuration with the best seed mean of ``metric``, with its std and n."""
    done = frame[~frame["stopped"]] if "stopped" in frame else frame
    stats = done.groupby("config_id")[metric].agg(["mean", "std", "size"])
    cid = stats["mean"].idxmin() if mode == "min" else stats["mean"].idxmax()
    row = done[done.config_id == cid].iloc[0]
    return {
        "config_id": str(cid),
        "group": str(row["group"]),
        **{k: float(row[k]) for k in ("g_flux", "g_inv", "g_cde", "lr")},
        "mean": float(stats.loc[cid, "mean"]),
        "std": float(stats.loc[cid, "std"]),
        "n": int(stats.loc[cid, "size"]),
    }


def summarise(study_dir: Path) -> dict[str, Any]:
    """A study's best configuration and trial-epochs (run, and unpruned)."""
    space = yaml.safe_load((study_dir / "search_space.yaml").read_text())
    metric, mode = space["objective"]["metric"], space["objective"]["mode"]
    frame = pd.read_parquet(study_dir / "frame.parquet")
    ran, unpruned = trial_epochs(frame)
    n_stopped = int(frame[frame["stopped"]].config_id.nunique()) if "stopped" in frame else 0
    return {
        "study": str(study_dir),
        "metric": metric,
        "mode": mode,
        "configurations": int(frame.config_id.nunique()),
        "stopped": n_stopped,
        "trial_epochs": ran,
        "unpruned_trial_epochs": unpruned,
        "best": best(frame, metric, mode),
    }


def compare(pruned: dict[str, Any], unpruned: dict[str, Any]) -> dict[str, Any]:
    """The verdict on the target: |best difference| <= the unpruned best's seed std, epochs <= 1/2."""
    diff = pruned["best"]["mean"] - unpruned["best"]["mean"]
    fraction = pruned["trial_epochs"] / unpruned["trial_epochs"]
    return {
        "best_difference": diff,
        "within_one_std": abs(diff) <= unpruned["best"]["std"],
        "trial_epoch_fraction": fraction,
        "at_most_half": fraction <= 0.5,
    }


def table(pruned: dict[str, Any], unpruned: dict[str, Any], verdict: dict[str, Any]) -> str:
    lines = [
        f"| study | configurations (stopped) | best configuration | {pruned['metric']} "
        "(seed mean +- std, n) | trial-epochs |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, s in (("paired halving", pruned), ("unpruned", unpruned)):
        b = s["best"]
        lines.append(
            f"| {name} | {s['configurations']} ({s['stopped']}) | {b['config_id']} {b['group']} "
            f"g_flux={b['g_flux']:.3g} g_inv={b['g_inv']:.3g} g_cde={b['g_cde']:.3g} "
            f"lr={b['lr']:.3g} | {b['mean']:.4f} +- {b['std']:.4f} (n={b['n']}) "
            f"| {s['trial_epochs']} |"
        )
    lines.append(
        f"\nbest difference {verdict['best_difference']:+.4f} "
        f"({'within' if verdict['within_one_std'] else 'NOT within'} one seed std of the "
        f"unpruned best); trial-epochs {verdict['trial_epoch_fraction']:.0%} of the unpruned "
        f"study's ({'at most' if verdict['at_most_half'] else 'more than'} half)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.halving", description=__doc__.split("\n")[0]
    )
    p.add_argument("pruned", type=Path, help="the study run with scheduler: paired_halving")
    p.add_argument("unpruned", type=Path, help="the same search without it")
    p.add_argument("--json", type=Path, help="also write the numbers here")
    args = p.parse_args(argv)
    for d in (args.pruned, args.unpruned):
        if not (d / "frame.parquet").is_file():
            print(f"error: {d}: no frame.parquet; give a finished study directory", file=sys.stderr)
            return 2
    pruned, unpruned = summarise(args.pruned), summarise(args.unpruned)
    verdict = compare(pruned, unpruned)
    print(table(pruned, unpruned, verdict))
    if args.json:
        out = {"pruned": pruned, "unpruned": unpruned, **verdict}
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
