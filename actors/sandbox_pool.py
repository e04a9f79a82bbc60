"""A warm pool of started SandboxProxy actors, each holding a started standby sandbox.

An actor start costs 0.4–0.8 s on 2 cores and a bwrap sandbox start tens of ms; with the
pool, a create through the whole stack is one actor call that adopts a standby sandbox.
Warm proxies are named ``kriptik:proxy:{uuid}`` (a name cannot change once given); the
pool records the build's name ``build:{id}:sbx:{sid}`` as an alias, and
:func:`get_proxy` resolves either. The pool lives inside its owner (the driver or the
BuildCoordinator actor) and never blocks an event loop on ``ray.get``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from typing import Any

import ray

from actors.actor_state import file_stem, state_dir
from actors.sandbox_proxy import NAMESPACE, forget_binding, proxy_name, start_proxy
from sandbox_agents.backends.base import SandboxSpec
from sandbox_agents.errors import InvalidInputError

logger = logging.getLogger(__name__)


def _alias_path(name: str):  # type: ignore[no-untyped-def]
    return state_dir("proxies/aliases") / (file_stem(name) + ".json")


def get_proxy(build_id: str, sid: str) -> Any:
    """The proxy handle of a build's sandbox, whether it came from the pool or was started cold."""
    name = proxy_name(build_id, sid)
    with contextlib.suppress(FileNotFoundError, ValueError, KeyError):
        name = json.loads(_alias_path(name).read_text())["actor"]
    return proxy_handle(name)


def proxy_handle(name: str) -> Any:
    """The handle of the proxy actor called ``name`` (how a restarted owner reconnects to its proxy)."""
    return ray.get_actor(name, namespace=NAMESPACE)


async def start_owned_sandbox(
    build_id: str, sid: str, backend: dict[str, Any], spec: SandboxSpec, *, heartbeat_s: float
) -> tuple[str, Any, str]:
    """Start the proxy ``build:{id}:sbx:{sid}``, create its sandbox and keep it alive while the build is.

    For an actor that owns one sandbox of its own (the merge gate's main-test, the preview).

    Returns:
        The proxy's name, its handle and the sandbox's id.
    """
    name = proxy_name(build_id, sid)
    handle = start_proxy(name, backend, heartbeat_s=heartbeat_s)
    sandbox_id = await handle.create.remote(spec, build_id, sid)
    await handle.set_active.remote(True)
    return name, handle, sandbox_id


class ProxyPool:
    """Started proxies ready to own a sandbox.

    Args:
        backend: the backend config (as a dict) every proxy uses.
        size: proxies kept warm.
        standby: started sandboxes each warm proxy keeps (local backend).
    """

    def __init__(self, backend: dict[str, Any], *, size: int = 2, standby: int = 1, heartbeat_s: float = 30.0) -> None:
        if size < 0 or standby < 0:
            raise InvalidInputError("pool size and standby must be >= 0", field="size")
        self._backend = dict(backend)
        if self._backend.get("type", "local") == "local":
            self._backend["standby"] = standby
        self._size = size
        self._heartbeat_s = heartbeat_s
        self._warm: list[tuple[str, Any]] = []
        self._filling: asyncio.Task[None] | None = None

    async def _start_one(self) -> tuple[str, Any]:
        name = f"kriptik:proxy:{uuid.uuid4().hex[:12]}"
        handle = start_proxy(name, self._backend, heartbeat_s=self._heartbeat_s)
        await handle.warm.remote()
        return name, handle

    async def fill(self) -> None:
        """Start proxies (and their standby sandboxes) until ``size`` are warm."""
        missing = self._size - len(self._warm)
        if missing > 0:
            self._warm += await asyncio.gather(*(self._start_one() for _ in range(missing)))

    def _refill_soon(self) -> None:
        if self._filling is None or self._filling.done():
            self._filling = asyncio.get_running_loop().create_task(self.fill())

    async def acquire(self, build_id: str, sid: str, spec: SandboxSpec, *, component: str | None = None) -> Any:
        """A proxy that owns a new sandbox for ``spec``, named (or aliased) ``build:{id}:sbx:{sid}``."""
        alias = proxy_name(build_id, sid)
        if self._warm:
            actor_name, handle = self._warm.pop()
        else:
            actor_name, handle = alias, start_proxy(alias, self._backend, heartbeat_s=self._heartbeat_s)
        self._refill_soon()
        await handle.create.remote(spec, build_id, component)
        if actor_name != alias:
            _alias_path(alias).write_text(json.dumps({"actor": actor_name}))
        return handle

    def take(self) -> Any:
        """A warm, unbound proxy handle (for callers that bind it themselves), or None."""
        self._refill_soon()
        return self._warm.pop()[1] if self._warm else None

    async def close(self) -> None:
        """Stop the warm proxies that were never handed out (with their standby sandboxes)."""
        if self._filling is not None:
            self._filling.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._filling
        warm, self._warm = self._warm, []
        for name, handle in warm:
            await release(handle, name)


async def release(handle: Any, name: str | None = None) -> None:
    """Terminate a proxy's sandbox (and standbys) and kill the actor for good."""
    with contextlib.suppress(Exception):
        await handle.terminate.remote()
    with contextlib.suppress(Exception):
        await handle.close_backend.remote()
    ray.kill(handle, no_restart=True)
    if name:
        forget_binding(name)
