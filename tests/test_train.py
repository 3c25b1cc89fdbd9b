"""Training: one step per group, determinism, resume, the run directory, refusals, the CLI, learning.

Data are tiny photoz-study/1 files written with ``write_dataset`` from synthetic images whose
colours encode the redshift (so a small network can learn it in a few CPU epochs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from _spec import SPEC3_METRICS

from study.config import GROUPS, make_config
from study.data.dataset import draw_split, load_split, write_dataset
from study.data.stream import resident_batches
from study.errors import UserError
from study.model import build_model
from study.train import TERMS, train, train_step
from study.train_cli import main

ROOT = Path(__file__).resolve().parents[1]
METRICS = set(SPEC3_METRICS)  # SPEC 3: the metric names, fixed
EDGES = np.linspace(0.0, 0.4, 181)
TIMES = ["seconds", "train_seconds", "images_per_s"]  # history columns that are clock readings


def colour_coded_images(zs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(N, 5, 64, 64) nanomaggies: a Gaussian blob whose band ratios encode z, plus noise."""
    n = len(zs)
    yy, xx = np.mgrid[:64, :64] - 31.5
    size = rng.uniform(2.0, 4.0, n)
    blob = np.exp(-(xx**2 + yy**2)[None] / (2 * size[:, None, None] ** 2))  # (N, 64, 64)
    colour = np.exp(np.arange(-2, 3)[None, :] * 6.0 * zs[:, None])  # (N, 5), redder with z
    amp = rng.uniform(3.0, 6.0, n)[:, None] * colour  # (N, 5) peak, nanomaggies
    images = amp[:, :, None, None] * blob[:, None] + 0.05 * rng.standard_normal((n, 5, 64, 64))
    return images.astype(np.float32)


def make_file(path: Path, n: int = 200, seed: int = 0, with_table: bool = True) -> Path:
    rng = np.random.default_rng(seed)
    zs = rng.uniform(0.01, 0.39, n)
    centers = 0.5 * (EDGES[:-1] + EDGES[1:])
    nu = (1 + centers)[None, :] / (1 + zs)[:, None]  # (N, C)
    table = nu[:, None, :] ** np.arange(1.0, 6.0)[None, :, None]  # (N, 5, C), 1 at nu = 1
    return write_dataset(
        path,
        images=colour_coded_images(zs, rng),
        zs=zs,
        ebv=rng.uniform(0.0, 0.1, n).astype(np.float32),
        flux=np.full((n, 5), np.nan, np.float32),
        split=draw_split(n, data_seed=0),
        ids=np.arange(n, dtype=np.int64) + 1000,
        bin_edges=EDGES,
        source="synthetic",
        data_seed=0,
        flux_table=table.astype(np.float32) if with_table else None,
    )


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    return make_file(tmp_path_factory.mktemp("data") / "d.h5")


def tiny(data: Path, group: str = "constrained", seed: int = 0, **overrides):
    over = {"data.path": str(data), "run.threads": 1, **overrides}
    return make_config("tiny", group, seed=seed, overrides=over)


@pytest.mark.parametrize("group", GROUPS)
def test_every_group_one_step_all_parameters_get_gradients(data_file, group):
    cfg = tiny(data_file, group)
    torch.manual_seed(0)
    model = build_model("tiny_cnn", n_bins=180, hidden=32)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    data = load_split(data_file, "train")
    (batch,) = resident_batches(data, [torch.arange(16)])
    gen = torch.Generator().manual_seed(0)
    terms = train_step(model, model, opt, batch, torch.tensor(EDGES), gen, cfg)
    assert terms.shape == (len(TERMS),)
    t = dict(zip(TERMS, terms.tolist(), strict=True))
    for k in ("ce", "l2", "flux", "cde", "total"):
        assert np.isfinite(t[k]), k
    assert np.isfinite(t["inv"]) == (cfg.loss.g_inv > 0)
    if cfg.loss.g_inv > 0:
        assert t["inv"] > 0  # two independent views differ
    w = cfg.loss
    want = t["ce"] + w.g_l2 * t["l2"] + w.g_flux * t["flux"] + w.g_cde * t["cde"]
    want += w.g_inv * (t["inv"] if w.g_inv > 0 else 0.0)
    assert t["total"] == pytest.approx(want, rel=1e-5)
    for name, prm in model.named_parameters():
        assert prm.grad is not None, name
        assert torch.isfinite(prm.grad).all(), name
        assert prm.grad.abs().sum() > 0, name
        assert torch.isfinite(prm).all(), name


def _val_test(result) -> tuple[dict, dict]:
    return result.metrics["val"], result.metrics["test"]


def test_run_directory_and_metrics_names(data_file, tmp_path):
    out = tmp_path / "run"
    res = train(tiny(data_file), out)
    names = {p.name for p in out.iterdir()}
    assert names == {
        "config.yaml",
        "metrics.json",
        "history.parquet",
        "predictions.h5",
        "checkpoint",
    }
    assert [p.name for p in (out / "checkpoint").iterdir()] == ["state.pt"]
    m = json.loads((out / "metrics.json").read_text())
    assert m == json.loads(json.dumps(res.metrics))
    assert set(m["val"]) == METRICS and set(m["test"]) == METRICS
    for key in ("train_seconds", "epochs", "device", "n_train", "n_val", "n_test", "images_per_s"):
        assert key in m
    assert m["epochs"] == 2 and m["device"].startswith("cpu")
    counts = np.bincount(draw_split(200, data_seed=0), minlength=3)
    assert (m["n_train"], m["n_val"], m["n_test"]) == tuple(counts)
    hist = pd.read_parquet(out / "history.parquet")
    assert list(hist["epoch"]) == [1, 2]
    want_cols = {"epoch", "lr", *TERMS, "val_loss", "seconds"} | {f"val_{k}" for k in METRICS}
    assert want_cols <= set(hist.columns)
    assert hist[["ce", "l2", "flux", "inv", "cde", "total", "val_loss"]].notna().all().all()
    # the last epoch's validation metrics are the reported ones
    assert m["val"]["sigma_nmad"] == hist["val_sigma_nmad"].iloc[-1]
    with h5py.File(out / "predictions.h5") as f:
        p, zs, ids = f["p"][:], f["zs"][:], f["id"][:]
    assert p.dtype == np.float16 and p.shape == (counts[2], 180)
    assert np.allclose(p.astype(np.float64).sum(axis=1), 1.0, atol=5e-3)
    split = draw_split(200, data_seed=0)
    assert np.array_equal(ids, np.flatnonzero(split == 2) + 1000)
    rng = np.random.default_rng(0)
    assert np.array_equal(zs, rng.uniform(0.01, 0.39, 200)[split == 2])  # float64 exactly


def test_same_seed_same_run_other_seed_other_run(data_file, tmp_path):
    a = train(tiny(data_file, "constrained", seed=3), tmp_path / "a")
    b = train(tiny(data_file, "constrained", seed=3), tmp_path / "b")
    c = train(tiny(data_file, "constrained", seed=4), tmp_path / "c")
    assert _val_test(a) == _val_test(b)  # bit for bit (exact float equality)
    cols = ["lr", *TERMS, "val_loss"]
    pd.testing.assert_frame_equal(a.history[cols], b.history[cols], check_exact=True)
    assert _val_test(a) != _val_test(c)
    assert a.history["total"].iloc[0] != c.history["total"].iloc[0]
    # streaming the split from host memory gives the same numbers as holding it resident
    s = train(tiny(data_file, "constrained", seed=3, **{"data.resident": False}), tmp_path / "s")
    assert _val_test(s) == _val_test(a)


def test_a_second_run_on_the_same_file_reuses_its_splits_and_gives_the_same_numbers(
    tmp_path, monkeypatch
):
    """A Ray Tune actor trains trial after trial in one process (study.train._MEMO)."""
    import study.train as train_mod

    data = make_file(tmp_path / "d.h5")
    reads: list[str] = []
    real = train_mod.load_split
    monkeypatch.setattr(train_mod, "load_split", lambda p, split, *a, **k: (
        reads.append(split), real(p, split, *a, **k))[1])  # fmt: skip
    cfg = tiny(data, "constrained", seed=3)
    a = train(cfg, tmp_path / "a")
    assert sorted(reads) == ["test", "train", "val"]
    b = train(cfg, tmp_path / "b")  # from the memo: not one read more
    assert len(reads) == 3
    assert _val_test(a) == _val_test(b)
    pd.testing.assert_frame_equal(a.history.drop(columns=TIMES), b.history.drop(columns=TIMES))
    # the same numbers as a process that read the file itself
    cli = [sys.executable, "-m", "study.train", "--preset", "tiny", "--group", "constrained"]
    cli += ["--seed", "3", "--data", str(data), "--out", str(tmp_path / "c"), "--set"]
    subprocess.run([*cli, "run.threads=1", "--set", "run.progress=false"], check=True, cwd=ROOT)
    c = json.loads((tmp_path / "c" / "metrics.json").read_text())
    assert (c["val"], c["test"]) == _val_test(a)
    # a file rewritten in place (new size or mtime) is read again
    os.utime(data, ns=(0, data.stat().st_mtime_ns + 1))
    train(cfg, tmp_path / "d")
    assert len(reads) == 6


class Interrupt(Exception):
    pass


def test_resume_after_interruption_equals_uninterrupted(data_file, tmp_path):
    cfg = tiny(data_file, "constrained", seed=1)
    whole = train(cfg, tmp_path / "whole")

    def stop(row, ckpt_dir):
        assert (ckpt_dir / "state.pt").is_file()
        raise Interrupt

    with pytest.raises(Interrupt):
        train(cfg, tmp_path / "cut", on_epoch=stop)
    assert not (tmp_path / "cut" / "metrics.json").exists()
    with pytest.raises(UserError, match="not empty"):
        train(cfg, tmp_path / "cut")
    resumed = train(cfg, tmp_path / "cut", resume=True)
    assert _val_test(resumed) == _val_test(whole)
    cols = ["epoch", "lr", *TERMS, "val_loss"]
    pd.testing.assert_frame_equal(resumed.history[cols], whole.history[cols], check_exact=True)
    with h5py.File(tmp_path / "cut" / "predictions.h5") as f1:
        with h5py.File(tmp_path / "whole" / "predictions.h5") as f2:
            assert np.array_equal(f1["p"][:], f2["p"][:])
    # resuming a finished run returns it; a changed scientific field is refused
    again = train(cfg, tmp_path / "cut", resume=True)
    assert again.metrics == resumed.metrics
    other = tiny(data_file, "constrained", seed=1, **{"optim.lr": 1e-2})
    with pytest.raises(UserError, match="optim.lr"):
        train(other, tmp_path / "cut", resume=True)


def test_refusals(data_file, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(UserError, match="not empty"):
        train(tiny(data_file), tmp_path / "full")
    with pytest.raises(UserError, match="nothing to resume"):
        train(tiny(data_file), tmp_path / "new", resume=True)
    no_table = make_file(tmp_path / "nt.h5", n=40, with_table=False)
    with pytest.raises(UserError, match="flux_table"):
        train(tiny(no_table, "flux_only"), tmp_path / "r1")
    assert not (tmp_path / "r1").exists()  # refused before any work
    train(tiny(no_table, "inv_only", **{"optim.epochs": 1}), tmp_path / "r2")  # no flux needed
    with pytest.raises(UserError, match="model.n_bins"):
        train(tiny(data_file, **{"model.n_bins": 90}), tmp_path / "r3")
    with pytest.raises(UserError, match="not found"):
        train(tiny(tmp_path / "missing.h5"), tmp_path / "r4")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_paper_preset_refuses_cpu(data_file, tmp_path):
    cfg = make_config("paper", overrides={"data.path": str(data_file)})
    with pytest.raises(UserError, match="--preset demo"):
        train(cfg, tmp_path / "r")


def test_cli_bad_input_exits_2(data_file, tmp_path, capsys):
    base = ["--preset", "tiny", "--data", str(data_file), "--out", str(tmp_path / "r")]
    assert main([*base, "--set", "optim.lrr=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "optim.lrr" in err and err.count("\n") == 1
    assert main([*base, "--set", "optim.epochs=two"]) == 2
    assert "optim.epochs" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main([*base, "--bogus"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main([*base, "--group", "everything"])
    assert e.value.code == 2
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "f").write_text("")
    assert main(base) == 2
    assert "not empty" in capsys.readouterr().err


def test_cli_end_to_end_and_resume(data_file, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "study.train", "--preset", "tiny", "--group", "cde_only"]
    cmd += ["--seed", "2", "--data", str(data_file), "--out", str(out), "--epochs", "1"]
    cmd += ["--set", "optim.lr=3e-3", "--set", "run.threads=1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "sigma_nmad" in res.stdout
    m = json.loads((out / "metrics.json").read_text())
    assert m["epochs"] == 1 and m["group"] == "cde_only" and m["seed"] == 2
    cfg_text = (out / "config.yaml").read_text()
    assert "lr: 0.003" in cfg_text and "g_cde: 0.1" in cfg_text and "epochs: 1" in cfg_text
    # the resumed run reads config.yaml and may train longer
    resume = [sys.executable, "-m", "study.train", "--out", str(out), "--resume"]
    res = subprocess.run(resume, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert res.returncode == 0 and json.loads((out / "metrics.json").read_text()) == m


def reference_nz_sigma_nmad(data: Path) -> float:
    """sigma_nmad of predicting the training-set n(z) histogram for every test galaxy."""
    with h5py.File(data) as f:
        zs, split = f["zs"][:], f["split"][:]
        edges = f.attrs["bin_edges"]
    hist = np.histogram(zs[split == 0], bins=edges)[0]
    centers = 0.5 * (edges[:-1] + edges[1:])
    zp = (hist / hist.sum()) @ centers  # one point estimate for everyone
    z = zs[split == 2]
    d = (zp - z) / (1 + z)
    return float(1.4826 * np.median(np.abs(d - np.median(d))))


def test_learns_colour_coded_redshifts(tmp_path):
    """Fast variant: the tiny preset on 600 colour-coded galaxies, 8 CPU epochs (~5 s)."""
    data = make_file(tmp_path / "learn.h5", n=600, seed=1)
    over = {"optim.epochs": 8, "optim.lr": 1e-2, "optim.plateau_patience": 20}
    cfg = tiny(data, "baseline", **over)
    res = train(cfg, tmp_path / "run")
    ref = reference_nz_sigma_nmad(data)
    got = res.metrics["test"]["sigma_nmad"]
    print(f"tiny synthetic: test sigma_nmad {got:.4f} vs n(z) reference {ref:.4f}")
    assert got < 0.5 * ref


@pytest.mark.slow
def test_demo_preset_learns_on_a_small_universe(tmp_path, monkeypatch):
    """The demo preset's reference point as shipped (baseline_aug on its own 8,000-galaxy
    universe, built into an empty cache) beats predicting the training n(z) for everyone by a
    wide margin. ~1.5-2 min on one core."""
    monkeypatch.setenv("PHOTOZ_CACHE", str(tmp_path / "cache"))
    from study.universe.build import resolve_data  # the edge's job: the core builds no dataset

    cfg = make_config("demo", "baseline_aug", overrides={"run.progress": False, "run.threads": 1})
    res = train(cfg, tmp_path / "run", data=resolve_data(cfg))
    data = Path(res.metrics["data"])
    assert data.parent == tmp_path / "cache"  # the cached universe of the preset's size
    assert res.metrics["n_train"] + res.metrics["n_val"] + res.metrics["n_test"] == 8000
    ref = reference_nz_sigma_nmad(data)
    got = res.metrics["test"]["sigma_nmad"]
    print(f"demo universe: test sigma_nmad {got:.4f} vs n(z) reference {ref:.4f}")
    # the n(z) reference is 0.0495 (universe v5, 8,000 galaxies, seed 0); baseline_aug seed 0
    # reaches 0.0152 (the AVX-512 development host). 0.33 (0.0163) leaves room for BLAS/CPU
    # differences while failing the n(z), the pre-issue-12 recipe (0.028) and this preset
    # without augmentation (group baseline: 0.0174, 1.5% outliers)
    assert got < 0.33 * ref


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("resident", [True, False])
def test_cuda_bf16_channels_last_float16_images(data_file, tmp_path, resident):
    over = {"run.device": "cuda", "data.image_dtype": "float16", "data.resident": resident}
    res = train(tiny(data_file, "constrained", **over), tmp_path / "run")
    assert res.metrics["device"].startswith("cuda")
    assert np.isfinite(res.history[["ce", "flux", "inv", "cde", "total"]].to_numpy()).all()
    assert all(np.isfinite(v) for v in res.metrics["test"].values())


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_compiled(data_file, tmp_path):
    over = {"run.device": "cuda", "run.compile": True, "run.compile_mode": "default"}
    res = train(tiny(data_file, "constrained", **over), tmp_path / "run")
    assert np.isfinite(res.history["total"]).all()


def test_device_name_on_cuda_names_the_card(monkeypatch):
    """Runs without a GPU: the CUDA branch of metrics.json's "device" (get_device_name mocked)."""
    from study.machine import device_name

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "NVIDIA H100")
    assert device_name(torch.device("cuda")) == "cuda (NVIDIA H100)"
    assert device_name(torch.device("cpu")).startswith("cpu (")


# the demo preset's recipe on the tiny data: small_cnn with its crop, widths, apertures,
# aperture layer and dereddening, one-cycle schedule, Gaussian targets, best-validation reported
# model
RECIPE = {
    "model.arch": "small_cnn",
    "model.crop": 16,
    "model.widths": (16, 16, 32, 32, 64, 64),
    "model.apertures": (2.0, 4.0, 8.0),
    "model.aperture_hidden": 16,
    "model.deredden": True,
    "model.hidden": 16,
    "loss.target_sigma": 0.008,
    "optim.schedule": "onecycle",
    "optim.reported": "best_val_ce",
    "optim.epochs": 3,
}


def test_demo_recipe_is_deterministic_resumable_and_reports_the_best_epoch(data_file, tmp_path):
    cfg = tiny(data_file, "constrained", seed=2, **RECIPE)
    whole = train(cfg, tmp_path / "whole")
    again = train(cfg, tmp_path / "again")
    assert _val_test(whole) == _val_test(again)  # bit for bit

    def stop(row, ckpt_dir):
        if row["epoch"] == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(cfg, tmp_path / "cut", on_epoch=stop)
    resumed = train(cfg, tmp_path / "cut", resume=True)
    assert _val_test(resumed) == _val_test(whole)
    cols = ["epoch", "lr", *TERMS, "val_loss"]
    pd.testing.assert_frame_equal(resumed.history[cols], whole.history[cols], check_exact=True)
    # the reported epoch is the one of lowest validation CE, and the val block is its row
    h, m = whole.history, whole.metrics
    best = int(h["val_loss"].idxmin()) + 1
    assert (m["reported"], m["reported_epoch"]) == ("best_val_ce", best)
    assert m["val"]["cde_loss"] == h["val_cde_loss"].iloc[best - 1]
    # one-cycle: rises from lr / 25, then ends far below the peak
    lr = cfg.optim.lr
    assert h["lr"].iloc[0] == pytest.approx(lr / 25)
    assert h["lr"].iloc[-1] < lr
    # a one-cycle run cannot be resumed with other epochs (its schedule is laid out over them)
    longer = tiny(data_file, "constrained", seed=2, **{**RECIPE, "optim.epochs": 4})
    with pytest.raises(UserError, match="one-cycle"):
        train(longer, tmp_path / "cut", resume=True)


def test_reported_model_is_what_analysis_loads(data_file, tmp_path):
    from analysis.results import load_trained_model

    cfg = tiny(data_file, "baseline", seed=0, **RECIPE)
    res = train(cfg, tmp_path / "r")
    _, model = load_trained_model(tmp_path / "r")
    state = torch.load(tmp_path / "r" / "checkpoint" / "state.pt", weights_only=True)
    assert state["reported"]["epoch"] == res.metrics["reported_epoch"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, state["reported"]["model"][k]), k


def test_background_fill_reaches_both_views():
    """``augment.fill`` picks the operator of the augmented input and the invariance view."""
    from study.augment import augment, sigma_clipped_stats
    from study.train import augmented_views

    x = 0.05 * torch.randn(4, 5, 24, 24, generator=torch.Generator().manual_seed(0))
    x[:, :, 10:14, 10:14] += 3.0
    stats = sigma_clipped_stats(x)
    for fill in ("normal", "truncated"):
        overrides = {"augment.fill": fill, "loss.augment": True}
        cfg = make_config("tiny", "constrained", overrides=overrides)
        first, view = augmented_views(x, None, torch.Generator().manual_seed(1), cfg)
        gen = torch.Generator().manual_seed(1)
        assert torch.equal(first, augment(x, gen, stats, fill))
        assert view is not None and torch.equal(view, augment(x, gen, stats, fill))


def test_truncated_fill_is_refused_with_segmentation():
    """The segmentation mode redraws every sky pixel: only the normal fill keeps the sky's law."""
    overrides = {"augment.fill": "truncated", "augment.background": "segmentation"}
    with pytest.raises(UserError, match="augment.fill='truncated' must be normal with augment"):
        make_config("tiny", "baseline_aug", overrides=overrides)
