"""``kriptik demo`` as a user runs it: a real subprocess that starts its own Ray, Redis and sandboxes.

One run (hello-calc, the small example) to keep CI time down; the todo-fullstack build is
covered by tests/e2e/test_examples.py. The demo owns and tears down everything it starts, so
the test only checks what it prints: one JSON object as the last line, status ``completed``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_kriptik_demo_json_builds_hello_calc_to_completed() -> None:
    code = "from serve.cli import app; app(prog_name='kriptik')"
    command = [sys.executable, "-c", code, "demo", "--json", "--example", "hello-calc"]
    env = {k: v for k, v in os.environ.items() if k not in ("KRIPTIK_HOME", "REDIS_URL", "RAY_ADDRESS")}
    done = subprocess.run(command, capture_output=True, text=True, timeout=280, env=env, check=False)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert lines, f"no output; exit {done.returncode}; stderr tail:\n{done.stderr[-3000:]}"
    result = json.loads(lines[-1])
    assert result["status"] == "completed", f"{result.get('error')}\n{done.stderr[-4000:]}"
    assert done.returncode == 0
    assert result["example"] == "hello-calc" and result["components"] == {"calc": "merged"}
    assert len(result["main_commit"]) == 40 and result["events"] > 10
    assert result["preview_url"] is None  # a CLI app serves nothing: no preview sandbox
    assert 0 < result["wall_s"] < 240
