"""Intent Lock (Phase 0) and satisfaction (Phase 6).

* :func:`plan_contract` turns a prompt into an :class:`IntentContract` with one planner turn
  (key ``(planner, intent, 0)``), and one repair turn (``turn 1``) that shows the model its
  validation errors; a second invalid answer is a :class:`ContractError`.
* :func:`lock` freezes the contract as canonical JSON plus its sha256. Everything after Phase 0
  works from the locked contract; :func:`verify_lock` refuses one that changed since, naming
  the fields that differ, so a "done" can never be measured against moved goalposts.
* :func:`check_satisfaction` runs every success criterion through a :class:`CriterionRunner`
  port and reports pass/fail with evidence; the build is done only when all pass.
  :class:`SandboxCriterionRunner` is the concrete runner over a sandbox and httpx.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import httpx
import yaml
from pydantic import BaseModel, ConfigDict, Field

from coordinator.bus.events import IntentSatisfaction
from coordinator.contracts import (
    Command,
    ContractInvalidError,
    Criterion,
    IntentContract,
    UiCriterion,
    UiStep,
    parse_contract,
)
from sandbox_agents.backends.base import Sandbox
from sandbox_agents.errors import ContractError, InvalidInputError, KriptikError, SandboxTimeoutError
from sandbox_agents.llm.base import AssistantTurn, LLMProvider, LLMRequest, Message, ToolResult, ToolSpec, TurnKey

logger = logging.getLogger(__name__)

EVIDENCE_CAP = 2_000
"""Most characters of output kept as one criterion's evidence."""


# --- the lock ----------------------------------------------------------------------------


class ContractDriftError(ContractError):
    """The contract changed after it was locked; ``fields`` are the dotted paths that differ."""

    def __init__(self, message: str, *, fields: list[str]) -> None:
        super().__init__(message)
        self.fields = fields


class LockedContract(BaseModel):
    """A contract with the canonical JSON and hash it had when locked."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    contract: IntentContract
    canonical: str
    """Canonical JSON (sorted keys, no spaces, defaults included) at lock time."""
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    locked_at: float = 0.0


def canonical_json(contract: IntentContract) -> str:
    """The contract as canonical JSON: defaults included, so the hash pins meaning, not just text."""
    return json.dumps(contract.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def lock(contract: IntentContract, *, clock: Callable[[], float] = time.time) -> LockedContract:
    """Lock a contract: equal contracts always get the same hash, whatever their field order."""
    canonical = canonical_json(contract)
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    logger.info("intent locked: %s sha256=%s", contract.name, digest[:12])
    return LockedContract(contract=contract, canonical=canonical, sha256=digest, locked_at=clock())


def verify_lock(locked: LockedContract, current: IntentContract | None = None) -> None:
    """Check that a contract (``current``, or the locked one as it is now) still matches the lock.

    Raises:
        ContractDriftError: The contract (or the stored canonical text) differs from the lock;
            ``fields`` names what changed, e.g. ``components[backend].description``.
    """
    now = canonical_json(current if current is not None else locked.contract)
    if (
        hashlib.sha256(now.encode()).hexdigest()
        == locked.sha256
        == hashlib.sha256(locked.canonical.encode()).hexdigest()
    ):
        return
    fields = sorted(set(_diff(json.loads(locked.canonical), json.loads(now), ""))) or ["<canonical text or hash>"]
    raise ContractDriftError(
        f"contract {locked.contract.name!r} drifted from its lock {locked.sha256[:12]}: {', '.join(fields)}",
        fields=fields,
    )


def _diff(old: Any, new: Any, path: str) -> list[str]:
    """Dotted paths where two JSON trees differ; list items with a ``name``/``id`` are keyed by it."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new)):
            out += _diff(old.get(key), new.get(key), f"{path}.{key}" if path else key)
        return out
    if isinstance(old, list) and isinstance(new, list):
        old_k, new_k = _keyed(old), _keyed(new)
        if old_k is not None and new_k is not None:
            return [
                p for k in sorted(set(old_k) | set(new_k)) for p in _diff(old_k.get(k), new_k.get(k), f"{path}[{k}]")
            ]
        if len(old) != len(new):
            return [path]
        return [p for i, (a, b) in enumerate(zip(old, new, strict=True)) for p in _diff(a, b, f"{path}[{i}]")]
    return [] if old == new else [path]


def _keyed(items: list[Any]) -> dict[str, Any] | None:
    for field in ("name", "id"):
        keys: list[Any] = [i.get(field) for i in items if isinstance(i, dict)]
        if len(keys) == len(items) and all(isinstance(k, str) for k in keys) and len(set(keys)) == len(keys):
            return dict(zip(keys, items, strict=True))
    return None


# --- the planner turn --------------------------------------------------------------------

SUBMIT_TOOL = ToolSpec(
    name="submit_contract",
    description="Submit the intent contract of the app (components, success criteria, budget, constraints).",
    parameters=IntentContract.model_json_schema(),
)

PLANNER_SYSTEM = """You turn a user's request for an app into an intent contract: the app's components \
(frontend, backend, database, api-integrations, auth, payments, other), each with a description, the \
components it depends on, small tasks (id, title, instructions, acceptance, check_command, depends_on), \
a check command and, when it serves HTTP, a dev_server (command and port); the interface a component \
provides to its dependents (provides: http endpoints with request/response examples, tables, modules) \
and the components whose interface it uses; its dependency manifests (packages: npm or pip, and the \
directory) and profile (python or node); success criteria a machine \
can check (type: command | http | ui | file | route; a ui criterion may first run a user flow, steps of \
action fill | click | press | drag | expect_text | expect_visible | expect_hidden | reload | goto); a \
budget; constraints. Call submit_contract with the contract, or answer the contract as YAML or JSON in \
one fenced code block."""

_FENCE = re.compile(r"```(?:ya?ml|json)?\s*\n(.*?)```", re.DOTALL | re.IGNORECASE)


async def plan_contract(
    prompt: str, provider: LLMProvider, *, role: str = "planner", task: str = "intent"
) -> IntentContract:
    """Ask the planner for the contract of ``prompt``; one repair turn if the first answer is invalid.

    Raises:
        ContractInvalidError: Both answers were invalid (``problems`` are the second answer's).
        LLMError: The provider failed.
    """
    if not prompt.strip():
        raise InvalidInputError("the prompt is empty", field="prompt")
    messages = [Message(role="user", content=prompt)]
    problems: list[str] = []
    for turn in (0, 1):
        request = LLMRequest(
            key=TurnKey(role=role, task=task, turn=turn),
            system=PLANNER_SYSTEM,
            messages=messages,
            tools=[SUBMIT_TOOL],
        )
        reply = await provider.complete(request)
        try:
            contract = parse_contract(_contract_data(reply))
        except ContractInvalidError as exc:
            problems = exc.problems
            logger.info("planner turn %d gave an invalid contract: %s", turn, "; ".join(problems))
            messages = [*messages, *_repair_messages(reply, str(exc))]
            continue
        logger.info("planner turn %d: contract %r with %d components", turn, contract.name, len(contract.components))
        return contract
    raise ContractInvalidError(
        "the planner's contract is still invalid after one repair turn:\n- " + "\n- ".join(problems), problems=problems
    )


def _contract_data(reply: AssistantTurn) -> Any:
    """The contract mapping of an answer: a ``submit_contract`` call's arguments, or YAML/JSON text."""
    for call in reply.tool_calls:
        if call.name == SUBMIT_TOOL.name:
            args = call.arguments
            return args["contract"] if set(args) == {"contract"} else args
    fenced = _FENCE.search(reply.text or "")
    text = fenced.group(1) if fenced else reply.text
    if not text.strip():
        raise ContractInvalidError("the answer holds no contract", problems=["the answer holds no contract"])
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ContractInvalidError(f"not YAML/JSON: {exc}", problems=[f"not YAML/JSON: {exc}"]) from None


def _repair_messages(reply: AssistantTurn, error: str) -> list[Message]:
    """The invalid answer and the validation error, as the repair turn's new messages."""
    fix = f"{error}\n\nFix every problem and submit the whole contract again."
    answer = Message(role="assistant", content=reply.text, tool_calls=reply.tool_calls)
    if reply.tool_calls:
        results = [ToolResult(call_id=c.id, content=fix, is_error=True) for c in reply.tool_calls]
        return [answer, Message(role="tool", tool_results=results)]
    return [answer, Message(role="user", content=fix)]


# --- satisfaction --------------------------------------------------------------------------


class UiStepError(KriptikError, AssertionError):
    """A step of a UI criterion's flow did not hold, so the criterion fails; the steps after it did not run.

    Args:
        message: Why, in the browser's words (Playwright's message, trimmed).
        index: The step's position in ``steps``, from 0 (as in validation errors: ``steps.2``).
        action: The step's action.
        console_errors: Console errors and uncaught exceptions seen up to the failure.
    """

    def __init__(self, message: str, *, index: int, action: str, console_errors: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.index = index
        self.action = action
        self.console_errors = list(console_errors)


class CriterionRunner(Protocol):
    """How success criteria reach the built app (a sandbox, its served ports, a browser)."""

    async def run_command(
        self, component: str | None, command: Command, *, timeout_s: float | None = None
    ) -> tuple[int, str]:
        """Run a command; the exit code and the combined output."""
        ...

    async def http(self, path: str, method: str, *, body: Any = None, component: str | None = None) -> tuple[int, str]:
        """Send a request to the served app; the status and the body text."""
        ...

    async def ui(
        self,
        path: str,
        selector: str | None,
        text: str | None,
        *,
        steps: Sequence[UiStep] = (),
        component: str | None = None,
    ) -> tuple[bool, list[str]]:
        """Open a page and run ``steps`` on it; whether the selector/text is then visible, and the console errors.

        Raises:
            UiStepError: A step failed (which one, why, and the console errors up to then).
        """
        ...

    async def file_exists(self, path: str) -> bool: ...


class CriterionResult(BaseModel):
    """One criterion's outcome and why."""

    model_config = ConfigDict(extra="forbid")

    id: str
    type: str
    component: str | None = None
    passed: bool
    evidence: str


class SatisfactionReport(BaseModel):
    """Every criterion's outcome against one locked contract; ``done`` only when all pass."""

    model_config = ConfigDict(extra="forbid")

    contract_sha256: str
    results: list[CriterionResult]

    @property
    def done(self) -> bool:
        return bool(self.results) and all(r.passed for r in self.results)

    @property
    def failed(self) -> list[CriterionResult]:
        return [r for r in self.results if not r.passed]

    def to_event(self) -> IntentSatisfaction:
        """The report as an event of the build's log (``intent.satisfaction``)."""
        passed = sum(r.passed for r in self.results)
        return IntentSatisfaction(
            **self.model_dump(mode="json"), done=self.done, passed=passed, total=len(self.results)
        )


async def check_satisfaction(locked: LockedContract, runner: CriterionRunner) -> SatisfactionReport:
    """Run every success criterion of a locked contract, in order.

    A runner error fails that criterion (with the error as evidence) and the others still run.

    Raises:
        ContractDriftError: The contract no longer matches its lock.
    """
    verify_lock(locked)
    results: list[CriterionResult] = []
    for criterion in locked.contract.success_criteria:
        try:
            passed, evidence = await _check(criterion, runner)
        except Exception as exc:  # noqa: BLE001 - a broken check is a failed criterion, with the reason as evidence
            logger.warning("criterion %s could not be checked: %r", criterion.id, exc)
            passed, evidence = False, f"check failed: {type(exc).__name__}: {exc}"
        results.append(
            CriterionResult(
                id=criterion.id or criterion.type,
                type=criterion.type,
                component=criterion.component,
                passed=passed,
                evidence=_cap(evidence),
            )
        )
    report = SatisfactionReport(contract_sha256=locked.sha256, results=results)
    logger.info("satisfaction of %s: %d/%d", locked.contract.name, len(results) - len(report.failed), len(results))
    return report


async def _check(c: Criterion, runner: CriterionRunner) -> tuple[bool, str]:
    """Whether one criterion holds, and the evidence."""
    if c.type == "command":
        code, output = await runner.run_command(c.component, c.command, timeout_s=c.timeout_s)
        return code == c.expect_exit, f"exit code {code} (expected {c.expect_exit})\n{output[-EVIDENCE_CAP:]}"
    if c.type == "http":
        status, body = await runner.http(c.path, c.method, body=c.request_body, component=c.component)
        ok = status == c.expected_status and (c.body_contains is None or c.body_contains in body)
        want = f"{c.expected_status}" + (f" with {c.body_contains!r} in the body" if c.body_contains else "")
        return ok, f"{c.method} {c.path} -> {status} (expected {want})\n{body[:EVIDENCE_CAP]}"
    if c.type == "route":
        status, _ = await runner.http(c.path, "GET", component=c.component)
        return status != 404 and status > 0, f"GET {c.path} -> {status} (expected anything but 404)"
    if c.type == "ui":
        return await _check_ui(c, runner)
    exists = await runner.file_exists(c.path)
    return exists, f"{c.path} {'exists' if exists else 'does not exist'}"


async def _check_ui(c: UiCriterion, runner: CriterionRunner) -> tuple[bool, str]:
    """A UI criterion: its flow's steps, then its selector/text, and the console errors of the whole visit."""
    try:
        visible, errors = await runner.ui(c.path, c.selector, c.text, steps=c.steps, component=c.component)
    except UiStepError as exc:
        return False, _ui_step_evidence(c, exc)
    ok = visible and not (c.no_console_errors and errors)
    what = " ".join(filter(None, [c.selector, repr(c.text) if c.text else None])) or "the page"
    after = f"after {len(c.steps)} steps, " if c.steps else ""
    shown = f"{after}{what} {'visible' if visible else 'not visible'} at {c.path}"
    return ok, f"{shown}; {_console(errors)}"


def _ui_step_evidence(c: UiCriterion, exc: UiStepError) -> str:
    """Which step of the flow failed and why, the steps before it, and the console errors seen."""
    step = c.steps[exc.index].describe() if 0 <= exc.index < len(c.steps) else exc.action
    head = f"steps[{exc.index}] failed ({exc.index} of {len(c.steps)} passed before it, flow from {c.path}): {step}"
    return f"{head}\n{exc}\n{_console(exc.console_errors)}"


def _console(errors: Sequence[str]) -> str:
    return f"{len(errors)} console errors" + "".join(f"\n{e}" for e in errors[:10])


def _cap(text: str) -> str:
    return text if len(text) <= EVIDENCE_CAP else text[: EVIDENCE_CAP - 10] + "\n…[cut]"


class UiChecker(Protocol):
    """Checks a page in a browser (the gate's Playwright): (url, selector, text, steps) -> (visible, console errors).

    Raises:
        UiStepError: A step of the flow failed.
    """

    async def __call__(
        self, url: str, selector: str | None, text: str | None, *, steps: Sequence[UiStep] = ()
    ) -> tuple[bool, list[str]]: ...


class SandboxCriterionRunner:
    """Runs criteria against a sandbox: commands and files in it, HTTP with httpx, UI via a checker.

    Args:
        sandbox: The sandbox holding the merged app (the main-test or preview sandbox).
        base_url: URL of the served app, or component name → URL (``""`` is the default) when
            components serve on different ports.
        ui_checker: Browser check for UI criteria; without it they fail with that as evidence.
        client: An httpx client to use (tests pass one over ``httpx.MockTransport``).
        http_timeout_s: Bound on one HTTP request.
    """

    def __init__(
        self,
        sandbox: Sandbox,
        base_url: str | Mapping[str, str],
        ui_checker: UiChecker | None = None,
        *,
        client: httpx.AsyncClient | None = None,
        http_timeout_s: float = 15.0,
    ) -> None:
        self.sandbox = sandbox
        self.urls = {"": base_url} if isinstance(base_url, str) else dict(base_url)
        self.ui_checker = ui_checker
        self._client = client
        self.http_timeout_s = http_timeout_s

    def url(self, path: str, component: str | None) -> str:
        """The absolute URL of ``path`` on the component's server (or the default one)."""
        base = self.urls.get(component or "") or self.urls.get("")
        if base is None:
            raise InvalidInputError(f"no base URL for component {component!r}", field="base_url")
        return base.rstrip("/") + path

    async def run_command(
        self, component: str | None, command: Command, *, timeout_s: float | None = None
    ) -> tuple[int, str]:
        try:
            result = await self.sandbox.exec(command, timeout=timeout_s)
        except SandboxTimeoutError as exc:
            return 124, f"timed out after {exc.timeout_s}s\n{exc.stdout[-1000:]}{exc.stderr[-1000:]}"
        return result.exit_code, (result.stdout[-EVIDENCE_CAP:] + result.stderr[-EVIDENCE_CAP:])

    async def http(self, path: str, method: str, *, body: Any = None, component: str | None = None) -> tuple[int, str]:
        client = self._client or httpx.AsyncClient(timeout=self.http_timeout_s)
        try:
            kwargs: dict[str, Any] = {} if body is None else {"json": body}
            response = await client.request(method, self.url(path, component), **kwargs)
            return response.status_code, response.text
        except httpx.HTTPError as exc:
            return 0, f"request failed: {type(exc).__name__}: {exc}"
        finally:
            if self._client is None:
                await client.aclose()

    async def ui(
        self,
        path: str,
        selector: str | None,
        text: str | None,
        *,
        steps: Sequence[UiStep] = (),
        component: str | None = None,
    ) -> tuple[bool, list[str]]:
        if self.ui_checker is None:
            raise InvalidInputError("no UI checker configured for UI criteria", field="ui_checker")
        return await self.ui_checker(self.url(path, component), selector, text, steps=steps)

    async def file_exists(self, path: str) -> bool:
        rel = posixpath.normpath(path).lstrip("/")
        return any(f.path == rel for f in await self.sandbox.list_files(rel))
