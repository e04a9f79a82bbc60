"""Every Ray call about actor handles, in one place: names, start, get, stop, readiness.

The actors of a build find each other by name (``build:{id}`` and the names under it) in one namespace,
``kriptik``; the functions below are the only ones that spell those names, that pass Ray the
options of a named, detached or restartable actor, that look an actor up, and that kill one.
The actor modules describe their own class (:func:`actor_class`) and call these; so does Serve.

* **start** — :func:`start`: named in ``kriptik``; detached (it outlives its starter) unless
  asked otherwise; ``get_if_exists`` for the singletons; custom ``resources`` or a ``node_id``
  (hard node affinity: the per-node hubs) for placement; :func:`node_id`/:func:`node_ids` name the nodes.
  Restartable (``max_restarts=-1``) is a property of the class, given to :func:`actor_class`.
* **get** — :func:`get` (``ValueError`` when there is none, as ``ray.get_actor``) and
  :func:`find` (``None`` instead).
* **stop** — :func:`stop`: the actor's own closing calls first (each failure is logged, none
  prevents the kill), then ``ray.kill`` with no restart; :func:`kill` without closing calls;
  :func:`restart` to have Ray re-create a wedged restartable actor.
* **readiness** — :func:`answers` (does it answer ``ping`` in time) and :func:`wait_gone`
  (``ray.kill`` is asynchronous: a name is free only once its actor is dead).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import ray
from ray.exceptions import ActorDiedError, RayActorError, RayError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

logger = logging.getLogger(__name__)

__all__ = [
    "CONTROL_NAME",
    "MAIN_TEST_SID",
    "MODAL_PACE_NAME",
    "NAMESPACE",
    "PREVIEW_SID",
    "ActorDiedError",
    "RayActorError",
    "RayError",
    "actor_class",
    "agent_name",
    "answers",
    "coordinator_name",
    "current",
    "find",
    "gate_name",
    "get",
    "hub_name",
    "judge_name",
    "kill",
    "node_id",
    "node_ids",
    "preview_name",
    "proxy_name",
    "restart",
    "start",
    "stop",
    "swarm_name",
    "team_name",
    "wait_gone",
    "warm_name",
]

NAMESPACE = "kriptik"
"""The Ray namespace of every actor of ours (a driver must ``ray.init(namespace=NAMESPACE)`` to see them)."""

# --- names ---------------------------------------------------------------------------------------

CONTROL_NAME = "control"
"""The one Control actor of the cluster."""
MAIN_TEST_SID = "main-test"
"""The sandbox id of the merge gate's main-test sandbox within its build."""
PREVIEW_SID = "preview"
"""The sandbox id of the preview's sandbox within its build."""
MODAL_PACE_NAME = "modal-create-pace"
"""The one bucket of the cluster that paces Modal sandbox creates (:mod:`actors.modal_pace`)."""


def coordinator_name(build_id: str) -> str:
    """The BuildCoordinator of a build: ``build:{id}``."""
    return f"build:{build_id}"


def proxy_name(build_id: str, sid: str) -> str:
    """The SandboxProxy of a build's sandbox: ``build:{id}:sbx:{sid}``."""
    return f"build:{build_id}:sbx:{sid}"


def agent_name(build_id: str, sid: str, index: int) -> str:
    """Agent ``n`` of a sandbox's team: ``build:{id}:agent:{sid}:{n}``."""
    return f"build:{build_id}:agent:{sid}:{index}"


def agent_component(name: str) -> str | None:
    """The component whose team the agent named ``name`` (:func:`agent_name`) belongs to; None for any other name."""
    parts = name.split(":")
    if len(parts) != 5 or parts[0] != "build" or parts[2] != "agent" or not parts[3]:
        return None
    return parts[3].split("~", 1)[0]  # a tournament candidate's slot is ``{component}~{strategy}``


def team_name(build_id: str, sid: str) -> str:
    """The SandboxTeam of a sandbox: ``build:{id}:team:{sid}``."""
    return f"build:{build_id}:team:{sid}"


def swarm_name(build_id: str, sid: str) -> str:
    """The verification Swarm of a slot: ``build:{id}:swarm:{sid}``."""
    return f"build:{build_id}:swarm:{sid}"


def judge_name(build_id: str) -> str:
    """The tournament Judge of a build: ``build:{id}:judge``."""
    return f"build:{build_id}:judge"


def gate_name(build_id: str) -> str:
    """The MergeGate of a build: ``build:{id}:gate``."""
    return f"build:{build_id}:gate"


def preview_name(build_id: str) -> str:
    """The Preview of a build: ``build:{id}:preview``."""
    return f"build:{build_id}:preview"


def hub_name(build_id: str, node: str) -> str:
    """The ContextHub of a build on one node (its agents' bus subscriber): ``build:{id}:hub:{node}``."""
    return f"build:{build_id}:hub:{node}"


def warm_name(kind: str) -> str:
    """A generic name for a warm pooled actor of ``kind``: ``kriptik:{kind}:{uuid}`` (a name cannot change later)."""
    return f"kriptik:{kind}:{uuid.uuid4().hex[:12]}"


# --- start ---------------------------------------------------------------------------------------


def actor_class(cls: type, *, restartable: bool, max_concurrency: int) -> Any:
    """``cls`` as a Ray actor class with our options: no CPU reserved, no task retries.

    Args:
        cls: The actor's plain class (unit tests construct it directly).
        restartable: Ray re-creates the actor after a crash (``max_restarts=-1``); its state must
            then come back from files or the store. Otherwise it dies for good (``max_restarts=0``).
        max_concurrency: Calls the (async) actor serves at once.
    """
    return ray.remote(  # type: ignore[call-overload]
        num_cpus=0, max_restarts=-1 if restartable else 0, max_task_retries=0, max_concurrency=max_concurrency
    )(cls)


def start(
    cls: Any,
    name: str,
    *args: Any,
    detached: bool = True,
    get_if_exists: bool = False,
    resources: dict[str, float] | None = None,
    node_id: str | None = None,
) -> Any:
    """Start an actor of ``cls`` (from :func:`actor_class`) named ``name`` in namespace ``kriptik``.

    Args:
        cls: The Ray actor class.
        name: Its name; Ray refuses a second live actor of that name (``ValueError``) unless
            ``get_if_exists``.
        *args: The constructor's arguments.
        detached: Outlive the process that starts it (``lifetime="detached"``); a non-detached
            named actor dies with its owner.
        get_if_exists: Answer the live actor of that name instead of refusing (the singletons).
        resources: Custom resources it needs (placement on a kind of host).
        node_id: The node it must run on (hard affinity: it is not placed, nor restarted, elsewhere).

    Returns:
        The actor's handle (the constructor runs in the background).
    """
    options: dict[str, Any] = {"name": name, "namespace": NAMESPACE}
    if detached:
        options["lifetime"] = "detached"
    if get_if_exists:
        options["get_if_exists"] = True
    if resources:
        options["resources"] = resources
    if node_id is not None:
        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)
    return cls.options(**options).remote(*args)


# --- get -----------------------------------------------------------------------------------------


def get(name: str, *, namespace: str = NAMESPACE) -> Any:
    """The handle of the live actor called ``name``.

    Raises:
        ValueError: No actor has that name (never started, or dead for good).
    """
    return ray.get_actor(name, namespace=namespace)


def find(name: str) -> Any | None:
    """The handle of the live actor called ``name``, or None."""
    try:
        return get(name)
    except ValueError:
        return None


def current() -> Any:
    """The handle of the actor this code runs in (to hand itself to the actors it starts)."""
    return ray.get_runtime_context().current_actor


def node_id() -> str:
    """The id of the Ray node this code runs on (hex)."""
    return str(ray.get_runtime_context().get_node_id())


def node_ids() -> list[str]:
    """The ids of the cluster's live nodes."""
    return [str(node["NodeID"]) for node in ray.nodes() if node.get("Alive")]  # type: ignore[no-untyped-call]


# --- stop ----------------------------------------------------------------------------------------


def kill(handle: Any) -> None:
    """Kill an actor for good (no restart); asynchronous: see :func:`wait_gone`."""
    ray.kill(handle, no_restart=True)


def restart(handle: Any) -> None:
    """Kill a restartable actor so that Ray re-creates it (a wedged one)."""
    ray.kill(handle, no_restart=False)


async def stop(
    handle: Any,
    *closing: Callable[[], Awaitable[Any]],
    name: str | None = None,
    timeout_s: float | None = None,
) -> None:
    """Let an actor close what it holds, then kill it for good.

    Args:
        handle: The actor.
        *closing: Its closing calls in order (``handle.close.remote``…). One that fails or
            times out is logged with the actor's name and does not prevent the next or the kill.
        name: The actor's name, for the log.
        timeout_s: The longest wait for each closing call; None waits as long as it takes.
    """
    for close in closing:
        try:
            await asyncio.wait_for(close(), timeout_s)
        except RayActorError as exc:  # dead (or restarting): what it held may outlive it (a sandbox, to its TTL)
            logger.warning("stopping %s: it died before %s: %s", name or handle, _call_name(close), exc)
        except Exception as exc:  # noqa: BLE001 - the kill below still ends the actor
            logger.warning("stopping %s: %s failed: %r", name or handle, _call_name(close), exc)
    kill(handle)


def _call_name(call: Callable[..., Any]) -> str:
    method = getattr(call, "__self__", None)
    return str(getattr(method, "_method_name", None) or getattr(call, "__qualname__", call))


# --- readiness -----------------------------------------------------------------------------------


async def answers(handle: Any, timeout_s: float = 10.0) -> bool:
    """True when the actor answers ``ping`` within ``timeout_s`` (dead, dying or wedged: False)."""
    try:
        await asyncio.wait_for(handle.ping.remote(), timeout_s)
    except (RayError, TimeoutError):
        return False
    return True


async def wait_gone(name: str, *, attempts: int = 50, every_s: float = 0.1) -> bool:
    """Poll until no actor is called ``name``; False if it outlived ``attempts`` polls."""
    for _ in range(attempts):
        if find(name) is None:
            return True
        await asyncio.sleep(every_s)
    return False
