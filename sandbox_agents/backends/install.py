"""The install phase's commands, the same on every backend (the local one runs them in an installer sandbox)."""

from __future__ import annotations

#: Where the download cache appears to the install command (the local backend binds the host's there).
CACHE_MOUNT = "/cache"
#: Output kept in an InstallResult.
OUTPUT_TAIL = 8000


def install_command(manager: str, *, locked: bool) -> str:
    """The installer's command (run in ``/workspace/pkg``)."""
    if manager == "npm":
        verb = "ci" if locked else "install"
        return (
            f"npm {verb} --ignore-scripts --no-audit --no-fund --prefer-offline --loglevel=warn "
            f"--cache {CACHE_MOUNT}/npm"
        )
    return (
        "python3 -m venv .venv && .venv/bin/pip install --disable-pip-version-check --no-input -q "
        f"--cache-dir {CACHE_MOUNT}/pip -r requirements.txt"
    )
