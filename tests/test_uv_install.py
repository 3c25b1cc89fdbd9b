"""tools/uv_install.py: uv gets pip's package sources, read by pip itself (``pip config list``)."""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
from pathlib import Path

TOOL = runpy.run_path(str(Path(__file__).parents[1] / "tools" / "uv_install.py"))


def _pip_config_list(tmp_path: Path, text: str, env: dict[str, str]) -> str:
    """What this venv's pip says of a config file ``text`` and PIP_* variables ``env`` alone."""
    cfg = tmp_path / "pip.conf"
    cfg.write_text(text)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    # PIP_CONFIG_FILE: pip reads this file, after (so over) the machine's own files
    clean |= {"PIP_CONFIG_FILE": str(cfg), **env}
    return subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"],
        capture_output=True, text=True, check=True, env=clean,
    ).stdout  # fmt: skip


def test_pip_settings_follow_pips_precedence(tmp_path):
    listed = _pip_config_list(
        tmp_path,
        "[global]\nindex-url = https://mirror.example/simple\nfind-links = /wheels/a\n"
        "timeout = 30\n[install]\nfind-links = /wheels/b\n",
        {"PIP_CONSTRAINT": "/c/one.txt /c/two.txt", "PIP_TIMEOUT": "99"},
    )
    s = TOOL["pip_settings"](listed)
    assert s["index-url"] == "https://mirror.example/simple"
    assert s["find-links"] == "/wheels/b"  # [install] over [global]
    assert s["timeout"] == "99"  # the environment over the files
    assert s["constraint"] == "/c/one.txt /c/two.txt"


def test_uv_arguments_carry_every_source(tmp_path):
    flags, env = TOOL["uv_arguments"](
        {
            "index-url": "https://mirror.example/simple",
            "extra-index-url": "file:///opt/a/simple file:///opt/b/simple",
            "find-links": "/wheels",
            "constraint": "/c.txt",
            "no-index": "true",
            "cert": "/ca.pem",
            "timeout": "99",
            "disable-pip-version-check": "1",
        }
    )
    assert flags == [
        "--index-url", "https://mirror.example/simple",
        "--extra-index-url", "file:///opt/a/simple", "--extra-index-url", "file:///opt/b/simple",
        "--find-links", "/wheels", "--constraint", "/c.txt", "--no-index",
    ]  # fmt: skip
    assert env == {
        "SSL_CERT_FILE": "/ca.pem",
        "UV_HTTP_TIMEOUT": "99",
        "UV_INDEX_STRATEGY": "unsafe-best-match",  # pip's rule: the best release of all indexes
    }


def test_no_pip_settings_leave_uv_on_its_defaults():
    flags, env = TOOL["uv_arguments"](TOOL["pip_settings"](""))
    assert flags == [] and env == {"UV_INDEX_STRATEGY": "unsafe-best-match"}
