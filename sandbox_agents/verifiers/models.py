"""Typed results of the verification swarm: findings, one report per verifier, the swarm's verdict.

These cross process boundaries (the swarm actor publishes them on the bus, the judge and the
merge gate read them), so every model forbids unknown fields and validates its ranges.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Severity(enum.StrEnum):
    """How much a finding matters: only ``error`` findings make a verifier fail."""

    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


class Finding(BaseModel):
    """One thing a verifier noticed, pinned to a workspace file and line where it can be."""

    model_config = ConfigDict(extra="forbid")

    file: str | None = None
    """Workspace-relative path of the file at fault (None when the finding is not about a file)."""
    line: int | None = Field(default=None, ge=1)
    """1-based line number in ``file``, when known."""
    severity: Severity = Severity.ERROR
    """``error`` fails the verifier; ``warning`` lowers the score; ``info`` is evidence only."""
    message: str
    """What is wrong, in words an agent can act on."""
    rule: str
    """A stable id such as ``security.aws_key``: agents and the judge group findings by it."""

    def where(self) -> str:
        """``file:line`` (or what of it is known), for logs and agent prompts."""
        if self.file is None:
            return "-"
        return f"{self.file}:{self.line}" if self.line else self.file

    def line_text(self) -> str:
        """``file: message`` (just the message when no file), one line a finding on the event log."""
        return f"{self.file}: {self.message}" if self.file else self.message


def finding_lines(findings: Sequence[Finding]) -> list[str]:
    """Each finding as :meth:`Finding.line_text`, the form a team's fix task and the log carry."""
    return [f.line_text() for f in findings]


class VerifierReport(BaseModel):
    """What one verifier concluded about one sandbox at one moment."""

    model_config = ConfigDict(extra="forbid")

    verifier: str
    """The verifier's ``name`` (``error_checker``, ``visual``, ...)."""
    passed: bool
    """True when no finding is an error (a crashed or timed-out verifier never passes)."""
    score: float = Field(ge=0.0, le=1.0)
    """0..1 quality signal for the judge; 1.0 means nothing to improve."""
    findings: list[Finding] = Field(default_factory=list)
    """Everything noticed, errors first."""
    duration_s: float = Field(default=0.0, ge=0.0)
    """Wall time the verifier took."""
    details: dict[str, Any] = Field(default_factory=dict)
    """Verifier-specific evidence: commands run, screenshot paths, diff ratios, skipped checks."""

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == Severity.ERROR]


class SwarmReport(BaseModel):
    """The swarm's verdict on one sandbox: every verifier's report and the overall result."""

    model_config = ConfigDict(extra="forbid")

    sandbox_id: str
    """The sandbox that was verified."""
    passed: bool
    """True only when every verifier passed."""
    score: float = Field(ge=0.0, le=1.0)
    """Mean of the verifiers' scores (each verifier weighs the same)."""
    reports: list[VerifierReport]
    """One report per verifier, in the swarm's verifier order."""
    duration_s: float = Field(default=0.0, ge=0.0)
    """Wall time of the whole run (the verifiers run concurrently)."""

    def report(self, verifier: str) -> VerifierReport:
        """The report of the verifier called ``verifier``; KeyError when it did not run."""
        for report in self.reports:
            if report.verifier == verifier:
                return report
        raise KeyError(verifier)


def score_from(findings: list[Finding], *, error_weight: float = 0.25, warning_weight: float = 0.05) -> float:
    """A 0..1 score that drops with each finding: errors cost more than warnings, info costs nothing.

    One shared formula so that scores of different verifiers mean the same to the judge.
    """
    cost = sum(
        error_weight if f.severity == Severity.ERROR else warning_weight if f.severity == Severity.WARNING else 0.0
        for f in findings
    )
    return round(max(0.0, 1.0 - cost), 3)


def sort_findings(findings: list[Finding]) -> list[Finding]:
    """Errors first, then by file and line, so reports read the same run after run."""
    order = {Severity.ERROR: 0, Severity.WARNING: 1, Severity.INFO: 2}
    return sorted(findings, key=lambda f: (order[f.severity], f.file or "", f.line or 0, f.rule))
