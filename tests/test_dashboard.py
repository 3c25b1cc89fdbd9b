"""The Ray dashboard a study prints answers with the token ``ray get-auth-token`` prints.

A local Ray (token authentication on, as Ray 2.6x does by default) in a child process with its
own HOME, so the token it writes to ``~/.ray/auth_token`` and the ``RAY_AUTH_MODE`` it sets
never reach the user's home or the other tests; a real HTTP client (urllib) asks the
dashboard's API with no token, a wrong one and the printed one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from study.run import dashboard_lines

CHILD = r"""
import json, socket, subprocess, sys, time, urllib.error, urllib.request
from pathlib import Path
import ray
from study.run import dashboard_lines, ray_token_auth_enabled

with socket.socket() as s:  # a free port: a CI study may hold 8265
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
ctx = ray.init(num_cpus=1, include_dashboard=True, dashboard_port=port)
ray_cli = Path(sys.executable).with_name("ray")
token = subprocess.run([str(ray_cli), "get-auth-token"], capture_output=True, text=True,
                       timeout=60, check=True).stdout.strip()

def get(path, token=None):
    req = urllib.request.Request(f"http://{ctx.dashboard_url}{path}")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code

deadline = time.monotonic() + 30  # the dashboard's HTTP server may lag ray.init by a moment
while True:
    try:
        status = {"none": get("/api/cluster_status"), "wrong": get("/api/cluster_status", "x" * 64),
                  "token": get("/api/cluster_status", token), "version": get("/api/version", token)}
        break
    except (urllib.error.URLError, ConnectionError):
        if time.monotonic() > deadline:
            raise
        time.sleep(0.5)
print(json.dumps({"status": status, "token_auth": ray_token_auth_enabled(),
                  "lines": dashboard_lines(ctx.dashboard_url, token_auth=ray_token_auth_enabled()),
                  "token_len": len(token)}))
ray.shutdown()
"""


def test_dashboard_lines_name_the_token_command_not_the_token() -> None:
    assert dashboard_lines("127.0.0.1:8265", token_auth=False) == [
        "Ray dashboard: http://127.0.0.1:8265"
    ]
    url, token = dashboard_lines("127.0.0.1:8265", token_auth=True)
    assert url == "Ray dashboard: http://127.0.0.1:8265"
    assert "`ray get-auth-token`" in token and "Authorization: Bearer <token>" in token


@pytest.mark.slow
def test_dashboard_api_needs_and_accepts_the_printed_token(tmp_path: Path) -> None:
    pytest.importorskip("aiohttp", reason="the Ray dashboard needs ray[default] (aiohttp)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["HOME"] = str(tmp_path)  # the token Ray generates goes to tmp_path/.ray/auth_token
    proc = subprocess.run(
        [sys.executable, "-c", CHILD],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["token_auth"] is True
    assert (tmp_path / ".ray" / "auth_token").read_text().strip() and out["token_len"] >= 32
    assert out["status"] == {"none": 401, "wrong": 403, "token": 200, "version": 200}
    assert len(out["lines"]) == 2 and "ray get-auth-token" in out["lines"][1]
