"""The gate and the preview come back after their sandboxes died with the Ray they ran on (issue 20).

``kriptik down`` ends every sandbox and proxy while the gate's and the preview's saved state still
name them; after ``kriptik up`` the revived build's gate failed with ``Failed to look up actor with
name 'build:…:sbx:main-test'``. Here the proxies are released (their sandboxes end) and the gate and
preview actors are killed and restarted by Ray: the gate gets a new main-test sandbox holding main,
the preview a new sandbox serving it again. Real Ray, local sandboxes and Chromium.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from actors.handles import MAIN_TEST_SID, PREVIEW_SID, proxy_name
from actors.merge_gate import GateConfig, start_gate, stop_gate
from actors.pools.proxies import get_proxy, release
from actors.preview import PreviewConfig, start_preview, stop_preview
from sandbox_agents.verifiers import Chromium
from tests.integration.test_merge_gate import PAGE, PAGE_ONLY, Slots, page_text, wait_until

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]


async def test_a_gate_and_preview_whose_sandboxes_died_start_new_ones_holding_main(ray_cluster, build_id: str) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    contract = PAGE_ONLY
    slots = Slots(build_id)
    gate = start_gate(GateConfig(build_id=build_id))
    preview = start_preview(PreviewConfig(build_id=build_id, screenshot_every_s=0))
    chromium = Chromium()
    try:
        old_main = await gate.start.remote(json.dumps(contract))
        old_preview = await preview.start.remote(json.dumps(contract))
        await slots.open("web", {"web/index.html": PAGE})
        result = await asyncio.wait_for(gate.admit.remote(await slots.request("web", "web")), 120)
        assert result.accepted, result.reason
        await asyncio.wait_for(preview.refresh.remote(), 60)
        tree = await gate.tree_hash.remote()

        for sid in (MAIN_TEST_SID, PREVIEW_SID):  # as `kriptik down` does: sandboxes and proxies end
            await release(get_proxy(build_id, sid), proxy_name(build_id, sid))
        ray_cluster.kill(gate, no_restart=False)
        ray_cluster.kill(preview, no_restart=False)

        # The kills take effect asynchronously: wait for the new incarnations (a new sandbox), not an answer
        # the old one may still give.
        await wait_until(lambda: _new_value(_gate_sandbox(gate), old_main), 90)  # merged() wires it first
        assert await gate.merged.remote() == ["web"] and await gate.tree_hash.remote() == tree
        main_files = await get_proxy(build_id, MAIN_TEST_SID).read_file.remote("web/index.html")
        assert main_files == PAGE.encode()  # the new main-test sandbox holds main

        await wait_until(lambda: _new_value(preview.start.remote(json.dumps(contract)), old_preview), 90)
        url = await asyncio.wait_for(preview.refresh.remote(), 60)  # writes all of main again
        assert await page_text(chromium, url) == "Todos"
    finally:
        await chromium.close()
        await stop_preview(preview)
        await stop_gate(gate)
        await slots.close()


async def _new_value(call: Any, old: Any) -> bool:
    """The actor answers, with something other than ``old`` (a restarting actor's errors are a "not yet")."""
    try:
        return await call not in (None, old)
    except Exception:  # noqa: BLE001 - restarting or dead for a moment: ask again
        return False


async def _gate_sandbox(gate: Any) -> Any:
    await gate.merged.remote()  # a revived gate connects its sandbox on its first call
    return await gate.sandbox_id.remote()
