"""The per-node ContextHub on a real Ray and a real Redis: agents read the build's context through it.

An error one team's agent publishes reaches another agent's next prompt through the hub's
subscription (the hash is deleted first, so a re-read snapshot could not carry it); a hub killed
and restarted by Ray rebuilds its view and loses nothing; stopping a build's hubs ends them and
their consumer group.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest

from actors import handles
from actors.hub import node_context, start_hub, stop_build_hubs
from coordinator.bus.context_bus import ContextBus
from coordinator.bus.models import ContextUpdate, ErrorReport, FileChange
from coordinator.team import prompt_context
from sandbox_agents.agent_models import AgentTask
from sandbox_agents.backends.base import SandboxSpec
from tests.integration.test_agents import Team, one_task

pytestmark = [pytest.mark.timeout(300)]

MARKER = f"MARKER-{uuid.uuid4().hex[:8]}"
CASSETTE = f"""
version: 1
turns:
  - role: agent:alpha:0
    task: alpha-1
    turn: 0
    tool_calls:
      - name: publish
        arguments: {{kind: error, key: port-in-use, message: "{MARKER}: port 5173 is taken in the preview"}}
  - role: agent:alpha:0
    task: alpha-1
    turn: 1
    text: Published the pitfall.
  - role: agent:beta:0
    task: beta-1
    turn: 0
    text: Nothing to do yet.
  - role: agent:beta:0
    task: beta-2
    turn: 0
    text: I see the known error and avoid it.
"""


async def context_of(bus: ContextBus, build_id: str) -> dict[str, object]:
    return await node_context(build_id, bus.url, bus.config.prefix)


@pytest.mark.slow
async def test_an_error_one_teams_agent_publishes_reaches_another_agents_prompt_through_the_hub(
    ray_cluster, bus: ContextBus, build_id: str, tmp_path: Path
) -> None:
    cassette = tmp_path / "cross.yaml"
    cassette.write_text(CASSETTE)
    team_a, team_b = Team(build_id, "sbx-a"), Team(build_id, "sbx-b")
    try:
        await team_a.open(bus, one_task("alpha", "alpha-1"), cassette, SandboxSpec())
        await team_b.open(bus, one_task("beta", "beta-1"), cassette, SandboxSpec())
        assert (await team_b.run()).ready  # the team and its agent start this node's hub
        hub = handles.find(handles.hub_name(build_id, handles.node_id()))
        assert hub is not None
        [(_, agent_b)] = await team_b.team.agents.remote()

        assert (await team_a.run()).ready  # agent A publishes the error to the build
        await bus.redis.delete(bus.keys(build_id).unified)  # from here only the subscription carries it
        assert MARKER not in str(await bus.unified_context(build_id))

        assert (await agent_b.run_task.remote(AgentTask(id="beta-2", title="more beta work"))).ok
        last = (await agent_b.recent_prompts.remote())[-1]
        assert (last["role"], last["task"], last["turn"]) == ("agent:beta:0", "beta-2", 0)
        assert "Known errors" in last["system"] and f"port-in-use: {MARKER}" in last["system"]
        assert handles.find(handles.hub_name(build_id, handles.node_id())) is not None  # still the one hub
    finally:
        await team_a.close()
        await team_b.close()
        await stop_build_hubs(build_id)


async def test_a_killed_hub_is_restarted_rebuilds_its_view_and_loses_nothing(
    ray_cluster, bus: ContextBus, build_id: str
) -> None:
    try:
        await bus.publish(build_id, ErrorReport(source="tsc", message="first", file="a.ts", line=1))
        assert "first" in str(await context_of(bus, build_id))
        hub = start_hub(build_id, bus.url, bus.config.prefix)  # the same live hub, by name
        before = await hub.pid.remote()

        handles.restart(hub)  # killed; Ray re-creates it on this node
        await bus.publish_many(
            build_id,
            [
                ErrorReport(source="tsc", message="first", file="a.ts", line=1, resolved=True),
                ErrorReport(source="vite", message="second"),
                ContextUpdate(key="api.base", value="/api", kind="decision"),
                FileChange(path="a.ts", sha256="ab" * 32, sandbox_id="sbx-1", agent="agent:a:0"),
            ],
        )
        deadline = time.monotonic() + 60
        while True:  # poll with a bound: one call in between may find it unavailable
            try:
                if await hub.pid.remote() != before:
                    break
            except handles.RayActorError:
                pass
            assert time.monotonic() < deadline, "the hub was not restarted"
            await asyncio.sleep(0.1)

        context = await context_of(bus, build_id)
        assert context == prompt_context(await bus.unified_context(build_id))
        assert "second" in str(context["errors"]) and "first" not in str(context["errors"])
        assert context["decisions"] and context["files"] == {"a.ts": "ab" * 32}

        await bus.publish(build_id, ErrorReport(source="vite", message="third"))  # live again after the restart
        context = await context_of(bus, build_id)
        assert "third" in str(context["errors"]) and context == prompt_context(await bus.unified_context(build_id))
    finally:
        await stop_build_hubs(build_id)


async def test_stopping_a_builds_hubs_ends_them_and_their_consumer_group(
    ray_cluster, bus: ContextBus, build_id: str
) -> None:
    await bus.publish(build_id, ContextUpdate(key="k", value=1))
    assert "k" in (await context_of(bus, build_id))["discoveries"]  # type: ignore[operator]
    name = handles.hub_name(build_id, handles.node_id())
    assert handles.find(name) is not None

    assert await stop_build_hubs(build_id) == [name]
    assert handles.find(name) is None
    for channel in ("context", "file-change", "errors"):
        assert await bus.redis.xinfo_groups(bus.keys(build_id).stream(channel)) == []

    await bus.publish(build_id, ContextUpdate(key="k", value=2))  # the next reader starts a fresh hub, seeded
    assert (await context_of(bus, build_id))["discoveries"]["k"]["message"] == "2"  # type: ignore[index]
    assert await stop_build_hubs(build_id) == [name]
