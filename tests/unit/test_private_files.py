"""Files holding secrets are 0600: the helper and every state file that carries a secret."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors.actor_state import SandboxOwnerState, StateFile
from actors.build.config import CoordinatorConfig, config_path, save_config
from sandbox_agents.backends.base import SandboxSpec
from sandbox_agents.backends.local.state import LocalState
from sandbox_agents.private_files import write_private


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The most permissive umask: whatever the file ends as is the code's doing."""
    previous = os.umask(0)
    yield
    os.umask(previous)


def test_write_private_replaces_the_file_with_mode_0600(tmp_path: Path, open_umask: None) -> None:
    path = tmp_path / "state.json"
    path.write_text("old")
    path.chmod(0o644)
    leftover = tmp_path / f".state.json.{os.getpid()}.{threading.get_ident()}.tmp"  # a crashed writer's
    leftover.write_text("x" * 100)
    leftover.chmod(0o644)
    write_private(path, '{"secret": "s3"}')
    assert path.read_text() == '{"secret": "s3"}'
    assert mode(path) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_write_private_leaves_no_temporary_file_when_it_fails(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        write_private(tmp_path / "missing-dir" / "state.json", "x")
    assert list(tmp_path.iterdir()) == []


def test_a_sandboxs_state_json_holding_its_secrets_is_0600(tmp_path: Path, open_umask: None) -> None:
    path = tmp_path / "state.json"
    LocalState(id="sbx-1", spec=SandboxSpec(secrets={"API_KEY": "s3cr3t"}), uid=61000).save(path)
    assert mode(path) == 0o600
    assert LocalState.load(path).spec.secrets == {"API_KEY": "s3cr3t"}


def test_an_actors_state_file_is_0600(open_umask: None) -> None:
    state = SandboxOwnerState(contract={}, proxy="p", sandbox_id="sbx-1", spec=SandboxSpec(secrets={"K": "v"}))
    file = StateFile("gates", "build:test-private", SandboxOwnerState)
    try:
        file.save(state)
        assert mode(file.path) == 0o600
        assert file.load() == state
    finally:
        file.remove()


def test_a_builds_saved_config_with_the_redis_password_is_0600(open_umask: None) -> None:
    config = CoordinatorConfig(build_id="test-private", redis_url="redis://:pw@127.0.0.1:1/0")
    try:
        save_config(config)
        assert mode(config_path("test-private")) == 0o600
    finally:
        config_path("test-private").unlink(missing_ok=True)
