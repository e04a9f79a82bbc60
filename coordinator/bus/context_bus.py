"""The context bus and event log of a build, on Redis Streams.

Each build has five bus channels (``context``, ``file-change``, ``errors``, ``progress``,
``merge``), an event log (``events``, whose entry ids are the SSE event ids), a dead-letter
stream and a compacted snapshot hash (the *unified context*), all under
``{prefix}:build:{id}:``. Publishers send typed messages (``coordinator.bus.models``); subscribers
read through consumer groups (``coordinator.bus.subscription``).

Publishing is at-least-once: when Redis is unreachable, messages wait in a bounded
in-memory buffer and are flushed in order when it comes back; a full buffer raises
:class:`BusBufferFullError` — nothing is dropped silently. A batch whose outcome is unknown
(the connection broke mid-pipeline) is sent again; subscribers recognise the copy by its
message id and skip it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import msgpack

from coordinator.bus import scripts as bus_scripts
from coordinator.bus.codec import BODY_FIELD, BusCodec, mark_resent
from coordinator.bus.connection import REDIS_DOWN, BusConfig, backoff_delays, make_client
from coordinator.bus.models import (
    CHANNEL_OF,
    Channel,
    ContextValue,
    DeadLetter,
    Envelope,
    Event,
    FileState,
    KnownError,
    Message,
    UnifiedContext,
)
from coordinator.bus.redis_server import redact_url
from coordinator.bus.scripts import BusKeys
from coordinator.bus.subscription import Subscription
from sandbox_agents.errors import BusBufferFullError, BusMalformedEntryError, BusUnavailableError
from sandbox_agents.settings import Settings, get_settings

logger = logging.getLogger(__name__)

RawEntry = tuple[bytes, dict[bytes, bytes]]
"""A stream entry as redis-py returns it with ``decode_responses`` off: its id and its fields."""


@dataclass(slots=True)
class _Prepared:
    """A message ready to send: its stream, its encoded body and its unified-context update."""

    stream: str
    body: bytes
    unified_key: str | None
    unified_field: str | None
    unified_value: bytes | None  # None with a field set means "delete the field"


def decode_unified(raw: dict[bytes, bytes]) -> UnifiedContext:
    """The unified context from its hash's fields as HGETALL returns them (``c:``, ``f:``, ``e:``)."""
    context, files, errors = {}, {}, {}
    for field, value in raw.items():
        name, data = field.decode(), msgpack.unpackb(value)
        if name.startswith("c:"):
            context[name[2:]] = ContextValue(**data)
        elif name.startswith("f:"):
            files[name[2:]] = FileState(**data)
        elif name.startswith("e:"):
            errors[name[2:]] = KnownError(**data)
    return UnifiedContext(context=context, files=files, errors=errors)


def _mark_resent(prepared: Sequence[_Prepared]) -> None:
    """The batch may have reached Redis before the connection broke: flag its copies as re-sends."""
    for item in prepared:
        item.body = mark_resent(item.body)


class ContextBus:
    """Publishes to and reads from a build's streams.

    Args:
        url: Redis URL (``coordinator.bus.redis_server.redis_url()`` gives one).
        config: bus tuning; ``prefix`` defaults to ``REDIS_SANDBOX_PREFIX`` via :meth:`from_settings`.
        sender: default sender name stamped on published messages.
        clock: wall clock for message timestamps (injected in tests).

    The constructor does no I/O; the first command connects.
    """

    def __init__(
        self, url: str, config: BusConfig | None = None, *, sender: str = "", clock: Callable[[], float] = time.time
    ) -> None:
        self.url = url
        self.config = config or BusConfig()
        self.sender = sender
        self.clock = clock
        self.codec = BusCodec(self.config.compress_threshold)
        self.redis = make_client(url, self.config)
        self._trim = self.redis.register_script(bus_scripts.TRIM)
        self._instance = os.urandom(6).hex()
        self._seq = 0
        self._since_trim: collections.Counter[str] = collections.Counter()
        self._buffer: collections.deque[_Prepared] = collections.deque()
        self._flusher: asyncio.Task[None] | None = None
        self._subscriptions: list[Subscription] = []

    @classmethod
    def from_settings(cls, url: str, settings: Settings | None = None, **kwargs: Any) -> ContextBus:
        """A bus whose key prefix is ``REDIS_SANDBOX_PREFIX``."""
        settings = settings or get_settings()
        config = kwargs.pop("config", None) or BusConfig()
        config = config.model_copy(update={"prefix": settings.redis_sandbox_prefix})
        return cls(url, config, **kwargs)

    def keys(self, build_id: str) -> BusKeys:
        """The key layout of one build."""
        return BusKeys(self.config.prefix, build_id)

    # --- publishing -------------------------------------------------------------------

    @property
    def buffered(self) -> int:
        """Messages waiting in memory for Redis to come back."""
        return len(self._buffer)

    async def publish(self, build_id: str, message: Message, *, sender: str | None = None) -> str | None:
        """Publish one message on its channel.

        Returns:
            The stream entry id, or ``None`` if Redis is down and the message was buffered.

        Raises:
            BusBufferFullError: Redis is down and the buffer is full (the message was not taken).
            BusMalformedEntryError: the message cannot be serialised.
        """
        ids = await self.publish_many(build_id, (message,), sender=sender)
        return None if ids is None else ids[0]

    async def publish_event(self, build_id: str, kind: str, data: dict[str, Any] | None = None) -> str | None:
        """Append an :class:`Event` to the build's event log."""
        return await self.publish(build_id, Event(kind=kind, data=data or {}))

    async def publish_many(
        self, build_id: str, messages: Sequence[Message] | Iterable[Message], *, sender: str | None = None
    ) -> list[str] | None:
        """Publish a batch in one pipeline (one round trip), in order.

        Returns:
            Entry ids in message order, or ``None`` if the batch was buffered.

        Raises:
            BusBufferFullError: Redis is down and the batch does not fit in the buffer;
                no message of the batch was taken.
        """
        prepared = self._prepare(self.keys(build_id), messages, self.sender if sender is None else sender)
        if not prepared:
            return []
        if self._buffer:  # keep order: nothing overtakes what is already waiting
            self._enqueue(prepared)
            return None
        try:
            return await self._send(prepared)
        except REDIS_DOWN as exc:
            logger.warning("redis unreachable (%s); buffering %d message(s)", exc, len(prepared))
            self._enqueue(prepared)
            _mark_resent(prepared)
            return None

    def _prepare(self, keys: BusKeys, messages: Iterable[Message], sender: str) -> list[_Prepared]:
        now = self.clock()
        encode = self.codec.encode_dict
        out: list[_Prepared] = []
        for message in messages:
            self._seq += 1
            dumped = message.model_dump()
            body = encode(dumped, sender=sender, ts=now, mid=f"{self._instance}-{self._seq}")
            kind = dumped["type"]
            field: str | None = None
            value: bytes | None = None
            if kind == "context_update":
                field = "c:" + message.key  # type: ignore[union-attr]
                value = msgpack.packb({"value": dumped["value"], "kind": dumped["kind"], "sender": sender, "ts": now})
            elif kind == "file_change":
                field = "f:" + message.path  # type: ignore[union-attr]
                if message.sha256 is not None:  # type: ignore[union-attr]
                    state = {"sha256": dumped["sha256"], "sandbox_id": dumped["sandbox_id"], "agent": dumped["agent"]}
                    value = msgpack.packb({**state, "ts": now})
            elif kind == "error_report":
                field = "e:" + message.error_key()  # type: ignore[union-attr]
                if not message.resolved:  # type: ignore[union-attr]
                    err = {k: dumped[k] for k in ("source", "message", "file", "line")}
                    value = msgpack.packb({**err, "sender": sender, "ts": now})
            out.append(_Prepared(keys.stream(CHANNEL_OF[kind]), body, keys.unified if field else None, field, value))
        return out

    async def _send(self, prepared: Sequence[_Prepared]) -> list[str]:
        """One MULTI/EXEC pipeline: every XADD, one compacted HSET/HDEL per unified hash, due trims.

        MULTI/EXEC makes a batch all-or-nothing, so a connection lost mid-send never leaves half
        a batch behind; it costs nothing measurable here (see docs/bus.md).
        """
        pipe = self.redis.pipeline(transaction=True)
        command = pipe.execute_command
        unified: dict[str, dict[str, bytes | None]] = {}
        for item in prepared:
            command("XADD", item.stream, "*", BODY_FIELD, item.body)
            if item.unified_key is not None:
                unified.setdefault(item.unified_key, {})[item.unified_field] = item.unified_value  # type: ignore[index]
        for key, fields in unified.items():
            sets = {f: v for f, v in fields.items() if v is not None}
            drops = [f for f, v in fields.items() if v is None]
            if sets:
                pipe.hset(key, mapping=sets)  # type: ignore[arg-type]
            if drops:
                pipe.hdel(key, *drops)
        due = self._due_trims(prepared)
        for stream in due:
            await self._trim(keys=[stream], args=[self.config.retention_max_len], client=pipe)
        results = await pipe.execute()
        return [rid.decode() if isinstance(rid, bytes) else rid for rid in results[: len(prepared)]]

    def _due_trims(self, prepared: Sequence[_Prepared]) -> list[str]:
        counts = self._since_trim
        for item in prepared:
            counts[item.stream] += 1
        due = [stream for stream, n in counts.items() if n >= self.config.trim_every]
        for stream in due:
            counts[stream] = 0
        return due

    def _enqueue(self, prepared: list[_Prepared]) -> None:
        if len(self._buffer) + len(prepared) > self.config.buffer_limit:
            raise BusBufferFullError(
                f"redis unreachable and {len(self._buffer)} message(s) already buffered "
                f"(limit {self.config.buffer_limit}); refusing {len(prepared)} more",
                buffered=len(self._buffer),
                limit=self.config.buffer_limit,
            )
        self._buffer.extend(prepared)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_loop(), name="bus-flush")

    async def _flush_loop(self) -> None:
        delays = iter(backoff_delays(self.config))
        while self._buffer:
            batch = [self._buffer[i] for i in range(min(len(self._buffer), self.config.flush_batch))]
            try:
                await self._send(batch)
            except REDIS_DOWN as exc:
                _mark_resent(batch)
                delay = next(delays)
                logger.debug("flush of %d buffered message(s) failed (%s); retrying in %.2fs", len(batch), exc, delay)
                await asyncio.sleep(delay)
                continue
            for _ in batch:
                self._buffer.popleft()
            delays = iter(backoff_delays(self.config))
        logger.info("bus buffer flushed")

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until every buffered message is in Redis.

        Raises:
            BusUnavailableError: still not flushed after ``timeout`` seconds.
        """
        if self._flusher is None or self._flusher.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._flusher), timeout)
        except TimeoutError as exc:
            raise BusUnavailableError(f"{len(self._buffer)} message(s) still buffered after {timeout}s") from exc

    # --- reading ----------------------------------------------------------------------

    async def read_events(
        self, build_id: str, after_id: str | None = None, count: int = 100, *, block_ms: int | None = None
    ) -> list[tuple[str, Envelope]]:
        """Read the event log after ``after_id`` (an SSE ``Last-Event-ID``), oldest first.

        Args:
            after_id: last id the reader has; ``None`` reads from the start.
            count: most entries to return.
            block_ms: if set and nothing is there yet, wait up to this long for new events.

        Returns:
            ``(entry id, envelope)`` pairs; malformed entries are skipped (and logged).
        """
        key = self.keys(build_id).stream("events")
        try:
            if block_ms is None:
                raw = await self.redis.xrange(key, f"({after_id}" if after_id else "-", "+", count=count)
                rows = cast("list[RawEntry]", raw)
            else:
                found = cast(
                    "list[tuple[bytes, list[RawEntry]]]",
                    await self.redis.xread({key: after_id or "0-0"}, count=count, block=block_ms),
                )
                rows = found[0][1] if found else []
        except REDIS_DOWN as exc:
            raise BusUnavailableError(f"cannot read events of build {build_id}: {exc}") from exc
        out: list[tuple[str, Envelope]] = []
        for rid, fields in rows:
            envelope = self.envelope(key, rid, fields)
            if envelope is not None:
                out.append((envelope.id, envelope))
        return out

    async def ping(self, timeout_s: float = 2.0) -> None:
        """Check that Redis answers (health checks).

        Raises:
            BusUnavailableError: It does not answer within ``timeout_s`` (or refuses the connection).
        """
        try:
            async with asyncio.timeout(timeout_s):
                await self.redis.ping()
        except (*REDIS_DOWN, TimeoutError) as exc:
            raise BusUnavailableError(f"redis at {redact_url(self.url)} does not answer: {exc!r}") from exc

    def envelope(self, stream: str, rid: bytes | str, fields: dict[bytes, bytes]) -> Envelope | None:
        """Decode one raw entry; ``None`` (with a warning) if it is malformed."""
        rid = rid.decode() if isinstance(rid, bytes) else rid
        try:
            d = self.codec.decode_fields(fields)
        except BusMalformedEntryError as exc:
            logger.warning("skipping malformed entry %s of %s: %s", rid, stream, exc)
            return None
        return Envelope(id=rid, stream=stream, sender=d.sender, ts=d.ts, mid=d.mid, message=d.message)

    async def unified_context(self, build_id: str) -> UnifiedContext:
        """The build's compacted snapshot, read in one call."""
        try:
            raw = cast("dict[bytes, bytes]", await self.redis.hgetall(self.keys(build_id).unified))
        except REDIS_DOWN as exc:
            raise BusUnavailableError(f"cannot read unified context of build {build_id}: {exc}") from exc
        return decode_unified(raw)

    async def read_dead(self, build_id: str, count: int = 100) -> list[DeadLetter]:
        """Dead letters of the build, oldest first."""
        try:
            rows = cast("list[RawEntry]", await self.redis.xrange(self.keys(build_id).dead, count=count))
        except REDIS_DOWN as exc:
            raise BusUnavailableError(f"cannot read dead letters of build {build_id}: {exc}") from exc
        out = []
        for rid, f in rows:
            out.append(
                DeadLetter.model_validate(
                    {
                        "id": rid.decode(),
                        "source_stream": f[b"src"].decode(),
                        "source_id": f[b"id"].decode(),
                        "group": f[b"group"].decode(),
                        "consumer": f[b"consumer"].decode(),
                        "reason": f[b"reason"].decode(),
                        "error": f[b"error"].decode(errors="replace"),
                        "attempts": int(f[b"attempts"]),
                        "raw": {
                            k.decode(errors="backslashreplace"): v
                            for k, v in msgpack.unpackb(f[b"raw"], raw=True).items()
                        },
                    }
                )
            )
        return out

    async def trim(self, build_id: str) -> int:
        """Trim every stream of the build now (publishers also do it every ``trim_every`` publishes).

        Returns:
            Entries removed.
        """
        keys = self.keys(build_id)
        removed = 0
        for channel in CHANNEL_OF.values():
            removed += int(await self._trim(keys=[keys.stream(channel)], args=[self.config.retention_max_len]))
        return removed

    async def delete_build(self, build_id: str) -> None:
        """Remove every key of the build (after it ended and its log was archived)."""
        keys = [k async for k in self.redis.scan_iter(match=f"{self.keys(build_id).base}:*", count=500)]
        if keys:
            await self.redis.delete(*keys)

    # --- subscribing and lifecycle ----------------------------------------------------

    def subscribe(self, build_id: str, channels: Sequence[Channel], **kwargs: Any) -> Subscription:
        """A :class:`~coordinator.bus.subscription.Subscription`; see its docstring for arguments."""
        sub = Subscription(self, build_id, channels, **kwargs)
        self._subscriptions.append(sub)
        return sub

    async def aclose(self, flush_timeout: float = 5.0) -> None:
        """Stop subscriptions, flush the buffer and close connections.

        Raises:
            BusUnavailableError: messages were still buffered after ``flush_timeout``;
                they are lost with this process, so the caller is told.
        """
        for sub in self._subscriptions:
            await sub.stop()
        try:
            await self.flush(flush_timeout)
        finally:
            if self._flusher is not None and not self._flusher.done():
                self._flusher.cancel()
                logger.error("closing bus with %d unsent message(s)", len(self._buffer))
            await self.redis.aclose()

    async def __aenter__(self) -> ContextBus:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
