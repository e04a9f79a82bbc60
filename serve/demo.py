"""``kriptik demo``: a whole example build by default, or (``--sandboxes-only``) just the sandbox fleet.

The build demo lives in :mod:`serve.demo_build`. The sandbox demo starts a private
single-node Ray, a warm pool of SandboxProxy actors holding standby sandboxes, creates a few
sandboxes through it, runs a real program in each, snapshots one, restores it, and prints
every timing. Both are offline; both print one JSON object as the last line with ``--json``.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from serve.demo_build import DemoOptions, run_build_demo


async def _run(sandboxes: int, console: Console) -> dict[str, Any]:
    from actors.pools.proxies import ProxyPool, release
    from sandbox_agents.backends.base import SandboxSpec

    timings: dict[str, Any] = {}
    started = time.perf_counter()
    pool = ProxyPool({"type": "local"}, size=sandboxes, standby=1)
    with console.status("starting warm proxies and standby sandboxes…"):
        await pool.fill()
    timings["pool_ready_s"] = round(time.perf_counter() - started, 2)

    program = "import sys, platform\nprint(f'hello from {platform.node()} as uid', __import__('os').getuid())\n"
    handles, creates = [], []
    for i in range(sandboxes):
        t0 = time.perf_counter()
        handle = await pool.acquire("demo", f"c{i}", SandboxSpec(tags={"build": "demo", "component": f"c{i}"}))
        result = await handle.exec.remote(["true"])
        creates.append(round((time.perf_counter() - t0) * 1000, 1))
        assert result.exit_code == 0
        await handle.write_file.remote("main.py", program)
        handles.append(handle)
    outputs = await asyncio.gather(*(h.exec.remote(["python3", "main.py"]) for h in handles))
    timings["create_ms"] = creates

    t0 = time.perf_counter()
    ref = await handles[0].snapshot.remote()
    timings["snapshot_ms"] = round((time.perf_counter() - t0) * 1000, 1)
    await handles[0].write_file.remote("main.py", "print('changed after the snapshot')\n")
    t0 = time.perf_counter()
    await handles[0].restore.remote(ref)
    timings["restore_ms"] = round((time.perf_counter() - t0) * 1000, 1)
    restored = await handles[0].exec.remote(["python3", "main.py"])

    table = Table(title="sandboxes")
    table.add_column("sandbox")
    table.add_column("create → first exec (ms)", justify="right")
    table.add_column("output")
    for i, (handle, out) in enumerate(zip(handles, outputs, strict=True)):
        table.add_row(await handle.sandbox_id.remote(), str(creates[i]), out.stdout.strip())
    console.print(table)
    console.print(
        f"snapshot {timings['snapshot_ms']} ms, restore {timings['restore_ms']} ms → {restored.stdout.strip()}"
    )
    for handle in handles:
        await release(handle)
    await pool.close()
    timings["wall_s"] = round(time.perf_counter() - started, 2)
    timings["status"] = "done" if restored.stdout.startswith("hello") else "failed"
    return timings


def run_demo(options: DemoOptions, *, as_json: bool = False) -> int:
    """Run one example build (:mod:`serve.demo_build`); exit code 0 only when it completed."""
    console = Console(stderr=as_json)
    try:
        result = asyncio.run(run_build_demo(options, console))
    except KeyboardInterrupt:
        result = {"status": "cancelled", "example": options.example}
    if as_json:
        print(json.dumps(result), flush=True)
    else:
        console.print(f"{result['status']} in {result.get('wall_s', '?')} s")
    return 0 if result["status"] == "completed" else 1


def run_sandbox_demo(*, sandboxes: int = 3, as_json: bool = False) -> int:
    """Run the sandbox-only demo; returns a process exit code."""
    from actors.ray_local import private_ray

    console = Console(stderr=as_json)
    with private_ray():
        result = asyncio.run(_run(sandboxes, console))
    if as_json:
        print(json.dumps(result))
    return 0 if result["status"] == "done" else 1
