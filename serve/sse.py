"""``GET /api/build/stream/{id}``: a build's event log as Server-Sent Events.

Each entry of the build's event log (``build:{id}:events`` on the context bus) becomes one
SSE event whose ``id`` is the Redis stream id, so a client that reconnects with
``Last-Event-ID`` resumes right after the last event it saw: no gap, no duplicate. The
SSE ``event`` names the category (``phase``, ``progress``, ``error``, ``merge``,
``tournament``, ``budget``, ``sandbox``, ``build`` or ``event``); ``data`` is JSON
``{"id", "kind", "data", "ts", "sender"}``. Comment lines (``: ping``) every
``heartbeat_s`` keep proxies from closing an idle stream.

The stream ends with an ``end`` event (no id, data ``{"status", "last_id"}``) when the
build is final: at once after a ``build.completed|failed|cancelled`` event, or when the
Control actor reports a final status and the log is drained.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator

from sse_starlette import EventSourceResponse, ServerSentEvent

from coordinator.api_models import FINAL_STATUSES
from coordinator.bus.context_bus import ContextBus
from coordinator.bus.models import Envelope
from sandbox_agents.errors import BusUnavailableError, InvalidInputError, KriptikError
from serve.control_port import ControlPort

logger = logging.getLogger(__name__)

STREAM_ID = re.compile(r"^\d{1,20}-\d{1,20}$")

TERMINAL_KINDS: dict[str, str] = {
    "build.completed": "completed",
    "build.failed": "failed",
    "build.cancelled": "cancelled",
}
"""Event kinds after which a build publishes nothing more; the stream ends after them."""

_CATEGORIES = ("phase", "progress", "error", "merge", "tournament", "budget", "sandbox", "build")


def category(kind: str) -> str:
    """SSE event name of an event-log kind: its first dotted part if known, ``error`` for failures."""
    head = kind.split(".", 1)[0]
    if head == "judge":
        return "tournament"
    if head not in ("build",) and (kind.endswith(".failed") or kind.endswith(".error")):
        return "error"
    return head if head in _CATEGORIES else "event"


def parse_last_event_id(value: str | None) -> str | None:
    """A ``Last-Event-ID`` as a stream id, or ``None`` when absent.

    Raises:
        InvalidInputError: it is not a Redis stream id (``ms-seq``).
    """
    if value is None or value == "":
        return None
    if not STREAM_ID.match(value):
        raise InvalidInputError(
            f"Last-Event-ID {value!r} is not a stream id like 1700000000000-0", field="Last-Event-ID"
        )
    return value


def to_sse(rid: str, envelope: Envelope) -> tuple[ServerSentEvent, str]:
    """One event-log entry as an SSE event, and its kind."""
    message = envelope.message
    kind = getattr(message, "kind", message.type)
    data = getattr(message, "data", None)
    if data is None:
        data = message.model_dump(mode="json")
    body = {"id": rid, "kind": kind, "data": data, "ts": envelope.ts, "sender": envelope.sender}
    return ServerSentEvent(data=json.dumps(body, default=str), event=category(kind), id=rid), kind


def _end(status: str, last_id: str | None) -> ServerSentEvent:
    return ServerSentEvent(data=json.dumps({"status": status, "last_id": last_id}), event="end")


def _unavailable(message: str, last_id: str | None) -> ServerSentEvent:
    """The stream's last event when the event log cannot be read: ``error`` (not ``end``: the build goes on)."""
    body = {"kind": "stream.unavailable", "data": {"error": message, "last_id": last_id}}
    return ServerSentEvent(data=json.dumps(body), event="error")


async def build_events(
    bus: ContextBus,
    control: ControlPort,
    user_id: str,
    build_id: str,
    after_id: str | None,
    *,
    initial_status: str,
    block_ms: int = 1000,
    batch: int = 200,
    retry_s: float = 0.5,
    unavailable_s: float = 30.0,
) -> AsyncIterator[ServerSentEvent]:
    """The build's events after ``after_id`` as they are published, then ``end`` when final.

    Waits on the log with a blocking XREAD of ``block_ms``; after each empty wait it asks the
    Control actor whether the build is final. A final build is drained without blocking. When the
    bus cannot be read for ``unavailable_s`` in a row, it sends an ``error`` event (what failed, and
    the last id delivered, to resume from with ``Last-Event-ID``) and closes the stream, instead of
    sending heartbeats over a dead event log forever.
    """
    last = after_id
    final_status = initial_status if initial_status in FINAL_STATUSES else None
    failing_since: float | None = None
    while True:
        try:
            rows = await bus.read_events(build_id, last, count=batch, block_ms=None if final_status else block_ms)
        except BusUnavailableError as exc:
            now = time.monotonic()
            failing_since = failing_since or now
            if now - failing_since >= unavailable_s:
                logger.error(
                    "stream of build %s: the event log is unreadable for %.0fs: %s", build_id, now - failing_since, exc
                )
                yield _unavailable(f"the build's event log (Redis) cannot be read: {exc}", last)
                return
            logger.warning("stream of build %s: %s; retrying", build_id, exc)
            await asyncio.sleep(retry_s)
            continue
        failing_since = None
        for rid, envelope in rows:
            event, kind = to_sse(rid, envelope)
            last = rid
            yield event
            if kind in TERMINAL_KINDS:
                yield _end(TERMINAL_KINDS[kind], last)
                return
        if rows:
            continue
        if final_status is not None:
            yield _end(final_status, last)
            return
        try:
            status = (await control.status(user_id, build_id)).status
        except KriptikError as exc:  # Control restarting: keep streaming, ask again later
            logger.info("stream of build %s: status unavailable (%s)", build_id, exc)
            continue
        if status in FINAL_STATUSES:
            final_status = status  # drain what is left without blocking, then end


def stream_response(events: AsyncIterator[ServerSentEvent], *, heartbeat_s: float) -> EventSourceResponse:
    """An SSE response that proxies and browsers do not buffer, with heartbeat comments."""
    return EventSourceResponse(
        events,
        ping=heartbeat_s,
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
