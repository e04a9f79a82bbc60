"""The six verifiers and the swarm on real local sandboxes, with real Chromium for the visual check.

Two fixture apps are copied into two bubblewrap sandboxes once per module: ``good_app`` must pass
every verifier, ``bad_app`` carries one defect per verifier, and each verifier must name the
defect's file and line. Chromium is launched once for the module and reaches the sandbox's
``python3 -m http.server`` through ``sandbox.expose``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from sandbox_agents.backends.base import Sandbox, SandboxSpec
from sandbox_agents.backends.local.backend import LocalBackend
from sandbox_agents.verifiers import (
    Chromium,
    CodeQuality,
    DesignStyleChecker,
    DesignTokens,
    ErrorChecker,
    PlaceholderEliminator,
    SecurityScanner,
    VerificationSwarm,
    VerifierReport,
    VerifyTarget,
    VisualVerifier,
    default_verifiers,
)
from sandbox_agents.verifiers.models import Severity

pytestmark = pytest.mark.asyncio(loop_scope="module")

APPS = Path(__file__).resolve().parents[1] / "fixtures" / "apps"
PORT = 8000

#: verifier name -> the defects it must find in bad_app: (rule, file, a text on the defect's line).
DEFECTS: dict[str, list[tuple[str, str, str]]] = {
    "error_checker": [("error_checker.syntax", "backend/broken.py", 'request.method = "GET"')],
    "code_quality": [("code_quality.complexity", "backend/orders.py", "def price_order")],
    "visual": [("visual.page_error", "web/app.js", "list.textContent")],
    "security": [
        ("security.aws_key", "backend/config.py", "AKIA"),
        ("security.eval", "backend/config.py", "eval("),
    ],
    "placeholders": [
        ("placeholders.todo", "backend/orders.py", "TODO"),
        ("placeholders.lorem_ipsum", "web/index.html", "Lorem ipsum"),
    ],
    "design_style": [
        ("design.img_alt", "web/index.html", "<img"),
        ("design.color", "web/styles.css", "#ff00ff"),
    ],
}


def line_of(app: str, file: str, text: str) -> int:
    lines = (APPS / app / file).read_text().splitlines()
    return next(number for number, line in enumerate(lines, start=1) if text in line)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def chromium() -> AsyncIterator[Chromium]:
    async with Chromium() as browser:
        yield browser


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sandboxes() -> AsyncIterator[dict[str, Sandbox]]:
    backend = LocalBackend()
    created: dict[str, Sandbox] = {}
    try:
        for app in ("good_app", "bad_app"):
            sandbox = await backend.create(SandboxSpec(ports=(PORT,), tags={"test": "verifiers", "app": app}))
            created[app] = sandbox
            for path in sorted((APPS / app).rglob("*")):
                if path.is_file():
                    await sandbox.write_file(str(path.relative_to(APPS / app)), path.read_bytes())
        yield created
    finally:
        for sandbox in created.values():
            await sandbox.terminate()
        await backend.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


def target_for(app: str, shots: Path, **overrides: object) -> VerifyTarget:
    tokens = DesignTokens.model_validate_json((APPS / "design_tokens.json").read_text())
    fields: dict[str, object] = {
        "kind": "web",
        "dev_command": f"python3 -m http.server {PORT} --directory web",
        "dev_port": PORT,
        "web_root": "web",
        "tokens": tokens,
        "screenshot_dir": str(shots),
        "name": app,
        "command_timeout_s": 60,
    }
    return VerifyTarget.model_validate({**fields, **overrides})


def make(name: str, chromium: Chromium):  # type: ignore[no-untyped-def]
    return {
        "error_checker": ErrorChecker,
        "code_quality": CodeQuality,
        "visual": lambda: VisualVerifier(chromium),
        "security": SecurityScanner,
        "placeholders": PlaceholderEliminator,
        "design_style": DesignStyleChecker,
    }[name]()


def describe(report: VerifierReport) -> str:
    return "\n".join(f"{f.severity} {f.rule} {f.where()} {f.message}" for f in report.findings)


# --- each verifier, on the good and on the bad app ----------------------------------------------


@pytest.mark.parametrize("name", list(DEFECTS))
async def test_verifier_passes_the_good_app(
    name: str, sandboxes: dict[str, Sandbox], chromium: Chromium, shots: Path
) -> None:
    report = await make(name, chromium).verify(sandboxes["good_app"], target_for("good_app", shots))
    assert report.verifier == name
    assert report.passed, describe(report)
    assert report.score >= 0.9, describe(report)
    assert not report.errors


@pytest.mark.parametrize("name", list(DEFECTS))
async def test_verifier_catches_its_defect_in_the_bad_app(
    name: str, sandboxes: dict[str, Sandbox], chromium: Chromium, shots: Path
) -> None:
    report = await make(name, chromium).verify(sandboxes["bad_app"], target_for("bad_app", shots))
    assert not report.passed
    assert report.score < 1.0
    found = {(f.rule, f.file, f.line) for f in report.findings if f.severity == Severity.ERROR}
    for rule, file, text in DEFECTS[name]:
        assert (rule, file, line_of("bad_app", file, text)) in found, describe(report)


# --- visual specifics ------------------------------------------------------------------------


async def test_visual_saves_screenshots_and_diffs_against_the_accepted_one(
    sandboxes: dict[str, Sandbox], chromium: Chromium, shots: Path
) -> None:
    visual = VisualVerifier(chromium)
    first = await visual.verify(sandboxes["good_app"], target_for("good_app", shots))
    accepted = Path(first.details["screenshot"])
    assert accepted.is_file() and accepted.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    same = await visual.verify(
        sandboxes["good_app"], target_for("good_app", shots, baseline_screenshot=str(accepted), max_visual_diff=0.01)
    )
    assert same.passed and same.details["diff_ratio"] < 0.01, describe(same)

    changed = await visual.verify(
        sandboxes["bad_app"], target_for("bad_app", shots, baseline_screenshot=str(accepted), max_visual_diff=0.001)
    )
    assert changed.details["diff_ratio"] > 0.001
    assert any(f.rule == "visual.diff" and f.severity == Severity.ERROR for f in changed.findings)


async def test_visual_detects_a_blank_page(sandboxes: dict[str, Sandbox], chromium: Chromium, shots: Path) -> None:
    sandbox = sandboxes["bad_app"]
    await sandbox.write_file(
        "web/blank.html", "<!doctype html><html><head><link rel='icon' href='data:,'></head><body></body></html>"
    )
    try:
        report = await VisualVerifier(chromium).verify(sandbox, target_for("bad_app", shots, page_path="/blank.html"))
    finally:
        await sandbox.remove("web/blank.html")
    assert any(f.rule == "visual.blank_page" and f.file == "web/blank.html" for f in report.errors), describe(report)


# --- the swarm -------------------------------------------------------------------------------


async def test_swarm_passes_the_good_app_and_publishes_every_report(
    sandboxes: dict[str, Sandbox], chromium: Chromium, shots: Path
) -> None:
    published: list[str] = []

    async def publish(report: VerifierReport) -> None:
        published.append(report.verifier)

    swarm = VerificationSwarm(default_verifiers(chromium), publish=publish, timeout_s=60)
    report = await swarm.run(sandboxes["good_app"], target_for("good_app", shots))
    assert report.passed, "\n".join(describe(r) for r in report.reports)
    assert report.score >= 0.9
    assert [r.verifier for r in report.reports] == list(DEFECTS)
    assert sorted(published) == sorted(DEFECTS)
    assert report.sandbox_id == sandboxes["good_app"].id


async def test_swarm_fails_every_verifier_on_the_bad_app(
    sandboxes: dict[str, Sandbox], chromium: Chromium, shots: Path
) -> None:
    report = await VerificationSwarm(default_verifiers(chromium), timeout_s=60).run(
        sandboxes["bad_app"], target_for("bad_app", shots)
    )
    assert not report.passed
    assert {r.verifier: r.passed for r in report.reports} == {name: False for name in DEFECTS}
    assert report.score < 0.8


class _Crashing:
    name = "crashing"

    async def verify(self, sandbox: Sandbox, target: VerifyTarget) -> VerifierReport:
        raise RuntimeError("checker bug")


class _Slow:
    name = "slow"

    async def verify(self, sandbox: Sandbox, target: VerifyTarget) -> VerifierReport:
        await asyncio.sleep(30)
        raise AssertionError("unreachable")


async def test_a_crashing_or_hanging_verifier_becomes_a_failed_report(
    sandboxes: dict[str, Sandbox], shots: Path
) -> None:
    def broken_publish(report: VerifierReport) -> None:
        raise ValueError("bus down")  # a failing hook is logged, never fatal

    swarm = VerificationSwarm(
        [_Crashing(), _Slow(), SecurityScanner()],
        timeout_s={"slow": 0.5, "crashing": 5, "security": 30},
        publish=broken_publish,
    )
    report = await swarm.run(sandboxes["good_app"], target_for("good_app", shots))
    crashed, slow, security = report.reports
    assert not crashed.passed and crashed.findings[0].rule == "verifier.crashed"
    assert "checker bug" in crashed.findings[0].message
    assert not slow.passed and slow.findings[0].rule == "verifier.timeout" and slow.duration_s < 5
    assert security.passed
    assert not report.passed
