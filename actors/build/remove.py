"""Deleting an ended build (``DELETE /api/builds/{id}``, ``kriptik rm``): what it runs, then what it left.

In order, so that a delete that fails half way can simply be asked again:

1. its build-level actors close what they hold and go: the coordinator closes the preview (its
   sandbox), the gate (the main-test sandbox) and the judge, then is killed; when the coordinator
   is gone already (a restart), those three are closed directly;
2. every other actor still known by one of the build's names is ended: a proxy terminates its
   sandbox first (a take-control copy's too), teams, agents, swarms and hubs are killed; pooled
   actors are found through their aliases;
3. its keys on the bus (event log, channels, unified context);
4. its files under ``KRIPTIK_HOME``: the coordinator config, every actor state and alias file
   named after the build, the gate's repository and the preview's screenshots.

The store's rows are Control's to delete, after this.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
from pathlib import Path

import ray

from actors import handles
from actors.build.actor import close_build_actors, stop_coordinator
from actors.handles import coordinator_name
from actors.pools.proxies import release
from actors.pools.warm import aliased, resolve
from coordinator.bus.context_bus import BusConfig, ContextBus
from sandbox_agents.errors import InvalidInputError
from sandbox_agents.settings import get_settings

logger = logging.getLogger(__name__)

#: A build id as Control makes them; anything else never reaches a file name or a key pattern.
_BUILD_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
#: The kind of a build's actor from the part of its name after ``build:{id}:``.
_KINDS = {"sbx": "proxy", "team": "team", "agent": "agent", "swarm": "swarm"}


async def remove_build(build_id: str, *, redis_url: str, bus_prefix: str, home: Path | None = None) -> None:
    """End and remove everything of ``build_id`` but its store rows (see the module's docstring).

    Raises:
        InvalidInputError: ``build_id`` is not a build id.
    """
    if not _BUILD_ID.match(build_id):
        raise InvalidInputError(f"not a build id: {build_id!r}", field="build_id")
    await _end_actors(build_id)
    bus = ContextBus(redis_url, BusConfig(prefix=bus_prefix), sender=f"delete:{build_id}")
    try:
        await bus.delete_build(build_id)
    finally:
        await bus.aclose()
    removed = remove_files(build_id, home or get_settings().home())
    logger.info("build %s: actors ended, bus keys and %d file(s) removed", build_id, removed)


async def _end_actors(build_id: str) -> None:
    coordinator = handles.find(coordinator_name(build_id))
    if coordinator is not None:
        await stop_coordinator(coordinator)  # it closes the gate, the preview and the judge first
    else:
        await close_build_actors(build_id, timeout_s=60)
    ended = []
    for kind, name in actors_of(build_id):
        actor = resolve(kind, name) if kind in _KINDS.values() else name  # a pooled one's own name
        handle = handles.find(actor)
        if handle is None:
            continue
        if kind == "proxy":
            await release(handle, name)  # its sandbox first
        else:
            handles.kill(handle)
        ended.append(actor)
    ended.append(coordinator_name(build_id))
    await asyncio.gather(*(handles.wait_gone(name) for name in ended))


def actors_of(build_id: str) -> list[tuple[str, str]]:
    """``(kind, build name)`` of every actor of the build still named or aliased, but the coordinator."""
    prefix = f"{coordinator_name(build_id)}:"
    found: set[tuple[str, str]] = set()
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry.get("namespace") != handles.NAMESPACE or not entry["name"].startswith(prefix):
            continue
        name = entry["name"]
        found.add((_KINDS.get(name[len(prefix) :].split(":", 1)[0], "build"), name))
    for kind in _KINDS.values():
        found.update((kind, name) for name in aliased(kind, prefix))
    return sorted(found)


def remove_files(build_id: str, home: Path) -> int:
    """Remove the build's files and directories one and two levels under ``home``; returns how many.

    A build's entry is named after its id (``{id}.json``, ``{id}.git``, ``{id}/``) or after one of
    its actors (``build:{id}.json``, ``build:{id}:….json``); nothing else is touched.
    """
    removed = 0
    for folder in [p for p in home.iterdir() if p.is_dir() and not p.is_symlink()]:
        for entry in [*folder.iterdir(), *_children(folder / "aliases")]:
            if not _of_build(entry.name, build_id):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink(missing_ok=True)
            removed += 1
    return removed


def _children(folder: Path) -> list[Path]:
    return list(folder.iterdir()) if folder.is_dir() and not folder.is_symlink() else []


def _of_build(name: str, build_id: str) -> bool:
    stem = name.split(".", 1)[0] if not name.startswith("build:") else name.removesuffix(".json")
    return stem == build_id or stem == f"build:{build_id}" or stem.startswith(f"build:{build_id}:")
