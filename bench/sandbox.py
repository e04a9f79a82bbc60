"""Sandbox latency: create and exec through a warm SandboxProxy against the raw backend.

``python -m bench.sandbox --json`` — all figures measured in one run:
create_p50_ms (``ProxySandbox.create`` on a warm proxy until a first ``exec(["true"])`` returned),
create_cold_p50_ms (a new proxy actor and a fresh sandbox), exec_p50_ms (through the
proxy as every caller does it: ``ProxySandbox.exec``, which uses the proxy's same-host exec
channel), raw_exec_p50_ms (the same exec on the backend in this process), exec_overhead_ms,
exec_ray_p50_ms / exec_ray_overhead_ms (the same exec as a plain Ray actor call, for
comparison), snapshot_ms and restore_ms (a workspace of 200 files, 20 MB).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import time

from bench.common import emit, p50, private_ray


async def _measure(rounds: int, exec_rounds: int) -> dict[str, float]:
    from actors.pools.proxies import release
    from actors.sandbox_proxy import start_proxy
    from sandbox_agents.backends.base import SandboxSpec
    from sandbox_agents.backends.local.backend import LocalBackend
    from sandbox_agents.proxy_sandbox import ProxySandbox

    spec = SandboxSpec(tags={"bench": "sandbox"})
    warm_backend = {"type": "local", "standby": 1}
    proxies = [start_proxy(f"bench:proxy:{i}:{os.getpid()}", warm_backend) for i in range(2)]
    await asyncio.gather(*(p.warm.remote() for p in proxies))

    # Warm create: the proxy is started and holds a standby sandbox; refill is not timed.
    creates = []
    for i in range(rounds):
        proxy = proxies[i % len(proxies)]
        await proxy.warm.remote()
        started = time.perf_counter()
        created = await ProxySandbox.create(proxy, spec)  # as a caller creates: channel asked alongside
        await created.exec(["true"])
        creates.append((time.perf_counter() - started) * 1000)
        await created.aclose()
        await proxy.terminate.remote()

    # Exec through the proxy against the same exec on the backend directly.
    proxy = proxies[0]
    await proxy.create.remote(spec)
    backend = LocalBackend()
    raw_sandbox = await backend.from_id(await proxy.sandbox_id.remote())
    through = await ProxySandbox.connect(proxy, spec)
    for _ in range(10):  # warm every path
        await through.exec(["true"])
        await proxy.exec.remote(["true"])
        await raw_sandbox.exec(["true"])
    via_proxy, via_ray, raw = [], [], []
    for _ in range(exec_rounds):  # interleaved, so that load changes hit all alike
        started = time.perf_counter()
        await raw_sandbox.exec(["true"])
        raw.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        await through.exec(["true"])
        via_proxy.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        await proxy.exec.remote(["true"])
        via_ray.append((time.perf_counter() - started) * 1000)
    channel_used = through._channel is not None  # noqa: SLF001
    await through.aclose()

    # Snapshot and restore of ~200 files / 20 MB.
    for i in range(200):
        await raw_sandbox.write_file(f"src/dir{i % 10}/file{i}.bin", os.urandom(100 * 1024))
    snaps, restores = [], []
    for _ in range(3):
        started = time.perf_counter()
        ref = await raw_sandbox.snapshot()
        snaps.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        restored = await backend.restore(ref)
        restores.append((time.perf_counter() - started) * 1000)
        await restored.terminate()

    # Cold: a new proxy actor, no standby sandbox.
    colds = []
    for i in range(3):
        started = time.perf_counter()
        cold = start_proxy(f"bench:cold:{i}:{os.getpid()}", {"type": "local"})
        await cold.create.remote(spec)
        await cold.exec.remote(["true"])
        colds.append((time.perf_counter() - started) * 1000)
        await release(cold, f"bench:cold:{i}:{os.getpid()}")
    for i, handle in enumerate(proxies):
        await release(handle, f"bench:proxy:{i}:{os.getpid()}")
    await backend.close()

    exec_p50, ray_p50, raw_p50 = p50(via_proxy), p50(via_ray), p50(raw)
    return {
        "create_p50_ms": p50(creates),
        "create_cold_p50_ms": p50(colds),
        "exec_p50_ms": exec_p50,
        "raw_exec_p50_ms": raw_p50,
        "exec_overhead_ms": round(exec_p50 - raw_p50, 3),
        "exec_channel": channel_used,
        "exec_ray_p50_ms": ray_p50,
        "exec_ray_overhead_ms": round(ray_p50 - raw_p50, 3),
        "snapshot_ms": p50(snaps),
        "restore_ms": p50(restores),
        "rounds": rounds,
        "exec_rounds": exec_rounds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--exec-rounds", type=int, default=200)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with private_ray():
        result = asyncio.run(_measure(args.rounds, args.exec_rounds))
    emit(result, args.json)


if __name__ == "__main__":
    main()
