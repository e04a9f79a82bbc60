"""``ray start --head`` as ``kriptik up`` runs it answers only callers holding the cluster's token.

The head runs under a temp dir and ports of its own (the test's token through
``RAY_AUTH_TOKEN_PATH``, never ``~/.ray``) and is torn down by killing its processes, never
``ray stop`` (which would end every Ray of the user). Callers are subprocesses: this pytest
process may already hold the session's Ray.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.bus.redis_server import free_port
from serve.cli_commands import RAY_AUTH_ENV, ray_head_command
from tests.integration.test_multinode import _kill_tree, _node_args, _ports

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

JOIN = "import ray, sys; ray.init(address=sys.argv[1], log_to_driver=False); print('joined')"


@pytest.fixture
def head() -> Iterator[tuple[str, dict[str, str]]]:
    if shutil.which("ray") is None:
        pytest.skip("the `ray` CLI is not installed")
    tmp = tempfile.mkdtemp(prefix="kta-")  # short: Ray's unix socket paths must stay under 107 bytes
    token = Path(tmp) / "token"
    token.write_text("k" * 64)
    token.chmod(0o600)
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
    env = {**env, **RAY_AUTH_ENV, "RAY_AUTH_TOKEN_PATH": str(token)}
    port = free_port()
    command = [*ray_head_command(), f"--temp-dir={tmp}", f"--port={port}", "--num-cpus=1", "--include-dashboard=false"]
    try:
        started = subprocess.run(
            [*command, *_node_args(_ports(8))], env=env, capture_output=True, text=True, timeout=90
        )
        assert started.returncode == 0, started.stderr[-2000:]
        yield f"127.0.0.1:{port}", env
    finally:
        _kill_tree(tmp)
        shutil.rmtree(tmp, ignore_errors=True)


def join(address: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", JOIN, address], env=env, capture_output=True, text=True, timeout=120)


def test_kriptik_ups_ray_head_refuses_a_caller_without_the_token(head: tuple[str, dict[str, str]]) -> None:
    address, env = head
    assert ray_head_command()[:3] == ["ray", "start", "--head"] and RAY_AUTH_ENV == {"RAY_AUTH_MODE": "token"}
    assert "--dashboard-host=127.0.0.1" in ray_head_command()
    with_token = join(address, env)
    assert with_token.returncode == 0 and "joined" in with_token.stdout, with_token.stderr[-2000:]
    stranger = {key: value for key, value in env.items() if not key.startswith("RAY_AUTH")}
    without = join(address, {**stranger, "RAY_AUTH_MODE": "disabled", "HOME": tempfile.gettempdir()})
    assert without.returncode != 0 and "joined" not in without.stdout
