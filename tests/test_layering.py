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


def _imported_modules(path: Path) -> set[str]:
    """Every module a source file imports, at any depth (lazy imports inside functions too)."""
    import ast

    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_the_data_package_does_not_import_the_universe():
    """Reading order data file -> universe -> core: the universe writes data files, never the
    reverse. The command line (``__main__``, which wires the ``universe`` subcommand) passes the
    universe's gain in; ``templates`` still reuses the universe's SED code (audit item 7)."""
    allowed = {"__main__.py", "templates.py"}
    offenders = {
        p.name: sorted(m for m in _imported_modules(p) if m.startswith("study.universe"))
        for p in sorted((ROOT / "study" / "data").glob("*.py"))
        if p.name not in allowed
    }
    assert {k: v for k, v in offenders.items() if v} == {}
