"""Typed messages of the context bus and the build's event log.

Every stream entry carries exactly one of the message kinds below; the kinds form a
tagged union on ``type`` so a subscriber validates an entry in one step and an unknown
kind is refused (and dead-lettered) instead of being half-understood. Each kind travels on
one channel (``CHANNEL_OF``), so a subscriber picks what it hears by channel.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from coordinator.bus.events import EventPayload, parse_event

Channel = Literal["context", "file-change", "errors", "progress", "merge", "events"]
"""The per-build streams: five bus channels and the event log (``events``)."""

CHANNELS: tuple[Channel, ...] = ("context", "file-change", "errors", "progress", "merge", "events")


class _Message(BaseModel):
    """Common base: messages are immutable values and refuse unknown fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ContextUpdate(_Message):
    """A discovery or decision an agent shares with the whole build (latest value per key wins)."""

    type: Literal["context_update"] = "context_update"
    key: str = Field(min_length=1, max_length=512)
    """What the value is about, e.g. ``api.auth.scheme``; the unified context keeps the latest per key."""
    value: Any = None
    """Any msgpack-serialisable value (str, number, bool, None, list, dict)."""
    kind: Literal["discovery", "decision", "note"] = "discovery"
    """Decisions bind other agents; discoveries and notes inform them."""


class FileChange(_Message):
    """A file in a sandbox's workspace was written or deleted."""

    type: Literal["file_change"] = "file_change"
    path: str = Field(min_length=1, max_length=4096)
    """Workspace-relative path."""
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    """Hex digest of the new content; ``None`` means the file was deleted."""
    sandbox_id: str
    """Sandbox whose workspace changed."""
    agent: str = ""
    """Agent that made the change, if an agent did."""


class ErrorReport(_Message):
    """An error seen by an agent or a verifier; ``resolved=True`` retracts an earlier report."""

    type: Literal["error_report"] = "error_report"
    source: str = Field(min_length=1)
    """Who saw it: ``tsc``, ``pytest``, ``agent:sbx-1:0`` …"""
    message: str
    """The error text (compressed on the wire when large)."""
    file: str | None = None
    """File the error points at, if any."""
    line: int | None = Field(default=None, ge=0)
    """Line the error points at, if any."""
    resolved: bool = False
    """True when this report says the error with the same (source, file, line) is gone."""

    def error_key(self) -> str:
        """Identity of the error in the unified context: one entry per (source, file, line)."""
        return f"{self.source}|{self.file or ''}|{'' if self.line is None else self.line}"


PROGRESS_TEXT_MAX = 8192
"""Most characters of a progress line: a status line, not a log (a longer one is refused, and dead-lettered)."""


class Progress(_Message):
    """How far a phase or a task has got; ephemeral, never compacted.

    A team publishes one when a task starts and when it ends (``coordinator/team/progress.py``); the
    build's run relays each into its event log as ``team.progress`` (``BusProgress``).
    """

    type: Literal["progress"] = "progress"
    phase: str = Field(max_length=512)
    """Build phase or task name."""
    message: str = Field(default="", max_length=PROGRESS_TEXT_MAX)
    """Human-readable status line."""
    fraction: float | None = Field(default=None, ge=0.0, le=1.0)
    """Completed share in [0, 1], when known."""
    component: str = Field(default="", max_length=200)
    """The component whose work this is, as its team knows it (a candidate's team: ``{component}.{strategy}``);
    empty when the publisher does not say (older messages)."""
    slot: str = Field(default="", max_length=200)
    """The plan's slot of that work (``web~polished``); empty when the publisher does not say."""


class MergeRequest(_Message):
    """A component's chosen candidate asks to be merged into main; the build's coordinator consumes it.

    Sent on ``merge`` by the component's pipeline and consumed by the run's one consumer group
    (``merge-gate``): a request left unacknowledged by a coordinator that died is delivered to its
    next incarnation. A copy (re-sent on a resume) carries the same ``request_id`` and is merged once.
    """

    type: Literal["merge_request"] = "merge_request"
    component: str = Field(min_length=1)
    """Component of the intent contract being merged."""
    slot: str = Field(min_length=1)
    """The plan's slot holding the candidate (``web`` or ``web~polished``)."""
    sandbox_id: str
    """Sandbox holding the candidate when the request was made."""
    request_id: int = Field(ge=1)
    """The store's pending-merge row of this admission: its identity across re-sends."""
    attempt: int = Field(default=0, ge=0)
    """Admission number of the component (a rejection's fix is admitted again)."""


class Event(_Message):
    """An entry of the build's event log (what SSE clients see): a kind and its payload's fields.

    The kinds and their fields are the typed payloads of ``coordinator/bus/events.py`` (a tagged
    union on ``kind``). Emitters build a payload and publish :meth:`of` it; readers get it back
    typed from :attr:`payload`. On the wire the entry keeps the generic ``kind`` + ``data``
    shape, so an older stream's kinds still decode (as :class:`~coordinator.bus.events.UnknownEvent`).
    """

    type: Literal["event"] = "event"
    kind: str = Field(min_length=1, max_length=128)
    """Event name, e.g. ``merge.accepted``: a kind of ``coordinator.bus.events.EVENT_TYPES``, or one unknown here."""
    data: dict[str, Any] = Field(default_factory=dict)
    """The payload's fields (msgpack-serialisable)."""

    @classmethod
    def of(cls, payload: EventPayload) -> Event:
        """The log entry of a typed payload."""
        return cls(kind=payload.kind, data=payload.data)

    @property
    def payload(self) -> EventPayload:
        """The typed payload of this entry (an ``UnknownEvent`` for a kind this version does not know)."""
        return parse_event(self.kind, self.data)


Message = Annotated[
    ContextUpdate | FileChange | ErrorReport | Progress | MergeRequest | Event,
    Field(discriminator="type"),
]
"""Any bus message, tagged on ``type``."""

MESSAGE_ADAPTER: TypeAdapter[Message] = TypeAdapter(Message)

CHANNEL_OF: dict[str, Channel] = {
    "context_update": "context",
    "file_change": "file-change",
    "error_report": "errors",
    "progress": "progress",
    "merge_request": "merge",
    "event": "events",
}
"""The channel each message kind is published on."""


class Envelope(BaseModel):
    """One delivered stream entry: the message plus where and when it was published."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    """Redis stream entry id (``ms-seq``); also the SSE event id."""
    stream: str
    """Full Redis key of the stream the entry was read from."""
    sender: str
    """Who published it (actor or agent name); empty if anonymous."""
    ts: float
    """Publisher's wall clock at publish time, seconds since the epoch."""
    mid: str
    """Publisher-assigned message id; equal on a re-sent copy, so duplicates can be recognised."""
    message: Message
    """The payload."""


class DeadLetter(BaseModel):
    """An entry that could not be handled, moved aside with the reason."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    """Entry id in the dead-letter stream."""
    source_stream: str
    """Stream the failed entry came from."""
    source_id: str
    """Its id there."""
    group: str
    """Consumer group that gave up on it."""
    consumer: str
    """Consumer that gave up on it."""
    reason: Literal["decode", "handler"]
    """``decode``: the entry is malformed; ``handler``: the handler failed ``attempts`` times."""
    error: str
    """The decode error or the handler's last exception."""
    attempts: int
    """Deliveries made before giving up (0 for decode failures)."""
    raw: dict[str, bytes]
    """The original entry's fields, byte for byte."""


class FileState(BaseModel):
    """Latest known state of one file in the unified context."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sha256: str
    sandbox_id: str
    agent: str
    ts: float


class ContextValue(BaseModel):
    """Latest value of one context key in the unified context."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    value: Any
    kind: Literal["discovery", "decision", "note"]
    sender: str
    ts: float


class KnownError(BaseModel):
    """An unresolved error in the unified context."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str
    message: str
    file: str | None
    line: int | None
    sender: str
    ts: float


class UnifiedContext(BaseModel):
    """The compacted snapshot of a build: latest value per key, file hashes and open errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    context: dict[str, ContextValue] = Field(default_factory=dict)
    files: dict[str, FileState] = Field(default_factory=dict)
    errors: dict[str, KnownError] = Field(default_factory=dict)
