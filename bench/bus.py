"""Benchmark of the context bus: fan-out latency and batched publish throughput.

``python -m bench.bus --json`` starts its own managed redis-server (AOF on, everysec) and
prints one JSON object as its last line:

* ``fanout_p50_ms`` / ``fanout_p99_ms`` — one publisher, ``--subscribers`` consumer groups
  each in its own process; latency from the publish call (the timestamp in the message) to
  the handler being called, over every (message, subscriber) pair;
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
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from coordinator.bus import BusConfig, ContextBus
from coordinator.bus_models import Envelope, Progress
from coordinator.redis_server import ManagedRedis

logger = logging.getLogger("bench.bus")


async def _subscriber(url: str, build_id: str, group: str, expect: int, out: Path) -> None:
    """Child process: one consumer group; records publish→handler latency of ``expect`` messages."""
    bus = ContextBus(url, BusConfig(prefix="bench"))
    latencies: list[float] = []
    done = asyncio.Event()

    async def handler(env: Envelope) -> None:
        latencies.append((time.time() - env.ts) * 1000)
        if len(latencies) >= expect:
            done.set()

    sub = await bus.subscribe(build_id, ["progress"], group=group, handler=handler, start_id="$").start()
    out.with_suffix(".ready").touch()
    await asyncio.wait_for(done.wait(), 120)
    await sub.stop()
    await bus.aclose()
    out.write_text(json.dumps(latencies))


def _raw_subscriber(url: str, expect: int, out: Path) -> None:
    """Child process: the floor — plain redis-py ``XREAD BLOCK``, no groups, no acks, no decoding."""
    import redis

    client = redis.Redis.from_url(url)
    last, latencies = "$", []
    out.with_suffix(".ready").touch()
    while len(latencies) < expect:
        for _, entries in client.xread({"bench:raw-fanout": last}, block=5000, count=100) or ():
            now = time.time()
            for rid, fields in entries:
                latencies.append((now - float(fields[b"t"])) * 1000)
                last = rid
    out.write_text(json.dumps(latencies))


def _wait_files(paths: list[Path], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


async def fanout(
    url: str, work: Path, subscribers: int, messages: int, interval_s: float, *, raw: bool = False
) -> dict[str, float]:
    """Publish ``messages`` one by one to ``subscribers`` groups in other processes.

    With ``raw``, the same through plain XADD / XREAD BLOCK: the floor this machine allows.
    """
    build_id, tag = "fanout", "raw" if raw else "bus"
    outs = [work / f"{tag}{i}.json" for i in range(subscribers)]
    mode = ["--raw-subscriber", url, str(messages)] if raw else ["--subscriber", url, build_id, "", str(messages)]
    procs = []
    for i, out in enumerate(outs):
        args = list(mode)
        if not raw:
            args[3] = f"g{i}"
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "bench.bus", *args, str(out)], cwd=Path(__file__).resolve().parents[1]
            )
        )
    try:
        await asyncio.to_thread(_wait_files, [o.with_suffix(".ready") for o in outs], 60, "subscribers to start")
        bus = ContextBus(url, BusConfig(prefix="bench"), sender="bench")
        for i in range(20):  # warm the connection and the scripts' path
            await bus.publish("warmup", Progress(phase="warm", message=str(i)))
        for i in range(messages):
            if raw:
                await bus.redis.xadd("bench:raw-fanout", {"t": repr(time.time())})
            else:
                await bus.publish(build_id, Progress(phase="fanout", message=str(i)))
            await asyncio.sleep(interval_s)
        await bus.aclose()
        await asyncio.to_thread(_wait_files, outs, 60, "subscribers to finish")
    finally:
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    samples = sorted(x for out in outs for x in json.loads(out.read_text()))
    prefix = "fanout_floor" if raw else "fanout"
    result = {
        f"{prefix}_p50_ms": round(statistics.median(samples), 3),
        f"{prefix}_p99_ms": round(samples[int(len(samples) * 0.99) - 1], 3),
        f"{prefix}_max_ms": round(samples[-1], 3),
    }
    if not raw:
        result["fanout_samples"] = len(samples)
    return result


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
            result |= await fanout(server.url, Path(tmp), args.subscribers, args.messages, args.interval)
            if not args.no_floor:
                result |= await fanout(server.url, Path(tmp), args.subscribers, args.messages, args.interval, raw=True)
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
    parser.add_argument("--no-floor", action="store_true", help="skip the raw XREAD fan-out floor")
    parser.add_argument("--raw-subscriber", nargs=3, metavar=("URL", "N", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--subscriber", nargs=5, metavar=("URL", "BUILD", "GROUP", "N", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.raw_subscriber:
        url, n, out = args.raw_subscriber
        _raw_subscriber(url, int(n), Path(out))
        return
    if args.subscriber:
        url, build_id, group, n, out = args.subscriber
        asyncio.run(_subscriber(url, build_id, group, int(n), Path(out)))
        return
    result = asyncio.run(run(args))
    if args.json:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        for key, value in result.items():
            sys.stdout.write(f"{key:>22}: {value}\n")


if __name__ == "__main__":
    main()
