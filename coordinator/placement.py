"""Where a build's sandboxes run: the one place that turns a build mode into backend configs.

A build's mode comes from, in this order: the build request (``build_mode`` in the API,
``kriptik build --on``), the contract (``build_mode``), else the server's default backend
(``KRIPTIK_BACKEND``, which Control is started with). :func:`place` turns it into a
:class:`Placement`, saved in the build's coordinator config; every creator of the build's
sandboxes (the fleet's slot proxies and their respawns and restores, tournaments, the merge
gate's main-test sandbox, the preview and its take-control copies) asks the placement for its
backend instead of choosing one itself.

The modes:

* ``local`` — every sandbox on this cluster's hosts (bubblewrap);
* ``modal`` — every sandbox on Modal;
* ``hybrid`` — the components' sandboxes (and their tournament candidates: the bulk of the
  compute, bursty, parallel) on Modal; the main-test gate and the preview on the cluster, where
  the user's latency matters (the preview is what they watch, and the gate runs every merge).
  A contract component may pin its own sandboxes with ``runs_on: local|modal``.

A warm pool belongs to one backend: a proxy warmed for the local backend is never handed to a
Modal sandbox (:func:`actors.pools.fleet.FleetPools.take` compares backends).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from sandbox_agents.backends.base import NetworkPolicy, SandboxSpec
from sandbox_agents.errors import InvalidInputError

BuildMode = Literal["local", "modal", "hybrid"]
BUILD_MODES: tuple[BuildMode, ...] = ("local", "modal", "hybrid")
Role = Literal["slot", "main", "preview"]
"""``slot``: a component's sandboxes (and tournament candidates); ``main``: the merge gate's
main-test sandbox; ``preview``: the preview's sandbox and its take-control copies."""


class Placement(BaseModel):
    """The backend config of each kind of sandbox of one build."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: str
    """The build mode it was made from (``local``, ``modal``, ``hybrid``), or the default backend's
    type when the build named none (``local``, ``modal``, ``fake``)."""
    slot: dict[str, Any]
    main: dict[str, Any]
    preview: dict[str, Any]
    components: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """A component's own backend (the contract's ``runs_on``), overriding ``slot`` for its sandboxes."""

    def backend(self, role: Role, component: str | None = None) -> dict[str, Any]:
        """The backend config of a ``role`` sandbox (of ``component``, for slots)."""
        if role == "slot":
            return dict(self.components.get(component or "", self.slot))
        return dict(self.main if role == "main" else self.preview)

    def backends(self) -> list[dict[str, Any]]:
        """Every distinct backend config the build uses."""
        seen: list[dict[str, Any]] = []
        for config in (self.slot, self.main, self.preview, *self.components.values()):
            if config not in seen:
                seen.append(dict(config))
        return seen

    @classmethod
    def single(cls, backend: Mapping[str, Any]) -> Placement:
        """Every sandbox on ``backend`` (a config saved before placements existed reads as this)."""
        config = dict(backend)
        return cls(mode=str(config.get("type", "local")), slot=config, main=config, preview=config)


def place(
    mode: str | None,
    *,
    default: Mapping[str, Any],
    local: Mapping[str, Any] | None = None,
    modal: Mapping[str, Any] | None = None,
    runs_on: Mapping[str, str | None] | None = None,
) -> Placement:
    """The placement of a build run in ``mode`` (None: everything on ``default``).

    Args:
        mode: ``local``, ``modal``, ``hybrid`` or None.
        default: The server's backend (``KRIPTIK_BACKEND``); also the local or Modal config when
            it is of that type.
        local: The local backend's config when ``default`` is not local (``{"type": "local"}``).
        modal: The Modal backend's config when ``default`` is not Modal (``{"type": "modal"}``).
        runs_on: Per component, ``local`` or ``modal`` (or None): where its sandboxes run in a
            ``hybrid`` build (ignored otherwise: a ``local`` or ``modal`` build puts everything there).

    Raises:
        InvalidInputError: An unknown mode, or a ``runs_on`` other than local/modal.
    """
    base = dict(default)
    kind = base.get("type", "local")
    local_cfg = base if kind == "local" else dict(local or {"type": "local"})
    modal_cfg = base if kind == "modal" else dict(modal or {"type": "modal"})
    by_name = {"local": local_cfg, "modal": modal_cfg}
    if mode is None:
        return Placement.single(base)
    if mode not in BUILD_MODES:
        raise InvalidInputError(f"build_mode {mode!r} is not one of {', '.join(BUILD_MODES)}", field="build_mode")
    if mode != "hybrid":
        return Placement(mode=mode, slot=by_name[mode], main=by_name[mode], preview=by_name[mode])
    components: dict[str, dict[str, Any]] = {}
    for component, where in (runs_on or {}).items():
        if where is None:
            continue
        if where not in by_name:
            message = f"component {component!r}: runs_on {where!r} is not local or modal"
            raise InvalidInputError(message, field="runs_on")
        if by_name[where] != modal_cfg:
            components[component] = by_name[where]
    return Placement(mode=mode, slot=modal_cfg, main=local_cfg, preview=local_cfg, components=components)


def spec_for_backend(spec: SandboxSpec, backend: Mapping[str, Any], *, installs: bool) -> SandboxSpec:
    """``spec`` as ``backend`` needs it to run the install phase.

    Locally, a sandbox without network gets its dependencies from the host's install step. Modal sets
    a sandbox's egress when it is created, and installs run inside it: a Modal sandbox that installs
    packages is created with network ``install`` (only the package registries, for its whole life;
    docs/modal.md).
    """
    if installs and backend.get("type") == "modal" and spec.network is NetworkPolicy.NONE:
        return spec.model_copy(update={"network": NetworkPolicy.INSTALL})
    return spec


def default_backend() -> dict[str, Any]:
    """The server's default backend config, from ``KRIPTIK_BACKEND`` (``local``, ``modal`` or ``fake``)."""
    from sandbox_agents.settings import get_settings

    return {"type": get_settings().kriptik_backend}


def uses_modal(placement: Placement) -> bool:
    """Whether any sandbox of the build runs on Modal (it then needs Modal credentials)."""
    return any(config.get("type") == "modal" for config in placement.backends())
