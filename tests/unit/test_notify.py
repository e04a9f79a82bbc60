"""Webhook notifications: retries with backoff on the fake clock, giving up, and the signature header.

``httpx.MockTransport`` is the HTTP boundary here (unit tests only).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import Callable

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
from coordinator.clock import FakeClock
from coordinator.store.schema import BuildSession, SessionStatus

URL = "https://hooks.example.test/kriptik"


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
    assert request.method == "POST" and str(request.url) == URL
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
