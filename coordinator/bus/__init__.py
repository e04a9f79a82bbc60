"""The context bus: a build's channels and event log on Redis Streams (floor 2, no Ray).

Publishers send typed messages (:mod:`.models`) through a :class:`ContextBus`, which buffers
them while Redis is away; subscribers read through consumer groups with a
:class:`Subscription` (at-least-once, duplicates refused, failures dead-lettered). Each kind
of the event log has a typed payload in :mod:`.events`; its base models and
:func:`parse_event` are re-exported here, the fifty-odd kinds stay in that module.
:mod:`.connection` holds what publisher and subscriber share (config, client, backoff),
:mod:`.codec` the wire format (msgpack, zstd over a threshold), :mod:`.scripts` the key layout
and the Lua steps, and :mod:`.redis_server` the managed local ``redis-server`` used when
``REDIS_URL`` is unset. :mod:`.fanout` holds :class:`BusFanout`, one subscription per host and
build that keeps the unified context live in memory and feeds in-process listeners. See docs/bus.md.
"""

from coordinator.bus.codec import BusCodec
from coordinator.bus.connection import REDIS_DOWN, BusConfig
from coordinator.bus.context_bus import ContextBus
from coordinator.bus.events import EVENT_TYPES, EventPayload, KnownEvent, RunEvent, UnknownEvent, parse_event
from coordinator.bus.fanout import BusFanout, BusListenerOverflowError, Listener
from coordinator.bus.models import (
    CHANNEL_OF,
    CHANNELS,
    Channel,
    ContextUpdate,
    ContextValue,
    DeadLetter,
    Envelope,
    ErrorReport,
    Event,
    FileChange,
    FileState,
    KnownError,
    MergeRequest,
    Message,
    Progress,
    UnifiedContext,
)
from coordinator.bus.redis_server import ManagedRedis, RedisStartError, redis_url
from coordinator.bus.scripts import BusKeys
from coordinator.bus.subscription import Handler, Subscription

__all__ = [
    "CHANNELS",
    "CHANNEL_OF",
    "EVENT_TYPES",
    "REDIS_DOWN",
    "BusCodec",
    "BusConfig",
    "BusFanout",
    "BusKeys",
    "BusListenerOverflowError",
    "Channel",
    "ContextBus",
    "ContextUpdate",
    "ContextValue",
    "DeadLetter",
    "Envelope",
    "ErrorReport",
    "Event",
    "EventPayload",
    "FileChange",
    "FileState",
    "Handler",
    "KnownError",
    "KnownEvent",
    "Listener",
    "ManagedRedis",
    "MergeRequest",
    "Message",
    "Progress",
    "RedisStartError",
    "RunEvent",
    "Subscription",
    "UnifiedContext",
    "UnknownEvent",
    "parse_event",
    "redis_url",
]
