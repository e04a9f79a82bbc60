"""A real two-node Ray on this machine: sandboxes land on the node that offers ``sandbox_host``.

A head (``control_host``) and a worker (``sandbox_host``) are started with ``ray start`` under a
temp dir of our own; a driver *subprocess* (this pytest process already holds the session's
single-node Ray) joins with ``RAY_ADDRESS``, sets ``KRIPTIK_SANDBOX_RESOURCE=sandbox_host`` for
every worker, runs a whole hello-calc build through Control (coordinator pool of one warm proxy,
so both the pool and the cold path start proxies) and reports the node id of each proxy it saw:
the slot's (polled while the build runs, as it is released after its merge), the merge gate's
``main-test`` and the pool's warm one. Both nodes are torn down by killing their processes (found
by the temp dir in their command lines) — never ``ray stop``, which would end every Ray of the user.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors.ray_local import RAY_ENV
from coordinator.bus.redis_server import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

REPO = Path(__file__).resolve().parents[2]

DRIVER = textwrap.dedent(
    """
    import asyncio, json, os, time
    import ray

    from actors.build.actor import get_coordinator, stop_coordinator
    from actors.control import stop_control
    from actors.runtime import start_runtime
    from actors.handles import NAMESPACE
    from actors.pools.proxies import get_proxy

    def node_of(handle):
        return handle.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id())

    async def main():
        home = os.environ["KRIPTIK_HOME"]
        env = {"KRIPTIK_HOME": home, "KRIPTIK_SANDBOX_RESOURCE": "sandbox_host"}
        ray.init(namespace=NAMESPACE, runtime_env={"env_vars": env}, log_to_driver=False)
        nodes = {n["NodeID"]: sorted(n["Resources"]) for n in ray.nodes() if n["Alive"]}
        rt = await start_runtime(home, heartbeat_s=5.0, admit_poll_s=0.3,
                                 coordinator={"pool_size": 1, "gate": {"swarm_must_pass": False}})
        placed, status = {}, {}
        try:
            placed["control"] = await node_of(rt.control)
            build = await rt.control.submit.remote("alice", {"example": "hello-calc"})
            deadline = time.monotonic() + 70
            while time.monotonic() < deadline:
                status = await rt.control.status.remote("alice", build)
                if "calc" not in placed:
                    try:
                        placed["calc"] = await asyncio.wait_for(node_of(get_proxy(build, "calc")), 5)
                    except Exception:
                        pass
                if status["status"] in ("completed", "failed", "cancelled", "paused"):
                    break
                await asyncio.sleep(0.2)
            placed["main-test"] = await node_of(get_proxy(build, "main-test"))  # warm (aliased) or cold
            for a in ray.util.list_named_actors(all_namespaces=True):
                if a["name"].startswith("kriptik:proxy:"):
                    placed["warm:" + a["name"]] = await node_of(ray.get_actor(a["name"], namespace=NAMESPACE))
            await stop_coordinator(get_coordinator(build))
        finally:
            await stop_control(rt.control)
            await rt.stop()
        print(json.dumps({"nodes": nodes, "placed": placed, "status": status.get("status"),
                          "phase": status.get("phase")}))

    asyncio.run(main())
    """
)


def _our_processes(marker: str, home: str | None = None) -> list[int]:
    """Pids whose command line or environment names ``marker`` (our temp dir: the nodes' Ray processes,
    also those that retitle themselves, like ``ray::DashboardAgent``), or that run in ``home`` if given
    (their working directory is inside it, like the managed ``redis-server`` of the driver's runtime,
    left behind when the driver is killed on its timeout, or their ``KRIPTIK_HOME`` is it).

    Read from ``/proc`` rather than ``ps``, whose output is cut to the terminal's width.
    """
    me, found = os.getpid(), []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == me:
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = (proc / "environ").read_bytes().decode(errors="replace") + "\0"
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        inside_home = home is not None and (cwd == home or cwd.startswith(home + "/") or f"={home}\0" in environ)
        if marker in cmdline or marker in environ or inside_home:
            found.append(int(proc.name))
    return found


def _kill_tree(marker: str, home: str | None = None, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while (pids := _our_processes(marker, home)) and time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)


def _ports(n: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < n:
        ports.add(free_port())
    return sorted(ports)


def _node_args(ports: list[int]) -> list[str]:
    """Every port a node opens, chosen free, so the test never collides with another Ray here."""
    manager, objects, agent_grpc, agent_http, runtime_env, metrics, client = ports[:7]
    low = ports[7]
    return [
        "--node-ip-address=127.0.0.1",
        f"--node-manager-port={manager}",
        f"--object-manager-port={objects}",
        f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--dashboard-agent-listen-port={agent_http}",
        f"--runtime-env-agent-port={runtime_env}",
        f"--metrics-export-port={metrics}",
        f"--ray-client-server-port={client}",
        f"--min-worker-port={low}",
        f"--max-worker-port={low + 40}",
    ]


@pytest.fixture()
def two_nodes() -> Iterator[dict[str, str]]:
    if shutil.which("ray") is None:
        pytest.skip("the `ray` CLI is not installed: cannot start a two-node cluster")
    tmp = tempfile.mkdtemp(prefix="kmn-")  # short: Ray's unix socket paths must stay under 107 bytes
    home = tempfile.mkdtemp(prefix="kriptik-mn-home-")
    env = {**os.environ, **RAY_ENV, "RAY_AUTH_MODE": "token", "KRIPTIK_HOME": home, "RAY_TMPDIR": tmp}
    env.pop("RAY_ADDRESS", None)
    current = Path("/tmp/ray/ray_current_cluster")
    previous = current.read_text() if current.exists() else None
    head_port = free_port()
    base = [sys.executable, "-m", "ray.scripts.scripts", "start", "--disable-usage-stats", f"--temp-dir={tmp}",
            "--num-cpus=2"]  # fmt: skip
    try:
        try:
            head = subprocess.run(
                [
                    *base,
                    "--head",
                    f"--port={head_port}",
                    """--resources={"control_host": 1}""",
                    "--include-dashboard=false",
                    *_node_args(_ports(8)),
                    f"--dashboard-port={free_port()}",
                ],  # fmt: skip
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            pytest.skip(f"`ray start --head` is unavailable here: {exc}")
        if head.returncode != 0:
            pytest.skip(f"`ray start --head` failed (rc {head.returncode}): {head.stderr[-800:]}")
        worker = subprocess.run(
            [
                *base,
                f"--address=127.0.0.1:{head_port}",
                """--resources={"sandbox_host": 100}""",
                *_node_args(_ports(8)),
            ],  # fmt: skip
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert worker.returncode == 0, worker.stderr[-2000:]
        yield {**env, "RAY_ADDRESS": f"127.0.0.1:{head_port}", "MARKER": tmp}
    finally:
        _kill_tree(tmp, home)
        _purge_sandboxes(home)
        if previous is not None:  # `ray start --head` points plain `ray.init()` at itself: undo that
            current.write_text(previous)
        elif current.exists() and str(head_port) in current.read_text():
            current.unlink()
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)


def _purge_sandboxes(home: str) -> None:
    import asyncio

    from sandbox_agents.backends.config import LocalBackendConfig
    from sandbox_agents.backends.local.backend import LocalBackend
    from sandbox_agents.backends.local.state import default_root

    root = default_root(Path(home))
    if root.exists():
        asyncio.run(LocalBackend(LocalBackendConfig(root=root)).purge())


def test_sandbox_proxies_are_placed_on_the_sandbox_host(two_nodes: dict[str, str]) -> None:
    started = time.monotonic()
    env = {k: v for k, v in two_nodes.items() if k != "MARKER"}
    done = subprocess.run(
        [sys.executable, "-c", DRIVER], cwd=REPO, env=env, capture_output=True, text=True, timeout=110
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    nodes = report["nodes"]
    assert len(nodes) == 2, nodes
    worker = next(n for n, res in nodes.items() if "sandbox_host" in res)
    head = next(n for n, res in nodes.items() if "control_host" in res)
    assert report["status"] == "completed", report
    placed = report["placed"]
    assert {"calc", "main-test"} <= set(placed), placed
    sandboxes = {k: v for k, v in placed.items() if k != "control"}
    assert all(node == worker for node in sandboxes.values()), (placed, worker, head)
    assert time.monotonic() - started < 90
