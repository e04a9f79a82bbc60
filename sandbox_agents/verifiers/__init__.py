"""The verification swarm's six verifiers (floor 1: plain Python, acting on a sandbox).

Checks that run, not opinions: errors (build, type check, tests), code quality, security,
placeholders, design style and the visual check in Chromium, each reporting
:class:`Finding` objects against a :class:`VerifyTarget`.
``VerificationSwarm(default_verifiers()).run(sandbox, target)`` runs them all concurrently;
each verifier is also usable on its own. Playwright is imported only when
:class:`Chromium` (``sandbox_agents.browser``) first launches a browser, so importing this
package stays cheap. The intent-criteria runner lives with the contract in
``coordinator/intent.py``. See docs/verification.md.
"""

from sandbox_agents.browser import Chromium
from sandbox_agents.verifiers.base import DesignTokens, Verifier, VerifyTarget
from sandbox_agents.verifiers.code_quality import CodeQuality
from sandbox_agents.verifiers.design_style import DesignStyleChecker
from sandbox_agents.verifiers.error_checker import ErrorChecker
from sandbox_agents.verifiers.models import Finding, Severity, SwarmReport, VerifierReport
from sandbox_agents.verifiers.placeholders import PlaceholderEliminator
from sandbox_agents.verifiers.security import SecurityScanner
from sandbox_agents.verifiers.swarm import VerificationSwarm, default_verifiers
from sandbox_agents.verifiers.visual import VisualVerifier

__all__ = [
    "Chromium",
    "CodeQuality",
    "DesignStyleChecker",
    "DesignTokens",
    "ErrorChecker",
    "Finding",
    "PlaceholderEliminator",
    "SecurityScanner",
    "Severity",
    "SwarmReport",
    "VerificationSwarm",
    "Verifier",
    "VerifierReport",
    "VerifyTarget",
    "VisualVerifier",
    "default_verifiers",
]
