"""ModalPace: the one actor of the cluster that paces Modal sandbox creates, thin over a TokenBucket.

Every proxy holds its own Modal backend and creates one sandbox, so the rate a fleet offers Modal is
bounded only where all proxies meet: this actor, named ``modal-create-pace`` in namespace ``kriptik``,
detached and restartable, started by whichever proxy needs it first (``get_if_exists``). It answers
:meth:`ModalPaceActor.acquire` with how long the caller must wait for its token and never waits
itself; the caller sleeps (:class:`~sandbox_agents.backends.modal.pace.TokenBucket`). A restart
loses the bucket's debt: the next creates get a fresh burst, no worse than no pace.

:func:`fleet_pace` gives a proxy's Modal backend the ``pace`` callable that asks it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel, ConfigDict

from actors import handles
from sandbox_agents.backends.config import FakeBackendConfig, LocalBackendConfig, ModalBackendConfig
from sandbox_agents.backends.modal.pace import Grant, TokenBucket

logger = logging.getLogger(__name__)


class PaceReport(BaseModel):
    """The bucket as it stands: its settings, how far ahead it has granted, and the recent grants."""

    model_config = ConfigDict(extra="forbid")

    rate: float
    burst: int
    backlog_s: float
    """Seconds from now until the last granted token exists."""
    grants: list[Grant]
    """The last grants, oldest first, on the actor's monotonic clock."""


class ModalPaceActor:
    """The cluster's bucket of Modal creates. Construct through :func:`start_pace`."""

    def __init__(self, rate: float, burst: int) -> None:
        self._bucket = TokenBucket(rate, burst)

    async def ping(self) -> str:
        return handles.MODAL_PACE_NAME

    async def acquire(self, rate: float, burst: int) -> float:
        """Reserve a token for one create attempt; returns the seconds to wait before it.

        The caller's rate and burst (its backend config) become the bucket's: the latest config
        started wins, so a changed setting takes effect without restarting this actor.
        """
        self._bucket.configure(rate, burst)
        return self._bucket.reserve()

    async def report(self) -> PaceReport:
        bucket = self._bucket
        return PaceReport(rate=bucket.rate, burst=bucket.burst, backlog_s=bucket.backlog_s(), grants=bucket.grants())


ModalPace = handles.actor_class(ModalPaceActor, restartable=True, max_concurrency=1000)


def start_pace(rate: float, burst: int) -> Any:
    """The cluster's pace actor: the live one, else a new one with ``rate`` and ``burst``."""
    return handles.start(ModalPace, handles.MODAL_PACE_NAME, rate, burst, get_if_exists=True)


def fleet_pace(
    config: LocalBackendConfig | FakeBackendConfig | ModalBackendConfig,
) -> Callable[[], Awaitable[float]] | None:
    """The ``pace`` of a Modal backend built from ``config``: a token from the cluster's bucket per create attempt.

    None for other backends and when ``fleet_creates_per_s`` is 0. The actor is found (or started)
    on the first create, not here: building a backend does no I/O. If it cannot be reached the
    create goes ahead unpaced, logged: the pace spares Modal's limit, the backend's back-off still
    handles a refusal.
    """
    if not isinstance(config, ModalBackendConfig) or config.fleet_creates_per_s == 0:
        return None
    rate, burst = config.fleet_creates_per_s, config.fleet_create_burst
    pace: Any = None

    async def take_turn() -> float:
        nonlocal pace
        try:
            if pace is None:
                pace = start_pace(rate, burst)
            turn = float(await pace.acquire.remote(rate, burst))
        except (handles.RayError, ValueError) as exc:  # ValueError: it died for good between lookup and start
            logger.warning("the fleet's Modal create pace did not answer (%r); creating without it", exc)
            pace = None
            return 0.0
        if turn > 0:
            logger.info("waiting %.2fs for the fleet's Modal create pace (%g/s, burst %d)", turn, rate, burst)
        return turn

    return take_turn
