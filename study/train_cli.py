"""``python -m study.train``: the command line of one training run (SPEC 8).

An edge of the training core (SPEC 7): it reads flags into a ``Config``, resolves the dataset
(``--data``, or the cached synthetic universe of the preset's size, built here once) and hands
``study.train.train`` the file. ``study/train.py`` runs this when executed as a module.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from study.config import (
    GROUP_LABELS,
    PRESETS,
    Config,
    apply_overrides,
    load_yaml,
    make_config,
    parse_set,
)
from study.errors import UserError
from study.train import check_run_dir, resolve_device, train
from study.universe.build import resolve_data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m study.train",
        description="Train one network and write its run directory (config.yaml, metrics.json, "
        "history.parquet, predictions.h5, checkpoint/).",
    )
    parser.add_argument("--preset", choices=PRESETS, help="named preset (default paper)")
    parser.add_argument("--group", choices=GROUP_LABELS, help="loss group (default baseline)")
    parser.add_argument("--seed", type=int, help="trial seed: init, batch order, augmentation")
    parser.add_argument("--data", help="photoz-study/1 HDF5 file (default: cached universe)")
    parser.add_argument("--out", required=True, help="run directory (new or empty)")
    parser.add_argument("--epochs", type=int, help="override optim.epochs")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--config", help="YAML file of config fields (partial is fine)")
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a field, e.g. --set optim.lr=3e-4 (repeatable)",
    )
    args = parser.parse_args(argv)
    try:
        config = _config_from_args(args)
        check_run_dir(Path(args.out), args.resume)  # cheap checks before any universe is built
        resolve_device(config)
        result = train(config, args.out, data=resolve_data(config), resume=args.resume)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    test = result.metrics["test"]
    print(
        f"{result.run_dir}: test sigma_nmad={test['sigma_nmad']:.5f} "
        f"outlier_frac={test['outlier_frac']:.4f} cde_loss={test['cde_loss']:.3f} "
        f"({result.metrics['epochs']} epochs, {result.metrics['train_seconds']:.0f} s)"
    )
    return 0


def _config_from_args(args: argparse.Namespace) -> Config:
    """preset/group -> --config YAML (or the resumed run's config.yaml) -> flags -> --set."""
    if args.resume:
        saved = Path(args.out) / "config.yaml"
        if not saved.is_file():
            raise UserError(f"{args.out}: no config.yaml, nothing to resume; drop --resume")
        cfg = load_yaml(saved)
        for key in ("preset", "group"):
            given = getattr(args, key)
            if given is not None and given != getattr(cfg, key):
                raise UserError(
                    f"--{key} {given} but {saved} has {getattr(cfg, key)}; drop --{key}"
                )
    elif args.config:
        cfg = load_yaml(args.config, preset=args.preset, group=args.group)
    else:
        cfg = make_config(args.preset or "paper", args.group or "baseline")
    flags: dict[str, Any] = {}
    if args.seed is not None:
        flags["run.seed"] = args.seed
    if args.data is not None:
        flags["data.path"] = args.data
    if args.epochs is not None:
        flags["optim.epochs"] = args.epochs
    cfg = apply_overrides(cfg, flags, where="command line")
    return apply_overrides(cfg, parse_set(args.sets))


if __name__ == "__main__":
    sys.exit(main())
