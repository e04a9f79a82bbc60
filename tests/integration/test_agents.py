"""Agent actors and the per-sandbox team on a real Ray, real local sandboxes and a real Redis.

A team of three Agent actors builds examples/cassettes/hello-team.yaml; replaying it twice
gives byte-identical workspaces; an error one team publishes is in another team's next prompt.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from actors.handles import NAMESPACE, agent_name, proxy_name
from actors.pools.proxies import release
from actors.sandbox_proxy import start_proxy
from actors.team import TeamConfig, start_team, stop_team
from coordinator.bus.context_bus import ContextBus
from coordinator.bus.models import Progress
from coordinator.resources import examples_dir
from coordinator.team import ComponentWork, TeamReport
from sandbox_agents.agent_models import AgentTask
from sandbox_agents.backends.base import SandboxSpec
from sandbox_agents.errors import InvalidInputError

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

HELLO = examples_dir() / "cassettes" / "hello-team.yaml"
LOCAL = {"type": "local"}


class Team:
    """A proxy with a fresh sandbox and a SandboxTeam on it; ``close`` releases both."""

    def __init__(self, build: str, sid: str) -> None:
        self.build, self.sid = build, sid
        self.proxy_name = proxy_name(build, sid)
        self.proxy: Any = None
        self.team: Any = None

    async def open(self, on: ContextBus, work: ComponentWork, cassette: Path, spec: SandboxSpec) -> Team:
        self.proxy = start_proxy(self.proxy_name, LOCAL)
        await self.proxy.create.remote(spec, self.build, work.component)
        config = TeamConfig(
            build_id=self.build,
            sid=self.sid,
            work=work,
            llm={"type": "replay", "cassettes": [str(cassette)]},
            redis_url=on.url,
            bus_prefix=on.config.prefix,
            spec=spec,
        )
        self.team = start_team(config, self.proxy)
        return self

    async def run(self) -> TeamReport:
        return await asyncio.wait_for(self.team.run.remote(), 180)

    async def workspace(self) -> dict[str, str]:
        """sha256 of every file of the sandbox's workspace."""
        files = [f for f in await self.proxy.list_files.remote("**/*") if not f.is_dir]
        return {f.path: hashlib.sha256(await self.proxy.read_file.remote(f.path)).hexdigest() for f in files}

    async def close(self) -> None:
        if self.team is not None:
            await stop_team(self.team)
        if self.proxy is not None:
            await release(self.proxy, self.proxy_name)


def hello_plan() -> tuple[ComponentWork, SandboxSpec]:
    meta = yaml.safe_load(HELLO.read_text())["meta"]
    return ComponentWork.model_validate(meta["work"]), SandboxSpec(**meta["spec"])


async def test_team_of_three_agents_builds_the_calculator(ray_cluster, bus: ContextBus, build_id: str) -> None:  # noqa: F811
    work, spec = hello_plan()
    team = Team(build_id, "sbx-calc")
    try:
        await team.open(bus, work, HELLO, spec)
        report = await team.run()
        assert report.ready, report
        assert report.recovered == {"calc-core": 1} and not report.blocked
        assert sorted(report.done) == ["calc-cli", "calc-core", "calc-tests"]
        result = await team.proxy.exec.remote(["python3", "-m", "unittest"])
        assert result.exit_code == 0 and "Ran 6 tests" in result.stderr, result
        assert sorted(await team.workspace()) == ["calc.py", "cli.py", "test_calc.py"]

        names = await team.team.agents.remote()
        assert [n for n, _ in names] == [agent_name(build_id, "sbx-calc", n) for n in range(3)]
        assert ray_cluster.get_actor(names[0][0], namespace=NAMESPACE) is not None

        kinds = [env.message.kind for _, env in await bus.read_events(build_id, count=1000)]
        for kind in ("team.started", "task.started", "task.escalated", "task.recovered", "task.done"):
            assert kind in kinds
        assert kinds[-2:] == ["team.ready_to_merge", "team.finished"]
        stream = bus.keys(build_id).stream("progress")  # a line per task start and end (relayed by a build's run)
        lines = [bus.envelope(stream, rid, fields).message for rid, fields in await bus.redis.xrange(stream)]
        said = [(p.phase, p.message) for p in lines if isinstance(p, Progress)]
        assert ("calc-core", "task calc-core: running again after a failure") in said
        assert lines[-1] == Progress(
            phase="check", message="component check passed", fraction=1.0, component=work.component, slot="sbx-calc"
        )
        unified = await bus.unified_context(build_id)
        assert {"calc.py", "cli.py", "test_calc.py"} <= set(unified.files)  # FileChange from the agents
        assert unified.context["calc.sub"].kind == "discovery"  # the model's publish, as a ContextUpdate
        assert not unified.errors  # the check failure was reported, then retracted on recovery
    finally:
        await team.close()


async def test_replaying_twice_gives_byte_identical_workspaces(ray_cluster, bus: ContextBus, build_id: str) -> None:  # noqa: F811
    work, spec = hello_plan()
    teams = [Team(build_id, f"sbx-replay-{n}") for n in range(2)]
    try:
        for team in teams:
            await team.open(bus, work, HELLO, spec)
        reports = await asyncio.gather(*(team.run() for team in teams))
        assert all(r.ready for r in reports)
        first, second = [await team.workspace() for team in teams]
        assert first == second and len(first) == 3
        assert [a.attempt for a in reports[0].attempts] == [a.attempt for a in reports[1].attempts]
    finally:
        for team in teams:
            await team.close()


MARKER = f"MARKER-{uuid.uuid4().hex[:8]}"
CROSS_CASSETTE = f"""
version: 1
turns:
  - role: agent:alpha:0
    task: alpha-1
    turn: 0
    tool_calls:
      - name: publish
        arguments: {{kind: error, key: npm-peer-deps, message: "{MARKER}: vite 7 needs node >= 20"}}
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


def one_task(component: str, task_id: str) -> ComponentWork:
    return ComponentWork(component=component, agents=1, tasks=({"id": task_id, "title": f"{component} work"},))


async def test_an_error_from_one_sandbox_is_in_the_next_prompt_of_another(
    ray_cluster,
    bus: ContextBus,  # noqa: F811
    build_id: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    cassette = tmp_path / "cross.yaml"
    cassette.write_text(CROSS_CASSETTE)
    team_a, team_b = Team(build_id, "sbx-a"), Team(build_id, "sbx-b")
    try:
        await team_a.open(bus, one_task("alpha", "alpha-1"), cassette, SandboxSpec())
        await team_b.open(bus, one_task("beta", "beta-1"), cassette, SandboxSpec())
        assert (await team_b.run()).ready  # before sandbox A found anything
        [(_, agent_b)] = await team_b.team.agents.remote()
        assert MARKER not in (await agent_b.recent_prompts.remote())[-1]["system"]

        assert (await team_a.run()).ready  # agent A publishes the error to the build
        assert MARKER in str((await bus.unified_context(build_id)).errors)

        outcome = await agent_b.run_task.remote(AgentTask(id="beta-2", title="more beta work"))
        assert outcome.ok
        last = (await agent_b.recent_prompts.remote())[-1]
        assert (last["role"], last["task"], last["turn"]) == ("agent:beta:0", "beta-2", 0)
        assert "Known errors" in last["system"] and f"npm-peer-deps: {MARKER}" in last["system"]
        assert "[from build:" in last["system"]  # the sender: agent A's actor name

        with pytest.raises(InvalidInputError):
            await agent_b.run_task.remote({"title": "a task without an id"})
    finally:
        await team_a.close()
        await team_b.close()
