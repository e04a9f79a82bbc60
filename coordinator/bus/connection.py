"""How the bus talks to Redis: its tuning, its client and its reconnection backoff.

The publisher (:mod:`coordinator.bus.context_bus`) and the subscriber
(:mod:`coordinator.bus.subscription`) both build their clients here, recognise an outage by
:data:`REDIS_DOWN` and wait between attempts with :func:`backoff_delays`; keeping these in a
module of their own lets neither of the two import the other for them.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from pydantic import BaseModel, ConfigDict, Field
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)
"""What "Redis is unreachable" looks like from redis-py (BusyLoadingError is a ConnectionError)."""


class BusConfig(BaseModel):
    """Tuning of the bus; defaults suit a build of tens of sandboxes on one head node."""

    model_config = ConfigDict(extra="forbid")

    prefix: str = "kriptik"
    """Prefix of every key (``REDIS_SANDBOX_PREFIX``)."""
    max_deliveries: int = Field(default=3, ge=1)
    """Deliveries of one entry to one group before it goes to the dead letters."""
    buffer_limit: int = Field(default=10_000, ge=1)
    """Messages a publisher holds in memory while Redis is down; past it, publish raises."""
    compress_threshold: int = Field(default=4096, ge=0)
    """Bodies whose msgpack exceeds this many bytes are zstd-compressed."""
    retention_max_len: int = Field(default=100_000, ge=1)
    """Entries kept per stream; older ones are trimmed once no group needs them."""
    trim_every: int = Field(default=1_000, ge=1)
    """Publishes to a stream (per publisher) between two trims of it."""
    dedupe_window: int = Field(default=100_000, ge=1)
    """Handled entry ids (and message ids) remembered per group to refuse duplicates."""
    dead_max_len: int = Field(default=10_000, ge=1)
    """Approximate cap of the dead-letter stream."""
    read_count: int = Field(default=100, ge=1)
    """Entries fetched per XREADGROUP."""
    block_ms: int = Field(default=1_000, ge=1)
    """How long one XREADGROUP waits for new entries."""
    retry_delay_s: float = Field(default=0.05, ge=0)
    """First pause between two deliveries of a failing entry (doubles each time)."""
    backoff_base_s: float = Field(default=0.05, gt=0)
    """First pause after Redis was found unreachable (doubles up to ``backoff_max_s``)."""
    backoff_max_s: float = Field(default=2.0, gt=0)
    """Longest pause between two reconnection attempts."""
    socket_timeout_s: float = Field(default=5.0, gt=0)
    """Timeout of one Redis command (blocking reads add ``block_ms``)."""
    flush_batch: int = Field(default=1_000, ge=1)
    """Buffered messages sent per pipeline when flushing after an outage."""


def make_client(url: str, config: BusConfig, *, extra_timeout_s: float = 0.0) -> Redis:
    """A redis.asyncio client that fails fast: one immediate retry, then the bus's own backoff."""
    return Redis.from_url(
        url,
        retry=Retry(NoBackoff(), 1),
        socket_timeout=config.socket_timeout_s + extra_timeout_s,
        socket_connect_timeout=min(config.socket_timeout_s, 2.0),
        health_check_interval=0,
    )


def backoff_delays(config: BusConfig) -> Iterator[float]:
    """Exponential backoff with jitter, capped; an endless iterator."""
    delay = config.backoff_base_s
    while True:
        yield delay * random.uniform(0.75, 1.25)
        delay = min(delay * 2, config.backoff_max_s)
