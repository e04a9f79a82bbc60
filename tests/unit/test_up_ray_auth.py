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
