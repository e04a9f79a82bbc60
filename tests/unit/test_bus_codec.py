"""Wire format of bus entries: round trips, compression threshold, and every refusal reason."""

from __future__ import annotations

import msgpack
import pytest
import zstandard

from coordinator.bus.codec import BODY_FIELD, PLAIN, ZSTD, BusCodec
from coordinator.bus.models import (
    CHANNEL_OF,
    ContextUpdate,
    ErrorReport,
    Event,
    FileChange,
    MergeRequest,
    Progress,
)
from sandbox_agents.errors import BusDecodeError, BusMalformedEntryError

SAMPLES = [
    ContextUpdate(key="api.auth", value={"scheme": "jwt", "ttl": 3600}, kind="decision"),
    FileChange(path="src/app.py", sha256="a" * 64, sandbox_id="sbx-1", agent="agent-0"),
    FileChange(path="old.py", sha256=None, sandbox_id="sbx-1"),
    ErrorReport(source="tsc", message="TS2304: cannot find name", file="a.ts", line=3),
    Progress(phase="build", message="compiling", fraction=0.5),
    MergeRequest(component="auth", slot="auth~polished", sandbox_id="sbx-2", request_id=7, attempt=1),
    Event(kind="phase.started", data={"phase": 1, "names": ["a", "b"]}),
]


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: m.type)
def test_round_trip_every_kind(message):
    codec = BusCodec()
    body = codec.encode(message, sender="agent-0", ts=12.5, mid="p-1")
    assert body[0] == PLAIN
    decoded = codec.decode_fields({BODY_FIELD: body})
    assert decoded.message == message
    assert (decoded.sender, decoded.ts, decoded.mid) == ("agent-0", 12.5, "p-1")


def test_every_kind_has_a_channel():
    assert {m.type for m in SAMPLES} == set(CHANNEL_OF)


def test_large_body_is_compressed_and_round_trips():
    codec = BusCodec(compress_threshold=4096)
    message = ErrorReport(source="pytest", message="Traceback line\n" * 2000)
    body = codec.encode(message, sender="s", ts=1.0, mid="m")
    assert body[0] == ZSTD
    assert len(body) < 4096  # repetitive logs shrink a lot
    assert codec.decode(body).message == message


def test_body_at_threshold_is_not_compressed():
    codec = BusCodec(compress_threshold=10_000)
    body = codec.encode(Progress(phase="p", message="x" * 5000), sender="s", ts=1.0, mid="m")
    assert body[0] == PLAIN


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "missing_body"),
        (b"\x07abc", "bad_header"),
        (bytes([ZSTD]) + b"not a zstd frame", "zstd"),
        (bytes([PLAIN]) + b"\xc1", "msgpack"),  # 0xc1 is never valid msgpack
        (bytes([PLAIN]) + msgpack.packb([1, 2, 3]), "envelope"),
        (
            bytes([PLAIN]) + msgpack.packb({"s": 1, "t": 1.0, "i": "m", "m": {"type": "progress", "phase": "p"}}),
            "envelope",
        ),
        (bytes([PLAIN]) + msgpack.packb({"s": "x", "t": 1.0, "i": "m", "m": {"type": "nope"}}), "unknown_type"),
        (bytes([PLAIN]) + msgpack.packb({"s": "x", "t": 1.0, "i": "m", "m": {"type": "progress"}}), "invalid_fields"),
        (
            bytes([PLAIN])
            + msgpack.packb({"s": "x", "t": 1.0, "i": "m", "m": {"type": "progress", "phase": "p", "x": 1}}),
            "invalid_fields",
        ),
    ],
)
def test_malformed_bodies_are_refused_with_a_reason(body, reason):
    with pytest.raises(BusMalformedEntryError) as info:
        BusCodec().decode(body)
    assert info.value.reason == reason
    assert isinstance(info.value, BusDecodeError) and isinstance(info.value, ValueError)


def test_entry_without_body_field_is_refused():
    with pytest.raises(BusMalformedEntryError) as info:
        BusCodec().decode_fields({b"foo": b"bar"})
    assert info.value.reason == "missing_body"


def test_decompression_bomb_is_refused():
    bomb = bytes([ZSTD]) + zstandard.ZstdCompressor().compress(b"\x00" * (65 * 1024 * 1024))
    with pytest.raises(BusMalformedEntryError) as info:
        BusCodec().decode(bomb)
    assert info.value.reason == "zstd"


def test_unserialisable_value_is_refused_at_publish_time():
    with pytest.raises(BusMalformedEntryError) as info:
        BusCodec().encode(ContextUpdate(key="k", value={1, 2}), sender="s", ts=1.0, mid="m")
    assert info.value.reason == "not_serialisable"


def test_messages_refuse_unknown_fields_and_bad_values():
    with pytest.raises(ValueError):
        Progress(phase="p", fraction=1.5)
    with pytest.raises(ValueError):
        FileChange(path="a", sha256="xyz", sandbox_id="s")
    with pytest.raises(ValueError):
        Event(kind="k", extra=1)
