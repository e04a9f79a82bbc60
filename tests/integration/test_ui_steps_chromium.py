"""UI flows of success criteria in real Chromium (the gate's ``ui_checker``) against a page served here.

The page is a small board: a form adds a card (after a short delay, as a save would take, so the
steps must wait for it) to the "todo" column and to a list; cards move between the "todo" and
"doing" columns by HTML5 drag-and-drop (``dragstart``/``drop`` with ``dataTransfer``); the board is
kept in ``localStorage``, so it survives a reload. A "sync" button only logs a console error.
"""

from __future__ import annotations

import http.server
import os
import shutil
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio

from actors.merge_gate import ui_checker
from coordinator.contracts import parse_contract
from coordinator.intent import SandboxCriterionRunner, SatisfactionReport, check_satisfaction, lock
from sandbox_agents.backends.base import SandboxSpec
from sandbox_agents.backends.fake import FakeBackend
from sandbox_agents.browser import Chromium

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="the isolated browser needs root to set itself up"),
]

BOARD = """<!doctype html><html><head><meta charset="utf-8"><title>Board</title></head><body>
<h1>Board</h1>
<form id="add"><input name="title" aria-label="title"><button type="submit">Add</button></form>
<p class="error" hidden>Could not save</p>
<button id="sync" type="button">Sync</button>
<ul id="list"></ul>
<section data-column="todo"><h2>Todo</h2></section>
<section data-column="doing"><h2>Doing</h2></section>
<script>
const load = () => JSON.parse(localStorage.getItem("cards") || "{}");  // title -> column
const save = (cards) => localStorage.setItem("cards", JSON.stringify(cards));
function render() {
  document.querySelectorAll("[data-card]").forEach((card) => card.remove());
  const items = [];
  for (const [title, column] of Object.entries(load())) {
    const card = document.createElement("div");
    card.draggable = true;
    card.dataset.card = title;
    card.textContent = title;
    card.addEventListener("dragstart", (e) => e.dataTransfer.setData("text/plain", title));
    document.querySelector(`[data-column="${column}"]`).append(card);
    const item = document.createElement("li");
    item.textContent = title;
    items.push(item);
  }
  document.getElementById("list").replaceChildren(...items);
}
document.getElementById("add").addEventListener("submit", (e) => {
  e.preventDefault();
  const input = e.target.elements.title;
  const title = input.value.trim();
  input.value = "";
  if (title) setTimeout(() => { save({ ...load(), [title]: "todo" }); render(); }, 200);
});
document.querySelectorAll("[data-column]").forEach((column) => {
  column.addEventListener("dragover", (e) => e.preventDefault());
  column.addEventListener("drop", (e) => {
    e.preventDefault();
    save({ ...load(), [e.dataTransfer.getData("text/plain")]: column.dataset.column });
    render();
  });
});
document.getElementById("sync").addEventListener("click", () => console.error("sync failed: offline"));
render();
</script></body></html>"""
ABOUT = "<!doctype html><html><body><h1>About the board</h1></body></html>"
PAGES = {"/": BOARD, "/about": ABOUT}

ADD_TWO_CARDS = [
    {"action": "fill", "selector": "input[name=title]", "value": "Buy milk"},
    {"action": "click", "selector": "button[type=submit]"},
    {"action": "fill", "selector": "input[name=title]", "value": "Write tests"},
    {"action": "press", "selector": "input[name=title]", "key": "Enter"},
    {"action": "expect_text", "selector": "[data-column=todo]", "text": "Write tests"},
]


class Site:
    """The board on 127.0.0.1, recording the paths it was asked for."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        site = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                site.hits.append(self.path)
                body = PAGES.get(self.path, "not found").encode()
                self.send_response(200 if self.path in PAGES else 404)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    site = Site()
    threading.Thread(target=site.server.serve_forever, daemon=True).start()
    yield site
    site.server.shutdown()
    site.server.server_close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def chromium() -> AsyncIterator[Chromium]:
    async with Chromium() as browser:
        yield browser


async def satisfy(site: Site, chromium: Chromium, criterion: dict[str, Any]) -> SatisfactionReport:
    """One UI criterion checked the way a build checks it: locked contract, sandbox runner, the gate's checker."""
    contract = parse_contract(
        {
            "name": "board",
            "summary": "A kanban board.",
            "components": [
                {"name": "web", "kind": "frontend", "description": "the board", "tasks": [{"id": "b", "title": "b"}]}
            ],
            "success_criteria": [{"id": "flow", "type": "ui", "path": "/", **criterion}],
        }
    )
    sandbox = await FakeBackend().create(SandboxSpec())
    runner = SandboxCriterionRunner(sandbox, site.url, ui_checker(chromium))
    return await check_satisfaction(lock(contract), runner)


async def test_a_flow_fills_clicks_drags_reloads_and_navigates_in_one_page(site: Site, chromium: Chromium) -> None:
    steps = [
        *ADD_TWO_CARDS,
        {"action": "expect_text", "selector": "li", "text": "Buy milk"},  # some item of the list, not the first
        {"action": "drag", "selector": "[data-card='Write tests']", "target": "[data-column=doing]"},
        {"action": "expect_text", "selector": "[data-column=doing]", "text": "Write tests"},
        {"action": "press", "selector": "input[name=title]", "key": "Enter"},  # an empty title adds nothing
        {"action": "reload"},
        {"action": "expect_text", "selector": "[data-column=doing]", "text": "Write tests"},
        {"action": "expect_text", "selector": "[data-column=todo]", "text": "Buy milk"},
        {"action": "expect_visible", "selector": "h1"},
        {"action": "expect_hidden", "selector": ".error"},
        {"action": "goto", "path": "/about"},
    ]
    before = len(site.hits)
    report = await satisfy(site, chromium, {"steps": steps, "selector": "h1", "text": "About the board"})
    assert report.done, report.results[0].evidence
    assert report.results[0].evidence == "after 15 steps, h1 'About the board' visible at /; 0 console errors"
    hits = site.hits[before:]
    assert hits.count("/") == 2 and hits.count("/about") == 1  # loaded and reloaded, then navigated


async def test_a_failing_step_is_named_and_the_steps_after_it_do_not_run(site: Site, chromium: Chromium) -> None:
    steps = [
        *ADD_TWO_CARDS,
        {"action": "drag", "selector": "[data-card='Write tests']", "target": "[data-column=doing]"},
        {"action": "click", "selector": "#sync"},
        {"action": "expect_text", "selector": "[data-column=todo]", "text": "Write tests", "timeout_s": 1},
        {"action": "goto", "path": "/after-the-failure"},
    ]
    report = await satisfy(site, chromium, {"steps": steps, "no_console_errors": False})
    (failed,) = report.failed
    lines = failed.evidence.splitlines()
    assert lines[0] == (
        "steps[7] failed (7 of 9 passed before it, flow from /): "
        "expect_text selector='[data-column=todo]' text='Write tests'"
    )
    assert lines[1] == "Locator expected to be visible"
    assert "now '[data-column=todo]' matches 1 elements, 1 visible" in lines
    assert "Write tests" not in lines[lines.index("now '[data-column=todo]' matches 1 elements, 1 visible") + 1]
    assert lines[-2:] == ["1 console errors", "console error: sync failed: offline"]
    assert "/after-the-failure" not in site.hits


async def test_an_action_on_a_missing_element_fails_with_playwrights_reason(site: Site, chromium: Chromium) -> None:
    steps = [{"action": "click", "selector": "button#publish", "timeout_s": 1}]
    report = await satisfy(site, chromium, {"steps": steps, "selector": "h1"})
    (failed,) = report.failed
    lines = failed.evidence.splitlines()
    assert lines[0] == "steps[0] failed (0 of 1 passed before it, flow from /): click selector='button#publish'"
    assert lines[1] == "Locator.click: Timeout 1000ms exceeded."
    assert "now 'button#publish' matches 0 elements, 0 visible" in lines
    assert lines[-1] == "0 console errors"
