"""The managed redis-server requires its password and keeps protected mode; the secret stays private."""

from __future__ import annotations

import logging
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from coordinator.bus import redis_server as redis_server_module
from coordinator.bus.redis_server import ManagedRedis, redis_url
from sandbox_agents.settings import Settings


@pytest.fixture
def server(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> Iterator[ManagedRedis]:
    caplog.set_level(logging.INFO, logger="coordinator.bus.redis_server")
    managed = ManagedRedis(tmp_path / "redis")
    managed.start()
    yield managed
    managed.stop()


def password_of(server: ManagedRedis) -> str:
    return (server.data_dir / "password").read_text().strip()


def test_a_client_without_the_password_is_refused(server: ManagedRedis) -> None:
    assert server.port is not None
    with redis.Redis(port=server.port, socket_timeout=5) as anonymous, pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    with redis.Redis(port=server.port, password="guess", socket_timeout=5) as guesser:
        with pytest.raises(redis.AuthenticationError):
            guesser.ping()
    with redis.Redis.from_url(server.url, socket_timeout=5) as client:
        assert client.ping()
        assert client.config_get("protected-mode") == {"protected-mode": "yes"}
        assert client.config_get("bind") == {"bind": "127.0.0.1"}
    assert server.url == f"redis://:{password_of(server)}@127.0.0.1:{server.port}/0"


def test_the_password_is_in_a_private_file_and_never_in_argv_or_logs(
    server: ManagedRedis, caplog: pytest.LogCaptureFixture
) -> None:
    password = password_of(server)
    assert stat.S_IMODE((server.data_dir / "password").stat().st_mode) == 0o600
    assert stat.S_IMODE(server.data_dir.stat().st_mode) == 0o700
    assert password.encode() not in Path(f"/proc/{server.pid}/cmdline").read_bytes()
    assert server.display_url == f"redis://:***@127.0.0.1:{server.port}/0"
    logged = "\n".join(record.getMessage() for record in caplog.get_records("setup"))  # the start
    assert server.display_url in logged and password not in logged
    assert password not in (server.data_dir / "redis.log").read_text()


def test_a_restart_keeps_the_password(server: ManagedRedis) -> None:
    url = server.url
    server.restart()
    assert server.url == url
    with redis.Redis.from_url(url, socket_timeout=5) as client:
        assert client.ping()


def test_another_process_of_the_home_finds_the_running_server_with_its_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_server_module, "_managed", None)
    home = tmp_path / "home"
    with ManagedRedis(home / "redis") as owner:  # e.g. `kriptik up`'s keeper
        url = redis_url(Settings(kriptik_home=home, redis_url=None))
        assert url == owner.url
        with redis.Redis.from_url(url, socket_timeout=5) as client:
            assert client.ping()
