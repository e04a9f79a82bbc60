"""One ledger of what a build costs: sandbox compute-seconds and LLM tokens, priced in US dollars.

Every charge is priced here (by backend for compute, by model for tokens) and written to the
store's ``build_costs`` before anything else happens, so a restarted coordinator reloads the
same total. The ledger watches two thresholds of the build's budget:

* **warning** at ``warn_fraction`` (80 %): one ``budget.warning`` event, the user is told;
* **exhausted** at 100 %: one ``budget.exhausted`` event; the coordinator *pauses* the
  build (keeps its sandboxes and state) instead of ending it, and :meth:`BudgetLedger.ensure_available`
  refuses new work with :class:`BudgetExceededError`.

:meth:`BudgetLedger.raise_budget` (the user adds budget) re-arms every threshold the new
budget puts back above what was spent, so the resumed build warns again on its way to the
new limit, and emits ``budget.raised`` so the coordinator can resume.
"""

from __future__ import annotations

import enum
import logging
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from coordinator.bus.events import BudgetExhausted, BudgetRaised, BudgetWarning, EventPayload, RunEvent
from coordinator.store.store import CostEntry, Store
from sandbox_agents.errors import BudgetExceededError, InvalidInputError
from sandbox_agents.llm.base import Usage

logger = logging.getLogger(__name__)

_EPSILON = 1e-9
"""Tolerance of threshold comparisons, so sums of float prices hit a threshold they equal."""

MODAL_COMPUTE_BASIS = "wall*rate"
"""How a Modal compute charge is priced, written into its ledger entry (``compute:modal:{slot};basis=wall*rate``).

The Modal SDK reports no cost per sandbox, and a Modal sandbox reports no CPU seconds, so its meter
is the seconds it has been alive (``SandboxSession.metering``), priced at :class:`Rates`' list rates
for the cpu and memory it asked for. Modal bills each second at the higher of request and use, so
this is the least the sandbox cost; docs/modal.md ("Cost") has the rates and where they come from.
"""


class ModelPrice(BaseModel):
    """What a million tokens of one model cost."""

    model_config = ConfigDict(extra="forbid")

    input_usd_per_mtok: float = Field(ge=0)
    output_usd_per_mtok: float = Field(ge=0)


def _default_models() -> dict[str, ModelPrice]:
    # List prices per million tokens at the time of writing; override them in Rates.models.
    prices = {
        "claude-opus-4": (15.0, 75.0),
        "claude-sonnet-4": (3.0, 15.0),
        "claude-haiku-4": (1.0, 5.0),
        "claude-3-5-haiku": (0.8, 4.0),
        "gpt-4o-mini": (0.15, 0.6),
        "gpt-4o": (2.5, 10.0),
        "gpt-4.1-mini": (0.4, 1.6),
        "gpt-4.1": (2.0, 8.0),
        "replay": (0.0, 0.0),
    }
    return {name: ModelPrice(input_usd_per_mtok=i, output_usd_per_mtok=o) for name, (i, o) in prices.items()}


class Rates(BaseModel):
    """Prices of compute and tokens. The Modal ones are its published Sandbox list prices (docs/modal.md, "Cost")."""

    model_config = ConfigDict(extra="forbid")

    local_cpu_second_usd: float = Field(default=0.00001, ge=0)
    """Nominal price of one core-second on the head node (≈ $0.036 a core-hour), so local builds
    have a budget too; set it to what your machines cost."""
    modal_cpu_second_usd: float = Field(default=0.00003942, ge=0)
    """Modal's Sandbox list price of one physical core (2 vCPU) for one second (≈ $0.142 a core-hour),
    three times its Function rate; docs/modal.md ("Cost") says where it comes from and when. Set yours
    if your Modal contract differs."""
    modal_gib_second_usd: float = Field(default=0.00000667, ge=0)
    """Modal's Sandbox list price of one GiB of memory for one second (≈ $0.024 a GiB-hour)."""
    models: dict[str, ModelPrice] = Field(default_factory=_default_models)
    """Token prices by model id; a dated id (``claude-sonnet-4-5-20250929``) matches its longest prefix."""
    unknown_model: ModelPrice = ModelPrice(input_usd_per_mtok=3.0, output_usd_per_mtok=15.0)
    """Price of a model missing from ``models`` whose provider reported no cost: mid-tier, never free."""

    def compute_cost(self, backend: str, seconds: float, *, cpu: float = 1.0, memory_gib: float = 1.0) -> float:
        """Dollars for ``seconds`` of a sandbox with ``cpu`` cores and ``memory_gib`` GiB on ``backend``."""
        if backend == "modal":
            return seconds * (cpu * self.modal_cpu_second_usd + memory_gib * self.modal_gib_second_usd)
        return seconds * cpu * self.local_cpu_second_usd  # local and fake sandboxes run on our own cores

    def model_price(self, model: str) -> ModelPrice | None:
        """The price of ``model``: an exact id, else the longest known prefix, else ``None``."""
        if model in self.models:
            return self.models[model]
        matches = [name for name in self.models if model.startswith(name)]
        return self.models[max(matches, key=len)] if matches else None


class Budget(BaseModel):
    """A build's spending limit (stored as the session's ``budget_json``)."""

    model_config = ConfigDict(extra="forbid")

    max_usd: float | None = Field(default=None, gt=0)
    """Most the build may spend; ``None`` means no limit."""
    warn_fraction: float = Field(default=0.8, gt=0, lt=1)
    """Fraction of ``max_usd`` at which the user is warned once."""


class BudgetStatus(enum.StrEnum):
    OK = "ok"
    WARNING = "warning"
    """At or past the warning fraction: the build goes on, the user has been told."""
    EXHAUSTED = "exhausted"
    """At or past the limit: the build is paused until the budget is raised."""


class BudgetEvents(Protocol):
    """Where threshold events go (the build's event log); the same shape as ``TeamEvents.emit``."""

    async def emit(self, event: EventPayload) -> object: ...


class BudgetLedger:
    """The cost ledger of one build.

    Args:
        store: Where charges are recorded (``build_costs``) and the budget is persisted.
        session_id: The build.
        budget: Its limit; ``raise_budget`` changes it.
        rates: Prices; the defaults when ``None``.
        events: Receives ``budget.warning``, ``budget.exhausted`` and ``budget.raised``.

    The constructor does no I/O. The total spent is loaded from the store on first use, and
    thresholds already crossed then count as fired, so a restarted coordinator does not warn
    the user a second time.
    """

    def __init__(
        self,
        store: Store,
        session_id: str,
        budget: Budget | None = None,
        *,
        rates: Rates | None = None,
        events: BudgetEvents | None = None,
    ) -> None:
        self.store = store
        self.session_id = session_id
        self.budget = budget or Budget()
        self.rates = rates or Rates()
        self.events = events
        self._spent: float | None = None
        self._warned = False
        self._exhausted = False
        self._unpriced_models: set[str] = set()

    # --- charges -----------------------------------------------------------------------

    async def record_compute(
        self, slot: str, seconds: float, backend: str, *, cpu: float = 1.0, memory_gib: float = 1.0
    ) -> CostEntry:
        """Charge ``seconds`` of a slot's sandbox on ``backend``.

        The entry's source is ``compute:{backend}:{slot}``; a Modal one ends in
        ``;basis=``:data:`MODAL_COMPUTE_BASIS`, since Modal reports no cost of its own to check it against.

        Returns:
            The recorded cost entry.

        Raises:
            InvalidInputError: ``seconds``, ``cpu`` or ``memory_gib`` is negative.
        """
        if seconds < 0 or cpu < 0 or memory_gib < 0:
            raise InvalidInputError("compute seconds, cpu and memory must not be negative", field="seconds")
        cost = self.rates.compute_cost(backend, seconds, cpu=cpu, memory_gib=memory_gib)
        source = f"compute:{backend}:{slot}"
        if backend == "modal":
            source += f";basis={MODAL_COMPUTE_BASIS}"
        return await self._charge(source=source, cost=cost, compute_seconds=seconds)

    async def record_llm(self, role: str, model: str, usage: Usage) -> CostEntry:
        """Charge one LLM turn of ``role``.

        Pricing order: this ledger's price for ``model``; else the cost the provider computed
        (``usage.cost_usd``, from its own configured prices); else ``Rates.unknown_model``.
        """
        price = self.rates.model_price(model)
        if price is not None:
            cost = (
                usage.input_tokens * price.input_usd_per_mtok + usage.output_tokens * price.output_usd_per_mtok
            ) / 1_000_000
        elif usage.cost_usd > 0:
            cost = usage.cost_usd
        else:
            if model not in self._unpriced_models:
                self._unpriced_models.add(model)
                logger.warning("no price for model %r; charging it as Rates.unknown_model", model)
            fallback = self.rates.unknown_model
            cost = (
                usage.input_tokens * fallback.input_usd_per_mtok + usage.output_tokens * fallback.output_usd_per_mtok
            ) / 1_000_000
        return await self._charge(source=f"llm:{model}:{role}", cost=cost, llm_tokens=usage.total_tokens)

    async def _charge(
        self, *, source: str, cost: float, compute_seconds: float = 0.0, llm_tokens: int = 0
    ) -> CostEntry:
        spent = self.spent()
        entry = self.store.add_cost(
            self.session_id,
            source=source,
            estimated_cost=cost,
            compute_seconds=compute_seconds,
            llm_tokens=llm_tokens,
        )
        self._spent = spent + cost
        await self._fire_thresholds()
        return entry

    # --- state -------------------------------------------------------------------------

    def spent(self) -> float:
        """Dollars charged to the build so far."""
        if self._spent is None:
            self._spent = self.store.cost_totals(self.session_id).estimated_cost
            self._warned, self._exhausted = self._crossed()
        return self._spent

    def status(self) -> BudgetStatus:
        """``exhausted`` at or past the limit, ``warning`` at or past the warning fraction, else ``ok``."""
        warned, exhausted = self._crossed()
        if exhausted:
            return BudgetStatus.EXHAUSTED
        return BudgetStatus.WARNING if warned else BudgetStatus.OK

    def remaining(self) -> float | None:
        """Dollars left before the limit (never negative), or ``None`` without a limit."""
        if self.budget.max_usd is None:
            return None
        return max(0.0, self.budget.max_usd - self.spent())

    def ensure_available(self) -> None:
        """Refuse new work once the budget is spent: the caller pauses instead of starting it.

        Raises:
            BudgetExceededError: The budget is exhausted.
        """
        if self.status() is BudgetStatus.EXHAUSTED:
            raise BudgetExceededError(
                f"build {self.session_id} spent ${self.spent():.4f} of its ${self.budget.max_usd:.4f} budget"
            )

    async def raise_budget(self, new_budget: float | Budget) -> BudgetStatus:
        """Change the limit (the user added budget), persist it, and re-arm thresholds.

        A threshold the new limit puts back above the amount spent is re-armed, so it fires
        again when crossed later; one still below the amount spent stays fired (the user
        already knows). ``budget.raised`` tells the coordinator it may resume a paused build.

        Args:
            new_budget: A new ``max_usd``, or a whole :class:`Budget`.

        Returns:
            The status under the new limit.

        Raises:
            InvalidInputError: The new limit is not a positive number.
        """
        if isinstance(new_budget, Budget):
            budget = new_budget
        else:
            try:
                budget = Budget(max_usd=new_budget, warn_fraction=self.budget.warn_fraction)
            except ValidationError as exc:
                raise InvalidInputError(f"invalid budget {new_budget!r}: {exc}", field="max_usd") from exc
        self.spent()  # load before changing the limit, so "already fired" refers to the old one
        previous = self.budget
        self.store.update_session(self.session_id, budget=budget.model_dump())
        self.budget = budget
        warned, exhausted = self._crossed()
        self._warned = self._warned and warned
        self._exhausted = self._exhausted and exhausted
        status = self.status()
        await self._emit(
            BudgetRaised(
                previous_usd=previous.max_usd,
                budget_usd=budget.max_usd,
                status=status.value,
                spent_usd=round(self.spent(), 6),
            )
        )
        await self._fire_thresholds()  # a lowered limit may cross a threshold at once
        return status

    # --- thresholds --------------------------------------------------------------------

    def _crossed(self) -> tuple[bool, bool]:
        limit = self.budget.max_usd
        if limit is None:
            return False, False
        spent = self._spent or 0.0
        return spent >= limit * self.budget.warn_fraction - _EPSILON, spent >= limit - _EPSILON

    async def _fire_thresholds(self) -> None:
        # Flags flip before the await, so concurrent charges crossing together fire once.
        warned, exhausted = self._crossed()
        if warned and not self._warned:
            self._warned = True
            warning = BudgetWarning(
                spent_usd=round(self.spent(), 6), budget_usd=self.budget.max_usd, fraction=self.budget.warn_fraction
            )
            if not await self._emit(warning):
                self._warned = False  # not delivered: the next charge tries again
        if exhausted and not self._exhausted:
            self._exhausted = True
            spent = round(self.spent(), 6)
            if not await self._emit(BudgetExhausted(spent_usd=spent, budget_usd=self.budget.max_usd, action="pause")):
                self._exhausted = False

    async def _emit(self, event: RunEvent) -> bool:
        if self.events is None:
            return True
        try:
            await self.events.emit(event.for_build(self.session_id))
        except Exception:
            logger.exception("budget event %s of build %s not delivered", event.kind, self.session_id)
            return False
        return True


def budget_status(budget: dict[str, Any] | None, spent_usd: float) -> BudgetStatus:
    """The ledger's status from a stored budget and what was spent (for readers without a ledger)."""
    settings = Budget.model_validate(budget or {})
    if settings.max_usd is None:
        return BudgetStatus.OK
    if spent_usd >= settings.max_usd - _EPSILON:
        return BudgetStatus.EXHAUSTED
    if spent_usd >= settings.max_usd * settings.warn_fraction - _EPSILON:
        return BudgetStatus.WARNING
    return BudgetStatus.OK
