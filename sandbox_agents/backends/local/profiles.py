"""Sandbox profiles of the local backend: the toolchain a sandbox needs and the environment it gets.

The local backend shows every sandbox the host's ``/usr`` read-only, so a profile does not build
an image: it checks that its toolchain is there (a clear error naming the Debian packages when
not) and sets the environment that wires it up. The Modal image definitions
(``backends/modal/images.py``) carry the same toolchains.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from dataclasses import dataclass, field

from sandbox_agents.errors import BackendUnavailableError


@dataclass(frozen=True)
class Profile:
    name: str
    tools: tuple[str, ...]
    packages: str
    """The Debian packages that provide ``tools`` (for the error message)."""
    env: dict[str, str] = field(default_factory=dict)


_PYTHON = Profile("python", ("python3", "git"), "python3 python3-venv git")
#: npm never reaches a registry from a component's sandbox (installs are their own phase): it
#: answers at once from what is installed instead of waiting on a network that is not there.
_NODE = Profile(
    "node",
    ("python3", "git", "node", "npm"),
    "python3 git nodejs npm (Node 20 or newer)",
    env={
        "npm_config_offline": "true",
        "npm_config_update_notifier": "false",
        "npm_config_fund": "false",
        "npm_config_audit": "false",
        "NODE_EXTRA_CA_CERTS": "/etc/ssl/certs/ca-certificates.crt",
    },
)
PROFILES = {"default": _PYTHON, "python": _PYTHON, "node": _NODE}
MIN_NODE = 20


def profile(name: str) -> Profile:
    """The profile called ``name``, its toolchain checked once per process."""
    found = PROFILES.get(name)
    if found is None:
        raise BackendUnavailableError(
            f"unknown sandbox profile {name!r}; the local backend has {', '.join(sorted(PROFILES))}", backend="local"
        )
    _check(found.name)
    return found


@functools.cache
def _check(name: str) -> None:
    prof = PROFILES[name]
    missing = [tool for tool in prof.tools if shutil.which(tool) is None]
    if missing:
        raise BackendUnavailableError(
            f"sandbox profile {name!r} needs {', '.join(missing)} on the host (Debian: {prof.packages})",
            backend="local",
        )
    if "node" in prof.tools:
        version = subprocess.run(["node", "--version"], capture_output=True, text=True, check=False).stdout
        major = re.match(r"v(\d+)", version.strip())
        if major is None or int(major.group(1)) < MIN_NODE:
            raise BackendUnavailableError(
                f"sandbox profile 'node' needs Node {MIN_NODE} or newer; the host has {version.strip() or 'none'}",
                backend="local",
            )
