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

import msgpack
from redis.exceptions import ResponseError

from coordinator import bus_scripts
from coordinator.bus import REDIS_DOWN, ContextBus, backoff_delays, make_client
from coordinator.bus_models import Channel, Envelope
from sandbox_agents.errors import BusMalformedEntryError, BusUnavailableError, InvalidInputError

logger = logging.getLogger(__name__)

Handler = Callable[[Envelope], Awaitable[None]]


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
        bus: ContextBus,
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
        self._client = make_client(bus.url, self.config, extra_timeout_s=self.config.block_ms / 1000)
        self._begin = self._client.register_script(bus_scripts.BEGIN)
        self._settle_script = self._client.register_script(bus_scripts.SETTLE)
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._unsettled: dict[str, str] = {}  # member -> mid: handled here, acknowledgement not yet stored
        self.handled = 0
        """Entries whose handler succeeded and whose acknowledgement is stored."""
        self.failures = 0
        """Handler failures (each retry counts)."""
        self.dead = 0
        """Entries this subscription moved to the dead letters."""
        self.duplicates = 0
        """Entries skipped because the group had already handled them (or a copy of them)."""

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
                while not self._stopping:
                    found = await self._client.xreadgroup(
                        self.group,
                        self.consumer,
                        dict.fromkeys(self.streams, ">"),
                        count=self.config.read_count,
                        block=self.config.block_ms,
                    )
                    for stream, entries in found or ():
                        await self._process(stream.decode(), entries)
                    delays = backoff_delays(self.config)
            except ResponseError as exc:
                if "UNBLOCKED" not in str(exc) and "NOGROUP" not in str(exc):
                    raise
                # the stream or group was deleted under us (delete_build, an operator): recreate and go on
                logger.info("subscription %s/%s: %s; recreating groups", self.group, self.consumer, exc)
                await asyncio.sleep(next(delays))
            except REDIS_DOWN as exc:
                if self._stopping:
                    return
                delay = next(delays)
                logger.warning("subscription %s/%s lost redis (%s); retry in %.2fs", self.group, self.consumer, exc, delay)
                await asyncio.sleep(delay)
            except Exception:  # never let one bad entry or bug end the subscription
                logger.exception("subscription %s/%s failed; restarting its loop", self.group, self.consumer)
                await asyncio.sleep(next(delays))

    async def _ensure_groups(self) -> None:
        for stream in self.streams:
            try:
                await self._client.xgroup_create(stream, self.group, id=self.start_id, mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def _replay_own(self, stream: str) -> None:
        """Deliver this consumer's pending entries of one stream again, oldest first."""
        last = "0"
        while True:
            found = await self._client.xreadgroup(
                self.group, self.consumer, {stream: last}, count=self.config.read_count
            )
            entries = found[0][1] if found else []
            if not entries:
                return
            logger.info("%s/%s replays %d pending entries of %s", self.group, self.consumer, len(entries), stream)
            await self._process(stream, entries)
            last = entries[-1][0]

    async def _process(self, stream: str, entries: list) -> None:
        channel = self.streams[stream]
        batch = []
        for rid, fields in entries:
            rid = rid.decode()
            member = f"{channel}/{rid}"
            envelope, error, mid = None, None, ""
            if not fields:  # the entry was deleted while pending
                error = BusMalformedEntryError("entry no longer exists", reason="missing_body")
            else:
                try:
                    d = self.bus.codec.decode_fields(fields)
                    envelope = Envelope(id=rid, stream=stream, sender=d.sender, ts=d.ts, mid=d.mid, message=d.message)
                    mid = "m:" + d.mid
                except BusMalformedEntryError as exc:
                    error = exc
            batch.append((rid, member, mid, envelope, error, fields or {}))
        counts = await self._begin(
            keys=[self._done_key, self._attempts_key], args=[b[1] for b in batch] + [b[2] for b in batch]
        )
        seen_mids: set[str] = set()  # copies inside one batch passed BEGIN together: catch them here
        for (rid, member, mid, envelope, error, fields), count in zip(batch, counts, strict=True):
            duplicate = count == -1 or (mid != "" and mid in seen_mids)
            seen_mids.add(mid)
            if duplicate or member in self._unsettled:
                self.duplicates += duplicate
                await self._settle(stream, rid, member, self._unsettled.pop(member, mid))
            elif envelope is None:
                assert error is not None
                await self._dead_letter(stream, rid, member, mid, "decode", f"{error.reason}: {error}", 0, fields)
            else:
                await self._deliver(stream, rid, member, mid, envelope, int(count), fields)

    async def _deliver(
        self, stream: str, rid: str, member: str, mid: str, envelope: Envelope, attempts: int, fields: dict
    ) -> None:
        last_error = "delivered without acknowledgement (consumer died or was stopped mid-handler)"
        while attempts <= self.config.max_deliveries:
            try:
                await self.handler(envelope)
            except Exception as exc:
                self.failures += 1
                last_error = f"{type(exc).__name__}: {exc}"
                logger.warning("%s/%s: handler failed on %s (attempt %d): %s", self.group, self.consumer, member,
                               attempts, last_error)
                if attempts >= self.config.max_deliveries:
                    break
                await asyncio.sleep(self.config.retry_delay_s * 2 ** (attempts - 1))
                attempts = int(await self._client.hincrby(self._attempts_key, member, 1))
                continue
            self._unsettled[member] = mid  # if the acknowledgement fails, settle on replay, don't re-handle
            await self._settle(stream, rid, member, mid)
            del self._unsettled[member]
            self.handled += 1
            return
        await self._dead_letter(stream, rid, member, mid, "handler", last_error, attempts, fields)

    async def _dead_letter(
        self, stream: str, rid: str, member: str, mid: str, reason: str, error: str, attempts: int, fields: dict
    ) -> None:
        logger.error("%s/%s: dead-lettering %s (%s): %s", self.group, self.consumer, member, reason, error)
        dead = ["src", stream, "id", rid, "group", self.group, "consumer", self.consumer, "reason", reason]
        dead += ["error", error[:4000], "attempts", attempts, "raw", msgpack.packb(fields, use_bin_type=True)]
        await self._settle(stream, rid, member, mid, dead)
        self.dead += 1

    async def _settle(self, stream: str, rid: str, member: str, mid: str, dead: list | None = None) -> bool:
        """Acknowledge + mark handled (+ dead-letter) atomically; False if it was already marked."""
        args = [self.group, rid, member, mid, int(time.time() * 1000), self.config.dedupe_window]
        args += [self.config.dead_max_len, *(dead or ())]
        keys = [stream, self._done_key, self._attempts_key, self.keys.dead]
        return bool(await self._settle_script(keys=keys, args=args))
