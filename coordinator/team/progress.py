"""A team run's progress lines: what the bus's ``progress`` channel carries about one component's work.

The SandboxTeam actor (``actors/team.py``) shows every event its
:class:`~coordinator.team.runner.TeamRunner` emits to a :class:`TaskProgress` and publishes the
:class:`~coordinator.bus.models.Progress` it answers: one when an attempt at a task starts, one when
the task ends (done, done after a re-plan, or blocked) and one for the component's check. ``phase``
is the task id, ``message`` one short line for a person (``task api-tests: check passed``),
``fraction`` the share of the run's tasks done. The build's run relays them into its event log as
``team.progress`` (:class:`~coordinator.build.adapters.BusProgress`).

Derived from the events rather than told by the runner, so the runner's event sequence stays its
one account of what happened, and a lost progress line never changes a team's run.
"""

from __future__ import annotations

from coordinator.bus.events import EventPayload, TaskBlocked, TaskDone, TaskRecovered, TaskStarted, TeamCheck
from coordinator.bus.models import Progress
from coordinator.team.models import ComponentWork

__all__ = ["CHECK_PHASE", "LINE_MAX", "TaskProgress"]

LINE_MAX = 200
"""Most characters of a progress line; a blocked task's reason is cut to fit."""

CHECK_PHASE = "check"
"""The ``phase`` of the component check's line."""

_STARTED = {0: "running", 1: "running again after a failure", 2: "handed off to {agent}"}
"""What a task's line says when an attempt starts, by escalation level."""


class TaskProgress:
    """The progress lines of one team run, from the events the run emits.

    Args:
        work: The run's component and tasks (a fix run has its one fix task).
        slot: The plan's slot the team works in (its sandbox's id within the build).
    """

    def __init__(self, work: ComponentWork, slot: str = "") -> None:
        self.work = work
        self.slot = slot
        self._checked = {t.id: bool(t.check_command) for t in work.tasks}
        self.done: set[str] = set()
        """The run's own tasks done so far (a re-plan's replacement tasks are not counted: their task is)."""

    @property
    def fraction(self) -> float:
        """Tasks of the run done so far, as a share of all of them."""
        return len(self.done) / len(self._checked)

    def observe(self, event: EventPayload) -> Progress | None:
        """The progress line an event of the run makes, or None when it makes none."""
        if isinstance(event, TaskStarted):
            return self._line(event.task, _STARTED.get(event.level, "running").format(agent=event.agent))
        if isinstance(event, TaskDone):
            if event.task in self._checked:
                self.done.add(event.task)
            return self._line(event.task, "check passed" if self._checked.get(event.task) else "done")
        if isinstance(event, TaskRecovered):
            if event.task in self.done:
                return None  # its task.done said so already (a retry or a hand-off got it done)
            self.done.add(event.task)
            return self._line(event.task, "done after a re-plan")
        if isinstance(event, TaskBlocked):
            reason = next(iter(event.reason.strip().splitlines()), "")
            return self._line(event.task, f"blocked: {reason}")
        if isinstance(event, TeamCheck):
            if not self.work.check_command:
                return self._progress(CHECK_PHASE, "every task done; no component check")
            return self._progress(CHECK_PHASE, f"component check {'passed' if event.ok else 'failed'}")
        return None

    def _line(self, task: str, status: str) -> Progress:
        return self._progress(task, f"task {task}: {status}")

    def _progress(self, phase: str, text: str) -> Progress:
        text = text if len(text) <= LINE_MAX else text[: LINE_MAX - 1] + "…"
        return Progress(
            phase=phase, message=text, fraction=self.fraction, component=self.work.component, slot=self.slot
        )
