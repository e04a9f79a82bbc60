"""The API as a Ray Serve deployment, and :func:`run_api` that starts it.

The FastAPI app is built in the replica (``__serve_build_asgi_app__``, Ray >= 2.50), after
the constructor has opened the store and made the Control port: nothing unpicklable travels
from the driver, and each replica has its own store connection, bus and rate-limit buckets.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ray import serve as ray_serve

from coordinator.bus.context_bus import BusConfig, ContextBus
from coordinator.store.store import Store
from serve.app import ApiSettings, create_app
from serve.control_port import RayControlPort
from serve.store_status import StoreFirstControl

logger = logging.getLogger(__name__)

APP_NAME = "kriptik-api"
DEPLOYMENT_NAME = "KriptikApi"


@ray_serve.deployment(
    name=DEPLOYMENT_NAME, num_replicas=1, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000
)
@ray_serve.ingress()
class KriptikApi:
    """One API replica.

    Args:
        redis_url: Redis of the context bus (SSE reads the event log there).
        store_path: the SQLite store holding API tokens.
        settings: ``ApiSettings`` as a dict (pickled to the replica).
        control: a ``ControlPort`` to use as is (tests put a double here); the named
            ``control`` actor when ``None``.
        bus_prefix: key prefix of the bus (``REDIS_SANDBOX_PREFIX``).
    """

    def __init__(
        self,
        redis_url: str,
        store_path: str,
        settings: dict[str, Any] | None = None,
        control: Any = None,
        bus_prefix: str = "kriptik",
    ) -> None:
        self.settings = ApiSettings(**(settings or {}))
        self.store = Store(Path(store_path)).start()
        port = control or RayControlPort(timeout_s=self.settings.control_timeout_s)
        # final builds: the same view Control would compute, read from the same store, no actor hop
        self.control = StoreFirstControl(port, self.store) if self.settings.status_from_store else port
        self.redis_url = redis_url
        self.bus_prefix = bus_prefix
        self.fastapi: Any = None

    def _bus(self) -> ContextBus:
        return ContextBus(self.redis_url, BusConfig(prefix=self.bus_prefix), sender="api")

    def __serve_build_asgi_app__(self) -> Any:
        self.fastapi = create_app(self.control, self._bus, self.store, self.settings)
        return self.fastapi


def run_api(
    redis_url: str,
    store_path: str | Path,
    settings: ApiSettings | None = None,
    *,
    control: Any = None,
    bus_prefix: str | None = None,
    blocking: bool = False,
) -> str:
    """Start Serve's HTTP proxy on ``settings.host:port`` and deploy the API on it.

    Ray must be initialised (``ray.init(address=..., namespace="kriptik")``). Serve keeps the
    HTTP options of its first start in the cluster: if Serve already runs on another port,
    the API is deployed there and a warning says so.

    Returns:
        The base URL of the API.
    """
    from sandbox_agents.settings import get_settings

    settings = settings or ApiSettings()
    ray_serve.start(http_options={"host": settings.host, "port": settings.port})
    prefix = bus_prefix if bus_prefix is not None else get_settings().redis_sandbox_prefix
    app = KriptikApi.bind(redis_url, str(store_path), settings.model_dump(), control, prefix)  # type: ignore[attr-defined]
    ray_serve.run(app, name=APP_NAME, route_prefix="/", blocking=blocking)
    return f"http://{settings.host}:{settings.port}"


def stop_api() -> None:
    """Remove the API application (Serve itself keeps running for other apps)."""
    ray_serve.delete(APP_NAME)


def shutdown_serve() -> None:
    """Stop Serve entirely (its controller and proxies), as the benchmarks do at their end."""
    ray_serve.shutdown()


async def serve_proxy_pid() -> int | None:
    """The pid of this node's Serve HTTP proxy (the chaos bench kills it), or None while it is being re-created."""
    import asyncio
    import os

    import ray
    from ray.serve._private.constants import SERVE_NAMESPACE, SERVE_PROXY_NAME

    from actors import handles

    node = ray.get_runtime_context().get_node_id()
    try:
        handle = handles.get(f"{SERVE_PROXY_NAME}-{node}", namespace=SERVE_NAMESPACE)
        return int(await asyncio.wait_for(handle.__ray_call__.remote(lambda self: os.getpid()), 5))
    except (ValueError, handles.RayError, TimeoutError):  # being re-created: the caller tries again
        return None
