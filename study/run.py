"""``python -m study.run``: a hyperparameter-and-seed study on Ray Tune (SPEC 6 and 8).

Examples::

    python -m study.run --search demo --preset demo              # minutes on 2 CPU cores
    python -m study.run --search gamma --num-samples 40 --seeds 5  # paper preset, 1 GPU per trial
    python -m study.run --search ablation --address auto --storage /nfs/studies/ray
    python -m study.run --resume studies/gamma-20260101-120000    # after the driver was killed

Everything the user can get wrong (search-space file, flags, data file, no CUDA for the paper
preset, a non-empty --out) is reported as one line before Ray starts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from study import search_space as ss
from study import tune as st
from study.errors import UserError
from study.files import atomic_write_text, refuse_nonempty_dir
from study.machine import git_commit, git_dirty, require_cuda_for_paper

CPU_PRESETS = ("demo", "tiny")  # presets that run on CPU trials by default
PACKAGES = ("photoz-study", "torch", "numpy", "pandas", "pyarrow", "h5py", "ray", "optuna", "scipy")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(
        prog="python -m study.run",
        description="Run a search or ablation study: every configuration on the same K seeds.",
    )
    p.add_argument(
        "--search", help="gamma, ablation, demo (search_spaces/NAME.yaml) or a YAML path"
    )
    p.add_argument("--preset", help="paper (default; needs CUDA), fast, resnet18, demo, tiny")
    p.add_argument("--seeds", type=int, help="K: run seeds 0..K-1 (default: the file's)")
    p.add_argument("--num-samples", type=int, help="configurations, reference points included")
    p.add_argument(
        "--data", help="photoz-study/1 HDF5 file (default: the preset's synthetic universe)"
    )
    p.add_argument("--out", help="new study directory (default: studies/<search>-<timestamp>)")
    p.add_argument("--resume", metavar="STUDY_DIR", help="continue an interrupted study")
    p.add_argument("--address", help="Ray cluster to join, e.g. auto (default: start Ray locally)")
    p.add_argument(
        "--gpus-per-trial",
        type=float,
        help="GPUs per trial, fractions allowed (default 1 on GPU presets)",
    )
    p.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs per trial (default 1)")
    p.add_argument("--num-cpus", type=int, help="CPUs of a local Ray (default: all)")
    p.add_argument("--epochs", type=int, help="override the preset's epochs")
    p.add_argument(
        "--storage",
        help="Ray Tune storage: s3://bucket/path or a shared path (default STUDY_DIR/ray)",
    )
    p.add_argument(
        "--max-failures", type=int, default=2, help="retries of a crashed trial from its checkpoint"
    )
    p.add_argument("--no-dashboard", action="store_true", help="do not start the Ray dashboard")
    args = p.parse_args(argv)
    if bool(args.search) == bool(args.resume):
        p.error("give exactly one of --search NAME and --resume STUDY_DIR")
    for flag in ("seeds", "num_samples", "epochs", "num_cpus"):
        v = getattr(args, flag)
        if v is not None and v < 1:
            p.error(f"--{flag.replace('_', '-')} {v}: must be >= 1")
    if args.gpus_per_trial is not None and args.gpus_per_trial < 0:
        p.error("--gpus-per-trial must be >= 0")
    return args


def new_settings(args: argparse.Namespace) -> tuple[dict[str, Any], ss.SearchSpace]:
    """Validate a new study's flags and search space (no Ray yet)."""
    from study.config import PRESETS, make_config

    space = ss.load(args.search).with_overrides(args.seeds, args.num_samples)
    preset = args.preset or space.preset or "paper"
    if preset not in PRESETS:
        raise UserError(f"--preset {preset}: unknown; use one of {', '.join(PRESETS)}")
    space.preset = preset  # the resolved space records the preset the study ran
    if space.scheduler is not None:
        epochs = args.epochs or make_config(preset, space.base_group).optim.epochs
        if space.scheduler.rungs[-1] >= epochs:
            raise UserError(
                f"{space.path}: scheduler.rungs: {list(space.scheduler.rungs)} must end below "
                f"the {epochs} epochs of a run (preset {preset}); drop the rungs >= {epochs}"
            )
    out = Path(args.out or f"studies/{space.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    refuse_nonempty_dir(out, f"choose a new directory or --resume {out}")
    if args.data and not Path(args.data).is_file():
        raise UserError(
            f"--data {args.data}: no such file; build one with python -m study.data universe"
        )
    settings = {
        "study_dir": str(out.resolve()),
        "search": args.search,
        "space_path": space.path,
        "preset": preset,
        "epochs": args.epochs,
        "data_path": str(Path(args.data).resolve()) if args.data else None,
        "data_default": not args.data,
        "gpus_per_trial": args.gpus_per_trial,
        "cpus_per_trial": args.cpus_per_trial,
        "storage": args.storage,
        "max_failures": args.max_failures,
    }
    return settings, space


def resumed_settings(args: argparse.Namespace) -> tuple[dict[str, Any], ss.SearchSpace]:
    """A stopped study's settings from its ``study.json``."""
    study_dir = Path(args.resume)
    path = study_dir / "study.json"
    if not path.is_file():
        raise UserError(
            f"--resume {study_dir}: no study.json; point at a directory made by study.run"
        )
    for flag in ("search", "preset", "seeds", "num_samples", "data", "out", "epochs", "storage"):
        if getattr(args, flag) is not None:
            raise UserError(
                f"--{flag.replace('_', '-')}: not allowed with --resume (read from {path})"
            )
    settings = json.loads(path.read_text())
    space = ss.parse(
        yaml.safe_load((study_dir / "search_space.yaml").read_text()), settings["space_path"]
    )
    return settings, space


def start_ray(args: argparse.Namespace, preset: str) -> dict[str, float]:
    """Join ``--address`` or start a local Ray; returns the cluster's resources."""
    import ray

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # keep the CLIReporter trial table
    # a checkpoint per epoch of short demo trials triggers Tune's "snapshot too often" warning
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if args.address is None and preset not in CPU_PRESETS:
        import torch

        require_cuda_for_paper(preset, torch.cuda.is_available())
    if args.address:
        ctx = ray.init(address=args.address)
    else:
        ctx = ray.init(
            # "local": a new Ray even where another `ray start` left /tmp/ray/ray_current_cluster
            # (address=None would join that one, and then refuse num_cpus / object_store_memory)
            address="local",
            num_cpus=args.num_cpus,
            include_dashboard=False if args.no_dashboard else None,
            object_store_memory=512 * 2**20,  # only small objects travel: checkpoints go to storage
        )
    resources = ray.cluster_resources()
    if preset == "paper" and resources.get("GPU", 0) == 0:
        raise UserError(
            "--preset paper needs CUDA and the Ray cluster has no GPU; use --preset demo on CPUs"
        )
    if ctx.dashboard_url:
        for line in dashboard_lines(ctx.dashboard_url, token_auth=ray_token_auth_enabled()):
            print(line, flush=True)
    return resources


def ray_token_auth_enabled() -> bool:
    """Whether this Ray requires its token (Ray >= 2.5x, default for a local ``ray.init``)."""
    try:  # a private module: an older or newer Ray without it has no token to show
        from ray._private.authentication.authentication_utils import is_token_auth_enabled
    except ImportError:
        return False
    return bool(is_token_auth_enabled())


def dashboard_lines(url: str, *, token_auth: bool) -> list[str]:
    """What the driver prints about the Ray dashboard; the command for the token, not the token.

    The token is a secret that lets anyone run code on the cluster, and the driver's output
    often ends in a log file, so it is not printed itself.
    """
    lines = [f"Ray dashboard: http://{url}"]
    if token_auth:
        lines.append(
            "Ray dashboard token: `ray get-auth-token` on this machine (the head node on a "
            "cluster) prints it; paste it into the page, or send 'Authorization: Bearer <token>'"
        )
    return lines


def prepare_data(settings: dict[str, Any]) -> None:
    """Read the given file, or build the preset's universe once in the driver (cached per node)."""
    if settings["data_path"] is None:
        from study.config import make_config
        from study.universe.build import resolve_data

        cfg = make_config(settings["preset"], "baseline")
        settings["data_path"] = str(Path(resolve_data(cfg)).resolve())
    settings["data_hash"] = _content_hash(settings["data_path"])


def _content_hash(path: str) -> str:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return str(f.attrs.get("content_hash", ""))
    except OSError as exc:
        raise UserError(
            f"{path}: not a readable HDF5 file ({exc}); pass a photoz-study/1 file"
        ) from None


def provenance(
    settings: dict[str, Any], space: ss.SearchSpace, resources: dict[str, float]
) -> dict[str, Any]:
    """What produced the study: code, data, packages and hardware."""
    import torch

    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    cuda = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {
        "command": sys.argv,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git_commit": git_commit(),
        "git_dirty": git_dirty(),
        "search_space": space.to_dict(),
        "settings": settings,
        "dataset": {"path": settings["data_path"], "content_hash": settings.get("data_hash")},
        "packages": {**versions, "python": platform.python_version()},
        "driver": {"host": platform.node(), "platform": platform.platform(), "cuda_devices": cuda},
        "cluster_resources": resources,
    }


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, default=str))


def run(args: argparse.Namespace) -> int:
    """The whole study: validate, start Ray, fit (or resume), write the frame, summarise."""
    import ray

    resuming = args.resume is not None
    settings, space = resumed_settings(args) if resuming else new_settings(args)
    study_dir = Path(settings["study_dir"])
    resources = start_ray(args, settings["preset"])
    try:
        if settings["gpus_per_trial"] is None:
            gpu = resources.get("GPU", 0) > 0 and settings["preset"] not in CPU_PRESETS
            settings["gpus_per_trial"] = 1.0 if gpu else 0.0
        if not resuming:
            prepare_data(settings)
            study_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(
                study_dir / "search_space.yaml", yaml.safe_dump(space.to_dict(), sort_keys=False)
            )
            _write_json(study_dir / "study.json", settings)
            _write_json(study_dir / "provenance.json", provenance(settings, space, resources))
        print(
            f"study {study_dir}: {space.n_configurations} configurations x {len(space.seeds)} seeds "
            f"{space.seeds}, preset {settings['preset']}",
            flush=True,
        )
        print(f"Optuna dashboard: optuna-dashboard {study_dir / st.JOURNAL}", flush=True)
        if resuming and st.can_restore(settings):
            tuner = st.restore_tuner(settings)
        else:
            if resuming:  # killed before Tune saved any state: start Tune and Optuna afresh
                shutil.rmtree(study_dir / "ray", ignore_errors=True)
                (study_dir / st.JOURNAL).unlink(missing_ok=True)
            tuner = st.make_tuner(settings, space)
        results = tuner.fit()
        for _ in range(settings.get("max_failures", 2)):
            lost = st.lost_to_infrastructure(results.errors)
            if not lost or len(lost) < len(results.errors):
                break
            print(
                f"{len(lost)} trial(s) lost with their worker or node; resuming them from "
                "their checkpoints",
                file=sys.stderr,
                flush=True,
            )
            results = st.restore_tuner(settings).fit()
        frame = st.write_results(study_dir)
        _record_devices(study_dir, frame)
        print(st.summary(frame, space), flush=True)
        print(f"wrote {study_dir / 'frame.parquet'} ({len(frame)} rows)", flush=True)
        n_trials = space.n_configurations * len(space.seeds)
        if results.num_terminated + results.num_errors < n_trials:  # Ctrl-C: Tune saved its state
            print(
                f"interrupted after {len(frame)} of {n_trials} runs; continue with "
                f"python -m study.run --resume {study_dir}",
                file=sys.stderr,
            )
            return 130
        if space.kind == "optuna":
            st.fail_stale_optuna_trials(study_dir)
        if results.errors:
            print(
                f"error: {len(results.errors)} trial(s) failed for good; see {st.experiment_path(settings)}; "
                f"fix and continue with --resume {study_dir}",
                file=sys.stderr,
            )
            return 1
        return 0
    finally:
        ray.shutdown()


def _record_devices(study_dir: Path, frame: Any) -> None:
    path = study_dir / "provenance.json"
    prov = json.loads(path.read_text())
    prov["devices"] = sorted(set(frame["device"])) if len(frame) else []
    _write_json(path, prov)


def main(argv: list[str] | None = None) -> int:
    """Entry point: a UserError is one line on stderr and exit code 2."""
    args = parse_args(argv)
    try:
        return run(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
