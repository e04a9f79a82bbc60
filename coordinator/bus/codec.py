"""Wire format of bus entries: msgpack bodies, zstd over a size threshold.

An entry has one field, ``d``, holding the body. The body's first byte says how the rest
is encoded, so a reader never guesses:

* ``0x01`` — msgpack of the envelope map,
* ``0x02`` — zstd frame of that msgpack (used when the msgpack is larger than the
  threshold, 4 KiB by default: small entries stay cheap, big diffs and logs shrink);
* bit ``0x80`` set — a copy re-sent after a publish whose outcome was unknown.

The envelope map is ``{"s": sender, "t": ts, "i": mid, "m": message}``. One field and a
one-byte header keep XADD small, which matters for the batched publish path.
Everything that fails to decode raises :class:`BusMalformedEntryError` with a ``reason``,
so the subscriber can dead-letter it and go on.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import msgpack
import zstandard
from pydantic import ValidationError

from coordinator.bus.models import MESSAGE_ADAPTER, Message
from sandbox_agents.errors import BusMalformedEntryError, InvalidInputError

BODY_FIELD = b"d"
"""The single field of an entry that holds the body."""

PLAIN = 0x01
ZSTD = 0x02
RESENT = 0x80
"""Header bit: this body is a re-send after an ambiguous failure; subscribers check it for duplicates."""
DEFAULT_COMPRESS_THRESHOLD = 4096
MAX_DECOMPRESSED = 64 * 1024 * 1024
"""Refuse to inflate a body past this: a corrupt or hostile frame must not eat the host's memory."""

_KNOWN_TYPES = frozenset({"context_update", "file_change", "error_report", "progress", "merge_request", "event"})


@dataclass(frozen=True, slots=True)
class Decoded:
    """A decoded body: the message and its envelope fields."""

    sender: str
    ts: float
    mid: str
    message: Message
    resent: bool = False


def mark_resent(body: bytes) -> bytes:
    """The same body with the re-sent bit set."""
    return bytes((body[0] | RESENT,)) + body[1:]


class BusCodec:
    """Encodes and decodes entry bodies; one instance per bus (zstd contexts are per thread).

    Args:
        compress_threshold: msgpack bodies longer than this many bytes are zstd-compressed.
        level: zstd level; 3 is zstd's default, fast enough to stay off the hot path's profile.
    """

    def __init__(self, compress_threshold: int = DEFAULT_COMPRESS_THRESHOLD, level: int = 3) -> None:
        if compress_threshold < 0:
            raise InvalidInputError("compress_threshold must be >= 0", field="compress_threshold")
        self.compress_threshold = compress_threshold
        self._level = level
        self._local = threading.local()
        self._packb = msgpack.Packer(use_bin_type=True).pack

    def _zstd(self) -> tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor]:
        pair = getattr(self._local, "pair", None)
        if pair is None:
            pair = (zstandard.ZstdCompressor(level=self._level), zstandard.ZstdDecompressor())
            self._local.pair = pair
        return pair

    def encode(self, message: Message, *, sender: str, ts: float, mid: str) -> bytes:
        """Encode one message into an entry body.

        Raises:
            BusMalformedEntryError: the message holds a value msgpack cannot carry
                (reason ``not_serialisable``); refused at publish time, not at the reader.
        """
        return self.encode_dict(message.model_dump(), sender=sender, ts=ts, mid=mid)

    def encode_dict(self, message: dict[str, Any], *, sender: str, ts: float, mid: str) -> bytes:
        """Encode an already-dumped message dict (the batch path dumps once and reuses it)."""
        try:
            packed = self._packb({"s": sender, "t": ts, "i": mid, "m": message})
        except (TypeError, ValueError, OverflowError) as exc:
            raise BusMalformedEntryError(
                f"message is not msgpack-serialisable: {exc}", reason="not_serialisable"
            ) from exc
        if len(packed) > self.compress_threshold:
            return bytes((ZSTD,)) + self._zstd()[0].compress(packed)
        return bytes((PLAIN,)) + packed

    def decode(self, body: bytes) -> Decoded:
        """Decode an entry body.

        Raises:
            BusMalformedEntryError: with ``reason`` naming the step that refused the body.
        """
        if not body:
            raise BusMalformedEntryError("empty body", reason="missing_body")
        header, payload = body[0] & ~RESENT, memoryview(body)[1:]
        if header == ZSTD:
            try:
                if zstandard.frame_content_size(payload) > MAX_DECOMPRESSED:
                    raise BusMalformedEntryError("zstd frame inflates past the size limit", reason="zstd")
                payload = memoryview(self._zstd()[1].decompress(payload, max_output_size=MAX_DECOMPRESSED))
            except zstandard.ZstdError as exc:
                raise BusMalformedEntryError(f"bad zstd frame: {exc}", reason="zstd") from exc
        elif header != PLAIN:
            raise BusMalformedEntryError(f"unknown body header 0x{header:02x}", reason="bad_header")
        try:
            env = msgpack.unpackb(payload, raw=False, strict_map_key=True)
        except Exception as exc:  # msgpack raises several unrelated types (ExtraData, FormatError, ValueError…)
            raise BusMalformedEntryError(f"bad msgpack: {exc}", reason="msgpack") from exc
        if not isinstance(env, dict) or not isinstance(env.get("m"), dict):
            raise BusMalformedEntryError("body is not an envelope map", reason="envelope")
        sender, ts, mid, raw_msg = env.get("s"), env.get("t"), env.get("i"), env["m"]
        if not isinstance(sender, str) or not isinstance(ts, int | float) or not isinstance(mid, str):
            raise BusMalformedEntryError("envelope fields s/t/i missing or mistyped", reason="envelope")
        kind = raw_msg.get("type")
        if kind not in _KNOWN_TYPES:
            raise BusMalformedEntryError(f"unknown message type {kind!r}", reason="unknown_type")
        try:
            message = MESSAGE_ADAPTER.validate_python(raw_msg)
        except ValidationError as exc:
            raise BusMalformedEntryError(f"invalid {kind} fields: {exc}", reason="invalid_fields") from exc
        return Decoded(sender=sender, ts=float(ts), mid=mid, message=message, resent=bool(body[0] & RESENT))

    def decode_fields(self, fields: dict[bytes, bytes]) -> Decoded:
        """Decode a raw stream entry (its field map) as read from Redis."""
        body = fields.get(BODY_FIELD)
        if body is None:
            raise BusMalformedEntryError(f"entry has no {BODY_FIELD!r} field", reason="missing_body")
        return self.decode(body)
