"""One bound sandbox with what its owner needs: metering, state events, keep-alive.

The SandboxProxy actor is a thin shell over this plain object, so its logic is tested
without Ray. Events go to an injected callback (the bus, once wired; a list in tests).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from sandbox_agents.backends.base import (
    InstallRequest,
    InstallResult,
    Sandbox,
    SandboxBackend,
    SandboxSpec,
    SandboxStatus,
    SnapshotRef,
)
from sandbox_agents.errors import SandboxDeadError, SandboxError

logger = logging.getLogger(__name__)


class SandboxEvent(BaseModel):
    """A change in a sandbox's life, published for the coordinator and the UI."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal[
        "created",
        "reconnected",
        "restored",
        "snapshot",
        "exposed",
        "installed",
        "dead",
        "terminated",
        "keepalive_failed",
    ]
    sandbox_id: str
    detail: dict[str, str] = Field(default_factory=dict)
    at: float = Field(default_factory=time.time)


class Metering(BaseModel):
    """What the sandbox has cost so far, for the budget ledger."""

    model_config = ConfigDict(extra="forbid")

    sandbox_id: str | None
    compute_seconds: float
    """CPU seconds used by the sandbox's processes (cgroup accounting), or wall seconds alive if unknown."""
    wall_seconds: float
    execs: int


EventSink = Callable[[SandboxEvent], Awaitable[None] | None]


class SandboxSession:
    """Owns at most one sandbox at a time on one backend."""

    def __init__(self, backend: SandboxBackend, *, on_event: EventSink | None = None) -> None:
        self.backend = backend
        self.sandbox: Sandbox | None = None
        self._on_event = on_event
        self._bound_at = 0.0
        self._execs = 0
        self._heartbeat: asyncio.Task[None] | None = None

    # --- binding -----------------------------------------------------------------------

    async def create(self, spec: SandboxSpec) -> Sandbox:
        if self.sandbox is not None:
            raise SandboxError(f"this session already owns sandbox {self.sandbox.id}", sandbox_id=self.sandbox.id)
        self.sandbox = await self.backend.create(spec)
        self._bound_at = time.time()
        await self._emit("created", {"backend": self.backend.name})
        return self.sandbox

    async def attach(self, sandbox_id: str) -> Sandbox:
        """Reconnect to an existing sandbox (after a restart of the owner)."""
        self.sandbox = await self.backend.from_id(sandbox_id)
        self._bound_at = self._bound_at or time.time()
        await self._emit("reconnected", {"status": str(await self.sandbox.status())})
        return self.sandbox

    async def restore(self, ref: SnapshotRef) -> Sandbox:
        """Replace the owned sandbox (if any, dead or alive) with one restored from ``ref``."""
        old = self.sandbox
        self.sandbox = await self.backend.restore(ref)
        self._bound_at = time.time()
        if old is not None:
            try:
                await old.terminate()
            except SandboxError as exc:  # dead already, usually: say so, in case it was not
                logger.info("the sandbox %s replaced by a restore did not terminate: %s", old.id, exc)
        await self._emit("restored", {"snapshot": ref.id, "previous": old.id if old else ""})
        return self.sandbox

    def require(self) -> Sandbox:
        if self.sandbox is None:
            raise SandboxError("no sandbox is bound to this proxy yet: call create or attach first")
        return self.sandbox

    # --- operations with events ------------------------------------------------------

    def count_exec(self) -> None:
        self._execs += 1

    async def snapshot(self) -> SnapshotRef:
        ref = await self.require().snapshot()
        await self._emit("snapshot", {"snapshot": ref.id})
        return ref

    async def expose(self, port: int) -> str:
        url = await self.require().expose(port)
        await self._emit("exposed", {"port": str(port), "url": url})
        return url

    async def install(self, request: InstallRequest) -> InstallResult:
        result = await self.require().install(request)
        await self._emit(
            "installed",
            {"dir": request.dir, "manager": request.manager, "ok": str(result.ok), "cached": str(result.cached)},
        )
        return result

    async def status(self) -> SandboxStatus:
        if self.sandbox is None:
            return SandboxStatus.TERMINATED
        status = await self.sandbox.status()
        if status == SandboxStatus.DEAD:
            await self._emit("dead", {})
        return status

    async def terminate(self) -> None:
        self.stop_heartbeat()
        if self.sandbox is not None:
            await self.sandbox.terminate()
            await self._emit("terminated", {})

    def metering(self) -> Metering:
        sandbox = self.sandbox
        cpu = getattr(sandbox, "cpu_seconds", None)
        wall = time.time() - self._bound_at if sandbox is not None else 0.0
        return Metering(
            sandbox_id=sandbox.id if sandbox else None,
            compute_seconds=cpu() if callable(cpu) else wall,
            wall_seconds=wall,
            execs=self._execs,
        )

    # --- keep-alive while the build is active ----------------------------------------

    def start_heartbeat(self, interval_s: float) -> None:
        """Extend the sandbox's TTL every ``interval_s`` while the build is active."""
        self.stop_heartbeat()
        self._heartbeat = asyncio.get_running_loop().create_task(self._beat(interval_s))

    def stop_heartbeat(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None

    async def _beat(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            if self.sandbox is None:
                continue
            try:
                await self.sandbox.keepalive()
            except SandboxDeadError:
                await self._emit("dead", {})
                return
            except Exception as exc:  # keep beating: one failed keepalive must not end the loop
                logger.warning("keepalive of %s failed: %s", self.sandbox.id, exc)
                await self._emit("keepalive_failed", {"error": str(exc)})

    async def _emit(self, kind: str, detail: dict[str, str]) -> None:
        if self._on_event is None or self.sandbox is None:
            return
        event = SandboxEvent(kind=kind, sandbox_id=self.sandbox.id, detail=detail)  # type: ignore[arg-type]
        try:
            outcome = self._on_event(event)
            if asyncio.iscoroutine(outcome):
                await outcome
        except Exception as exc:  # an event sink failing must never break the sandbox operation
            logger.warning("event sink failed for %s: %s", event.kind, exc)
