"""``kriptik demo``: one whole example build, offline, on the embedded defaults.

Everything the build needs is started here and owned by this process: a private single-node
Ray (session files in a temp dir), a managed ``redis-server`` and the SQLite store under a
fresh ``KRIPTIK_HOME`` (a temp dir unless ``--home``), the Control actor, local bubblewrap
sandboxes, and the replay LLM with the example's cassette (Control picks
``examples/cassettes/{example}.yaml``). The build runs through Control exactly as an API
client's would; progress is read from the build's event log on the bus. At the end
everything is torn down (coordinator, gate, preview, sandboxes, Redis, Ray) unless
``--keep`` holds the preview until Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from coordinator.placement import default_backend
from sandbox_agents.busy import Interval, covered, union

if TYPE_CHECKING:
    from actors.pools.fleet import FleetPoolConfig

logger = logging.getLogger(__name__)

USER = "demo"
EXAMPLES = ("hello-calc", "todo-fullstack", "kanban-vite")
"""What ``kriptik demo --example`` builds; kanban-vite installs npm packages (the first run needs the registry)."""
FINAL = ("completed", "failed", "cancelled", "paused")
STEPS = ("build", "verify", "judge", "merge", "preview", "done")
"""A component's pipeline (``component.phase`` events); a bar per component walks it."""
BUILD_PHASES = ("intent", "fleet", "build", "verify", "judge", "merge", "preview", "satisfy", "done")


@dataclass
class DemoOptions:
    """What the user asked for on the command line."""

    example: str = "todo-fullstack"
    keep: bool = False
    serve_api: bool = False
    api_port: int = 8000
    home: Path | None = None
    timeout_s: float = 600.0
    breakdown: bool = False
    """Add ``breakdown`` to the summary: where each component's time went (:func:`pipeline_breakdown`)."""


@dataclass
class _Owned:
    """What this process started, so that teardown ends exactly that."""

    home: Path | None = None
    own_home: bool = False
    ray_tmp: str | None = None
    redis: Any = None
    control: Any = None
    served: bool = False
    build_id: str | None = None
    notes: list[str] = field(default_factory=list)


class EventProgress:
    """Rich progress fed from the build's event log: the build's phase, one bar per component, a status line."""

    def __init__(self, console: Console) -> None:
        self.progress = Progress(
            TextColumn("{task.description:>18}"),
            BarColumn(),
            TextColumn("{task.fields[note]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.console = console
        self.overall: TaskID | None = None
        self.components: dict[str, TaskID] = {}
        self.kinds: Counter[str] = Counter()
        self.timeline: list[tuple[float, str, dict[str, Any]]] = []
        """(publish time, kind, data) of every event, for the pipeline figures."""

    def __enter__(self) -> EventProgress:
        self.progress.__enter__()
        self.overall = self.progress.add_task("build", total=len(BUILD_PHASES) - 1, note="submitted")
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(None, None, None)

    def feed(self, kind: str, data: dict[str, Any]) -> None:
        """One event of the log."""
        self.kinds[kind] += 1
        assert self.overall is not None
        if kind == "build.phase" and data.get("phase") in BUILD_PHASES:
            self.progress.update(self.overall, completed=BUILD_PHASES.index(data["phase"]), note=data["phase"])
        elif kind == "fleet.ready":
            for name in data.get("order", []):
                self.components.setdefault(name, self.progress.add_task(name, total=len(STEPS) - 1, note="waiting"))
        elif kind == "component.phase" and data.get("component") in self.components:
            step = data.get("phase", "")
            done = STEPS.index(step) if step in STEPS else 0
            self.progress.update(self.components[data["component"]], completed=done, note=step)
        note = _note(kind, data)
        if note:
            self.progress.console.print(note)

    def finish(self, status: str) -> None:
        assert self.overall is not None
        if status == "completed":
            self.progress.update(self.overall, completed=len(BUILD_PHASES) - 1, note="completed")


def _note(kind: str, data: dict[str, Any]) -> str | None:
    """A status line for the events worth a line of their own."""
    component = data.get("component", "")
    if kind == "task.escalated":
        return f"[yellow]  ↻ {component}: {data.get('task')} failed its check → {data.get('next')}[/]"
    if kind == "task.recovered":
        return f"[green]  ✓ {component}: {data.get('task')} recovered at level {data.get('level')}[/]"
    if kind == "task.blocked":
        return f"[red]  ✗ {component}: {data.get('task')} blocked: {str(data.get('reason'))[:100]}[/]"
    if kind == "slot.verified":
        return f"  swarm on {data.get('slot')}: score {data.get('score', 0):.2f} ({data.get('summary', '')})"
    if kind == "tournament.decision":
        return f"[bold]  ⚖ {component}: the judge picks {data.get('winner')}[/]"
    if kind == "tournament.eliminated":
        return f"  {data.get('slot')} snapshotted and terminated"
    if kind == "merge.accepted" and "changed" in data:  # the gate's event (the coordinator's has no file list)
        files, commit = len(data["changed"]), str(data.get("commit"))[:10]
        return f"[green]  ⇢ {component} merged into main ({files} files, commit {commit})[/]"
    if kind == "merge.rejected" and "changed" in data:
        return f"[red]  ⇢ {component} rejected by the merge gate: {str(data.get('reason'))[:100]}[/]"
    if kind == "intent.satisfaction":
        results = data.get("results", [])
        failed = [f"\n    ✗ {r['id']}: {str(r.get('evidence'))[-300:]}" for r in results if not r["passed"]]
        return f"  success criteria: {data.get('passed')}/{data.get('total')} pass against main{''.join(failed)}"
    if kind in ("build.error", "build.failed"):
        return f"[red]  {kind}: {str(data.get('error', data))[:200]}[/]"
    return None


async def run_build_demo(options: DemoOptions, console: Console) -> dict[str, Any]:
    """Run one example build on the embedded defaults; returns the JSON summary.

    Raises:
        ValueError: An unknown example.
    """
    if options.example not in EXAMPLES:
        raise ValueError(f"unknown example {options.example!r} (one of {', '.join(EXAMPLES)})")
    started = time.perf_counter()
    owned = _Owned()
    result: dict[str, Any] = {"status": "failed", "example": options.example}
    try:
        await _start(options, owned, console)
        result["startup_s"] = round(time.perf_counter() - started, 2)  # Ray, Redis, Control, warm pools
        result.update(await _build(options, owned, console))
        if options.keep and result.get("status") == "completed":
            await _hold(result, console)
    finally:
        result["wall_s"] = round(time.perf_counter() - started, 2)
        await _teardown(owned, console, keep_home=options.home is not None)
    return result


async def _start(options: DemoOptions, owned: _Owned, console: Console) -> None:
    from actors.ray_local import start_local_ray
    from actors.runtime import start_runtime
    from coordinator.bus.redis_server import ManagedRedis

    if options.home is not None:
        owned.home = options.home.expanduser().resolve()
        owned.home.mkdir(parents=True, exist_ok=True)
    else:
        owned.home, owned.own_home = Path(tempfile.mkdtemp(prefix="kriptik-demo-home-")), True
    os.environ["KRIPTIK_HOME"] = str(owned.home)  # before anything reads the settings
    with console.status("starting a private Ray, Redis and Control…"):
        owned.ray_tmp = tempfile.mkdtemp(prefix="kriptik-demo-ray-")
        start_local_ray(owned.ray_tmp, num_cpus=4, env={"KRIPTIK_HOME": str(owned.home)})
        owned.redis = ManagedRedis(owned.home / "redis")
        await owned.redis.astart()
        owned.redis.keep_alive()  # a Redis killed mid-build comes back on its URL with its events
        pools = pools_for(options.example)
        runtime = await start_runtime(
            owned.home, redis_url=owned.redis.url, admit_poll_s=0.1, heartbeat_s=10.0, pools=pools
        )
        owned.control = runtime.control
    with console.status(f"warming {pools.proxies} proxies, {pools.teams} teams, {pools.agents} agents…"):
        await _pools_warm(owned.control, pools)
    console.print(
        f"home {owned.home}  ·  redis {owned.redis.display_url}  ·  "
        f"sandboxes on {default_backend()['type']} (KRIPTIK_BACKEND)  ·  "
        f"replay cassette examples/cassettes/{options.example}.yaml"
    )
    if options.serve_api:
        _serve_api(options, owned, console)


def pools_for(example: str) -> FleetPoolConfig:
    """Warm pools holding one build of ``example``: what a control plane keeps ready for the builds it expects.

    A proxy per slot, plus the merge gate's main-test sandbox and the preview's; a team, its agents
    and a swarm per slot. They are filled once, as the build starts (:func:`_pools_warm`), and not
    refilled: the demo runs one build, and starting replacements would only compete with it for the cores.
    """
    from actors.pools.fleet import FleetPoolConfig
    from coordinator.contracts import load_contract
    from coordinator.plan import plan_fleet
    from coordinator.resources import examples_dir

    plan = plan_fleet(load_contract(examples_dir() / "intents" / f"{example}.yaml"))
    slots = len(plan.slots)
    agents = sum(s.agents for s in plan.slots)
    return FleetPoolConfig(proxies=slots + 2, teams=slots, agents=agents, swarms=slots, refill=False)


async def _pools_warm(control: Any, pools: FleetPoolConfig, timeout_s: float = 120.0) -> None:
    """Wait (bounded) until Control's pools hold the actors a build takes first: its proxies, teams and agents.

    A build started before would start them cold. The swarms (and their browsers) finish warming
    while the teams work: a slot takes its swarm only once it is built.
    """
    wanted = {"proxy": pools.proxies, "team": pools.teams, "agent": pools.agents}
    deadline = time.monotonic() + timeout_s
    while True:
        warm = await control.warm_pools.remote()
        if all(warm.get(kind, 0) >= n for kind, n in wanted.items()):
            return
        if time.monotonic() > deadline:  # a start that failed: the build starts what is missing cold
            logger.warning("demo: the warm pools hold %s of %s after %.0fs", warm, wanted, timeout_s)
            return
        await asyncio.sleep(0.1)


def _serve_api(options: DemoOptions, owned: _Owned, console: Console) -> None:
    from coordinator.store.store import Store
    from serve.app import ApiSettings
    from serve.auth import create_token
    from serve.deployment import run_api

    assert owned.home is not None and owned.redis is not None
    store_path = owned.home / "store.db"
    url = run_api(owned.redis.url, str(store_path), ApiSettings(port=options.api_port))
    owned.served = True
    with Store(str(store_path)) as store:
        token = create_token(store, USER)
    owned.notes.append(f"{url}/ui/")
    console.print(f"web UI  {url}/ui/   (token for user {USER!r}: {token})")


async def _build(options: DemoOptions, owned: _Owned, console: Console) -> dict[str, Any]:
    from coordinator.bus.context_bus import BusConfig, ContextBus

    assert owned.redis is not None
    control = owned.control
    build_id = await control.submit.remote(USER, {"example": options.example})
    owned.build_id = build_id
    console.print(f"build {build_id}: example {options.example!r} through Control")
    bus = ContextBus(owned.redis.url, BusConfig(prefix="kriptik"), sender="demo")
    last_id: str | None = None
    status: dict[str, Any] = {}
    deadline = time.monotonic() + options.timeout_s
    try:
        with EventProgress(console) as progress:
            while True:
                # A blocking read: it answers as soon as an event comes (no polling interval to wait out).
                entries = await bus.read_events(build_id, after_id=last_id, count=500, block_ms=300)
                ended = False
                for entry_id, envelope in entries:
                    last_id = entry_id
                    _feed(progress, envelope.message, envelope.ts)
                    ended = ended or _ends_build(envelope.message)
                if not entries or ended:
                    status = await control.status.remote(USER, build_id)
                    if status["status"] in FINAL:
                        # the log may still hold the last events: drain it once more
                        for entry_id, envelope in await bus.read_events(build_id, after_id=last_id, count=500):
                            last_id = entry_id
                            _feed(progress, envelope.message, envelope.ts)
                        break
                    if time.monotonic() > deadline:
                        await control.cancel.remote(USER, build_id)
                        raise TimeoutError(f"build {build_id} did not end within {options.timeout_s:.0f}s")
            progress.finish(status["status"])
        summary: dict[str, Any] = {
            "status": status["status"],
            "build_id": build_id,
            "preview_url": None,
            "main_commit": None,
            "components": {c["slot"]: c["status"] for c in status.get("components", [])},
            "events": sum(progress.kinds.values()),
            **pipeline_figures(progress.timeline),
        }
        breakdown = pipeline_breakdown(progress.timeline)
        logger.info("where each component's time went:\n%s", format_breakdown(breakdown))
        if options.breakdown:
            summary["breakdown"] = breakdown
        if status.get("error"):
            summary["error"] = status["error"]
        if status["status"] == "completed":
            summary["preview_url"] = (await control.preview.remote(USER, build_id)).get("url")
            summary["main_commit"] = await _main_commit(build_id)
        colour = "green" if status["status"] == "completed" else "red"
        console.print(f"[{colour}]build {build_id} {status['status']}[/]")
        if summary["preview_url"]:
            console.print(f"preview {summary['preview_url']}")
        for note in owned.notes:
            console.print(f"web UI  {note}")
        return summary
    finally:
        try:
            await bus.aclose(flush_timeout=1.0)
        except Exception as exc:  # noqa: BLE001 - the demo only read from it
            logger.warning("demo: closing the bus failed: %r", exc)


def _ends_build(message: Any) -> bool:
    """Whether an entry of the event log says the build ended (its status is worth asking now)."""
    from coordinator.bus.models import Event

    if not isinstance(message, Event):
        return False
    return message.kind in ("build.done", "build.cancelled", "build.paused") or (
        message.kind == "build.error" and message.data.get("fatal", True)
    )


def _feed(progress: EventProgress, message: Any, ts: float = 0.0) -> None:
    """An entry of the event log to the progress display (only events: the log holds nothing else today)."""
    from coordinator.bus.models import Event

    if isinstance(message, Event):
        progress.feed(message.kind, dict(message.data))
        progress.timeline.append((ts, message.kind, dict(message.data)))


def _component_of(name: str) -> str:
    """The component a slot (``frontend~minimal``) or a candidate's team (``frontend.minimal``) belongs to."""
    return re.split(r"[~.]", name, maxsplit=1)[0]


def component_spans(timeline: list[tuple[float, str, dict[str, Any]]]) -> dict[str, tuple[float, float]]:
    """Each component's pipeline: from its first team start (``slot.building`` of any of its slots) to
    its ``component.phase`` ``done`` (merged, previewed, released); components that did not end are left out."""
    started: dict[str, float] = {}
    ended: dict[str, float] = {}
    for ts, kind, data in timeline:
        if kind == "slot.building":
            started.setdefault(_component_of(str(data.get("slot", ""))), ts)
        elif kind == "component.phase" and data.get("phase") == "done":
            ended[str(data.get("component"))] = ts
    return {c: (started[c], ended[c]) for c in started if c in ended}


def busy_intervals(timeline: list[tuple[float, str, dict[str, Any]]]) -> dict[str, list[Interval]]:
    """Per component, when its real work ran (``busy.report``: sandbox commands, the gate's, model calls)."""
    busy: dict[str, list[Interval]] = {}
    for _, kind, data in timeline:
        if kind == "busy.report":
            intervals = [(float(a), float(b)) for a, b in data.get("intervals", [])]
            busy.setdefault(_component_of(str(data.get("component", ""))), []).extend(intervals)
    return {c: union(i) for c, i in busy.items()}


def pipeline_figures(timeline: list[tuple[float, str, dict[str, Any]]]) -> dict[str, float | None]:
    """How parallel the build phase was, and how much of each component's pipeline was overhead.

    A component's pipeline runs from its first team start to its ``component.phase`` ``done``
    (:func:`component_spans`). ``build_phase_s`` runs from the first team start to the last accepted
    merge; ``sum_component_s`` adds every component's pipeline; ``parallelism`` is their ratio (1.0:
    one component at a time). ``per_component_overhead_s`` is the mean over components of the
    pipeline time in which none of its real work ran: no command in its slots' sandboxes (exec,
    install), none of the merge gate's commands for its merge, no model call of its agents
    (``busy.report``). What is left is actor starts and hops, seeding and copying files, waiting
    on other components, dev servers coming up, browsers and polling.
    """
    spans = component_spans(timeline)
    merges = [ts for ts, kind, _ in timeline if kind == "merge.accepted"]
    if not spans or not merges:
        return {"build_phase_s": None, "sum_component_s": None, "parallelism": None, "per_component_overhead_s": None}
    phase = max(merges) - min(start for start, _ in spans.values())
    total = sum(end - start for start, end in spans.values())
    busy = busy_intervals(timeline)
    overheads = [(end - start) - covered(busy.get(c, []), start, end) for c, (start, end) in spans.items()]
    return {
        "build_phase_s": round(phase, 2),
        "sum_component_s": round(total, 2),
        "parallelism": round(total / phase, 2) if phase > 0 else None,
        "per_component_overhead_s": round(sum(overheads) / len(overheads), 2),
    }


_MILESTONES = frozenset(
    {
        "slot.building",
        "team.started",
        "team.check",
        "slot.built",
        "component.phase",
        "swarm.report",
        "slot.verified",
        "component.fed",
        "judge.decision",
        "tournament.eliminated",
        "merge.queued",
        "merge.accepted",
        "merge.rejected",
        "preview.refreshed",
    }
)
"""Events that mark a step of a component's pipeline in :func:`pipeline_breakdown`."""


def _milestones(kind: str, data: dict[str, Any]) -> list[tuple[str, str]]:
    """``(component, label)`` of each component whose pipeline the event marks a step of."""
    if kind not in _MILESTONES:
        return []
    if kind == "component.fed":  # a step of both: the provider's code was copied, the dependent may check
        provider, dependent = str(data.get("provider", "")), str(data.get("component", ""))
        return [(provider, f"fed {dependent}"), (dependent, f"fed by {provider}")]
    if kind in ("merge.accepted", "merge.rejected") and "changed" not in data:
        return []  # the run's echo of the gate's verdict
    who = str(data.get("slot") or data.get("sid") or data.get("component") or "")
    label = kind + (f" {data['phase']}" if kind == "component.phase" else "")
    return [(_component_of(who), label + (f" ({who})" if "~" in who or "." in who else ""))]


def pipeline_breakdown(timeline: list[tuple[float, str, dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """Where each component's time went: the steps between its milestones, each with its busy share.

    Each step runs from one milestone event of the component to the next (a team start, a check,
    a verdict, a merge…) and says how long it took (``s``), how much of that its real work covered
    (``busy_s``: commands in its sandboxes or the gate's, model calls) and the rest (``overhead_s``).
    """
    spans = component_spans(timeline)
    busy = busy_intervals(timeline)
    marks: dict[str, list[tuple[float, str]]] = {c: [] for c in spans}
    for ts, kind, data in timeline:
        for component, label in _milestones(kind, data):
            if component in spans and spans[component][0] <= ts <= spans[component][1]:
                marks[component].append((ts, label))
    steps: dict[str, list[dict[str, Any]]] = {}
    for component, points in marks.items():
        points.sort()
        rows = []
        for (t0, a), (t1, b) in zip(points, points[1:], strict=False):
            worked = covered(busy.get(component, []), t0, t1)
            step = {"step": f"{a} → {b}", "s": round(t1 - t0, 2), "busy_s": round(worked, 2)}
            rows.append({**step, "overhead_s": round(t1 - t0 - worked, 2)})
        steps[component] = rows
    return steps


def format_breakdown(breakdown: dict[str, list[dict[str, Any]]]) -> str:
    """The breakdown as plain text, one line per step, the longest overheads easy to spot."""
    lines = []
    for component, rows in breakdown.items():
        total = sum(r["s"] for r in rows)
        overhead = sum(r["overhead_s"] for r in rows)
        lines.append(f"{component}: {total:.2f} s, overhead {overhead:.2f} s")
        lines += [
            f"  {r['s']:6.2f} s  busy {r['busy_s']:5.2f}  overhead {r['overhead_s']:5.2f}  {r['step']}" for r in rows
        ]
    return "\n".join(lines)


async def _main_commit(build_id: str) -> str | None:
    from actors import handles

    gate = handles.find(handles.gate_name(build_id))
    if gate is None:
        return None
    try:
        return await gate.head.remote()
    except handles.RayError as exc:  # the gate failed or is restarting: the summary goes without it
        logger.warning("demo: main's commit of %s is unknown: %s", build_id, exc)
        return None


async def _hold(result: dict[str, Any], console: Console) -> None:
    """--keep: the preview stays up until Ctrl-C."""
    console.print(f"[bold]preview running at {result.get('preview_url')} — Ctrl-C to stop and clean up[/]")
    with contextlib.suppress(asyncio.CancelledError, KeyboardInterrupt):
        while True:
            await asyncio.sleep(3600)


async def _teardown(owned: _Owned, console: Console, *, keep_home: bool) -> None:
    """End what this process started: the build's actors and sandboxes, the API, Control, Redis, Ray."""
    import ray

    with console.status("cleaning up…"):
        if ray.is_initialized():
            if owned.build_id is not None:
                await _step(f"stopping the coordinator of {owned.build_id}", _stop_build(owned.build_id))
            if owned.served:
                from ray import serve as ray_serve

                await _step("stopping Serve", asyncio.to_thread(ray_serve.shutdown))
            if owned.control is not None:
                from actors.control import stop_control

                await _step("stopping Control", stop_control(owned.control))
            ray.shutdown()
        if owned.redis is not None:
            await _step("stopping Redis", asyncio.to_thread(owned.redis.stop))
        if owned.home is not None:
            await _purge_sandboxes(owned.home)
        if owned.ray_tmp:
            shutil.rmtree(owned.ray_tmp, ignore_errors=True)
        if owned.own_home and owned.home is not None and not keep_home:
            shutil.rmtree(owned.home, ignore_errors=True)


async def _purge_sandboxes(home: Path) -> None:
    """End every local sandbox left under this home's sandbox root (the slots, gate, preview)."""
    from sandbox_agents.backends.config import LocalBackendConfig
    from sandbox_agents.backends.local.backend import LocalBackend
    from sandbox_agents.backends.local.state import default_root

    root = default_root(home)
    if root.exists():
        await _step(f"ending the sandboxes under {root}", LocalBackend(LocalBackendConfig(root=root)).purge())
        shutil.rmtree(root, ignore_errors=True)


async def _stop_build(build_id: str) -> None:
    from actors.build.actor import get_coordinator, stop_coordinator

    try:
        coordinator = get_coordinator(build_id)
    except ValueError:  # gone already
        return
    await asyncio.wait_for(stop_coordinator(coordinator), 60)


async def _step(what: str, step: Awaitable[Any]) -> None:
    """One teardown step: a failure is logged and the teardown goes on."""
    try:
        await step
    except Exception as exc:  # noqa: BLE001 - what is left is ended by the steps after (sandboxes, Ray)
        logger.warning("demo teardown: %s failed: %r", what, exc)
