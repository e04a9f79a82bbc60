"""The verifier contract: what to verify (``VerifyTarget``), the ``Verifier`` protocol, shared helpers.

A verifier looks at one sandbox through the :class:`~sandbox_agents.backends.base.Sandbox`
protocol only (exec, read_file, list_files, expose), so the same check runs on local and
Modal sandboxes and on the fake backend in unit tests. Verifiers never write into the
workspace: agents are editing it at the same time.
"""

from __future__ import annotations

import asyncio
import fnmatch
import posixpath
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from sandbox_agents.backends.base import Sandbox
from sandbox_agents.verifiers.models import Finding, Severity, VerifierReport, score_from, sort_findings

#: Directories no verifier reads: dependencies, build output, caches, VCS data.
SKIP_DIRS = frozenset(
    {"node_modules", ".git", "dist", "build", ".next", ".nuxt", "__pycache__", ".venv", "venv", "coverage", ".cache"}
)
#: Files past this size are generated or data, not source worth scanning.
MAX_SOURCE_BYTES = 512 * 1024
#: Text files verifiers scan, by suffix.
SOURCE_SUFFIXES = frozenset(
    {".py", ".js", ".jsx", ".mjs", ".cjs", ".ts", ".tsx", ".vue", ".svelte", ".html", ".htm", ".css", ".scss"}
)


class DesignTokens(BaseModel):
    """The contract's design system: what colours, fonts and spacing a component may use."""

    model_config = ConfigDict(extra="forbid")

    colors: list[str] = Field(default_factory=list)
    """Allowed colours as CSS values (``#1a2b3c``, ``rgb(...)`` or names); empty means any colour."""
    fonts: list[str] = Field(default_factory=list)
    """Allowed font families (generic families such as ``sans-serif`` are always allowed)."""
    spacing: list[int] = Field(default_factory=list)
    """Allowed spacing scale in px for margin/padding/gap (0 is always allowed); empty means any."""


class VerifyTarget(BaseModel):
    """What the swarm verifies in a sandbox: where the component lives and how to see it run."""

    model_config = ConfigDict(extra="forbid")

    kind: str = "web"
    """Component kind from the plan (``web``, ``api``, ``library``, ``fullstack``); ``visual`` skips
    kinds without a page."""
    root: str = "."
    """Workspace-relative directory of the component; every check looks only below it."""
    dev_command: str | None = None
    """Shell command that starts the dev server inside the sandbox (run from ``root``)."""
    dev_port: int | None = Field(default=None, ge=1, le=65535)
    """Port the dev server listens on inside the sandbox."""
    dev_url: str | None = None
    """An already exposed base URL; when set no dev server is started."""
    page_path: str = "/"
    """Path of the page to load, appended to the dev server's URL."""
    web_root: str = "."
    """Directory (relative to ``root``) the dev server serves, to map script URLs back to files."""
    tokens: DesignTokens | None = None
    """The contract's design tokens; None skips the palette, font and spacing checks."""
    baseline_screenshot: str | None = None
    """Host path of the last accepted screenshot, for the visual diff."""
    screenshot_dir: str | None = None
    """Host directory where screenshots are saved (None: a temp directory)."""
    max_visual_diff: float | None = Field(default=None, ge=0.0, le=1.0)
    """Fail the visual check when more than this fraction of pixels changed; None only reports it."""
    name: str = "component"
    """Short name used in screenshot file names and logs."""
    command_timeout_s: float = Field(default=120.0, gt=0)
    """Timeout of each command a verifier runs in the sandbox (install, build, tests)."""


@runtime_checkable
class Verifier(Protocol):
    """One check of the swarm. It reports problems as findings and raises only when it cannot run."""

    name: str

    async def verify(self, sandbox: Sandbox, target: VerifyTarget) -> VerifierReport:
        """Check ``target`` inside ``sandbox`` and report, without changing the workspace."""
        ...


@dataclass(frozen=True)
class SourceFile:
    """A text file read from the sandbox: its workspace path and decoded lines."""

    path: str
    text: str

    @property
    def lines(self) -> list[str]:
        return self.text.splitlines()

    @property
    def suffix(self) -> str:
        return posixpath.splitext(self.path)[1].lower()

    def line_of(self, offset: int) -> int:
        """1-based line number of a character offset into ``text``."""
        return self.text.count("\n", 0, offset) + 1


def _skipped(path: str) -> bool:
    return any(part in SKIP_DIRS for part in path.split("/")[:-1])


async def list_paths(sandbox: Sandbox, target: VerifyTarget) -> list[str]:
    """Every file below the component root, skipping dependency and build directories."""
    prefix = "" if target.root in (".", "") else target.root.rstrip("/") + "/"
    pattern = f"{prefix}**/*" if prefix else "**/*"
    infos = await sandbox.list_files(pattern)
    return sorted(i.path for i in infos if not i.is_dir and i.size <= MAX_SOURCE_BYTES and not _skipped(i.path))


async def read_sources(
    sandbox: Sandbox,
    target: VerifyTarget,
    suffixes: frozenset[str] = SOURCE_SUFFIXES,
    *,
    names: frozenset[str] = frozenset(),
    exclude: tuple[str, ...] = (),
) -> list[SourceFile]:
    """Read the component's text files with one of ``suffixes`` (or a name in ``names``).

    Args:
        exclude: fnmatch patterns of workspace paths to leave out (tests, for example).
    """
    wanted = [
        p
        for p in await list_paths(sandbox, target)
        if (posixpath.splitext(p)[1].lower() in suffixes or posixpath.basename(p) in names)
        and not any(fnmatch.fnmatch(p, pat) for pat in exclude)
    ]
    blobs = await asyncio.gather(*(sandbox.read_file(p) for p in wanted), return_exceptions=True)
    files = []
    for path, blob in zip(wanted, blobs, strict=True):
        if isinstance(blob, BaseException) or b"\0" in blob[:4096]:
            continue  # vanished since the listing, or binary
        files.append(SourceFile(path, blob.decode("utf-8", errors="replace")))
    return files


#: Paths that hold tests: placeholder and mock markers are fine there.
TEST_PATTERNS = (
    "test_*",
    "*/test_*",
    "*_test.py",
    "tests/*",
    "*/tests/*",
    "test/*",
    "*/test/*",
    "*/__tests__/*",
    "*.test.*",
    "*.spec.*",
    "*conftest.py",
)


def strip_comment(line: str, suffix: str) -> str:
    """The code part of a line (a whole-line comment gives ''), so prose about ``eval`` is no finding."""
    stripped = line.lstrip()
    if suffix == ".py" and stripped.startswith("#"):
        return ""
    if suffix != ".py" and stripped.startswith(("//", "/*", "*")):
        return ""
    return line


def scan(files: list[SourceFile], rules: list[tuple[str, Severity, re.Pattern[str], str]], **kw: bool) -> list[Finding]:
    """Findings for every line that matches a ``(rule, severity, pattern, message)`` rule.

    With ``code_only=True`` whole-line comments are ignored.
    """
    findings = []
    for source in files:
        for number, line in enumerate(source.lines, start=1):
            text = strip_comment(line, source.suffix) if kw.get("code_only") else line
            if not text:
                continue
            for rule, severity, pattern, message in rules:
                if pattern.search(text):
                    findings.append(
                        Finding(file=source.path, line=number, severity=severity, message=message, rule=rule)
                    )
    return findings


def build_report(
    name: str, findings: list[Finding], started: float, details: Mapping[str, object] | None = None, **score_kw: float
) -> VerifierReport:
    """A report whose verdict follows from its findings: passed when none is an error."""
    ordered = sort_findings(findings)
    return VerifierReport(
        verifier=name,
        passed=not any(f.severity == Severity.ERROR for f in ordered),
        score=score_from(ordered, **score_kw),
        findings=ordered,
        duration_s=round(time.monotonic() - started, 3),
        details=dict(details or {}),
    )
