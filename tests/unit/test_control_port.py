"""RayControlPort over a stand-in for the Control actor's handle (no Ray): typed calls, models out, errors in.

The stand-in answers as the Control actor does, in JSON form (``ControlActor`` turns the views of
``coordinator.api_models`` into dicts to cross Ray); the port hands the API the models.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from coordinator.api_models import (
    BudgetView,
    BuildRequest,
    BuildStatus,
    BuildSummary,
    PreviewView,
    SandboxView,
    TakeControlView,
)
from sandbox_agents.errors import BuildNotFoundError
from serve.control_port import ControlPort, ControlUnavailableError, MemoryControl, RayControlPort


class _Method:
    def __init__(self, call: Callable[..., Awaitable[Any]]) -> None:
        self.call = call

    def remote(self, *args: Any) -> Awaitable[Any]:
        return self.call(*args)


class JsonControl:
    """A Control actor's handle as the port sees it: ``handle.method.remote(...)`` answers JSON, like ControlActor."""

    def __init__(self) -> None:
        self.inner = MemoryControl()
        self.calls: list[str] = []

    def __getattr__(self, method: str) -> _Method:
        async def call(*args: Any) -> Any:
            self.calls.append(method)
            if method == "cancel":  # Control answers a cancel with its progress word, not a view
                await self.inner.cancel(*args)
                return {"id": args[1], "status": "cancelling"}
            if method == "resume":
                return {"id": args[1], "status": (await self.inner.resume(*args)).status}
            return _json(await getattr(self.inner, method)(*args))

        return _Method(call)


def _json(value: Any) -> Any:
    if isinstance(value, list):
        return [_json(v) for v in value]
    return value.model_dump(mode="json") if hasattr(value, "model_dump") else value


async def test_the_ray_port_answers_the_api_models_from_the_actors_json() -> None:
    actor = JsonControl()
    port = RayControlPort(actor)
    assert isinstance(port, ControlPort)
    build = await port.submit("alice", BuildRequest(prompt="a todo app"))
    await actor.inner.set_status(build, preview={"url": "http://p/", "components": {}}, sandboxes=[{"id": "s1"}])
    assert isinstance(status := await port.status("alice", build), BuildStatus) and status.status == "queued"
    assert [type(s) for s in await port.list_builds("alice")] == [BuildSummary]
    assert await port.preview("alice", build) == PreviewView(url="http://p/")
    assert await port.sandboxes("alice", build) == [SandboxView(id="s1")]
    assert await port.take_control("alice", build) == TakeControlView(url="http://p/")
    assert isinstance(await port.raise_budget("alice", build, 1.0), BudgetView)
    assert (await port.resume("alice", build)).status == "running"


async def test_a_cancel_through_the_ray_port_answers_the_builds_status() -> None:
    actor = JsonControl()
    port = RayControlPort(actor)
    build = await port.submit("alice", BuildRequest(prompt="a todo app"))
    answer = await port.cancel("alice", build)
    assert isinstance(answer, BuildStatus) and answer.status == "cancelled" and answer.id == build
    assert actor.calls[-2:] == ["cancel", "status"]


async def test_an_error_raised_in_the_actor_reaches_the_api_as_ours() -> None:
    from ray.exceptions import RayTaskError

    class Failing:
        def __getattr__(self, method: str) -> _Method:
            async def call(*args: Any) -> Any:
                raise RayTaskError(method, "traceback", BuildNotFoundError("no build 'b1'"))

            return _Method(call)

    with pytest.raises(BuildNotFoundError):
        await RayControlPort(Failing()).status("alice", "b1")


async def test_a_control_that_does_not_answer_in_time_is_unavailable() -> None:
    import asyncio

    class Silent:
        def __getattr__(self, method: str) -> _Method:
            return _Method(lambda *args: asyncio.Event().wait())

    with pytest.raises(ControlUnavailableError, match="did not answer status"):
        await RayControlPort(Silent(), timeout_s=0.01).status("alice", "b1")
