"""Fleet readiness, coordinator recovery and memory per sandbox team.

``python -m bench.fleet --json``:

* ``fleet_ready_s`` — a build's fleet for 3 components x 4 agents from warm pools
  (:class:`~actors.pools.fleet.FleetPools`: 3 proxies each with a standby sandbox, 3 teams,
  12 agents, 3 swarms; filled beforehand and not timed, as for ``bench.sandbox``'s warm create):
  from the first acquire until every sandbox exists, every SandboxTeam has bound its 4 agents
  and each answered, and every slot's Swarm actor is bound — through the same helpers the
  coordinator uses (``acquire_proxy``, ``launch_team``, ``launch_swarm``). Target <= 3 s.
* ``fleet_ready_cold_s`` — the same fleet with no pools (21 actor starts); ``pool_fill_s`` — how
  long filling the pools took (off the build's critical path: Control fills them at start and
  refills them in the background).
* ``recovery_s`` — a hello-calc build through Control; its coordinator is SIGKILLed while the
  team works; from the kill until the new incarnation records progress again (its first
  ``slot.*``/``merge.*``/``component.phase``/``checkpoint.taken`` event after
  ``coordinator.resumed``). ``resumed_s`` is kill → ``coordinator.resumed`` (target <= 5 s).
* ``mib_per_sandbox_team`` — PSS (``/proc/PID/smaps_rollup``; RSS when PSS is unreadable) of one
  slot's actors: its SandboxProxy, 4 Agents and a Swarm actor (the team actor is reported apart).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import emit, private_ray
from coordinator.resources import examples_dir

PROGRESS = ("slot.", "merge.", "component.phase", "checkpoint.taken")
LOCAL = {"type": "local"}


def memory_mib(pid: int) -> tuple[float, str]:
    """PSS of a process in MiB (RSS if smaps_rollup is not readable)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024, "pss"
    except OSError:
        pass
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024, "rss"
    return 0.0, "none"


async def actor_pid(handle: Any) -> int:
    pid: int = await handle.__ray_call__.remote(lambda self: os.getpid())
    return pid


async def _fleet(redis_url: str, build: str, source: Any) -> tuple[float, list[Any], list[Any], list[Any]]:
    """Acquire 3 slots' proxies, teams (4 agents each) and swarms from ``source`` (None: cold); timed."""
    from actors.pools.proxies import acquire_proxy
    from actors.swarm import SwarmConfig, launch_swarm
    from actors.team import TeamConfig, launch_team
    from coordinator.team import ComponentWork, TeamTask
    from sandbox_agents.backends.base import SandboxSpec

    spec = SandboxSpec(tags={"bench": "fleet"})
    cassette = examples_dir() / "cassettes" / "hello-team.yaml"
    llm = {"type": "replay", "cassettes": [str(cassette)]}  # never asked: no task runs
    tasks = tuple(TeamTask(id=f"t{i}", title="x", agent=i) for i in range(4))
    proxies: list[Any] = [None] * 3
    teams: list[Any] = [None] * 3
    swarms: list[Any] = [None] * 3
    started = time.perf_counter()

    async def one(n: int) -> None:
        sid = f"c{n}"
        proxies[n] = proxy = await acquire_proxy(source, LOCAL, build, sid, spec, component=sid)
        config = TeamConfig(build_id=build, sid=sid, work=ComponentWork(component=sid, agents=4, tasks=tasks),
                            llm=llm, redis_url=redis_url, spec=spec)  # fmt: skip
        swarm = launch_swarm(SwarmConfig(build_id=build, sid=sid, spec=spec), proxy, source)
        teams[n], swarms[n] = await asyncio.gather(launch_team(config, proxy, source), swarm)
        await swarms[n].ping.remote()

    await asyncio.gather(*(one(n) for n in range(3)))
    return time.perf_counter() - started, proxies, teams, swarms


async def _release_fleet(build: str, proxies: list[Any], teams: list[Any], swarms: list[Any]) -> None:
    from actors.handles import proxy_name, swarm_name, team_name
    from actors.pools.proxies import release
    from actors.swarm import stop_swarm
    from actors.team import stop_team

    for n in range(3):
        await stop_team(teams[n], team_name(build, f"c{n}"))
        await stop_swarm(swarms[n], swarm_name(build, f"c{n}"))
        await release(proxies[n], proxy_name(build, f"c{n}"))


async def _fleet_ready(redis_url: str) -> dict[str, Any]:
    from actors.pools.fleet import FleetPoolConfig, FleetPools

    pools = FleetPools(LOCAL, FleetPoolConfig(proxies=3, standby=1, teams=3, agents=12, swarms=3))
    filling = time.perf_counter()
    await pools.fill()  # ahead of the build: not timed
    fill_s = time.perf_counter() - filling
    await asyncio.sleep(1.0)  # let the fresh workers settle, as a pool filled long before a build would be
    build = f"bench-fleet-{os.getpid()}"
    ready, proxies, teams, swarms = await _fleet(redis_url, build, pools)
    taken_all = all(v == 0 for v in pools.warm().values())
    # memory of one slot: proxy + 4 agents + the swarm (and the team actor apart)
    agents = [h for _, h in await teams[0].agents.remote()]
    parts = {"proxy": await actor_pid(proxies[0]), "swarm": await actor_pid(swarms[0])}
    parts.update({f"agent{i}": await actor_pid(a) for i, a in enumerate(agents)})
    mem = {name: memory_mib(pid) for name, pid in parts.items()}
    team_mib, _ = memory_mib(await actor_pid(teams[0]))
    await pools.close()  # no refill competes with the cold run
    await _release_fleet(build, proxies, teams, swarms)
    await asyncio.sleep(1.0)
    cold_build = f"{build}-cold"
    cold, proxies, teams, swarms = await _fleet(redis_url, cold_build, None)
    await _release_fleet(cold_build, proxies, teams, swarms)
    return {
        "fleet_ready_s": round(ready, 3),
        "fleet_ready_cold_s": round(cold, 3),
        "fleet_all_warm": taken_all,
        "pool_fill_s": round(fill_s, 3),
        "mib_per_sandbox_team": round(sum(m for m, _ in mem.values()), 1),
        "mib_team_actor": round(team_mib, 1),
        "memory_kind": next(iter(mem.values()))[1],
        "mib_parts": {k: round(m, 1) for k, (m, _) in mem.items()},
    }


async def _recovery(home: Path) -> dict[str, Any]:
    from actors.build.actor import get_coordinator, stop_coordinator
    from actors.control import stop_control
    from actors.runtime import start_runtime
    from coordinator.bus import BusConfig, ContextBus, Event

    rt = await start_runtime(home, heartbeat_s=1.0, admit_poll_s=0.3, coordinator={"gate": {"swarm_must_pass": False}})
    bus = ContextBus(rt.redis_url, BusConfig(prefix="kriptik"), sender="bench")
    result: dict[str, Any] = {}
    try:
        build_id = await rt.control.submit.remote("bench", {"example": "hello-calc"})

        async def kinds() -> list[tuple[float, str]]:
            log = await bus.read_events(build_id, count=10_000)
            return [(time.time(), env.message.kind) for _, env in log if isinstance(env.message, Event)]

        deadline = time.monotonic() + 120
        while not any(k == "slot.building" for _, k in await kinds()):
            if time.monotonic() > deadline:
                raise TimeoutError("the build never started its team")
            await asyncio.sleep(0.05)
        seen = len(await kinds())
        pid = await get_coordinator(build_id).pid.remote()
        killed = time.perf_counter()
        os.kill(pid, signal.SIGKILL)
        resumed = progressed = None
        while progressed is None and time.monotonic() < deadline + 60:
            new = [k for _, k in (await kinds())[seen:]]
            if resumed is None and "coordinator.resumed" in new:
                resumed = time.perf_counter() - killed
            if resumed is not None:
                after = new[new.index("coordinator.resumed") + 1 :]
                if any(k.startswith(PROGRESS) for k in after):
                    progressed = time.perf_counter() - killed
            await asyncio.sleep(0.02)
        result = {"recovery_s": round(progressed or -1, 3), "resumed_s": round(resumed or -1, 3)}
        deadline = time.monotonic() + 120
        while (await rt.control.status.remote("bench", build_id))["status"] not in ("completed", "failed"):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        result["recovered_build"] = (await rt.control.status.remote("bench", build_id))["status"]
        await stop_coordinator(get_coordinator(build_id))
    finally:
        await bus.aclose(flush_timeout=1.0)
        await stop_control(rt.control)
        await rt.stop()
    return result


async def _measure() -> dict[str, Any]:
    from coordinator.bus.redis_server import ManagedRedis

    home = Path(os.environ["KRIPTIK_HOME"])
    redis = ManagedRedis(Path(tempfile.mkdtemp(prefix="kriptik-bench-redis-")))
    await redis.astart()
    try:
        fleet = await _fleet_ready(redis.url)
    finally:
        redis.stop()
    recovery = await _recovery(home)
    return {**fleet, **recovery, "targets": {"fleet_ready_s": 3.0, "recovery_s": 5.0}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with private_ray():
        result = asyncio.run(_measure())
    emit(result, args.json)


if __name__ == "__main__":
    main()
