"""A fake-but-valid study directory in the SPEC 8 layout, for the analysis tests.

The numbers are random, not trained: they test loading, statistics and plotting, not science.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import yaml

METRICS = (
    "sigma_nmad sigma_iqr bias bias_median outlier_frac outlier_frac_rail cde_loss cde_loss_se "
    "ks cvm ad pit_outlier_rate coverage_68 coverage_95"
).split()


def fake_predictions(rng: np.random.Generator, n: int, n_bins: int, z_max: float, width: float):
    """Gaussian CDEs around a noisy truth, with a few catastrophic outliers: (p, zs)."""
    edges = np.linspace(0.0, z_max, n_bins + 1)
    centers = 0.5 * (edges[1:] + edges[:-1])
    zs = rng.gamma(4.0, 0.025, size=n).clip(0.005, z_max - 0.005)
    mu = zs + rng.normal(0, width, n) * (1 + zs)
    bad = rng.random(n) < 0.05
    mu[bad] = rng.uniform(0.01, z_max - 0.01, bad.sum())
    p = np.exp(-0.5 * ((centers[None, :] - mu[:, None]) / width) ** 2) + 1e-6
    p /= p.sum(axis=1, keepdims=True)
    return p, zs, edges


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
    configs = [
        (g, g, {"g_flux": 0.1 * (g == "constrained"), "g_inv": 0.0, "g_cde": 0.0}) for g in groups
    ]
    for i in range(searched):
        gam = {k: float(10 ** rng.uniform(-3, 0)) for k in ("g_flux", "g_inv", "g_cde")}
        configs.append((f"trial_{i:03d}", "search", gam))
    rows, hist = [], []
    for cid, group, gam in configs:
        for seed in seeds:
            run = root / "runs" / f"{cid}_s{seed}"
            run.mkdir(parents=True)
            cfg = {
                "preset": "tiny",
                "group": group,
                "model": {"arch": "tiny_cnn", "n_bins": n_bins, "z_max": 0.4},
                "loss": {"g_l2": 1e-6, **gam, "augment": group != "baseline"},
                "optim": {"lr": 1e-3},
                "run": {"seed": seed},
            }
            (run / "config.yaml").write_text(yaml.safe_dump(cfg))
            p, zs, edges = fake_predictions(rng, n_test, n_bins, 0.4, 0.02 + 0.005 * rng.random())
            with h5py.File(run / "predictions.h5", "w") as f:
                f.create_dataset("p", data=p.astype(np.float16))
                f.create_dataset("zs", data=zs)
                f.create_dataset("id", data=np.arange(n_test, dtype=np.int64))
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
                    }
                )
            )
            h = pd.DataFrame(
                {
                    "epoch": np.arange(epochs),
                    "lr": 1e-3,
                    "train_ce": 4.0 - np.arange(epochs) * 0.3 + rng.normal(0, 0.05, epochs),
                    "train_flux": 0.2 / (1 + np.arange(epochs)),
                    "val_ce": 4.1 - np.arange(epochs) * 0.25 + rng.normal(0, 0.05, epochs),
                    "seconds": 3.0,
                }
            )
            h.to_parquet(run / "history.parquet")
            hist.append(h.assign(config_id=cid, seed=seed, group=group))
            row = {"config_id": cid, "seed": seed, "group": group, **gam, "lr": 1e-3}
            for m in METRICS:
                row[f"val_{m}"] = float(rng.normal(0.02, 0.003))
                row[f"test_{m}"] = float(rng.normal(0.02, 0.003))
            row.update(
                epochs=epochs,
                train_seconds=12.0 + seed,
                device="cpu",
                run_dir=f"runs/{cid}_s{seed}",
            )
            rows.append(row)
    pd.DataFrame(rows).to_parquet(root / "frame.parquet")
    pd.concat(hist, ignore_index=True).to_parquet(root / "history.parquet")
    (root / "provenance.json").write_text(json.dumps({"git_commit": "fake", "device": "cpu"}))
    return root
