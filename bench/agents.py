"""Agent tool-call overhead: one tool call through Agent actor → SandboxProxy → sandbox, no model.

``python -m bench.agents --json`` — all figures measured in one run, p50 over interleaved rounds:
tool_call_overhead_ms (driver → ``Agent.call_tool("read_file")`` → proxy → sandbox and back;
target ≤ 10), direct_proxy_read_ms (the same read straight to the proxy from the driver),
raw_read_ms (the same read on the backend in this process), and agent_hop_ms (the first
minus the second: what the agent actor and its tools add).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import time

from bench.common import emit, p50, private_ray
from coordinator.resources import examples_dir

CASSETTE = examples_dir() / "cassettes" / "hello-team.yaml"


async def _measure(rounds: int) -> dict[str, float]:
    from actors.agent import AgentConfig, start_agent, stop_agent
    from actors.handles import proxy_name
    from actors.pools.proxies import release
    from actors.sandbox_proxy import start_proxy
    from sandbox_agents.backends.base import SandboxSpec
    from sandbox_agents.backends.local.backend import LocalBackend

    build, sid = f"bench-agents-{os.getpid()}", "sbx"
    name = proxy_name(build, sid)
    proxy = start_proxy(name, {"type": "local"})
    spec = SandboxSpec(tags={"bench": "agents"})
    sandbox_id = await proxy.create.remote(spec)
    await proxy.write_file.remote("src/app.py", "print('hello')\n" * 100)
    config = AgentConfig(
        build_id=build,
        sid=sid,
        index=0,
        llm={"type": "replay", "cassettes": [str(CASSETTE)]},  # never asked: no model turn is timed
        redis_url="redis://127.0.0.1:1/0",  # never connected: a tool call does not touch the bus
        spec=spec,
    )
    agent = start_agent(config, proxy)
    backend = LocalBackend()
    raw_sandbox = await backend.from_id(sandbox_id)
    args = {"path": "src/app.py"}
    try:
        for _ in range(20):  # warm every path
            result = await agent.call_tool.remote("read_file", args)
            assert not result.is_error, result.content
            await proxy.read_file.remote("src/app.py")
            await raw_sandbox.read_file("src/app.py")
        via_agent, direct, raw = [], [], []
        for _ in range(rounds):  # interleaved, so that load changes hit all three alike
            started = time.perf_counter()
            await agent.call_tool.remote("read_file", args)
            via_agent.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            await proxy.read_file.remote("src/app.py")
            direct.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            await raw_sandbox.read_file("src/app.py")
            raw.append((time.perf_counter() - started) * 1000)
    finally:
        await stop_agent(agent)
        await release(proxy, name)
        await backend.close()
    return {
        "tool_call_overhead_ms": p50(via_agent),
        "direct_proxy_read_ms": p50(direct),
        "raw_read_ms": p50(raw),
        "agent_hop_ms": round(p50(via_agent) - p50(direct), 3),
        "target_ms": 10.0,
        "rounds": rounds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument("--rounds", type=int, default=300)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with private_ray():
        result = asyncio.run(_measure(args.rounds))
    emit(result, args.json)


if __name__ == "__main__":
    main()
