"""SPEC 7 for every import path: the training core imports and trains with the data-building,
study and report libraries unavailable (as on the GPU image, where none of them is installed)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from test_train import make_file

ROOT = Path(__file__).resolve().parents[1]
BLOCKED = ("astropy", "speclite", "kcorrect", "photutils", "ray", "optuna", "plotly", "rail", "qp")
CORE = ("model", "augment", "losses", "metrics", "train", "config", "data.dataset", "rundir")

SCRIPT = """
import importlib.abc, sys

BLOCKED = {blocked!r}

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"blocked by the layering test: {{name}}")
        return None

sys.meta_path.insert(0, Block())
for mod in {core!r}:
    importlib.import_module("study." + mod)

from study.config import make_config
from study.train import train

cfg = make_config("tiny", "constrained", overrides={{"run.threads": 1, "optim.epochs": 1}})
res = train(cfg, {out!r}, data={data!r})
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED or m.startswith("study.universe") or m == "study.data.aperture")
print("loaded:", loaded, "sigma_nmad:", res.metrics["test"]["sigma_nmad"])
"""


def test_core_trains_with_the_edge_libraries_blocked(tmp_path):
    data = make_file(tmp_path / "d.h5", n=120)
    script = SCRIPT.format(blocked=BLOCKED, core=CORE, out=str(tmp_path / "run"), data=str(data))
    res = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "loaded: []" in res.stdout
    assert (tmp_path / "run" / "metrics.json").is_file()


def test_core_refuses_to_build_a_dataset(tmp_path):
    """With no data given, train() says how to resolve one instead of building a universe."""
    import pytest

    from study.config import make_config
    from study.errors import UserError
    from study.train import train

    with pytest.raises(UserError, match="resolve the default universe"):
        train(make_config("tiny", "baseline"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


# The data package's one module that may reach the universe: its CLI, whose `universe` command is
# the builder's (python -m study.data universe) and which passes the renderer's gain to
# `photometry`. aperture and templates get what they need passed in or from study.data.spectra.
DATA_TO_UNIVERSE = {"__main__.py"}


def _imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function (from its syntax tree)."""
    import ast

    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_the_data_package_does_not_import_the_universe():
    """Reading order data file -> universe -> core: study/data never reaches back (issue 10)."""
    files = sorted((ROOT / "study" / "data").glob("*.py"))
    assert len(files) > 5
    back = {
        f.name: sorted(m for m in _imported_modules(f) if m.startswith("study.universe"))
        for f in files
        if f.name not in DATA_TO_UNIVERSE
    }
    assert {k: v for k, v in back.items() if v} == {}
    # the scan sees such imports: build.py's own `from study.universe import sed`, in main's
    # templates.py's form (`from study.universe import sed` inside a function)
    assert "study.universe.sed" in _imported_modules(ROOT / "study" / "universe" / "build.py")
