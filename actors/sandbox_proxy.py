"""SandboxProxy: the Ray actor that owns one sandbox, thin over a SandboxSession.

Detached and restartable (``max_restarts=-1``): its binding (which sandbox, is the build
active) is a small file under KRIPTIK_HOME, so after a restart it reconnects with
``from_id`` on its first call. Its name, start and stop go through :mod:`actors.handles`;
finding a build's proxy (pooled or cold) and releasing it is :mod:`actors.pools.proxies`.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel, ConfigDict

from actors import handles
from actors.actor_args import validated_arg
from actors.actor_state import StateFile
from actors.modal_pace import fleet_pace
from sandbox_agents.backends.base import (
    ExecChunk,
    ExecResult,
    FileInfo,
    InstallRequest,
    InstallResult,
    Sandbox,
    SandboxSpec,
    SandboxStatus,
    SnapshotRef,
)
from sandbox_agents.backends.config import BackendConfig
from sandbox_agents.backends.factory import make_backend
from sandbox_agents.busy import BusyIntervals, Interval
from sandbox_agents.errors import ConfigError, InvalidInputError, SandboxError
from sandbox_agents.exec_channel import ExecChannelServer, channel_path
from sandbox_agents.sandbox_session import Metering, SandboxEvent, SandboxSession
from sandbox_agents.settings import get_settings

logger = logging.getLogger(__name__)


class ProxyBinding(BaseModel):
    """What a proxy must remember across its own restarts."""

    model_config = ConfigDict(extra="forbid")

    sandbox_id: str
    build_id: str | None = None
    component: str | None = None
    active: bool = False


def _binding_file(name: str) -> StateFile[ProxyBinding]:
    return StateFile("proxies", name, ProxyBinding)


class SandboxProxyActor:
    """One sandbox's proxy. Construct through :func:`start_proxy`, not directly."""

    def __init__(self, name: str, backend: dict[str, Any], heartbeat_s: float = 30.0) -> None:
        config = validated_arg(BackendConfig, backend, "backend")
        self._name = name
        self._heartbeat_s = heartbeat_s
        self._events: collections.deque[SandboxEvent] = collections.deque(maxlen=2000)
        self._event_count = 0
        self._session = SandboxSession(make_backend(config, pace=fleet_pace(config)), on_event=self._record)
        self._binding_file = _binding_file(name)
        self._binding: ProxyBinding | None = None
        with contextlib.suppress(FileNotFoundError, ValueError):
            self._binding = self._binding_file.load()
        self.restarted = self._binding is not None
        self._channel: ExecChannelServer | None = None
        self._busy = BusyIntervals()
        """When commands (exec, install) ran in the sandbox: what a build's overhead figure leaves out."""

    # --- plumbing ----------------------------------------------------------------------

    def _record(self, event: SandboxEvent) -> None:
        self._events.append(event)
        self._event_count += 1

    def _save_binding(self) -> None:
        if self._binding is None:
            self._binding_file.remove()
            return
        self._binding_file.save(self._binding)

    async def _sandbox(self) -> Sandbox:
        session = self._session
        if session.sandbox is None and self._binding is not None:
            await session.attach(self._binding.sandbox_id)
            if self._binding.active:
                session.start_heartbeat(self._heartbeat_s)
        return session.require()

    # --- lifecycle ---------------------------------------------------------------------

    async def ping(self) -> str:
        return self._name

    async def pid(self) -> int:
        """The actor's process id (fault tests kill it; a restart changes it)."""
        return os.getpid()

    async def warm(self) -> int:
        """Start the backend's standby sandboxes (local backend) and the exec channel now.

        Returns:
            How many standby sandboxes are ready.
        """
        warm = getattr(self._session.backend, "warm", None)
        if warm is not None:
            await warm()
        await self.exec_channel()
        return len(getattr(self._session.backend, "_standby", []))

    async def close_backend(self) -> None:
        """End the standby sandboxes this proxy's backend started, and its exec channel (before the actor is killed)."""
        await self._session.backend.close()
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def exec_channel(self) -> dict[str, str] | None:
        """Where this proxy serves ``exec`` to callers on its host (:mod:`sandbox_agents.exec_channel`).

        Started on the first ask, once per incarnation (a restart gives a new socket and token);
        None when ``KRIPTIK_EXEC_CHANNEL`` is off.
        """
        if not get_settings().kriptik_exec_channel:
            return None
        if self._channel is None:
            self._channel = ExecChannelServer(channel_path(self._name), self.exec)
        try:
            return (await self._channel.start()).model_dump()
        except (OSError, SandboxError) as exc:  # callers use Ray calls: slower, never wrong
            logger.warning("proxy %s serves no exec channel: %s", self._name, exc)
            return None

    async def create(
        self, spec: SandboxSpec | dict[str, Any], build_id: str | None = None, component: str | None = None
    ) -> str:
        """Create the proxy's sandbox; returns its id."""
        spec = validated_arg(SandboxSpec, spec, "spec")
        if self._binding is not None:
            raise SandboxError(f"proxy {self._name} already owns sandbox {self._binding.sandbox_id}")
        sandbox = await self._session.create(spec)
        self._binding = ProxyBinding(sandbox_id=sandbox.id, build_id=build_id, component=component)
        self._save_binding()
        return sandbox.id

    async def open(
        self, spec: SandboxSpec | dict[str, Any], build_id: str | None = None, component: str | None = None
    ) -> dict[str, Any]:
        """:meth:`create`, and the exec channel in the same answer: ``{sandbox_id, channel}``."""
        sandbox_id = await self.create(spec, build_id, component)
        return {"sandbox_id": sandbox_id, "channel": await self.exec_channel()}

    async def attach(self, sandbox_id: str) -> str:
        if not isinstance(sandbox_id, str) or not sandbox_id:
            raise InvalidInputError("sandbox_id must be a non-empty string", field="sandbox_id")
        sandbox = await self._session.attach(sandbox_id)
        self._binding = ProxyBinding(sandbox_id=sandbox.id)
        self._save_binding()
        return sandbox.id

    async def restore(self, ref: SnapshotRef | dict[str, Any]) -> str:
        """Replace the sandbox with one restored from a checkpoint (respawn); returns the new id."""
        ref = validated_arg(SnapshotRef, ref, "ref")
        with contextlib.suppress(SandboxError):
            await self._sandbox()
        sandbox = await self._session.restore(ref)
        previous = self._binding
        self._binding = ProxyBinding(
            sandbox_id=sandbox.id,
            build_id=previous.build_id if previous else None,
            component=previous.component if previous else None,
            active=previous.active if previous else False,
        )
        self._save_binding()
        return sandbox.id

    async def sandbox_id(self) -> str | None:
        return self._binding.sandbox_id if self._binding else None

    async def set_active(self, active: bool) -> None:
        """While the build is active, a heartbeat extends the sandbox's TTL."""
        await self._sandbox()
        assert self._binding is not None
        self._binding.active = bool(active)
        self._save_binding()
        if active:
            self._session.start_heartbeat(self._heartbeat_s)
        else:
            self._session.stop_heartbeat()

    async def events(self, after: int = 0) -> tuple[int, list[SandboxEvent]]:
        """Events recorded since the ``after``-th one (this incarnation), and the new count."""
        skipped = self._event_count - len(self._events)
        start = max(0, after - skipped)
        return self._event_count, list(self._events)[start:]

    async def busy(self, after: float = 0.0) -> list[Interval]:
        """When at least one command (exec, install) ran in this proxy's sandboxes, from ``after`` on.

        Wall-clock ``(start, end)`` intervals, sorted and disjoint (this incarnation's only).
        """
        return self._busy.intervals(after)

    async def metering(self) -> Metering:
        await self._sandbox()
        return self._session.metering()

    async def terminate(self) -> None:
        """End the sandbox and forget the binding (the actor itself stays for reuse or kill)."""
        with contextlib.suppress(SandboxError):
            await self._sandbox()
        await self._session.terminate()
        self._session.sandbox = None
        self._binding = None
        self._save_binding()

    # --- the sandbox operations --------------------------------------------------------

    async def exec(
        self,
        command: list[str] | str,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float | None = None,
        stdin: str | bytes | None = None,
    ) -> ExecResult:
        sandbox = self._session.sandbox or await self._sandbox()
        self._session.count_exec()
        with self._busy.busy():
            return await sandbox.exec(command, cwd=cwd, env=env, timeout=timeout, stdin=stdin)

    async def exec_stream(
        self,
        command: list[str] | str,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[ExecChunk]:
        """Call with ``.options(num_returns="streaming")``: yields chunks as output comes."""
        sandbox = await self._sandbox()
        self._session.count_exec()
        with self._busy.busy():
            async for chunk in sandbox.exec_stream(command, cwd=cwd, env=env, timeout=timeout):
                yield chunk

    async def write_file(self, path: str, data: bytes | str, mode: int | None = None) -> None:
        await (await self._sandbox()).write_file(path, data, mode=mode)

    async def read_file(self, path: str) -> bytes:
        return await (await self._sandbox()).read_file(path)

    async def list_files(self, pattern: str = "**/*") -> list[FileInfo]:
        return await (await self._sandbox()).list_files(pattern)

    async def remove(self, path: str, recursive: bool = False) -> None:
        await (await self._sandbox()).remove(path, recursive=recursive)

    async def snapshot(self) -> SnapshotRef:
        await self._sandbox()
        return await self._session.snapshot()

    async def expose(self, port: int) -> str:
        if not isinstance(port, int) or isinstance(port, bool):
            raise InvalidInputError(f"port must be an integer, not {port!r}", field="port")
        await self._sandbox()
        return await self._session.expose(port)

    async def install(self, request: dict[str, Any]) -> InstallResult:
        """The install phase for one manifest (``Sandbox.install``); bad input is an InvalidInputError."""
        checked = validated_arg(InstallRequest, request, "request")
        await self._sandbox()
        with self._busy.busy():
            return await self._session.install(checked)

    async def keepalive(self) -> None:
        await (await self._sandbox()).keepalive()

    async def status(self) -> SandboxStatus:
        if self._binding is None:
            return SandboxStatus.TERMINATED
        with contextlib.suppress(SandboxError):
            await self._sandbox()
        return await self._session.status()


SandboxProxy = handles.actor_class(SandboxProxyActor, restartable=True, max_concurrency=64)

SANDBOX_RESOURCE_ENV = "KRIPTIK_SANDBOX_RESOURCE"
"""Names the custom resource that places proxies (``sandbox_host`` or ``sandbox_host:0.01``); unset: anywhere."""


def sandbox_resources() -> dict[str, float]:
    """The Ray resources every proxy asks for, from ``KRIPTIK_SANDBOX_RESOURCE`` (read at each start).

    A proxy is where its sandbox runs (a local sandbox is a child of the proxy's host), so on a
    cluster whose sandbox hosts offer ``--resources='{"sandbox_host": 100}'`` this pins every
    sandbox there. The default amount, 0.01, is a placement tag, not a quota: the sandbox's own
    cgroup limits do the accounting. ``name:amount`` sets it, e.g. ``sandbox_host:1`` for at most
    100 sandboxes per host offering 100.

    Raises:
        ConfigError: the amount is not a positive number.
    """
    value = os.environ.get(SANDBOX_RESOURCE_ENV, "").strip()
    if not value:
        return {}
    name, _, amount = value.partition(":")
    try:
        quantity = float(amount) if amount else 0.01
    except ValueError:
        quantity = -1.0
    if not name or quantity <= 0:
        raise ConfigError(f"{SANDBOX_RESOURCE_ENV}={value!r}: expected NAME or NAME:AMOUNT with AMOUNT > 0")
    return {name: quantity}


def start_proxy(
    name: str, backend: dict[str, Any], *, heartbeat_s: float = 30.0, resources: dict[str, float] | None = None
) -> Any:
    """Start a detached, named, restartable proxy in namespace ``kriptik``.

    ``resources`` defaults to :func:`sandbox_resources` (``KRIPTIK_SANDBOX_RESOURCE``), so every
    caller — pool, coordinator, merge gate, preview — places its sandboxes the same way.
    """
    resources = sandbox_resources() if resources is None else resources
    return handles.start(SandboxProxy, name, name, backend, heartbeat_s, resources=resources)


def forget_binding(name: str) -> None:
    """Drop a proxy's binding file (after the actor is killed for good)."""
    _binding_file(name).remove()
