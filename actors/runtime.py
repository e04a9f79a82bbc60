"""Bring up the build runtime on a Ray cluster: Redis (managed or ``REDIS_URL``) and the Control actor.

Used by the CLI (``kriptik up``), the demo and the end-to-end tests::

    runtime = await start_runtime()            # KRIPTIK_HOME from the environment
    build_id = await runtime.control.submit.remote("alice", {"example": "hello-calc"})
    ...
    await runtime.stop()                       # the managed Redis goes; detached actors stay

Ray must already be initialised in namespace ``kriptik`` (the caller owns ``ray.init``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actors.control import ControlConfig, start_control
from coordinator.bus.redis_server import ManagedRedis
from sandbox_agents.settings import get_settings

logger = logging.getLogger(__name__)


@dataclass
class Runtime:
    """What :func:`start_runtime` started."""

    redis_url: str
    control: Any
    redis: ManagedRedis | None = None
    home: Path = field(default_factory=lambda: get_settings().home())

    async def stop(self) -> None:
        """Stop the managed Redis (if this process started it); actors are left to their owners."""
        if self.redis is not None:
            self.redis.stop()
            self.redis = None


async def start_runtime(home: Path | str | None = None, *, redis_url: str | None = None, **control: Any) -> Runtime:
    """Start (or reuse) Redis and the Control actor for ``home`` (``KRIPTIK_HOME``).

    Args:
        home: The state directory; ``KRIPTIK_HOME`` (``~/.kriptik``) when unset.
        redis_url: A Redis to use; ``REDIS_URL``, else a managed ``redis-server`` (AOF on) under
            ``home/redis``.
        **control: Extra :class:`~actors.control.ControlConfig` fields (quotas, heartbeat, llm…).

    Returns:
        The runtime; ``runtime.control`` is the Control actor's handle.
    """
    base = Path(home).expanduser() if home is not None else get_settings().home()
    base.mkdir(parents=True, exist_ok=True)
    url = redis_url or os.environ.get("REDIS_URL")
    managed: ManagedRedis | None = None
    if not url:
        managed = ManagedRedis(base / "redis")
        await managed.astart()
        url = managed.url
    config = ControlConfig(redis_url=url, store_path=str(base / "store.db"), **control)
    handle = start_control(config)
    await handle.queued.remote()  # answers once revival of active builds is under way
    logger.info("runtime up: redis %s, control ready (home %s)", url, base)
    return Runtime(redis_url=url, control=handle, redis=managed, home=base)
