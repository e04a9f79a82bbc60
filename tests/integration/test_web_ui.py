"""The web UI in headless Chromium, against the API on a real Ray Serve and a real bus."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from coordinator.bus.context_bus import ContextBus
from coordinator.bus.events import TeamProgress
from coordinator.bus.models import Event
from coordinator.bus.redis_server import ManagedRedis, free_port
from coordinator.store.store import Store
from serve.auth import create_token
from serve.control_port import MemoryControl, RayControlPort
from tests.integration.conftest_bus import fast_config

pytestmark = pytest.mark.slow
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
CONTROL = "test-ui-control"


@pytest.fixture(scope="module")
def site(
    ray_cluster: Any,
    redis_server: ManagedRedis,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Any]]:
    import shutil

    from ray import serve

    from serve.app import ApiSettings
    from serve.deployment import run_api

    if shutil.which(CHROMIUM) is None:
        pytest.skip("chromium is not installed")
    store_path = tmp_path_factory.mktemp("ui") / "store.db"
    with Store(store_path) as store:
        token = create_token(store, "alice")
    control = ray_cluster.remote(MemoryControl).options(name=CONTROL, namespace="kriptik").remote()
    settings = ApiSettings(port=free_port(), heartbeat_s=1.0, sse_block_ms=200, rate_per_s=1000, burst=1000)
    url = run_api(redis_server.url, store_path, settings, control=RayControlPort(name=CONTROL), bus_prefix="test")
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/api/health", timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "API not up in 60 s"
        time.sleep(0.2)
    try:
        yield {"url": url, "token": token, "control": control, "redis": redis_server.url}
    finally:
        serve.shutdown()
        ray_cluster.kill(control)


async def test_build_list_and_build_page_with_live_log_and_budget(site: dict[str, Any]) -> None:
    from playwright.async_api import async_playwright, expect

    headers = {"Authorization": f"Bearer {site['token']}"}
    async with httpx.AsyncClient(base_url=site["url"], headers=headers, timeout=30) as client:
        ids = [(await client.post("/api/builds", json={"prompt": f"app {n}"})).json()["id"] for n in range(2)]
    build = ids[0]
    budget = {"limit_usd": 10.0, "spent_usd": 2.5, "llm_tokens": 18680, "compute_seconds": 3.5, "status": "ok"}
    await asyncio.wrap_future(site["control"].set_status.remote(build, status="running", phase="build",
                                                                budget=budget).future())  # fmt: skip
    bus = ContextBus(site["redis"], fast_config(), sender="test")
    try:
        await bus.publish_event(build, "phase.started", {"phase": "build"})
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = await browser.new_page()
            await page.goto(f"{site['url']}/ui/")
            await page.fill("#token", site["token"])
            await page.click("#token-form button")
            rows = page.locator("#builds tbody tr.build-row")
            await expect(rows).to_have_count(2, timeout=20_000)
            await expect(page.locator("#builds")).to_contain_text("app 1")

            await page.click(f"a[href='#/build/{build}']")
            await expect(page.locator("#build-status")).to_have_text("running", timeout=20_000)
            await expect(page.locator("#timeline li.current")).to_have_text("build")
            await expect(page.locator("#budget-text")).to_contain_text("$2.50 of $10.00", timeout=20_000)
            await expect(page.locator("#budget-text")).to_contain_text("18,680 LLM tokens")
            assert await page.locator("#budget-meter").get_attribute("data-pct") == "25.0"

            log = page.locator("#log li.log-line")
            await expect(log).to_have_count(1, timeout=20_000)  # the backlog
            for n in range(3):  # live: each event appears while the page stays open
                await bus.publish_event(build, "progress.task", {"n": n})
                await expect(log).to_have_count(2 + n, timeout=20_000)
            await expect(log.last).to_contain_text('progress.task {"n":2}')
            await expect(page.locator("#stream-state")).to_have_text("live")

            await bus.publish_event(build, "budget.updated", {"limit_usd": 10.0, "spent_usd": 7.5, "status": "warning"})
            await expect(page.locator("#budget-text")).to_contain_text("$7.50 of $10.00", timeout=20_000)
            await browser.close()
    finally:
        await bus.delete_build(build)
        await bus.aclose(flush_timeout=1.0)


async def test_the_fleet_table_shows_each_slots_latest_progress_line(site: dict[str, Any]) -> None:
    from playwright.async_api import async_playwright, expect

    headers = {"Authorization": f"Bearer {site['token']}"}
    async with httpx.AsyncClient(base_url=site["url"], headers=headers, timeout=30) as client:
        build = (await client.post("/api/builds", json={"prompt": "an app with progress"})).json()["id"]
    slots = [{"slot": "api", "component": "api", "status": "building"}]
    web = {"slot": "web~polished", "component": "web", "candidate": 1, "status": "building"}
    set_status = site["control"].set_status
    await asyncio.wrap_future(set_status.remote(build, status="running", phase="build", components=slots).future())
    bus = ContextBus(site["redis"], fast_config(), sender="test")
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = await browser.new_page()
            await page.goto(f"{site['url']}/ui/")
            await page.fill("#token", site["token"])
            await page.click("#token-form button")
            await page.click(f"a[href='#/build/{build}']", timeout=20_000)
            await expect(page.locator("#fleet tbody tr")).to_have_count(1, timeout=20_000)

            api = page.locator("#fleet tr[data-slot='api'] .progress-line")
            for message, fraction in [("task api-tests: running", 0.0), ("task api-tests: check passed", 0.5)]:
                line = TeamProgress(component="api", slot="api", task="api-tests", message=message, fraction=fraction)
                await bus.publish(build, Event.of(line))
            await expect(api).to_have_text("50% · task api-tests: check passed", timeout=20_000)

            # The status re-renders the rows (a new slot here); each keeps its latest line.
            await asyncio.wrap_future(set_status.remote(build, components=[*slots, web]).future())
            await bus.publish_event(build, "build.phase", {"phase": "build", "previous": "fleet"})  # asks for status
            await expect(page.locator("#fleet tbody tr")).to_have_count(2, timeout=20_000)
            await expect(api).to_have_text("50% · task api-tests: check passed")
            await expect(page.locator("#fleet tr[data-slot='web~polished'] .progress-line")).to_have_text("")
            await browser.close()
    finally:
        await bus.delete_build(build)
        await bus.aclose(flush_timeout=1.0)


def png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A plain PNG of one colour (no imaging library here)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


async def test_preview_screenshots_show_newest_first_and_open_full_size(site: dict[str, Any]) -> None:
    from playwright.async_api import async_playwright, expect

    control = site["control"]
    headers = {"Authorization": f"Bearer {site['token']}"}
    async with httpx.AsyncClient(base_url=site["url"], headers=headers, timeout=30) as client:
        build = (await client.post("/api/builds", json={"prompt": "an app with screenshots"})).json()["id"]
    shots = [("shot-1800000000000.png", png(64, 36, (200, 0, 0))), ("shot-1800000060000.png", png(64, 36, (0, 0, 200)))]
    for name, data in shots:
        await asyncio.wrap_future(control.add_screenshot.remote(build, name, data, tree="abc123").future())
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = await browser.new_page()
        await page.goto(f"{site['url']}/ui/")
        await page.fill("#token", site["token"])
        await page.click("#token-form button")
        await page.click(f"a[href='#/build/{build}']", timeout=20_000)

        strip = page.locator("#shots button.shot")
        await expect(strip).to_have_count(2, timeout=20_000)
        assert await strip.evaluate_all("bs => bs.map(b => b.dataset.name)") == [shots[1][0], shots[0][0]]
        # Fetched with the token and shown through object URLs: every image decodes to its 64 px.
        decoded = "[...document.querySelectorAll('#shots img, #shot-latest img')].every(i => i.src.startsWith('blob:') && i.naturalWidth === 64)"  # noqa: E501
        await page.wait_for_function(decoded, timeout=20_000)
        await expect(page.locator("#shot-latest")).to_be_visible()
        assert await page.locator("#shot-latest").get_attribute("data-name") == shots[1][0]
        await expect(page.locator("#shot-latest figcaption")).to_contain_text("tree abc123")

        await strip.nth(1).click()  # the older one, full size
        await expect(page.locator("#shot-full")).to_be_visible()
        older = await strip.nth(1).locator("img").get_attribute("src")
        assert await page.locator("#shot-full img").get_attribute("src") == older
        await page.locator("#shot-full").click()
        await expect(page.locator("#shot-full")).to_be_hidden()

        newest = ("shot-1800000120000.png", png(64, 36, (0, 160, 0)))  # taken while the page is open
        await asyncio.wrap_future(control.add_screenshot.remote(build, *newest).future())
        await expect(strip).to_have_count(3, timeout=20_000)
        assert await strip.first.get_attribute("data-name") == newest[0]
        await expect(page.locator("#shot-latest")).to_have_attribute("data-name", newest[0])
        await browser.close()
