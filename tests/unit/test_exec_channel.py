"""The proxy's same-host exec channel: a real unix socket, a fake exec behind it (no Ray here)."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path
from typing import Any

import pytest

from sandbox_agents.backends.base import ExecResult
from sandbox_agents.errors import InvalidInputError, SandboxError, SandboxPathError, SandboxTimeoutError
from sandbox_agents.exec_channel import (
    ChannelInfo,
    ChannelUnavailableError,
    ExecChannelClient,
    ExecChannelServer,
    channel_path,
    sweep_stale,
)


class FakeExec:
    """Answers like a proxy's exec: echoes argv, raises for some commands, records what it got."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.gate: asyncio.Event | None = None

    async def __call__(self, command: Any, cwd: Any, env: Any, timeout: Any, stdin: Any) -> ExecResult:
        self.calls.append((command, cwd, env, timeout, stdin))
        if self.gate is not None:
            await self.gate.wait()
        if command == ["escape"]:
            raise SandboxPathError("path escapes the workspace", path="../../etc/passwd")
        if command == ["slow"]:
            raise SandboxTimeoutError("timed out", timeout_s=2.0, stdout="partial", stderr="")
        out = " ".join(command) if isinstance(command, list) else command
        return ExecResult(exit_code=0, stdout=out, stderr="", duration_s=0.001, truncated=False)


@pytest.fixture
async def served(tmp_path: Path) -> Any:
    fake = FakeExec()
    server = ExecChannelServer(tmp_path / "ch" / "p.sock", fake)
    info = await server.start()
    yield fake, server, info
    await server.close()


async def test_an_exec_round_trips_with_its_arguments_and_result(served: Any) -> None:
    fake, _, info = served
    client = ExecChannelClient(info)
    result = await client.exec(["echo", "hi"], cwd="src", env={"A": "1"}, timeout=5.0, stdin=b"\x00in")
    assert result == ExecResult(exit_code=0, stdout="echo hi", stderr="", duration_s=0.001, truncated=False)
    assert fake.calls == [(["echo", "hi"], "src", {"A": "1"}, 5.0, b"\x00in")]
    assert (await client.exec("true")).stdout == "true"  # a shell string, on the kept connection
    await client.aclose()


async def test_the_proxy_errors_arrive_as_the_same_classes_with_their_fields(served: Any) -> None:
    _, _, info = served
    client = ExecChannelClient(info)
    with pytest.raises(SandboxPathError) as escaped:
        await client.exec(["escape"])
    assert escaped.value.path == "../../etc/passwd"
    with pytest.raises(SandboxTimeoutError) as slow:
        await client.exec(["slow"])
    assert slow.value.timeout_s == 2.0 and slow.value.stdout == "partial"
    assert (await client.exec(["still", "fine"])).stdout == "still fine"  # the connection survives errors
    await client.aclose()


async def test_a_wrong_token_is_refused_before_anything_runs(served: Any) -> None:
    fake, _, info = served
    forged = ExecChannelClient(info.model_copy(update={"token": "0" * 32}))
    with pytest.raises(ChannelUnavailableError):
        await forged.exec(["rm", "-rf", "/"])
    assert fake.calls == []


async def test_bad_requests_are_answered_with_invalid_input_not_a_crash(served: Any) -> None:
    fake, _, info = served
    client = ExecChannelClient(info)
    with pytest.raises(InvalidInputError):
        await client.exec(["ok"], timeout="soon")  # type: ignore[arg-type]
    reader, writer = await client._connect()  # noqa: SLF001 - a raw, hand-made frame
    from sandbox_agents.exec_channel import _frame, _read_frame

    writer.write(_frame({"command": ["x"], "shell": True}))
    await writer.drain()
    assert await _read_frame(reader) == {"ok": True}  # the greeting: the token was accepted
    answer = await _read_frame(reader)
    assert "error" in answer and fake.calls == []
    writer.close()
    assert (await client.exec(["after"])).stdout == "after"
    await client.aclose()


async def test_concurrent_execs_use_separate_connections(served: Any) -> None:
    fake, _, info = served
    fake.gate = asyncio.Event()
    client = ExecChannelClient(info)
    running = [asyncio.create_task(client.exec([f"n{i}"])) for i in range(3)]
    while len(fake.calls) < 3:  # all three reached the proxy while none could answer yet
        await asyncio.sleep(0.005)
    fake.gate.set()
    assert sorted(r.stdout for r in await asyncio.gather(*running)) == ["n0", "n1", "n2"]
    await client.aclose()


async def test_a_restarted_server_voids_old_clients_so_callers_fall_back(tmp_path: Path) -> None:
    path = tmp_path / "ch" / "p.sock"
    first = ExecChannelServer(path, FakeExec())
    client = ExecChannelClient(await first.start())
    assert (await client.exec(["one"])).stdout == "one"
    await first.close()
    second = ExecChannelServer(path, FakeExec())  # the proxy's next incarnation: same path, new token
    await second.start()
    with pytest.raises(ChannelUnavailableError):  # the idle connection is dead, the old token refused
        await client.exec(["two"])
    await second.close()
    with pytest.raises(ChannelUnavailableError):  # and no socket at all
        await ExecChannelClient(ChannelInfo(path=str(path), token="x", host="h")).exec(["three"])


async def test_the_socket_is_private_to_its_owner(served: Any) -> None:
    _, server, info = served
    assert stat.S_IMODE(Path(info.path).stat().st_mode) == 0o600
    assert stat.S_IMODE(server.path.parent.stat().st_mode) == 0o700
    assert ExecChannelClient.usable(info)
    assert not ExecChannelClient.usable(info.model_copy(update={"host": "elsewhere/0"}))
    assert len(str(channel_path("build:" + "x" * 200 + ":sbx:frontend"))) < 108  # a unix socket path limit


async def test_a_socket_directory_someone_else_could_enter_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    with pytest.raises(SandboxError, match="not a private directory"):
        await ExecChannelServer(shared / "p.sock", FakeExec()).start()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(elsewhere)
    with pytest.raises(SandboxError, match="not a private directory"):
        await ExecChannelServer(tmp_path / "link" / "p.sock", FakeExec()).start()


async def test_one_shared_client_per_proxy_incarnation_and_loop(served: Any) -> None:
    _, _, info = served
    first = ExecChannelClient.shared(info)
    assert ExecChannelClient.shared(info) is first  # many ProxySandbox objects, one set of connections
    assert ExecChannelClient.shared(info.model_copy(update={"token": "f" * 32})) is not first  # a new incarnation
    await first.exec(["a"])
    await first.aclose()  # found dead by one user: the next ask gets a fresh client
    again = ExecChannelClient.shared(info)
    assert again is not first and (await again.exec(["b"])).stdout == "b"
    await again.aclose()


async def test_sockets_of_dead_proxies_are_swept_live_and_young_ones_kept(tmp_path: Path) -> None:
    import os
    import socket as socket_module

    directory = tmp_path / "ch"
    live = ExecChannelServer(directory / "live.sock", FakeExec())
    await live.start()
    dead = directory / "dead.sock"
    with socket_module.socket(socket_module.AF_UNIX) as sock:  # bound, never listening, then gone
        sock.bind(str(dead))
    young = directory / "young.sock"
    with socket_module.socket(socket_module.AF_UNIX) as sock:
        sock.bind(str(young))
    old = 1_000_000_000
    os.utime(dead, (old, old), follow_symlinks=False)
    os.utime(live.path, (old, old), follow_symlinks=False)
    assert sweep_stale(directory) == 1
    assert sorted(p.name for p in directory.iterdir()) == ["live.sock", "young.sock"]
    await live.close()
