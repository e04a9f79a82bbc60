"""The per-host fan-out on a real redis-server: one subscription, a live view, in-process listeners.

Waits poll with a bound or wait on the fan-out's own fence (``caught_up``); nothing sleeps to wait for state.
"""

from __future__ import annotations

import asyncio

import pytest

from coordinator.bus.context_bus import ContextBus
from coordinator.bus.fanout import BusFanout, BusListenerOverflowError, Listener
from coordinator.bus.models import ContextUpdate, Envelope, ErrorReport, FileChange, Message, Progress
from sandbox_agents.errors import InvalidInputError
from tests.integration.conftest_bus import fast_config
from tests.integration.test_bus import until

pytestmark = pytest.mark.timeout(120)

SHA = {n: f"{n:064x}" for n in range(10)}


async def take(listener: Listener, n: int) -> list[Envelope]:
    """The next ``n`` envelopes of ``listener`` (bounded)."""
    return [await asyncio.wait_for(anext(listener), 20) for _ in range(n)]


def mixed(i: int) -> list[Message]:
    """A batch touching every kind the view holds: overwrites, deletions, errors and their resolutions."""
    return [
        ContextUpdate(key=f"k{i % 3}", value={"round": i, "list": [i, str(i)]}, kind="decision" if i % 2 else "note"),
        FileChange(path=f"src/f{i % 4}.py", sha256=SHA[i % 10], sandbox_id="sbx-1", agent="agent:a:0"),
        ErrorReport(source="tsc", message=f"TS{i}", file=f"src/f{i % 4}.py", line=i % 5),
        *([FileChange(path=f"src/f{(i + 1) % 4}.py", sha256=None, sandbox_id="sbx-1")] if i % 3 == 0 else []),
        *(
            [ErrorReport(source="tsc", message="gone", file=f"src/f{i % 4}.py", line=i % 5, resolved=True)]
            if i % 4 == 0
            else []
        ),
        ContextUpdate(key=f"k{i % 3}", value=i, kind="discovery"),  # a second write of one key in one batch
    ]


async def test_every_listener_sees_every_message_of_its_channels_in_stream_order(
    bus: ContextBus, build_id: str
) -> None:
    fanout = await BusFanout(bus, build_id, group="hub-order", channels=["context", "errors", "progress"]).start()
    everything, errors_only = fanout.listen(name="all"), fanout.listen(["errors"], name="errors")
    try:
        ids: list[str] = []
        for i in range(40):
            batch: list[Message] = [ContextUpdate(key=f"k{i}", value=i), Progress(phase="p", message=str(i))]
            batch += [ErrorReport(source="pytest", message=f"e{i}")] if i % 2 else []
            ids += await bus.publish_many(build_id, batch) or []
        streams = {ch: bus.keys(build_id).stream(ch) for ch in ("context", "errors", "progress")}
        in_redis = {ch: [rid.decode() for rid, _ in await bus.redis.xrange(key)] for ch, key in streams.items()}

        got = await take(everything, len(ids))
        for channel, key in streams.items():  # each stream's entries in its order (no order across streams)
            assert [env.id for env in got if env.stream == key] == in_redis[channel]
        assert [env.id for env in await take(errors_only, 20)] == in_redis["errors"]
        assert [env.message.message for env in got if isinstance(env.message, ErrorReport)] == [
            f"e{i}" for i in range(1, 40, 2)
        ]
    finally:
        await fanout.stop()


async def test_a_slow_listener_is_cut_off_without_holding_up_the_others_or_the_view(
    bus: ContextBus, build_id: str
) -> None:
    fanout = await BusFanout(bus, build_id, group="hub-slow").start()
    slow, fast = fanout.listen(limit=5, name="slow"), fanout.listen(name="fast")
    release = asyncio.Event()
    slow_got: list[str] = []

    async def read_one_then_stall() -> None:
        async for env in slow:
            slow_got.append(env.id)
            await release.wait()

    async def read_all(into: list[str]) -> None:
        async for env in fast:
            into.append(env.id)

    fast_got: list[str] = []
    readers = [asyncio.create_task(read_one_then_stall()), asyncio.create_task(read_all(fast_got))]
    try:
        ids = [await bus.publish(build_id, ContextUpdate(key=f"k{i % 7}", value=i)) for i in range(60)]
        await until(lambda: len(fast_got) == 60, what="the fast listener to get all 60")
        assert fast_got == ids and not fast.overflowed
        assert await fanout.caught_up() and fanout.view == await bus.unified_context(build_id)
        assert slow.overflowed and fanout.listeners == 1  # cut off, no longer fed

        release.set()  # the slow one reads what its queue held, then learns where its gap starts
        with pytest.raises(BusListenerOverflowError) as caught:
            await asyncio.wait_for(readers[0], 20)
        assert slow_got == ids[:6]  # the one it was stuck on, then the 5 its queue held
        assert caught.value.missed_id == ids[6] and caught.value.listener == "slow" and caught.value.limit == 5
        assert caught.value.missed_stream == bus.keys(build_id).stream("context")
    finally:
        release.set()
        await fanout.stop()
        await asyncio.gather(*readers, return_exceptions=True)


async def test_the_view_equals_the_compacted_hash_after_a_mixed_stream(bus: ContextBus, build_id: str) -> None:
    other = ContextBus(bus.url, fast_config(), sender="agent:b:0")
    try:
        for i in range(10):  # history from before the fan-out existed: the seed carries it
            await bus.publish_many(build_id, mixed(i))
        fanout = await BusFanout(bus, build_id, group="hub-mixed").start()
        assert fanout.view == await bus.unified_context(build_id)
        for i in range(10, 60):  # two publishers, batches and single messages interleaved
            if i % 5 == 0:
                for message in mixed(i):
                    await other.publish(build_id, message)
            else:
                await (other if i % 2 else bus).publish_many(build_id, mixed(i))
        assert await fanout.caught_up()
        view, hashed = fanout.view, await bus.unified_context(build_id)
        assert view == hashed
        assert view.files and view.errors and view.context  # the stream left something of each kind
        assert {e.sender for e in view.errors.values()} == {"test", "agent:b:0"}
        assert fanout.applied > 0
        await fanout.stop()
    finally:
        await other.aclose()


async def test_replayed_pending_entries_below_the_seed_never_touch_the_view(bus: ContextBus, build_id: str) -> None:
    group, stream = "hub-replay", bus.keys(build_id).stream("context")
    for value in ("v1", "v2"):
        await bus.publish(build_id, ContextUpdate(key="k", value=value))
    for channel in ("context", "file-change", "errors"):
        await bus.redis.xgroup_create(bus.keys(build_id).stream(channel), group, id="0", mkstream=True)
    await bus.redis.xreadgroup(group, group, {stream: ">"})  # delivered, never acknowledged: the consumer "died"
    await bus.publish(build_id, ContextUpdate(key="k", value="v3"))

    fanout = BusFanout(bus, build_id, group=group)
    listener = fanout.listen()
    await fanout.start()
    try:
        replayed = await take(listener, 3)  # its pending entries again, then the one it had not read
        assert [env.message.value for env in replayed] == ["v1", "v2", "v3"]  # type: ignore[union-attr]
        assert fanout.applied == 0 and fanout.view.context["k"].value == "v3"  # all three were in the seed

        await bus.publish(build_id, ContextUpdate(key="k", value="v4"))
        await take(listener, 1)
        assert fanout.applied == 1 and fanout.view == await bus.unified_context(build_id)
        assert (await bus.redis.xpending(stream, group))["pending"] <= 1  # the last one's ack rides on the next read
    finally:
        await fanout.stop()
    assert (await bus.redis.xpending(stream, group))["pending"] == 0


async def test_a_restarted_fanout_of_the_same_group_loses_nothing_published_while_it_was_away(
    bus: ContextBus, build_id: str
) -> None:
    first = await BusFanout(bus, build_id, group="hub-restart").start()
    await bus.publish_many(build_id, mixed(0))
    assert await first.caught_up()
    await first.stop()

    missed = [await bus.publish(build_id, m) for i in (1, 2) for m in mixed(i)]
    second = BusFanout(bus, build_id, group="hub-restart")
    listener = second.listen()
    await second.start()
    try:
        got = await take(listener, len(missed))  # the group resumed where it stood
        assert sorted(env.id for env in got) == sorted(missed)
        for stream in {env.stream for env in got}:  # in each stream's order
            ours = [env.id for env in got if env.stream == stream]
            assert ours == sorted(ours, key=lambda rid: tuple(map(int, rid.split("-"))))
        assert second.view == await bus.unified_context(build_id)
        await bus.publish_many(build_id, mixed(3))
        assert await second.caught_up() and second.view == await bus.unified_context(build_id)
    finally:
        await second.stop()


async def test_stop_ends_each_listener_after_its_queue_and_forget_destroys_the_group(
    bus: ContextBus, build_id: str
) -> None:
    fanout = await BusFanout(bus, build_id, group="hub-stop").start()
    waiting, watcher = fanout.listen(name="waiting"), fanout.listen(name="watcher")
    ids = [await bus.publish(build_id, ContextUpdate(key="k", value=i)) for i in range(3)]
    assert [env.id for env in await take(watcher, 3)] == ids  # delivered to both in the same step

    await fanout.stop(forget=True)
    assert [env.id async for env in waiting] == ids  # what was queued, then the end
    assert [env async for env in watcher] == []
    with pytest.raises(InvalidInputError):
        fanout.listen()
    for channel in ("context", "file-change", "errors"):
        groups = await bus.redis.xinfo_groups(bus.keys(build_id).stream(channel))
        assert [g["name"] for g in groups] == []
    keys = bus.keys(build_id)
    assert await bus.redis.exists(keys.done("hub-stop"), keys.hwm("hub-stop"), keys.attempts("hub-stop")) == 0


async def test_a_closed_listener_gets_nothing_more_and_the_others_go_on(bus: ContextBus, build_id: str) -> None:
    fanout = await BusFanout(bus, build_id, group="hub-close").start()
    closing, staying = fanout.listen(), fanout.listen()
    try:
        first = await bus.publish(build_id, ErrorReport(source="tsc", message="one"))
        await take(staying, 1)
        closing.close()
        assert [env async for env in closing] == [] and fanout.listeners == 1
        second = await bus.publish(build_id, ErrorReport(source="tsc", message="one", resolved=True))
        assert [env.id for env in await take(staying, 1)] == [second] and first != second
        assert await fanout.caught_up() and fanout.view.errors == {}
    finally:
        await fanout.stop()


async def test_listening_to_a_channel_the_fanout_does_not_read_is_refused(bus: ContextBus, build_id: str) -> None:
    fanout = BusFanout(bus, build_id, group="hub-refuse")
    with pytest.raises(InvalidInputError):
        fanout.listen(["merge"])
    with pytest.raises(InvalidInputError):
        fanout.listen(limit=0)
