"""A warm pool of started SandboxProxy actors, each holding a started standby sandbox.

An actor start costs 0.4–0.8 s on 2 cores and a bwrap sandbox start tens of ms; with the
pool, a create through the whole stack is one actor call that adopts a standby sandbox.
Warm proxies are named ``kriptik:proxy:{uuid}`` (a name cannot change once given); the
pool records the build's name ``build:{id}:sbx:{sid}`` as an alias, and
:func:`get_proxy` resolves either. The pool lives inside its owner (the driver or the
BuildCoordinator or Control actor) and never blocks an event loop on ``ray.get``; its warm-list,
refill and close logic is :class:`~actors.pools.warm.WarmPool`, shared with the other warm pools.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from actors import handles
from actors.handles import proxy_name
from actors.pools.warm import Warm, WarmPool, WarmSource, forget_alias, named_actor, resolve, set_alias, take_bound
from actors.sandbox_proxy import forget_binding, start_proxy
from sandbox_agents.backends.base import SandboxSpec
from sandbox_agents.errors import InvalidInputError

logger = logging.getLogger(__name__)


def get_proxy(build_id: str, sid: str) -> Any:
    """The proxy handle of a build's sandbox, whether it came from the pool or was started cold.

    The one way to a build's proxy by its build and sandbox id.

    Raises:
        ValueError: The sandbox has no live proxy.
    """
    return named_actor("proxy", proxy_name(build_id, sid))


async def start_owned_sandbox(
    build_id: str,
    sid: str,
    backend: dict[str, Any],
    spec: SandboxSpec,
    *,
    heartbeat_s: float,
    source: WarmSource | None = None,
) -> tuple[str, Any, str]:
    """A proxy known as ``build:{id}:sbx:{sid}`` with a new sandbox, kept alive while the build is.

    For an actor that owns one sandbox of its own (the merge gate's main-test, the preview). The
    proxy comes warm from ``source`` when it has one (no actor start in the build), else it is
    started cold under that name; either way :func:`find_proxy` finds it by that name.

    Returns:
        The proxy's build name, its handle and the sandbox's id.
    """
    handle = await acquire_proxy(source, backend, build_id, sid, spec, component=sid, heartbeat_s=heartbeat_s)
    await handle.set_active.remote(True)
    return proxy_name(build_id, sid), handle, await handle.sandbox_id.remote()


async def live_or_new_sandbox(
    build_id: str,
    sid: str,
    backend: dict[str, Any],
    spec: SandboxSpec,
    *,
    heartbeat_s: float,
    source: WarmSource | None = None,
) -> tuple[Any, str | None]:
    """The live proxy of an owned sandbox (the gate's, the preview's), or a new proxy with a new sandbox.

    A proxy and its sandbox die with their Ray (``kriptik down``, a lost node) while their owner's
    saved state still names them; the owner comes back through here instead of failing on the name.

    Returns:
        The proxy's handle and, when the sandbox is new, its id (None: the old one is still served).
    """
    try:
        handle = get_proxy(build_id, sid)
    except ValueError:
        handle = None
    if handle is not None and await handles.answers(handle):
        return handle, None
    name = proxy_name(build_id, sid)
    logger.warning("build %s: the proxy of %s is gone; starting a new sandbox for it", build_id, sid)
    forget_binding(name)
    forget_alias("proxy", name)
    _, handle, sandbox_id = await start_owned_sandbox(
        build_id, sid, backend, spec, heartbeat_s=heartbeat_s, source=source
    )
    return handle, sandbox_id


def find_proxy(name: str) -> Any | None:
    """The proxy known as ``name`` (a build name ``build:{id}:sbx:{sid}``, pooled or cold), or None."""
    try:
        return named_actor("proxy", name)
    except ValueError:
        return None


async def bind_proxy(warm: Warm, build_id: str, sid: str, spec: SandboxSpec, *, component: str | None = None) -> Any:
    """Give the warm proxy ``warm`` a new sandbox for ``spec`` and the alias ``build:{id}:sbx:{sid}``."""
    actor_name, handle = warm
    await handle.create.remote(spec, build_id, component)
    set_alias("proxy", proxy_name(build_id, sid), actor_name)
    return handle


async def acquire_proxy(
    source: WarmSource | None,
    backend: dict[str, Any],
    build_id: str,
    sid: str,
    spec: SandboxSpec,
    *,
    component: str | None = None,
    heartbeat_s: float = 30.0,
) -> Any:
    """A proxy owning a new sandbox for ``spec``: a warm one from ``source``, else one started cold.

    The cold one is named ``build:{id}:sbx:{sid}`` (a stale alias of that name is dropped first).
    """
    bound = await take_bound(source, "proxy", lambda warm: bind_proxy(warm, build_id, sid, spec, component=component))
    if bound is not None:
        return bound
    name = proxy_name(build_id, sid)
    forget_alias("proxy", name)
    handle = start_proxy(name, backend, heartbeat_s=heartbeat_s)
    await handle.create.remote(spec, build_id, component)
    return handle


class ProxyPool:
    """Started proxies ready to own a sandbox (a :class:`~actors.pools.warm.WarmPool` of kind ``proxy``).

    Args:
        backend: the backend config (as a dict) every proxy uses.
        size: proxies kept warm.
        standby: started sandboxes each warm proxy keeps (local backend).
        heartbeat_s: the proxies' TTL heartbeat while their build is active.
        persist: keep the warm names on disk so a restarted owner adopts them (the Control actor).
        pace: shared with other pools: their background refills start one actor at a time.
        refill: top the pool up after takes (:class:`~actors.pools.warm.WarmPool`).
    """

    def __init__(
        self,
        backend: dict[str, Any],
        *,
        size: int = 2,
        standby: int = 1,
        heartbeat_s: float = 30.0,
        persist: bool = False,
        pace: asyncio.Semaphore | None = None,
        refill: bool = True,
    ) -> None:
        if size < 0 or standby < 0:
            raise InvalidInputError("pool size and standby must be >= 0", field="size")
        self._backend = dict(backend)
        if self._backend.get("type", "local") == "local":
            self._backend["standby"] = standby
        self._heartbeat_s = heartbeat_s
        self.warm = WarmPool(
            "proxy",
            lambda name: start_proxy(name, self._backend, heartbeat_s=self._heartbeat_s),
            size=size,
            ready=lambda handle: handle.warm.remote(),
            stop=lambda handle, name: release(handle, name),
            persist=persist,
            pace=pace,
            refill=refill,
        )

    async def fill(self) -> None:
        """Start proxies (and their standby sandboxes) until ``size`` are warm."""
        await self.warm.fill()

    async def acquire(self, build_id: str, sid: str, spec: SandboxSpec, *, component: str | None = None) -> Any:
        """A proxy that owns a new sandbox for ``spec``, named (or aliased) ``build:{id}:sbx:{sid}``."""
        taken = self.warm.take()
        if taken is not None:
            return await bind_proxy(taken, build_id, sid, spec, component=component)
        return await acquire_proxy(
            None, self._backend, build_id, sid, spec, component=component, heartbeat_s=self._heartbeat_s
        )

    async def close(self) -> None:
        """Stop the warm proxies that were never handed out (with their standby sandboxes)."""
        await self.warm.close()


async def release(handle: Any, name: str | None = None) -> None:
    """Terminate a proxy's sandbox (and standbys) and kill the actor for good.

    A terminate that fails is logged with the proxy's name (:func:`actors.handles.stop`): the
    sandbox may then outlive its proxy until its TTL, and the log line is how it is found.
    """
    actor = resolve("proxy", name) if name else None  # a pooled proxy's binding is kept under its own name
    await handles.stop(handle, handle.terminate.remote, handle.close_backend.remote, name=name)
    if name and actor:
        forget_binding(actor)
        forget_alias("proxy", name)
