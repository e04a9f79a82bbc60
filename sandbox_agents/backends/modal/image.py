"""The image every Modal sandbox runs: Debian slim, Node 20, npm, git, Python, Playwright + Chromium.

The definition is plain data (:data:`IMAGE_DEFINITIONS`) so that it has a stable digest,
used to name/verify the built image and to tell when a rebuild is due. :func:`build_image`
turns it into an SDK ``Image`` lazily: it takes the ``modal`` module (or the test fake) and
does no I/O; Modal builds (and caches by layer) the first time a sandbox or
``Image.build`` needs it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sandbox_agents.errors import ConfigError

PLAYWRIGHT_VERSION = "1.65.2"

#: Image definitions by name (``ModalBackendConfig.image``). Steps run in order at build time.
IMAGE_DEFINITIONS: dict[str, dict[str, Any]] = {
    "default": {
        "base": {"debian_slim": {"python_version": "3.11"}},
        "apt": ["ca-certificates", "curl", "git", "gnupg", "procps", "findutils", "coreutils"],
        "commands": [
            # NodeSource's Node 20 line; npm ships with it.
            "curl -fsSL https://deb.nodesource.com/setup_20.x | bash -",
            "apt-get install -y nodejs",
            "node --version && npm --version",
        ],
        "pip": [f"playwright=={PLAYWRIGHT_VERSION}"],
        # Chromium and its system libraries are fetched now, at build time, never in a sandbox.
        "post_commands": ["playwright install --with-deps chromium", "mkdir -p /workspace"],
        "env": {"PLAYWRIGHT_BROWSERS_PATH": "/ms-playwright", "NODE_ENV": "development"},
        "workdir": "/workspace",
    }
}


def image_definition(name: str = "default") -> dict[str, Any]:
    """The plain-data definition of image ``name``; ConfigError if there is none."""
    try:
        return IMAGE_DEFINITIONS[name]
    except KeyError:
        raise ConfigError(f"unknown Modal image {name!r}; known: {sorted(IMAGE_DEFINITIONS)}") from None


def image_digest(name: str = "default") -> str:
    """A stable digest of the definition (sha256 of its canonical JSON, 16 hex digits)."""
    canonical = json.dumps(image_definition(name), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def build_image(sdk: Any, name: str = "default") -> Any:
    """The SDK ``Image`` for definition ``name``, built lazily by Modal (no I/O here).

    Args:
        sdk: the ``modal`` module, or a fake with the same ``Image`` builder surface.
        name: which definition.
    """
    spec = image_definition(name)
    ((base, base_kwargs),) = spec["base"].items()
    image = getattr(sdk.Image, base)(**base_kwargs)
    image = image.apt_install(*spec["apt"])
    image = image.run_commands(*spec["commands"])
    image = image.pip_install(*spec["pip"])
    image = image.env(dict(spec["env"]))
    image = image.run_commands(*spec["post_commands"])
    return image.workdir(spec["workdir"])
