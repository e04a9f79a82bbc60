"""Deploy the Modal side of KripTik Fleet: pre-flight, image build, live verification.

Usage::

    python -m sandbox_agents.backends.modal.deploy          # pre-flight, build, verify
    python -m sandbox_agents.backends.modal.deploy --check  # offline pre-flight only

Exit codes: 0 done, 2 a pre-flight check failed (nothing was contacted), 1 the build or the
verification failed (what this run created has been rolled back). Each step prints one
``[ok]``/``[FAIL]`` line. The built image's id is cached per definition digest under
``KRIPTIK_HOME/modal-image.json`` so later runs reuse it (Modal also caches by layer).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sandbox_agents.backends.base import NetworkPolicy, SandboxSpec
from sandbox_agents.backends.config import ModalBackendConfig
from sandbox_agents.backends.modal.image import build_image, image_definition, image_digest
from sandbox_agents.backends.modal.support import find_credentials, missing_credentials_message
from sandbox_agents.errors import KriptikError

#: The command a fresh sandbox must run, and what its output must contain.
VERIFY_COMMAND = "git --version && python3 --version && node --version && npm --version"
VERIFY_EXPECT = ("git version", "Python 3", "v20.")

Report = Callable[[str], None]


def _version_ok(version: str) -> bool:
    try:
        major, minor = (int(part) for part in version.split(".")[:2])
    except ValueError:
        return False
    return major == 1 and minor >= 6


def preflight(sdk: Any | None, settings: Any, image: str, report: Report) -> bool:
    """The offline checks: SDK importable and 1.6+, credentials present, image definition valid."""
    ok = True
    if sdk is None:
        report("[FAIL] sdk: modal is not installed (pip install 'kriptik-fleet[modal]')")
        ok = False
    elif not _version_ok(str(getattr(sdk, "__version__", ""))):
        report(f"[FAIL] sdk: modal {getattr(sdk, '__version__', '?')} (need >=1.6,<2)")
        ok = False
    else:
        report(f"[ok] sdk: modal {sdk.__version__}")
    source = find_credentials(settings)
    if source is None:
        report(f"[FAIL] credentials: {missing_credentials_message()}")
        ok = False
    else:
        report(f"[ok] credentials: from {source}")
    try:
        image_definition(image)
        report(f"[ok] image: {image!r} definition digest {image_digest(image)}")
    except KriptikError as exc:
        report(f"[FAIL] image: {exc}")
        ok = False
    return ok


def _cache_path(settings: Any) -> Path:
    return settings.home() / "modal-image.json"


async def deploy(
    config: ModalBackendConfig, *, sdk: Any, settings: Any, report: Report, timeout_s: float = 1800.0
) -> int:
    """Build (or reuse) the image, verify it in a test sandbox, roll back on failure. Returns an exit code."""
    from sandbox_agents.backends.modal.backend import ModalBackend

    backend = ModalBackend(config, sdk=sdk, settings=settings)
    digest = image_digest(config.image)
    cache_file = _cache_path(settings)
    cache = json.loads(cache_file.read_text()) if cache_file.exists() else {}
    sandbox = None
    wrote_cache = False
    try:
        app = await backend._connect()
        report(f"[ok] app: {config.app_name} ({app.app_id})")
        cached = cache.get(digest)
        if cached:
            image = sdk.Image.from_id(cached)
            report(f"[ok] image: reusing {cached} for digest {digest}")
        else:
            image = await asyncio.wait_for(build_image(sdk, config.image).build.aio(app), timeout_s)
            cache[digest] = str(image.object_id)
            cache_file.write_text(json.dumps(cache, indent=2))
            wrote_cache = True
            report(f"[ok] image: built {image.object_id} for digest {digest}")
        backend.use_image(image)
        sandbox = await backend.create(
            SandboxSpec(timeout_s=600, network=NetworkPolicy.NONE, tags={"kriptik_role": "deploy-verify"})
        )
        result = await sandbox.exec(VERIFY_COMMAND, timeout=120)
        missing = [want for want in VERIFY_EXPECT if want not in result.stdout]
        if not result.ok or missing:
            raise KriptikError(f"verification command failed (exit {result.exit_code}, missing {missing}): "
                               f"{result.stdout.strip()} {result.stderr.strip()}")  # fmt: skip
        report(f"[ok] verify: sandbox {sandbox.id}: {' | '.join(result.stdout.split())}")
    except (KriptikError, OSError, TimeoutError) as exc:
        report(f"[FAIL] deploy: {type(exc).__name__}: {exc}")
        if wrote_cache:
            cache.pop(digest, None)
            cache_file.write_text(json.dumps(cache, indent=2))
            report("[ok] rollback: image cache entry removed")
        return 1
    finally:
        if sandbox is not None:
            try:
                await sandbox.terminate()
                report(f"[ok] cleanup: test sandbox {sandbox.id} terminated")
            except KriptikError as exc:
                report(f"[FAIL] cleanup: could not terminate {sandbox.id}: {exc}")
        await backend.close()
    report(f"[ok] deployed: app {config.app_name!r}, image {cache[digest]}; set KRIPTIK_BACKEND=modal to use it")
    return 0


def main(argv: list[str] | None = None, *, sdk: Any | None = None, settings: Any | None = None) -> int:
    """Entry point; ``sdk``/``settings`` are injectable for tests."""
    parser = argparse.ArgumentParser(prog="python -m sandbox_agents.backends.modal.deploy", description=__doc__)
    parser.add_argument("--check", action="store_true", help="offline pre-flight only; exit 2 if anything is missing")
    parser.add_argument("--app", default=None, help="Modal App name (default: kriptik-fleet)")
    parser.add_argument("--image", default="default", help="image definition name")
    args = parser.parse_args(argv)
    if settings is None:
        from sandbox_agents.settings import get_settings

        settings = get_settings()
    if sdk is None:
        try:
            import modal as sdk
        except ImportError:
            sdk = None

    def report(line: str) -> None:
        print(line, flush=True)

    if not preflight(sdk, settings, args.image, report):
        return 2
    if args.check:
        report("[ok] check: pre-flight passed (nothing was contacted)")
        return 0
    config = ModalBackendConfig(
        app_name=args.app or ModalBackendConfig().app_name, image=args.image, environment=settings.modal_workspace
    )
    return asyncio.run(deploy(config, sdk=sdk, settings=settings, report=report))


if __name__ == "__main__":
    sys.exit(main())
