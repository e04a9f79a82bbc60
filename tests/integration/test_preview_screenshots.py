"""The Preview actor's screenshot series on a real Ray, a real local sandbox and real Chromium.

One static page, refreshed three times with a new heading: each refresh gets its own screenshot
from the ticker (the gap is 0 here), the series keeps two, the PNGs come back as bytes over Ray,
names the actor did not produce are refused, and a restarted actor still lists the same series.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from actors.actor_state import file_stem, state_dir
from actors.preview import PreviewConfig, start_preview, stop_preview
from coordinator.merge import sha256_of
from coordinator.screenshots import ScreenshotNotFoundError, tree_digest
from sandbox_agents.errors import InvalidInputError

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]

CONTRACT: dict[str, Any] = {
    "name": "one-page",
    "summary": "A static page.",
    "components": [
        {
            "name": "web",
            "kind": "frontend",
            "description": "The page",
            "tasks": [{"id": "page", "title": "Page"}],
            "dev_server": {"command": "python3 -m http.server 5173 --directory web", "port": 5173},
        }
    ],
    "success_criteria": [{"id": "page-file", "type": "file", "path": "web/index.html"}],
}


def tree(heading: str) -> dict[str, bytes]:
    page = f'<!doctype html><html><head><link rel="icon" href="data:,"></head><body><h1>{heading}</h1></body></html>'
    return {"web/index.html": page.encode()}


def digest(files: dict[str, bytes]) -> str:
    return tree_digest({path: sha256_of(data) for path, data in files.items()})


async def newest_tree(preview: Any, expected: str, timeout_s: float = 60.0) -> list[dict[str, Any]]:
    """The series once its newest screenshot shows ``expected`` (polled with a bound)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        shots = await preview.screenshots.remote()
        if shots and shots[0]["tree"] == expected:
            return list(shots)
        await asyncio.sleep(0.2)
    raise AssertionError(f"no screenshot of tree {expected} in {timeout_s}s: {shots}")


async def fresh_incarnation(preview: Any, timeout_s: float = 60.0) -> None:
    """Wait for the restarted actor: it answers, and has not read its state yet (``kill`` is asynchronous)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        try:
            if await preview.sandbox_id.remote() is None:
                return
        except Exception:  # noqa: BLE001 - restarting
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"the preview did not restart in {timeout_s}s")


async def test_each_refresh_gets_a_screenshot_and_the_series_is_bounded_and_survives_a_restart(
    ray_cluster: Any, build_id: str
) -> None:
    config = PreviewConfig(build_id=build_id, screenshot_every_s=3600, screenshot_gap_s=0, screenshots_kept=2)
    preview = start_preview(config)
    directory = state_dir("previews") / file_stem(build_id) / "screenshots"
    try:
        await preview.start.remote(json.dumps(CONTRACT))
        trees = [tree("One"), tree("Two"), tree("Three")]
        series: list[list[dict[str, Any]]] = []
        for files in trees:  # one shot after each refresh, not one per period
            await asyncio.wait_for(preview.refresh.remote(files, ["web"]), 60)
            series.append(await newest_tree(preview, digest(files)))
        first, _, last = series
        assert len(first) == 1 and len(last) == 2
        assert [s["tree"] for s in last] == [digest(trees[2]), digest(trees[1])]
        assert set(last[0]) == {"name", "taken_at", "size", "path", "tree"}
        assert last[0]["taken_at"] > last[1]["taken_at"] and last[0]["path"] == "/"

        png = await preview.screenshot_png.remote(last[0]["name"])
        assert png.startswith(b"\x89PNG") and len(png) == last[0]["size"]
        with pytest.raises(ScreenshotNotFoundError):  # dropped past the bound
            await preview.screenshot_png.remote(first[0]["name"])
        for name in ("../" + file_stem(build_id) + ".json", "screenshots.json", "latest.png", str(directory)):
            with pytest.raises(InvalidInputError):
                await preview.screenshot_png.remote(name)

        ray_cluster.kill(preview, no_restart=False)  # the series is on disk, not in the actor's memory
        await fresh_incarnation(preview)
        assert await preview.screenshots.remote() == last
        assert await preview.screenshot_png.remote(last[1]["name"]) != png
    finally:
        await stop_preview(preview)
    assert not directory.exists()  # nobody could serve them any more
