"""A consumer-group subscriber of a build's streams.

One group per sandbox or agent; each group sees every entry of the streams it reads, in
stream order. The loop, on each (re)connection:

1. creates the groups if missing (``XGROUP CREATE … MKSTREAM``),
2. replays the consumer's own pending entries (its PEL: delivered, never acknowledged —
   e.g. the process was killed mid-handler),
3. then reads new entries (``>``), blocking.

An entry is acknowledged only after its handler returned, and in the same Lua step it is
marked handled in a per-group set, so a group's handler never gets an id it has already
acknowledged, nor a re-sent copy of a message it already handled (same message id).
A handler that raises is retried in place (order is kept) with a growing pause; after
``max_deliveries`` deliveries — counted in Redis, so crashes count too — the entry goes
to the dead letters and is acknowledged. Malformed entries go there at once. If the
handler returned but the process died before the acknowledgement, the entry is delivered
again: at-least-once, with that one window.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, cast

import msgpack
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from coordinator.bus import scripts as bus_scripts
from coordinator.bus.codec import BusCodec
from coordinator.bus.connection import REDIS_DOWN, BusConfig, backoff_delays, make_client
from coordinator.bus.models import Channel, Envelope
from coordinator.bus.scripts import BusKeys
from sandbox_agents.errors import BusMalformedEntryError, BusUnavailableError, InvalidInputError

logger = logging.getLogger(__name__)

Handler = Callable[[Envelope], Awaitable[None]]

TRIM_EVERY = 64
"""One settle in this many trims the group's handled set back to ``dedupe_window``."""
UNCONFIRMED_MAX = 4096
"""Acknowledgements sent without a reply that a busy subscriber (no idle read) checks at once."""


class BusSource(Protocol):
    """What a subscription takes from its bus: where Redis is, the tuning, the key layout, the codec.

    :class:`~coordinator.bus.context_bus.ContextBus` is one; naming only these keeps this module
    from importing the bus, which imports it to build subscriptions.
    """

    url: str
    config: BusConfig
    codec: BusCodec

    def keys(self, build_id: str) -> BusKeys: ...


class Subscription:
    """Reads some channels of one build as ``consumer`` in ``group`` and calls ``handler`` per entry.

    Args:
        bus: the bus (its URL, config and codec are used; this subscription has its own connection).
        build_id: the build.
        channels: channels to read, e.g. ``["context", "errors"]``.
        group: consumer group (one per sandbox or agent).
        consumer: consumer name inside the group; the same name after a restart replays its PEL.
        handler: ``async def handler(envelope) -> None``; raising means "failed, retry".
        start_id: where a newly created group starts: ``"0"`` (whole retained history) or ``"$"``.
    """

    def __init__(
        self,
        bus: BusSource,
        build_id: str,
        channels: Sequence[Channel],
        *,
        group: str,
        handler: Handler,
        consumer: str | None = None,
        start_id: str = "0",
    ) -> None:
        if not channels:
            raise InvalidInputError("subscribe to at least one channel", field="channels")
        self.bus = bus
        self.config = bus.config
        self.keys = bus.keys(build_id)
        self.group = bus_scripts.check_name(group, "group")
        self.consumer = bus_scripts.check_name(consumer or group, "consumer")
        self.handler = handler
        self.start_id = start_id
        self.streams = {self.keys.stream(ch): ch for ch in channels}
        self._done_key = self.keys.done(self.group)
        self._attempts_key = self.keys.attempts(self.group)
        self._hwm_key = self.keys.hwm(self.group)
        self._hwm: dict[str, tuple[int, int]] = {}  # stream -> highest id this group handled (cached)
        self._deferred: list[tuple] = []  # acknowledgements to send with the next read
        self._client = make_client(bus.url, self.config, extra_timeout_s=self.config.block_ms / 1000)
        self._begin = self._client.register_script(bus_scripts.BEGIN)
        self._settle_script = self._client.register_script(bus_scripts.SETTLE)
        self._conn = None  # the warm connection of the read loop
        streams = list(self.streams)
        packer = self._client.connection_pool.make_connection()
        self._read_packed = b"".join(
            packer.pack_command(
                "XREADGROUP",
                "GROUP",
                self.group,
                self.consumer,
                "COUNT",
                self.config.read_count,
                "BLOCK",
                self.config.block_ms,
                "STREAMS",
                *streams,
                *([">"] * len(streams)),
            )
        )
        self._skip_packed = resp("CLIENT", "REPLY", "SKIP")
        self._settles = TRIM_EVERY - 1  # the first settle trims the handled set
        self._unverified = 0  # deferred acknowledgements sent without a reply since the last check
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._unsettled: dict[str, str] = {}  # member -> mid: handled here, acknowledgement not yet stored
        self._unconfirmed: dict[str, str] = {}  # member -> mid: acknowledgement sent without a reply, unchecked
        self.handled = 0
        """Entries whose handler succeeded and whose acknowledgement was stored (or, for one sent
        without a reply with the next read, sent)."""
        self.failures = 0
        """Handler failures (each retry counts)."""
        self.dead = 0
        """Entries this subscription moved to the dead letters."""
        self.duplicates = 0
        """Entries skipped because the group had already handled them (or a copy of them)."""
        self.idle_checks = 0
        """Idle reads after which the pending list was checked for refused acknowledgements."""

    async def start(self, ready_timeout: float = 10.0) -> Subscription:
        """Start reading in a background task; returns once the groups exist.

        Raises:
            BusUnavailableError: Redis did not answer within ``ready_timeout`` seconds.
        """
        self._task = asyncio.create_task(self._run(), name=f"bus-sub-{self.group}-{self.consumer}")
        try:
            await asyncio.wait_for(self._ready.wait(), ready_timeout)
        except TimeoutError as exc:
            await self.stop()
            raise BusUnavailableError(f"subscription {self.group}/{self.consumer}: redis not ready") from exc
        return self

    async def stop(self) -> None:
        """Stop reading. An entry whose handler was interrupted stays pending and is replayed later."""
        self._stopping = True
        task, self._task = self._task, None
        if task is not None:
            # A cancel that lands inside redis-py's read timeout can be swallowed (asyncio.timeout on
            # Python 3.11), leaving the task blocked in XREADGROUP: cancel again, then cut the socket.
            for _ in range(5):
                task.cancel()
                done, _ = await asyncio.wait({task}, timeout=0.2)
                if done:
                    break
                await self._client.connection_pool.disconnect(inuse_connections=True)
            else:
                logger.error("subscription %s/%s did not stop", self.group, self.consumer)
        deferred, self._deferred = self._deferred, []
        for keys, args in deferred:  # handled entries whose acknowledgement was waiting for the next read
            try:
                await self._settle(keys[0], args[1], args[2], args[3])
            except (*REDIS_DOWN, ResponseError) as exc:
                logger.warning(
                    "%s/%s: %s stays pending (%s); it will be replayed", self.group, self.consumer, args[2], exc
                )
        self._conn = None
        await self._client.aclose()

    async def __aenter__(self) -> Subscription:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- the loop ---------------------------------------------------------------------

    async def _run(self) -> None:
        delays = backoff_delays(self.config)
        while not self._stopping:
            try:
                await self._ensure_groups()
                self._ready.set()
                for stream in self.streams:
                    await self._replay_own(stream)
                self._unsettled.clear()  # whatever was not in the PEL had been acknowledged already
                self._unconfirmed.clear()
                while not self._stopping:
                    found = await self._read_new()
                    for stream, entries in found or ():
                        await self._process(stream.decode(), entries, fresh=True)
                    if (not found and self._unverified) or len(self._unconfirmed) >= UNCONFIRMED_MAX:
                        await self._verify_settled()
                    delays = backoff_delays(self.config)
            except ResponseError as exc:
                if not any(code in str(exc) for code in ("UNBLOCKED", "NOGROUP", "NOSCRIPT")):
                    raise
                # the stream or group was deleted under us (delete_build, an operator), or Redis lost
                # its scripts in a restart: recreate and go on
                logger.info("subscription %s/%s: %s; recreating groups", self.group, self.consumer, exc)
                await asyncio.sleep(next(delays))
            except REDIS_DOWN as exc:
                if self._stopping:
                    return
                delay = next(delays)
                logger.warning(
                    "subscription %s/%s lost redis (%s); retry in %.2fs", self.group, self.consumer, exc, delay
                )
                await asyncio.sleep(delay)
            except Exception:  # never let one bad entry or bug end the subscription
                logger.exception("subscription %s/%s failed; restarting its loop", self.group, self.consumer)
                await asyncio.sleep(next(delays))
            self._deferred.clear()  # their entries are still pending: the replay settles them

    async def _ensure_groups(self) -> None:
        for stream in self.streams:
            try:
                await self._client.xgroup_create(stream, self.group, id=self.start_id, mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        marks = cast("list[bytes | None]", await self._client.hmget(self._hwm_key, list(self.streams)))
        self._hwm = {stream: _id(m.decode()) for stream, m in zip(self.streams, marks, strict=True) if m}

    async def _read_new(self) -> list:
        """XREADGROUP ">" — with the previous batch's last acknowledgement in the same write.

        The hot path of every subscriber, so it skips redis-py's pipeline and command layers: one
        warm connection held for the loop, the read command packed once, one write per round trip
        (no per-message task or ``wait_for``), replies read straight from hiredis. The
        acknowledgement goes as ``CLIENT REPLY SKIP`` + ``EVAL SETTLE`` (the script's text, so
        a flushed script cache cannot refuse it): no reply, so the process wakes once per
        message, not twice. Redis runs it before the read, so a read that answers found it
        stored unless Redis refused it; :meth:`_verify_settled` catches that case when idle.
        """
        conn = self._conn
        if conn is None:
            conn = self._conn = await self._client.connection_pool.get_connection()
            await conn.connect()
        deferred, self._deferred = self._deferred, []
        chunks: list[bytes] = []
        script = bus_scripts.SETTLE
        for keys, args in deferred:
            chunks.append(self._skip_packed)
            chunks.append(resp("EVAL", script, len(keys), *keys, *args))
        chunks.append(self._read_packed)
        try:
            writer = conn._writer  # noqa: SLF001 - redis-py's send_packed_command wraps every write in wait_for
            if writer is None:
                raise RedisConnectionError("connection closed")
            writer.writelines(chunks)
            await writer.drain()
            reply = await conn.read_response()
        except BaseException:
            self._deferred = deferred  # not known to be stored: stop() or the replay settles them
            await self._drop_conn()
            raise
        for keys, args in deferred:
            self._settled(keys[0], args[1], args[2])
            self._unconfirmed[args[2]] = args[3]
        self._unverified += len(deferred)
        if not reply:
            return []
        rows = reply.items() if isinstance(reply, dict) else reply
        return [(stream, [(rid, _fields(f)) for rid, f in entries]) for stream, entries in rows]

    async def _verify_settled(self) -> None:
        """After an idle read (or every ``UNCONFIRMED_MAX`` of them): acknowledgements sent without
        a reply must have emptied our PEL.

        Redis does not answer a deferred SETTLE (``CLIENT REPLY SKIP``), so one it refused (out of
        memory, scripts disabled…) would leave its entry pending, unmarked, until a reconnect.
        Anything still pending is replayed now; an entry whose acknowledgement is among the
        unconfirmed ones is settled again, not handed to the handler a second time.
        """
        self._unverified = 0
        for stream in self.streams:
            pending = await self._client.xpending_range(
                stream, self.group, min="-", max="+", count=1, consumername=self.consumer
            )
            if pending:
                logger.warning(
                    "%s/%s: an acknowledgement of %s was not stored; replaying its pending entries",
                    self.group, self.consumer, stream,
                )  # fmt: skip
                await self._replay_own(stream)
        self._unconfirmed.clear()
        self.idle_checks += 1

    async def _drop_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.disconnect(nowait=True)
            await self._client.connection_pool.release(conn)

    async def _replay_own(self, stream: str) -> None:
        """Deliver this consumer's pending entries of one stream again, oldest first."""
        last = "0"
        while True:
            found = cast(
                "list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]",
                await self._client.xreadgroup(self.group, self.consumer, {stream: last}, count=self.config.read_count),
            )
            entries = found[0][1] if found else []
            if not entries:
                return
            logger.info("%s/%s replays %d pending entries of %s", self.group, self.consumer, len(entries), stream)
            await self._process(stream, entries, fresh=False)
            last = entries[-1][0].decode()

    async def _process(self, stream: str, entries: list, *, fresh: bool) -> None:
        """Handle one batch of one stream in order.

        ``fresh`` entries were read with ">" (never delivered to this group): only those that may
        be duplicates — at or below the high-water mark, or flagged as re-sent — are checked in
        Redis first. Replayed entries are all checked, and their redelivery is counted.
        """
        channel = self.streams[stream]
        hwm = self._hwm.get(stream, (-1, -1))
        batch = []
        for rid, fields in entries:
            rid = rid.decode()
            member = f"{channel}/{rid}"
            envelope, error, mid, suspect = None, None, "", not fresh or _id(rid) <= hwm
            if not fields:  # the entry was deleted while pending
                error = BusMalformedEntryError("entry no longer exists", reason="missing_body")
            else:
                try:
                    d = self.bus.codec.decode_fields(fields)
                    envelope = Envelope.model_construct(
                        id=rid, stream=stream, sender=d.sender, ts=d.ts, mid=d.mid, message=d.message
                    )
                    mid, suspect = "m:" + d.mid, suspect or d.resent
                except BusMalformedEntryError as exc:
                    error = exc
            batch.append((rid, member, mid, envelope, error, fields or {}, suspect))
        counts = [0] * len(batch)
        checked = [i for i, b in enumerate(batch) if b[6]]
        if checked:
            args = ["check" if fresh else "count"] + [batch[i][1] for i in checked] + [batch[i][2] for i in checked]
            found = await self._begin(keys=[self._done_key, self._attempts_key], args=args)
            for i, count in zip(checked, found, strict=True):
                counts[i] = int(count)
        seen_mids: set[str] = set()  # copies inside one batch are not marked yet: catch them here
        last = len(batch) - 1
        for n, ((rid, member, mid, envelope, error, fields, _), count) in enumerate(zip(batch, counts, strict=True)):
            duplicate = count == -1 or (mid != "" and mid in seen_mids)
            seen_mids.add(mid)
            if duplicate or member in self._unsettled or member in self._unconfirmed:
                self.duplicates += duplicate
                known = self._unsettled.get(member) or self._unconfirmed.get(member)
                await self._settle(stream, rid, member, known or mid)
            elif envelope is None:
                assert error is not None
                await self._dead_letter(stream, rid, member, mid, "decode", f"{error.reason}: {error}", 0, fields)
            else:
                defer = fresh and n == last
                await self._deliver(stream, rid, member, mid, envelope, 1 + count, fields, defer=defer)

    async def _deliver(
        self,
        stream: str,
        rid: str,
        member: str,
        mid: str,
        envelope: Envelope,
        attempts: int,
        fields: dict,
        *,
        defer: bool,
    ) -> None:
        last_error = "delivered without acknowledgement (consumer died or was stopped mid-handler)"
        while attempts <= self.config.max_deliveries:
            try:
                await self.handler(envelope)
            except Exception as exc:
                self.failures += 1
                last_error = f"{type(exc).__name__}: {exc}"
                logger.warning(
                    "%s/%s: handler failed on %s (attempt %d): %s",
                    self.group,
                    self.consumer,
                    member,
                    attempts,
                    last_error,
                )
                if attempts >= self.config.max_deliveries:
                    break
                await asyncio.sleep(self.config.retry_delay_s * 2 ** (attempts - 1))
                attempts = 1 + int(await self._client.hincrby(self._attempts_key, member, 1))
                continue
            self._unsettled[member] = mid  # if the acknowledgement is lost, settle on replay, never re-handle
            counted = attempts > 1  # a first, fresh delivery has no attempt count in Redis
            if defer:  # the last entry of a batch is acknowledged with the next read, in one round trip
                self._deferred.append(self._settle_call(stream, rid, member, mid, counted=counted))
            else:
                await self._settle(stream, rid, member, mid, counted=counted)
            return
        await self._dead_letter(stream, rid, member, mid, "handler", last_error, attempts, fields)

    async def _dead_letter(
        self, stream: str, rid: str, member: str, mid: str, reason: str, error: str, attempts: int, fields: dict
    ) -> None:
        logger.error("%s/%s: dead-lettering %s (%s): %s", self.group, self.consumer, member, reason, error)
        dead: list[str | int | bytes] = ["src", stream, "id", rid, "group", self.group, "consumer", self.consumer]
        dead += ["reason", reason]
        dead += ["error", error[:4000], "attempts", attempts, "raw", msgpack.packb(fields, use_bin_type=True)]
        self._unsettled.pop(member, None)
        await self._settle(stream, rid, member, mid, dead)
        self.dead += 1

    def _settle_call(
        self, stream: str, rid: str, member: str, mid: str, dead: list | None = None, *, counted: bool = True
    ) -> tuple:
        """KEYS and ARGV of a SETTLE; ``counted``: the entry may have an attempt count to forget."""
        self._settles += 1
        flags = ("a" if counted else "") + ("t" if self._settles % TRIM_EVERY == 0 else "")
        args = [self.group, rid, member, mid, int(time.time() * 1000), self.config.dedupe_window]
        args += [self.config.dead_max_len, flags or "-", *(dead or ())]
        keys = [stream, self._done_key, self._attempts_key, self.keys.dead, self._hwm_key]
        return keys, args

    async def _settle(
        self, stream: str, rid: str, member: str, mid: str, dead: list | None = None, *, counted: bool = True
    ) -> None:
        """Acknowledge + mark handled (+ dead-letter) atomically."""
        keys, args = self._settle_call(stream, rid, member, mid, dead, counted=counted)
        await self._settle_script(keys=keys, args=args)
        if dead is None:
            self._settled(stream, rid, member)

    def _settled(self, stream: str, rid: str, member: str) -> None:
        if self._unsettled.pop(member, None) is not None:
            self.handled += 1
        mark = _id(rid)
        if mark > self._hwm.get(stream, (-1, -1)):
            self._hwm[stream] = mark


def resp(*args: str | int | bytes) -> bytes:
    """One command in the Redis protocol (RESP), for the hot path's hand-written writes."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(out)


def _fields(flat: list | dict | None) -> dict:
    """An entry's field map from a raw reply (a flat list in RESP2, a map in RESP3)."""
    if not flat:
        return {}
    if isinstance(flat, dict):
        return flat
    it = iter(flat)
    return dict(zip(it, it, strict=False))


def _id(entry_id: str) -> tuple[int, int]:
    """A stream id as a comparable (ms, seq) pair."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
