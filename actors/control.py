"""Control: the one actor ``control`` per cluster — a thin shell over :class:`coordinator.control.BuildControl`.

Every build lives in the store; Control is how the front doors (HTTP, CLI) reach them, always
scoped to a user. The registry, the quotas, the priority queue and the revival decisions are
floor 2 (:mod:`coordinator.control`, tested without Ray); this actor owns one
:class:`~coordinator.control.BuildControl`, reaches each build's BuildCoordinator actor for it
(:class:`RayBuildRunners`) and translates: its answers are the JSON forms of the
:mod:`coordinator.api_models` views. What is Ray's stays here:

* **Heartbeats.** Every ``heartbeat_s`` (60 s) it pings each running build's coordinator; one
  that does not answer in ``heartbeat_timeout_s`` for ``heartbeat_misses`` rounds in a row is
  restarted (``ray.kill`` with restart; one still starting on a loaded host is left alone), or
  started again when its actor is gone. One that died is left to Ray, which is re-creating it.
* **Warm pools.** It owns the fleet's warm pools (:class:`~actors.pools.fleet.FleetPools`:
  proxies with standby sandboxes, teams, agents, swarms), fills them in the background at start
  and hands them to every build's coordinator (``take_warm``); they refill as they are taken.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from actors import handles
from actors.actor_args import validated_arg
from actors.build.actor import start_coordinator
from actors.build.config import CoordinatorConfig, builds_dir, config_path, load_config, save_config
from actors.build.remove import remove_build
from actors.handles import CONTROL_NAME, RayActorError, coordinator_name, gate_name
from actors.pools.fleet import FleetPoolConfig, FleetPools
from actors.pools.warm import Warm
from coordinator.api_models import BuildRequest, NotifySettings
from coordinator.clock import SystemClock
from coordinator.control import BuildControl, Quotas
from coordinator.heartbeat import MissedHeartbeats
from coordinator.merge.browse import NotInMainError
from coordinator.placement import Placement, default_backend, place, uses_modal
from coordinator.resources import examples_dir
from coordinator.store.schema import SessionStatus
from coordinator.store.store import Store
from sandbox_agents.backends.modal.support import find_credentials, missing_credentials_message
from sandbox_agents.errors import BuildNotFoundError, InvalidInputError
from sandbox_agents.settings import get_settings

logger = logging.getLogger(__name__)

EXAMPLES = examples_dir()


class ControlConfig(BaseModel):
    """What the Control actor needs (and hands every coordinator it starts)."""

    model_config = ConfigDict(extra="forbid")

    redis_url: str
    bus_prefix: str = "kriptik"
    backend: dict[str, Any] = Field(default_factory=default_backend)
    """The server's default backend (``KRIPTIK_BACKEND``): builds that name no mode run here, and the
    warm pools hold proxies of it."""
    local_backend: dict[str, Any] = Field(default_factory=lambda: {"type": "local"})
    """The backend of ``local`` sandboxes when the default is not local (``hybrid``, ``--on local``)."""
    modal_backend: dict[str, Any] = Field(default_factory=lambda: {"type": "modal"})
    """The backend of Modal sandboxes when the default is not Modal (``hybrid``, ``--on modal``)."""
    llm: dict[str, Any] | None = None
    """Provider config for prompt/contract builds; None: replay of ``KRIPTIK_CASSETTES``."""
    max_sandboxes_per_user: int = Field(default_factory=lambda: get_settings().modal_max_concurrent, ge=1)
    """``MODAL_MAX_CONCURRENT``: sandboxes one user's running builds may hold together."""
    max_sandboxes: int = Field(default=64, ge=1)
    """Sandboxes the whole fleet may hold; past it builds queue by priority."""
    heartbeat_s: float = Field(default=60.0, gt=0)
    heartbeat_timeout_s: float = Field(default=10.0, gt=0)
    heartbeat_misses: int = Field(default=3, ge=1)
    """Heartbeat timeouts in a row before a coordinator counts as wedged and is restarted."""
    admit_poll_s: float = Field(default=1.0, gt=0)
    """How often finished builds free their quota and queued ones are admitted."""
    examples_dir: str = str(EXAMPLES)
    coordinator: dict[str, Any] = Field(default_factory=dict)
    """Extra CoordinatorConfig fields for every build (pool_size, checkpoint_interval_s, gate…); not what
    Control sets per build (the backends come from ``backend``/``local_backend``/``modal_backend``, the
    webhook from the build's ``notify`` or its owner's defaults)."""
    webhook_allow_private: bool = Field(default_factory=lambda: get_settings().kriptik_webhook_allow_private)
    """Builds' webhooks may reach loopback, private and link-local addresses (``KRIPTIK_WEBHOOK_ALLOW_PRIVATE``:
    tests, on-prem receivers); off, only public addresses are notified."""
    store_path: str | None = None
    pools: FleetPoolConfig = Field(default_factory=FleetPoolConfig)
    """Warm actors kept for every build (proxies with standby sandboxes, teams, agents, swarms)."""

    @field_validator("coordinator")
    @classmethod
    def _not_per_build(cls, value: dict[str, Any]) -> dict[str, Any]:
        taken = sorted(
            set(value) & {"build_id", "redis_url", "bus_prefix", "backend", "placement", "llm", "store_path", "webhook"}
        )
        if taken:
            raise ValueError(
                f"coordinator must not set {', '.join(taken)}: Control sets them per build "
                "(a backend goes in ControlConfig.backend, local_backend or modal_backend; a webhook in the "
                "build request's notify or the user's defaults, PUT /api/notify)"
            )
        return value


class RayBuildRunners:
    """:class:`~coordinator.control.BuildRunners` over the builds' BuildCoordinator actors ``build:{id}``.

    Each method calls the coordinator's method of the same name; a coordinator that is not
    running is started from the config saved at submit (``KRIPTIK_HOME/builds/{id}.json``).
    """

    def __init__(self, config: ControlConfig) -> None:
        self.config = config

    def place(self, mode: str | None, runs_on: Mapping[str, str | None]) -> Placement:
        cfg = self.config
        placement = place(mode, default=cfg.backend, local=cfg.local_backend, modal=cfg.modal_backend, runs_on=runs_on)
        if uses_modal(placement) and find_credentials(get_settings()) is None:
            where = f"build_mode {mode}" if mode else f"the server's backend ({cfg.backend.get('type')})"
            raise InvalidInputError(
                f"{where} runs sandboxes on Modal, and this cluster has {missing_credentials_message()} "
                "(read when `kriptik up` starts Ray)",
                field="build_mode",
            )
        return placement

    def register(
        self,
        build_id: str,
        llm: dict[str, Any],
        *,
        parallel: bool = True,
        placement: Placement,
        webhook: dict[str, Any] | None = None,
    ) -> None:
        cfg = self.config
        save_config(
            CoordinatorConfig(
                build_id=build_id,
                redis_url=cfg.redis_url,
                bus_prefix=cfg.bus_prefix,
                backend=placement.slot,
                placement=placement,
                llm=llm,
                store_path=cfg.store_path,
                webhook=webhook,
                **{"parallel": parallel, **cfg.coordinator},
            )
        )

    def coordinator(self, build_id: str) -> Any:
        """The build's coordinator, started from its saved config when it is not running.

        Raises:
            BuildNotFoundError: No config was saved for the build.
        """
        running = handles.find(coordinator_name(build_id))
        if running is not None:
            return running
        config = load_config(build_id)
        if config is None:
            raise BuildNotFoundError(f"build {build_id} has no coordinator config at {config_path(build_id)}")
        if config.redis_url != self.config.redis_url:  # a managed Redis restarted by `kriptik up` has a new port
            config = config.model_copy(update={"redis_url": self.config.redis_url})
        return start_coordinator(config)

    async def start(self, build_id: str) -> None:
        await self.coordinator(build_id).start.remote()

    async def revive(self, build_id: str) -> None:
        self.coordinator(build_id)

    async def cancel(self, build_id: str) -> None:
        # Not started when down (ValueError): the stored cancel waits for it.
        await handles.get(coordinator_name(build_id)).cancel.remote()

    async def resume(self, build_id: str) -> str:
        return str(await self.coordinator(build_id).resume.remote())

    async def raise_budget(self, build_id: str, limit_usd: float) -> dict[str, Any]:
        return dict(await self.coordinator(build_id).raise_budget.remote(limit_usd))

    async def preview(self, build_id: str) -> dict[str, Any]:
        return dict(await self.coordinator(build_id).preview.remote())

    async def screenshots(self, build_id: str) -> list[dict[str, Any]]:
        return list(await self.coordinator(build_id).screenshots.remote())

    async def screenshot(self, build_id: str, name: str) -> bytes:
        return bytes(await self.coordinator(build_id).screenshot.remote(name))

    async def sandboxes(self, build_id: str) -> list[dict[str, Any]]:
        return list(await self.coordinator(build_id).sandboxes.remote())

    async def take_control(self, build_id: str) -> str:
        return str(await self.coordinator(build_id).take_control.remote())

    async def delete(self, build_id: str) -> None:
        """Everything the build runs and left, but its store rows (:mod:`actors.build.remove`)."""
        await remove_build(build_id, redis_url=self.config.redis_url, bus_prefix=self.config.bus_prefix)

    async def main_read(self, build_id: str, what: str, arg: str = "") -> dict[str, Any]:
        """From the build's gate, straight: a read must not start a finished build's coordinator or gate."""
        gate = handles.find(gate_name(build_id))
        if gate is None:
            raise NotInMainError(f"build {build_id} keeps no main (its gate is closed)")
        method = {"tree": gate.main_tree, "file": gate.main_file, "diff": gate.merge_diff}[what]
        return dict(await (method.remote() if what == "tree" else method.remote(arg)))


class ControlActor:
    """The cluster's build registry. Start through :func:`start_control`.

    Args:
        config: A :class:`ControlConfig` as a dict.
    """

    def __init__(self, config: ControlConfig | dict[str, Any]) -> None:
        self.config = cfg = validated_arg(ControlConfig, config, "config")
        self.store = Store(cfg.store_path).start()
        self.clock = SystemClock()
        self.runners = RayBuildRunners(cfg)
        self.builds = BuildControl(
            self.store,
            self.runners,
            quotas=Quotas(max_sandboxes_per_user=cfg.max_sandboxes_per_user, max_sandboxes=cfg.max_sandboxes),
            clock=self.clock,
            admissions_dir=builds_dir(),
            examples_dir=Path(cfg.examples_dir),
            llm=cfg.llm,
            allow_private_webhooks=cfg.webhook_allow_private,
        )
        self._restarts: dict[str, int] = {}
        self._missed = MissedHeartbeats(self.config.heartbeat_misses)
        self._pools = FleetPools(cfg.backend, cfg.pools, persist=True)
        loop = asyncio.get_running_loop()
        self._revived = loop.create_task(self.builds.revive())
        self._loops = [
            loop.create_task(self._admit_loop()),
            loop.create_task(self._heartbeat_loop()),
            loop.create_task(self._fill_pools()),
        ]

    # --- the Control interface: the JSON forms of coordinator.api_models ---------------------------

    async def submit(self, user_id: str, request: BuildRequest | dict[str, Any]) -> str:
        """Register a build and queue it; returns its id."""
        await self._revived
        return await self.builds.submit(user_id, validated_arg(BuildRequest, request, "request"))

    async def status(self, user_id: str, build_id: str) -> dict[str, Any]:
        """From the store alone: the coordinator persists everything the view shows (no actor hop)."""
        return self.builds.status(user_id, build_id).model_dump(mode="json")

    async def list_builds(self, user_id: str) -> list[dict[str, Any]]:
        return [summary.model_dump(mode="json") for summary in self.builds.list_builds(user_id)]

    async def cancel(self, user_id: str, build_id: str) -> dict[str, Any]:
        """``{id, status}``: ``cancelled`` (it was queued), ``cancelling`` or the status it ended with."""
        return {"id": build_id, "status": await self.builds.cancel(user_id, build_id)}

    async def resume(self, user_id: str, build_id: str) -> dict[str, Any]:
        return {"id": build_id, "status": await self.builds.resume(user_id, build_id)}

    async def raise_budget(self, user_id: str, build_id: str, usd: float) -> dict[str, Any]:
        """Add ``usd`` dollars to the build's limit; a paused build resumes."""
        return await self.builds.raise_budget(user_id, build_id, usd)

    async def preview(self, user_id: str, build_id: str) -> dict[str, Any]:
        return await self.builds.preview(user_id, build_id)

    async def screenshots(self, user_id: str, build_id: str) -> list[dict[str, Any]]:
        """The build's preview screenshots, newest first (``ScreenshotView`` as JSON)."""
        return await self.builds.screenshots(user_id, build_id)

    async def screenshot(self, user_id: str, build_id: str, name: str) -> bytes:
        """The PNG of one of them: bytes come back through the coordinator from the preview's host."""
        return await self.builds.screenshot(user_id, build_id, name)

    async def sandboxes(self, user_id: str, build_id: str) -> list[dict[str, Any]]:
        return await self.builds.sandboxes(user_id, build_id)

    async def take_control(self, user_id: str, build_id: str) -> dict[str, Any]:
        return {"url": await self.builds.take_control(user_id, build_id)}

    async def delete(self, user_id: str, build_id: str) -> None:
        await self.builds.delete(user_id, build_id)

    async def main_read(self, user_id: str, build_id: str, what: str, arg: str = "") -> dict[str, Any]:
        """Main's tree, a file or a merge's diff (the JSON of ``MainTreeView``, ``MainFileView``, ``MergeDiffView``)."""
        return await self.builds.main_read(user_id, build_id, what, arg)

    async def notify_defaults(self, user_id: str) -> dict[str, Any]:
        """The user's webhook defaults (``NotifyView``: never the secret)."""
        return self.builds.webhooks.defaults(user_id).model_dump(mode="json")

    async def set_notify_defaults(self, user_id: str, settings: NotifySettings | dict[str, Any]) -> dict[str, Any]:
        """Make ``settings`` the webhook of the user's builds that bring none; a refused destination raises."""
        view = self.builds.webhooks.set_defaults(user_id, validated_arg(NotifySettings, settings, "settings"))
        return view.model_dump(mode="json")

    async def clear_notify_defaults(self, user_id: str) -> None:
        self.builds.webhooks.clear_defaults(user_id)

    # --- warm pools -------------------------------------------------------------------------------

    async def ping(self) -> None:
        """Answers while the control plane serves (health checks)."""

    async def take_warm(self, kind: str, count: int = 1, backend: dict[str, Any] | None = None) -> list[Warm]:
        """Up to ``count`` warm, unbound ``kind`` actors (proxy, team, agent, swarm) for a build to bind.

        The caller owns them from then on (binds them, and kills them when done); the pool refills
        in the background. Fewer (or none) when the pool is short: the caller starts the rest cold.
        """
        return await self._pools.take(kind, count, backend)

    async def warm_pools(self) -> dict[str, int]:
        """Warm actors per kind right now."""
        return self._pools.warm()

    async def close_pools(self) -> None:
        """Stop the warm actors never handed out (before Control is stopped for good)."""
        await self._pools.close()

    async def _fill_pools(self) -> None:
        try:
            await self._pools.fill()
        except Exception:  # noqa: BLE001 - builds start cold actors meanwhile; takes refill again
            logger.exception("control: filling the warm pools failed")

    # --- operations -----------------------------------------------------------------------------

    async def restarts(self) -> dict[str, int]:
        """Coordinators the heartbeat restarted, per build."""
        return dict(self._restarts)

    async def queued(self) -> list[str]:
        """Builds waiting for admission, in admission order (answers once revival is under way)."""
        return self.builds.queued()

    async def check_heartbeats(self) -> list[str]:
        """One heartbeat round now; returns the builds whose coordinator was restarted."""
        restarted = []
        timeout = self.config.heartbeat_timeout_s
        for build_id in self.builds.running():
            if self.store.get_session(build_id).status is not SessionStatus.RUNNING:
                continue
            handle = None
            try:
                handle = handles.get(coordinator_name(build_id))
                await asyncio.wait_for(handle.heartbeat.remote(), timeout)
                if not (await asyncio.wait_for(handle.status.remote(), timeout))["running"]:
                    await handle.start.remote()  # alive but idle while the store says running
                self._missed.answered(build_id)
                continue
            except ValueError:  # the actor is gone: start it again
                self._missed.answered(build_id)
                await self.runners.start(build_id)
            except RayActorError:
                # It died (or is being re-created) and Ray brings it back by itself (max_restarts=-1):
                # killing it now would only throw away the incarnation that is starting.
                self._missed.answered(build_id)
                logger.info("control: the coordinator of %s is restarting", build_id)
                continue
            except TimeoutError:
                # Wedged only if it stays silent: one still being created on a loaded host cannot
                # answer yet either (coordinator/heartbeat.py).
                if not self._missed.missed(build_id):
                    logger.info(
                        "control: the coordinator of %s did not answer its heartbeat (%d in a row)",
                        build_id,
                        self._missed.count(build_id),
                    )
                    continue
                handles.restart(handle)  # alive but wedged: restart it (Ray re-creates it)
            except Exception:  # noqa: BLE001 - a failed heartbeat is retried at the next round
                logger.exception("control: heartbeat of %s failed", build_id)
                continue
            self._restarts[build_id] = self._restarts.get(build_id, 0) + 1
            restarted.append(build_id)
            logger.warning("control: restarted the coordinator of %s", build_id)
        return restarted

    async def _admit_loop(self) -> None:
        await self._revived
        while True:
            try:
                await self.builds.admit()
            except Exception:  # noqa: BLE001 - keep admitting
                logger.exception("control: admission round failed")
            await self.clock.sleep(self.config.admit_poll_s)

    async def _heartbeat_loop(self) -> None:
        await self._revived
        while True:
            await self.clock.sleep(self.config.heartbeat_s)
            try:
                await self.check_heartbeats()
            except Exception:  # noqa: BLE001 - keep watching
                logger.exception("control: heartbeat round failed")


Control = handles.actor_class(ControlActor, restartable=True, max_concurrency=256)


def start_control(config: ControlConfig | dict[str, Any]) -> Any:
    """Get or start the detached, restartable ``control`` actor in namespace ``kriptik``."""
    config = validated_arg(ControlConfig, config, "config")
    return handles.start(Control, CONTROL_NAME, config.model_dump(mode="json"), get_if_exists=True)


async def stop_control(handle: Any) -> None:
    """Stop the warm actors of Control's pools and kill Control for good."""
    await handles.stop(handle, handle.close_pools.remote, name=CONTROL_NAME, timeout_s=30)
