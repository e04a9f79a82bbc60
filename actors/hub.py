"""ContextHub: one Ray actor per (node, build), the node's one bus subscriber, thin over a BusFanout.

Agents and teams read the build's unified context before every LLM turn. Each used to re-read
the whole snapshot from Redis for it (one HGETALL per turn per agent); now they ask the hub of
their node, which holds it live: it owns one :class:`~coordinator.bus.fanout.BusFanout` (consumer
group ``hub-{node}`` on ``context``, ``file-change`` and ``errors``) whose view is reduced from
the delivered messages, so an error one team's agent publishes reaches the other agents through
this subscription. :meth:`ContextHubActor.context` answers after the fan-out's fence
(``caught_up``: one small read of the streams' last ids), so a turn still sees everything
published before it began, in the shape :func:`coordinator.team.prompt_context` gives.

Named ``build:{id}:hub:{node}`` in namespace ``kriptik``, detached and pinned to its node (hard
affinity), started on first use by whichever agent or team of the build asks first there
(:func:`node_context`, ``get_if_exists``): one process per node and build, however many agents
the node runs. Restartable: after a crash Ray re-creates it on the same node; it subscribes again
as the same consumer (its pending entries replay) and re-seeds from the hash, so its view loses
nothing. :func:`stop_build_hubs` stops a build's hubs with its teams and when its run ends.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from actors import handles
from actors.actor_args import validated_arg
from actors.handles import ActorDiedError, hub_name
from coordinator.bus.context_bus import BusConfig, ContextBus
from coordinator.bus.fanout import BusFanout
from coordinator.team import prompt_context

logger = logging.getLogger(__name__)


class HubConfig(BaseModel):
    """What a ContextHub needs; crosses the actor boundary as a dict."""

    model_config = ConfigDict(extra="forbid")

    build_id: str = Field(min_length=1)
    """The build whose bus it reads."""
    node: str = Field(min_length=1)
    """The Ray node it serves (and is pinned to)."""
    redis_url: str
    """The context bus's Redis."""
    bus_prefix: str = "kriptik"
    """Key prefix of the bus (``REDIS_SANDBOX_PREFIX``)."""

    @property
    def name(self) -> str:
        return hub_name(self.build_id, self.node)

    @property
    def group(self) -> str:
        """Its consumer group (and consumer): one per node, the same after a restart."""
        return f"hub-{self.node}"


class ContextHubActor:
    """The node's subscriber of one build's bus. Start through :func:`node_context` (or :func:`start_hub`).

    Args:
        config: A :class:`HubConfig` as a dict.

    The fan-out starts on the first call (a restarted hub's too), not in the constructor.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = validated_arg(HubConfig, config, "config")
        self._bus = ContextBus(self.config.redis_url, BusConfig(prefix=self.config.bus_prefix), sender=self.config.name)
        self._fanout: BusFanout | None = None
        self._starting = asyncio.Lock()
        self._prompt: tuple[int, dict[str, Any]] = (-1, {})

    async def context(self) -> dict[str, Any]:
        """The build's unified context as ``prompt_context`` shapes it, with everything published before the call.

        If the view cannot be shown current (Redis away, an entry late), it answers the view it has.

        Raises:
            BusUnavailableError: Redis did not answer while the hub started its subscription.
        """
        fanout = await self._started()
        await fanout.caught_up()
        if self._prompt[0] != fanout.version:  # derived once per change, not once per reader
            self._prompt = (fanout.version, prompt_context(fanout.view))
        return self._prompt[1]

    async def ping(self) -> str:
        """Its name (it answers)."""
        return self.config.name

    async def pid(self) -> int:
        return os.getpid()

    async def close(self) -> None:
        """Stop the fan-out for good (its group goes: nobody will resume it) and close the bus."""
        fanout, self._fanout = self._fanout, None
        try:
            if fanout is not None:
                await fanout.stop(forget=True)
        finally:
            await self._bus.aclose(flush_timeout=1.0)

    async def _started(self) -> BusFanout:
        async with self._starting:
            if self._fanout is None:
                cfg = self.config
                self._fanout = await BusFanout(self._bus, cfg.build_id, group=cfg.group).start()
        return self._fanout


ContextHub = handles.actor_class(ContextHubActor, restartable=True, max_concurrency=64)

_HUBS: dict[str, Any] = {}
"""Hub handles this process has started or found, by name (a process runs on one node)."""


def start_hub(build_id: str, redis_url: str, bus_prefix: str) -> Any:
    """The hub of ``build_id`` on this node: the live one, or a new one pinned here (detached, restartable)."""
    node = handles.node_id()
    config = HubConfig(build_id=build_id, node=node, redis_url=redis_url, bus_prefix=bus_prefix)
    handle = handles.start(ContextHub, config.name, config.model_dump(), get_if_exists=True, node_id=node)
    _HUBS[config.name] = handle
    return handle


async def node_context(build_id: str, redis_url: str, bus_prefix: str) -> dict[str, Any]:
    """The build's unified context from this node's hub (``prompt_context``'s shape), starting the hub if needed.

    Raises:
        RayActorError: The hub is restarting (``ActorUnavailableError``); the caller keeps its last context.
        BusUnavailableError: Redis did not answer the hub's start.
    """
    handle = _HUBS.get(hub_name(build_id, handles.node_id()))
    if handle is not None:
        try:
            return dict(await handle.context.remote())
        except ActorDiedError:  # stopped for good while this process lived on: start another
            logger.info("the hub of build %s on this node is gone; starting another", build_id)
    handle = start_hub(build_id, redis_url, bus_prefix)
    return dict(await handle.context.remote())


async def stop_build_hubs(build_id: str) -> list[str]:
    """Stop the build's hub on every live node (their groups go too); returns the names stopped.

    Waits until each is gone: a hub that is still dying could be handed out again by name.
    """
    stopped = []
    for node in handles.node_ids():
        name = hub_name(build_id, node)
        handle = handles.find(name)
        if handle is None:
            continue
        await handles.stop(handle, handle.close.remote, name=name, timeout_s=10)
        _HUBS.pop(name, None)
        if not await handles.wait_gone(name):
            logger.warning("build %s: %s outlived its stop", build_id, name)
        stopped.append(name)
    return stopped
