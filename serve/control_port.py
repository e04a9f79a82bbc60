"""What the HTTP layer needs from the Control actor, as a small protocol (a *port*).

The API codes against :class:`ControlPort` only, and gets the models of
:mod:`coordinator.api_models` back. In production :class:`RayControlPort` adapts the named
``control`` actor (namespace ``kriptik``); tests, the benchmark and UI work use
:class:`MemoryControl`, an in-memory double that keeps builds in dicts and runs nothing. Every
method is scoped to a user: another user's build does not exist for you
(:class:`BuildNotFoundError`, a 404), so ids cannot be probed.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel

from coordinator.api_models import (
    FINAL_STATUSES,
    BudgetView,
    BuildRequest,
    BuildStatus,
    BuildSummary,
    NotifySettings,
    NotifyView,
    PreviewView,
    SandboxView,
    ScreenshotView,
    TakeControlView,
)
from coordinator.merge import browse
from coordinator.merge.browse import NotInMainError
from coordinator.merge.host_repo import HostGitRepo
from coordinator.screenshots import ScreenshotNotFoundError, check_name
from coordinator.webhooks import check_url
from sandbox_agents.errors import (
    BudgetExceededError,
    BuildActiveError,
    BuildNotFoundError,
    InvalidInputError,
    KriptikError,
)


class ControlUnavailableError(KriptikError, ConnectionError):
    """The Control actor cannot be reached (not started, dead, restarting or too slow); a 503."""


@runtime_checkable
class ControlPort(Protocol):
    """The Control actor as the API sees it: requests in, the views of ``coordinator.api_models`` out.

    Every method raises :class:`BuildNotFoundError` for an unknown build or another user's,
    :class:`InvalidInputError` for bad input and :class:`BudgetExceededError` when spending
    is refused.
    """

    async def submit(self, user_id: str, request: BuildRequest) -> str: ...
    async def status(self, user_id: str, build_id: str) -> BuildStatus: ...
    async def list_builds(self, user_id: str) -> list[BuildSummary]: ...
    async def cancel(self, user_id: str, build_id: str) -> BuildStatus: ...
    async def resume(self, user_id: str, build_id: str) -> BuildStatus: ...
    async def raise_budget(self, user_id: str, build_id: str, usd: float) -> BudgetView: ...
    async def preview(self, user_id: str, build_id: str) -> PreviewView: ...
    async def screenshots(self, user_id: str, build_id: str) -> list[ScreenshotView]: ...
    async def screenshot(self, user_id: str, build_id: str, name: str) -> bytes: ...
    async def sandboxes(self, user_id: str, build_id: str) -> list[SandboxView]: ...
    async def take_control(self, user_id: str, build_id: str) -> TakeControlView: ...
    async def delete(self, user_id: str, build_id: str) -> None:
        """Delete an ended build and everything it holds; BuildActiveError while it has not ended."""
        ...

    async def main_read(self, user_id: str, build_id: str, what: str, arg: str = "") -> dict[str, Any]:
        """Main's ``tree``, a ``file`` (``arg``: its path) or a merge's ``diff`` (``arg``: the commit), as the
        JSON of ``MainTreeView``, ``MainFileView`` or ``MergeDiffView``; NotInMainError when absent."""
        ...

    async def notify_defaults(self, user_id: str) -> NotifyView: ...
    async def set_notify_defaults(self, user_id: str, settings: NotifySettings) -> NotifyView: ...
    async def clear_notify_defaults(self, user_id: str) -> None: ...
    async def ping(self, timeout_s: float = 2.0) -> None:
        """Raise ControlUnavailableError unless the control plane answers within ``timeout_s`` (health)."""
        ...


class RayControlPort:
    """:class:`ControlPort` over the Control actor's handle; every Ray call of the API is here.

    Each method calls the actor's method of the same name and validates its answer (the actor
    answers in JSON form) into the API's model.

    Args:
        handle: the Control actor's handle; looked up by name at the first call when ``None``
            (so the API can start before the Control actor does and answer 503 meanwhile).
        name: the actor's name (the cluster's ``control`` when ``None``).
        timeout_s: longest wait for one call before :class:`ControlUnavailableError`.
    """

    def __init__(self, handle: Any = None, *, name: str | None = None, timeout_s: float = 30.0) -> None:
        self._handle = handle
        self.name = name
        self.timeout_s = timeout_s

    def _actor(self) -> Any:
        if self._handle is None:
            from actors import handles

            name = self.name or handles.CONTROL_NAME
            try:
                self._handle = handles.get(name)
            except ValueError as exc:
                raise ControlUnavailableError(f"no actor {name!r} in namespace {handles.NAMESPACE!r}") from exc
        return self._handle

    async def _answer(self, call: Callable[[Any], Awaitable[Any]], what: str) -> Any:
        """The answer of ``call(actor)`` (one ``actor.method.remote(...)``), with Ray's errors translated.

        Raises:
            KriptikError: the one the actor raised, with its fields (not Ray's wrapper).
            ControlUnavailableError: the actor is missing, dead, restarting, or did not answer in time.
        """
        import ray.exceptions as rex

        try:
            ref = call(self._actor())
            async with asyncio.timeout(self.timeout_s):  # no extra task, unlike wait_for
                return await ref
        except rex.RayTaskError as exc:
            cause = exc.cause
            if isinstance(cause, KriptikError):
                raise cause from None  # our own error, with its fields, not Ray's wrapper
            raise
        except rex.RayActorError as exc:  # ActorUnavailableError too
            self._handle = None  # look it up again: a restarted actor may be a new handle
            raise ControlUnavailableError(f"control actor unavailable: {exc}") from exc
        except TimeoutError as exc:
            raise ControlUnavailableError(f"control actor did not answer {what} in {self.timeout_s}s") from exc

    async def submit(self, user_id: str, request: BuildRequest) -> str:
        return str(await self._answer(lambda control: control.submit.remote(user_id, request), "submit"))

    async def status(self, user_id: str, build_id: str) -> BuildStatus:
        answer = await self._answer(lambda control: control.status.remote(user_id, build_id), "status")
        return BuildStatus.model_validate(answer)

    async def list_builds(self, user_id: str) -> list[BuildSummary]:
        answer = await self._answer(lambda control: control.list_builds.remote(user_id), "list_builds")
        return [BuildSummary.model_validate(build) for build in answer]

    async def cancel(self, user_id: str, build_id: str) -> BuildStatus:
        """Cancel, then the build's status (Control answers a cancel with its progress word, ``cancelling``)."""
        await self._answer(lambda control: control.cancel.remote(user_id, build_id), "cancel")
        return await self.status(user_id, build_id)

    async def delete(self, user_id: str, build_id: str) -> None:
        await self._answer(lambda control: control.delete.remote(user_id, build_id), "delete")

    async def resume(self, user_id: str, build_id: str) -> BuildStatus:
        """Resume, then the build's status (Control answers a resume with the coordinator's word)."""
        await self._answer(lambda control: control.resume.remote(user_id, build_id), "resume")
        return await self.status(user_id, build_id)

    async def raise_budget(self, user_id: str, build_id: str, usd: float) -> BudgetView:
        answer = await self._answer(lambda control: control.raise_budget.remote(user_id, build_id, usd), "raise_budget")
        return BudgetView.model_validate(answer)

    async def preview(self, user_id: str, build_id: str) -> PreviewView:
        answer = await self._answer(lambda control: control.preview.remote(user_id, build_id), "preview")
        return PreviewView.model_validate(answer)

    async def screenshots(self, user_id: str, build_id: str) -> list[ScreenshotView]:
        answer = await self._answer(lambda control: control.screenshots.remote(user_id, build_id), "screenshots")
        return [ScreenshotView.model_validate(shot) for shot in answer]

    async def screenshot(self, user_id: str, build_id: str, name: str) -> bytes:
        answer = await self._answer(lambda control: control.screenshot.remote(user_id, build_id, name), "screenshot")
        return bytes(answer)

    async def sandboxes(self, user_id: str, build_id: str) -> list[SandboxView]:
        answer = await self._answer(lambda control: control.sandboxes.remote(user_id, build_id), "sandboxes")
        return [SandboxView.model_validate(sandbox) for sandbox in answer]

    async def take_control(self, user_id: str, build_id: str) -> TakeControlView:
        answer = await self._answer(lambda control: control.take_control.remote(user_id, build_id), "take_control")
        return TakeControlView.model_validate(answer)

    async def main_read(self, user_id: str, build_id: str, what: str, arg: str = "") -> dict[str, Any]:
        return dict(await self._answer(lambda control: control.main_read.remote(user_id, build_id, what, arg), what))

    async def notify_defaults(self, user_id: str) -> NotifyView:
        answer = await self._answer(lambda control: control.notify_defaults.remote(user_id), "notify_defaults")
        return NotifyView.model_validate(answer)

    async def set_notify_defaults(self, user_id: str, settings: NotifySettings) -> NotifyView:
        """The model itself crosses Ray (pickled): its JSON form would mask the secret."""
        answer = await self._answer(
            lambda control: control.set_notify_defaults.remote(user_id, settings), "set_notify_defaults"
        )
        return NotifyView.model_validate(answer)

    async def clear_notify_defaults(self, user_id: str) -> None:
        await self._answer(lambda control: control.clear_notify_defaults.remote(user_id), "clear_notify_defaults")

    async def ping(self, timeout_s: float = 2.0) -> None:
        import ray.exceptions as rex

        try:
            async with asyncio.timeout(timeout_s):
                await self._actor().ping.remote()
        except (rex.RayActorError, TimeoutError) as exc:
            self._handle = None
            raise ControlUnavailableError(f"control actor does not answer: {exc!r}") from exc


class MemoryControl:
    """An in-memory :class:`ControlPort` that runs no builds: for tests, benchmarks and UI work.

    Builds are dicts shaped like ``BuildStatus``; :meth:`set_status` moves one along. It is
    picklable, so it can also be the state of a Ray actor or live inside a Serve replica.
    Webhook destinations are checked as Control checks them (``allow_private_webhooks`` is the
    operator's allowance); nothing is ever sent.
    """

    def __init__(self, *, id_prefix: str = "b", clock: Any = time.time, allow_private_webhooks: bool = False) -> None:
        self.builds: dict[str, dict[str, Any]] = {}
        self.allow_private_webhooks = allow_private_webhooks
        self.notify: dict[str, NotifySettings] = {}
        """User → their notification defaults."""
        self.id_prefix = id_prefix
        self.clock = clock
        self._ids = itertools.count(1)
        self.pngs: dict[str, dict[str, bytes]] = {}
        """Build id → screenshot name → PNG (see :meth:`add_screenshot`)."""
        self.repos: dict[str, HostGitRepo] = {}
        """Build id → its main (see :meth:`attach_main`)."""

    def _own(self, user_id: str, build_id: str) -> dict[str, Any]:
        build = self.builds.get(build_id)
        if build is None or build["user_id"] != user_id:
            raise BuildNotFoundError(f"no build {build_id!r}")
        return build

    async def ping(self, timeout_s: float = 2.0) -> None:
        return None

    async def submit(self, user_id: str, request: BuildRequest | dict[str, Any]) -> str:
        req = BuildRequest.model_validate(request)
        if req.example == "missing":
            raise InvalidInputError("no example called 'missing'", field="example")
        if req.notify is not None:
            check_url(req.notify.url, allow_private=self.allow_private_webhooks, field="notify.url")
        build_id = f"{self.id_prefix}{next(self._ids):06d}"
        title = req.prompt.splitlines()[0][:80] if req.prompt else (req.contract or {}).get("name", req.example or "")
        limit = req.budget_usd or 10.0
        self.builds[build_id] = {
            "id": build_id,
            "user_id": user_id,
            "status": "queued",
            "phase": "intent",
            "title": title,
            "components": [],
            "preview_url": None,
            "main_commit": None,
            "budget": {"limit_usd": limit, "spent_usd": 0.0, "status": "ok"},
            "tournaments": [],
            "merges": [],
            "started_at": self.clock(),
            "finished_at": None,
            "error": None,
            "sandboxes": [],
            "preview": {"url": None, "components": {}},
            "screenshots": [],
        }
        self.pngs[build_id] = {}
        return build_id

    async def status(self, user_id: str, build_id: str) -> BuildStatus:
        return BuildStatus.model_validate(self._own(user_id, build_id))  # its other keys are ignored

    async def list_builds(self, user_id: str) -> list[BuildSummary]:
        mine = [b for b in self.builds.values() if b["user_id"] == user_id]
        return [BuildSummary.model_validate(b) for b in sorted(mine, key=lambda b: b["started_at"], reverse=True)]

    async def cancel(self, user_id: str, build_id: str) -> BuildStatus:
        build = self._own(user_id, build_id)
        if build["status"] not in FINAL_STATUSES:
            build.update(status="cancelled", finished_at=self.clock())
        return await self.status(user_id, build_id)

    async def delete(self, user_id: str, build_id: str) -> None:
        build = self._own(user_id, build_id)
        if build["status"] not in FINAL_STATUSES:
            raise BuildActiveError(f"build {build_id} is {build['status']}; cancel it before deleting it")
        for table in (self.builds, self.pngs, self.repos):
            table.pop(build_id, None)

    async def resume(self, user_id: str, build_id: str) -> BuildStatus:
        build = self._own(user_id, build_id)
        if build["status"] in FINAL_STATUSES:
            raise InvalidInputError(f"build {build_id} is {build['status']} and cannot resume", field="build_id")
        budget = build["budget"]
        if budget["spent_usd"] >= budget["limit_usd"]:
            raise BudgetExceededError(f"build {build_id} has spent its ${budget['limit_usd']:.2f}")
        build["status"] = "running"
        return await self.status(user_id, build_id)

    async def raise_budget(self, user_id: str, build_id: str, usd: float) -> BudgetView:
        build = self._own(user_id, build_id)
        if usd <= 0:
            raise InvalidInputError("a raise must be positive", field="usd")
        budget = build["budget"]
        budget["limit_usd"] += usd
        budget["status"] = "ok" if budget["spent_usd"] < budget["limit_usd"] else "exhausted"
        return BudgetView.model_validate(budget)

    async def preview(self, user_id: str, build_id: str) -> PreviewView:
        return PreviewView.model_validate(self._own(user_id, build_id)["preview"])

    async def screenshots(self, user_id: str, build_id: str) -> list[ScreenshotView]:
        return [ScreenshotView.model_validate(shot) for shot in self._own(user_id, build_id)["screenshots"]]

    async def screenshot(self, user_id: str, build_id: str, name: str) -> bytes:
        self._own(user_id, build_id)
        png = self.pngs[build_id].get(check_name(name))
        if png is None:
            raise ScreenshotNotFoundError(f"no screenshot {name!r}", name=name)
        return png

    async def sandboxes(self, user_id: str, build_id: str) -> list[SandboxView]:
        return [SandboxView.model_validate(sandbox) for sandbox in self._own(user_id, build_id)["sandboxes"]]

    async def take_control(self, user_id: str, build_id: str) -> TakeControlView:
        build = self._own(user_id, build_id)
        url = build["preview"]["url"]
        if url is None:
            raise InvalidInputError(f"build {build_id} has no preview yet", field="build_id")
        return TakeControlView(url=url)

    async def main_read(self, user_id: str, build_id: str, what: str, arg: str = "") -> dict[str, Any]:
        """Read through :mod:`coordinator.merge.browse` from the repository :meth:`attach_main` gave the build."""
        self._own(user_id, build_id)
        repo = self.repos.get(build_id)
        if repo is None:
            raise NotInMainError(f"build {build_id} has no main yet")
        if what == "tree":
            view: BaseModel = await browse.main_tree(repo)
        elif what == "file":
            view = await browse.main_file(repo, arg)
        elif what == "diff":
            view = await browse.merge_diff(repo, arg)
        else:
            raise InvalidInputError(f"no read {what!r} of main", field="what")
        return view.model_dump(mode="json")

    async def notify_defaults(self, user_id: str) -> NotifyView:
        settings = self.notify.get(user_id)
        if settings is None:
            return NotifyView()
        return NotifyView(url=settings.url, events=list(settings.events), secret_set=settings.secret is not None)

    async def set_notify_defaults(self, user_id: str, settings: NotifySettings) -> NotifyView:
        check_url(settings.url, allow_private=self.allow_private_webhooks)
        self.notify[user_id] = settings
        return await self.notify_defaults(user_id)

    async def clear_notify_defaults(self, user_id: str) -> None:
        self.notify.pop(user_id, None)

    # --- test hooks ----------------------------------------------------------------------

    async def set_status(self, build_id: str, **fields: Any) -> None:
        """Change fields of a build (``status``, ``phase``, ``budget``, ``sandboxes``, ``preview`` …)."""
        build = self.builds[build_id]
        build.update(fields)
        if fields.get("status") in FINAL_STATUSES and build["finished_at"] is None:
            build["finished_at"] = self.clock()

    def attach_main(self, build_id: str, git_dir: str) -> None:
        """Make the bare repository at ``git_dir`` (a gate's ``HostGitRepo``) the build's main."""
        self.repos[build_id] = HostGitRepo(git_dir)

    async def add_screenshot(self, build_id: str, name: str, png: bytes, *, tree: str = "") -> None:
        """Make ``png`` the build's newest preview screenshot, called ``name`` (``shot-{ms}.png``)."""
        self.pngs[build_id][check_name(name)] = png
        view = ScreenshotView(name=name, taken_at=self.clock(), size=len(png), tree=tree)
        self.builds[build_id]["screenshots"].insert(0, view.model_dump(mode="json"))
