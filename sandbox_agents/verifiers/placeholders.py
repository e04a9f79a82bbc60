"""Placeholder eliminator: unfinished work left in shipped code.

Generated code likes to leave ``TODO``s, ``lorem ipsum``, stubs that raise
``NotImplementedError`` and mock data standing in for the real thing. Each is a promise the
component does not keep, so the unfinished ones fail the check; softer markers (``mock``,
``example.com``) only lower the score. Test files are exempt: mocks belong there.
"""

from __future__ import annotations

import re
import time

from sandbox_agents.backends.base import Sandbox
from sandbox_agents.verifiers.base import SOURCE_SUFFIXES, TEST_PATTERNS, VerifyTarget, build_report, read_sources, scan
from sandbox_agents.verifiers.models import Finding, Severity, VerifierReport

E, W = Severity.ERROR, Severity.WARNING

RULES: list[tuple[str, Severity, re.Pattern[str], str]] = [
    ("placeholders.todo", E, re.compile(r"\b(?:TODO|FIXME|XXX|HACK)\b"), "unfinished-work marker left in code"),
    ("placeholders.lorem_ipsum", E, re.compile(r"lorem\s+ipsum", re.IGNORECASE), "lorem ipsum filler text"),
    (
        "placeholders.not_implemented",
        E,
        re.compile(r"\braise\s+NotImplemented(?:Error)?\b|throw\s+new\s+Error\(\s*[\"'`]not\s+implemented", re.I),
        "stub that raises instead of doing the work",
    ),
    (
        "placeholders.stub",
        E,
        re.compile(r"^\s*(?:pass|\.\.\.|return(?:\s+None)?)\s*#\s*(?:stub|todo|placeholder|implement)", re.I),
        "stub body",
    ),
    (
        "placeholders.mock_data",
        W,
        re.compile(
            r"\b(?:mock(?:ed)?[_ ]?(?:data|users?|items?|response)|dummy[_ ]data|fake[_ ]data|sample[_ ]data)\b", re.I
        ),
        "mock data standing in for the real source",
    ),
    ("placeholders.mock", W, re.compile(r"\bmock\b", re.IGNORECASE), "mock in shipped code"),
    (
        "placeholders.example_domain",
        W,
        re.compile(r"\bexample\.(?:com|org|net)\b", re.I),
        "example domain as real data",
    ),
]
#: ``placeholder`` is a legitimate HTML attribute and CSS pseudo-element; only other uses are flagged.
PLACEHOLDER_WORD = re.compile(r"(?<![:\w-])placeholder(?![\w-]*\s*=)(?!\s*:)", re.IGNORECASE)


class PlaceholderEliminator:
    """TODO/FIXME, lorem ipsum, stubs and mock data in source files (tests excluded)."""

    name = "placeholders"

    async def verify(self, sandbox: Sandbox, target: VerifyTarget) -> VerifierReport:
        started = time.monotonic()
        files = await read_sources(sandbox, target, SOURCE_SUFFIXES | {".md", ".json"}, exclude=TEST_PATTERNS)
        files = [f for f in files if not f.path.endswith(("package-lock.json", "README.md"))]
        findings = scan(files, RULES)
        findings = _one_per_line(findings)
        for source in files:
            for number, line in enumerate(source.lines, start=1):
                if PLACEHOLDER_WORD.search(line) and not _html_placeholder_attr(line):
                    findings.append(
                        Finding(
                            file=source.path,
                            line=number,
                            severity=W,
                            message="placeholder content",
                            rule="placeholders.placeholder",
                        )
                    )
        return build_report(self.name, findings, started, {"files": len(files)})


def _html_placeholder_attr(line: str) -> bool:
    return bool(re.search(r"placeholder\s*=|::?placeholder|placeholder:", line, re.IGNORECASE))


def _one_per_line(findings: list[Finding]) -> list[Finding]:
    """``mock_data`` and ``mock`` overlap: keep the first (most specific) finding per file and line."""
    seen: set[tuple[str | None, int | None, str]] = set()
    out = []
    for finding in findings:
        family = "mock" if finding.rule.startswith("placeholders.mock") else finding.rule
        key = (finding.file, finding.line, family)
        if key not in seen:
            seen.add(key)
            out.append(finding)
    return out
