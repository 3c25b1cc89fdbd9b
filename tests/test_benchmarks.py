"""The benchmark CLIs on the tiny preset (smoke), the timing statistics, and the step variants."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from benchmarks import step as bench_step
from benchmarks.timing import interleaved, ratio_summary, summary
from study.config import make_config
from study.data.stream import Batch
from study.model import PhotoZNet
from study.train import train_step


def test_summary_matches_numpy_percentiles():
    xs = [5.0, 1.0, 4.0, 2.0, 3.0, 10.0]
    s = summary(xs)
    q1, med, q3 = np.percentile(xs, [25, 50, 75])  # numpy's linear = "inclusive" quantiles
    assert s["median_s"] == pytest.approx(med)
    assert s["iqr_s"] == pytest.approx(q3 - q1)
    assert s["n"] == 6 and s["min_s"] == 1.0
    r = ratio_summary([2.0, 4.0, 6.0], [1.0, 2.0, 2.0])
    assert r["median"] == pytest.approx(2.0) and r["n"] == 3


def test_interleaved_rotates_order_and_counts_calls():
    calls: list[str] = []
    fns = {k: (lambda k=k: calls.append(k)) for k in "abc"}
    res = interleaved(fns, calls=2, repeats=3, warmup=1, device="cpu")
    assert calls[:3] == ["a", "b", "c"]  # warm-up, one each
    timed = calls[3:]
    assert len(timed) == 3 * 3 * 2
    firsts = [timed[i] for i in range(0, len(timed), 6)]
    assert firsts == ["a", "b", "c"]  # repeat r starts with candidate r
    assert all(len(v["wall"]) == len(v["cpu"]) == 3 for v in res.values())


def test_step_cli_tiny_writes_every_key(tmp_path):
    out = tmp_path / "step.json"
    argv = ["--preset", "tiny", "--device", "cpu", "--steps", "1", "--repeats", "2"]
    argv += ["--warmup", "1", "--flux-repeats", "1", "--flux-batch", "2", "--feeds"]
    assert bench_step.main([*argv, "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    for key in (
        "aug_over_baseline",
        "constrained_over_baseline",
        "constrained_joint_over_baseline",
        "flux_reference_over_fast",
        "aug_fraction_of_step",
        "resident_over_synthetic",
        "streamed_over_resident",
    ):
        assert np.isfinite(res[key]) and res[key] > 0, key
    assert set(res["images_per_s"]) >= {"baseline", "baseline_aug", "constrained"}
    assert res["peak_memory_mb"] is None  # CUDA only
    assert res["device"]["device"] == "cpu" and res["clock"] == "cpu"
    assert len(res["raw"]["baseline"]["cpu"]) == 2
    assert res["flux_reference_over_fast"] > 1  # the in-graph integrals are the slow way


def test_step_cli_rejects_unknown_group(capsys):
    assert bench_step.main(["--preset", "tiny", "--groups", "baseline,nope"]) == 2
    assert "--groups" in capsys.readouterr().err


class _NoBatchNorm(torch.nn.Module):
    """Per-sample backbone (no batch statistics): joint and two-pass steps must agree."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(5, 4, 3, stride=4)
        self.pool = torch.nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(torch.relu(self.conv(x))).flatten(1)


def test_joint_step_equals_train_step_without_batch_norm():
    """benchmarks.step.joint_step (both views in one 2B pass) takes the step train_step takes
    (two passes of B) when no BatchNorm makes the passes differ."""
    cfg = make_config("tiny", "constrained")
    batch = bench_step.synthetic_batch(6, cfg.model.n_bins, torch.device("cpu"))
    edges = torch.linspace(0.0, 0.4, cfg.model.n_bins + 1)
    results = []
    for joint in (True, False):
        torch.manual_seed(0)
        model = PhotoZNet(_NoBatchNorm(), 4, n_bins=cfg.model.n_bins, hidden=8)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        gen = torch.Generator().manual_seed(1)
        step = bench_step.joint_step if joint else train_step
        terms = step(model, model, opt, batch, edges, gen, cfg)
        results.append((terms, [p.detach().clone() for p in model.parameters()]))
    (t1, w1), (t2, w2) = results
    torch.testing.assert_close(t1, t2, rtol=1e-5, atol=1e-6)
    for a, b in zip(w1, w2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "backend",
    [
        "aot_eager",  # graph capture + AOT autograd: seconds
        pytest.param("inductor", marks=pytest.mark.slow),  # C++ codegen: ~2 minutes on 2 cores
    ],
)
def test_compiled_step_on_cpu_matches_eager(backend):
    # torch.compile of the tiny model runs the same step as eager (the run.compile path).
    cfg = make_config("tiny", "constrained")
    batch = bench_step.synthetic_batch(8, cfg.model.n_bins, torch.device("cpu"))
    edges = torch.linspace(0.0, 0.4, cfg.model.n_bins + 1)
    out = []
    for compiled in (False, True):
        torch.manual_seed(0)
        from study.model import build_model

        model = build_model("tiny_cnn", n_bins=cfg.model.n_bins, hidden=cfg.model.hidden)
        step_model = torch.compile(model, backend=backend) if compiled else model
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        gen = torch.Generator().manual_seed(1)
        out.append(train_step(step_model, model, opt, batch, edges, gen, cfg))
    torch.testing.assert_close(out[0], out[1], rtol=1e-3, atol=1e-4)


def test_synthetic_batch_shapes():
    b = bench_step.synthetic_batch(3, 7, torch.device("cpu"))
    assert isinstance(b, Batch)
    assert b.images.shape == (3, 5, 64, 64) and b.flux_table.shape == (3, 5, 7)
    assert (b.zs >= 0).all() and (b.zs <= 0.4).all()


def test_data_cli_small_file(tmp_path):
    from benchmarks import data as bench_data

    out = tmp_path / "data.json"
    argv = ["--n", "512", "--batch-size", "64", "--repeats", "2", "--universe-n", "0"]
    assert bench_data.main([*argv, "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    n_train = res["load"]["galaxies"]
    assert res["feed"]["batches_per_epoch"] == n_train // 64
    for name in ("resident", "streamed"):
        assert res["feed"][name]["batches_per_s"] > 0
    assert bench_data.main(["--n", "64", "--batch-size", "64"]) == 2  # fewer than two batches


def test_cost_hours_by_hand(tmp_path, capsys):
    from benchmarks import cost

    # The paper's 7.2 h baseline at 900 img/s is 466,169 images x 50 epochs (its training set
    # less validation): 466169 * 50 / 900 / 3600 = 7.193 h, plus evaluation at a third of the
    # cost: (20000 * 50 + 121543) / 3 / 900 / 3600 = 0.1154 h.
    assert cost.trial_hours(900) == pytest.approx(7.1939 + 0.1154, abs=1e-3)
    r = cost.row("x", "y", 4000.0, 2.1)
    assert r["constrained_trial_h"] == pytest.approx(
        (466169 * 50 * 2.1 + (20000 * 50 + 121543) / 3) / 4000 / 3600
    )
    assert r["gamma_study_h"] == pytest.approx(200 * r["constrained_trial_h"])
    step = {
        "device": {"device_name": "NVIDIA H100"},
        "clock": "wall",
        "preset": "paper",
        "arch": "resnet50_hayat",
        "batch_size": 128,
        "images_per_s": {"baseline": 5000.0},
        "constrained_over_baseline": 2.0,
    }
    f = tmp_path / "gpu.json"
    f.write_text(json.dumps(step))
    assert cost.main(["--step", str(f)]) == 0
    text = capsys.readouterr().out
    assert "projection" in text and "NVIDIA H100" in text and "4,900" in text
    assert cost.main(["--step", str(tmp_path / "missing.json")]) == 2


def test_cost_with_a_pruned_study(tmp_path, capsys):
    """--pruned: the study column times the trial-epoch fraction of that study's frame."""
    import pandas as pd

    from benchmarks import cost

    study = tmp_path / "pruned"
    study.mkdir()
    # 3 configurations x 2 seeds of 10 epochs unpruned = 60; ran 10+10+10+10+1+1 = 42
    frame = pd.DataFrame({"epochs": [10, 10, 10, 10, 1, 1], "stopped": [False] * 4 + [True] * 2})
    frame.to_parquet(study / "frame.parquet")
    assert cost.pruned_fraction(study) == pytest.approx(42 / 60)
    assert cost.main(["--pruned", str(study), "--json", str(tmp_path / "rows.json")]) == 0
    text = capsys.readouterr().out
    paper = 200 * 24.5  # the paper's row: 40 x 5 constrained trials of 24.5 h
    assert "paired halving, 70% of the trial-epochs (h)" in text.splitlines()[0]
    assert f"| {paper:,.0f} | {paper / 40:,.1f}x | {paper * 0.7:,.0f} |" in text
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert rows[0]["paired_halving_study_h"] == pytest.approx(paper * 0.7)
    assert cost.main(["--pruned", str(tmp_path / "nothing")]) == 2


def test_step_under_bf16_autocast_and_channels_last_on_cpu():
    # The CUDA settings (bf16 autocast, NHWC) exercised on the CPU: the step's losses take
    # bf16 logits, the augmentation keeps the layout, and the terms stay near float32's.
    from study.model import build_model

    cfg = make_config("tiny", "constrained")
    batch = bench_step.synthetic_batch(8, cfg.model.n_bins, torch.device("cpu"))
    batch = batch._replace(images=batch.images.contiguous(memory_format=torch.channels_last))
    edges = torch.linspace(0.0, 0.4, cfg.model.n_bins + 1)
    out = []
    for low in (False, True):
        torch.manual_seed(0)
        model = build_model("tiny_cnn", n_bins=cfg.model.n_bins, hidden=cfg.model.hidden)
        model = model.to(memory_format=torch.channels_last)

        def step_model(x, ebv, model=model, low=low):
            assert x.is_contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=low):
                return model(x, ebv)

        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        gen = torch.Generator().manual_seed(1)
        out.append(train_step(step_model, model, opt, batch, edges, gen, cfg))
    assert torch.isfinite(out[1]).all()
    torch.testing.assert_close(out[1], out[0], rtol=0.05, atol=0.05)


def test_halving_comparison_by_hand(tmp_path, capsys):
    """benchmarks.halving: best seed mean +- std of finished configurations, trial-epochs."""
    import pandas as pd
    import yaml

    from benchmarks import halving as bench

    def study(name: str, rows: list[tuple], stopped: bool):
        d = tmp_path / name
        d.mkdir()
        space = {"objective": {"metric": "val_cde_loss", "mode": "min"}}
        (d / "search_space.yaml").write_text(yaml.safe_dump(space))
        cols = ["config_id", "seed", "val_cde_loss", "epochs", "stopped"]
        frame = pd.DataFrame(rows, columns=cols)
        frame = frame.assign(group="search", g_flux=0.0, g_inv=0.1, g_cde=0.0, lr=1e-3)
        (frame if stopped else frame.drop(columns="stopped")).to_parquet(d / "frame.parquet")
        return d

    # unpruned: a = (1 + 3) / 2 = 2 (std sqrt(2)), b = 4, c = 5; 3 x 2 x 10 = 60 trial-epochs
    full = [("a", 0, 1.0, 10, False), ("a", 1, 3.0, 10, False), ("b", 0, 4.0, 10, False)]
    full += [("b", 1, 4.0, 10, False), ("c", 0, 5.0, 10, False), ("c", 1, 5.0, 10, False)]
    # pruned: b stopped at epoch 1 (a better rung value than the final 2 of a: not finished)
    pr = [("a", 0, 1.0, 10, False), ("a", 1, 3.0, 10, False), ("b", 0, 0.5, 1, True)]
    pr += [("b", 1, 0.5, 1, True), ("c", 0, 5.0, 3, True), ("c", 1, 5.0, 3, True)]
    p, u = study("p", pr, True), study("u", full, False)
    assert bench.main([str(p), str(u), "--json", str(tmp_path / "h.json")]) == 0
    out = json.loads((tmp_path / "h.json").read_text())
    assert out["pruned"]["best"]["config_id"] == "a" and out["pruned"]["trial_epochs"] == 28
    assert out["unpruned"]["trial_epochs"] == 60 and out["pruned"]["unpruned_trial_epochs"] == 60
    assert out["unpruned"]["best"]["std"] == pytest.approx(2**0.5)
    assert out["best_difference"] == 0 and out["within_one_std"] and out["at_most_half"]
    assert out["trial_epoch_fraction"] == pytest.approx(28 / 60)
    assert "47% of the unpruned study's (at most half)" in capsys.readouterr().out
    assert bench.main([str(p), str(tmp_path / "none")]) == 2


def test_probe_learns_colour_coded_redshifts_and_scores_a_sample(tmp_path, capsys):
    """benchmarks.probe (issue 12's MLP on the demo network's aperture magnitudes) on a file whose
    colours encode z: its test sigma_nmad is far below predicting the training n(z), and
    --sample scores every galaxy of another file with the same metrics."""
    from benchmarks import probe
    from tests.test_train import make_file, reference_nz_sigma_nmad

    data = make_file(tmp_path / "d.h5", n=600)
    argv = ["--data", str(data), "--epochs", "40", "--seeds", "0", "--sample", str(data)]
    assert probe.main(argv) == 0
    out = capsys.readouterr().out
    line = next(s for s in out.splitlines() if s.strip().startswith("epochs  40 seed 0"))
    got = float(line.split("test sigma_nmad ")[1].split()[0])
    assert np.isfinite(got) and got < 0.5 * reference_nz_sigma_nmad(data), line
    assert "| sample sigma_nmad" in line


def test_probe_features_are_the_demo_networks_aperture_path():
    from benchmarks import probe
    from study.model import SmallCNN

    gen = torch.Generator().manual_seed(0)
    images = torch.rand(3, 5, 64, 64, generator=gen)
    ebv = torch.tensor([0.0, 0.05, 0.2])
    x = probe.features(images, ebv, 16, (2.0, 4.0))
    assert x.shape == (3, 5 * 2 + 1)
    want = SmallCNN(crop=16, apertures=(2.0, 4.0), deredden=True).aperture_mags(images, ebv)
    torch.testing.assert_close(x[:, :-1], want)
    torch.testing.assert_close(x[:, -1], ebv)
