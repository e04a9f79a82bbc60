"""Benchmark of the context bus: fan-out latency and batched publish throughput.

``python -m bench.bus --json`` starts its own managed redis-server (AOF on, everysec) and
prints one JSON object as its last line:

* ``fanout_p50_ms`` / ``fanout_p99_ms`` — one publisher, ``--subscribers`` consumer groups
  each in its own process; latency from the publish call (the timestamp in the message) to
  the handler being called, over every (message, subscriber) pair;
* ``fanout_hub_p50_ms`` / ``fanout_hub_p99_ms`` — the per-host subscriber: one process, one
  consumer group (a ``BusFanout``) feeding ``--subscribers`` in-process listeners; latency from
  the publish call to each listener getting the envelope, over every (message, listener) pair;
* ``throughput_eps`` — messages/s through ``ContextBus.publish_many`` (models in, encoding
  and the unified-context path included), batches of ``--batch``;
* ``fanout_floor_p50_ms`` / ``fanout_floor_p99_ms`` — the same fan-out through plain
  ``XADD`` and sync ``XREAD BLOCK`` (no groups, acks or decoding): what the machine allows;
* ``raw_redis_eps`` — plain redis-py pipelined ``XADD`` of the same encoded bodies, same
  process, same batches; ``throughput_ratio`` = throughput_eps / raw_redis_eps.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

from coordinator.bus import BusConfig, BusFanout, ContextBus, Envelope, Listener, Progress
from coordinator.bus.redis_server import ManagedRedis

logger = logging.getLogger("bench.bus")


async def _subscriber(url: str, build_id: str, group: str, expect: int, warmup: int, out: Path) -> None:
    """Child process: one consumer group; records publish→handler latency of ``expect`` messages.

    The first ``warmup`` messages are handled but not counted (cold caches, first allocations).
    """
    bus = ContextBus(url, BusConfig(prefix="bench"))
    latencies: list[float] = []
    seen = 0
    cpu: list[float] = []
    done = asyncio.Event()

    async def handler(env: Envelope) -> None:
        nonlocal seen
        seen += 1
        if seen <= warmup:
            if seen == warmup:
                cpu.append(time.process_time())
            return
        latencies.append((time.time() - env.ts) * 1000)
        if len(latencies) >= expect:
            cpu.append(time.process_time())
            done.set()

    sub = await bus.subscribe(build_id, ["progress"], group=group, handler=handler, start_id="$").start()
    out.with_suffix(".ready").touch()
    await asyncio.wait_for(done.wait(), 120)
    await sub.stop()
    await bus.aclose()
    out.write_text(json.dumps({"lat": latencies, "cpu_ms": (cpu[-1] - cpu[0]) * 1000 / expect}))


async def _hub_subscriber(
    url: str, build_id: str, group: str, consumers: int, expect: int, warmup: int, out: Path
) -> None:
    """Child process: one consumer group through a BusFanout, ``consumers`` in-process listeners.

    Each listener records publish→listener latency of ``expect`` messages after ``warmup``; the
    CPU figure is the whole process's per message (one subscription and every listener).
    """
    bus = ContextBus(url, BusConfig(prefix="bench"))
    fanout = await BusFanout(bus, build_id, group=group, channels=["progress"]).start()
    cpu: list[float] = []

    async def consume(listener: Listener, first: bool) -> list[float]:
        latencies: list[float] = []
        seen = 0
        async for env in listener:
            seen += 1
            if seen <= warmup:
                if seen == warmup and first:
                    cpu.append(time.process_time())
                continue
            latencies.append((time.time() - env.ts) * 1000)
            if len(latencies) >= expect:
                break
        return latencies

    listeners = [fanout.listen(name=f"c{i}") for i in range(consumers)]
    readers = [asyncio.create_task(consume(listener, i == 0)) for i, listener in enumerate(listeners)]
    out.with_suffix(".ready").touch()
    results = await asyncio.wait_for(asyncio.gather(*readers), 120)
    cpu.append(time.process_time())
    overflowed = sum(listener.overflowed for listener in listeners)
    await fanout.stop(forget=True)
    await bus.aclose()
    lat = [x for r in results for x in r]
    out.write_text(json.dumps({"lat": lat, "cpu_ms": (cpu[-1] - cpu[0]) * 1000 / expect, "overflowed": overflowed}))


def _raw_subscriber(url: str, expect: int, warmup: int, out: Path) -> None:
    """Child process: the floor — plain redis-py ``XREAD BLOCK``, no groups, no acks.

    It reads the same bodies as the bus subscribers and unpacks only the timestamp.
    """
    import msgpack
    import redis

    client = redis.Redis.from_url(url)
    # Where the stream ends now, not "$": a message published between "ready" and the first XREAD
    # would be missed with "$", and the subscriber would wait for it until the run times out.
    newest: Any = client.xrevrange("bench:raw-fanout", count=1)
    last: bytes | str = newest[0][0] if newest else "0-0"
    latencies: list[float] = []
    cpu: list[float] = []
    seen = 0
    out.with_suffix(".ready").touch()
    while len(latencies) < expect:
        reply: Any = client.xread(  # RESP2: [(stream, [(id, {field: value})])]
            {"bench:raw-fanout": last}, block=5000, count=100
        )
        for _, entries in reply or ():
            now = time.time()
            for rid, fields in entries:
                last = rid
                seen += 1
                if seen <= warmup:
                    if seen == warmup:
                        cpu.append(time.process_time())
                    continue
                latencies.append((now - msgpack.unpackb(fields[b"d"][1:])["t"]) * 1000)
    cpu.append(time.process_time())
    out.write_text(json.dumps({"lat": latencies, "cpu_ms": (cpu[-1] - cpu[0]) * 1000 / expect}))


def _wait_files(paths: list[Path], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


async def _redis_cpu_s(bus: ContextBus) -> float:
    info = await bus.redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


Mode = Literal["raw", "bus", "hub"]


async def fanout(
    url: str, work: Path, subscribers: int, messages: int, interval_s: float, warmup: int, *, mode: Mode = "bus"
) -> dict[str, float]:
    """Publish ``warmup`` + ``messages`` one by one to ``subscribers`` consumers.

    ``bus``: a consumer group per consumer, each in its own process. ``hub``: one process, one
    group (a BusFanout), the consumers its in-process listeners. ``raw``: the same bodies through
    plain XADD / XREAD BLOCK in ``subscribers`` processes, the floor this machine allows. Every mode
    uses the same payload, warm-up and pacing (sleep after each publish).
    """
    raw = mode == "raw"
    build_id = "fanout-hub" if mode == "hub" else "fanout"
    outs = [work / f"{mode}{i}.json" for i in range(1 if mode == "hub" else subscribers)]
    procs = []
    for i, out in enumerate(outs):
        if raw:
            args = ["--raw-subscriber", url, str(messages), str(warmup)]
        elif mode == "hub":
            args = ["--hub-subscriber", url, build_id, "hub", str(subscribers), str(messages), str(warmup)]
        else:
            args = ["--subscriber", url, build_id, f"g{i}", str(messages), str(warmup)]
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "bench.bus", *args, str(out)], cwd=Path(__file__).resolve().parents[1]
            )
        )
    try:
        await asyncio.to_thread(_wait_files, [o.with_suffix(".ready") for o in outs], 60, "subscribers to start")
        bus = ContextBus(url, BusConfig(prefix="bench"), sender="bench")
        raw_key = bus.keys(build_id).stream("progress") if not raw else "bench:raw-fanout"
        for i in range(20):  # warm the publisher's connection and code path
            await bus.publish("warmup", Progress(phase="warm", message=str(i)))
        cpu_before = 0.0
        for i in range(warmup + messages):
            if i == warmup:
                cpu_before = await _redis_cpu_s(bus)
            message = Progress(phase="fanout", message=str(i))
            if raw:  # the same body the bus would send, through a bare XADD
                body = bus.codec.encode_dict(message.model_dump(), sender="bench", ts=time.time(), mid=f"raw-{i}")
                await bus.redis.xadd(raw_key, {"d": body})
            else:
                await bus.publish(build_id, message)
            await asyncio.sleep(interval_s)
        await asyncio.to_thread(_wait_files, outs, 60, "subscribers to finish")
        redis_cpu_ms = (await _redis_cpu_s(bus) - cpu_before) * 1000 / messages
        await bus.aclose()
    finally:
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    results = [json.loads(out.read_text()) for out in outs]
    if any(r.get("overflowed") for r in results):
        raise RuntimeError("a hub listener fell behind and was cut off: its figures would be incomplete")
    samples = sorted(x for r in results for x in r["lat"])
    prefix = {"raw": "fanout_floor", "bus": "fanout", "hub": "fanout_hub"}[mode]
    return {
        f"{prefix}_p50_ms": round(statistics.median(samples), 3),
        f"{prefix}_p99_ms": round(samples[math.ceil(len(samples) * 0.99) - 1], 3),
        f"{prefix}_max_ms": round(samples[-1], 3),
        f"{prefix}_samples": len(samples),
        f"{prefix}_sub_cpu_ms": round(statistics.median(r["cpu_ms"] for r in results), 3),
        f"{prefix}_redis_cpu_ms": round(redis_cpu_ms, 3),
    }


async def throughput(url: str, total: int, batch: int, rounds: int) -> dict[str, float]:
    """Batched publishing through the bus vs plain pipelined XADD of the same bodies."""
    bus = ContextBus(url, BusConfig(prefix="bench"), sender="bench")
    messages = [Progress(phase="build", message=f"step {i}", fraction=(i % 100) / 100) for i in range(total)]
    bodies = [p.body for p in bus._prepare(bus.keys("raw"), messages, "bench")]
    await bus.publish_many("warm", messages[:batch])

    async def through_bus(n: int) -> float:
        start = time.perf_counter()
        for i in range(0, total, batch):
            await bus.publish_many(f"tp{n}", messages[i : i + batch])
        return total / (time.perf_counter() - start)

    async def raw(n: int) -> float:
        key = f"bench:raw:{n}"
        start = time.perf_counter()
        for i in range(0, total, batch):
            pipe = bus.redis.pipeline(transaction=False)
            for body in bodies[i : i + batch]:
                pipe.execute_command("XADD", key, "*", "d", body)
            await pipe.execute()
        return total / (time.perf_counter() - start)

    ours, plain = [], []
    for n in range(rounds):  # interleaved, so drift in machine load hits both alike
        ours.append(await through_bus(n))
        plain.append(await raw(n))
        await bus.redis.flushdb()
    await bus.aclose()
    ours_eps, raw_eps = statistics.median(ours), statistics.median(plain)
    return {
        "throughput_eps": round(ours_eps),
        "raw_redis_eps": round(raw_eps),
        "throughput_ratio": round(ours_eps / raw_eps, 3),
        "throughput_messages": total,
        "throughput_batch": batch,
    }


async def run(args: argparse.Namespace) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-bus-") as tmp:
        async with ManagedRedis(Path(tmp) / "redis") as server:
            result: dict[str, float] = {"subscribers": args.subscribers}
            work, n, m, dt, w = Path(tmp), args.subscribers, args.messages, args.interval, args.warmup
            if not args.no_floor:  # floor first, then ours: all right after a fresh server start
                result |= await fanout(server.url, work, n, m, dt, w, mode="raw")
            if not args.no_bus:
                result |= await fanout(server.url, work, n, m, dt, w, mode="bus")
            if not args.no_hub:
                result |= await fanout(server.url, work, n, m, dt, w, mode="hub")
            if not args.no_throughput:
                result |= await throughput(server.url, args.total, args.batch, args.rounds)
            return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line (last line)")
    parser.add_argument("--subscribers", type=int, default=20)
    parser.add_argument("--messages", type=int, default=300, help="fan-out messages")
    parser.add_argument("--interval", type=float, default=0.02, help="seconds between fan-out publishes")
    parser.add_argument("--total", type=int, default=50_000, help="messages per throughput round")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=20, help="fan-out messages sent first and not counted")
    parser.add_argument("--no-floor", action="store_true", help="skip the raw XREAD fan-out floor")
    parser.add_argument("--no-bus", action="store_true", help="skip the bus fan-out to subscriber processes")
    parser.add_argument("--no-hub", action="store_true", help="skip the per-host (one process) fan-out")
    parser.add_argument("--no-throughput", action="store_true", help="skip the throughput rounds")
    parser.add_argument("--raw-subscriber", nargs=4, metavar=("URL", "N", "WARMUP", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--subscriber", nargs=6, metavar=("URL", "BUILD", "GROUP", "N", "WARMUP", "OUT"), help=argparse.SUPPRESS
    )
    parser.add_argument(
        "--hub-subscriber",
        nargs=7,
        metavar=("URL", "BUILD", "GROUP", "CONSUMERS", "N", "WARMUP", "OUT"),
        help=argparse.SUPPRESS,
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.raw_subscriber:
        url, n, warmup, out = args.raw_subscriber
        _raw_subscriber(url, int(n), int(warmup), Path(out))
        return
    if args.subscriber:
        url, build_id, group, n, warmup, out = args.subscriber
        asyncio.run(_subscriber(url, build_id, group, int(n), int(warmup), Path(out)))
        return
    if args.hub_subscriber:
        url, build_id, group, consumers, n, warmup, out = args.hub_subscriber
        asyncio.run(_hub_subscriber(url, build_id, group, int(consumers), int(n), int(warmup), Path(out)))
        return
    result = asyncio.run(run(args))
    if args.json:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        for key, value in result.items():
            sys.stdout.write(f"{key:>22}: {value}\n")


if __name__ == "__main__":
    main()
