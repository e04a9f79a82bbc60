"""The verification swarm: every verifier on one sandbox, concurrently, each bounded in time.

A verifier that crashes or runs past its timeout becomes a failed report carrying the error
as a finding: one broken check must never hide the other five. Each report is handed to
``publish`` as soon as it is ready (the swarm actor wires that to the context bus), so agents
see a syntax error before the screenshot is taken.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from sandbox_agents.backends.base import Sandbox
from sandbox_agents.verifiers.base import Verifier, VerifyTarget
from sandbox_agents.verifiers.models import Finding, SwarmReport, VerifierReport

logger = logging.getLogger(__name__)

#: Called with each report as it completes; may be sync or async. Its errors are logged, not raised.
Publish = Callable[[VerifierReport], Awaitable[None] | None]


def default_verifiers(chromium: object | None = None) -> list[Verifier]:
    """The six verifiers of the plan, in report order; ``chromium`` shares a warm browser."""
    from sandbox_agents.browser import Chromium
    from sandbox_agents.verifiers.code_quality import CodeQuality
    from sandbox_agents.verifiers.design_style import DesignStyleChecker
    from sandbox_agents.verifiers.error_checker import ErrorChecker
    from sandbox_agents.verifiers.placeholders import PlaceholderEliminator
    from sandbox_agents.verifiers.security import SecurityScanner
    from sandbox_agents.verifiers.visual import VisualVerifier

    assert chromium is None or isinstance(chromium, Chromium)
    return [
        ErrorChecker(),
        CodeQuality(),
        VisualVerifier(chromium),
        SecurityScanner(),
        PlaceholderEliminator(),
        DesignStyleChecker(),
    ]


class VerificationSwarm:
    """Runs verifiers concurrently on a sandbox and combines their reports."""

    def __init__(
        self,
        verifiers: Sequence[Verifier] | None = None,
        *,
        max_concurrency: int = 6,
        timeout_s: float | dict[str, float] = 120.0,
        publish: Publish | None = None,
    ) -> None:
        """
        Args:
            verifiers: the checks to run (default: the six of :func:`default_verifiers`).
            max_concurrency: most verifiers running at once (the sandbox and the host share cores).
            timeout_s: per-verifier timeout, or a mapping from verifier name to timeout (default 120 s).
            publish: hook called with each report as it completes.
        """
        self.verifiers = list(verifiers) if verifiers is not None else default_verifiers()
        names = [v.name for v in self.verifiers]
        if len(set(names)) != len(names):
            raise ValueError(f"verifier names must be unique: {names}")
        self.max_concurrency = max(1, max_concurrency)
        self.timeout_s = timeout_s
        self.publish = publish

    def _timeout(self, name: str) -> float:
        return self.timeout_s.get(name, 120.0) if isinstance(self.timeout_s, dict) else self.timeout_s

    async def run(self, sandbox: Sandbox, target: VerifyTarget) -> SwarmReport:
        """Run every verifier on ``sandbox`` and return the combined verdict.

        Returns:
            A report that passes only when every verifier passed; its score is their mean.
        """
        started = time.monotonic()
        gate = asyncio.Semaphore(self.max_concurrency)
        reports = await asyncio.gather(*(self._one(verifier, sandbox, target, gate) for verifier in self.verifiers))
        score = sum(r.score for r in reports) / len(reports) if reports else 1.0
        return SwarmReport(
            sandbox_id=sandbox.id,
            passed=all(r.passed for r in reports),
            score=round(score, 3),
            reports=list(reports),
            duration_s=round(time.monotonic() - started, 3),
        )

    async def _one(
        self, verifier: Verifier, sandbox: Sandbox, target: VerifyTarget, gate: asyncio.Semaphore
    ) -> VerifierReport:
        async with gate:
            started = time.monotonic()
            timeout = self._timeout(verifier.name)
            try:
                report = await asyncio.wait_for(verifier.verify(sandbox, target), timeout)
            except TimeoutError:
                report = _failed(verifier.name, f"ran past its {timeout:.0f}s timeout", "verifier.timeout", started)
            except Exception as exc:  # a broken check is a failed report, never a broken swarm
                logger.exception("verifier %s crashed on %s", verifier.name, sandbox.id)
                report = _failed(verifier.name, f"crashed: {type(exc).__name__}: {exc}", "verifier.crashed", started)
        await self._publish(report)
        return report

    async def _publish(self, report: VerifierReport) -> None:
        if self.publish is None:
            return
        try:
            result = self.publish(report)
            if inspect.isawaitable(result):
                await result
        except Exception:
            logger.exception("publishing the %s report failed", report.verifier)


def _failed(name: str, message: str, rule: str, started: float) -> VerifierReport:
    return VerifierReport(
        verifier=name,
        passed=False,
        score=0.0,
        findings=[Finding(message=f"{name} {message}"[:2000], rule=rule)],
        duration_s=round(time.monotonic() - started, 3),
        details={"error": message},
    )
