"""Install packages into this Python's environment with uv, under pip's own settings.

``python tools/uv_install.py ARG...`` runs ``uv pip install --python THIS_PYTHON ARG...`` (the
Makefile: ``-e '.[report,peers]'``). uv resolves, downloads and unpacks in parallel: on the 2-core
development machine it installs the project in about a fifth of pip's time (BENCHMARKS.md "make
demo's install"). uv does not read pip's configuration (pip.conf, ``PIP_*`` variables), so this
script carries over the settings that say where packages come from, read with ``pip config
list``: a machine whose pip is pointed at a mirror, a wheel folder or a constraints file installs
the same releases either way. uv's own ``UV_*`` variables still apply on top.

Standard library only: it runs before the project is installed.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys

# pip's option -> uv's flag; every value may hold several whitespace-separated items (pip's rule)
_LIST_FLAGS = {
    "index-url": "--index-url",
    "extra-index-url": "--extra-index-url",
    "find-links": "--find-links",
    "constraint": "--constraint",
    "trusted-host": "--allow-insecure-host",
}
# pip's option -> uv's environment variable
_ENV = {"cert": "SSL_CERT_FILE", "default-timeout": "UV_HTTP_TIMEOUT", "timeout": "UV_HTTP_TIMEOUT"}
# pip's settings by precedence, lowest first: its config files' [global], then [install], then
# the PIP_* environment (``pip config list`` names them global.X, install.X, :env:.X)
_SECTIONS = ("global", "install", ":env:")


def pip_settings(config_list: str) -> dict[str, str]:
    """The effective ``pip install`` settings in the output of ``pip config list``."""
    found: dict[str, dict[str, str]] = {s: {} for s in _SECTIONS}
    for line in config_list.splitlines():
        key, sep, value = line.partition("=")
        section, _, name = key.rpartition(".")
        if sep and section in found:
            found[section][name] = ast.literal_eval(value)
    settings: dict[str, str] = {}
    for section in _SECTIONS:
        settings |= found[section]
    return settings


def uv_arguments(settings: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """(flags, environment variables) that give ``uv pip install`` the same package sources."""
    flags: list[str] = []
    for name, flag in _LIST_FLAGS.items():
        for item in settings.get(name, "").split():
            flags += [flag, item]
    if settings.get("no-index", "").lower() in ("1", "true", "yes", "on"):
        flags.append("--no-index")
    env = {var: settings[name] for name, var in _ENV.items() if name in settings}
    # pip takes the best release across all its indexes; uv's default takes each package from
    # the first index that has it, which on a partial mirror means old releases
    env["UV_INDEX_STRATEGY"] = "unsafe-best-match"
    return flags, env


def main(argv: list[str]) -> int:
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True
    ).stdout
    flags, env = uv_arguments(pip_settings(listed))
    from uv import find_uv_bin  # the uv wheel pip put into this environment

    command = [find_uv_bin(), "pip", "install", "--python", sys.executable, *flags, *argv]
    return subprocess.run(command, env={**env, **os.environ}).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
