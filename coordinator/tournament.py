"""Tournament mode: 2–3 candidates build the same component differently; evidence decides.

A *strategy* says how a candidate differs (a prompt suffix for its agents, optionally a
model and a temperature). A :class:`Tournament` keeps which candidates are still alive and
runs *successive halving* over rounds: after each round of evidence scores (from
``coordinator.judge``), the clearly losing half is dropped — only when the gap to the kept
half exceeds a threshold, because a small gap is noise, and never the last candidate.
Dropped candidates are recorded, not killed: the caller (the BuildCoordinator actor)
snapshots each loser's sandbox, then terminates it, and records the snapshot here so a
restarted coordinator knows what is left to clean up.

This module imports nothing from ``coordinator.contracts``: the contract embeds
:class:`TournamentSettings`, not the other way round.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sandbox_agents.errors import InvalidInputError

logger = logging.getLogger(__name__)

STRATEGY_NAME = r"^[a-z][a-z0-9_-]{0,31}$"
"""Strategy names appear in slot ids (``frontend~minimal``), roles and sandbox tags."""


class CandidateStrategy(BaseModel):
    """How one candidate of a tournament builds its component differently from the others."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=STRATEGY_NAME)
    """Short name; the candidate's slot id is ``{component}~{name}``."""
    prompt_suffix: str = ""
    """Appended to every task's instructions for this candidate's agents."""
    model: str | None = None
    """Model override for this candidate's agents (``LLMRequest.model``); None keeps the provider's."""
    temperature: float | None = Field(default=None, ge=0, le=2)
    """Sampling temperature for this candidate's agents; None keeps the provider's."""


BUILTIN_STRATEGIES: dict[str, CandidateStrategy] = {
    s.name: s
    for s in (
        CandidateStrategy(
            name="minimal",
            prompt_suffix="Strategy: the smallest implementation that meets every acceptance criterion. "
            "No extra dependencies, no speculative features.",
            temperature=0.2,
        ),
        CandidateStrategy(
            name="polished",
            prompt_suffix="Strategy: a polished result. Clear structure, careful naming, good UX and styling, "
            "helpful error messages; still no features beyond the task.",
            temperature=0.5,
        ),
        CandidateStrategy(
            name="robust",
            prompt_suffix="Strategy: robustness first. Validate inputs, handle every error path, "
            "and add tests for edge cases.",
            temperature=0.3,
        ),
    )
}
"""Strategies a contract may name without defining them."""


class TournamentSettings(BaseModel):
    """Tournament settings of one component of the intent contract."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    candidates: int = Field(default=1, ge=1, le=3)
    """Candidates building the component (1: no tournament; the plan allows 2–3)."""
    strategies: tuple[str | CandidateStrategy, ...] = ()
    """One per candidate: built-in names or inline strategies; empty picks the first built-ins."""
    halving_threshold: float = Field(default=0.1, ge=0, le=1)
    """Least score gap (0..1) between the kept and the dropped half for a round to drop anyone."""

    @model_validator(mode="after")
    def _strategies_fit(self) -> TournamentSettings:
        resolve_strategies(self)  # refuses unknown names, duplicates and a wrong count
        return self


def resolve_strategies(settings: TournamentSettings) -> list[CandidateStrategy]:
    """The candidates' strategies, in order.

    Raises:
        InvalidInputError: A name is not built in, two strategies share a name, or there are not
            exactly ``candidates`` strategies (when any are given).
    """
    if not settings.strategies:
        return list(BUILTIN_STRATEGIES.values())[: settings.candidates] if settings.candidates > 1 else []
    out: list[CandidateStrategy] = []
    for item in settings.strategies:
        if isinstance(item, CandidateStrategy):
            out.append(item)
        elif item in BUILTIN_STRATEGIES:
            out.append(BUILTIN_STRATEGIES[item])
        else:
            known = ", ".join(sorted(BUILTIN_STRATEGIES))
            raise InvalidInputError(f"unknown strategy {item!r} (built-in: {known})", field="strategies")
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        raise InvalidInputError(f"duplicate strategy names {names}", field="strategies")
    if len(out) != settings.candidates:
        raise InvalidInputError(
            f"{settings.candidates} candidates but {len(out)} strategies {names}", field="strategies"
        )
    return out


class Elimination(BaseModel):
    """A candidate that left the tournament; the caller snapshots, then terminates its sandbox."""

    model_config = ConfigDict(extra="forbid")

    candidate: str
    round: int
    """The round that dropped it (-1: lost the final decision)."""
    score: float | None = None
    reason: str
    snapshot_id: str | None = None
    """Set by the caller once the loser's sandbox is snapshotted; then it may be terminated."""


class RoundResult(BaseModel):
    """What one round of successive halving decided."""

    model_config = ConfigDict(extra="forbid")

    round: int
    kept: list[str]
    dropped: list[str]
    gap: float
    """Worst kept score minus best dropped score (0 when fewer than two candidates were alive)."""


class Tournament(BaseModel):
    """The state of one component's tournament; serialisable, so a restarted coordinator resumes it."""

    model_config = ConfigDict(extra="forbid")

    component: str
    alive: list[str] = Field(min_length=1)
    """Candidates (slot ids) still competing."""
    threshold: float = Field(default=0.1, ge=0, le=1)
    rounds: int = 0
    winner: str | None = None
    eliminated: list[Elimination] = Field(default_factory=list)

    def record_round(self, scores: Mapping[str, float]) -> RoundResult:
        """Drop the clearly losing half of the alive candidates, given this round's scores.

        With ``n`` alive, the ``n // 2`` lowest (ties broken by name) are dropped only when the
        worst kept score beats the best dropped score by more than the threshold; at least one
        candidate is always kept.

        Raises:
            InvalidInputError: A score is missing for an alive candidate, or is not finite.
        """
        missing = [c for c in self.alive if c not in scores]
        if missing:
            raise InvalidInputError(f"no score for candidates {missing}", field="scores")
        bad = [c for c in self.alive if not math.isfinite(scores[c])]
        if bad:
            raise InvalidInputError(f"scores of {bad} are not finite", field="scores")
        self.rounds += 1
        ranked = sorted(self.alive, key=lambda c: (-scores[c], c))
        if len(ranked) < 2 or self.winner is not None:
            return RoundResult(round=self.rounds, kept=ranked, dropped=[], gap=0.0)
        keep = len(ranked) - len(ranked) // 2
        kept, losers = ranked[:keep], ranked[keep:]
        gap = scores[kept[-1]] - scores[losers[0]]
        if gap <= self.threshold:
            logger.info("tournament %s round %d: gap %.3f within threshold; all stay", self.component, self.rounds, gap)
            return RoundResult(round=self.rounds, kept=ranked, dropped=[], gap=gap)
        for candidate in losers:
            self.eliminated.append(
                Elimination(
                    candidate=candidate,
                    round=self.rounds,
                    score=scores[candidate],
                    reason=f"behind the kept half by {gap:.3f} (> {self.threshold})",
                )
            )
        self.alive = kept
        logger.info("tournament %s round %d: dropped %s", self.component, self.rounds, losers)
        return RoundResult(round=self.rounds, kept=kept, dropped=losers, gap=gap)

    def finish(self, winner: str, scores: Mapping[str, float] | None = None) -> list[Elimination]:
        """End the tournament with ``winner`` (the judge's decision); the other alive candidates lose.

        Returns:
            The new eliminations.

        Raises:
            InvalidInputError: ``winner`` is not alive.
        """
        if winner not in self.alive:
            raise InvalidInputError(f"{winner!r} is not an alive candidate of {self.alive}", field="winner")
        scores = scores or {}
        new = [
            Elimination(candidate=c, round=-1, score=scores.get(c), reason=f"lost the final decision to {winner}")
            for c in self.alive
            if c != winner
        ]
        self.eliminated.extend(new)
        self.alive = [winner]
        self.winner = winner
        return new

    def pending_termination(self) -> list[str]:
        """Losers whose sandbox has not been snapshotted yet (still to snapshot, then terminate)."""
        return [e.candidate for e in self.eliminated if e.snapshot_id is None]

    def record_snapshot(self, candidate: str, snapshot_id: str) -> None:
        """Note that a loser's sandbox was snapshotted (so it may be terminated).

        Raises:
            InvalidInputError: ``candidate`` was not eliminated.
        """
        for elimination in self.eliminated:
            if elimination.candidate == candidate:
                elimination.snapshot_id = snapshot_id
                return
        raise InvalidInputError(f"{candidate!r} was not eliminated", field="candidate")
