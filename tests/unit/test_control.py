"""Control's domain without Ray (coordinator/control.py): queue, quotas, admission, revival, cancel.

The builds' runners are a fake that records what Control asked of it; the store is a real
SQLite file and time a :class:`FakeClock`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from coordinator.api_models import BuildRequest, NotifySettings
from coordinator.build.ports import CANCEL_REQUESTED
from coordinator.clock import FakeClock
from coordinator.contracts import load_contract
from coordinator.control import Admission, BuildControl, Quotas, status_view
from coordinator.placement import Placement, place
from coordinator.resources import examples_dir
from coordinator.store.schema import SessionStatus
from coordinator.store.store import Store
from sandbox_agents.errors import BuildActiveError, BuildNotFoundError, InvalidInputError

EXAMPLES = examples_dir()
LLM = {"type": "replay", "cassettes": []}
SHOT = "shot-1800000000000.png"


class FakeRunners:
    """A :class:`~coordinator.control.BuildRunners` that runs nothing and records every call."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.calls: list[tuple[str, str]] = []
        self.registered: dict[str, dict[str, Any]] = {}
        self.down: set[str] = set()
        """Builds whose runner is down: a cancel cannot reach it."""
        self.raised: dict[str, float] = {}
        self.placements: dict[str, Placement] = {}
        self.webhooks: dict[str, dict[str, Any] | None] = {}

    def place(self, mode: str | None, runs_on: Mapping[str, str | None]) -> Placement:
        return place(mode, default={"type": "local"}, runs_on=runs_on)

    def register(
        self,
        build_id: str,
        llm: dict[str, Any],
        *,
        parallel: bool = True,
        placement: Placement,
        webhook: dict[str, Any] | None = None,
    ) -> None:
        self.registered[build_id] = llm
        self.placements[build_id] = placement
        self.webhooks[build_id] = webhook

    def started(self) -> list[str]:
        return [build for call, build in self.calls if call == "start"]

    async def start(self, build_id: str) -> None:
        self.calls.append(("start", build_id))

    async def revive(self, build_id: str) -> None:
        self.calls.append(("revive", build_id))

    async def cancel(self, build_id: str) -> None:
        if build_id in self.down:
            raise ValueError(f"no coordinator for {build_id}")
        self.calls.append(("cancel", build_id))

    async def resume(self, build_id: str) -> str:
        self.calls.append(("resume", build_id))
        self.store.update_session(build_id, status=SessionStatus.RUNNING)
        return "running"

    async def raise_budget(self, build_id: str, limit_usd: float) -> dict[str, Any]:
        self.raised[build_id] = limit_usd
        return {"limit_usd": limit_usd, "spent_usd": 0.0, "status": "ok"}

    async def preview(self, build_id: str) -> dict[str, Any]:
        return {"url": f"http://preview/{build_id}", "components": {}}

    async def screenshots(self, build_id: str) -> list[dict[str, Any]]:
        return [{"name": SHOT, "taken_at": 1.0, "size": 4, "path": "/", "tree": "abc"}]

    async def screenshot(self, build_id: str, name: str) -> bytes:
        self.calls.append(("screenshot", build_id))
        return b"\x89PNG"

    async def sandboxes(self, build_id: str) -> list[dict[str, Any]]:
        return []

    async def take_control(self, build_id: str) -> str:
        return f"http://takeover/{build_id}"

    async def main_read(self, build_id: str, what: str, arg: str = "") -> dict[str, Any]:
        self.calls.append((f"main_read:{what}:{arg}", build_id))
        return {"head": "0" * 40, "files": []}

    async def delete(self, build_id: str) -> None:
        self.store.get_session(build_id)  # the rows are still there while the runner cleans up
        self.calls.append(("delete", build_id))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "store.db").start()
    yield s
    s.close()


@pytest.fixture
def runners(store: Store) -> FakeRunners:
    return FakeRunners(store)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make_control(
    store: Store, runners: FakeRunners, clock: FakeClock, tmp_path: Path, *, per_user: int = 4, fleet: int = 64
) -> BuildControl:
    return BuildControl(
        store,
        runners,
        quotas=Quotas(max_sandboxes_per_user=per_user, max_sandboxes=fleet),
        clock=clock,
        admissions_dir=tmp_path / "builds",
        examples_dir=EXAMPLES,
        llm=LLM,
    )


def prompt(priority: int = 0) -> BuildRequest:
    return BuildRequest(prompt="a todo app", priority=priority)


def four_slots() -> BuildRequest:
    """A contract whose plan has four slots (two components, one in a tournament of two, plus a database)."""
    contract = load_contract(EXAMPLES / "intents" / "todo-fullstack.yaml").model_dump(mode="json")
    return BuildRequest(contract=contract)


def end(store: Store, build_id: str, status: SessionStatus = SessionStatus.COMPLETED) -> None:
    store.update_session(build_id, status=status)


# --- queue order and quotas ----------------------------------------------------------------------


async def test_the_queue_admits_by_priority_then_age(
    store: Store, runners: FakeRunners, clock: FakeClock, tmp_path: Path
) -> None:
    control = make_control(store, runners, clock, tmp_path, per_user=1, fleet=1)
    first = await control.submit("alice", prompt())
    older = await control.submit("alice", prompt(priority=0))
    urgent = await control.submit("alice", prompt(priority=5))
    younger = await control.submit("alice", prompt(priority=0))
    low = await control.submit("alice", prompt(priority=-3))
    assert control.running() == [first] and runners.started() == [first]
    assert control.queued() == [urgent, older, younger, low]
    assert store.get_session(older).status is SessionStatus.QUEUED
    for expected in (urgent, older, younger, low):
        end(store, control.running()[0])
        assert await control.admit() == [expected]
        assert store.get_session(expected).status is SessionStatus.RUNNING
    assert runners.started() == [first, urgent, older, younger, low]
    assert control.queued() == []


async def test_a_users_quota_holds_back_only_that_user(
    store: Store, runners: FakeRunners, clock: FakeClock, tmp_path: Path
) -> None:
    control = make_control(store, runners, clock, tmp_path, per_user=4, fleet=64)
    big = await control.submit("alice", four_slots())
    waiting = await control.submit("alice", prompt())
    bobs = await control.submit("bob", prompt())
    assert control.in_use("alice") == 4 and control.in_use("bob") == 1 and control.in_use() == 5
    assert control.running() == [big, bobs] and control.queued() == [waiting]
    end(store, big)
    assert await control.admit() == [waiting]


async def test_the_fleet_quota_queues_every_user(
    store: Store, runners: FakeRunners, clock: FakeClock, tmp_path: Path
) -> None:
    control = make_control(store, runners, clock, tmp_path, per_user=4, fleet=2)
    alices = await control.submit("alice", prompt())
    bobs = await control.submit("bob", prompt())
    carols = await control.submit("carol", prompt())
    assert control.running() == [alices, bobs] and control.queued() == [carols]
    end(store, bobs, SessionStatus.FAILED)
    assert await control.admit() == [carols]


async def test_a_build_bigger_than_its_quota_runs_alone(
    store: Store, runners: FakeRunners, clock: FakeClock, tmp_path: Path
) -> None:
    control = make_control(store, runners, clock, tmp_path, per_user=2, fleet=3)
    small = await control.submit("alice", prompt())
    big = await control.submit("alice", four_slots())  # 4 sandboxes: more than alice's 2 and the fleet's 3
    assert control.running() == [small] and control.queued() == [big]
    end(store, small)
    assert await control.admit() == [big]  # nothing else runs: it runs, counted at its real size
    assert control.in_use() == 4
    assert await control.submit("bob", prompt()) in control.queued()  # the fleet is full while it runs


async def test_a_paused_build_frees_its_quota_and_stays_known(
    store: Store, runners: FakeRunners, clock: FakeClock, tmp_path: Path
) -> None:
    control = make_control(store, runners, clock, tmp_path, per_user=1, fleet=1)
    first = await control.submit("alice", prompt())
    second = await control.submit("alice", prompt())
    end(store, first, SessionStatus.PAUSED)
    assert await control.admit() == [second]
    assert control.running() == [second]
    end(store, second)
    assert await control.admit() == [] and control.running() == []
    assert await control.resume("alice", first) == "running"  # back in the count once resumed
    assert control.running() == [first] and ("resume", first) in runners.calls


async def test_submit_registers_the_build_with_its_llm_and_admission(
    store: Store, runners: FakeRunners, clock: FakeClock, tmp_path: Path
) -> None:
    control = make_control(store, runners, clock, tmp_path)
    build = await control.submit("alice", BuildRequest(example="hello-calc", priority=2, budget_usd=1.5))
    cassette = EXAMPLES / "cassettes" / "hello-calc.yaml"
    assert runners.registered[build] == {"type": "replay", "cassettes": [str(cassette)]}  # the example's own
    session = store.get_session(build, "alice")
    assert session.contract is not None and session.budget == {"max_usd": 1.5}
    saved = Admission.model_validate_json((tmp_path / "builds" / f"{build}.admission.json").read_text())
    assert saved == Admission(build_id=build, user_id="alice", priority=2, needed=1)
    end(store, build)
    await control.admit()
    assert not (tmp_path / "builds" / f"{build}.admission.json").exists()  # an ended build forgets it


async def test_submit_refuses_an_unknown_example_and_a_missing_llm(
    store: Store, runners: FakeRunners, clock: FakeClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    control = make_control(store, runners, clock, tmp_path)
    with pytest.raises(InvalidInputError) as info:
        await control.submit("alice", BuildRequest(example="no-such-app"))
    assert info.value.field == "example"
    monkeypatch.delenv("KRIPTIK_CASSETTES", raising=False)
    control.llm = None  # KRIPTIK_LLM=replay without cassettes: nothing to answer the agents
    with pytest.raises(InvalidInputError) as info:
        await control.submit("alice", prompt())
    assert info.value.field == "llm"
    assert store.list_sessions("alice") == [] and runners.registered == {}


async def test_the_requests_build_mode_wins_over_the_contracts_and_the_server_default_applies_without_either(
    store: Store, runners: FakeRunners, clock: FakeClock, tmp_path: Path
) -> None:
    control = make_control(store, runners, clock, tmp_path)
    contract = load_contract(EXAMPLES / "intents" / "todo-fullstack.yaml").model_dump(mode="json")
    pinned = {**contract, "build_mode": "hybrid"}
    pinned["components"] = [{**c, "runs_on": "local"} if c["name"] == "database" else c for c in contract["components"]]
    by_contract = await control.submit("alice", BuildRequest(contract=pinned))
    by_request = await control.submit("alice", BuildRequest(contract=pinned, build_mode="modal"))
    by_default = await control.submit("alice", BuildRequest(contract=contract))
    hybrid = runners.placements[by_contract]
    assert hybrid.mode == "hybrid"
    assert (
        hybrid.backend("slot", "backend")["type"] == "modal" and hybrid.backend("slot", "database")["type"] == "local"
    )
    assert hybrid.backend("main")["type"] == "local" and hybrid.backend("preview")["type"] == "local"
    modal = runners.placements[by_request]
    assert {c["type"] for c in modal.backends()} == {"modal"}  # a modal build puts everything there, runs_on aside
    assert runners.placements[by_default] == Placement.single({"type": "local"})


# --- revival -------------------------------------------------------------------------------------


async def test_revival_requeues_queued_restarts_running_and_brings_back_paused(
    store: Store, runners: FakeRunners, clock: FakeClock, tmp_path: Path
) -> None:
    before = make_control(store, runners, clock, tmp_path, per_user=1, fleet=1)
    running = await before.submit("alice", prompt())
    low = await before.submit("alice", prompt(priority=1))
    high = await before.submit("alice", prompt(priority=9))
    paused = store.create_session("alice", "paused one", status=SessionStatus.PAUSED).id
    done = store.create_session("alice", "done one", status=SessionStatus.COMPLETED).id

    after = FakeRunners(store)  # a restarted Control: nothing in memory, the store and the admissions on disk
    control = make_control(store, after, clock, tmp_path, per_user=1, fleet=1)
    await control.revive()
    assert after.calls == [("start", running), ("revive", paused)]  # nothing for the ended build
    assert control.running() == [running]
    assert control.queued() == [high, low]  # the saved priorities, not submission order
    assert done not in control.queued() + control.running()
    end(store, running)
    assert await control.admit() == [high]


async def test_one_build_that_cannot_be_revived_does_not_stop_the_others(
    store: Store, runners: FakeRunners, clock: FakeClock, tmp_path: Path
) -> None:
    broken = store.create_session("alice", "broken", status=SessionStatus.RUNNING).id
    fine = store.create_session("bob", "fine", status=SessionStatus.RUNNING).id

    class Failing(FakeRunners):
        async def start(self, build_id: str) -> None:
            if build_id == broken:
                raise BuildNotFoundError(f"build {build_id} has no coordinator config")
            await super().start(build_id)

    failing = Failing(store)
    control = make_control(store, failing, clock, tmp_path)
    await control.revive()
    assert failing.started() == [fine]


# --- cancel --------------------------------------------------------------------------------------


async def test_a_cancel_while_the_runner_is_down_is_stored_for_it(
    store: Store, runners: FakeRunners, clock: FakeClock, tmp_path: Path
) -> None:
    control = make_control(store, runners, clock, tmp_path)
    build = await control.submit("alice", prompt())
    runners.down.add(build)
    assert await control.cancel("alice", build) == "cancelling"
    session = store.get_session(build)
    assert session.error == CANCEL_REQUESTED and session.status is SessionStatus.RUNNING  # the runner ends it
    runners.down.clear()
    assert await control.cancel("alice", build) == "cancelling"
    assert ("cancel", build) in runners.calls


async def test_a_queued_build_is_cancelled_at_once_and_never_admitted(
    store: Store, runners: FakeRunners, clock: FakeClock, tmp_path: Path
) -> None:
    control = make_control(store, runners, clock, tmp_path, per_user=1, fleet=1)
    running = await control.submit("alice", prompt())
    queued = await control.submit("alice", prompt())
    clock.advance(42.0)
    assert await control.cancel("alice", queued) == "cancelled"
    session = store.get_session(queued)
    assert session.status is SessionStatus.CANCELLED and session.finished_at == clock.now()
    assert ("cancel", queued) not in runners.calls and control.queued() == []
    end(store, running)
    assert await control.admit() == []
    assert await control.cancel("alice", queued) == "cancelled"  # final: its status, nothing else


# --- scoping and the other commands ---------------------------------------------------------------


async def test_another_users_build_does_not_exist_for_you(
    store: Store, runners: FakeRunners, clock: FakeClock, tmp_path: Path
) -> None:
    control = make_control(store, runners, clock, tmp_path)
    build = await control.submit("alice", prompt())
    assert control.status("alice", build).user_id == "alice"
    with pytest.raises(BuildNotFoundError):
        control.status("bob", build)
    for command in (
        control.cancel, control.resume, control.preview, control.screenshots, control.sandboxes, control.take_control,
    ):  # fmt: skip
        with pytest.raises(BuildNotFoundError):
            await command("bob", build)
    with pytest.raises(BuildNotFoundError):
        await control.screenshot("bob", build, SHOT)
    with pytest.raises(BuildNotFoundError):
        await control.raise_budget("bob", build, 1.0)
    assert control.list_builds("bob") == []
    assert [s.id for s in control.list_builds("alice")] == [build]
    assert runners.calls == [("start", build)]


async def test_an_ended_build_is_deleted_with_what_it_holds_then_its_rows_and_a_live_one_is_refused(
    store: Store, runners: FakeRunners, clock: FakeClock, tmp_path: Path
) -> None:
    control = make_control(store, runners, clock, tmp_path)
    build = await control.submit("alice", prompt())
    admission = tmp_path / "builds" / f"{build}.admission.json"
    assert admission.exists()
    with pytest.raises(BuildActiveError, match="cancel it"):
        await control.delete("alice", build)  # running
    with pytest.raises(BuildNotFoundError):
        await control.delete("bob", build)  # not bob's
    end(store, build)
    await control.delete("alice", build)
    assert runners.calls[-1] == ("delete", build) and not admission.exists()
    with pytest.raises(BuildNotFoundError):
        store.get_session(build)
    assert control.list_builds("alice") == [] and control.running() == []
    with pytest.raises(BuildNotFoundError):
        await control.delete("alice", build)  # gone


async def test_budget_raises_add_to_the_limit_and_ended_builds_do_not_resume(
    store: Store, runners: FakeRunners, clock: FakeClock, tmp_path: Path
) -> None:
    control = make_control(store, runners, clock, tmp_path)
    build = await control.submit("alice", BuildRequest(prompt="x", budget_usd=2.0))
    answer = await control.raise_budget("alice", build, 3.0)
    assert runners.raised[build] == 5.0 and answer["limit_usd"] == 5.0
    with pytest.raises(InvalidInputError):
        await control.raise_budget("alice", build, 0)
    end(store, build, SessionStatus.FAILED)
    with pytest.raises(InvalidInputError) as info:
        await control.resume("alice", build)
    assert info.value.field == "build_id"


def test_the_status_view_shows_what_the_store_holds(store: Store) -> None:
    build = store.create_session("alice", "a todo app", budget={"max_usd": 2.0}).id
    store.update_session(build, status=SessionStatus.RUNNING, phase="build", preview_url="http://p")
    store.add_cost(build, source="llm:x", estimated_cost=0.5, llm_tokens=1200)
    view = status_view(store, store.get_session(build))
    assert (view.status, view.phase, view.preview_url) == ("running", "build", "http://p")
    assert view.budget is not None and view.budget.spent_usd == 0.5 and view.budget.llm_tokens == 1200


async def test_screenshots_reach_the_runner_for_the_owner_and_a_bad_name_never_does(
    store: Store, runners: FakeRunners, clock: FakeClock, tmp_path: Path
) -> None:
    control = make_control(store, runners, clock, tmp_path)
    build = await control.submit("alice", prompt())
    assert [s["name"] for s in await control.screenshots("alice", build)] == [SHOT]
    assert await control.screenshot("alice", build, SHOT) == b"\x89PNG"
    for name in ("../store.db", "shot-1.png", "latest.png"):
        with pytest.raises(InvalidInputError):
            await control.screenshot("alice", build, name)
    assert runners.calls.count(("screenshot", build)) == 1


async def test_reads_of_main_reach_the_runner_for_the_owner_only(
    store: Store, runners: FakeRunners, clock: FakeClock, tmp_path: Path
) -> None:
    control = make_control(store, runners, clock, tmp_path)
    build = await control.submit("alice", prompt())
    assert await control.main_read("alice", build, "tree") == {"head": "0" * 40, "files": []}
    await control.main_read("alice", build, "file", "web/index.html")
    with pytest.raises(BuildNotFoundError):
        await control.main_read("bob", build, "tree")
    with pytest.raises(InvalidInputError):
        await control.main_read("alice", build, "branches")
    assert [c for c in runners.calls if c[0].startswith("main_read")] == [
        ("main_read:tree:", build),
        ("main_read:file:web/index.html", build),
    ]


async def test_each_build_is_registered_with_its_own_webhook_or_its_owners_defaults(
    store: Store, runners: FakeRunners, clock: FakeClock, tmp_path: Path
) -> None:
    control = make_control(store, runners, clock, tmp_path)
    control.webhooks.set_defaults("alice", NotifySettings(url="https://alice.example/hook", secret="s3cret"))
    inherits = await control.submit("alice", prompt())
    own = await control.submit(
        "alice", BuildRequest(prompt="a todo app", notify={"url": "https://own.example/x", "events": ["failed"]})
    )
    bobs = await control.submit("bob", prompt())
    inherited = runners.webhooks[inherits]
    assert inherited is not None and inherited["url"] == "https://alice.example/hook"
    assert inherited["secret"] == "s3cret"  # in clear for the coordinator, which signs with it
    assert runners.webhooks[own] is not None and runners.webhooks[own]["kinds"] == ["build.failed"]
    assert runners.webhooks[bobs] is None  # never alice's


async def test_a_loopback_webhook_is_refused_before_the_build_exists(
    store: Store, runners: FakeRunners, clock: FakeClock, tmp_path: Path
) -> None:
    control = make_control(store, runners, clock, tmp_path)
    request = BuildRequest(prompt="a todo app", notify={"url": "http://127.0.0.1:8080/hook"})
    with pytest.raises(InvalidInputError, match="loopback") as refused:
        await control.submit("alice", request)
    assert refused.value.field == "notify.url"
    assert store.list_sessions("alice") == [] and runners.registered == {}
