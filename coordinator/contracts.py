"""The intent contract: what a build must deliver, decided once (Phase 0) and then locked.

A plain-language prompt becomes an :class:`IntentContract`: the app's components (each with
its tasks, check command and dev server), success criteria that a machine can check, a budget
and constraints. Everything downstream — the fleet plan, the merge order, "done" — reads
this one document, so it is validated as a whole here: names are unique, dependencies exist
and form no cycle (the error names it), criteria point at existing components. Bad input is
refused with :class:`ContractInvalidError` (a :class:`ContractError`) listing every problem,
so a planner LLM can fix them all in one retry.

Success criteria are a tagged union on ``type``: ``command``, ``http``, ``ui``, ``file`` and
``route``; ``coordinator.intent.check_satisfaction`` runs them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator, model_validator

from coordinator.tournament import TournamentSettings
from sandbox_agents.agent_models import AgentTask
from sandbox_agents.errors import ContractError, InvalidInputError

logger = logging.getLogger(__name__)

NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$"
"""Component names appear in slot ids, agent roles, sandbox tags and replay keys."""
TASK_ID = r"^[^#\s~]{1,200}$"
"""``#`` is reserved for the team's attempt suffixes (``#retry1``), ``~`` for slot ids."""

ComponentKind = Literal["frontend", "backend", "database", "api-integrations", "auth", "payments", "other"]
Command = list[str] | str


class ContractInvalidError(ContractError):
    """A contract failed validation; ``problems`` lists every reason, one per entry."""

    def __init__(self, message: str, *, problems: list[str]) -> None:
        super().__init__(message)
        self.problems = problems


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- components ------------------------------------------------------------------------


class ContractTask(_Model):
    """One task of a component; it becomes an :class:`AgentTask` (and a team task) unchanged."""

    id: str = Field(pattern=TASK_ID)
    """Stable id, unique within its component; the ``task`` of the agents' TurnKeys."""
    title: str = Field(min_length=1)
    instructions: str = ""
    acceptance: str = ""
    """What must hold for the task to count as done, in words."""
    check_command: Command | None = None
    """Exit code 0 shows the task is done."""
    depends_on: tuple[str, ...] = ()
    """Tasks of the same component that must be done first."""
    files: tuple[str, ...] = ()
    """Files the task is expected to touch (a hint)."""

    def to_agent_task(self, *, note: str = "") -> AgentTask:
        """The agent-facing task, with ``note`` (e.g. a strategy suffix) appended to the instructions."""
        instructions = (self.instructions + (f"\n\n{note}" if note else "")).strip()
        return AgentTask(
            id=self.id,
            title=self.title,
            instructions=instructions,
            acceptance=self.acceptance,
            check_command=self.check_command,
            files=self.files,
        )


class DevServer(_Model):
    """How to serve a component for previews and HTTP/UI criteria."""

    command: Command
    """Starts the server in the foreground (the preview runs it in the background)."""
    port: int = Field(ge=1, le=65535)
    ready_path: str = Field(default="/", pattern=r"^/")
    """Polled until it answers, to know the server is up."""
    hot_reload: bool = False
    """The server picks up changed files itself (Vite's HMR, ``node --watch``): the preview keeps it
    running across merges, so an open page updates in place, instead of restarting it."""


class Packages(_Model):
    """A component's dependency manifest, installed by the install phase (never by an agent's command).

    ``npm``: ``{dir}/package.json`` with ``{dir}/package-lock.json`` when there is one (``npm ci``;
    without one ``npm install`` writes it). ``pip``: ``{dir}/requirements.txt`` into ``{dir}/.venv``.
    The install runs in a sandbox of its own that reaches only the package registries; the result
    (``node_modules``, ``.venv``) is cached on the host by the manifest's hash and copied into the
    component's sandbox, the main-test gate's and the preview's.
    """

    manager: Literal["npm", "pip"]
    dir: str = Field(default=".", pattern=r"^(\.|[A-Za-z0-9_.-][A-Za-z0-9_./-]{0,199})$")
    """The directory of the manifest, relative to the workspace (``.`` is the workspace)."""
    timeout_s: float = Field(default=600.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _inside(self) -> Packages:
        parts = self.dir.split("/")
        if ".." in parts or "" in parts[:-1] or self.dir.startswith("/"):
            raise ValueError(f"packages.dir {self.dir!r} must be a relative path inside the workspace")
        return self


class Endpoint(_Model):
    """One HTTP endpoint a component serves: what its dependents may call, and what they get back."""

    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
    path: str = Field(pattern=r"^/[^\s?#]*$", max_length=200)
    """The route, with ``:name`` for path parameters (``/api/cards/:id``)."""
    request: Any = None
    """The JSON body it takes, as an example value (None: no body)."""
    response: Any = None
    """The JSON it answers with on success, as an example value."""
    status: int = Field(default=200, ge=100, le=599)
    """The success status (``201`` for a create)."""
    errors: dict[int, str] = Field(default_factory=dict)
    """Error statuses it answers and when (``{400: "empty title"}``)."""


class Interface(_Model):
    """What a component provides to the components that depend on it; locked with the contract.

    Dependents are built against it (their agents are told it), and the provider's agents are
    told they must keep to it.
    """

    http: tuple[Endpoint, ...] = Field(default=(), max_length=100)
    tables: dict[str, dict[str, str]] = Field(default_factory=dict)
    """Database tables: table → column → SQL type and constraints (``"INTEGER PRIMARY KEY"``)."""
    modules: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    """Importable files (workspace paths) → the names they export (``{"db/index.js": ["openDb"]}``)."""

    @model_validator(mode="after")
    def _sound(self) -> Interface:
        routes = [f"{e.method} {e.path}" for e in self.http]
        if len(routes) != len(set(routes)):
            raise ValueError(f"an endpoint is declared twice: {sorted(r for r in routes if routes.count(r) > 1)[0]}")
        for path in self.modules:
            if path.startswith("/") or ".." in path.split("/") or not path:
                raise ValueError(f"module {path!r} must be a relative path inside the workspace")
        return self

    def describe(self) -> str:
        """The interface in a few lines, for an agent's instructions."""
        lines = []
        for e in self.http:
            line = f"- {e.method} {e.path} → {e.status}"
            if e.request is not None:
                line += f"; body {json.dumps(e.request)}"
            if e.response is not None:
                line += f"; answers {json.dumps(e.response)}"
            if e.errors:
                line += "; errors " + ", ".join(f"{code} ({why})" for code, why in sorted(e.errors.items()))
            lines.append(line)
        for table, columns in self.tables.items():
            lines.append(f"- table {table}(" + ", ".join(f"{c} {t}" for c, t in columns.items()) + ")")
        for module, names in self.modules.items():
            lines.append(f"- module {module} exports {', '.join(names)}")
        return "\n".join(lines)


class DesignTokens(_Model):
    """Optional visual language the design-style verifier and frontend agents follow."""

    colors: dict[str, str] = Field(default_factory=dict)
    fonts: dict[str, str] = Field(default_factory=dict)
    spacing: dict[str, str | int | float] = Field(default_factory=dict)


class Component(_Model):
    """One part of the app, built in its own sandbox(es) by one team."""

    name: str = Field(pattern=NAME)
    kind: ComponentKind
    description: str = Field(min_length=1)
    depends_on: tuple[str, ...] = ()
    """Components merged before this one (the frontend needs the backend's API)."""
    provides: Interface | None = None
    """What this component offers its dependents (endpoints, tables, modules)."""
    uses: tuple[str, ...] = ()
    """Components whose declared interface this one builds against (each among ``depends_on``)."""
    tasks: tuple[ContractTask, ...] = Field(min_length=1)
    check_command: Command | None = None
    """Build/test command; it must pass before the component may be merged."""
    packages: tuple[Packages, ...] = ()
    """Dependency manifests; the install phase installs them before checks, the gate and the preview."""
    dev_server: DevServer | None = None
    profile: Literal["default", "python", "node"] | None = None
    """Sandbox profile: ``default``/``python`` (Python 3 and the POSIX tools) or ``node`` (also Node 20+,
    npm and the npm cache wiring); None takes the planner default."""
    agents: int | None = Field(default=None, ge=1, le=5)
    """Team size wish; the plan clamps it (default: one per task, 3–5)."""
    design: DesignTokens | None = None
    tournament: TournamentSettings = Field(default_factory=TournamentSettings)
    runs_on: Literal["local", "modal"] | None = None
    """Where this component's sandboxes run in a ``hybrid`` build (default: Modal); a ``local`` or
    ``modal`` build puts every sandbox there (``coordinator/placement.py``)."""

    @model_validator(mode="before")
    @classmethod
    def _no_install_commands(cls, data: Any) -> Any:
        if isinstance(data, dict) and "install" in data:
            raise ValueError(
                "`install` (commands given the network) was replaced by `packages` "
                "(e.g. packages: [{manager: npm, dir: web}]): installs run as their own phase"
            )
        return data


# --- success criteria --------------------------------------------------------------------


class _Criterion(_Model):
    id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.:-]{1,100}$")
    """Stable id for reports; filled in as ``{type}-{n}`` when absent."""
    description: str = ""
    component: str | None = None
    """Component the criterion is about (and whose dev server HTTP/UI checks reach)."""


class CommandCriterion(_Criterion):
    """A command exits with ``expect_exit``."""

    type: Literal["command"] = "command"
    command: Command
    expect_exit: int = 0
    timeout_s: float = Field(default=300.0, gt=0, le=3600)


class HttpCriterion(_Criterion):
    """An HTTP request to the served app answers ``expected_status`` (and contains a text)."""

    type: Literal["http"] = "http"
    path: str = Field(pattern=r"^/")
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"] = "GET"
    request_body: Any = None
    """Sent as JSON when not None."""
    expected_status: int = Field(default=200, ge=100, le=599)
    body_contains: str | None = None


MAX_UI_STEPS = 50
"""Most steps in one UI criterion's flow."""
MAX_UI_FLOW_S = 300.0
"""Most a flow's steps may wait in all (their ``timeout_s`` summed): a criterion check stays bounded."""
Selector = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]
"""A Playwright selector (CSS, ``text=…``, ``role=…``). Actions use its first visible match and
expectations look at every match, so a selector that also matches hidden templates or several rows works."""


class _UiStep(_Model):
    timeout_s: float = Field(default=5.0, gt=0, le=30)
    """Bound on Playwright's auto-wait in this step (the element showing up, the text appearing)."""

    def describe(self) -> str:
        """The step as its action and fields, e.g. ``fill selector='input' value='milk'`` (for evidence)."""
        fields = self.model_dump(exclude={"timeout_s"})
        action = fields.pop("action")
        return " ".join([action, *(f"{name}={value!r}" for name, value in fields.items())])


class FillStep(_UiStep):
    """Replace what the field ``selector`` holds with ``value``."""

    action: Literal["fill"]
    selector: Selector
    value: str = Field(max_length=5000)


class ClickStep(_UiStep):
    """Click ``selector``."""

    action: Literal["click"]
    selector: Selector


class PressStep(_UiStep):
    """Focus ``selector`` and press ``key`` (Playwright's names: ``Enter``, ``Escape``, ``Control+a``)."""

    action: Literal["press"]
    selector: Selector
    key: str = Field(min_length=1, max_length=50)


class DragStep(_UiStep):
    """Drag ``selector`` onto ``target`` with the mouse; HTML5 drag-and-drop handlers see it too."""

    action: Literal["drag"]
    selector: Selector
    target: Selector


class ExpectTextStep(_UiStep):
    """A visible match of ``selector`` contains ``text`` (case-insensitive, like the criterion's ``text``)."""

    action: Literal["expect_text"]
    selector: Selector
    text: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=1000)]


class ExpectVisibleStep(_UiStep):
    """A match of ``selector`` is visible."""

    action: Literal["expect_visible"]
    selector: Selector


class ExpectHiddenStep(_UiStep):
    """No match of ``selector`` is visible (none at all counts as hidden)."""

    action: Literal["expect_hidden"]
    selector: Selector


class ReloadStep(_UiStep):
    """Reload the page and wait for its ``load`` event (state kept by the app, e.g. in storage, must survive)."""

    action: Literal["reload"]


class GotoStep(_UiStep):
    """Open ``path`` on the page's own origin and wait for its ``load`` event."""

    action: Literal["goto"]
    path: str = Field(max_length=2000)

    @field_validator("path")
    @classmethod
    def _on_the_origin(cls, path: str) -> str:
        if not path.startswith("/") or path.startswith("//") or any(c.isspace() or c == "\\" for c in path):
            raise ValueError(
                f"goto.path {path!r} must be a path on the app's origin: it starts with one '/' "
                "and has no spaces or backslashes (no scheme or host)"
            )
        return path


UiStep = Annotated[
    FillStep
    | ClickStep
    | PressStep
    | DragStep
    | ExpectTextStep
    | ExpectVisibleStep
    | ExpectHiddenStep
    | ReloadStep
    | GotoStep,
    Field(discriminator="action"),
]
"""One step of a UI criterion's flow, tagged by ``action``."""


class UiCriterion(_Criterion):
    """In a real browser, without console errors: a page, an optional user flow on it, then an element/text.

    ``steps`` run in order in one page after ``path`` has loaded; the first that fails fails the
    criterion (the evidence names it). ``selector``/``text`` are checked after the last step.
    """

    type: Literal["ui"] = "ui"
    path: str = Field(default="/", pattern=r"^/")
    steps: tuple[UiStep, ...] = Field(default=(), max_length=MAX_UI_STEPS)
    """The user flow: fill, click, press, drag, expect_text, expect_visible, expect_hidden, reload, goto."""
    selector: str | None = None
    text: str | None = None
    no_console_errors: bool = True
    """Console errors and uncaught exceptions seen anywhere in the flow fail the criterion."""

    @model_validator(mode="after")
    def _bounded_flow(self) -> UiCriterion:
        total = sum(step.timeout_s for step in self.steps)
        if total > MAX_UI_FLOW_S:
            raise ValueError(f"the steps' timeouts add up to {total:g}s; a flow may wait at most {MAX_UI_FLOW_S:g}s")
        return self


class FileCriterion(_Criterion):
    """A workspace path exists."""

    type: Literal["file"] = "file"
    path: str = Field(min_length=1)


class RouteCriterion(_Criterion):
    """A route exists in the served app: GET answers anything but 404."""

    type: Literal["route"] = "route"
    path: str = Field(pattern=r"^/")


Criterion = Annotated[
    CommandCriterion | HttpCriterion | UiCriterion | FileCriterion | RouteCriterion,
    Field(discriminator="type"),
]


class Origin(_Model):
    """One origin for the app: a router in front of several dev servers (the preview and the UI criteria use it).

    Without it the primary page's own server is the origin: its dev server proxies the API
    itself (Vite's ``server.proxy``, or a hand-written forward), which the contract's page task
    must ask for. With it, a small router in the main-test and preview sandboxes sends each
    request whose path starts with a prefix of ``routes`` to that component's dev server
    (longest prefix first, WebSockets included) and everything else to the primary page.
    """

    routes: dict[str, str] = Field(min_length=1, max_length=20)
    """Path prefix (``/api``) → the component whose dev server answers it."""
    port: int = Field(default=8080, ge=1024, le=65535)
    """The router's port inside the sandbox."""

    @model_validator(mode="after")
    def _prefixes(self) -> Origin:
        for prefix in self.routes:
            if not prefix.startswith("/") or any(ch in prefix for ch in " ?#\\") or len(prefix) > 200:
                raise ValueError(f"origin route {prefix!r} must be a path prefix starting with '/'")
        return self


class Budget(_Model):
    """Most the build may spend; the budget ledger enforces it."""

    usd: float = Field(default=10.0, gt=0)
    llm_tokens: int = Field(default=5_000_000, gt=0)
    compute_seconds: float = Field(default=4 * 3600.0, gt=0)
    """Sandbox CPU-seconds over the whole fleet."""


# --- the contract ------------------------------------------------------------------------


class IntentContract(_Model):
    """Everything a build must deliver; locked by ``coordinator.intent.lock``."""

    version: Literal[1] = 1
    name: str = Field(pattern=NAME)
    """Short app name."""
    summary: str = Field(min_length=1)
    """The app in a few sentences, as the user meant it."""
    components: tuple[Component, ...] = Field(min_length=1)
    success_criteria: tuple[Criterion, ...] = Field(min_length=1)
    budget: Budget = Field(default_factory=Budget)
    constraints: tuple[str, ...] = ()
    """Things the build must (not) do, in words (e.g. "stdlib only")."""
    origin: Origin | None = None
    """A router giving the page and its API one origin; None: the page's own server is the origin."""
    build_mode: Literal["local", "modal", "hybrid"] | None = None
    """Where the build's sandboxes run (``coordinator/placement.py``) when the request names no mode;
    None: the server's default backend (``KRIPTIK_BACKEND``)."""

    @model_validator(mode="before")
    @classmethod
    def _name_criteria(cls, data: Any) -> Any:
        """Give every criterion without an id the id ``{type}-{n}`` (n from 1 in the list)."""
        if not isinstance(data, dict) or not isinstance(data.get("success_criteria"), list | tuple):
            return data
        named = []
        for n, item in enumerate(data["success_criteria"], start=1):
            if isinstance(item, dict) and not item.get("id"):
                item = {**item, "id": f"{item.get('type', 'criterion')}-{n}"}
            elif isinstance(item, _Criterion) and item.id is None:
                item = item.model_copy(update={"id": f"{item.type}-{n}"})  # type: ignore[attr-defined]
            named.append(item)
        return {**data, "success_criteria": named}

    @model_validator(mode="after")
    def _whole_contract(self) -> IntentContract:
        problems = contract_problems(self)
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def component(self, name: str) -> Component:
        """The component called ``name``; raises InvalidInputError when there is none."""
        for c in self.components:
            if c.name == name:
                return c
        raise InvalidInputError(f"no component {name!r} in contract {self.name!r}", field="component")

    def criteria_of(self, component: str) -> list[Criterion]:
        """The criteria about one component."""
        return [c for c in self.success_criteria if c.component == component]


def contract_problems(contract: IntentContract) -> list[str]:
    """Every cross-field problem of a structurally valid contract (empty when it is sound)."""
    problems: list[str] = []
    names = [c.name for c in contract.components]
    problems += [f"duplicate component name {n!r}" for n in _duplicates(names)]
    known = set(names)
    for comp in contract.components:
        problems += [
            f"component {comp.name!r} depends on unknown component {d!r}" for d in comp.depends_on if d not in known
        ]
        if comp.name in comp.depends_on:
            problems.append(f"component {comp.name!r} depends on itself")
        problems += _task_problems(comp)
        for used in comp.uses:
            if used not in comp.depends_on:
                problems.append(f"component {comp.name!r} uses {used!r} but does not depend on it")
            elif used in known and next(c for c in contract.components if c.name == used).provides is None:
                problems.append(f"component {comp.name!r} uses {used!r}, which declares no interface (provides)")
    cycle = find_cycle({c.name: [d for d in c.depends_on if d in known] for c in contract.components})
    if cycle and len(cycle) > 2:  # a self-dependency is reported above
        problems.append(f"dependency cycle among components: {' -> '.join(cycle)}")
    ports: dict[int, str] = {}
    for comp in contract.components:
        if comp.dev_server is not None:
            other = ports.setdefault(comp.dev_server.port, comp.name)
            if other != comp.name:
                problems.append(f"components {other!r} and {comp.name!r} both serve on port {comp.dev_server.port}")
    if contract.origin is not None:
        problems += _origin_problems(contract, contract.origin)
    ids = [c.id or "" for c in contract.success_criteria]
    problems += [f"duplicate success criterion id {i!r}" for i in _duplicates(ids)]
    by_name = {c.name: c for c in contract.components}
    for crit in contract.success_criteria:
        if crit.component is None:
            continue
        if crit.component not in by_name:
            problems.append(f"success criterion {crit.id!r} refers to unknown component {crit.component!r}")
        elif crit.type in ("http", "ui", "route") and by_name[crit.component].dev_server is None:
            problems.append(
                f"success criterion {crit.id!r} needs a served app but component {crit.component!r} has no dev_server"
            )
    return problems


def primary_component(contract: IntentContract) -> Component | None:
    """The app's page: the first frontend with a dev server, else the first component with one."""
    served = [c for c in contract.components if c.dev_server is not None]
    return next((c for c in served if c.kind == "frontend"), served[0] if served else None)


def _origin_problems(contract: IntentContract, origin: Origin) -> list[str]:
    by_name = {c.name: c for c in contract.components}
    problems = []
    for prefix, name in origin.routes.items():
        comp = by_name.get(name)
        if comp is None:
            problems.append(f"origin route {prefix!r} names unknown component {name!r}")
        elif comp.dev_server is None:
            problems.append(f"origin route {prefix!r} names component {name!r}, which has no dev_server")
    if primary_component(contract) is None:
        problems.append("origin needs a component with a dev_server to serve every other path")
    if any(c.dev_server is not None and c.dev_server.port == origin.port for c in contract.components):
        problems.append(f"origin port {origin.port} is also a dev server's port")
    return problems


def _task_problems(comp: Component) -> list[str]:
    ids = [t.id for t in comp.tasks]
    problems = [f"component {comp.name!r}: duplicate task id {i!r}" for i in _duplicates(ids)]
    for task in comp.tasks:
        problems += [
            f"component {comp.name!r}: task {task.id!r} depends on unknown task {d!r}"
            for d in task.depends_on
            if d not in ids
        ]
    cycle = find_cycle({t.id: [d for d in t.depends_on if d in ids] for t in comp.tasks})
    if cycle:
        problems.append(f"component {comp.name!r}: dependency cycle among tasks: {' -> '.join(cycle)}")
    return problems


def _duplicates(items: list[str]) -> list[str]:
    seen: set[str] = set()
    return sorted({i for i in items if i in seen or seen.add(i)})  # type: ignore[func-returns-value]


def find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """One dependency cycle as ``[a, b, …, a]``, or None; deterministic (nodes visited by name)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return path[path.index(dep) :] + [dep]
            if dep not in state and (found := visit(dep)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


# --- parsing and loading ---------------------------------------------------------------------


def parse_contract(data: Any) -> IntentContract:
    """Validate a mapping (from YAML, JSON or a tool call) into a contract.

    Raises:
        ContractInvalidError: The contract is invalid; ``problems`` lists every reason with its location.
    """
    if isinstance(data, IntentContract):
        return data
    if not isinstance(data, dict):
        raise ContractInvalidError(
            f"a contract must be a mapping, not {type(data).__name__}", problems=["not a mapping"]
        )
    try:
        return IntentContract.model_validate(data)
    except ValidationError as exc:
        problems = validation_problems(exc)
        raise ContractInvalidError("invalid intent contract:\n- " + "\n- ".join(problems), problems=problems) from None


def validation_problems(exc: ValidationError) -> list[str]:
    """Pydantic's errors as readable lines: ``components.1.kind: Input should be …``."""
    problems: list[str] = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        for line in message.splitlines():
            problems.append(f"{where}: {line}" if where else line)
    return problems


def load_contract(source: str | Path) -> IntentContract:
    """A contract from a YAML/JSON file path or from YAML/JSON text.

    A :class:`~pathlib.Path`, or a one-line string naming an existing file, is read; any other
    string is parsed as text (JSON is YAML).

    Raises:
        ContractInvalidError: The text is not YAML or the contract is invalid (the message names the file).
        InvalidInputError: The path cannot be read.
    """
    origin = "<text>"
    text: str
    if isinstance(source, Path) or _names_file(source):
        path = Path(source)
        origin = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise InvalidInputError(f"cannot read contract {path}: {exc}", field="path") from exc
    else:
        text = source
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ContractInvalidError(f"{origin}: not YAML/JSON: {exc}", problems=[f"not YAML/JSON: {exc}"]) from None
    try:
        return parse_contract(data)
    except ContractInvalidError as exc:
        if origin == "<text>":
            raise
        raise ContractInvalidError(f"{origin}: {exc}", problems=exc.problems) from None


def _names_file(text: str) -> bool:
    """Whether a string is the path of an existing file (a long or multi-line string is text)."""
    if "\n" in text or len(text) > 1024 or text.lstrip().startswith(("{", "[")):
        return False
    try:
        return Path(text).is_file()
    except OSError:
        return False


def dump_contract(contract: IntentContract, *, fmt: Literal["yaml", "json"] = "yaml") -> str:
    """The contract as YAML or JSON text that :func:`load_contract` reads back to an equal contract."""
    data = contract.model_dump(mode="json", exclude_none=True)
    if fmt == "json":
        return json.dumps(data, indent=2, ensure_ascii=False)
    text: str = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    return text
