"""Webhook notifications: retries with backoff on the fake clock, giving up, the signature header, and the
notifications of a running build's events.

``httpx.MockTransport`` is the HTTP boundary here and a stub resolves the webhook's host (unit tests only:
no name is looked up, no packet is sent).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from coordinator.build.notify import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    Notification,
    WebhookConfig,
    WebhookNotifier,
    sign,
)
from coordinator.build.notify_events import NotifyingEvents
from coordinator.bus.events import BudgetWarning, EventPayload, SlotBlocked
from coordinator.clock import FakeClock
from coordinator.store.schema import BuildSession, SessionStatus
from coordinator.store.store import Store

URL = "https://hooks.example.test/kriptik"
PUBLIC = "93.184.215.14"
"""What the stub resolver answers for the webhook's host (a public address; nothing connects to it)."""


async def stub_resolver(host: str, port: int) -> list[str]:
    assert (host, port) == ("hooks.example.test", 443)
    return [PUBLIC]


class Receiver:
    """Answers each request with the next scripted status (or raises the scripted error)."""

    def __init__(self, *answers: int | Exception | httpx.Response) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if self.answers else 200
        if isinstance(answer, Exception):
            raise answer
        return answer if isinstance(answer, httpx.Response) else httpx.Response(answer)


def _notifier(
    receiver: Callable[[httpx.Request], httpx.Response], clock: FakeClock, **config: object
) -> WebhookNotifier:
    return WebhookNotifier(
        WebhookConfig(url=URL, **config),  # type: ignore[arg-type]
        clock=clock,
        transport=httpx.MockTransport(receiver),
        resolver=stub_resolver,
    )


def _session(status: SessionStatus, error: str | None = None) -> BuildSession:
    return BuildSession(id="b1", user_id="alice", status=status, started_at=1.0, last_activity_at=2.0, error=error)


async def test_completion_is_posted_as_json() -> None:
    receiver, clock = Receiver(204), FakeClock(auto_advance=True)
    async with _notifier(receiver, clock) as notifier:
        result = await notifier.notify_session(_session(SessionStatus.COMPLETED), "a todo app, all criteria hold")
    assert result is not None and result.delivered and result.attempts == 1 and result.status_code == 204
    (request,) = receiver.requests
    body = json.loads(request.content)
    assert request.method == "POST" and request.url.path == "/kriptik"
    # Sent to the address checked, presenting the webhook's name (Host, and TLS's server name).
    assert request.url.host == PUBLIC and request.headers["host"] == "hooks.example.test"
    assert request.extensions["sni_hostname"] == "hooks.example.test"
    assert body["kind"] == "build.completed" and body["build_id"] == "b1" and body["status"] == "completed"
    assert body["summary"] == "a todo app, all criteria hold" and body["user_id"] == "alice"
    assert request.headers["content-type"] == "application/json" and SIGNATURE_HEADER not in request.headers


async def test_error_and_pause_notify_but_running_does_not() -> None:
    receiver, clock = Receiver(), FakeClock(auto_advance=True)
    notifier = _notifier(receiver, clock)
    failed = await notifier.notify_session(_session(SessionStatus.FAILED, error="merge gate: tests fail"))
    paused = await notifier.notify_session(_session(SessionStatus.PAUSED), "budget exhausted")
    assert await notifier.notify_session(_session(SessionStatus.RUNNING)) is None
    await notifier.aclose()
    assert failed is not None and failed.delivered and paused is not None and paused.delivered
    kinds = [json.loads(r.content)["kind"] for r in receiver.requests]
    assert kinds == ["build.failed", "build.paused"]
    assert json.loads(receiver.requests[0].content)["data"]["error"] == "merge gate: tests fail"


async def test_retries_with_exponential_backoff_on_the_clock() -> None:
    receiver = Receiver(503, httpx.ConnectError("refused"), 500, 200)
    clock = FakeClock()
    notifier = _notifier(receiver, clock, backoff_base_s=2.0, max_attempts=5)
    delivery = asyncio.create_task(notifier.notify_session(_session(SessionStatus.COMPLETED)))
    for expected_wait in (2.0, 4.0, 8.0):
        await clock.wait_for_sleepers(1)
        clock.advance(expected_wait - 0.001)
        await asyncio.sleep(0)
        assert clock.sleeping == 1  # not a moment early
        clock.advance(0.001)
    result = await delivery
    await notifier.aclose()
    assert result is not None and result.delivered and result.attempts == 4
    assert clock.sleeps == [2.0, 4.0, 8.0]
    assert len({r.headers[DELIVERY_HEADER] for r in receiver.requests}) == 1  # one delivery id across retries


async def test_retry_after_is_honoured_and_capped() -> None:
    receiver = Receiver(
        httpx.Response(429, headers={"Retry-After": "7"}), httpx.Response(503, headers={"Retry-After": "900"}), 200
    )
    clock = FakeClock(auto_advance=True)
    result = await _notifier(receiver, clock, backoff_max_s=60.0).notify_session(_session(SessionStatus.PAUSED))
    assert result is not None and result.delivered and clock.sleeps == [7.0, 60.0]


async def test_gives_up_after_max_attempts(caplog: pytest.LogCaptureFixture) -> None:
    receiver, clock = Receiver(*[502] * 10), FakeClock(auto_advance=True)
    result = await _notifier(receiver, clock, max_attempts=4, backoff_base_s=1.0, backoff_max_s=3.0).notify_session(
        _session(SessionStatus.FAILED)
    )
    assert result is not None and not result.delivered and result.attempts == 4 and result.status_code == 502
    assert len(receiver.requests) == 4 and clock.sleeps == [1.0, 2.0, 3.0]
    assert "not delivered after 4 attempts" in caplog.text


@pytest.mark.parametrize("status", [400, 401, 404, 410, 422])
async def test_gives_up_at_once_on_a_client_error(status: int) -> None:
    receiver, clock = Receiver(status, 200), FakeClock(auto_advance=True)
    result = await _notifier(receiver, clock).notify_session(_session(SessionStatus.COMPLETED))
    assert result is not None and not result.delivered and result.attempts == 1 and result.status_code == status
    assert len(receiver.requests) == 1 and clock.sleeps == []


@pytest.mark.parametrize("status", [408, 429])
async def test_timeout_and_rate_limit_statuses_are_retried(status: int) -> None:
    receiver, clock = Receiver(status, 200), FakeClock(auto_advance=True)
    result = await _notifier(receiver, clock).notify_session(_session(SessionStatus.COMPLETED))
    assert result is not None and result.delivered and result.attempts == 2


async def test_signature_header_verifies_with_the_secret() -> None:
    receiver, clock = Receiver(), FakeClock(start=1_800_000_000.0, auto_advance=True)
    await _notifier(receiver, clock, secret="s3cret").notify_session(_session(SessionStatus.COMPLETED))
    (request,) = receiver.requests
    header = request.headers[SIGNATURE_HEADER]
    parts = dict(part.split("=", 1) for part in header.split(","))
    assert parts["t"] == "1800000000"
    expected = hmac.new(b"s3cret", b"1800000000." + request.content, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(parts["v1"], expected)
    assert header == sign("s3cret", 1_800_000_000, request.content)
    assert sign("other", 1_800_000_000, request.content) != header


async def test_unconfigured_kind_is_skipped() -> None:
    receiver, clock = Receiver(), FakeClock(auto_advance=True)
    notifier = _notifier(receiver, clock, kinds=frozenset({"build.failed"}))
    result = await notifier.deliver(
        Notification(kind="build.completed", build_id="b1", status="completed", created_at=0)
    )
    assert not result.delivered and result.attempts == 0 and receiver.requests == []


def test_config_refuses_a_non_http_url() -> None:
    with pytest.raises(ValueError):
        WebhookConfig(url="file:///etc/passwd")


async def test_fake_clock_wakes_sleepers_in_deadline_order() -> None:
    clock, woke = FakeClock(), []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append((name, clock.monotonic()))

    tasks = [asyncio.create_task(sleeper(n, s)) for n, s in (("late", 5), ("early", 1), ("tie", 1))]
    await clock.wait_for_sleepers(3)
    assert clock.advance(0.5) == 0
    assert clock.advance(10) == 3
    await asyncio.gather(*tasks)
    assert [name for name, _ in woke] == ["early", "tie", "late"]
    assert clock.now() == 1_700_000_000.0 + 10.5
    with pytest.raises(ValueError):
        clock.advance(-1)


async def test_a_host_resolving_to_a_private_address_is_refused_before_connecting() -> None:
    async def rebinding(host: str, port: int) -> list[str]:
        return [PUBLIC, "10.0.0.7"]  # one private address in the answer is enough

    receiver, clock = Receiver(), FakeClock(auto_advance=True)
    notifier = WebhookNotifier(
        WebhookConfig(url=URL), clock=clock, transport=httpx.MockTransport(receiver), resolver=rebinding
    )
    result = await notifier.notify_session(_session(SessionStatus.COMPLETED))
    assert result is not None and not result.delivered and result.attempts == 1
    assert "10.0.0.7" in (result.error or "") and "private" in (result.error or "")
    assert receiver.requests == [] and clock.sleeps == []  # no connection, and no retry


async def test_a_name_that_does_not_resolve_is_retried() -> None:
    answers: list[list[str] | OSError] = [OSError("temporary failure in name resolution"), [PUBLIC]]

    async def flaky(host: str, port: int) -> list[str]:
        answer = answers.pop(0)
        if isinstance(answer, OSError):
            raise answer
        return answer

    receiver, clock = Receiver(), FakeClock(auto_advance=True)
    notifier = WebhookNotifier(
        WebhookConfig(url=URL), clock=clock, transport=httpx.MockTransport(receiver), resolver=flaky
    )
    result = await notifier.notify_session(_session(SessionStatus.COMPLETED))
    assert result is not None and result.delivered and result.attempts == 2 and len(receiver.requests) == 1


async def test_the_operators_allowance_lets_a_private_destination_through() -> None:
    async def private(host: str, port: int) -> list[str]:
        return ["192.168.1.20"]

    receiver, clock = Receiver(), FakeClock(auto_advance=True)
    config = WebhookConfig(url=URL, allow_private=True)
    notifier = WebhookNotifier(config, clock=clock, transport=httpx.MockTransport(receiver), resolver=private)
    result = await notifier.notify_session(_session(SessionStatus.COMPLETED))
    assert result is not None and result.delivered and receiver.requests[0].url.host == "192.168.1.20"


def test_a_config_refuses_a_loopback_literal_unless_allowed() -> None:
    with pytest.raises(ValueError, match="127.0.0.1 is loopback") as refused:
        WebhookConfig(url="http://127.0.0.1:9000/hook", secret="s3cret")
    assert "s3cret" not in str(refused.value)  # the refusal quotes the URL, not the input
    assert WebhookConfig(url="http://127.0.0.1:9000/hook", allow_private=True).allow_private


# --- notifications while the build runs (NotifyingEvents) -------------------------------------------


class EventLog:
    def __init__(self) -> None:
        self.events: list[EventPayload] = []

    async def emit(self, event: EventPayload) -> str | None:
        self.events.append(event)
        return f"{len(self.events)}-0"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "store.db") as s:
        yield s


async def _delivered(receiver: Receiver, count: int) -> list[dict[str, object]]:
    """The bodies received, once ``count`` have come (the deliveries run in the background; bounded)."""
    for _ in range(1000):
        if len(receiver.requests) >= count:
            break
        await asyncio.sleep(0)
    return [json.loads(request.content) for request in receiver.requests]


async def test_a_budget_warning_reaches_the_log_and_the_user(store: Store) -> None:
    build = store.create_session("alice", "a todo app").id
    store.update_session(build, status=SessionStatus.RUNNING)
    receiver, log = Receiver(), EventLog()
    notifier = _notifier(receiver, FakeClock(auto_advance=True))
    events = NotifyingEvents(log, notifier, store, build)
    warning = BudgetWarning(spent_usd=8.0, budget_usd=10.0, fraction=0.8).for_build(build)
    assert await events.emit(warning) == "1-0"
    [body] = await _delivered(receiver, 1)
    assert log.events == [warning]
    assert body["kind"] == "build.budget_warning" and body["build_id"] == build and body["user_id"] == "alice"
    assert body["status"] == "running" and body["data"] == warning.data
    assert "$8.00 of $10.00" in str(body["summary"])


async def test_blocked_components_notify_only_users_who_asked(store: Store) -> None:
    build = store.create_session("alice", "a todo app").id
    blocked = SlotBlocked(slot="api", done=["t1"], blocked={"t2": "tests fail"}, attempt=1)
    by_default, asked = Receiver(), Receiver()
    clock = FakeClock(auto_advance=True)
    quiet = NotifyingEvents(EventLog(), _notifier(by_default, clock), store, build)
    told = NotifyingEvents(EventLog(), _notifier(asked, clock, kinds=frozenset({"build.blocked"})), store, build)
    await quiet.emit(blocked)
    await told.emit(blocked)
    await told.emit(BudgetWarning(spent_usd=1.0, budget_usd=2.0, fraction=0.5))  # not asked for
    [body] = await _delivered(asked, 1)
    assert body["kind"] == "build.blocked" and "api is blocked (t2: tests fail)" in str(body["summary"])
    assert by_default.requests == [] and len(asked.requests) == 1
