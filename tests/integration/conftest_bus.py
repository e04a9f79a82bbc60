"""Fixtures for the context-bus tests: a real managed redis-server and a bus per test.

Registered with ``pytest_plugins`` (or ``-p tests.integration.conftest_bus``).
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from coordinator.bus.context_bus import BusConfig, ContextBus
from coordinator.bus.redis_server import ManagedRedis


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedRedis]:
    """One redis-server (AOF on) for the session, in a temporary directory; stopped at the end."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = ManagedRedis(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def fast_config(**overrides: object) -> BusConfig:
    """Bus tuning for tests: short pauses so retries and reconnects finish quickly."""
    values: dict[str, object] = {
        "prefix": "test",
        "retry_delay_s": 0.01,
        "backoff_base_s": 0.02,
        "backoff_max_s": 0.2,
        "block_ms": 200,
    }
    values.update(overrides)
    return BusConfig(**values)  # type: ignore[arg-type]


@pytest.fixture
def build_id() -> str:
    """A build id no other test uses."""
    return f"b{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def bus(redis_server: ManagedRedis, build_id: str) -> AsyncIterator[ContextBus]:
    """A bus on the session's Redis; the test's build keys are deleted afterwards."""
    bus = ContextBus(redis_server.url, fast_config(), sender="test")
    try:
        yield bus
    finally:
        if redis_server.running:
            await bus.delete_build(build_id)
        await bus.aclose(flush_timeout=1.0)
