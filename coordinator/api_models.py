"""The bodies of the HTTP API: what a user sends and what the Control actor answers.

Both the API (``serve/``) and the Control actor (``actors/control.py``) import these, so they
live on floor 2, free of Ray and of FastAPI. Requests refuse unknown fields (a typo is a 422
that names the field, never a silently ignored option); views *ignore* unknown fields, so a
Control that reports one more field than this version knows does not turn a status read
into a server error.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from coordinator.placement import BuildMode
from coordinator.webhooks import DEFAULT_EVENTS, MAX_URL_LENGTH, NotifyEvent, check_url

BuildStatusName = Literal["queued", "running", "paused", "completed", "failed", "cancelled"]
"""Life of a build, as ``coordinator.store.schema.SessionStatus``."""

FINAL_STATUSES: frozenset[str] = frozenset({"completed", "failed", "cancelled"})
"""Statuses a build never leaves (``paused`` is not final: ``resume`` continues it)."""

EXAMPLE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$"

SCREENSHOT_NAME = r"^shot-[0-9]{13}\.png$"
"""A preview screenshot's name, ``shot-{ms since the epoch}.png``: the only names the preview produces."""


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _View(BaseModel):
    model_config = ConfigDict(extra="ignore")


# --- requests ------------------------------------------------------------------------------


class NotifySettings(_Request):
    """Ghost mode: the webhook a build's owner is told through, and about what.

    Checked here for form (http or https, a host); Control checks the destination, which must be a
    public address unless the operator allows internal ones (``coordinator/webhooks.py``).
    """

    url: str = Field(min_length=1, max_length=MAX_URL_LENGTH)
    """Receives one JSON POST per event (``X-Kriptik-Event`` names it)."""
    secret: SecretStr | None = Field(default=None, min_length=1, max_length=256)
    """Key of the ``X-Kriptik-Signature`` HMAC; unsigned without it. Never shown again: not by
    ``GET /api/notify``, a build's status or its event log."""
    events: list[NotifyEvent] = Field(default_factory=lambda: sorted(DEFAULT_EVENTS), min_length=1)
    """``completed``, ``failed``, ``paused``, ``budget_warning``, ``blocked``; default all but ``blocked``."""

    @field_validator("url")
    @classmethod
    def _form(cls, value: str) -> str:
        return check_url(value, allow_private=True)  # the destination is Control's to check

    @field_validator("events")
    @classmethod
    def _once_each(cls, value: list[NotifyEvent]) -> list[NotifyEvent]:
        return sorted(set(value))


class BuildRequest(_Request):
    """Start a build from exactly one of: a prompt, an intent contract, or a named example."""

    prompt: str | None = Field(default=None, min_length=1, max_length=20_000)
    """The app in plain language; Phase 0 turns it into an intent contract."""
    contract: dict[str, Any] | None = None
    """A ready IntentContract (as JSON); validated here, so a bad one is a 422 listing every problem."""
    example: str | None = Field(default=None, pattern=EXAMPLE_NAME)
    """Name of an intent under ``examples/intents`` (``hello-calc``)."""
    build_mode: BuildMode | None = None
    """Where the sandboxes run: ``local``, ``modal`` or ``hybrid`` (``coordinator/placement.py``);
    None: the contract's ``build_mode``, else the server's default backend (``KRIPTIK_BACKEND``)."""
    budget_usd: float | None = Field(default=None, gt=0, le=100_000)
    """Most the build may spend, in dollars; the contract's budget (or the default) when unset."""
    priority: int = Field(default=0, ge=-100, le=100)
    """Queue priority: higher starts first among queued builds of the cluster."""
    parallel: bool = True
    """Every component's team starts at once (fed its providers' code as it is chosen); False: each
    component starts only once its providers have merged."""
    notify: NotifySettings | None = None
    """Where and about what this build's owner is told (ghost mode); None: the owner's defaults
    (``PUT /api/notify``), else nothing is sent."""

    @field_validator("contract")
    @classmethod
    def _valid_contract(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        from coordinator.contracts import parse_contract  # heavy import, only when a contract is sent

        return parse_contract(value).model_dump(mode="json")  # ContractInvalidError is a ValueError: a 422

    @model_validator(mode="after")
    def _exactly_one_source(self) -> BuildRequest:
        given = [name for name in ("prompt", "contract", "example") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of prompt, contract, example (got {', '.join(given) or 'none'})")
        return self


class BudgetRaise(_Request):
    """Raise a build's spending limit (a paused build then continues with ``resume``)."""

    usd: float = Field(gt=0, le=100_000)
    """Dollars added to the current limit."""


# --- views ---------------------------------------------------------------------------------


class NotifyView(_View):
    """A user's notification defaults as ``GET /api/notify`` shows them: never the secret."""

    url: str | None = None
    """None: none are set, and a build without its own ``notify`` sends nothing."""
    events: list[str] = Field(default_factory=list)
    secret_set: bool = False
    """Whether notifications are signed."""
    updated_at: float | None = None


class BudgetView(_View):
    """What a build may spend and has spent."""

    limit_usd: float
    spent_usd: float
    llm_tokens: int = 0
    """Tokens the build's agents have spent (what their provider reported)."""
    compute_seconds: float = 0.0
    """Sandbox seconds charged so far."""
    status: str = "ok"
    """``ok``, ``warning`` (past the warning threshold) or ``exhausted`` (the build pauses)."""
    warn_fraction: float = 0.8
    """Fraction of ``limit_usd`` at which the build warns; at ``limit_usd`` itself it pauses."""


class ComponentView(_View):
    """One slot of the fleet: a candidate of a component in its sandbox."""

    slot: str
    component: str
    candidate: int = 0
    """Candidate number in a tournament (0 without one)."""
    sandbox_id: str | None = None
    """The slot's live sandbox (None once released)."""
    last_sandbox_id: str | None = None
    """The last sandbox the slot had, also once released (after the build, for example)."""
    status: str = "pending"
    agents: list[str] = Field(default_factory=list)
    """Names of the agents that ran a task in the slot's sandbox."""
    swarm_score: float | None = None
    """Latest verification-swarm score in [0, 1], if verified yet."""


class TournamentView(_View):
    """A tournament between candidates of one component."""

    component: str
    status: str = "running"
    candidates: list[str] = Field(default_factory=list)
    """Slots competing."""
    scores: dict[str, float] = Field(default_factory=dict)
    """Judge score per slot."""
    winner: str | None = None
    reason: str = ""


class MergeView(_View):
    """One merge (or refused merge) into the main branch by the MergeGate."""

    component: str
    status: str
    """``pending``, ``merged`` or ``rejected``."""
    slot: str | None = None
    commit: str | None = None
    at: float | None = None
    message: str = ""


class BuildStatus(_View):
    """Everything known about one build, as ``GET /api/build/status/{id}`` returns it."""

    id: str
    user_id: str
    status: BuildStatusName
    phase: str = ""
    """``intent``, ``fleet``, ``build``, ``verify``, ``merge``, ``preview`` or ``done``."""
    components: list[ComponentView] = Field(default_factory=list)
    preview_url: str | None = None
    main_commit: str | None = None
    budget: BudgetView | None = None
    tournaments: list[TournamentView] = Field(default_factory=list)
    merges: list[MergeView] = Field(default_factory=list)
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None


class BuildSummary(_View):
    """One line of ``GET /api/builds``."""

    id: str
    status: BuildStatusName
    phase: str = ""
    title: str = ""
    """The prompt's first line or the contract's name."""
    started_at: float | None = None
    finished_at: float | None = None


class BuildCreated(_View):
    """Answer to ``POST /api/builds``: the build is queued; follow it with these URLs."""

    id: str
    status_url: str
    stream_url: str


class PreviewView(_View):
    """Where the build's app can be seen: the merged app and each component's own server."""

    url: str | None = None
    components: dict[str, str] = Field(default_factory=dict)


class ScreenshotView(_View):
    """One screenshot of the build's live preview (``GET /api/build/screenshots/{id}``, newest first)."""

    name: str
    """Fetch the PNG at ``/api/build/screenshots/{id}/{name}``."""
    taken_at: float
    size: int
    """Bytes of the PNG."""
    path: str = "/"
    """The page of the preview it shows."""
    tree: str = ""
    """A short hash of the files the preview served then: equal hashes, same code ("" when unknown)."""


class SandboxView(_View):
    """One sandbox of the build's fleet."""

    id: str
    slot: str = ""
    component: str = ""
    backend: str = ""
    status: str = ""
    agents: list[str] = Field(default_factory=list)
    swarm_score: float | None = None


class MainFileEntry(_View):
    """One file of main, as the file tree lists it."""

    path: str
    size: int
    component: str = ""
    """The component whose merge last wrote it."""
    link: bool = False
    """A symbolic link (its content is the target)."""


class MainTreeView(_View):
    """Every file of a build's main at its head commit."""

    head: str
    files: list[MainFileEntry] = Field(default_factory=list)


class MainFileView(_View):
    """One file of main, size-bounded: the first ``max_bytes`` of its text (none of a binary)."""

    path: str
    size: int
    content: str = ""
    truncated: bool = False
    binary: bool = False


class FileDiffView(_View):
    """One file's change in a merge commit, as a unified diff (bounded)."""

    path: str
    status: str
    """``A`` added, ``M`` modified, ``D`` deleted, ``T`` type changed."""
    diff: str = ""
    truncated: bool = False
    binary: bool = False


class MergeDiffView(_View):
    """A merge commit against its parent: the files it changed, each with its diff."""

    commit: str
    parent: str
    message: str = ""
    files: list[FileDiffView] = Field(default_factory=list)
    truncated: bool = False
    """Some diff text (or files past the bound) was left out."""


class TakeControlView(_View):
    """A URL where the user drives the build's preview (or sandbox) themselves."""

    url: str


class Health(_View):
    """Liveness of the API replica and of what it needs (no auth)."""

    status: Literal["ok", "degraded"] = "ok"
    """``degraded`` when a part does not answer (see ``parts``)."""
    version: str = ""
    parts: dict[str, str] = Field(default_factory=dict)
    """Each part the API depends on → ``ok``, or why it is not: ``redis`` (the event bus), ``control``
    (the control plane on Ray)."""
    sandbox_limits: Literal["cgroups", "unlimited", "refused"] | None = None
    """Local sandboxes on this replica's host: cgroup-limited, ``unlimited`` (the operator opted
    in on a host without writable cgroups: one sandbox can exhaust the host) or ``refused``
    (no cgroups, no opt-in). None when the backend is not local."""


class ErrorBody(_View):
    """Every non-2xx answer of the API."""

    error: str
    """Machine-readable code: ``not_found``, ``invalid_input``, ``unauthorized``, ``rate_limited`` …"""
    message: str
    field: str | None = None
    """The offending field, when one is to blame (``body.prompt``)."""
    retry_after_s: float | None = None
    problems: list[str] = Field(default_factory=list)
    """Every validation problem, ``location: message`` (422 only)."""
