"""Warm pools of generic actors, and the aliases that give a bound one its build name.

An actor is a process: 0.4–0.8 s to start on 2 cores, two at a time. A build's fleet (a proxy,
a team, 3–5 agents and a swarm per slot) is ~20 of them, so it is started ahead of time:

* a **warm** actor is started with nothing build-specific (its constructor takes no config)
  under a generic name ``kriptik:{kind}:{uuid}`` (a Ray name cannot change once given);
* at acquire time its owner **binds** it (``bind(config, …)`` on the actor) and records an
  **alias** — its *build name*, the name it has in its build (``build:{id}:agent:{sid}:{n}`` …,
  :mod:`actors.handles`) → the actor's Ray name — in a
  file under ``KRIPTIK_HOME/{kind}s/aliases/``; :func:`resolve` and :func:`named_actor` look a
  build name up whether its actor came from a pool or was started cold under that name;
* a bound actor is never returned to the pool (no state of one build can reach another): its
  owner kills it when done, and the pool starts a fresh one in the background.

:class:`WarmPool` is the one warm-list/refill/close implementation; ``ProxyPool`` and the
control plane's :class:`~actors.pools.fleet.FleetPools` are built on it. It lives inside its
owner's event loop and never blocks it on ``ray.get``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from actors import handles
from actors.actor_state import StateFile, file_stem, state_dir
from sandbox_agents.errors import InvalidInputError

logger = logging.getLogger(__name__)


class BuildScoped(Protocol):
    """A pooled actor's config: it knows the name its actor has in the build."""

    @property
    def name(self) -> str: ...


C = TypeVar("C", bound=BuildScoped)

KINDS = ("proxy", "team", "agent", "swarm")
_DIRS = {"proxy": "proxies", "team": "teams", "agent": "agents", "swarm": "swarms"}

Warm = tuple[str, Any]
"""A warm actor: its (generic) name and its handle."""


class WarmBound(Generic[C]):
    """The bind-once state of a pooled actor: ``config`` is None while it waits warm, then one slot's.

    Subclasses set ``KIND`` (``team``, ``swarm``, ``agent``) and :meth:`_bind`; their ``bind``
    method (the actor's, with its own arguments) calls :meth:`_bind_once`.
    """

    KIND: ClassVar[str] = "actor"
    config: C | None = None

    def build_name(self) -> str:
        """The actor's name in its build (``build:{id}:team:{sid}`` …), its alias when it came from a pool."""
        return self._bound().name

    def _bind(self, config: Any, *handles: Any) -> None:
        """Take the validated ``config`` and the handles the actor works with (no I/O)."""
        raise NotImplementedError

    def _bind_once(self, config: Any, *handles: Any) -> str:
        """Bind a warm actor (once); returns its build name.

        Raises:
            InvalidInputError: ``config`` is invalid, or the actor is already bound.
        """
        if self.config is not None:
            raise InvalidInputError(f"{self.KIND} {self.build_name()} is already bound", field="config")
        self._bind(config, *handles)
        return self.build_name()

    def _bound(self) -> C:
        if self.config is None:
            raise InvalidInputError(
                f"this {self.KIND} is warm and unbound: call bind(config, proxy) first", field="config"
            )
        return self.config

    async def ping(self) -> str:
        """The actor's build name once bound; ``""`` while it waits warm in a pool."""
        return self.build_name() if self.config is not None else ""


class WarmSource(Protocol):
    """Where a build's ports take warm actors from (Control's pools, or a driver's own in the bench)."""

    async def take(self, kind: str, count: int = 1) -> list[Warm]:
        """Up to ``count`` warm, unbound actors of ``kind`` (fewer, or none, when the pool is short)."""
        ...


# --- aliases ------------------------------------------------------------------------------------


def alias_path(kind: str, name: str) -> Path:
    """The file that maps the build name ``name`` of a ``kind`` actor to its actor's name."""
    return state_dir(f"{_DIRS.get(kind, kind)}/aliases") / (file_stem(name) + ".json")


def set_alias(kind: str, name: str, actor: str) -> None:
    """Record that the ``kind`` actor known as ``name`` is the actor called ``actor``."""
    if actor != name:
        alias_path(kind, name).write_text(json.dumps({"actor": actor}))
    else:
        forget_alias(kind, name)


def forget_alias(kind: str, name: str) -> None:
    alias_path(kind, name).unlink(missing_ok=True)


def resolve(kind: str, name: str) -> str:
    """The actor name behind the build name ``name`` (``name`` itself when it has no alias)."""
    with contextlib.suppress(FileNotFoundError, ValueError, KeyError):
        return str(json.loads(alias_path(kind, name).read_text())["actor"])
    return name


def named_actor(kind: str, name: str) -> Any:
    """The handle of the ``kind`` actor known as ``name``, pooled or cold; ValueError when there is none."""
    return handles.get(resolve(kind, name))


async def bind_warm(kind: str, warm: Warm, config: BaseModel, name: str, *handles_: Any) -> Any:
    """Bind the warm ``kind`` actor ``warm`` (``bind(config, *handles_)``) and alias it ``name``; returns its handle."""
    actor, handle = warm
    await handle.bind.remote(config.model_dump(mode="json"), *handles_)
    set_alias(kind, name, actor)
    return handle


async def take_bound(source: WarmSource | None, kind: str, bind: Callable[[Warm], Awaitable[Any]]) -> Any | None:
    """A warm ``kind`` actor from ``source`` bound by ``bind``; None when the pool had none (or it died warm).

    The caller starts one cold when this answers None.
    """
    for warm in await source.take(kind, 1) if source is not None else []:
        try:
            return await bind(warm)
        except handles.RayActorError:  # died while warm: the caller starts one cold
            logger.warning("warm %s %s is dead; starting one cold", kind, warm[0])
    return None


class ControlWarmSource:
    """A build's way to the Control actor's pools; an empty answer means "start it cold".

    Args:
        backend: The build's backend (warm proxies of another backend are not handed out).
        timeout_s: How long a take may wait for Control before the build goes cold.
    """

    def __init__(self, backend: dict[str, Any], *, timeout_s: float = 5.0) -> None:
        self.backend = dict(backend)
        self.timeout_s = timeout_s
        self._control: Any = None

    async def take(self, kind: str, count: int = 1) -> list[Warm]:
        if count <= 0:
            return []
        try:
            if self._control is None:
                self._control = handles.get(handles.CONTROL_NAME)
            taken = await asyncio.wait_for(self._control.take_warm.remote(kind, count, self.backend), self.timeout_s)
            return [(str(name), handle) for name, handle in taken]
        except Exception:  # noqa: BLE001 - no Control, or it is busy or restarting: cold actors do the job
            self._control = None
            logger.debug("no warm %s from control; starting cold", kind, exc_info=True)
            return []


def aliased(kind: str, prefix: str) -> list[str]:
    """The build names of ``kind`` starting with ``prefix`` that have an alias (e.g. a slot's agents)."""
    stem = file_stem(prefix)
    folder = state_dir(f"{_DIRS.get(kind, kind)}/aliases")
    names = []
    for path in folder.glob("*.json"):
        if path.stem.startswith(stem):
            names.append(path.stem)
    return sorted(names)


# --- the pool -----------------------------------------------------------------------------------


class _PoolState(BaseModel):
    """The warm actors of a persistent pool (so a restarted owner adopts them instead of leaking them)."""

    model_config = ConfigDict(extra="forbid")

    warm: list[str] = Field(default_factory=list)
    """Generic names of the started, never handed out actors."""


async def _ping(handle: Any) -> Any:
    return await handle.ping.remote()


async def _kill(handle: Any, name: str) -> None:
    handles.kill(handle)


class WarmPool:
    """Started, unbound actors of one kind, refilled in the background as they are taken.

    Args:
        kind: ``proxy``, ``team``, ``agent`` or ``swarm`` (names and alias directories).
        start: Starts a detached actor under the name it is given; returns its handle (no I/O wait).
        size: Actors kept warm.
        ready: Awaited on a new actor before it counts as warm (default: its ``ping``).
        stop: Ends a warm actor that was never handed out (default: :func:`actors.handles.kill`).
        persist: Keep the warm names in ``KRIPTIK_HOME/pools/{kind}.json`` and adopt the live ones
            on the first :meth:`fill` (a restarted owner, e.g. the Control actor).
        refill_delay_s: How long a refill waits after a take. A build takes its whole fleet in a
            burst; starting replacements at once (0.4–0.8 s of CPU each) would slow the very binds
            the pool exists to make fast, so the refill starts after the burst.
        pace: Held around each start of a background refill. Pools that share one
            ``Semaphore(1)`` refill one actor at a time between them, so a refill never takes
            every core from the builds running meanwhile (a coordinator coming back after a
            crash starts its own worker then). The first :meth:`fill` is not paced.
        refill: Top the pool up after takes. False fills it once: for one build (``kriptik demo``),
            where replacing what the build took would only compete with the build for the cores.
    """

    def __init__(
        self,
        kind: str,
        start: Callable[[str], Any],
        *,
        size: int,
        ready: Callable[[Any], Awaitable[Any]] = _ping,
        stop: Callable[[Any, str], Awaitable[None]] = _kill,
        persist: bool = False,
        refill_delay_s: float = 1.0,
        pace: asyncio.Semaphore | None = None,
        refill: bool = True,
    ) -> None:
        if size < 0:
            raise InvalidInputError(f"{kind} pool size must be >= 0", field="size")
        self.kind = kind
        self.size = size
        self._start = start
        self._ready = ready
        self._stop = stop
        self._state = StateFile("pools", kind, _PoolState) if persist else None
        self._adopted = not persist
        self._warm: list[Warm] = []
        self._filling: asyncio.Task[None] | None = None
        self._closed = False
        self._refill_delay_s = refill_delay_s
        self._pace = pace
        self._refills = refill

    def __len__(self) -> int:
        return len(self._warm)

    def names(self) -> list[str]:
        return [name for name, _ in self._warm]

    async def _start_one(self) -> Warm:
        name = handles.warm_name(self.kind)
        handle = self._start(name)
        try:
            await self._ready(handle)
        except BaseException:
            await self._stop_warm(handle, name)
            raise
        return name, handle

    async def _stop_warm(self, handle: Any, name: str) -> None:
        """Stop a warm actor of this pool; a failure is logged (the actor may be dead already)."""
        try:
            await self._stop(handle, name)
        except Exception as exc:  # noqa: BLE001 - one actor that will not stop must not stop the pool
            logger.warning("warm %s pool: stopping %s failed: %r", self.kind, name, exc)

    async def _start_paced(self) -> Warm:
        if self._pace is None:
            return await self._start_one()
        async with self._pace:
            if self._closed:
                raise RuntimeError(f"warm {self.kind} pool closed")
            return await self._start_one()

    async def _adopt(self) -> None:
        """Take back the warm actors a previous incarnation of the owner left (those still answering)."""
        self._adopted = True
        assert self._state is not None
        try:
            names = self._state.load().warm
        except (FileNotFoundError, ValueError):  # nothing saved (or unreadable): nothing to adopt
            return
        for name in names:
            try:
                handle = handles.get(name)
                await asyncio.wait_for(self._ready(handle), 10)
            except Exception as exc:  # noqa: BLE001 - gone or broken: a fresh one replaces it
                logger.info("warm %s pool: not adopting %s: %r", self.kind, name, exc)
                continue
            if len(self._warm) < self.size:
                self._warm.append((name, handle))
            else:
                await self._stop_warm(handle, name)

    def _save(self) -> None:
        if self._state is not None:
            self._state.save(_PoolState(warm=self.names()))

    async def fill(self, *, paced: bool = False) -> None:
        """Start actors until ``size`` are warm; a start that fails is logged and skipped.

        Args:
            paced: Each start holds the pool's ``pace`` semaphore (background refills);
                otherwise they all start at once.
        """
        if self._closed:
            return
        if not self._adopted:
            await self._adopt()
        missing = self.size - len(self._warm)
        if missing <= 0:
            self._save()
            return
        start = self._start_paced if paced else self._start_one
        started = await asyncio.gather(*(start() for _ in range(missing)), return_exceptions=True)
        for item in started:
            if isinstance(item, BaseException):
                if not self._closed:
                    logger.warning("warm %s pool: a start failed: %s", self.kind, item)
            elif self._closed:
                await self._stop_warm(item[1], item[0])
            else:
                self._warm.append(item)
        self._save()

    def refill_soon(self) -> None:
        """Top the pool up in the background (one fill at a time; never when the pool does not refill)."""
        if self._closed or not self._refills:
            return
        if self._filling is None or self._filling.done():
            self._filling = asyncio.get_running_loop().create_task(self._refill())

    async def _refill(self) -> None:
        await asyncio.sleep(self._refill_delay_s)
        await self.fill(paced=True)

    def take(self) -> Warm | None:
        """A warm, unbound actor (the caller binds it and owns it from then on), or None; refills."""
        self.refill_soon()
        if not self._warm:
            return None
        taken = self._warm.pop(0)
        self._save()
        return taken

    def take_many(self, count: int) -> list[Warm]:
        """Up to ``count`` warm actors (fewer when the pool is short); refills."""
        taken = [self._warm.pop(0) for _ in range(min(count, len(self._warm)))]
        self.refill_soon()
        if taken:
            self._save()
        return taken

    async def close(self) -> None:
        """Stop the refill and every warm actor never handed out."""
        self._closed = True
        if self._filling is not None:
            self._filling.cancel()
            try:
                await self._filling
            except asyncio.CancelledError:
                pass
            except Exception as exc:  # noqa: BLE001 - closing goes on: the warm actors must still go
                logger.warning("warm %s pool: the last refill failed: %r", self.kind, exc)
        warm, self._warm = self._warm, []
        for name, handle in warm:
            await self._stop_warm(handle, name)
        if self._state is not None:
            self._state.remove()
