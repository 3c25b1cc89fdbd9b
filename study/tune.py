"""Ray Tune orchestration: the trainable, Optuna with paired seeds, and the study directory.

Ray stays at the edge: ``trainable`` turns a trial's config dict into the dataclasses of
``study.config`` and calls the same ``study.train.train`` as ``python -m study.train``, reporting
each epoch with ``ray.tune.report`` and its checkpoint with ``ray.tune.Checkpoint``.

Paired seeds. For an ``optuna`` search, ``ray.tune.search.Repeater`` wraps ``OptunaSearch`` (TPE,
seeded, a conditional define-by-run space) so that every sampled configuration runs once per
seed of the fixed seed list (``config["__trial_index__"]`` indexes it) and Optuna is told the
seed mean. With several objectives Optuna searches them all (multi-objective TPE or NSGA-II) and
``study.seed_means.SeedMeanRepeater`` tells it each one's seed mean (Ray's Repeater takes one).
The repeaters are ``study.seed_groups.ReissuingRepeater``s inside a ``SeedGroupGenerator``, which
on ``--resume`` squares the restored seed groups with the restored trials (a driver killed
between two of Tune's snapshots can leave one newer than the other). A ``grid`` search (the
ablation) is a plain ``tune.grid_search`` over group x seed.

The study directory (SPEC 8)::

    STUDY_DIR/
      study.json           what --resume needs (the command's resolved settings)
      search_space.yaml    the resolved search space
      provenance.json      git commit, dataset hash, package versions, devices
      optuna.journal       Optuna's storage (optuna-dashboard STUDY_DIR/optuna.journal)
      ray/tune/            the Ray Tune experiment (Tuner.restore), unless --storage elsewhere
      configs/<id>.json    each configuration's parameters and group label
      runs/<id>-s<seed>/   each train() run directory (config.yaml, metrics.json, ...)
      frame.parquet        one row per (configuration, seed), built from runs/*/metrics.json
      history.parquet      every run's per-epoch history with config_id and seed
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from study import halving
from study import search_space as ss
from study.files import atomic_write, atomic_write_text
from study.metrics import METRIC_NAMES
from study.search_space import SearchSpace

EXPERIMENT = "tune"  # Ray Tune experiment name under the storage path
OPTUNA_STUDY = "photoz-study"  # the study's name inside the Optuna journal
JOURNAL = "optuna.journal"
FRAME_METRICS = METRIC_NAMES  # the frame's val_<m> / test_<m> columns: SPEC 3, with the s.e.


def config_id(group: str, overrides: dict[str, Any]) -> str:
    """Short, deterministic id of a configuration: hash of its base group and parameter values."""
    text = json.dumps({"group": group, **overrides}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def run_name(cid: str, seed: int) -> str:
    """``runs/<config_id>-s<seed>``: one run directory per (configuration, seed)."""
    return f"{cid}-s{seed}"


# ---- the trainable -----------------------------------------------------------------------


def _identity(config: dict[str, Any]) -> tuple[str, int, str, str, dict[str, Any]]:
    """(label, seed, config id, base group, overrides) of a trial config."""
    st = config["study"]
    space = ss.parse(st["space"], st["space_path"])
    if space.kind == "grid":
        group, seed, values = config["group"], int(config["seed"]), {}
        label = make_group = group
    else:
        seed = space.seeds[int(config["__trial_index__"])]
        values = ss.values_of(space, config)
        label = ss.label(space, values)
        make_group = label if label in ss.GROUPS else space.base_group
    overrides = {**space.fixed, **{ss.PARAM_KEYS.get(k, k): v for k, v in values.items()}}
    return label, seed, config_id(make_group, overrides), make_group, overrides


def trial_key(config: dict[str, Any]) -> tuple[str, int, str]:
    """(config id, seed, label) of a trial config: what paired halving groups trials by."""
    label, seed, cid, _, _ = _identity(config)
    return cid, seed, label


def trial_plan(config: dict[str, Any]) -> dict[str, Any]:
    """What one trial runs: label, seed, config id, resolved ``study.config.Config``, run dir."""
    from study.config import make_config

    st = config["study"]
    label, seed, cid, make_group, overrides = _identity(config)
    if st.get("epochs"):
        overrides["optim.epochs"] = int(st["epochs"])
    overrides["run.progress"] = False  # the driver's trial table is the progress display
    data = st["data_path"]
    # The driver built/read the file; another node without it builds its own cached copy.
    if not (st["data_default"] and not Path(data).is_file()):
        overrides["data.path"] = data
    cfg = make_config(st["preset"], make_group, seed, overrides)
    if label == "search":
        cfg = replace(cfg, group="custom")
    study_dir = Path(st["study_dir"])
    return {
        "label": label,
        "seed": seed,
        "config_id": cid,
        "config": cfg,
        "study_dir": study_dir,
        "run_dir": study_dir / "runs" / run_name(cid, seed),
    }


def _write_config_record(plan: dict[str, Any]) -> None:
    cfg = plan["config"]
    record = {
        "config_id": plan["config_id"],
        "group": plan["label"],
        "g_flux": cfg.loss.g_flux,
        "g_inv": cfg.loss.g_inv,
        "g_cde": cfg.loss.g_cde,
        "lr": cfg.optim.lr,
        "augment": cfg.loss.augment,
    }
    path = plan["study_dir"] / "configs" / f"{plan['config_id']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(record, indent=1))  # the K seeds write the same record


def final_result(metrics: dict[str, Any]) -> dict[str, Any]:
    """A run's ``metrics.json`` as one flat Tune result (``val_cde_loss``, ``test_ks``, ...)."""
    out: dict[str, Any] = {}
    for split in ("val", "test"):
        out.update({f"{split}_{k}": v for k, v in metrics.get(split, {}).items()})
    for key in ("epochs", "train_seconds"):
        if key in metrics:
            out[key] = metrics[key]
    if "epochs" in metrics:
        out["epoch"] = metrics["epochs"]  # the progress table's epoch column
    return out


def _scalars(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if isinstance(v, int | float | str | bool)}


def trainable(config: dict[str, Any]) -> None:
    """Ray Tune function trainable: one (configuration, seed) pair, resumable from a checkpoint."""
    from ray import tune

    from study.config import save_yaml
    from study.train import train
    from study.universe.build import resolve_data

    plan = trial_plan(config)
    run_dir: Path = plan["run_dir"]
    tags = {"config_id": plan["config_id"], "seed": plan["seed"], "group": plan["label"]}
    _write_config_record(plan)
    metrics_file = run_dir / "metrics.json"
    if metrics_file.is_file():  # finished before (a resumed study, or a re-run trial): reuse it
        tune.report({**final_result(json.loads(metrics_file.read_text())), **tags})
        return
    checkpoint = tune.get_checkpoint()
    resume = checkpoint is not None
    if checkpoint is not None:  # a retry: continue from the last reported epoch
        run_dir.mkdir(parents=True, exist_ok=True)
        if not (run_dir / "config.yaml").is_file():  # retried on a node that lacks the run dir
            save_yaml(plan["config"], run_dir / "config.yaml")
        with checkpoint.as_directory() as src:
            shutil.rmtree(run_dir / "checkpoint", ignore_errors=True)
            shutil.copytree(src, run_dir / "checkpoint")
    elif run_dir.exists():  # an attempt that died before its first checkpoint: start over
        shutil.rmtree(run_dir)

    def on_epoch(row: dict[str, Any], checkpoint_dir: Path) -> None:
        tune.report(
            {**_scalars(row), **tags}, checkpoint=tune.Checkpoint.from_directory(checkpoint_dir)
        )

    data = resolve_data(plan["config"])  # this node's copy of the default universe, if need be
    result = train(plan["config"], run_dir, data=data, resume=resume, on_epoch=on_epoch)
    tune.report({**final_result(result.metrics), **tags})


# ---- the Tuner -----------------------------------------------------------------------------


def storage_path(study_dir: Path, storage: str | None) -> str:
    """Where Ray Tune keeps the experiment: ``--storage`` (s3://..., NFS) or ``STUDY_DIR/ray``."""
    return storage or str((study_dir / "ray").resolve())


def experiment_path(settings: dict[str, Any]) -> str:
    """The Tune experiment's path (what ``Tuner.restore`` takes)."""
    return (
        storage_path(Path(settings["study_dir"]), settings.get("storage")).rstrip("/")
        + "/"
        + EXPERIMENT
    )


def _searcher(space: SearchSpace, study_dir: Path, constants: dict[str, Any] | None = None) -> Any:
    """OptunaSearch behind the repeater that pairs the seeds (``constants``: the trainable's,
    needed only by paired halving's repeater)."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from ray.tune.search.optuna import OptunaSearch

    from study.seed_groups import ReissuingRepeater

    storage = JournalStorage(JournalFileBackend(str(study_dir / JOURNAL)))
    optuna_search = OptunaSearch(
        space=ss.define_by_run(space),
        metric=[o.metric for o in space.objectives] if space.multi_objective else space.metric,
        mode=[o.mode for o in space.objectives] if space.multi_objective else space.mode,
        points_to_evaluate=[ss.optuna_point(space, p) for p in space.reference_points] or None,
        sampler=make_sampler(space),
        study_name=OPTUNA_STUDY,
        storage=storage,
    )
    if space.scheduler is not None:  # paired halving: rung means and PRUNED trials for Optuna
        from study.tune_halving import PairedRepeater

        if constants is None:
            raise ValueError("paired halving's repeater needs the trainable's constants")
        return PairedRepeater(optuna_search, len(space.seeds), constants["study"])
    if space.multi_objective:
        return _multi_objective_repeater(space, optuna_search, storage)
    return ReissuingRepeater(optuna_search, repeat=len(space.seeds), set_index=True)


# ---- several objectives (issue 14) -----------------------------------------------------------


def make_sampler(space: SearchSpace) -> Any:
    """The space's Optuna sampler, seeded: TPE (multi-objective too) or NSGA-II.

    Optuna's TPE handles several objectives itself (MOTPE, ranking trials by non-domination and
    hypervolume contribution); NSGA-II needs a population per generation (Optuna's default 50,
    more than most of our studies' configurations, so its first generation is all random).
    """
    import optuna

    if space.sampler_type == "nsga2":
        return optuna.samplers.NSGAIISampler(
            population_size=space.population_size or 50, seed=space.sampler_seed
        )
    return optuna.samplers.TPESampler(seed=space.sampler_seed)


def _multi_objective_repeater(space: SearchSpace, optuna_search: Any, storage: Any) -> Any:
    """Paired seeds for several objectives, and the objectives' names in the journal.

    Ray's Repeater averages one metric only (see ``study.seed_means``). The names go into the
    Optuna study (``set_metric_names``) so that optuna-dashboard and Optuna's plots label axes.
    """
    import warnings

    import optuna

    from study.seed_means import SeedMeanRepeater

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.load_study(study_name=OPTUNA_STUDY, storage=storage).set_metric_names(
            [o.metric for o in space.objectives]
        )
    return SeedMeanRepeater(optuna_search, repeat=len(space.seeds), set_index=True)


def _scheduler(space: SearchSpace, study_dir: Path) -> Any:
    """The study's Tune scheduler: None (FIFO) unless the space asks for paired halving."""
    if space.scheduler is None:
        return None
    from study.tune_halving import PairedHalvingScheduler

    return PairedHalvingScheduler(
        str(study_dir), space.scheduler, space.metric, space.mode, len(space.seeds)
    )


def _reporter(space: SearchSpace) -> Any:
    from ray.tune import CLIReporter

    if space.kind == "optuna":
        params = ["g_flux", "g_inv", "g_cde", "lr"]
        metrics = {"config_id": "config", "seed": "seed"}
    else:
        params, metrics = ["group", "seed"], {"config_id": "config"}
    return CLIReporter(
        parameter_columns=params,
        metric_columns={
            **metrics,
            "epoch": "epoch",
            **{o.metric: o.metric for o in space.objectives},
        },
        max_report_frequency=30,
        sort_by_metric=False,
    )


def trial_dirname(trial: Any) -> str:
    """Short trial directory names (the default would spell out the whole config)."""
    return f"trial_{trial.trial_id}"


def _trainable_with_resources(settings: dict[str, Any]) -> Any:
    from ray import tune

    resources = {"cpu": settings["cpus_per_trial"], "gpu": settings["gpus_per_trial"]}
    return tune.with_resources(trainable, resources)


def make_tuner(settings: dict[str, Any], space: SearchSpace) -> Any:
    """A new Tuner for the study described by ``settings`` (the contents of ``study.json``)."""
    from ray import tune

    study_dir = Path(settings["study_dir"])
    constants = {
        "study": {
            "study_dir": str(study_dir),
            "space": space.to_dict(),
            "space_path": space.path,
            "preset": settings["preset"],
            "epochs": settings.get("epochs"),
            "data_path": settings["data_path"],
            "data_default": settings["data_default"],
        }
    }
    if space.kind == "grid":
        param_space = {
            **constants,
            "group": tune.grid_search(space.groups),
            "seed": tune.grid_search(space.seeds),
        }
        tune_config = tune.TuneConfig(
            num_samples=1,
            reuse_actors=True,  # one worker process per CPU slot: no torch import per trial
            trial_dirname_creator=trial_dirname,
            trial_name_creator=trial_dirname,
        )
    else:
        from study.seed_groups import SeedGroupGenerator

        param_space = constants
        tune_config = tune.TuneConfig(
            # the generator squares the restored seed groups with the restored trials
            search_alg=SeedGroupGenerator(_searcher(space, study_dir, constants)),
            scheduler=_scheduler(space, study_dir),
            num_samples=space.num_samples * len(space.seeds),  # trials = configurations x K
            reuse_actors=True,
            trial_dirname_creator=trial_dirname,
            trial_name_creator=trial_dirname,
        )
    run_config = tune.RunConfig(
        name=EXPERIMENT,
        storage_path=storage_path(study_dir, settings.get("storage")),
        failure_config=tune.FailureConfig(max_failures=settings.get("max_failures", 2)),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        progress_reporter=_reporter(space),
        verbose=settings.get("verbose", 1),
    )
    return tune.Tuner(
        _trainable_with_resources(settings),
        param_space=param_space,
        tune_config=tune_config,
        run_config=run_config,
    )


def restore_tuner(settings: dict[str, Any]) -> Any:
    """The Tuner of an interrupted study: finished trials stay finished, errored ones resume."""
    from ray import tune

    return tune.Tuner.restore(
        experiment_path(settings),
        trainable=_trainable_with_resources(settings),
        resume_unfinished=True,
        resume_errored=True,
    )


def lost_to_infrastructure(errors: list[BaseException]) -> list[BaseException]:
    """The errors of trials whose actor died or became unreachable (a killed worker process, a
    lost node), as opposed to an exception raised by the training code.

    Tune retries such a trial from its checkpoint up to ``max_failures`` times, but Ray 2.60 can
    report one actor's death twice at once (two of its futures fail in one event batch). The
    first requeues the trial (PENDING); the second, handled while it is PENDING, marks it ERROR
    whatever retries it has left (``TuneController._process_trial_failure``, seen on a removed
    node under load: two failures, the same second, ``ActorUnavailableError``). ``study.run``
    resumes such trials from their checkpoints, as ``--resume`` would. The classes are Tune's
    own test (``Trial._handle_ray_task_error``): a ``RayTaskError`` counts when its cause is an
    actor error.
    """
    from ray.exceptions import NodeDiedError, RayActorError, RayTaskError, WorkerCrashedError

    infra = (RayActorError, NodeDiedError, WorkerCrashedError)

    def lost(e: BaseException) -> bool:
        if isinstance(e, RayTaskError):
            return isinstance(e.cause, infra)
        return isinstance(e, infra)

    return [e for e in errors if lost(e)]


def can_restore(settings: dict[str, Any]) -> bool:
    """Whether the Tune experiment got far enough to be restored (its state file exists)."""
    from ray import tune

    return tune.Tuner.can_restore(experiment_path(settings))


def fail_stale_optuna_trials(study_dir: str | Path) -> int:
    """Mark Optuna trials still RUNNING after the study finished as FAIL; returns how many.

    A driver killed between Optuna's ``ask`` and Tune's next state snapshot leaves a trial in the
    journal that the restored searcher never heard of; TPE and the dashboard then ignore it.
    """
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path = Path(study_dir) / JOURNAL
    if not path.is_file():
        return 0
    storage = JournalStorage(JournalFileBackend(str(path)))
    study = optuna.load_study(study_name=OPTUNA_STUDY, storage=storage)
    stale = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for trial in stale:
        storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
    return len(stale)


# ---- results ---------------------------------------------------------------------------------


def build_frame(study_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The frame and history of SPEC 8 from the run directories (their metrics.json is the truth).

    Returns:
        ``(frame, history)``: one row per finished (configuration, seed); every run's epochs.
    """
    study_dir = Path(study_dir)
    rows, histories = [], []
    for metrics_file in sorted((study_dir / "runs").glob("*-s*/metrics.json")):
        run_dir = metrics_file.parent
        cid, _, seed = run_dir.name.rpartition("-s")
        record = json.loads((study_dir / "configs" / f"{cid}.json").read_text())
        metrics = json.loads(metrics_file.read_text())
        row: dict[str, Any] = {
            "config_id": cid,
            "seed": int(seed),
            "group": record["group"],
            **{k: float(record[k]) for k in ("g_flux", "g_inv", "g_cde", "lr")},
        }
        for split in ("val", "test"):
            block = metrics.get(split, {})
            for m in FRAME_METRICS:
                if m in block or m != "cde_loss_se":
                    row[f"{split}_{m}"] = float(block.get(m, math.nan))
        row.update(
            epochs=int(metrics.get("epochs", -1)),
            train_seconds=float(metrics.get("train_seconds", math.nan)),
            device=str(metrics.get("device", "")),
            run_dir=str(run_dir.relative_to(study_dir)),
        )
        rows.append(row)
        hist_file = run_dir / "history.parquet"
        if hist_file.is_file():
            hist = pd.read_parquet(hist_file)
            hist.insert(0, "seed", int(seed))
            hist.insert(0, "config_id", cid)
            histories.append(hist)
    frame = pd.DataFrame(rows)
    if (study_dir / halving.LEDGER).is_file():  # a paired-halving study: its stopped runs too
        frame = _with_stopped_rows(frame, study_dir)
    history = pd.concat(histories, ignore_index=True) if histories else pd.DataFrame()
    return frame, history


def _with_stopped_rows(frame: pd.DataFrame, study_dir: Path) -> pd.DataFrame:
    """The frame plus one row per seed of each stopped configuration, ``stopped`` True.

    A stopped row holds the validation metrics of its rung epoch (from the ledger), NaN test
    metrics (a stopped run is never evaluated on the test split), ``epochs`` = the rung, and
    ``train_seconds`` = Tune's ``time_total_s`` at that rung.
    """
    rows = []
    for cid, seed, rung, result in halving.Ledger.load(study_dir).stopped_rows():
        record = json.loads((study_dir / "configs" / f"{cid}.json").read_text())
        row: dict[str, Any] = {
            "config_id": cid,
            "seed": seed,
            "group": record["group"],
            **{k: float(record[k]) for k in ("g_flux", "g_inv", "g_cde", "lr")},
        }
        for m in FRAME_METRICS:
            if f"val_{m}" in result or m != "cde_loss_se":
                row[f"val_{m}"] = float(result.get(f"val_{m}", math.nan))
        for m in FRAME_METRICS:
            if m != "cde_loss_se" or "test_cde_loss_se" in frame:
                row[f"test_{m}"] = math.nan
        row.update(
            epochs=int(rung),
            train_seconds=float(result.get("time_total_s") or math.nan),
            device="",
            run_dir=f"runs/{run_name(cid, seed)}",
        )
        rows.append(row)
    done = frame.assign(stopped=False) if len(frame) else frame
    stopped = pd.DataFrame(rows).assign(stopped=True) if rows else pd.DataFrame()
    out = pd.concat([done, stopped], ignore_index=True) if rows else done
    if len(out):
        out["stopped"] = out["stopped"].astype(bool)
    return out


def write_results(study_dir: str | Path) -> pd.DataFrame:
    """Write ``frame.parquet`` and ``history.parquet`` (atomically) and return the frame."""
    study_dir = Path(study_dir)
    frame, history = build_frame(study_dir)
    atomic_write(study_dir / "frame.parquet", lambda p: frame.to_parquet(p, index=False))
    atomic_write(study_dir / "history.parquet", lambda p: history.to_parquet(p, index=False))
    return frame


def _mean_std(r: Any, long: bool = False) -> str:
    std = f"{r['std']:.2g}" if r.n > 1 else "n/a"
    n = f"mean +- std over n={r.n} seeds" if long else f"n={r.n}"
    return f"{r['mean']:.5g} +- {std} ({n})"


def summary(frame: pd.DataFrame, space: SearchSpace) -> str:
    """Each configuration's objective as mean +- std over its seeds (n stated), best first."""
    if "stopped" in frame:  # paired halving: the stopped configurations, then the finished
        stopped, frame = frame[frame.stopped], frame[~frame.stopped]
        ran, unpruned = halving.trial_epochs(pd.concat([frame, stopped]))
        head = (
            f"paired halving: {stopped.config_id.nunique()} configurations stopped early "
            f"(rungs {sorted(set(stopped.epochs))}); {ran} trial-epochs run of {unpruned} unpruned"
        )
        return head + "\n" + summary(frame.drop(columns="stopped"), space)
    if frame.empty:
        return "no finished runs"
    if space.multi_objective:
        return pareto_summary(frame, space)
    col = space.metric
    cols = ["group", "g_flux", "g_inv", "g_cde", "lr"]
    stats = frame.groupby("config_id").agg(
        **{c: (c, "first") for c in cols}, mean=(col, "mean"), std=(col, "std"), n=(col, "size")
    )
    stats = stats.sort_values("mean", ascending=space.mode == "min")
    lines = [f"{col} ({space.mode}imise), mean +- std over seeds:"]
    for cid, r in stats.iterrows():
        lines.append(
            f"  {cid}  {r['group']:<12} g_flux={r.g_flux:.3g} g_inv={r.g_inv:.3g} "
            f"g_cde={r.g_cde:.3g} lr={r.lr:.3g}:  {_mean_std(r)}"
        )
    best = stats.iloc[0]
    lines.append(
        f"best configuration {stats.index[0]} ({best['group']}): {col} = {_mean_std(best, long=True)}"
    )
    return "\n".join(lines)


def pareto_summary(frame: pd.DataFrame, space: SearchSpace) -> str:
    """Several objectives: each configuration's seed means (+- std, n), * on the Pareto front.

    Sorted by the first objective; the front is taken on the seed means (what Optuna was told).
    """
    metrics = [o.metric for o in space.objectives]
    by = frame.groupby("config_id", sort=False)
    first = by[["group", "g_flux", "g_inv", "g_cde", "lr"]].first()
    means, stds, n = by[metrics].mean(), by[metrics].std(), by.size()
    optimal = dict(
        zip(
            means.index,
            ss.pareto_optimal(means.to_numpy().tolist(), [o.mode for o in space.objectives]),
            strict=True,
        )
    )
    head = ", ".join(f"{o.metric} ({o.mode}imise)" for o in space.objectives)
    lines = [f"{head}, mean +- std over seeds; * on the Pareto front of the seed means:"]
    for cid in means[metrics[0]].sort_values(ascending=space.mode == "min").index:
        r = first.loc[cid]
        cells = [
            {"mean": means.at[cid, m], "std": stds.at[cid, m], "n": int(n[cid])} for m in metrics
        ]
        values = "; ".join(
            f"{m} = {_mean_std(pd.Series(c, dtype=object))}"
            for m, c in zip(metrics, cells, strict=True)
        )
        lines.append(
            f"  {'*' if optimal[cid] else ' '} {cid}  {r['group']:<12} g_flux={r.g_flux:.3g} "
            f"g_inv={r.g_inv:.3g} g_cde={r.g_cde:.3g} lr={r.lr:.3g}:  {values}"
        )
    front = [f"{cid} ({first.at[cid, 'group']})" for cid, on in optimal.items() if on]
    lines.append(f"Pareto front: {len(front)} of {len(means)} configurations: {', '.join(front)}")
    return "\n".join(lines)
