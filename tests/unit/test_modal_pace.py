"""The fleet's pace of Modal creates: the token bucket on a fake clock, and the backend taking its turns."""

from __future__ import annotations

from pathlib import Path

import pytest

from actors.modal_pace import fleet_pace
from coordinator.clock import FakeClock
from sandbox_agents.backends.base import SandboxSpec, SandboxStatus
from sandbox_agents.backends.config import LocalBackendConfig, ModalBackendConfig
from sandbox_agents.backends.modal.backend import ModalBackend
from sandbox_agents.backends.modal.pace import TokenBucket
from sandbox_agents.errors import InvalidInputError
from sandbox_agents.settings import Settings
from tests.fakes.fake_modal import FakeModal, exception


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(auto_advance=True)


# --- the bucket ---------------------------------------------------------------------------


def test_a_full_bucket_grants_its_burst_at_once_then_one_create_per_interval(clock: FakeClock) -> None:
    bucket = TokenBucket(2.0, 3, monotonic=clock.monotonic)
    assert [bucket.reserve() for _ in range(7)] == [0.0, 0.0, 0.0, 0.5, 1.0, 1.5, 2.0]
    assert bucket.backlog_s() == 2.0
    assert [(g.asked_at, g.start_at) for g in bucket.grants()] == [
        (0.0, 0.0),
        (0.0, 0.0),
        (0.0, 0.0),
        (0.0, 0.5),
        (0.0, 1.0),
        (0.0, 1.5),
        (0.0, 2.0),
    ]


def test_tokens_come_back_at_the_rate_and_never_past_the_burst(clock: FakeClock) -> None:
    bucket = TokenBucket(2.0, 3, monotonic=clock.monotonic)
    assert [bucket.reserve() for _ in range(3)] == [0.0, 0.0, 0.0]
    clock.advance(1.0)  # two tokens back
    assert [bucket.reserve() for _ in range(3)] == [0.0, 0.0, 0.5]
    clock.advance(100.0)  # long quiet: full again, and no fuller
    assert [bucket.reserve() for _ in range(4)] == [0.0, 0.0, 0.0, 0.5]


def test_a_debt_is_repaid_while_time_passes(clock: FakeClock) -> None:
    bucket = TokenBucket(1.0, 1, monotonic=clock.monotonic)
    assert [bucket.reserve() for _ in range(4)] == [0.0, 1.0, 2.0, 3.0]
    clock.advance(2.5)
    assert bucket.backlog_s() == 0.5
    assert bucket.reserve() == 1.5  # after the three not yet due
    assert bucket.grants()[-1].start_at == 4.0 and bucket.grants()[-1].wait_s == 1.5


def test_a_rate_change_applies_from_then_on_and_repays_the_debt_at_the_new_rate(clock: FakeClock) -> None:
    bucket = TokenBucket(1.0, 1, monotonic=clock.monotonic)
    assert [bucket.reserve(), bucket.reserve()] == [0.0, 1.0]
    clock.advance(0.5)  # half the debt repaid at the old rate
    bucket.configure(4.0, 1)
    assert bucket.rate == 4.0
    assert bucket.reserve() == 0.375  # a debt of 1.5 tokens at 4/s
    assert bucket.reserve() == 0.625


def test_a_smaller_burst_caps_the_tokens_held(clock: FakeClock) -> None:
    bucket = TokenBucket(1.0, 10, monotonic=clock.monotonic)
    bucket.configure(1.0, 2)
    assert [bucket.reserve() for _ in range(3)] == [0.0, 0.0, 1.0]


def test_a_rate_of_zero_grants_every_create_at_once(clock: FakeClock) -> None:
    bucket = TokenBucket(0.0, 1, monotonic=clock.monotonic)
    assert {bucket.reserve() for _ in range(100)} == {0.0} and bucket.backlog_s() == 0.0
    bucket.configure(1.0, 2)  # switched on: it starts full
    assert [bucket.reserve() for _ in range(3)] == [0.0, 0.0, 1.0]


@pytest.mark.parametrize(("rate", "burst"), [(-1.0, 1), (float("inf"), 1), (float("nan"), 1), (1.0, 0)])
def test_a_bucket_refuses_a_negative_or_infinite_rate_and_an_empty_burst(rate: float, burst: int) -> None:
    with pytest.raises(InvalidInputError):
        TokenBucket(rate, burst)
    with pytest.raises(InvalidInputError):
        TokenBucket(1.0, 1).configure(rate, burst)


# --- who gets a pace --------------------------------------------------------------------------


def test_only_a_modal_backend_with_a_rate_gets_the_fleet_pace() -> None:
    assert fleet_pace(ModalBackendConfig()) is not None  # 4/s by default
    assert fleet_pace(ModalBackendConfig(fleet_creates_per_s=0)) is None
    assert fleet_pace(LocalBackendConfig()) is None


# --- the backend takes a turn before every attempt ---------------------------------------------


def paced_backend(tmp_path: Path, clock: FakeClock, bucket: TokenBucket, **config: float) -> ModalBackend:
    """A backend over the fake whose pace is ``bucket`` and whose waits are on ``clock`` (jitter at its middle)."""

    async def pace() -> float:
        return bucket.reserve()

    settings = Settings(modal_token_id="fake-token-id", modal_token_secret="fake-token-secret", modal_workspace=None)
    return ModalBackend(
        ModalBackendConfig(connect_timeout_s=5.0, create_retry_first_s=1, create_retry_max_s=4, **config),
        sdk=FakeModal(tmp_path),
        settings=settings,
        sleep=clock.sleep,
        monotonic=clock.monotonic,
        rng=lambda: 0.5,  # each back-off is 3/4 of its ceiling
        pace=pace,
    )


async def test_every_create_attempt_a_refused_one_too_waits_its_turn_of_the_fleet_pace(
    tmp_path: Path, clock: FakeClock
) -> None:
    bucket = TokenBucket(1.0, 1, monotonic=clock.monotonic)
    backend = paced_backend(tmp_path, clock, bucket)
    sdk = backend.sdk
    sdk.inject("Sandbox.create", exception.ResourceExhaustedError("rate limit exceeded"), times=2)
    sandbox = await backend.create(SandboxSpec())
    try:
        assert len(sdk.calls_of("Sandbox.create")) == 3 and len(bucket.grants()) == 3
        # turn 0 s, refused: back-off 0.75; turn 0.25 s (the token of 0 s is 0.75 s old), refused: back-off 1.5;
        # the third token is there by then
        assert clock.sleeps == [0.75, 0.25, 1.5]
        assert await sandbox.status() is SandboxStatus.RUNNING
    finally:
        sdk.end_all()


async def test_the_fleet_queue_does_not_count_against_the_create_retry_bound(tmp_path: Path, clock: FakeClock) -> None:
    bucket = TokenBucket(0.01, 1, monotonic=clock.monotonic)  # one create per 100 s
    for _ in range(5):
        bucket.reserve()  # others are queued for the next 400 s
    backend = paced_backend(tmp_path, clock, bucket, create_retry_s=10)
    sdk = backend.sdk
    sdk.inject("Sandbox.create", exception.ResourceExhaustedError("rate limit exceeded"), times=2)
    sandbox = await backend.create(SandboxSpec())
    try:
        assert len(sdk.calls_of("Sandbox.create")) == 3
        assert sum(clock.sleeps) > 600 and [s for s in clock.sleeps if s < 10] == [0.75, 1.5]  # back-offs < 10 s
        assert await sandbox.status() is SandboxStatus.RUNNING
    finally:
        sdk.end_all()
