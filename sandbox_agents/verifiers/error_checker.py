"""Error checker: does the component install, build, type-check and pass its own tests?

It detects the toolchain from the files (package.json scripts, tsconfig.json, Python
sources and tests), runs each step inside the sandbox with a timeout, and turns the tools'
output into findings pinned to ``file:line`` where the output names one. Byte-code goes to a
cache outside the workspace: verifiers never change the files agents are editing.
"""

from __future__ import annotations

import json
import logging
import posixpath
import re
import shlex
import time
from dataclasses import dataclass

from sandbox_agents.backends.base import Sandbox
from sandbox_agents.errors import SandboxTimeoutError
from sandbox_agents.verifiers.base import VerifyTarget, build_report, list_paths
from sandbox_agents.verifiers.models import Finding, Severity, VerifierReport

logger = logging.getLogger(__name__)

#: Keeps ``__pycache__`` and pytest's cache out of the workspace.
QUIET_ENV = {"PYTHONPYCACHEPREFIX": "/tmp/kriptik-pycache", "PYTHONDONTWRITEBYTECODE": "1", "CI": "1"}
#: npm's placeholder test script: not a real test suite.
NPM_DEFAULT_TEST = 'echo "Error: no test specified" && exit 1'

_PY_LOCATION = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+)')
_PY_ERROR = re.compile(r"^\s*(?P<kind>[A-Za-z_][\w.]*(?:Error|Exception|Failure))(?::\s*(?P<msg>.*))?$")
_TS_PAREN = re.compile(r"^(?P<file>[^\s(:]+)\((?P<line>\d+),\d+\): error (?P<code>TS\d+): (?P<msg>.*)$")
_GENERIC = re.compile(
    r"(?P<file>[\w./@-]+\.(?:tsx?|jsx?|mjs|cjs|vue|svelte|py|css|scss)):(?P<line>\d+)(?::\d+)?\s*[-:]?\s*(?P<msg>.*)$"
)


@dataclass(frozen=True)
class Step:
    """One command of the check: what it is called, what it runs, how its output is read."""

    label: str
    command: str
    parser: str = "generic"


class ErrorChecker:
    """Install, build, compile, type-check and test with whatever the component uses."""

    name = "error_checker"

    async def verify(self, sandbox: Sandbox, target: VerifyTarget) -> VerifierReport:
        started = time.monotonic()
        steps = await self.plan(sandbox, target)
        findings: list[Finding] = []
        ran: list[dict[str, object]] = []
        for step in steps:
            step_findings, outcome = await self._run(sandbox, target, step)
            findings.extend(step_findings)
            ran.append(outcome)
        details: dict[str, object] = {"steps": ran}
        if not steps:
            details["note"] = "nothing to build, compile or test"
        return build_report(self.name, findings, started, details)

    async def plan(self, sandbox: Sandbox, target: VerifyTarget) -> list[Step]:
        """The steps this component needs, from its files."""
        root = "" if target.root in (".", "") else target.root.rstrip("/") + "/"
        top = {i.path[len(root) :] for i in await sandbox.list_files("**/*") if i.path.startswith(root)}
        top = {name for name in top if name and "/" not in name}
        paths = [p[len(root) :] for p in await list_paths(sandbox, target)]
        steps: list[Step] = []
        if "package.json" in top:
            steps.extend(await self._node_steps(sandbox, target, has_modules="node_modules" in top))
        if "tsconfig.json" in top and not any(s.label.endswith("typecheck") for s in steps) and "node_modules" in top:
            steps.append(Step("tsc", "test ! -x node_modules/.bin/tsc || node_modules/.bin/tsc --noEmit -p .", "ts"))
        if any(p.endswith(".py") for p in paths):
            skip = r"/(node_modules|\.venv|venv|\.git|__pycache__)/"
            steps.append(Step("compileall", f"python3 -m compileall -q -x {shlex.quote(skip)} .", "python"))
            steps.extend(await self._python_test_steps(sandbox, target, paths))
        return steps

    async def _node_steps(self, sandbox: Sandbox, target: VerifyTarget, *, has_modules: bool) -> list[Step]:
        try:
            manifest = json.loads(await sandbox.read_file(posixpath.join(target.root, "package.json")))
        except (ValueError, OSError) as exc:
            return [Step("package.json", f"echo 'package.json is not valid JSON: {exc}' >&2; exit 1")]
        steps = []
        if (manifest.get("dependencies") or manifest.get("devDependencies")) and not has_modules:
            steps.append(Step("npm install", "npm install --no-audit --no-fund --prefer-offline"))
        scripts = manifest.get("scripts") or {}
        for script in ("typecheck", "lint:types", "build"):
            if script in scripts:
                steps.append(Step(f"npm run {script}", f"npm run --silent {script}", "ts"))
        if scripts.get("test") and scripts["test"].strip() != NPM_DEFAULT_TEST:
            steps.append(Step("npm test", "npm test --silent", "generic"))
        return steps

    async def _python_test_steps(self, sandbox: Sandbox, target: VerifyTarget, paths: list[str]) -> list[Step]:
        tests = [p for p in paths if re.search(r"(^|/)(test_[^/]*|[^/]*_test)\.py$", p)]
        if not tests:
            return []
        probe = await sandbox.exec(["python3", "-c", "import pytest"], cwd=target.root, timeout=30)
        if probe.ok:
            return [Step("pytest", "python3 -m pytest -q -x -p no:cacheprovider", "python")]
        dirs = sorted({posixpath.dirname(p) or "." for p in tests})
        return [
            Step(f"unittest {d}", f"python3 -m unittest discover -s {shlex.quote(d)} -p 'test*.py'", "python")
            for d in dirs
        ]

    async def _run(self, sandbox: Sandbox, target: VerifyTarget, step: Step) -> tuple[list[Finding], dict[str, object]]:
        begun = time.monotonic()
        try:
            result = await sandbox.exec(step.command, cwd=target.root, env=QUIET_ENV, timeout=target.command_timeout_s)
        except SandboxTimeoutError as exc:
            message = f"{step.label} ran past {exc.timeout_s:.0f}s and was killed"
            finding = Finding(severity=Severity.ERROR, message=message, rule="error_checker.timeout")
            return [finding], {"step": step.label, "exit_code": None, "timed_out": True}
        outcome: dict[str, object] = {
            "step": step.label,
            "exit_code": result.exit_code,
            "duration_s": round(time.monotonic() - begun, 3),
        }
        if result.ok:
            return [], outcome
        output = f"{result.stdout}\n{result.stderr}"
        findings = parse_errors(output, step.parser, target, sandbox.spec.workdir, step.label)
        if not findings:
            tail = "\n".join(output.strip().splitlines()[-15:])
            message = f"{step.label} failed with exit code {result.exit_code}: {tail}"
            findings = [Finding(severity=Severity.ERROR, message=message[:2000], rule="error_checker.step_failed")]
        logger.debug("%s failed in %s with %d findings", step.label, sandbox.id, len(findings))
        return findings, outcome


def _relative(path: str, target: VerifyTarget, workdir: str) -> str | None:
    """A tool's path as a workspace-relative one; None when it lies outside the workspace."""
    if posixpath.isabs(path):
        root = posixpath.normpath(workdir)
        normal = posixpath.normpath(path)
        if not normal.startswith(root + "/"):
            return None
        return posixpath.relpath(normal, root)
    return posixpath.normpath(posixpath.join(target.root, path))


def parse_errors(output: str, parser: str, target: VerifyTarget, workdir: str, label: str) -> list[Finding]:
    """Findings with ``file:line`` from compiler, type-checker and test-runner output."""
    findings: list[Finding] = []
    seen: set[tuple[str | None, int | None, str]] = set()

    def add(file: str | None, line: int | None, message: str, rule: str) -> None:
        key = (file, line, message)
        if key not in seen:
            seen.add(key)
            findings.append(Finding(file=file, line=line, message=f"{label}: {message}"[:2000], rule=rule))

    if parser == "python":
        where: tuple[str, int] | None = None
        for raw in output.splitlines():
            if located := _PY_LOCATION.search(raw):
                rel = _relative(located["file"], target, workdir)
                if rel is not None:  # frames in the standard library say nothing about the component
                    where = (rel, int(located["line"]))
            elif (error := _PY_ERROR.match(raw)) and where is not None:
                rule = (
                    "error_checker.syntax"
                    if "Syntax" in error["kind"] or "Indentation" in error["kind"]
                    else ("error_checker.python")
                )
                add(where[0], where[1], f"{error['kind']}: {error['msg'] or ''}".strip(), rule)
                where = None
        return findings
    for raw in output.splitlines():
        line = raw.strip()
        match = _TS_PAREN.match(line) or (_GENERIC.search(line) if "error" in line.lower() else None)
        if match:
            rel = _relative(match["file"], target, workdir)
            add(rel, int(match["line"]), match["msg"].strip() or line, "error_checker.compile")
    return findings
