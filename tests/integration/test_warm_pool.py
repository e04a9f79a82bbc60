"""Warm pools of fleet actors on a real Ray, real local sandboxes and a real Redis.

A build's proxy, team, agents and swarm come from :class:`~actors.pools.fleet.FleetPools`, bound
under their DESIGN names (aliases); the pools refill; closing them kills what was never handed
out; a pooled agent replays a cassette exactly like a cold one; a bound warm swarm that Ray
restarts rebinds itself from its saved binding.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from actors.agent import AgentConfig, bind_agent, get_agent, start_agent, start_warm_agent, stop_agent
from actors.handles import NAMESPACE, agent_name, proxy_name, swarm_name, team_name, wait_gone
from actors.pools.fleet import ControlWarmSource, FleetPoolConfig, FleetPools
from actors.pools.proxies import acquire_proxy, get_proxy, release
from actors.pools.warm import WarmPool, resolve
from actors.sandbox_proxy import start_proxy
from actors.swarm import SwarmConfig, get_swarm, launch_swarm, stop_swarm
from actors.team import TeamConfig, get_team, launch_team, stop_team
from coordinator.bus.context_bus import ContextBus
from coordinator.team import ComponentWork
from sandbox_agents.agent_models import AgentTask
from sandbox_agents.backends.base import SandboxSpec

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]

LOCAL = {"type": "local"}
CASSETTE = """
version: 1
turns:
  - role: agent:greet:0
    task: greet-1
    turn: 0
    text: I'll write the greeting.
    tool_calls:
      - name: write_file
        arguments: {path: hello.txt, content: "hello from the pool\\n"}
  - role: agent:greet:0
    task: greet-1
    turn: 1
    text: Wrote hello.txt.
"""


async def eventually(read: Callable[[], Awaitable[Any]], ok: Callable[[Any], bool], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await read()
        if ok(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"still {value!r} after {timeout}s")
        await asyncio.sleep(0.1)


async def test_a_build_fleet_binds_warm_actors_under_its_names_and_the_pools_refill(
    ray_cluster,
    bus: ContextBus,  # noqa: F811
    build_id: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    cassette = tmp_path / "greet.yaml"
    cassette.write_text(CASSETTE)
    sizes = FleetPoolConfig(proxies=1, standby=1, teams=1, agents=2, swarms=1)
    pools = FleetPools(LOCAL, sizes)
    await pools.fill()
    assert pools.warm() == {"proxy": 1, "team": 1, "agent": 2, "swarm": 1}
    warm_names = {kind: pool.names() for kind, pool in pools.pools.items()}
    spec = SandboxSpec(tags={"component": "greet"})
    proxy = team = swarm = None
    try:
        proxy = await acquire_proxy(pools, LOCAL, build_id, "s1", spec, component="greet")
        assert resolve("proxy", proxy_name(build_id, "s1")) == warm_names["proxy"][0]
        assert await get_proxy(build_id, "s1").sandbox_id.remote() == await proxy.sandbox_id.remote()

        work = ComponentWork(component="greet", agents=2, tasks=({"id": "greet-1", "title": "greet"},))
        config = TeamConfig(build_id=build_id, sid="s1", work=work, llm={"type": "replay", "cassettes": [str(cassette)]},
                            redis_url=bus.url, bus_prefix=bus.config.prefix, spec=spec)  # fmt: skip
        team = await launch_team(config, proxy, pools)
        assert resolve("team", team_name(build_id, "s1")) == warm_names["team"][0]
        assert await get_team(build_id, "s1").ping.remote() == team_name(build_id, "s1")
        agents = await team.agents.remote()
        assert [n for n, _ in agents] == [agent_name(build_id, "s1", n) for n in range(2)]
        assert sorted(resolve("agent", agent_name(build_id, "s1", n)) for n in range(2)) == sorted(warm_names["agent"])
        assert await get_agent(build_id, "s1", 1).ping.remote() == agent_name(build_id, "s1", 1)
        with pytest.raises(ValueError):  # the DESIGN name is an alias, not a Ray name
            ray_cluster.get_actor(agent_name(build_id, "s1", 1), namespace=NAMESPACE)

        swarm = await launch_swarm(SwarmConfig(build_id=build_id, sid="s1", spec=spec), proxy, pools)
        assert await get_swarm(build_id, "s1").ping.remote() == swarm_name(build_id, "s1")

        # every pool tops itself up in the background, with new actors
        async def warm_now() -> dict[str, int]:
            return pools.warm()

        await eventually(warm_now, lambda w: w == sizes_of(sizes), 60)
        for kind, pool in pools.pools.items():
            assert not set(pool.names()) & set(warm_names[kind]), kind
    finally:
        if team is not None:
            await stop_team(team, team_name(build_id, "s1"))
        if swarm is not None:
            await stop_swarm(swarm, swarm_name(build_id, "s1"))
        if proxy is not None:
            await release(proxy, proxy_name(build_id, "s1"))
        refilled = [name for pool in pools.pools.values() for name in pool.names()]
        await pools.close()
    for name in refilled:  # close kills every warm actor that was never handed out
        assert await wait_gone(name), name
    for name in warm_names["agent"] + warm_names["team"]:  # stopping the team stopped its pooled agents
        assert await wait_gone(name), name
    assert resolve("team", team_name(build_id, "s1")) == team_name(build_id, "s1")  # alias forgotten


def sizes_of(config: FleetPoolConfig) -> dict[str, int]:
    return {"proxy": config.proxies, "team": config.teams, "agent": config.agents, "swarm": config.swarms}


async def test_close_kills_unused_warm_actors_and_no_control_means_cold(ray_cluster) -> None:  # type: ignore[no-untyped-def]
    pool = WarmPool("agent", start_warm_agent, size=2)
    await pool.fill()
    names = pool.names()
    assert len(names) == 2 and all(n.startswith("kriptik:agent:") for n in names)
    await pool.close()
    for name in names:
        assert await wait_gone(name), name
    await pool.fill()  # a closed pool starts nothing again
    assert len(pool) == 0
    assert await ControlWarmSource(LOCAL, timeout_s=1.0).take("agent", 3) == []  # no Control here: go cold


async def test_a_pooled_agent_runs_a_cassette_task_exactly_like_a_cold_one(
    ray_cluster,
    bus: ContextBus,  # noqa: F811
    build_id: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    cassette = tmp_path / "greet.yaml"
    cassette.write_text(CASSETTE)
    pool = WarmPool("agent", start_warm_agent, size=1)
    await pool.fill()
    proxies, agents = [], []
    try:
        outcomes, files = [], []
        for sid, warm in (("cold", None), ("warm", pool.take())):
            proxy = start_proxy(proxy_name(build_id, sid), LOCAL)
            await proxy.create.remote(SandboxSpec(), build_id, "greet")
            proxies.append((sid, proxy))
            config = AgentConfig(build_id=build_id, sid=sid, index=0, component="greet",
                                 llm={"type": "replay", "cassettes": [str(cassette)]},
                                 redis_url=bus.url, bus_prefix=bus.config.prefix)  # fmt: skip
            agent = await bind_agent(warm, config, proxy) if warm else start_agent(config, proxy)
            agents.append((config.name, agent))
            outcomes.append(await agent.run_task.remote(AgentTask(id="greet-1", title="greet")))
            files.append(await proxy.read_file.remote("hello.txt"))
        cold, warm_outcome = outcomes
        assert cold.ok and warm_outcome.ok
        assert files == [b"hello from the pool\n"] * 2
        when = {"duration_s", "model_busy"}  # when it ran differs; what it did must not
        assert warm_outcome.model_dump(exclude=when) == cold.model_dump(exclude=when)
        assert len(warm_outcome.model_busy) == len(cold.model_busy) == 2  # two turns, one model call each
        cold_prompt, warm_prompt = [(await a.recent_prompts.remote())[-1] for _, a in agents]
        assert (warm_prompt["role"], warm_prompt["task"], warm_prompt["turn"]) == ("agent:greet:0", "greet-1", 1)
        assert {k: v for k, v in warm_prompt.items() if k != "system"} == {
            k: v for k, v in cold_prompt.items() if k != "system"
        }
    finally:
        for name, agent in agents:
            await stop_agent(agent, name)
        for sid, proxy in proxies:
            await release(proxy, proxy_name(build_id, sid))
        await pool.close()


async def test_a_bound_warm_swarm_rebinds_after_a_restart(ray_cluster, build_id: str) -> None:  # type: ignore[no-untyped-def]
    import ray

    pools = FleetPools(LOCAL, FleetPoolConfig(proxies=0, teams=0, agents=0, swarms=1))
    await pools.fill()
    proxy = await acquire_proxy(None, LOCAL, build_id, "s1", SandboxSpec())
    swarm = None
    try:
        swarm = await launch_swarm(SwarmConfig(build_id=build_id, sid="s1"), proxy, pools)
        pid = await swarm.__ray_call__.remote(lambda self: __import__("os").getpid())
        ray.kill(swarm, no_restart=False)
        await eventually(lambda: _pid_or_none(swarm), lambda p: p is not None and p != pid, 60)
        assert await swarm.ping.remote() == swarm_name(build_id, "s1")  # rebound from its binding file
    finally:
        if swarm is not None:
            await stop_swarm(swarm, swarm_name(build_id, "s1"))
        await release(proxy, proxy_name(build_id, "s1"))
        await pools.close()


async def _pid_or_none(handle: Any) -> int | None:
    try:
        return await asyncio.wait_for(handle.__ray_call__.remote(lambda self: __import__("os").getpid()), 5)
    except Exception:  # noqa: BLE001 - restarting
        return None


async def test_pools_sharing_a_pace_refill_one_actor_at_a_time(ray_cluster) -> None:  # type: ignore[no-untyped-def]
    in_flight, peaks = 0, []

    async def ready(handle: Any) -> None:
        nonlocal in_flight
        in_flight += 1
        peaks.append(in_flight)
        try:
            await handle.ping.remote()
        finally:
            in_flight -= 1

    pace = asyncio.Semaphore(1)
    pools = [WarmPool("agent", start_warm_agent, size=2, ready=ready, pace=pace, refill_delay_s=0) for _ in range(2)]
    taken = []
    try:
        for pool in pools:
            await pool.fill()
        assert max(peaks) == 2  # a first fill starts its actors at once
        peaks.clear()
        taken = [warm for pool in pools for warm in pool.take_many(2)]
        assert len(taken) == 4

        async def warm_counts() -> list[int]:
            return [len(pool) for pool in pools]

        await eventually(warm_counts, lambda counts: counts == [2, 2], 120)
        assert len(peaks) == 4 and max(peaks) == 1  # the refills of both pools went one by one
    finally:
        for pool in pools:
            await pool.close()
        for _, handle in taken:
            await stop_agent(handle)
