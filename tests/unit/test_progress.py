"""Progress lines: what a team publishes on the bus's ``progress`` channel as its tasks start and end,
and how the build's run relays them into its event log as ``team.progress`` (fakes; no Redis, no Ray).

The Redis-backed consumer (``BusProgress``) is tested against a real Redis in
``tests/integration/test_bus_progress.py``.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from actors.team import _BusEvents
from coordinator.build.ports import ProgressHandler, TeamOutcome
from coordinator.bus.codec import PLAIN, BusCodec
from coordinator.bus.events import EventPayload, TaskDone, TaskStarted
from coordinator.bus.models import PROGRESS_TEXT_MAX, Event, Message, Progress
from coordinator.plan import SlotPlan
from coordinator.store.schema import SessionStatus
from coordinator.team import ComponentWork, TeamRunner, TeamTask, agent_role
from coordinator.team.progress import LINE_MAX, TaskProgress
from sandbox_agents.errors import BusBufferFullError
from tests.unit.test_build_run import FakeTeams, Harness, World
from tests.unit.test_team import FakeAgent, FakeChecks, FakePlanner, task
from tests.unit.test_team import World as TeamWorld

pytestmark = pytest.mark.timeout(30)


class FakeBus:
    """Records what a team publishes; refuses progress lines when told (as a full buffer does)."""

    def __init__(self, *, refuse_progress: bool = False) -> None:
        self.published: list[Message] = []
        self.refuse_progress = refuse_progress

    async def publish(self, build_id: str, message: Message, *, sender: str | None = None) -> str:
        if self.refuse_progress and isinstance(message, Progress):
            raise BusBufferFullError("redis unreachable", buffered=10, limit=10)
        self.published.append(message)
        return f"{len(self.published)}-0"

    def lines(self) -> list[tuple[str, str, float | None]]:
        return [(m.phase, m.message, m.fraction) for m in self.published if isinstance(m, Progress)]

    def kinds(self) -> list[str]:
        return [m.kind for m in self.published if isinstance(m, Event)]


def team_run(
    tasks: list[TeamTask],
    world: TeamWorld,
    bus: FakeBus,
    *,
    agents: int = 1,
    planner: FakePlanner | None = None,
    check: str | None = "component-check",
) -> TeamRunner:
    """A team run whose events go through the team actor's bus port, as in ``SandboxTeamActor.run``."""
    work = ComponentWork(component="calc", tasks=tuple(tasks), check_command=check, agents=agents)
    events = _BusEvents(bus, "b1", [], TaskProgress(work, slot="calc~fast"))  # type: ignore[arg-type]
    fakes = [FakeAgent(agent_role("calc", n), world) for n in range(agents)]
    return TeamRunner(work, fakes, checks=FakeChecks(world), planner=planner or FakePlanner([]), events=events)


# --- the publisher: a team run's lines ------------------------------------------------------------


async def test_each_task_start_and_end_is_a_line_with_the_share_of_tasks_done() -> None:
    bus = FakeBus()
    report = await team_run([task("a"), task("b", "a")], TeamWorld(), bus).run()
    assert report.ready
    assert bus.lines() == [
        ("a", "task a: running", 0.0),
        ("a", "task a: check passed", 0.5),
        ("b", "task b: running", 0.5),
        ("b", "task b: check passed", 1.0),
        ("check", "component check passed", 1.0),
    ]
    line = next(m for m in bus.published if isinstance(m, Progress))
    assert (line.component, line.slot) == ("calc", "calc~fast")
    assert bus.kinds()[-2:] == ["team.ready_to_merge", "team.finished"]  # the events go on as before


async def test_escalations_say_what_happens_and_a_re_plan_counts_for_its_task() -> None:
    world = TeamWorld(broken={"a", "a#retry1", "a#handoff"})
    planner = FakePlanner([task("a1")])
    bus = FakeBus()
    report = await team_run([task("a"), task("b", "a")], world, bus, agents=2, planner=planner).run()
    assert report.recovered == {"a": 3} and report.ready
    lines = bus.lines()
    assert [m for p, m, _ in lines if p == "a"] == [
        "task a: running",
        "task a: running again after a failure",
        "task a: handed off to agent:calc:1",
        "task a: done after a re-plan",
    ]
    assert ("a1", "task a1: done", 0.0) in lines  # a replacement is not one of the run's tasks: no share of its own
    assert ("a", "task a: done after a re-plan", 0.5) in lines and lines[-1] == ("check", "component check passed", 1.0)


async def test_a_retry_that_got_it_done_says_so_once() -> None:
    bus = FakeBus()
    await team_run([task("a")], TeamWorld(broken={"a"}), bus).run()
    assert [m for p, m, _ in bus.lines() if p == "a"] == [
        "task a: running",
        "task a: running again after a failure",
        "task a: check passed",
    ]


async def test_a_blocked_task_says_why_in_one_short_line_and_the_share_stays() -> None:
    world = TeamWorld(broken={"a", "a#retry1", "a#handoff"})
    bus = FakeBus()
    planner = FakePlanner(RuntimeError("no plan\n" + "detail " * 100))
    await team_run([task("a"), task("c")], world, bus, planner=planner).run()
    blocked = [(m, f) for p, m, f in bus.lines() if p == "a" and "blocked" in m]
    assert len(blocked) == 1
    assert blocked == [("task a: blocked: first failure: the task's check `check a` failed:", 0.0)]  # root cause
    assert bus.lines()[-1] == ("c", "task c: check passed", 0.5)  # a blocked task never counts; no component check
    long = TaskProgress(ComponentWork(component="calc", tasks=(task("a"),), agents=1))
    line = long.observe(TaskStarted(component="calc", task="a", attempt="a", agent="x" * 500, level=2))
    assert line is not None and len(line.message) == LINE_MAX and line.message.endswith("…")


async def test_a_run_without_a_component_check_says_every_task_is_done() -> None:
    bus = FakeBus()
    await team_run([task("a")], TeamWorld(), bus, check=None).run()
    assert bus.lines()[-1] == ("check", "every task done; no component check", 1.0)


async def test_a_bus_refusing_progress_never_stops_the_team(caplog: pytest.LogCaptureFixture) -> None:
    bus = FakeBus(refuse_progress=True)
    with caplog.at_level(logging.WARNING, logger="actors.team"):
        report = await team_run([task("a"), task("b", "a")], TeamWorld(), bus).run()
    assert report.ready and bus.lines() == []
    assert bus.kinds().count("task.done") == 2 and "team.finished" in bus.kinds()  # every event still went out
    assert "publishing progress of a failed" in caplog.text


# --- the message on the wire ---------------------------------------------------------------------


def test_an_older_progress_message_without_component_or_slot_still_decodes() -> None:
    import msgpack

    old = {
        "s": "team",
        "t": 1.0,
        "i": "m1",
        "m": {"type": "progress", "phase": "build", "message": "x", "fraction": 0.5},
    }
    decoded = BusCodec().decode(bytes([PLAIN]) + msgpack.packb(old))
    assert decoded.message == Progress(phase="build", message="x", fraction=0.5)
    assert isinstance(decoded.message, Progress) and (decoded.message.component, decoded.message.slot) == ("", "")


def test_an_oversized_progress_line_is_refused() -> None:
    with pytest.raises(ValidationError):
        Progress(phase="a", message="x" * (PROGRESS_TEXT_MAX + 1))
    with pytest.raises(ValidationError):
        Progress(phase="a" * 513)


# --- the consumer: the run relays lines into its event log ------------------------------------------


class ProgressChannel:
    """The ``progress`` channel and the run's consumer group on it: a line is relayed while a consumer
    runs and acknowledged once its handler returned; a line not acknowledged waits for the next start."""

    def __init__(self) -> None:
        self.lines: list[Progress] = []
        self.acked: set[int] = set()
        self.handler: ProgressHandler | None = None
        self.starts = 0
        self.stops = 0
        self._one = asyncio.Lock()

    async def publish(self, line: Progress) -> None:
        self.lines.append(line)
        await self._relay()

    async def start(self, handler: ProgressHandler) -> None:
        self.starts += 1
        self.handler = handler
        await self._relay()

    async def stop(self) -> None:
        self.stops += 1
        self.handler = None

    async def _relay(self) -> None:
        async with self._one:
            for n, line in enumerate(self.lines):
                if self.handler is not None and n not in self.acked:
                    await self.handler(line)  # raising: the line stays unacknowledged
                    self.acked.add(n)


class TeamsPublishingProgress(FakeTeams):
    """Fake teams that publish a line as each of their tasks starts and ends, as the team actor does."""

    def __init__(self, world: World, channel: ProgressChannel) -> None:
        super().__init__(world)
        self.channel = channel

    async def run(self, slot: SlotPlan, **kwargs: Any) -> TeamOutcome:
        work = slot.work()
        lines = TaskProgress(work, slot=slot.slot_id)
        for t in work.tasks:
            ids = {"component": work.component, "task": t.id, "attempt": t.id, "agent": "agent:0", "level": 0}
            for event in (TaskStarted(**ids), TaskDone(**ids)):
                line = lines.observe(event)
                assert line is not None
                await self.channel.publish(line)
        return await super().run(slot, **kwargs)


class RefusingEvents:
    async def emit(self, event: EventPayload) -> str | None:
        raise BusBufferFullError("redis unreachable", buffered=10, limit=10)


async def test_the_run_relays_each_teams_lines_into_the_log_as_team_progress(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    channel = ProgressChannel()
    run = h.run_obj()
    run.ports.teams = TeamsPublishingProgress(h.world, channel)
    run.ports.progress = channel
    session = await asyncio.wait_for(run.run(), 10)
    assert session.status is SessionStatus.COMPLETED, session.error
    assert [d for d in h.kinds("team.progress") if d["slot"] == "db"] == [
        {"component": "db", "slot": "db", "task": "db-t", "message": "task db-t: running", "fraction": 0.0},
        {"component": "db", "slot": "db", "task": "db-t", "message": "task db-t: done", "fraction": 1.0},
    ]
    candidate = [d for d in h.kinds("team.progress") if d["slot"] == "web~polished"]
    assert [d["component"] for d in candidate] == ["web.polished", "web.polished"]
    assert {d["slot"] for d in h.kinds("team.progress")} == {"db", "util", "api", "web~minimal", "web~polished"}
    kinds = [(k, d.get("slot")) for _, k, d in h.world.events]
    assert (
        kinds.index(("slot.building", "api"))
        < kinds.index(("team.progress", "api"))
        < kinds.index(("slot.built", "api"))
    )
    assert channel.starts == channel.stops == 1 and channel.acked == set(range(len(channel.lines)))


async def test_a_line_the_log_refuses_stays_unacknowledged_and_a_restarted_run_relays_it(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    line = Progress(phase="db-t", message="task db-t: running", fraction=0.0, component="db", slot="db")
    channel = ProgressChannel()
    refused = h.run_obj()
    refused.ports.events = RefusingEvents()
    await channel.start(refused.relay_progress)
    with pytest.raises(BusBufferFullError):
        await channel.publish(line)  # the relay raises: nothing is swallowed, nothing acknowledged
    await channel.stop()
    assert channel.acked == set() and h.kinds("team.progress") == []
    await channel.start(h.run_obj().relay_progress)  # the next incarnation's consumer
    assert h.kinds("team.progress") == [
        {"component": "db", "slot": "db", "task": "db-t", "message": "task db-t: running", "fraction": 0.0}
    ]
