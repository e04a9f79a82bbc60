"""BusProgress, the build run's consumer of the bus's ``progress`` channel, against a real Redis (no Ray).

A team's lines (published through the team actor's bus port) reach the build's event log as
``team.progress`` through ``BuildRun.relay_progress``; a line is relayed at least once across a
coordinator restart (acknowledged ones never again); malformed, oversized and foreign entries are
dropped with a log and the relay goes on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from actors.team import _BusEvents
from coordinator.build.adapters import PROGRESS_GROUP, BusEvents, BusProgress
from coordinator.bus.codec import BODY_FIELD
from coordinator.bus.context_bus import ContextBus
from coordinator.bus.events import TaskDone, TaskStarted, TeamProgress
from coordinator.bus.models import PROGRESS_TEXT_MAX, Event, Progress
from coordinator.team import ComponentWork, TeamTask
from coordinator.team.progress import TaskProgress
from tests.integration.test_bus import until
from tests.unit.test_build_run import Harness

pytestmark = pytest.mark.timeout(60)


def line(task: str) -> Progress:
    return Progress(phase=task, message=f"task {task}: running", fraction=0.0, component="api", slot="api")


async def progress_events(bus: ContextBus, build_id: str, count: int) -> list[TeamProgress]:
    """The log's ``team.progress`` payloads once it holds ``count`` of them (polled, with a bound)."""
    deadline = time.monotonic() + 20
    while True:
        rows = await bus.read_events(build_id, count=1000)
        found = [
            e.message.payload for _, e in rows if isinstance(e.message, Event) and e.message.kind == "team.progress"
        ]
        if len(found) >= count:
            return [p for p in found if isinstance(p, TeamProgress)]
        assert time.monotonic() < deadline, f"{len(found)} of {count} team.progress events after 20 s"
        await asyncio.sleep(0.01)


async def pending(bus: ContextBus, build_id: str) -> int:
    return int((await bus.redis.xpending(bus.keys(build_id).stream("progress"), PROGRESS_GROUP))["pending"])


async def test_a_teams_progress_line_becomes_a_team_progress_event_in_the_builds_log(
    bus: ContextBus, build_id: str, tmp_path: Path
) -> None:
    run = Harness(tmp_path).run_obj()
    run.ports.events = BusEvents(bus, build_id)
    relay = BusProgress(bus, build_id)
    await relay.start(run.relay_progress)
    try:
        tasks = (TeamTask(id="api-tests", title="the API's tests", check_command="pytest -q"),)
        work = ComponentWork(component="api", tasks=tasks, agents=1)
        team = _BusEvents(bus, build_id, [], TaskProgress(work, slot="api"))
        ids = {"component": "api", "task": "api-tests", "attempt": "api-tests", "agent": "agent:api:0", "level": 0}
        await team.emit(TaskStarted(**ids))
        await team.emit(TaskDone(**ids))
        relayed = await progress_events(bus, build_id, 2)
    finally:
        await relay.stop()
    where = {"component": "api", "slot": "api", "task": "api-tests"}
    assert [p.data for p in relayed] == [
        {**where, "message": "task api-tests: running", "fraction": 0.0},
        {**where, "message": "task api-tests: check passed", "fraction": 1.0},
    ]
    assert await pending(bus, build_id) == 0


async def test_a_line_relayed_but_not_acknowledged_is_relayed_again_after_a_restart(
    bus: ContextBus, build_id: str
) -> None:
    await bus.publish_many(build_id, [line("a"), line("b")])
    first: list[str] = []

    async def dies_relaying_b(progress: Progress) -> None:
        first.append(progress.phase)
        if progress.phase == "b":
            await asyncio.Event().wait()  # relayed, then the coordinator dies before the acknowledgement

    killed = BusProgress(bus, build_id)
    await killed.start(dies_relaying_b)
    await until(lambda: first == ["a", "b"], what="the first incarnation got both lines")
    await killed.stop()
    assert await pending(bus, build_id) == 1  # b

    second: list[str] = []

    async def relays(progress: Progress) -> None:
        second.append(progress.phase)

    restarted = BusProgress(bus, build_id)
    await restarted.start(relays)
    try:
        await until(lambda: second == ["b"], what="the unacknowledged line replayed first")
        await bus.publish(build_id, line("c"))
        await until(lambda: second == ["b", "c"], what="then new lines")
    finally:
        await restarted.stop()
    assert await pending(bus, build_id) == 0  # a was acknowledged by the first incarnation: never relayed again


async def test_malformed_oversized_and_foreign_entries_are_dropped_with_a_log_and_the_relay_goes_on(
    bus: ContextBus, build_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    stream = bus.keys(build_id).stream("progress")
    big = {**line("big").model_dump(), "message": "x" * (PROGRESS_TEXT_MAX + 1)}
    await bus.redis.xadd(stream, {BODY_FIELD: b"\x01not msgpack"})
    await bus.redis.xadd(stream, {BODY_FIELD: bus.codec.encode_dict(big, sender="team", ts=1.0, mid="m-big")})
    foreign = bus.codec.encode(Event(kind="team.started", data={}), sender="team", ts=1.0, mid="m-event")
    await bus.redis.xadd(stream, {BODY_FIELD: foreign})
    await bus.publish(build_id, line("ok"))
    seen: list[str] = []

    async def relays(progress: Progress) -> None:
        seen.append(progress.phase)

    relay = BusProgress(bus, build_id)
    with caplog.at_level(logging.WARNING):
        await relay.start(relays)
        try:
            await until(lambda: seen == ["ok"], what="the good line after the bad ones")
        finally:
            await relay.stop()
    dead = await bus.read_dead(build_id)
    assert sorted(d.error.split(":")[0] for d in dead) == ["invalid_fields", "msgpack"]
    assert all(d.reason == "decode" and d.group == PROGRESS_GROUP for d in dead)
    assert "dropped event entry" in caplog.text and "dead-lettering" in caplog.text
    assert await pending(bus, build_id) == 0
