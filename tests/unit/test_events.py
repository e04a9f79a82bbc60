"""Typed event payloads: one model per kind, the wire shape kept, unknown kinds still readable."""

from __future__ import annotations

import logging
import typing

import pytest
from pydantic import ValidationError

from coordinator.bus.codec import BusCodec
from coordinator.bus.events import (
    EVENT_TYPES,
    BuildErrorEvent,
    KnownEvent,
    MergeAccepted,
    MergeRejected,
    TaskEscalated,
    UnknownEvent,
    parse_event,
)
from coordinator.bus.models import Event


def test_an_event_travels_as_kind_and_data_with_only_the_fields_given() -> None:
    event = Event.of(MergeAccepted(component="db", slot="db", recovered=True).for_build("b1"))
    assert event.model_dump() == {
        "type": "event",
        "kind": "merge.accepted",
        "data": {"build_id": "b1", "component": "db", "slot": "db", "recovered": True},
    }


def test_an_optional_field_given_travels_even_when_it_equals_its_default() -> None:
    rejected = MergeRejected(component="api", slot="api", commit=None, changed=[], reason="2 finding(s)")
    assert rejected.data == {"component": "api", "slot": "api", "commit": None, "changed": [], "reason": "2 finding(s)"}


def test_a_decoded_event_gives_back_its_typed_payload() -> None:
    codec = BusCodec()
    sent = TaskEscalated(component="calc", task="a", level=1, next="a#retry1", reason="exit code 1")
    decoded = codec.decode(codec.encode(Event.of(sent), sender="team", ts=1.0, mid="m1"))
    assert isinstance(decoded.message, Event)
    assert decoded.message.kind == "task.escalated"
    assert decoded.message.payload == sent and isinstance(decoded.message.payload, TaskEscalated)


def test_a_reader_sees_the_meaning_of_a_field_the_emitter_left_out() -> None:
    fatal = parse_event("build.error", {"build_id": "b1", "error": "boom", "phase": "merge"})
    assert isinstance(fatal, BuildErrorEvent) and fatal.fatal and fatal.component is None
    assert fatal.data == {"build_id": "b1", "error": "boom", "phase": "merge"}


def test_an_unknown_kind_from_an_older_stream_decodes_as_an_unknown_event() -> None:
    payload = Event(kind="phase.started", data={"phase": 1, "names": ["a"]}).payload
    assert isinstance(payload, UnknownEvent)
    assert payload.kind == "phase.started" and payload.data == {"phase": 1, "names": ["a"]}
    assert Event.of(payload) == Event(kind="phase.started", data={"phase": 1, "names": ["a"]})


def test_a_known_kind_whose_data_does_not_fit_decodes_as_an_unknown_event(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="coordinator.bus.events"):
        payload = parse_event("merge.accepted", {"component": "db", "slot": "db", "files": 3})
    assert isinstance(payload, UnknownEvent) and payload.data == {"component": "db", "slot": "db", "files": 3}
    assert "merge.accepted" in caplog.text


def test_payloads_refuse_fields_their_kind_does_not_have() -> None:
    with pytest.raises(ValidationError):
        MergeAccepted(component="db", slot="db", files=3)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        TaskEscalated(component="calc", task="a", level=1, next="a#retry1")  # type: ignore[call-arg]


def test_every_kind_has_one_model_and_every_model_refuses_extra_fields() -> None:
    members = typing.get_args(typing.get_args(KnownEvent)[0])
    assert len(EVENT_TYPES) == len(members) == len(set(members))
    for kind, model in EVENT_TYPES.items():
        assert model.model_fields["kind"].default == kind
        assert model.model_config.get("extra") == "forbid"
