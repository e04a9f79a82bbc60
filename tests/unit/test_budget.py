"""The budget ledger: pricing, thresholds fired exactly once, pause at 100 %, raising the budget."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coordinator.budget import MODAL_COMPUTE_BASIS, Budget, BudgetLedger, BudgetStatus, ModelPrice, Rates
from coordinator.bus.events import EventPayload, UnknownEvent, parse_event
from coordinator.clock import FakeClock
from coordinator.store.store import Store
from sandbox_agents.errors import BudgetExceededError, InvalidInputError
from sandbox_agents.llm.base import Usage

# Round prices so the arithmetic in the assertions is exact.
RATES = Rates(
    local_cpu_second_usd=0.01,
    modal_cpu_second_usd=0.02,
    modal_gib_second_usd=0.005,
    models={"big": ModelPrice(input_usd_per_mtok=10.0, output_usd_per_mtok=30.0)},
    unknown_model=ModelPrice(input_usd_per_mtok=1.0, output_usd_per_mtok=1.0),
)


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []
        self.fail_next = False

    async def emit(self, event: EventPayload) -> None:
        kind, data = event.kind, event.data
        if self.fail_next:
            self.fail_next = False
            raise ConnectionError("bus down")
        self.seen.append((kind, data))

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.seen]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "store.db", clock=FakeClock()) as opened:
        opened.create_session("alice", "p", session_id="b1")
        yield opened


@pytest.fixture
def events() -> Events:
    return Events()


def _ledger(store: Store, events: Events, max_usd: float | None = 1.0) -> BudgetLedger:
    return BudgetLedger(store, "b1", Budget(max_usd=max_usd), rates=RATES, events=events)


async def test_compute_is_priced_per_backend(store: Store, events: Events) -> None:
    ledger = _ledger(store, events, max_usd=None)
    local = await ledger.record_compute("api#0", 10, "local", cpu=2)
    modal = await ledger.record_compute("api#1", 10, "modal", cpu=1, memory_gib=2)
    assert local.estimated_cost == pytest.approx(10 * 2 * 0.01)
    assert modal.estimated_cost == pytest.approx(10 * (0.02 + 2 * 0.005))
    assert (local.source, modal.source) == ("compute:local:api#0", "compute:modal:api#1;basis=wall*rate")
    totals = store.cost_totals("b1")
    assert totals.compute_seconds == 20 and ledger.spent() == pytest.approx(0.5)
    with pytest.raises(InvalidInputError):
        await ledger.record_compute("api#0", -1, "local")


async def test_a_modal_charge_says_it_is_wall_time_at_the_list_rate(store: Store, events: Events) -> None:
    """Modal reports no cost: the entry says how it was priced, and that stays true of the meter."""
    from sandbox_agents.backends.modal.backend import ModalSandbox

    entry = await _ledger(store, events, max_usd=None).record_compute("web#0", 3600, "modal", cpu=2, memory_gib=4)
    kind, backend, rest = entry.source.split(":", 2)
    slot, _, basis = rest.partition(";")
    assert (kind, backend, slot, basis) == ("compute", "modal", "web#0", f"basis={MODAL_COMPUTE_BASIS}")
    assert entry.compute_seconds == 3600 and entry.estimated_cost == pytest.approx(3600 * (2 * 0.02 + 4 * 0.005))
    # Wall time is what is metered as long as a Modal sandbox reports no CPU seconds (SandboxSession.metering).
    assert not hasattr(ModalSandbox, "cpu_seconds")


def test_default_modal_rates_are_its_published_sandbox_prices() -> None:
    rates = Rates()
    assert (rates.modal_cpu_second_usd, rates.modal_gib_second_usd) == (0.00003942, 0.00000667)
    # A default sandbox (1 core, 1 GiB) for an hour: ≈ $0.166.
    assert rates.compute_cost("modal", 3600) == pytest.approx(3600 * (0.00003942 + 0.00000667))


async def test_tokens_are_priced_per_model(store: Store, events: Events) -> None:
    ledger = _ledger(store, events, max_usd=None)
    usage = Usage(input_tokens=100_000, output_tokens=10_000, cost_usd=99.0)
    known = await ledger.record_llm("agent:api:0", "big-2025-01-01", usage)  # longest prefix "big"
    assert known.estimated_cost == pytest.approx(1.0 + 0.3) and known.llm_tokens == 110_000
    provider_priced = await ledger.record_llm("judge", "mystery", Usage(input_tokens=5, cost_usd=0.07))
    assert provider_priced.estimated_cost == pytest.approx(0.07)
    unpriced = await ledger.record_llm("judge", "mystery", Usage(input_tokens=1_000_000, output_tokens=0))
    assert unpriced.estimated_cost == pytest.approx(1.0)
    assert store.cost_totals("b1").llm_tokens == 110_000 + 5 + 1_000_000


def test_default_rates_know_the_usual_models() -> None:
    rates = Rates()
    assert rates.model_price("claude-sonnet-4-5-20250929") == ModelPrice(input_usd_per_mtok=3, output_usd_per_mtok=15)
    assert rates.model_price("gpt-4o-mini") == ModelPrice(input_usd_per_mtok=0.15, output_usd_per_mtok=0.6)
    assert rates.model_price("replay").input_usd_per_mtok == 0  # type: ignore[union-attr]
    assert rates.modal_cpu_second_usd > 0 and rates.modal_gib_second_usd > 0


async def test_thresholds_fire_exactly_once(store: Store, events: Events) -> None:
    ledger = _ledger(store, events)
    await ledger.record_compute("s", 70, "local")  # $0.70
    assert ledger.status() is BudgetStatus.OK and events.kinds() == []
    await ledger.record_compute("s", 10, "local")  # $0.80: exactly the warning line
    assert ledger.status() is BudgetStatus.WARNING
    await ledger.record_compute("s", 5, "local")
    assert events.kinds() == ["budget.warning"]
    assert events.seen[0][1]["build_id"] == "b1" and events.seen[0][1]["spent_usd"] == pytest.approx(0.8)
    await ledger.record_compute("s", 15, "local")  # $1.00: exhausted
    await ledger.record_compute("s", 50, "local")
    assert ledger.status() is BudgetStatus.EXHAUSTED
    assert events.kinds() == ["budget.warning", "budget.exhausted"]


async def test_jumping_past_both_lines_fires_both_once(store: Store, events: Events) -> None:
    ledger = _ledger(store, events)
    await ledger.record_compute("s", 500, "local")
    await ledger.record_compute("s", 1, "local")
    assert events.kinds() == ["budget.warning", "budget.exhausted"]


async def test_exhausted_budget_pauses_new_work(store: Store, events: Events) -> None:
    ledger = _ledger(store, events)
    ledger.ensure_available()
    await ledger.record_llm("agent", "big", Usage(input_tokens=100_000))  # exactly $1.00
    assert ledger.remaining() == 0
    with pytest.raises(BudgetExceededError):
        ledger.ensure_available()
    exhausted = dict(events.seen)["budget.exhausted"]
    assert exhausted["action"] == "pause" and exhausted["budget_usd"] == 1.0


async def test_raise_budget_rearms_thresholds_and_persists(store: Store, events: Events) -> None:
    ledger = _ledger(store, events)
    await ledger.record_compute("s", 100, "local")  # $1.00
    assert events.kinds() == ["budget.warning", "budget.exhausted"]

    assert await ledger.raise_budget(2.0) is BudgetStatus.OK  # $1 of $2: both lines re-armed
    ledger.ensure_available()
    assert events.kinds()[-1] == "budget.raised" and events.seen[-1][1]["previous_usd"] == 1.0
    assert store.get_session("b1").budget == {"max_usd": 2.0, "warn_fraction": 0.8}
    await ledger.record_compute("s", 60, "local")  # $1.60: warned again on the way to the new limit
    await ledger.record_compute("s", 40, "local")  # $2.00
    assert events.kinds()[-2:] == ["budget.warning", "budget.exhausted"]

    assert await ledger.raise_budget(2.2) is BudgetStatus.WARNING  # still past 80 %: warning not repeated
    await ledger.record_compute("s", 10, "local")
    assert events.kinds()[-1] == "budget.raised"
    await ledger.record_compute("s", 10, "local")  # $2.20: exhausted again, fires again
    assert events.kinds()[-1] == "budget.exhausted"
    with pytest.raises(InvalidInputError):
        await ledger.raise_budget(-5)


async def test_restarted_ledger_does_not_warn_twice(store: Store, events: Events) -> None:
    await _ledger(store, events).record_compute("s", 85, "local")
    assert events.kinds() == ["budget.warning"]
    revived = _ledger(store, events)
    assert revived.spent() == pytest.approx(0.85) and revived.status() is BudgetStatus.WARNING
    await revived.record_compute("s", 1, "local")
    assert events.kinds() == ["budget.warning"]
    await revived.record_compute("s", 20, "local")
    assert events.kinds() == ["budget.warning", "budget.exhausted"]


async def test_undelivered_threshold_event_is_retried_on_next_charge(store: Store, events: Events) -> None:
    ledger = _ledger(store, events)
    events.fail_next = True
    await ledger.record_compute("s", 90, "local")
    assert events.kinds() == [] and store.cost_totals("b1").entries == 1  # the charge is kept
    await ledger.record_compute("s", 1, "local")
    assert events.kinds() == ["budget.warning"]


async def test_no_limit_is_always_ok(store: Store, events: Events) -> None:
    ledger = _ledger(store, events, max_usd=None)
    await ledger.record_compute("s", 10_000, "local")
    assert ledger.status() is BudgetStatus.OK and ledger.remaining() is None and events.kinds() == []


def test_budget_status_from_stored_figures_matches_the_ledger_thresholds() -> None:
    from coordinator.budget import BudgetStatus, budget_status

    assert budget_status(None, 5.0) == BudgetStatus.OK
    assert budget_status({"max_usd": 1.0}, 0.79) == BudgetStatus.OK
    assert budget_status({"max_usd": 1.0}, 0.8) == BudgetStatus.WARNING
    assert budget_status({"max_usd": 1.0, "warn_fraction": 0.5}, 0.6) == BudgetStatus.WARNING
    assert budget_status({"max_usd": 1.0}, 1.0) == BudgetStatus.EXHAUSTED


async def test_budget_events_are_typed_and_keep_their_fields(store: Store, events: Events) -> None:
    ledger = _ledger(store, events)
    await ledger.record_compute("s", 100, "local")  # $1.00: warning and exhausted at once
    await ledger.raise_budget(2.0)
    assert events.seen == [
        ("budget.warning", {"build_id": "b1", "spent_usd": pytest.approx(1.0), "budget_usd": 1.0, "fraction": 0.8}),
        ("budget.exhausted", {"build_id": "b1", "spent_usd": pytest.approx(1.0), "budget_usd": 1.0, "action": "pause"}),
        (
            "budget.raised",
            {
                "build_id": "b1",
                "previous_usd": 1.0,
                "budget_usd": 2.0,
                "status": "ok",
                "spent_usd": pytest.approx(1.0),
            },
        ),
    ]
    assert all(not isinstance(parse_event(kind, data), UnknownEvent) for kind, data in events.seen)
