"""The context bus on a real redis-server: order, replay, restarts, dead letters, buffering.

Run with ``-p tests.integration.conftest_bus`` (or register it in ``pytest_plugins``).
Waits poll with a bound; nothing sleeps to wait for state.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import msgpack
import pytest

from coordinator.bus.codec import BODY_FIELD, PLAIN, ZSTD, mark_resent
from coordinator.bus.context_bus import ContextBus
from coordinator.bus.models import ContextUpdate, Envelope, ErrorReport, FileChange, Progress
from coordinator.bus.redis_server import ManagedRedis
from sandbox_agents.errors import BusBufferFullError, BusUnavailableError
from tests.integration.conftest_bus import fast_config

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[2]


async def until(condition: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


def progress(i: int) -> Progress:
    return Progress(phase="build", message=str(i))


class Recorder:
    """A handler that records envelopes, optionally failing on some messages."""

    def __init__(self, fail: Callable[[Envelope], bool] = lambda env: False) -> None:
        self.seen: list[Envelope] = []
        self.calls = 0
        self.fail = fail

    async def __call__(self, env: Envelope) -> None:
        self.calls += 1
        if self.fail(env):
            raise RuntimeError(f"refusing {env.message}")
        self.seen.append(env)

    def texts(self) -> list[str]:
        return [env.message.message for env in self.seen]  # type: ignore[union-attr]


async def test_order_per_stream_and_every_group_sees_everything(bus: ContextBus, build_id: str) -> None:
    a, b = Recorder(), Recorder()
    sub_a = await bus.subscribe(build_id, ["progress"], group="sbx-a", handler=a).start()
    sub_b = await bus.subscribe(build_id, ["progress"], group="sbx-b", handler=b).start()
    ids = await bus.publish_many(build_id, [progress(i) for i in range(150)])
    for i in range(150, 200):
        ids.append(await bus.publish(build_id, progress(i)))
    expected = [str(i) for i in range(200)]
    await until(lambda: len(a.seen) == 200 and len(b.seen) == 200, what="both groups to see 200 entries")
    assert a.texts() == expected and b.texts() == expected
    assert [env.id for env in a.seen] == ids
    await sub_a.stop()  # stop() sends the acknowledgement still riding on the next read
    await sub_b.stop()
    assert sub_a.handled == 200 and sub_a.duplicates == 0
    for group in ("sbx-a", "sbx-b"):
        assert (await bus.redis.xpending(bus.keys(build_id).stream("progress"), group))["pending"] == 0


async def test_compression_round_trip_through_redis(bus: ContextBus, build_id: str) -> None:
    rec = Recorder()
    sub = await bus.subscribe(build_id, ["errors"], group="g", handler=rec).start()
    big = ErrorReport(source="pytest", message="E   assert 1 == 2\n" * 1000, file="t.py", line=9)
    small = ErrorReport(source="tsc", message="short")
    rid_big = await bus.publish(build_id, big)
    await bus.publish(build_id, small)
    raw = await bus.redis.xrange(bus.keys(build_id).stream("errors"))
    assert raw[0][0].decode() == rid_big
    assert raw[0][1][BODY_FIELD][0] == ZSTD and raw[1][1][BODY_FIELD][0] == PLAIN
    assert len(raw[0][1][BODY_FIELD]) < 4096
    await until(lambda: len(rec.seen) == 2, what="both error reports")
    assert [env.message for env in rec.seen] == [big, small]
    await sub.stop()


async def test_failing_handler_is_retried_then_dead_lettered_and_the_stream_goes_on(
    bus: ContextBus, build_id: str
) -> None:
    flaky_calls = {"n": 0}

    def fail(env: Envelope) -> bool:
        text = env.message.message  # type: ignore[union-attr]
        if text == "flaky":
            flaky_calls["n"] += 1
            return flaky_calls["n"] < 3  # fails twice, then works
        return text == "poison"

    rec = Recorder(fail)
    sub = await bus.subscribe(build_id, ["progress"], group="g", handler=rec).start()
    await bus.publish_many(build_id, [progress(0), Progress(phase="p", message="poison"), progress(1)])
    await bus.publish_many(build_id, [Progress(phase="p", message="flaky"), progress(2)])
    await until(lambda: len(rec.seen) == 4, what="the four good entries")
    assert rec.texts() == ["0", "1", "flaky", "2"]  # order kept: retries happen in place
    dead = await bus.read_dead(build_id)
    assert len(dead) == 1
    assert dead[0].reason == "handler" and dead[0].attempts == 3 and dead[0].group == "g"
    assert "RuntimeError" in dead[0].error and "poison" in dead[0].error
    body = bus.codec.decode(dead[0].raw["d"])
    assert body.message == Progress(phase="p", message="poison")
    assert sub.dead == 1 and sub.failures == 3 + 2
    pending = await bus.redis.xpending(bus.keys(build_id).stream("progress"), "g")
    assert pending["pending"] == 0
    await sub.stop()


async def test_malformed_entries_are_dead_lettered_and_the_subscriber_continues(bus: ContextBus, build_id: str) -> None:
    rec = Recorder()
    sub = await bus.subscribe(build_id, ["context"], group="g", handler=rec).start()
    stream = bus.keys(build_id).stream("context")
    await bus.redis.xadd(stream, {"foo": "bar"})
    await bus.redis.xadd(stream, {BODY_FIELD: bytes([PLAIN]) + b"\xc1\xc1"})
    envelope = {"s": "x", "t": 1.0, "i": "m", "m": {"type": "launch_missiles"}}
    await bus.redis.xadd(stream, {BODY_FIELD: bytes([PLAIN]) + msgpack.packb(envelope)})
    await bus.redis.xadd(stream, {BODY_FIELD: b"\x09garbage"})
    await bus.publish(build_id, ContextUpdate(key="k", value=1))
    await until(lambda: len(rec.seen) == 1 and sub.dead == 4, what="the good entry and four dead letters")
    dead = await bus.read_dead(build_id)
    assert [d.reason for d in dead] == ["decode"] * 4
    assert [d.error.split(":")[0] for d in dead] == ["missing_body", "msgpack", "unknown_type", "bad_header"]
    assert dead[0].raw == {"foo": b"bar"}
    assert rec.seen[0].message == ContextUpdate(key="k", value=1)
    await sub.stop()


async def test_a_group_never_handles_the_same_entry_or_message_twice(bus: ContextBus, build_id: str) -> None:
    rec = Recorder()
    sub = await bus.subscribe(build_id, ["progress"], group="g", handler=rec).start()
    await bus.publish_many(build_id, [progress(i) for i in range(5)])
    await until(lambda: len(rec.seen) == 5, what="five entries")
    stream = bus.keys(build_id).stream("progress")
    # A publisher that re-sends after an ambiguous failure: same message id, new entry id. Our publisher
    # flags such copies as re-sent (mark_resent), which is what makes the subscriber check them.
    first = (await bus.redis.xrange(stream, count=1))[0]
    await bus.redis.xadd(stream, {BODY_FIELD: mark_resent(first[1][BODY_FIELD])})
    # The group is rewound (an operator's XGROUP SETID): every old id comes back.
    await sub.stop()
    await bus.redis.xgroup_setid(stream, "g", "0")
    sub = await bus.subscribe(build_id, ["progress"], group="g", handler=rec).start()
    await bus.publish(build_id, progress(5))
    await until(lambda: len(rec.seen) == 6, what="the one new entry")
    assert rec.texts() == [str(i) for i in range(6)]
    # the five old entries and the copy (which may count twice: once replayed from the PEL)
    await until(lambda: sub.duplicates >= 6, what="six skipped duplicates")
    await sub.stop()


async def test_an_acknowledgement_redis_refused_is_noticed_when_idle_and_settled_without_handling_twice(
    bus: ContextBus, build_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from coordinator.bus import scripts as bus_scripts

    rec = Recorder()
    sub = await bus.subscribe(build_id, ["progress"], group="g", handler=rec).start()
    stream = bus.keys(build_id).stream("progress")
    # The acknowledgement sent with the next read gets no reply (CLIENT REPLY SKIP): make Redis refuse it.
    monkeypatch.setattr(bus_scripts, "SETTLE", "return redis.error_reply('refused')")
    await bus.publish(build_id, progress(0))
    await until(lambda: sub.idle_checks >= 1, what="the idle check")
    monkeypatch.undo()
    # the replay settled it with a round trip, without handing it to the handler again
    deadline = time.monotonic() + 20
    while (await bus.redis.xpending(stream, "g"))["pending"]:
        assert time.monotonic() < deadline, "the replayed entry stayed pending"
        await asyncio.sleep(0.01)
    await bus.publish(build_id, progress(1))
    await until(lambda: len(rec.seen) == 2, what="the next entry")
    checks = sub.idle_checks
    await until(lambda: sub.idle_checks > checks, what="an idle check after the next entry")
    assert rec.texts() == ["0", "1"]  # each handled once
    assert (await bus.redis.xpending(stream, "g"))["pending"] == 0
    await sub.stop()


async def test_unified_context_keeps_the_latest_value_per_key(bus: ContextBus, build_id: str) -> None:
    await bus.publish(build_id, ContextUpdate(key="db", value="sqlite", kind="discovery"))
    await bus.publish_many(
        build_id,
        [
            ContextUpdate(key="db", value="postgres", kind="decision"),
            ContextUpdate(key="port", value=5173),
            FileChange(path="a.py", sha256="1" * 64, sandbox_id="s1", agent="a0"),
            FileChange(path="a.py", sha256="2" * 64, sandbox_id="s2", agent="a1"),
            FileChange(path="gone.py", sha256="3" * 64, sandbox_id="s1"),
            ErrorReport(source="tsc", message="TS1", file="x.ts", line=1),
            ErrorReport(source="tsc", message="TS2", file="y.ts", line=2),
            Progress(phase="ignored"),
        ],
        sender="agent-7",
    )
    await bus.publish_many(
        build_id,
        [
            FileChange(path="gone.py", sha256=None, sandbox_id="s1"),
            ErrorReport(source="tsc", message="", file="x.ts", line=1, resolved=True),
        ],
    )
    ctx = await bus.unified_context(build_id)
    assert ctx.context["db"].value == "postgres" and ctx.context["db"].kind == "decision"
    assert ctx.context["db"].sender == "agent-7" and ctx.context["port"].value == 5173
    assert set(ctx.files) == {"a.py"} and ctx.files["a.py"].sha256 == "2" * 64 and ctx.files["a.py"].agent == "a1"
    assert list(ctx.errors) == ["tsc|y.ts|2"] and ctx.errors["tsc|y.ts|2"].message == "TS2"


async def test_read_events_resumes_after_last_event_id(bus: ContextBus, build_id: str) -> None:
    ids = [await bus.publish_event(build_id, "step", {"n": i}) for i in range(5)]
    everything = await bus.read_events(build_id)
    assert [rid for rid, _ in everything] == ids
    after = await bus.read_events(build_id, after_id=ids[1], count=2)
    assert [env.message.data["n"] for _, env in after] == [2, 3]  # type: ignore[union-attr]
    assert await bus.read_events(build_id, after_id=ids[-1]) == []
    waiter = asyncio.create_task(bus.read_events(build_id, after_id=ids[-1], block_ms=10_000))
    new_id = await bus.publish_event(build_id, "late")
    got = await asyncio.wait_for(waiter, 15)
    assert [rid for rid, _ in got] == [new_id]


async def test_trim_keeps_everything_a_group_still_needs(redis_server: ManagedRedis, build_id: str) -> None:
    bus = ContextBus(redis_server.url, fast_config(retention_max_len=10, trim_every=10**9))
    stream = bus.keys(build_id).stream("merge")
    try:
        await bus.redis.xgroup_create(stream, "slow", id="0", mkstream=True)
        ids = await bus.publish_many(build_id, [_merge(i) for i in range(50)])
        assert await bus.trim(build_id) == 0  # the group has read nothing yet
        got = await bus.redis.xreadgroup("slow", "c", {stream: ">"}, count=30)
        assert len(got[0][1]) == 30
        await bus.redis.xack(stream, "slow", *ids[:20])
        assert await bus.trim(build_id) == 20  # the oldest pending entry (#20) bounds the trim
        assert (await bus.redis.xrange(stream, count=1))[0][0].decode() == ids[20]
        await bus.redis.xack(stream, "slow", *ids[20:30])
        assert await bus.trim(build_id) == 10  # now the first unread entry (#30) bounds it
        assert await bus.redis.xlen(stream) == 20
    finally:
        await bus.delete_build(build_id)
        await bus.aclose()


def _merge(i: int):
    from coordinator.bus.models import MergeRequest

    return MergeRequest(component=f"c{i}", slot=f"c{i}", sandbox_id="s", request_id=i + 1)


CHILD = """
import asyncio, sys
from coordinator.bus.context_bus import BusConfig, ContextBus

url, build_id, out_path = sys.argv[1:4]

async def main():
    bus = ContextBus(url, BusConfig(prefix="test", block_ms=200))
    out = open(out_path, "a", buffering=1)

    async def handler(env):
        out.write(env.id + "\\n")
        await asyncio.sleep(0.002)  # a slow handler, so the kill lands mid-stream

    await bus.subscribe(build_id, ["progress"], group="g", consumer="c1", handler=handler).start()
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_replay_after_subscriber_process_is_sigkilled(bus: ContextBus, build_id: str, tmp_path: Path) -> None:
    all_ids = await bus.publish_many(build_id, [progress(i) for i in range(400)])
    out = tmp_path / "child.txt"
    out.touch()
    child = subprocess.Popen([sys.executable, "-c", CHILD, bus.url, build_id, str(out)], cwd=REPO)
    try:
        await until(lambda: len(out.read_text().split()) >= 60, timeout=30, what="the child to handle 60 entries")
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    child_handled = out.read_text().split()
    assert len(child_handled) < len(all_ids), "the child finished before the kill; nothing to replay"
    done = await bus.redis.zrange(bus.keys(build_id).done("g"), 0, -1)
    acked = {m.decode().split("/", 1)[1] for m in done if m.startswith(b"progress/")}
    assert acked <= set(child_handled)
    assert len(set(child_handled) - acked) <= 1  # at most the entry in flight when killed

    rec = Recorder()
    sub = await bus.subscribe(build_id, ["progress"], group="g", consumer="c1", handler=rec).start()
    await until(lambda: len(acked) + len(rec.seen) >= len(all_ids), what="the new subscriber to catch up")
    new_ids = [env.id for env in rec.seen]
    assert len(new_ids) == len(set(new_ids))  # no duplicates
    assert not acked & set(new_ids)  # nothing acked is handled again
    assert acked | set(new_ids) == set(all_ids)  # nothing lost
    assert new_ids == sorted(new_ids, key=all_ids.index)  # replayed in stream order
    await sub.stop()


async def test_redis_restart_mid_stream_loses_nothing(tmp_path: Path, build_id: str) -> None:
    server = ManagedRedis(tmp_path / "redis")
    await server.astart()
    # Paced (≤ 1 message a millisecond) and with room to buffer a minute of it: a restart that is
    # slow under load must not fill the buffer (unpaced, 10 000 messages filled the default limit).
    bus = ContextBus(server.url, fast_config(buffer_limit=100_000))
    try:
        rec = Recorder()
        sub = await bus.subscribe(build_id, ["progress"], group="g", handler=rec).start()
        await bus.publish_many(build_id, [progress(i) for i in range(100)])
        restart = asyncio.create_task(asyncio.to_thread(server.restart))
        i = 100
        while not restart.done() or i < 200:  # keep publishing while Redis goes down and comes back
            await bus.publish(build_id, progress(i))
            i += 1
            await asyncio.sleep(0.001)
        await restart
        await bus.flush(20)
        await until(lambda: len(rec.seen) >= i, what=f"all {i} entries after the restart")
        assert rec.texts() == [str(n) for n in range(i)]  # in order, no gaps, no duplicates
        assert await bus.redis.xlen(bus.keys(build_id).stream("progress")) >= i
        await sub.stop()
    finally:
        await bus.aclose(flush_timeout=1)
        server.stop()


async def test_publisher_buffers_while_redis_is_down_and_flushes_in_order(tmp_path: Path, build_id: str) -> None:
    server = ManagedRedis(tmp_path / "redis")
    await server.astart()
    bus = ContextBus(server.url, fast_config(buffer_limit=5))
    stream = bus.keys(build_id).stream("progress")
    try:
        await bus.publish(build_id, progress(0))
        server.stop()
        for i in range(1, 5):
            assert await bus.publish(build_id, progress(i)) is None
        assert await bus.publish_many(build_id, [progress(5)]) is None
        assert bus.buffered == 5
        with pytest.raises(BusBufferFullError) as info:
            await bus.publish(build_id, progress(6))
        assert isinstance(info.value, BusUnavailableError) and info.value.limit == 5
        assert bus.buffered == 5  # the refused message was not taken, nothing was dropped
        with pytest.raises(BusUnavailableError):
            await bus.flush(timeout=0.2)
        await server.astart()
        await bus.flush(20)
        rows = await bus.redis.xrange(stream)
        assert [bus.codec.decode_fields(f).message.message for _, f in rows] == [str(i) for i in range(6)]
        assert await bus.publish(build_id, progress(6)) is not None
    finally:
        await bus.aclose(flush_timeout=1)
        server.stop()
