"""The fleet-wide pace of Modal creates on a real Ray: proxies in their own processes take turns of one bucket.

The proxies run on the Modal SDK fake (``sdk_module``; the workers have fake credentials). What is
asserted comes from the pace actor's own record of its grants (times on its clock) and the fake's
record of the creates, never from how long the test took.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from actors import handles
from actors.handles import proxy_name
from actors.modal_pace import PaceReport, start_pace
from actors.pools.proxies import release
from actors.sandbox_proxy import start_proxy
from sandbox_agents.backends.base import SandboxSpec
from tests.fakes.fake_modal import FakeModal

RATE = 1.0
BURST = 2
PROXIES = 5
MODAL = {
    "type": "modal",
    "sdk_module": "tests.fakes.modal_sdk",
    "app_name": "kriptik-pace",
    "fleet_creates_per_s": RATE,
    "fleet_create_burst": BURST,
}


async def end_pace() -> None:
    """Kill the cluster's pace actor if there is one (a later create starts a fresh one)."""
    pace = handles.find(handles.MODAL_PACE_NAME)
    if pace is not None:
        handles.kill(pace)
        assert await handles.wait_gone(handles.MODAL_PACE_NAME)


async def test_proxies_creating_at_once_on_modal_take_turns_of_one_fleet_wide_pace(
    ray_cluster: object, kriptik_home: Path
) -> None:
    build_id = f"t-pace-{uuid.uuid4().hex[:8]}"
    await end_pace()  # a fresh, full bucket whose record is this test's alone
    pace = start_pace(RATE, BURST)
    names = [proxy_name(build_id, f"s{i}") for i in range(PROXIES)]
    proxies = [start_proxy(name, MODAL) for name in names]
    try:
        assert await handles.answers(pace, timeout_s=60)
        await asyncio.gather(*(handles.answers(p, timeout_s=60) for p in proxies))  # started: the creates go together
        ids = await asyncio.gather(*(p.create.remote(SandboxSpec(tags={"build": build_id})) for p in proxies))
        report: PaceReport = await pace.report.remote()
    finally:
        await asyncio.gather(*(release(p, name) for p, name in zip(proxies, names, strict=True)))
        await end_pace()

    assert (report.rate, report.burst) == (RATE, BURST)
    grants = report.grants  # in the order they were reserved
    assert len(grants) == PROXIES  # one token per create: none was refused
    assert all(g.wait_s == 0 for g in grants[:BURST])  # the burst goes at once
    queued = grants[BURST:]
    assert all(g.wait_s > 0 for g in queued)
    # past the burst, one create per 1/RATE: the first queued one when the next token exists, the rest spaced
    assert queued[0].start_at >= grants[0].start_at + 1 / RATE - 1e-9
    spacing = [b.start_at - a.start_at for a, b in zip(queued, queued[1:], strict=False)]
    assert spacing == pytest.approx([1 / RATE] * (len(queued) - 1))

    fake = FakeModal(kriptik_home)
    ours = {i: s for i, s in fake.sandboxes.items() if s.tags.get("build") == build_id}
    assert set(ours) == set(ids) and len(ids) == PROXIES  # every proxy got its sandbox
    # each create came after its turn (both on the host's monotonic clock; ordering, not duration)
    created = sorted(s.created for s in ours.values())
    assert all(c >= g.start_at - 0.01 for c, g in zip(created, grants, strict=True))
    assert all(s.returncode is not None for s in ours.values())  # and every one was ended
