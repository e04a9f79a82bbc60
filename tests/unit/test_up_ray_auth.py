"""``kriptik up``'s Ray token: generated once by Ray, kept 0600, left alone when the environment names one."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from serve.cli_commands import ensure_ray_token


def test_ensure_ray_token_has_ray_generate_a_private_token_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        monkeypatch.delenv(name, raising=False)
    path = ensure_ray_token()
    assert path == tmp_path / ".ray" / "auth_token"
    token = path.read_text()
    assert len(token) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.chmod(0o644)
    assert ensure_ray_token() == path and path.read_text() == token  # kept, and made private again
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_token_named_by_the_environment_is_used_as_it_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "given"))
    assert ensure_ray_token() is None
    assert not (tmp_path / ".ray").exists()


def test_every_cli_command_speaks_to_ray_with_the_token_mode_set_before_ray_is_imported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ray reads RAY_AUTH_MODE at import: `kriptik up` set it after importing Ray and was refused."""
    import os
    import subprocess
    import sys

    probe = (
        "import os, sys\n"
        "from typer.testing import CliRunner\n"
        "from serve.cli import app\n"
        "seen = {}\n"
        "import serve.cli_commands as cc\n"
        "def fake_up(port):\n"
        "    seen['mode'] = os.environ.get('RAY_AUTH_MODE')\n"
        "    seen['ray_imported'] = 'ray' in sys.modules\n"
        "    return 0\n"
        "cc._up = fake_up\n"
        "result = CliRunner().invoke(app, ['up'])\n"
        "print(seen)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    assert "{'mode': 'token', 'ray_imported': False}" in done.stdout, done.stdout + done.stderr
