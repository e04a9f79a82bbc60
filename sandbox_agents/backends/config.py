"""Backend configs as tagged models (``type`` is the tag), one per backend.

Every backend imports its config from here, so this module imports no backend: the factory
that builds one from a config is :func:`sandbox_agents.backends.factory.make_backend`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from sandbox_agents.errors import ConfigError


class LocalBackendConfig(BaseModel):
    """The default backend: bubblewrap namespaces, cgroup limits, a tmpfs workspace."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["local"] = "local"
    root: Path | None = None
    """Directory for sandbox state and snapshots; ``KRIPTIK_HOME/sandboxes`` if unset."""
    sandbox_uid: int | None = Field(default=None, ge=1)
    """First host uid of the per-sandbox range; the ``KRIPTIK_SANDBOX_UID`` setting (61000) if unset."""
    sandbox_uid_count: int = Field(default=1000, ge=1, le=1_000_000)
    """Host uids in the range: each running sandbox holds one of its own, so this bounds a host's sandboxes."""
    package_cache_mb: int = Field(default=8192, ge=64, le=1_048_576)
    """Most disk the host's dependency trees and download caches take; least recently used trees go first."""
    registries: dict[str, list[str]] | None = None
    """Registry hosts per package manager (``npm``, ``pip``) an install may reach; None: the public ones."""
    allow_unlimited: bool = False
    """Start sandboxes without memory/pids/cpu limits when the host has no writable cgroups
    (also ``KRIPTIK_ALLOW_UNLIMITED_SANDBOXES=1``); otherwise the backend refuses to start them."""
    standby: int = Field(default=0, ge=0, le=64)
    """Started, unassigned sandboxes kept ready so that a create costs about a millisecond."""


class FakeBackendConfig(BaseModel):
    """In-memory files and scripted commands, for unit tests of the floors above."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["fake"] = "fake"


class ModalBackendConfig(BaseModel):
    """Modal Sandboxes through the official SDK (the ``modal`` extra)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["modal"] = "modal"
    app_name: str = "kriptik-fleet"
    """Modal App the sandboxes belong to (looked up, created if missing)."""
    image: str = "default"
    """Name of the image definition in ``backends/modal/image.py``."""
    environment: str | None = None
    """Modal environment (``MODAL_WORKSPACE``)."""
    connect_timeout_s: float = Field(default=10.0, gt=0, le=300)
    """Bound on the first call to Modal; past it BackendUnavailableError (the SDK itself retries ~60 s)."""
    sdk_module: str = Field(default="modal", pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
    """Import path of the SDK module the backend calls (imported on first use, in whichever process
    holds the backend). The real ``modal`` unless a test points it at the fake: ``tests.fakes.modal_sdk``
    lets the Ray workers of a whole build run on the Modal fake (docs/modal.md)."""
    max_concurrent_creates: int = Field(default=8, ge=1, le=1000)
    """``Sandbox.create`` calls one backend object has in flight at once; the rest wait their turn.
    Modal rate-limits sandbox creation per workspace, so a burst is fed to it a few at a time."""
    create_retry_first_s: float = Field(default=1.0, gt=0, le=60)
    """Back-off before the first retry of a create Modal refused with ``ResourceExhaustedError``
    (its rate-limit and capacity error); it doubles on each further retry, with jitter."""
    create_retry_max_s: float = Field(default=30.0, gt=0, le=600)
    """Longest back-off between two attempts of one create."""
    create_retry_s: float = Field(default=120.0, ge=0, le=3600)
    """How long one create keeps retrying while Modal refuses it; past it SandboxLimitError. 0: no retry.
    Time spent waiting for the fleet's pace (below) does not count."""
    fleet_creates_per_s: float = Field(default=4.0, ge=0, le=10_000)
    """Creates per second the whole Ray cluster offers Modal: every attempt (retries too) of every proxy
    takes a token from one shared bucket first (``actors/modal_pace.py``). Modal publishes no rate; 4/s is
    the one public report (docs/operations.md). 0: no fleet-wide pace."""
    fleet_create_burst: int = Field(default=16, ge=1, le=100_000)
    """Creates the fleet may start at once after a quiet spell (the bucket's size)."""


BackendConfig = Annotated[LocalBackendConfig | FakeBackendConfig | ModalBackendConfig, Field(discriminator="type")]


def backend_config(name: str) -> LocalBackendConfig | FakeBackendConfig | ModalBackendConfig:
    """The default config of a backend by name (``local``, ``fake``, ``modal``)."""
    configs = {"local": LocalBackendConfig, "fake": FakeBackendConfig, "modal": ModalBackendConfig}
    if name not in configs:
        raise ConfigError(f"unknown sandbox backend {name!r}; choose one of {sorted(configs)}")
    return configs[name]()
