"""One subscriber per host and build, fanned out in-process: a live unified context and listeners.

Every subscriber process pays its own ``XREADGROUP``, decoding and acknowledgement per message,
and twenty of them woken at once on two cores queue behind each other (``bench.bus``,
docs/benchmarks.md). A :class:`BusFanout` reads a build's channels once for the whole host —
one consumer group (the host's hub uses ``hub-{node}``), its consumer named the same after a
restart so its pending entries replay — and hands every delivered envelope to

* its **view**: the build's unified context kept in memory, reduced from the messages by the rules
  of the compacted hash in Redis (``ContextBus._prepare``): latest value per context key, latest
  hash per file (a deletion removes it), open errors per (source, file, line) (``resolved=True``
  removes one), each with the publisher's sender and timestamp;
* its **listeners**: in-process consumers, each with a channel filter and its own bounded queue.

**Seed.** The subscription starts first (a new group at ``$``: what came before is in the hash),
then the hash and the last entry id of each stream are read in one MULTI, so they agree: the hash
holds exactly the entries up to those ids. An entry at or below its stream's mark is in the seed
already and does not touch the view again; above it, each entry applies once, in stream order. A
stream's entries touch only that stream's fields and the hash was written in stream order (the
XADD and the HSET of a batch share one MULTI), so the view never steps back to an older value —
not while a restarted consumer replays its pending entries, not for a group that resumed behind
the seed. The reductions are idempotent besides: an entry applied twice changes nothing.

**Slow listeners.** Delivery never waits: the fan-out puts each envelope into each matching
listener's queue without blocking. A listener whose queue already holds ``limit`` envelopes is
*overflowed*: it gets nothing more, and once it has read what its queue held, reading raises
:class:`BusListenerOverflowError` naming the first envelope it missed. Nothing is dropped
silently: the listener knows exactly where its gap starts and re-reads the state from
:attr:`BusFanout.view` (which always has everything) before listening again. The subscription,
the view and the other listeners go on as if it were not there.

**Freshness.** The view trails the streams by one delivery. :meth:`BusFanout.caught_up` reads the
streams' last ids (one round trip) and waits until the view has reached them, so a reader sees
everything published before it asked — what re-reading the hash used to give, without moving it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from typing import cast

from coordinator.bus.connection import REDIS_DOWN
from coordinator.bus.context_bus import ContextBus, decode_unified
from coordinator.bus.models import (
    CHANNEL_OF,
    Channel,
    ContextUpdate,
    ContextValue,
    Envelope,
    ErrorReport,
    FileChange,
    FileState,
    KnownError,
    UnifiedContext,
)
from coordinator.bus.subscription import Subscription
from sandbox_agents.errors import BusError, BusUnavailableError, InvalidInputError

logger = logging.getLogger(__name__)

VIEW_CHANNELS: tuple[Channel, ...] = ("context", "file-change", "errors")
"""The channels the unified context is reduced from (a fan-out reads these unless told otherwise)."""
LISTENER_LIMIT = 1000
"""Envelopes a listener's queue holds before the listener counts as overflowed."""
FENCE_TIMEOUT_S = 2.0
"""Longest :meth:`BusFanout.caught_up` waits for the view to reach the streams' ends."""

EntryId = tuple[int, int]
NO_ENTRY: EntryId = (0, 0)
"""Below every stream entry id (``XADD *`` never makes ``0-0``): the mark of an empty stream."""


class BusListenerOverflowError(BusError, BufferError):
    """A listener fell ``limit`` envelopes behind and was cut off; what follows its gap is in the view.

    Attributes:
        listener: The listener's name.
        limit: Its queue's bound.
        missed_stream: Stream of the first envelope it did not get.
        missed_id: That envelope's entry id; the listener got every envelope of its channels before it.
    """

    def __init__(self, message: str, *, listener: str, limit: int, missed_stream: str, missed_id: str) -> None:
        super().__init__(message)
        self.listener = listener
        self.limit = limit
        self.missed_stream = missed_stream
        self.missed_id = missed_id


class _End:
    """The last item of a listener's queue: the listener was closed, or cut off (``error``)."""

    def __init__(self, error: BusListenerOverflowError | None) -> None:
        self.error = error


class Listener:
    """One in-process consumer of a :class:`BusFanout`: the envelopes of its channels, in stream order.

    Read it with ``async for envelope in listener``; the loop ends when the listener or its
    fan-out is closed (after what was queued), or raises :class:`BusListenerOverflowError` after
    the last envelope it got if it fell behind. Made by :meth:`BusFanout.listen`.
    """

    def __init__(self, fanout: BusFanout, channels: frozenset[Channel], limit: int, name: str) -> None:
        self.name = name
        self.channels = channels
        self.limit = limit
        # Unbounded as an asyncio.Queue, bounded by offer(): the end mark must always fit behind a full queue.
        self._queue: asyncio.Queue[Envelope | _End] = asyncio.Queue()
        self._fanout = fanout
        self._ended = False
        self.overflowed = False
        """True once the listener was cut off for falling behind."""

    def offer(self, envelope: Envelope) -> None:
        """Queue one envelope without waiting; a full queue cuts the listener off instead."""
        if self._ended:
            return
        if self._queue.qsize() >= self.limit:
            self.overflowed = True
            logger.warning(
                "listener %s of %s fell %d envelopes behind; cut off at %s", self.name, self._fanout.group,
                self.limit, envelope.id,
            )  # fmt: skip
            error = BusListenerOverflowError(
                f"listener {self.name!r} fell {self.limit} envelopes behind and missed {envelope.stream} "
                f"{envelope.id} onwards; re-read the fan-out's view and listen again",
                listener=self.name,
                limit=self.limit,
                missed_stream=envelope.stream,
                missed_id=envelope.id,
            )
            self.end(error)
            return
        self._queue.put_nowait(envelope)

    def end(self, error: BusListenerOverflowError | None = None) -> None:
        """No more envelopes: reading ends after the queued ones (with ``error`` raised, if given)."""
        if self._ended:
            return
        self._ended = True
        self._fanout.remove(self)
        self._queue.put_nowait(_End(error))

    def close(self) -> None:
        """Stop listening now; envelopes still queued are dropped (the consumer asked for no more)."""
        while not self._queue.empty():
            self._queue.get_nowait()
        self._ended = True
        self._fanout.remove(self)
        self._queue.put_nowait(_End(None))

    def __aiter__(self) -> AsyncIterator[Envelope]:
        return self

    async def __anext__(self) -> Envelope:
        item = await self._queue.get()
        if isinstance(item, _End):
            self._queue.put_nowait(item)  # every later read ends the same way
            if item.error is not None:
                raise item.error
            raise StopAsyncIteration
        return item


class BusFanout:
    """Reads some channels of one build once, keeps the unified context live and feeds in-process listeners.

    Args:
        bus: The bus (its URL, config, codec and client; the subscription opens its own connection).
        build_id: The build.
        group: Consumer group, one per host (and build: the keys are the build's); also the consumer's name.
        channels: Channels to read; the view is reduced from ``context``, ``file-change`` and ``errors``.
        fence_timeout_s: Longest wait of :meth:`caught_up`.

    The constructor does no I/O; :meth:`start` does. One start per fan-out: after :meth:`stop`, make a new one.
    """

    def __init__(
        self,
        bus: ContextBus,
        build_id: str,
        *,
        group: str,
        channels: Sequence[Channel] = VIEW_CHANNELS,
        fence_timeout_s: float = FENCE_TIMEOUT_S,
    ) -> None:
        if not channels:
            raise InvalidInputError("fan out at least one channel", field="channels")
        self.bus = bus
        self.build_id = build_id
        self.group = group
        self.channels = tuple(channels)
        self.fence_timeout_s = fence_timeout_s
        self.keys = bus.keys(build_id)
        self._streams = [self.keys.stream(channel) for channel in self.channels]
        self._context: dict[str, ContextValue] = {}
        self._files: dict[str, FileState] = {}
        self._errors: dict[str, KnownError] = {}
        self._marks: dict[str, EntryId] = {}
        """Per stream: the highest entry id that is in the view (the seed's last id at first)."""
        self._stalled: dict[str, EntryId] = {}
        """Per stream: a last id caught_up gave up waiting for (a dead-lettered entry never arrives)."""
        self._seeded = asyncio.Event()
        self._moved = asyncio.Event()
        self._listeners: list[Listener] = []
        self._sub: Subscription | None = None
        self._stopped = False
        self._view: UnifiedContext | None = None
        self.version = 0
        """Bumped whenever the view changes (readers cache what they derive from it)."""
        self.applied = 0
        """Entries that were new to the view (above the seed): each applied once."""

    # --- lifecycle --------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Started, seeded and not stopped."""
        return self._sub is not None and self._seeded.is_set()

    async def start(self, ready_timeout: float = 10.0) -> BusFanout:
        """Subscribe, then seed the view from the hash; returns once the view is seeded.

        Raises:
            BusUnavailableError: Redis did not answer (nothing keeps running; start again later).
            InvalidInputError: The fan-out was started before.
        """
        if self._sub is not None or self._stopped:
            raise InvalidInputError(f"fan-out {self.group} was started before; make a new one", field="group")
        self._sub = Subscription(
            self.bus, self.build_id, self.channels, group=self.group, handler=self._handle, start_id="$"
        )
        try:
            await self._sub.start(ready_timeout)
            await self._seed()
        except BaseException:
            sub, self._sub = self._sub, None
            await sub.stop()
            raise
        return self

    async def stop(self, *, forget: bool = False) -> None:
        """Stop reading; each listener ends after what it has queued.

        Args:
            forget: Also destroy the group and its bookkeeping (the host's hub is gone for good): a group
                nobody reads would hold back trimming. A later fan-out of that group starts afresh, seeded.
        """
        self._stopped = True
        sub, self._sub = self._sub, None
        if sub is not None:
            await sub.stop()
        for listener in tuple(self._listeners):
            listener.end()
        if forget:
            pipe = self.bus.redis.pipeline(transaction=False)
            for stream in self._streams:
                pipe.xgroup_destroy(stream, self.group)
            pipe.delete(self.keys.done(self.group), self.keys.hwm(self.group), self.keys.attempts(self.group))
            try:
                await pipe.execute(raise_on_error=False)
            except REDIS_DOWN as exc:
                logger.warning("fan-out %s: group not destroyed (%s); it holds back trims until it is", self.group, exc)

    async def __aenter__(self) -> BusFanout:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- listeners --------------------------------------------------------------------

    def listen(
        self, channels: Sequence[Channel] | None = None, *, limit: int = LISTENER_LIMIT, name: str = ""
    ) -> Listener:
        """A new listener of ``channels`` (all of the fan-out's by default); it gets what is delivered from now on.

        Raises:
            InvalidInputError: A channel the fan-out does not read, a limit below 1, or a stopped fan-out.
        """
        wanted = frozenset(channels if channels is not None else self.channels)
        unknown = wanted - set(self.channels)
        if unknown or not wanted:
            raise InvalidInputError(f"listen to some of {self.channels}, not {sorted(unknown)}", field="channels")
        if limit < 1:
            raise InvalidInputError("a listener's limit is at least 1", field="limit")
        if self._stopped:
            raise InvalidInputError(f"fan-out {self.group} is stopped", field="group")
        listener = Listener(self, wanted, limit, name or f"listener-{len(self._listeners)}")
        self._listeners.append(listener)
        return listener

    def remove(self, listener: Listener) -> None:
        """Deliver nothing more to ``listener`` (it ended or closed)."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    @property
    def listeners(self) -> int:
        """Listeners still being fed."""
        return len(self._listeners)

    # --- the view ---------------------------------------------------------------------

    @property
    def view(self) -> UnifiedContext:
        """The unified context as this fan-out has it now (empty before :meth:`start`)."""
        if self._view is None:
            self._view = UnifiedContext(context=dict(self._context), files=dict(self._files), errors=dict(self._errors))
        return self._view

    async def caught_up(self, timeout_s: float | None = None) -> bool:
        """Wait until the view holds every entry its streams had when called.

        One round trip reads each stream's last id; the view reaches it a delivery later. Returns
        False, leaving the view as it is, when Redis does not answer or the view does not get there
        within ``timeout_s`` (``fence_timeout_s`` by default); the stream it waited for is not
        waited for again at that id (a dead-lettered last entry never reaches the view).
        """
        pipe = self.bus.redis.pipeline(transaction=False)
        for stream in self._streams:
            pipe.xrevrange(stream, "+", "-", count=1)
        try:
            tails = await pipe.execute()
        except REDIS_DOWN as exc:
            logger.info("fan-out %s: cannot read the streams' ends (%s); the view may trail", self.group, exc)
            return False
        wanted = {stream: _entry_id(rows[0][0]) for stream, rows in zip(self._streams, tails, strict=True) if rows}
        behind = wanted
        try:
            async with asyncio.timeout(self.fence_timeout_s if timeout_s is None else timeout_s):
                while behind := self._behind(wanted):
                    await self._moved.wait()
        except TimeoutError:
            self._stalled.update(behind)
            logger.warning("fan-out %s: the view did not reach %s in time", self.group, sorted(behind))
            return False
        return True

    def _behind(self, wanted: dict[str, EntryId]) -> dict[str, EntryId]:
        if not self._seeded.is_set():
            return wanted
        return {
            stream: last
            for stream, last in wanted.items()
            if self._marks.get(stream, NO_ENTRY) < last and self._stalled.get(stream) != last
        }

    # --- delivery ---------------------------------------------------------------------

    async def _seed(self) -> None:
        """The hash and each stream's last id, in one MULTI: the view starts where they agree."""
        pipe = self.bus.redis.pipeline(transaction=True)
        for stream in self._streams:
            pipe.xrevrange(stream, "+", "-", count=1)
        pipe.hgetall(self.keys.unified)
        try:
            *tails, raw = await pipe.execute()
        except REDIS_DOWN as exc:
            raise BusUnavailableError(f"fan-out {self.group}: cannot read the unified context: {exc}") from exc
        seed = decode_unified(cast("dict[bytes, bytes]", raw))
        self._context, self._files, self._errors = dict(seed.context), dict(seed.files), dict(seed.errors)
        self._marks = {
            stream: _entry_id(rows[0][0]) if rows else NO_ENTRY
            for stream, rows in zip(self._streams, tails, strict=True)
        }
        self._changed()
        self._seeded.set()

    async def _handle(self, envelope: Envelope) -> None:
        """The subscription's handler: the view first (entries above the mark), then every matching listener."""
        await self._seeded.wait()  # entries read before the seed wait for it (the subscription starts first)
        entry = _entry_id(envelope.id)
        if entry > self._marks.get(envelope.stream, NO_ENTRY):
            self._marks[envelope.stream] = entry
            self.applied += 1
            if self._apply(envelope):
                self._changed()
            else:
                self._wake()
        channel = CHANNEL_OF[envelope.message.type]
        for listener in tuple(self._listeners):
            if channel in listener.channels:
                listener.offer(envelope)

    def _apply(self, envelope: Envelope) -> bool:
        """Reduce one message into the view as the publisher reduced it into the hash; True if it is a kind it holds."""
        message, sender, ts = envelope.message, envelope.sender, envelope.ts
        if isinstance(message, ContextUpdate):
            self._context[message.key] = ContextValue(value=message.value, kind=message.kind, sender=sender, ts=ts)
        elif isinstance(message, FileChange):
            if message.sha256 is None:
                self._files.pop(message.path, None)
            else:
                self._files[message.path] = FileState(
                    sha256=message.sha256, sandbox_id=message.sandbox_id, agent=message.agent, ts=ts
                )
        elif isinstance(message, ErrorReport):
            if message.resolved:
                self._errors.pop(message.error_key(), None)
            else:
                self._errors[message.error_key()] = KnownError(
                    source=message.source, message=message.message, file=message.file, line=message.line,
                    sender=sender, ts=ts,
                )  # fmt: skip
        else:
            return False
        return True

    def _changed(self) -> None:
        self._view = None
        self.version += 1
        self._wake()

    def _wake(self) -> None:
        """A mark moved: wake whoever waits in caught_up (each waits on the event of its time)."""
        self._moved.set()
        self._moved = asyncio.Event()


def _entry_id(raw: bytes | str) -> EntryId:
    """A stream entry id as a comparable (ms, seq) pair."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)
