"""The browser that looks at pages written by agents (floor 1, no Ray).

:class:`Chromium` runs headless Chromium as a host uid of its own (never root) with its own
sandbox on, in a network namespace whose only way out is a gate to the origin being
checked (:meth:`Chromium.new_context`). Every caller — the visual verifier, UI criteria,
preview screenshots — launches through it. See docs/security.md ("The browser").
"""

from sandbox_agents.browser.chromium import CHROMIUM_ARGS, CHROMIUM_PATH, BrowserConfig, Chromium

__all__ = ["CHROMIUM_ARGS", "CHROMIUM_PATH", "BrowserConfig", "Chromium"]
