"""Table 1 writer and study loader on hand-made frames and a fake study directory."""

from __future__ import annotations

import math

import h5py
import numpy as np
import pandas as pd
import pytest
from _fake_study import METRICS, make_fake_study

from analysis.results import load_predictions, load_study
from analysis.table import LITERATURE, table1, to_markdown, write_table1
from study.errors import UserError


def _frame(seeds=(0, 1, 2)) -> pd.DataFrame:
    rows = []
    for g, offset in (("baseline", 0.0), ("constrained", 1.0)):
        for s in seeds:
            row = {"config_id": g, "seed": s, "group": g, "run_dir": f"runs/{g}_{s}"}
            for m in METRICS:
                row[f"test_{m}"] = offset + s  # hand values: mean offset + 1, std 1
                row[f"val_{m}"] = 0.0
            row["train_seconds"] = 3600.0 * (1 + s)
            rows.append(row)
    return pd.DataFrame(rows)


def test_table1_mean_std_n():
    t = table1(_frame())
    ours = t[t["source"] == "this study"].set_index("row")
    assert list(ours.index) == ["baseline", "constrained"]
    assert ours.loc["constrained", "sigma_nmad_mean"] == pytest.approx(2.0)
    assert ours.loc["constrained", "sigma_nmad_std"] == pytest.approx(1.0)
    assert ours.loc["baseline", "n"] == 3
    assert ours.loc["baseline", "train_hours_mean"] == pytest.approx(2.0)
    lit = t[t["source"].str.startswith("literature")]
    assert len(lit) == len(LITERATURE)
    paper = lit.set_index("row").loc["paper: Physically Constrained"]
    assert paper["sigma_nmad_mean"] == pytest.approx(1.12e-2)
    assert paper["outlier_frac_mean"] == pytest.approx(0.0188)
    assert math.isnan(lit.set_index("row").loc["Dey et al.", "cde_loss_mean"])


def test_table1_markdown_cells():
    md = to_markdown(table1(_frame()))
    line = next(ln for ln in md.splitlines() if ln.startswith("| **constrained**"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[2] == "2 ± 1 (n=3)"  # sigma_nmad
    assert cells[4] == "200 ± 100 (n=3)"  # outlier fraction in per cent
    assert "*1.88*" in md  # paper's constrained outlier percentage, marked literature
    assert "another scale" in md


def test_gamma_study_rows_picked_on_validation(tmp_path):
    study = make_fake_study(
        tmp_path / "s", groups=("baseline", "baseline_aug"), seeds=(0, 1), searched=5
    )
    frame = load_study(study).frame
    frame.loc[frame["config_id"] == "trial003", "val_cde_loss"] = -1.0  # clearly best on val
    t = table1(frame, best=2)
    ours = t[t["source"] == "this study"]
    assert list(ours["group"]) == ["baseline", "baseline_aug", "search", "search"]
    assert ours.iloc[2]["config_id"] == "trial003"
    assert (ours["n"] == 2).all()
    frame.loc[frame["config_id"] == "trial001", "val_coverage_68"] = 9.0  # best when maximising
    top = table1(frame, best=1, select_on="val_coverage_68", mode="max")
    assert top[top["group"] == "search"]["config_id"].tolist() == ["trial001"]
    md, csv = write_table1(frame, tmp_path / "out", best=2)
    back = pd.read_csv(csv)
    assert len(back) == 4 + len(LITERATURE) and "trial003" in md.read_text()


def test_load_study_and_predictions(tmp_path):
    root = make_fake_study(tmp_path / "s", seeds=(0, 1))
    study = load_study(root)
    assert study.groups == ["baseline", "baseline_aug", "constrained"]
    assert study.by == "group"
    run = study.run_dir(study.runs("constrained").iloc[0])
    pred = study.predictions(run)
    assert pred.p.shape == (300, 40) and pred.edges.shape == (41,)
    np.testing.assert_allclose(pred.p.sum(axis=1), 1.0, rtol=1e-6)
    assert not study.history.empty


def test_missing_or_foreign_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no such study directory"):
        load_study(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="frame.parquet: results frame is missing"):
        load_study(tmp_path / "empty")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "frame.parquet").write_text("not parquet")
    with pytest.raises(UserError, match="not a Parquet"):
        load_study(tmp_path / "foreign")
    pd.DataFrame({"config_id": []}).to_parquet(tmp_path / "foreign" / "frame.parquet")
    with pytest.raises(UserError, match="no run of this study finished"):
        load_study(tmp_path / "foreign")
    pd.DataFrame({"a": [1]}).to_parquet(tmp_path / "foreign" / "frame.parquet")
    with pytest.raises(UserError, match="column 'config_id' missing"):
        load_study(tmp_path / "foreign")
    run = tmp_path / "run"
    run.mkdir()
    with h5py.File(run / "predictions.h5", "w") as f:
        f.create_dataset("x", data=[1])
    with pytest.raises(UserError, match="dataset 'p' missing"):
        load_predictions(run)
    (run / "predictions.h5").write_text("junk")
    with pytest.raises(UserError, match="not an HDF5 file"):
        load_predictions(run)
    for err in (UserError,):
        assert issubclass(err, ValueError)
