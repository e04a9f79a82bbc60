"""Each package of floors 1-2 says what it exports, and importing it stays cheap.

A package ``__init__`` re-exports its public names in ``__all__``; importing the packages
must not load the optional SDKs (``modal``, ``anthropic``, ``openai``), Ray or Playwright.
The import check runs in a fresh interpreter, since this one has imported much already.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = [
    "coordinator",
    "coordinator.build",
    "coordinator.bus",
    "coordinator.merge",
    "coordinator.store",
    "coordinator.team",
    "sandbox_agents",
    "sandbox_agents.backends",
    "sandbox_agents.backends.local",
    "sandbox_agents.backends.modal",
    "sandbox_agents.llm",
    "sandbox_agents.verifiers",
]
NOT_AT_IMPORT = ["anthropic", "modal", "openai", "playwright", "ray"]


@pytest.mark.parametrize("name", PACKAGES)
def test_package_exports_every_name_of_its_all(name: str) -> None:
    package = importlib.import_module(name)
    assert package.__doc__ and package.__doc__.strip(), f"{name} has no docstring"
    exported = package.__all__
    assert exported, f"{name} exports nothing"
    assert len(set(exported)) == len(exported)
    assert [n for n in exported if not hasattr(package, n)] == []


def test_importing_the_packages_loads_no_optional_sdk_ray_or_playwright() -> None:
    code = (
        "import importlib, json, sys\n"
        f"for name in {PACKAGES!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(json.dumps([m for m in {NOT_AT_IMPORT!r} if m in sys.modules]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
