"""What a study costs, from measured step times: ``python -m benchmarks.cost``.

    python -m benchmarks.cost --step cpu_paper.json --step cpu_demo.json [--step gpu.json]

A trial trains ``TRAIN_IMAGES`` images per epoch for ``EPOCHS`` epochs (the paper's 486,169
training galaxies less the 20,000 held out for validation, 50 epochs) and evaluates the
validation set every epoch and the test set once (a forward pass costs about a third of a
training step per image). The gamma study is 40 configurations x 5 seeds = 200 trials, each
charged as a constrained trial (an upper bound: a configuration that draws g_inv = 0 costs about
an augmented baseline).

Rows:
- the paper (its Appendix C / the issue): A100, 7.2 h baseline and 24.5 h constrained, about
  900 images/s; its three single runs took about 40 GPU-hours;
- the GPU **projection** of this code: the 4,000 images/s target for the paper preset at
  batch 128 and the 2.1x constrained target (to be replaced by a measurement: ``--step`` a
  JSON from ``python -m benchmarks.step --device cuda``);
- every ``--step`` JSON: a measured row (its device, preset, batch), at paper scale.
A ``--step`` JSON of the demo preset gives the demo study's cost instead (its universe size and
epochs: the study ``make demo`` runs), not a paper-scale figure (it is not the paper's model).

``--pruned STUDY_DIR`` (a study run with paired early stopping, ``study.halving``) adds a last
column: every row's study at the fraction of trial-epochs that study ran against its unpruned
equivalent (its frame's ``epochs``: a stopped configuration's seeds count their rung). That
fraction is the measured one; a 40-configuration study keeps its 2 unstoppable reference
points in a smaller share than the demo's 2 of 8, so it is, if anything, an overestimate.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from study.config import make_config
from study.data.dataset import draw_split

TRAIN_IMAGES = 486_169 - 20_000  # the paper's training set less its validation set
VAL_IMAGES, TEST_IMAGES, EPOCHS = 20_000, 121_543, 50
EVAL_COST = 1 / 3  # forward-only cost per image relative to a training step's
CONFIGS, SEEDS = 40, 5
PAPER = {"baseline_h": 7.2, "constrained_h": 24.5, "images_per_s": 900, "three_runs_h": 40.0}
GPU_TARGET = {"images_per_s": 4000.0, "constrained_over_baseline": 2.1}


def trial_hours(images_per_s: float, ratio: float = 1.0, scale: dict | None = None) -> float:
    """Hours of one trial at a baseline rate, times the group's cost ratio."""
    s = scale or {"train": TRAIN_IMAGES, "val": VAL_IMAGES, "test": TEST_IMAGES, "epochs": EPOCHS}
    work = s["train"] * s["epochs"] * ratio + EVAL_COST * (s["val"] * s["epochs"] + s["test"])
    return work / images_per_s / 3600


def row(label: str, source: str, ips: float, ratio: float, scale: dict | None = None) -> dict:
    base, con = trial_hours(ips, 1.0, scale), trial_hours(ips, ratio, scale)
    study = CONFIGS * SEEDS * con
    return {
        "setting": label,
        "source": source,
        "baseline_images_per_s": ips,
        "constrained_over_baseline": ratio,
        "baseline_trial_h": base,
        "constrained_trial_h": con,
        "gamma_study_h": study,
        "study_over_paper_40h": study / PAPER["three_runs_h"],
    }


def measured_rows(res: dict[str, Any]) -> list[dict]:
    """The row of one benchmarks.step JSON: paper scale, or the demo study's own scale."""
    dev = res["device"]["device_name"]
    clock = "process CPU time, 1 thread" if res["clock"] == "cpu" else "wall time"
    ips = res["images_per_s"]["baseline"]
    ratio = res["constrained_over_baseline"]
    what = f"{res['preset']} preset ({res['arch']}, batch {res['batch_size']}) on {dev}"
    if res.get("compile"):
        what += f", torch.compile {res.get('compile_mode')}"
    if res["preset"] != "demo":
        return [row(f"{what}, paper scale", f"measured ({clock})", ips, ratio)]
    cfg = make_config("demo")
    n = cfg.data.universe_n
    split = draw_split(n, 0)
    scale = {
        "train": int((split == 0).sum()),
        "val": int((split == 1).sum()),
        "test": int((split == 2).sum()),
        "epochs": cfg.optim.epochs,
    }
    rows = [row(f"{what}, the demo study ({n} galaxies)", f"measured ({clock})", ips, ratio, scale)]
    return rows


def table(rows: list[dict], pruned: float | None = None) -> str:
    """Markdown table; hours, and the study against the paper's 40 GPU-hours.

    ``pruned``: the trial-epoch fraction of a paired-halving study; adds the pruned study's hours.
    """
    head = (
        "| setting | source | baseline img/s | constrained / baseline | baseline trial (h) "
        "| constrained trial (h) | gamma study 40 x 5 (h) | study / paper's 40 h |"
    )
    if pruned is not None:
        head += f" paired halving, {pruned:.0%} of the trial-epochs (h) |"
    lines = [head, "|" + " --- |" * (8 + (pruned is not None))]
    for r in rows:
        line = (
            f"| {r['setting']} | {r['source']} | {r['baseline_images_per_s']:,.1f} | "
            f"{r['constrained_over_baseline']:.2f} | {r['baseline_trial_h']:,.2f} | "
            f"{r['constrained_trial_h']:,.2f} | {r['gamma_study_h']:,.0f} | "
            f"{r['study_over_paper_40h']:,.1f}x |"
        )
        if pruned is not None:
            line += f" {r['gamma_study_h'] * pruned:,.0f} |"
        lines.append(line)
    return "\n".join(lines)


def pruned_fraction(study_dir: Path) -> float:
    """Trial-epochs a paired-halving study ran over those of its unpruned equivalent."""
    import pandas as pd

    from study.halving import trial_epochs

    ran, unpruned = trial_epochs(pd.read_parquet(study_dir / "frame.parquet"))
    return ran / unpruned


def all_rows(step_files: list[Path]) -> list[dict]:
    paper_ratio = PAPER["constrained_h"] / PAPER["baseline_h"]
    rows = [
        {
            **row(
                "the paper: ResNet50 (Hayat), batch 128, A100",
                "paper (measured, Appendix C)",
                PAPER["images_per_s"],
                paper_ratio,
            ),
            "baseline_trial_h": PAPER["baseline_h"],
            "constrained_trial_h": PAPER["constrained_h"],
            "gamma_study_h": CONFIGS * SEEDS * PAPER["constrained_h"],
            "study_over_paper_40h": CONFIGS * SEEDS * PAPER["constrained_h"] / 40.0,
        },
        row(
            "this code: paper preset, batch 128, one GPU",
            "**projection** from the targets (4,000 img/s, 2.1x), not a measurement",
            GPU_TARGET["images_per_s"],
            GPU_TARGET["constrained_over_baseline"],
        ),
    ]
    for f in step_files:
        rows += measured_rows(json.loads(Path(f).read_text()))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.cost", description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "--step", action="append", default=[], type=Path, help="a benchmarks.step JSON (repeatable)"
    )
    p.add_argument("--json", help="also write the rows here")
    p.add_argument(
        "--pruned", type=Path, help="a paired-halving study directory: add its measured fraction"
    )
    args = p.parse_args(argv)
    if args.pruned is not None and not (args.pruned / "frame.parquet").is_file():
        print(
            f"error: --pruned {args.pruned}: no frame.parquet; give a finished study directory",
            file=sys.stderr,
        )
        return 2
    for f in args.step:
        if not f.is_file():
            print(
                f"error: --step {f}: file not found; run python -m benchmarks.step --json",
                file=sys.stderr,
            )
            return 2
    rows = all_rows(args.step)
    fraction = pruned_fraction(args.pruned) if args.pruned is not None else None
    print(table(rows, fraction))
    if fraction is not None:
        for r in rows:
            r["paired_halving_fraction"] = fraction
            r["paired_halving_study_h"] = r["gamma_study_h"] * fraction
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
