"""Scoring tournament candidates on evidence; an LLM's opinion is one small signal, never the decider.

Each candidate brings :class:`Evidence` gathered by checks that ran: the verification swarm's
score, the success criteria it passes, its tests, its build size and what it cost. The score
is a fixed weighted sum of terms in 0..1 (weights below, documented in ``docs/coordinator.md``):

=========  ======  ==========================================================================
term       weight  value
=========  ======  ==========================================================================
criteria   0.40    criteria passed / total (0 when there are none)
swarm      0.25    the verification swarm's score
tests      0.20    tests passed / total (0 when there are none: no tests is no evidence)
size       0.05    (smallest size + 1 KiB) / (own size + 1 KiB): smaller is better
budget     0.05    (cheapest spend + $0.01) / (own spend + $0.01): cheaper is better
llm        0.05    the LLM judge's score, only when every candidate has one
=========  ======  ==========================================================================

Without the LLM term the other weights are renormalised to sum to 1. Ties (scores equal to
1e-9) are broken by more criteria passed, then a higher swarm score, then name. Because the
LLM term weighs 0.05, it can only separate candidates whose evidence is within a few percent;
it never overturns a clear evidence gap.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from coordinator.bus.events import JudgeDecision
from sandbox_agents.errors import InvalidInputError, LLMError
from sandbox_agents.llm.base import AssistantTurn, LLMProvider, LLMRequest, Message, TurnKey
from sandbox_agents.llm.metered import LLMCharge, MeteredProvider, collector

logger = logging.getLogger(__name__)

WEIGHTS: dict[str, float] = {"criteria": 0.40, "swarm": 0.25, "tests": 0.20, "size": 0.05, "budget": 0.05, "llm": 0.05}
"""The fixed weights of the score's terms; they sum to 1."""
SIZE_SMOOTHING_BYTES = 1024
BUDGET_SMOOTHING_USD = 0.01
TIE_EPSILON = 1e-9


class Evidence(BaseModel):
    """What one candidate showed, from checks that ran."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    candidate: str = Field(min_length=1)
    """The candidate's slot id (``frontend~minimal``)."""
    swarm_score: float = Field(ge=0, le=1)
    criteria_passed: int = Field(default=0, ge=0)
    criteria_total: int = Field(default=0, ge=0)
    tests_passed: int = Field(default=0, ge=0)
    tests_total: int = Field(default=0, ge=0)
    build_size_bytes: int = Field(default=0, ge=0)
    budget_spent_usd: float = Field(default=0.0, ge=0)
    llm_signal: float | None = Field(default=None, ge=0, le=1)
    """An LLM judge's score, if one was asked; :func:`judge` fills it from its provider."""

    @model_validator(mode="after")
    def _counts(self) -> Evidence:
        if self.criteria_passed > self.criteria_total:
            raise ValueError(f"criteria_passed {self.criteria_passed} > criteria_total {self.criteria_total}")
        if self.tests_passed > self.tests_total:
            raise ValueError(f"tests_passed {self.tests_passed} > tests_total {self.tests_total}")
        return self

    @property
    def criteria_ratio(self) -> float:
        return self.criteria_passed / self.criteria_total if self.criteria_total else 0.0


class Term(BaseModel):
    """One term of a candidate's score."""

    model_config = ConfigDict(extra="forbid")

    value: float
    """The term in 0..1."""
    weight: float
    """Its weight after renormalisation."""
    contribution: float
    """``value * weight``."""


class RankedCandidate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    candidate: str
    score: float
    terms: dict[str, Term]
    llm_reasons: str = ""


class Decision(BaseModel):
    """The judge's verdict on one component's candidates."""

    model_config = ConfigDict(extra="forbid")

    component: str
    winner: str
    ranking: list[RankedCandidate]
    """Best first."""
    reasons: list[str]
    llm_used: bool = False
    usage: list[LLMCharge] = Field(default_factory=list)
    """What the LLM signal cost (for the build's ledger; empty without one)."""

    def scores(self) -> dict[str, float]:
        return {r.candidate: r.score for r in self.ranking}

    def to_event(self) -> JudgeDecision:
        """The decision as an event of the build's log (``judge.decision``)."""
        return JudgeDecision(**self.model_dump(mode="json"))


def score(candidates: Sequence[Evidence]) -> list[RankedCandidate]:
    """Score and rank candidates on their evidence alone (deterministic, best first).

    Raises:
        InvalidInputError: No candidates, or two share a name.
    """
    if not candidates:
        raise InvalidInputError("no candidates to judge", field="candidates")
    names = [c.candidate for c in candidates]
    if len(set(names)) != len(names):
        raise InvalidInputError(f"duplicate candidates in {names}", field="candidates")
    use_llm = all(c.llm_signal is not None for c in candidates)
    weights = {k: w for k, w in WEIGHTS.items() if use_llm or k != "llm"}
    total = sum(weights.values())
    weights = {k: w / total for k, w in weights.items()}
    smallest = min(c.build_size_bytes for c in candidates)
    cheapest = min(c.budget_spent_usd for c in candidates)
    ranked = []
    for c in candidates:
        values = {
            "criteria": c.criteria_ratio,
            "swarm": c.swarm_score,
            "tests": c.tests_passed / c.tests_total if c.tests_total else 0.0,
            "size": (smallest + SIZE_SMOOTHING_BYTES) / (c.build_size_bytes + SIZE_SMOOTHING_BYTES),
            "budget": (cheapest + BUDGET_SMOOTHING_USD) / (c.budget_spent_usd + BUDGET_SMOOTHING_USD),
            "llm": c.llm_signal or 0.0,
        }
        terms = {k: Term(value=values[k], weight=w, contribution=values[k] * w) for k, w in weights.items()}
        ranked.append(
            RankedCandidate(candidate=c.candidate, score=sum(t.contribution for t in terms.values()), terms=terms)
        )
    by_name = {c.candidate: c for c in candidates}

    def key(r: RankedCandidate) -> tuple[float, float, float, str]:
        ev = by_name[r.candidate]
        return (-round(r.score / TIE_EPSILON) * TIE_EPSILON, -ev.criteria_ratio, -ev.swarm_score, r.candidate)

    return sorted(ranked, key=key)


JUDGE_SYSTEM = """You judge competing implementations of one component of an app. You get each candidate's \
evidence (checks that ran). Answer only JSON: {"scores": {"<candidate>": {"score": <0..1>, "reasons": "<why>"}}}."""

_FENCE = re.compile(r"```(?:json)?\s*\n(.*?)```", re.DOTALL | re.IGNORECASE)
_SPANS = (re.compile(r"\{.*\}", re.DOTALL), re.compile(r"\[.*\]", re.DOTALL))


async def judge(
    candidates: Sequence[Evidence],
    provider: LLMProvider | None = None,
    *,
    component: str,
    context: str = "",
) -> Decision:
    """Pick the winner of a component's tournament.

    With a provider, one LLM turn (key ``(judge, judge:{component}, 0)``) adds each candidate's
    ``llm_signal``; if it fails or answers nonsense, the decision is made on evidence alone and
    the reasons say so.

    Args:
        candidates: Every candidate's evidence.
        provider: The optional LLM judge.
        component: The component the candidates build.
        context: Extra text for the LLM (e.g. the component's description and diff summaries).

    Raises:
        InvalidInputError: No candidates, or duplicates.
    """
    reasons: list[str] = []
    llm_reasons: dict[str, str] = {}
    usage, charge = collector()
    if provider is not None and candidates:
        try:
            reply = await MeteredProvider(provider, charge).complete(_judge_request(candidates, component, context))
            signals, llm_reasons = _parse_llm(reply, [c.candidate for c in candidates])
            candidates = [c.model_copy(update={"llm_signal": signals[c.candidate]}) for c in candidates]
        except (LLMError, InvalidInputError) as exc:
            logger.warning("judge %s: LLM signal unavailable: %s", component, exc)
            reasons.append(f"LLM signal unavailable ({type(exc).__name__}); judged on evidence alone")
    ranking = score(candidates)
    for r in ranking:
        r.llm_reasons = llm_reasons.get(r.candidate, "")
    best = ranking[0]
    use_llm = "llm" in best.terms
    reasons.insert(
        0, f"{best.candidate} scores {best.score:.3f} on evidence" + (" and the LLM signal" if use_llm else "")
    )
    if len(ranking) > 1:
        runner_up = ranking[1]
        top = sorted(best.terms, key=lambda k: best.terms[k].contribution - runner_up.terms[k].contribution)[-1]
        reasons.append(
            f"ahead of {runner_up.candidate} ({runner_up.score:.3f}) by {best.score - runner_up.score:.3f}, "
            f"most on {top}"
        )
    decision = Decision(
        component=component, winner=best.candidate, ranking=ranking, reasons=reasons, llm_used=use_llm, usage=usage
    )
    logger.info("judge %s: winner %s (%s)", component, decision.winner, "; ".join(reasons))
    return decision


def _judge_request(candidates: Sequence[Evidence], component: str, context: str) -> LLMRequest:
    evidence = [c.model_dump(mode="json", exclude={"llm_signal"}) for c in candidates]
    body = f"Component: {component}\n{context}\n\nCandidates' evidence:\n{json.dumps(evidence, indent=2)}"
    return LLMRequest(
        key=TurnKey(role="judge", task=f"judge:{component}", turn=0),
        system=JUDGE_SYSTEM,
        messages=[Message(role="user", content=body.strip())],
        max_tokens=2048,
    )


def _json_in(text: str) -> Any:
    """The first JSON value found in a fenced block, the whole text, or its outermost braces/brackets."""
    fenced = _FENCE.search(text)
    tries = [fenced.group(1)] if fenced else []
    tries += [text] + [m.group(0) for p in _SPANS if (m := p.search(text))]
    for attempt in tries:
        try:
            return json.loads(attempt)
        except json.JSONDecodeError:
            continue
    raise InvalidInputError("the judge's answer holds no JSON", field="llm")


def _parse_llm(reply: AssistantTurn, names: list[str]) -> tuple[dict[str, float], dict[str, str]]:
    """Per-candidate scores and reasons of the LLM's answer (JSON text, or any tool call's arguments).

    Raises:
        InvalidInputError: The answer is not JSON, misses a candidate, or has a score outside 0..1.
    """
    data: Any = reply.tool_calls[0].arguments if reply.tool_calls else _json_in(reply.text or "")
    raw = data.get("scores", data) if isinstance(data, dict) else data
    if isinstance(raw, list):  # [{"candidate": ..., "score": ..., "reasons": ...}]
        raw = {i.get("candidate"): i for i in raw if isinstance(i, dict)}
    if not isinstance(raw, dict):
        raise InvalidInputError("the judge's answer holds no scores", field="llm")
    signals: dict[str, float] = {}
    reasons: dict[str, str] = {}
    for name in names:
        item = raw.get(name)
        value = item.get("score") if isinstance(item, dict) else item
        if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 1:
            raise InvalidInputError(f"the judge gave no score in 0..1 for {name!r}", field="llm")
        signals[name] = float(value)
        reasons[name] = str(item.get("reasons", "")) if isinstance(item, dict) else ""
    return signals, reasons
