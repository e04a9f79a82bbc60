"""Helpers of the Modal backend: error translation, credentials, metadata tags, globbing.

Kept apart from ``modal.py`` so that the backend reads as the mapping of the contract onto
Modal calls, and so that ``deploy`` can check credentials without a backend.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from sandbox_agents.backends.base import SandboxSpec
from sandbox_agents.errors import (
    BackendUnavailableError,
    InvalidInputError,
    KriptikError,
    SandboxDeadError,
    SandboxError,
    SandboxLimitError,
    SandboxNotFoundError,
    SandboxPathError,
    SandboxTimeoutError,
    SnapshotError,
)

BACKEND = "modal"

#: Modal ends every sandbox after at most 24 h; past it the coordinator checkpoints and respawns.
MAX_TTL_S = 24 * 3600

#: Tags we keep on every sandbox we create (Modal tags are the only metadata ``from_id``/``list`` see).
TAG_MANAGED = "kriptik_managed"
TAG_SPEC = "kriptik_spec"
TAG_STATE = "kriptik_state"
TAG_NAME = "kriptik_name"

#: Hosts an ``install`` sandbox may reach: package registries and source hosts only.
INSTALL_DOMAINS: tuple[str, ...] = (
    "registry.npmjs.org",
    "*.npmjs.org",
    "registry.yarnpkg.com",
    "pypi.org",
    "files.pythonhosted.org",
    "github.com",
    "codeload.github.com",
    "objects.githubusercontent.com",
    "deb.debian.org",
    "deb.nodesource.com",
    "playwright.azureedge.net",
    "cdn.playwright.dev",
)


# --- errors ---------------------------------------------------------------------------

# Keys are class names of ``modal.exception``; looked up along the MRO, most specific first,
# so that the real SDK and the fake (same names) translate the same way.
_UNAVAILABLE = {"AuthError", "PermissionDeniedError", "ConnectionError", "ServiceError", "InternalError"}
_UNAVAILABLE |= {"ClientClosed", "VersionError", "UnimplementedError"}


def translate_modal_error(
    exc: BaseException,
    sdk: Any,
    *,
    sandbox_id: str | None = None,
    path: str | None = None,
    timeout_s: float | None = None,
) -> BaseException:
    """The error of ours that a Modal SDK exception means (``exc`` itself if it is not Modal's).

    File errors become the builtin ``OSError`` subclasses the other backends raise
    (``FileNotFoundError``, ``IsADirectoryError``…), as the contract expects.
    """
    errors = getattr(sdk, "exception", None)
    base = getattr(errors, "Error", None)
    if base is None or not isinstance(exc, base) or isinstance(exc, KriptikError):
        return exc
    message = f"modal: {type(exc).__name__}: {exc}"
    where = f"{path}: " if path else ""
    for cls in type(exc).__mro__:
        name = cls.__name__
        if name == "NotFoundError":
            return SandboxNotFoundError(message, sandbox_id=sandbox_id)
        if name in _UNAVAILABLE:
            return BackendUnavailableError(message, backend=BACKEND)
        if name in {"SandboxTimeoutError", "ExecTimeoutError"}:
            return SandboxTimeoutError(message, timeout_s=timeout_s or 0.0, sandbox_id=sandbox_id)
        if name == "SandboxTerminatedError":
            return SandboxDeadError(message, sandbox_id=sandbox_id)
        if name == "ResourceExhaustedError":
            return SandboxLimitError(message, sandbox_id=sandbox_id)
        if name == "SnapshotCreationError":
            return SnapshotError(message, sandbox_id=sandbox_id)
        if name == "SandboxFilesystemNotFoundError":
            return FileNotFoundError(f"{where}no such file in sandbox {sandbox_id}")
        if name in {"SandboxFilesystemIsADirectoryError", "SandboxFilesystemDirectoryNotEmptyError"}:
            return IsADirectoryError(f"{where}is a directory (remove needs recursive=True if not empty)")
        if name == "SandboxFilesystemNotADirectoryError":
            return NotADirectoryError(f"{where}a path component is not a directory")
        if name == "SandboxFilesystemPathAlreadyExistsError":
            return FileExistsError(f"{where}already exists")
        if name == "SandboxFilesystemPermissionError":
            return SandboxPathError(message, path=path or "", sandbox_id=sandbox_id)
        if name == "SandboxFilesystemFileTooLargeError":
            return SandboxLimitError(message, sandbox_id=sandbox_id)
        if name in {"InvalidError", "ConflictError", "RequestSizeError"}:
            return InvalidInputError(message)
    return SandboxError(message, sandbox_id=sandbox_id)


@contextlib.contextmanager
def modal_errors(sdk: Any, **context: Any) -> Iterator[None]:
    """Translate any Modal exception raised in the block (see :func:`translate_modal_error`)."""
    try:
        yield
    except Exception as exc:
        translated = translate_modal_error(exc, sdk, **context)
        if translated is exc:
            raise
        raise translated from exc


# --- credentials ----------------------------------------------------------------------


def find_credentials(settings: Any, environ: Mapping[str, str] | None = None) -> str | None:
    """Where Modal credentials come from, or None when there are none (no network used).

    Looks at the settings (``MODAL_TOKEN_ID``/``MODAL_TOKEN_SECRET``, also from ``.env``), the
    process environment, then the SDK's config file (``MODAL_CONFIG_PATH`` or ``~/.modal.toml``).
    """
    env = os.environ if environ is None else environ
    if getattr(settings, "modal_token_id", None) and getattr(settings, "modal_token_secret", None):
        return "settings"
    if env.get("MODAL_TOKEN_ID") and env.get("MODAL_TOKEN_SECRET"):
        return "environment"
    path = Path(env.get("MODAL_CONFIG_PATH") or Path(env.get("HOME") or Path.home()) / ".modal.toml")
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return None
    for profile in data.values():
        if isinstance(profile, dict) and profile.get("token_id") and profile.get("token_secret"):
            return str(path)
    return None


def missing_credentials_message() -> str:
    return (
        "no Modal credentials: set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET (environment or .env), "
        "or run `modal token new` to write ~/.modal.toml"
    )


# --- metadata tags --------------------------------------------------------------------


def spec_tags(spec: SandboxSpec, name: str) -> dict[str, str]:
    """The tags a sandbox is created with: the user's, plus ours to rebuild the spec anywhere.

    Secret *values* never leave the process: the stored spec keeps only their names.
    """
    public = spec.model_copy(update={"secrets": dict.fromkeys(spec.secrets, "")})
    tags = dict(spec.tags)
    tags.update(
        {
            TAG_MANAGED: "1",
            TAG_NAME: name,
            TAG_STATE: "running",
            TAG_SPEC: public.model_dump_json(exclude_defaults=True),
        }
    )
    return tags


def spec_from_tags(tags: Mapping[str, str]) -> SandboxSpec | None:
    """The spec stored in a sandbox's tags (secret values blank), or None if it is not ours."""
    if tags.get(TAG_MANAGED) != "1" or TAG_SPEC not in tags:
        return None
    try:
        return SandboxSpec.model_validate(json.loads(tags[TAG_SPEC]))
    except ValueError:
        return None


# --- globbing -------------------------------------------------------------------------


def glob_match(path: str, pattern: str) -> bool:
    """Whether a workspace-relative path matches ``pattern`` (same rules as the other backends)."""
    if pattern in ("**/*", "**"):
        return True
    if pattern == "*":
        return "/" not in path
    return fnmatch.fnmatchcase(path, pattern) or fnmatch.fnmatchcase(path, pattern.replace("**/", ""))
