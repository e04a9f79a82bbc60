"""UI flows in contracts: the steps' schema, what reaches the browser check, the evidence of a failed step.

The browser itself runs in ``tests/integration/test_ui_steps_chromium.py``; here a runner double stands in
for it where the check is plain Python (passing steps on, formatting what came back).
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import yaml

from actors.merge_gate import REASON_CAP, _playwright_reason
from coordinator.contracts import (
    MAX_UI_STEPS,
    ContractInvalidError,
    DragStep,
    ExpectTextStep,
    FillStep,
    ReloadStep,
    UiCriterion,
    parse_contract,
)
from coordinator.intent import (
    ContractDriftError,
    SandboxCriterionRunner,
    UiStepError,
    check_satisfaction,
    lock,
    verify_lock,
)
from sandbox_agents.backends.base import SandboxSpec
from sandbox_agents.backends.fake import FakeBackend

FLOW = yaml.safe_load(
    """
- id: card-flow
  type: ui
  path: /
  component: web
  selector: h1
  text: Board
  steps:
    - {action: fill, selector: "input[name=title]", value: "Write tests"}
    - {action: click, selector: "button[type=submit]"}
    - {action: expect_text, selector: "[data-column=todo]", text: "Write tests"}
    - {action: drag, selector: "[data-card='Write tests']", target: "[data-column=doing]"}
    - {action: expect_text, selector: "[data-column=doing]", text: "Write tests", timeout_s: 10}
    - {action: press, selector: "input[name=title]", key: "Enter"}
    - {action: reload}
    - {action: expect_visible, selector: "h1"}
    - {action: expect_hidden, selector: ".error"}
    - {action: goto, path: "/about?tab=1"}
"""
)


def contract(criteria: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "name": "board",
        "summary": "A kanban board.",
        "components": [
            {
                "name": "web",
                "kind": "frontend",
                "description": "the board",
                "dev_server": {"command": "python3 -m http.server 5173", "port": 5173},
                "tasks": [{"id": "board", "title": "write the board"}],
            }
        ],
        "success_criteria": FLOW if criteria is None else criteria,
    }


def flow_with(*steps: dict[str, Any]) -> dict[str, Any]:
    return contract([{"id": "flow", "type": "ui", "steps": list(steps)}, {"type": "file", "path": "index.html"}])


def problems_of(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ContractInvalidError) as info:
        parse_contract(data)
    return info.value.problems


# --- the schema --------------------------------------------------------------------------------


def test_a_flow_parses_into_typed_steps_with_default_timeouts() -> None:
    criterion = parse_contract(contract()).success_criteria[0]
    assert isinstance(criterion, UiCriterion)
    assert [s.action for s in criterion.steps] == [
        "fill",
        "click",
        "expect_text",
        "drag",
        "expect_text",
        "press",
        "reload",
        "expect_visible",
        "expect_hidden",
        "goto",
    ]
    fill, drag, later = criterion.steps[0], criterion.steps[3], criterion.steps[4]
    assert isinstance(fill, FillStep) and fill.value == "Write tests" and fill.timeout_s == 5.0
    assert isinstance(drag, DragStep) and drag.target == "[data-column=doing]"
    assert isinstance(later, ExpectTextStep) and later.timeout_s == 10.0
    assert (criterion.selector, criterion.text) == ("h1", "Board")


def test_a_ui_criterion_without_steps_reads_as_before() -> None:
    criterion = parse_contract(contract([{"type": "ui", "selector": "h1", "text": "Board"}])).success_criteria[0]
    assert isinstance(criterion, UiCriterion) and criterion.steps == () and criterion.path == "/"


@pytest.mark.parametrize(
    ("step", "problem"),
    [
        (
            {"action": "hover", "selector": "a"},
            "success_criteria.0.ui.steps.0: Input tag 'hover' found using 'action' does not match any of the expected "
            "tags: 'fill', 'click', 'press', 'drag', 'expect_text', 'expect_visible', 'expect_hidden', 'reload', 'goto'",
        ),
        ({"selector": "a"}, "success_criteria.0.ui.steps.0: Unable to extract tag using discriminator 'action'"),
        (
            {"action": "click", "selector": "a", "value": "x"},
            "success_criteria.0.ui.steps.0.click.value: Extra inputs are not permitted",
        ),
        ({"action": "fill", "selector": "input"}, "success_criteria.0.ui.steps.0.fill.value: Field required"),
        (
            {"action": "click", "selector": "   "},
            "success_criteria.0.ui.steps.0.click.selector: String should have at least 1 character",
        ),
        (
            {"action": "expect_visible", "selector": "a" * 501},
            "success_criteria.0.ui.steps.0.expect_visible.selector: String should have at most 500 characters",
        ),
        ({"action": "drag", "selector": "#card"}, "success_criteria.0.ui.steps.0.drag.target: Field required"),
        (
            {"action": "expect_text", "selector": "ul", "text": ""},
            "success_criteria.0.ui.steps.0.expect_text.text: String should have at least 1 character",
        ),
        (
            {"action": "reload", "timeout_s": 31},
            "success_criteria.0.ui.steps.0.reload.timeout_s: Input should be less than or equal to 30",
        ),
        (
            {"action": "press", "selector": "input", "key": "Enter", "timeout_s": 0},
            "success_criteria.0.ui.steps.0.press.timeout_s: Input should be greater than 0",
        ),
    ],
)
def test_an_invalid_step_is_refused_with_its_location(step: dict[str, Any], problem: str) -> None:
    assert problems_of(flow_with(step)) == [problem]


@pytest.mark.parametrize("path", ["//evil.test/", "http://evil.test/", "about", "/a b", "/\\evil.test"])
def test_goto_accepts_only_a_path_on_the_apps_origin(path: str) -> None:
    (problem,) = problems_of(flow_with({"action": "goto", "path": path}))
    assert problem.startswith(f"success_criteria.0.ui.steps.0.goto.path: goto.path {path!r} must be a path")


def test_a_flow_holds_at_most_fifty_steps() -> None:
    assert parse_contract(flow_with(*[{"action": "reload"}] * MAX_UI_STEPS))
    assert problems_of(flow_with(*[{"action": "reload"}] * (MAX_UI_STEPS + 1))) == [
        "success_criteria.0.ui.steps: Tuple should have at most 50 items after validation, not 51"
    ]


def test_every_bad_step_of_a_flow_is_reported_at_once() -> None:
    problems = problems_of(flow_with({"action": "click"}, {"action": "reload"}, {"action": "fill", "selector": "i"}))
    assert problems == [
        "success_criteria.0.ui.steps.0.click.selector: Field required",
        "success_criteria.0.ui.steps.2.fill.value: Field required",
    ]


def test_the_lock_pins_the_steps() -> None:
    locked = lock(parse_contract(contract()))
    moved = [{**FLOW[0], "steps": [{**s, "text": "Other"} if s.get("text") else s for s in FLOW[0]["steps"]]}]
    with pytest.raises(ContractDriftError) as info:
        verify_lock(locked, parse_contract(contract(moved)))
    assert info.value.fields == [
        "success_criteria[card-flow].steps[2].text",
        "success_criteria[card-flow].steps[4].text",
    ]


# --- satisfaction: what the runner gets, what the evidence says --------------------------------


class FlowRunner:
    """A runner double whose browser part replays a fixed outcome and records what it was asked."""

    def __init__(self, outcome: tuple[bool, list[str]] | UiStepError) -> None:
        self.outcome = outcome
        self.asked: list[tuple[str, str | None, str | None, tuple[Any, ...], str | None]] = []

    async def run_command(self, component: str | None, command: Any, *, timeout_s: float | None = None):
        return 0, ""

    async def http(self, path: str, method: str, *, body: Any = None, component: str | None = None):
        return 200, ""

    async def ui(
        self, path: str, selector: str | None, text: str | None, *, steps: Any = (), component: str | None = None
    ) -> tuple[bool, list[str]]:
        self.asked.append((path, selector, text, tuple(steps), component))
        if isinstance(self.outcome, UiStepError):
            raise self.outcome
        return self.outcome

    async def file_exists(self, path: str) -> bool:
        return True


async def test_a_passing_flow_hands_its_steps_to_the_browser_and_says_so() -> None:
    locked = lock(parse_contract(contract()))
    runner = FlowRunner((True, []))
    report = await check_satisfaction(locked, runner)
    assert report.done
    (asked,) = runner.asked
    assert asked[:3] == ("/", "h1", "Board") and asked[4] == "web"
    assert asked[3] == locked.contract.success_criteria[0].steps  # type: ignore[union-attr]
    assert report.results[0].evidence == "after 10 steps, h1 'Board' visible at /; 0 console errors"


async def test_a_failed_step_is_named_with_its_index_action_reason_and_console_errors() -> None:
    failure = UiStepError(
        "Locator expected to be visible\nnow '[data-column=doing]' matches 1 elements, 1 visible\n  'Doing'",
        index=4,
        action="expect_text",
        console_errors=["console error: drop handler failed", "uncaught: TypeError: x is undefined"],
    )
    report = await check_satisfaction(lock(parse_contract(contract())), FlowRunner(failure))
    (result,) = report.failed
    assert result.id == "card-flow"
    assert result.evidence.splitlines() == [
        "steps[4] failed (4 of 10 passed before it, flow from /): "
        "expect_text selector='[data-column=doing]' text='Write tests'",
        "Locator expected to be visible",
        "now '[data-column=doing]' matches 1 elements, 1 visible",
        "  'Doing'",
        "2 console errors",
        "console error: drop handler failed",
        "uncaught: TypeError: x is undefined",
    ]


async def test_console_errors_during_a_flow_fail_it_even_when_every_step_held() -> None:
    report = await check_satisfaction(
        lock(parse_contract(contract())), FlowRunner((True, ["console error: Failed to save"]))
    )
    assert [r.id for r in report.failed] == ["card-flow"]
    assert report.failed[0].evidence.endswith("1 console errors\nconsole error: Failed to save")


async def test_the_sandbox_runner_passes_the_steps_to_its_checker_with_the_components_url() -> None:
    seen: list[tuple[str, tuple[Any, ...]]] = []

    async def checker(url: str, selector: str | None, text: str | None, *, steps: Any = ()) -> tuple[bool, list[str]]:
        seen.append((url, tuple(steps)))
        return True, []

    sandbox = await FakeBackend().create(SandboxSpec())
    steps = (ReloadStep(action="reload"),)
    async with httpx.AsyncClient() as client:
        runner = SandboxCriterionRunner(sandbox, {"web": "http://web.test:5173/"}, checker, client=client)
        assert await runner.ui("/board", "h1", None, steps=steps, component="web") == (True, [])
    assert seen == [("http://web.test:5173/board", steps)]


# --- Playwright's message, trimmed for evidence -------------------------------------------------

PLAYWRIGHT_MESSAGE = (
    "\x1b[31mLocator expected to contain text 'Zeta'\x1b[39m\nActual value:  \n\nCall log:\n"
    '  - Expect "to_contain_text" locator("[data-column=todo]") with timeout 1000ms\n'
    '  - waiting for locator("[data-column=todo]")\n\n'
    '\nAria snapshot:\n- heading "Board" [level=1]\n- list:\n  - listitem: Alpha\n'
)


def test_playwrights_message_keeps_its_call_log_and_drops_colours_blank_lines_and_the_aria_tree() -> None:
    assert _playwright_reason(AssertionError(PLAYWRIGHT_MESSAGE)) == (
        "Locator expected to contain text 'Zeta'\nActual value:\nCall log:\n"
        '  - Expect "to_contain_text" locator("[data-column=todo]") with timeout 1000ms\n'
        '  - waiting for locator("[data-column=todo]")'
    )


def test_a_long_playwright_message_is_cut_to_its_cap() -> None:
    reason = _playwright_reason(AssertionError("x" * 5000))
    assert len(reason) == REASON_CAP and reason.endswith("…")


def test_a_flow_whose_step_timeouts_add_up_past_the_bound_is_refused() -> None:
    from coordinator.contracts import MAX_UI_FLOW_S, UiCriterion

    steps = [{"action": "click", "selector": "button", "timeout_s": 30}] * 11
    with pytest.raises(ValueError, match=f"at most {MAX_UI_FLOW_S:g}s"):
        UiCriterion.model_validate({"type": "ui", "steps": steps})
    assert len(UiCriterion.model_validate({"type": "ui", "steps": steps[:10]}).steps) == 10
