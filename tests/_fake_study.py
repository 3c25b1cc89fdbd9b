"""A fake-but-valid study directory in the SPEC 8 layout, for the analysis tests.

The metric numbers and CDEs are random, not trained: they test loading, statistics and
plotting, not science. The data file (photoz-study/1, via study.data.dataset) and the
checkpoints (an untrained tiny_cnn, study.train's ``checkpoint/state.pt`` format) are real,
so the landscape and augmentation passes run on them. The data file's test split is the
runs' test galaxies (ids and zs), so the peers and the verdict run on it too; it has no
``phot``, as a file made before the universe measured photometry.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch
import yaml

from study.config import config_to_dict, make_config
from study.data.dataset import write_dataset
from study.model import build_model

METRICS = (
    "sigma_nmad sigma_iqr bias bias_median outlier_frac outlier_frac_rail cde_loss cde_loss_se "
    "ks cvm ad pit_outlier_rate coverage_68 coverage_95"
).split()


def fake_redshifts(rng: np.random.Generator, n: int, z_max: float = 0.4) -> np.ndarray:
    """(n,) redshifts with an SDSS-like n(z)."""
    return rng.gamma(4.0, 0.025, size=n).clip(0.005, z_max - 0.005)


def fake_predictions(
    rng: np.random.Generator,
    n: int,
    n_bins: int,
    z_max: float,
    width: float,
    zs: np.ndarray | None = None,
):
    """Gaussian CDEs around a noisy truth, with a few catastrophic outliers: (p, zs, edges)."""
    edges = np.linspace(0.0, z_max, n_bins + 1)
    centers = 0.5 * (edges[1:] + edges[:-1])
    zs = fake_redshifts(rng, n, z_max) if zs is None else zs
    mu = zs + rng.normal(0, width, n) * (1 + zs)
    bad = rng.random(n) < 0.05
    mu[bad] = rng.uniform(0.01, z_max - 0.01, bad.sum())
    p = np.exp(-0.5 * ((centers[None, :] - mu[:, None]) / width) ** 2) + 1e-6
    p /= p.sum(axis=1, keepdims=True)
    return p, zs, edges


def make_dataset(path: Path, n_bins: int, n_test: int = 32) -> np.ndarray:
    """A small real photoz-study/1 file of noise images (no ``phot``); returns the test rows.

    Splits: ``n_test`` training galaxies, 8 validation, ``n_test`` test (the runs' test set).
    """
    rng = np.random.default_rng(1)
    n = 2 * n_test + 8
    split = np.zeros(n, np.uint8)
    split[n_test : n_test + 8] = 1
    split[n_test + 8 :] = 2
    write_dataset(
        path,
        images=rng.normal(0, 0.1, (n, 5, 64, 64)).astype(np.float32),
        zs=fake_redshifts(rng, n),
        ebv=rng.uniform(0, 0.1, n).astype(np.float32),
        flux=rng.uniform(1, 10, (n, 5)).astype(np.float32),
        split=split,
        ids=np.arange(n, dtype=np.int64),
        bin_edges=np.linspace(0, 0.4, n_bins + 1),
        source="synthetic",
        data_seed=0,
        flux_table=rng.uniform(0.5, 1.5, (n, 5, n_bins)).astype(np.float32),
    )
    return np.flatnonzero(split == 2)


def make_fake_study(
    root: Path,
    groups: tuple[str, ...] = ("baseline", "baseline_aug", "constrained"),
    seeds: tuple[int, ...] = (0, 1, 2),
    *,
    n_test: int = 300,
    n_bins: int = 40,
    epochs: int = 4,
    searched: int = 0,
) -> Path:
    """Write a study directory under ``root``; ``searched`` extra configs of group 'search'."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    data = root / "data.h5"
    test_rows = make_dataset(data, n_bins, n_test)
    with h5py.File(data, "r") as f:  # the runs predict the data file's own test galaxies
        test_zs, test_ids = f["zs"][:][test_rows], f["id"][:][test_rows]
    configs = [
        (g, g, {"g_flux": 0.1 * (g == "constrained"), "g_inv": 0.0, "g_cde": 0.0}) for g in groups
    ]
    for i in range(searched):
        gam = {k: float(10 ** rng.uniform(-3, 0)) for k in ("g_flux", "g_inv", "g_cde")}
        configs.append((f"trial{i:03d}", "search", gam))
    rows, hist = [], []
    for cid, group, gam in configs:
        for seed in seeds:
            run = root / "runs" / f"{cid}-s{seed}"
            (run / "checkpoint").mkdir(parents=True)
            base = group if group != "search" else "baseline_aug"
            cfg = make_config("tiny", base, seed, {"model.n_bins": n_bins, "data.path": str(data)})
            cfg_d = config_to_dict(cfg)
            cfg_d["loss"].update(gam)
            (run / "config.yaml").write_text(yaml.safe_dump(cfg_d))
            torch.manual_seed(seed)
            model = build_model("tiny_cnn", n_bins=n_bins, hidden=cfg.model.hidden)
            torch.save(
                {"epoch": epochs, "model": model.state_dict()}, run / "checkpoint" / "state.pt"
            )
            width = 0.02 + 0.005 * rng.random()
            p, zs, edges = fake_predictions(rng, n_test, n_bins, 0.4, width, zs=test_zs)
            with h5py.File(run / "predictions.h5", "w") as f:
                f.create_dataset("p", data=p.astype(np.float16))
                f.create_dataset("zs", data=zs)
                f.create_dataset("id", data=test_ids)
                f.create_dataset("index", data=test_rows)
                f.attrs["bin_edges"] = edges
            vals = {m: float(rng.normal(0.02, 0.003)) for m in METRICS}
            (run / "metrics.json").write_text(
                json.dumps(
                    {
                        "val": vals,
                        "test": vals,
                        "train_seconds": 12.0,
                        "epochs": epochs,
                        "device": "cpu",
                        "data": str(data),
                    }
                )
            )
            e = np.arange(1, epochs + 1)
            h = pd.DataFrame(
                {
                    "epoch": e,
                    "lr": 1e-3,
                    "ce": 4.0 - e * 0.3 + rng.normal(0, 0.05, epochs),
                    "l2": 50.0,
                    "flux": 0.2 / e,
                    "inv": np.nan if gam["g_inv"] == 0 else 0.1 / e,
                    "cde": -3.0 - e * 0.5,
                    "total": 4.0 - e * 0.3,
                    "val_loss": 4.1 - e * 0.25 + rng.normal(0, 0.05, epochs),
                    "val_cde_loss": -3.0 - e * 0.4,
                    "seconds": 3.0,
                }
            )
            h.to_parquet(run / "history.parquet")
            hist.append(h.assign(config_id=cid, seed=seed))
            row = {"config_id": cid, "seed": seed, "group": group, **gam, "lr": 1e-3}
            for m in METRICS:
                row[f"val_{m}"] = float(rng.normal(0.02, 0.003))
                row[f"test_{m}"] = float(rng.normal(0.02, 0.003))
            row.update(
                epochs=epochs,
                train_seconds=12.0 + seed,
                device="cpu",
                run_dir=f"runs/{cid}-s{seed}",
            )
            rows.append(row)
    pd.DataFrame(rows).to_parquet(root / "frame.parquet")
    pd.concat(hist, ignore_index=True).to_parquet(root / "history.parquet")
    (root / "provenance.json").write_text(json.dumps({"git_commit": "fake", "device": "cpu"}))
    if searched:
        _optuna_journal(root, configs, seeds)
    return root


def _optuna_journal(root: Path, configs, seeds) -> None:
    """A real Optuna journal with one finished trial per configuration (objective random)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(root / "optuna.journal")))
    study = optuna.create_study(
        study_name="fake", storage=storage, sampler=optuna.samplers.RandomSampler(0)
    )
    dist = optuna.distributions.FloatDistribution(1e-4, 1.0, log=True)
    rng = np.random.default_rng(3)
    for _, _, gam in configs:
        params = {k: max(v, 1e-4) for k, v in gam.items()}
        study.add_trial(
            optuna.trial.create_trial(
                params=params, distributions=dict.fromkeys(params, dist), value=float(rng.normal())
            )
        )
