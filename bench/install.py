"""Dependency installs and hot reload: the install phase against npm on the host, and HMR in the preview.

``python -m bench.install --json`` — all figures measured in one run, on the web component of
the kanban-vite example (its package.json and lockfile as the example's cassette writes them):

- ``cold_install_s``: a fresh sandbox, an empty host store (no tree, no download cache): the
  installer sandbox downloads every package from the npm registry.
- ``npm_cache_install_s``: a fresh sandbox, the download cache warm but no stored tree (what a
  lockfile never seen before costs once its packages are cached): ``npm ci --prefer-offline``
  in an installer sandbox.
- ``warm_install_s``: a fresh sandbox, the store warm: the tree is unpacked, no npm at all.
- ``host_warm_install_s``: the same lockfile, ``npm ci --prefer-offline`` on the host (no
  sandbox) from the same warm download cache: the baseline.
- ``warm_ratio`` = warm_install_s / host_warm_install_s.
- ``create_offline_ms`` / ``create_networked_ms``: p50 of creating a sandbox (to its first command)
  with network ``none`` and ``full`` (the filter and slirp4netns), interleaved;
  ``network_overhead_ms`` is the difference.
- ``hmr_ms``: with the preview actor serving the web app (Vite, ``hot_reload``) and a page open
  in Chromium, the preview's refresh with a one-line change of the page's heading (what an
  accepted merge sends it) until the open page shows it; ``hmr_navigations`` must stay 0 (the
  page updated in place).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import yaml

from bench.common import emit, p50, private_ray
from coordinator.resources import examples_dir

EXAMPLE = "kanban-vite"
WEB = "web/"


def example_files(example: str = EXAMPLE, prefix: str = WEB) -> dict[str, bytes]:
    """The files under ``prefix`` as the example's cassette writes them (the last write of each path wins)."""
    data = yaml.safe_load((examples_dir() / "cassettes" / f"{example}.yaml").read_text())
    files: dict[str, bytes] = {}
    for turn in data.get("turns", []):
        for call in turn.get("tool_calls") or []:
            args = call.get("arguments") or {}
            path = str(args.get("path", ""))
            if call.get("name") == "write_file" and path.startswith(prefix):
                files[path] = str(args.get("content", "")).encode()
    if f"{prefix}package.json" not in files or f"{prefix}package-lock.json" not in files:
        raise SystemExit(f"the {example} cassette writes no {prefix}package.json and package-lock.json")
    return files


async def _installs(files: dict[str, bytes], work: Path) -> dict[str, float]:
    from sandbox_agents.backends.base import InstallRequest, NetworkPolicy, SandboxSpec
    from sandbox_agents.backends.config import LocalBackendConfig
    from sandbox_agents.backends.local.backend import LocalBackend
    from sandbox_agents.backends.local.packages import PackageStore

    backend = LocalBackend(LocalBackendConfig(root=work / "sandboxes"))
    store = PackageStore(work / "store", max_bytes=8 << 30)  # empty: nothing of the host's store
    backend._packages = store  # noqa: SLF001 - the bench measures an empty store of its own
    request = InstallRequest(manager="npm", dir="web")

    async def fresh_install() -> float:
        sandbox = await backend.create(SandboxSpec(profile="node"))
        try:
            for path in ("web/package.json", "web/package-lock.json"):
                await sandbox.write_file(path, files[path])
            started = time.perf_counter()
            result = await sandbox.install(request)
            elapsed = time.perf_counter() - started
            if not result.ok:
                raise SystemExit(f"install failed: {result.output}")
            return elapsed
        finally:
            await sandbox.terminate()

    cold = await fresh_install()
    for archive in store.trees.glob("*.tar.zst"):  # keep the downloads, forget the tree
        archive.unlink()
    npm_cache = await fresh_install()
    warm = [await fresh_install() for _ in range(3)]

    host_dir = work / "host"
    host_times = []
    for _ in range(3):
        shutil.rmtree(host_dir, ignore_errors=True)
        (host_dir).mkdir()
        for path in ("web/package.json", "web/package-lock.json"):
            (host_dir / Path(path).name).write_bytes(files[path])
        started = time.perf_counter()
        subprocess.run(
            ["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--prefer-offline", "--loglevel=error"]
            + ["--cache", str(store.cache / "npm")],
            cwd=host_dir,
            check=True,
            capture_output=True,
        )
        host_times.append(time.perf_counter() - started)
    offline: list[float] = []
    networked: list[float] = []
    for _ in range(10):  # interleaved, so that load changes hit both alike
        for policy, into in ((NetworkPolicy.NONE, offline), (NetworkPolicy.FULL, networked)):
            started = time.perf_counter()
            sandbox = await backend.create(SandboxSpec(network=policy))
            await sandbox.exec(["true"])
            into.append((time.perf_counter() - started) * 1000)
            await sandbox.terminate()
    await backend.close()
    warm_s, host_s = sorted(warm)[1], sorted(host_times)[1]
    return {
        "cold_install_s": round(cold, 3),
        "npm_cache_install_s": round(npm_cache, 3),
        "warm_install_s": round(warm_s, 3),
        "host_warm_install_s": round(host_s, 3),
        "warm_ratio": round(warm_s / host_s, 3),
        "create_offline_ms": p50(offline),
        "create_networked_ms": p50(networked),
        "network_overhead_ms": round(p50(networked) - p50(offline), 3),
    }


HEADING = "<h1>Kanban</h1>"


async def _hmr(files: dict[str, bytes]) -> dict[str, float]:
    from actors.preview import start_preview, stop_preview
    from coordinator.contracts import load_contract
    from sandbox_agents.verifiers import Chromium

    contract = load_contract(examples_dir() / "intents" / f"{EXAMPLE}.yaml")
    web = contract.component("web")
    app = next((p for p, data in files.items() if HEADING.encode() in data), None)
    if app is None:
        raise SystemExit(f"no web file of the {EXAMPLE} cassette holds {HEADING}")
    alone = web.model_copy(update={"depends_on": ()})  # the page alone: HMR needs no API
    only_web = contract.model_copy(
        update={"components": (alone,), "success_criteria": tuple(contract.criteria_of("web"))}
    )
    build_id = f"bench-hmr-{uuid.uuid4().hex[:6]}"
    preview = start_preview({"build_id": build_id, "ready_timeout_s": 60.0, "screenshot_every_s": 0})
    chromium = Chromium()
    try:
        await preview.start.remote(only_web.model_dump_json())
        url = await preview.refresh.remote(files, ["web"])
        context = await chromium.new_context(url)
        page = await context.new_page()
        navigations: list[str] = []
        await page.goto(url, wait_until="networkidle")
        await page.wait_for_selector("h1", timeout=30_000)
        page.on("framenavigated", lambda frame: navigations.append(frame.url) if frame == page.main_frame else None)
        await page.evaluate("window.__kriptik_marker = 1")
        times = []
        for n in range(3):
            text = f"Kanban {n + 1}"
            changed = {**files, app: files[app].replace(HEADING.encode(), f"<h1>{text}</h1>".encode())}
            started = time.perf_counter()
            await preview.refresh.remote(changed, ["web"])
            await page.wait_for_function(f"document.querySelector('h1')?.textContent === {json.dumps(text)}")
            times.append((time.perf_counter() - started) * 1000)
        kept = await page.evaluate("window.__kriptik_marker === 1")
        await context.close()
    finally:
        await chromium.close()
        await stop_preview(preview)
    return {
        "hmr_ms": round(sorted(times)[1], 1),
        "hmr_navigations": len(navigations) + (0 if kept else 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument("--no-hmr", action="store_true", help="measure the installs only")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    files = example_files()
    with tempfile.TemporaryDirectory(prefix="bench-install-") as tmp:
        os.chmod(tmp, 0o711)  # the sandbox uid traverses it to its workspace
        result: dict[str, object] = dict(asyncio.run(_installs(files, Path(tmp))))
    if not args.no_hmr:
        with private_ray():
            result.update(asyncio.run(_hmr(files)))
    result["targets"] = {"warm_install_s": 5, "warm_ratio": 1.5, "hmr_ms": 1500}
    emit(result, args.json)


if __name__ == "__main__":
    main()
