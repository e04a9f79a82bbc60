"""Fleet readiness, coordinator recovery and memory per sandbox team.

``python -m bench.fleet --json``:

* ``fleet_ready_s`` — 3 components x 4 agents from a warm ProxyPool (3 started proxies, each
  with a standby sandbox): from the first ``acquire`` until every sandbox exists and every
  SandboxTeam has started its 4 Agent actors and each answered (target <= 3 s warm).
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

PROGRESS = ("slot.", "merge.", "component.phase", "checkpoint.taken")


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
    return await handle.__ray_call__.remote(lambda self: os.getpid())


async def _fleet_ready(redis_url: str) -> dict[str, Any]:
    from actors.sandbox_pool import ProxyPool, release
    from actors.sandbox_proxy import proxy_name
    from actors.swarm import SwarmConfig, start_swarm, stop_swarm
    from actors.team import TeamConfig, start_team, stop_team
    from coordinator.team import ComponentWork, TeamTask
    from sandbox_agents.backends.base import SandboxSpec

    build = f"bench-fleet-{os.getpid()}"
    pool = ProxyPool({"type": "local"}, size=3, standby=1)
    await pool.fill()  # warm: 3 proxies, each with a started standby sandbox
    await asyncio.sleep(1.0)
    spec = SandboxSpec(tags={"bench": "fleet"})
    cassette = Path(__file__).resolve().parents[1] / "examples" / "cassettes" / "hello-team.yaml"
    llm = {"type": "replay", "cassettes": [str(cassette)]}  # never asked: no task runs
    work = [
        ComponentWork(
            component=f"c{n}", agents=4, tasks=tuple(TeamTask(id=f"t{i}", title="x", agent=i) for i in range(4))
        )
        for n in range(3)
    ]
    teams: list[Any] = []
    proxies: list[Any] = []
    started = time.perf_counter()

    async def one(n: int) -> None:
        proxy = await pool.acquire(build, f"c{n}", spec, component=f"c{n}")
        proxies.append((n, proxy))
        config = TeamConfig(build_id=build, sid=f"c{n}", work=work[n], llm=llm, redis_url=redis_url, spec=spec)
        team = start_team(config, proxy)
        teams.append(team)
        await team.start_agents.remote()

    await asyncio.gather(*(one(n) for n in range(3)))
    ready = time.perf_counter() - started
    # memory of one slot: proxy + 4 agents + a swarm actor (and the team actor apart)
    n, proxy = proxies[0]
    swarm = start_swarm(SwarmConfig(build_id=build, sid=f"c{n}", spec=spec), proxy)
    await swarm.last_report.remote()
    agents = [h for _, h in await teams[0].agents.remote()]
    parts = {"proxy": await actor_pid(proxy), "swarm": await actor_pid(swarm)}
    parts.update({f"agent{i}": await actor_pid(a) for i, a in enumerate(agents)})
    mem = {name: memory_mib(pid) for name, pid in parts.items()}
    team_mib, _ = memory_mib(await actor_pid(teams[0]))
    for team in teams:
        await stop_team(team)
    await stop_swarm(swarm)
    for n, proxy in proxies:
        await release(proxy, proxy_name(build, f"c{n}"))
    await pool.close()
    return {
        "fleet_ready_s": round(ready, 3),
        "mib_per_sandbox_team": round(sum(m for m, _ in mem.values()), 1),
        "mib_team_actor": round(team_mib, 1),
        "memory_kind": next(iter(mem.values()))[1],
        "mib_parts": {k: round(m, 1) for k, (m, _) in mem.items()},
    }


async def _recovery(home: Path) -> dict[str, Any]:
    from actors.build_coordinator import get_coordinator, stop_coordinator
    from actors.control import stop_control
    from actors.runtime import start_runtime
    from coordinator.bus import BusConfig, ContextBus

    rt = await start_runtime(home, heartbeat_s=1.0, admit_poll_s=0.3, coordinator={"gate": {"swarm_must_pass": False}})
    bus = ContextBus(rt.redis_url, BusConfig(prefix="kriptik"), sender="bench")
    result: dict[str, Any] = {}
    try:
        build_id = await rt.control.submit.remote("bench", {"example": "hello-calc"})

        async def kinds() -> list[tuple[float, str]]:
            return [(time.time(), env.message.kind) for _, env in await bus.read_events(build_id, count=10_000)]

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
    from coordinator.redis_server import ManagedRedis

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
