"""An event stream over an event log that cannot be read ends with ``error`` (issue 18), not ``: ping`` forever.

The bus is a real client pointed at a port on 127.0.0.1 where nothing listens (Redis died); the
control plane is the in-memory one, where the build is still running.
"""

from __future__ import annotations

import json
import socket

import pytest

from coordinator.api_models import BuildRequest
from coordinator.bus.context_bus import ContextBus
from sandbox_agents.errors import BusUnavailableError
from serve.control_port import MemoryControl
from serve.sse import build_events
from tests.integration.conftest_bus import fast_config

pytestmark = [pytest.mark.timeout(60)]


def dead_redis_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"redis://127.0.0.1:{s.getsockname()[1]}/0"


async def test_a_stream_that_cannot_read_the_log_sends_error_and_closes() -> None:
    control = MemoryControl()
    build = await control.submit("alice", BuildRequest(prompt="a todo app"))
    bus = ContextBus(dead_redis_url(), fast_config(), sender="test")
    try:
        events = [
            event
            async for event in build_events(
                bus, control, "alice", build, "5-0", initial_status="running", retry_s=0.05, unavailable_s=0.3
            )
        ]
    finally:
        await bus.aclose(flush_timeout=0.1)
    assert len(events) == 1 and events[0].event == "error"
    body = json.loads(events[0].data)
    assert body["kind"] == "stream.unavailable" and body["data"]["last_id"] == "5-0"
    assert "cannot be read" in body["data"]["error"]


async def test_health_names_redis_when_it_does_not_answer() -> None:
    bus = ContextBus(dead_redis_url(), fast_config(), sender="test")
    try:
        with pytest.raises(BusUnavailableError, match="does not answer"):
            await bus.ping(timeout_s=1.0)
    finally:
        await bus.aclose(flush_timeout=0.1)
