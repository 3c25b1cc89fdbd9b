"""notebooks/study.ipynb executes top to bottom (nbclient) on a study, so it never rots."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from _fake_study import make_fake_study

ROOT = Path(__file__).resolve().parents[1]


def test_notebook_executes(tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    study = make_fake_study(tmp_path / "study", seeds=(0, 1), n_test=100)
    monkeypatch.setenv("PHOTOZ_STUDY", str(study))  # the kernel inherits the environment
    nb = nbformat.read(ROOT / "notebooks" / "study.ipynb", as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    )
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(str(o.get("data", {}).get("text/markdown", "")) for o in outputs)
    assert "Pasquet et al." in text and "(n=2)" in text  # Table 1 with n
    plots = [o for o in outputs if "application/vnd.plotly.v1+json" in o.get("data", {})]
    assert len(plots) >= 3  # PIT, zp-zs, forest
