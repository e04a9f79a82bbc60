"""SandboxProxy on a real Ray: operations, errors across the actor boundary, restart, pool."""

from __future__ import annotations

import asyncio
import time

import pytest

from actors.handles import proxy_name
from actors.pools.proxies import ProxyPool, get_proxy, release
from actors.sandbox_proxy import start_proxy
from sandbox_agents.backends.base import SandboxSpec, SandboxStatus
from sandbox_agents.errors import InvalidInputError, SandboxError, SandboxPathError

LOCAL = {"type": "local"}


async def eventually(call, check, timeout_s: float = 30.0):  # type: ignore[no-untyped-def]
    """Poll an actor call until ``check`` holds (the actor may be restarting meanwhile)."""
    end = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < end:
        try:
            last = await call()
            if check(last):
                return last
        except Exception as exc:  # ActorUnavailableError / RayActorError while restarting
            last = exc
        await asyncio.sleep(0.2)
    raise AssertionError(f"condition not reached; last: {last!r}")


@pytest.fixture
def proxy(ray_cluster):  # type: ignore[no-untyped-def]
    name = proxy_name("t-proxy", f"s{time.monotonic_ns()}")
    handle = start_proxy(name, LOCAL, heartbeat_s=0.3)
    yield handle
    asyncio.run(release(handle, name))


async def test_proxy_runs_the_sandbox_operations(proxy) -> None:  # type: ignore[no-untyped-def]
    sandbox_id = await proxy.create.remote(SandboxSpec(tags={"build": "t-proxy"}))
    await proxy.write_file.remote("app/hello.py", "print('hello')\n")
    result = await proxy.exec.remote(["python3", "app/hello.py"])
    assert result.exit_code == 0 and result.stdout == "hello\n"
    chunks = [await ref async for ref in proxy.exec_stream.options(num_returns="streaming").remote("echo a; echo b")]
    assert chunks[-1].exit_code == 0 and "".join(c.data for c in chunks[:-1]).split() == ["a", "b"]
    assert [f.path for f in await proxy.list_files.remote("**/*.py")] == ["app/hello.py"]
    ref = await proxy.snapshot.remote()
    assert ref.sandbox_id == sandbox_id
    metering = await proxy.metering.remote()
    assert metering.execs == 2 and metering.compute_seconds > 0
    _, events = await proxy.events.remote()
    assert [e.kind for e in events][:2] == ["created", "snapshot"]


async def test_the_proxy_tells_when_commands_ran_in_its_sandbox(proxy) -> None:  # type: ignore[no-untyped-def]
    await proxy.create.remote(SandboxSpec(tags={"build": "t-proxy"}))
    await proxy.write_file.remote("a.txt", "file writes are no commands\n")
    assert await proxy.busy.remote() == []
    before = time.time()
    await asyncio.gather(proxy.exec.remote("sleep 0.3"), proxy.exec.remote("sleep 0.2"))
    [(start, end)] = await proxy.busy.remote()  # two commands at once: one interval
    assert before <= start and end - start >= 0.3
    await proxy.exec.remote("true")
    assert len(await proxy.busy.remote()) == 2 and await proxy.busy.remote(end) == (await proxy.busy.remote())[1:]


async def test_the_install_phase_runs_through_the_proxy_and_is_recorded(proxy) -> None:  # type: ignore[no-untyped-def]
    # A manifest with no dependency: npm runs in the installer sandbox and reaches no registry.
    await proxy.create.remote(SandboxSpec(profile="node", tags={"build": "t-proxy"}))
    await proxy.write_file.remote("web/package.json", '{"name": "w", "version": "1.0.0", "private": true}')
    result = await proxy.install.remote({"manager": "npm", "dir": "web"})
    assert result.ok, result.output
    again = await proxy.install.remote({"manager": "npm", "dir": "web"})
    assert again.ok and not again.changed
    _, events = await proxy.events.remote()
    installs = [e.detail for e in events if e.kind == "installed"]
    assert [d["ok"] for d in installs] == ["True", "True"] and installs[0]["dir"] == "web"
    with pytest.raises(InvalidInputError):
        await proxy.install.remote({"manager": "npm", "dir": "../etc"})
    with pytest.raises(SandboxPathError, match="needs the manifest"):
        await proxy.install.remote({"manager": "npm", "dir": "api"})


async def test_errors_cross_the_actor_boundary_as_our_types(proxy) -> None:  # type: ignore[no-untyped-def]
    await proxy.create.remote({"memory_mb": 128})
    with pytest.raises(SandboxPathError) as info:
        await proxy.read_file.remote("../../etc/shadow")
    assert info.value.path == "../../etc/shadow"
    with pytest.raises(InvalidInputError):
        await proxy.expose.remote("80")
    with pytest.raises(InvalidInputError):
        await proxy.create.remote({"memory_mb": "lots"})


async def test_killed_proxy_restarts_and_reconnects_to_the_same_sandbox(proxy, ray_cluster) -> None:  # type: ignore[no-untyped-def]
    sandbox_id = await proxy.create.remote(SandboxSpec())
    await proxy.write_file.remote("state.txt", "survives")
    old_pid = await proxy.pid.remote()
    ray_cluster.kill(proxy, no_restart=False)  # asynchronous: wait for the new incarnation, not just an answer
    await eventually(lambda: proxy.pid.remote(), lambda pid: pid != old_pid, 60)
    content = await eventually(lambda: proxy.read_file.remote("state.txt"), lambda v: v == b"survives")
    assert content == b"survives"
    assert await proxy.sandbox_id.remote() == sandbox_id
    assert await proxy.status.remote() == SandboxStatus.RUNNING
    _, events = await proxy.events.remote()
    assert events[0].kind == "reconnected"


async def test_exec_goes_over_the_same_host_channel_and_survives_a_proxy_restart(proxy, ray_cluster) -> None:  # type: ignore[no-untyped-def]
    from sandbox_agents.proxy_sandbox import ProxySandbox

    await proxy.create.remote(SandboxSpec())
    sandbox = await ProxySandbox.connect(proxy)
    first = await sandbox.exec(["sh", "-c", "echo $((6 * 7)); echo err >&2; exit 3"])
    assert (first.exit_code, first.stdout, first.stderr) == (3, "42\n", "err\n")
    assert sandbox._channel is not None  # noqa: SLF001 - the call went over the proxy's socket, not Ray
    with pytest.raises(SandboxPathError):  # the proxy's validation and our error types, as over Ray
        await sandbox.exec(["true"], cwd="../../etc")
    assert (await sandbox.exec("cat", stdin=b"in")).stdout == "in"
    assert (await proxy.metering.remote()).execs == 3  # metered by the proxy like any exec
    old_pid = await proxy.pid.remote()
    ray_cluster.kill(proxy, no_restart=False)
    await eventually(lambda: proxy.pid.remote(), lambda pid: pid != old_pid, 60)
    # the old channel died with its process: this exec goes through Ray, the next gets the new channel
    again = await eventually(lambda: sandbox.exec(["echo", "back"]), lambda r: r.stdout == "back\n")
    assert again.exit_code == 0
    assert (await sandbox.exec(["echo", "fast"])).stdout == "fast\n"
    assert sandbox._channel is not None and sandbox._channel.info.path  # noqa: SLF001
    await sandbox.aclose()


async def test_proxy_sandbox_create_brings_the_channel_in_the_same_round_trip(proxy) -> None:  # type: ignore[no-untyped-def]
    from sandbox_agents.proxy_sandbox import ProxySandbox

    sandbox = await ProxySandbox.create(proxy, SandboxSpec(tags={"t": "open"}), build_id="b1", component="api")
    assert sandbox.id == await proxy.sandbox_id.remote()
    assert sandbox._channel is not None  # noqa: SLF001 - the first exec needs no Ray call
    assert (await sandbox.exec(["pwd"])).stdout == "/workspace\n"
    with pytest.raises(SandboxError):  # one sandbox per proxy, as with create
        await ProxySandbox.create(proxy, SandboxSpec())
    await sandbox.aclose()


async def test_heartbeat_keeps_an_active_build_sandbox_past_its_ttl(proxy) -> None:  # type: ignore[no-untyped-def]
    await proxy.create.remote(SandboxSpec(timeout_s=2))
    await proxy.set_active.remote(True)
    await asyncio.sleep(4)  # twice the TTL: without the heartbeat the sandbox would be gone
    assert await proxy.status.remote() == SandboxStatus.RUNNING
    await proxy.set_active.remote(False)
    await eventually(lambda: proxy.status.remote(), lambda s: s == SandboxStatus.DEAD, 20)


async def test_pool_hands_out_warm_proxies_under_the_build_name(ray_cluster) -> None:  # type: ignore[no-untyped-def]
    pool = ProxyPool(LOCAL, size=1, standby=1)
    await pool.fill()
    handle = await pool.acquire("t-pool", "frontend", SandboxSpec(tags={"component": "frontend"}), component="frontend")
    assert (await handle.exec.remote(["true"])).exit_code == 0
    again = get_proxy("t-pool", "frontend")
    assert await again.sandbox_id.remote() == await handle.sandbox_id.remote()
    await release(handle)
    await pool.close()
