"""Notifications about a build that is still running: its budget warning and its blocked components.

The run itself notifies when a build ends or pauses (``BuildRun._notify`` through
:class:`~coordinator.build.adapters.SessionNotifier`). What a user may also ask to hear about
happens while it runs, and is already an event of its log: ``budget.warning`` (from the budget
ledger) and ``slot.blocked`` (a team run ended with blocked tasks). :class:`NotifyingEvents` is
the events port the coordinator hands the run and the ledger: it appends every event to the log
as before and, for those two kinds, sends the notification the user asked for.

A notification is delivered in the background: retries with backoff must not hold the step that
emitted the event. The event reaches the log first; a notification never fails the emit.
"""

from __future__ import annotations

import asyncio
import logging

from coordinator.build.notify import Notification, NotificationKind, WebhookNotifier
from coordinator.build.ports import EventsPort
from coordinator.bus.events import BudgetWarning, EventPayload, SlotBlocked
from coordinator.store.store import Store

logger = logging.getLogger(__name__)

KIND_OF_EVENT: dict[str, NotificationKind] = {
    "budget.warning": "build.budget_warning",
    "slot.blocked": "build.blocked",
}
"""Events of a running build that notify, and the notification each sends."""


class NotifyingEvents:
    """An events port that also notifies the build's owner about the events in :data:`KIND_OF_EVENT`.

    Args:
        events: The build's event log (``BusEvents``).
        notifier: The build's webhook.
        store: Where the build's session (its status and owner) is read.
        build_id: The build.
    """

    def __init__(self, events: EventsPort, notifier: WebhookNotifier, store: Store, build_id: str) -> None:
        self.events = events
        self.notifier = notifier
        self.store = store
        self.build_id = build_id
        self._deliveries: set[asyncio.Task[None]] = set()

    async def emit(self, event: EventPayload) -> str | None:
        """Append ``event`` to the log; then start its notification if it is one the user asked for."""
        entry = await self.events.emit(event)
        kind = KIND_OF_EVENT.get(event.kind)
        if kind is not None and kind in self.notifier.config.kinds:
            task = asyncio.get_running_loop().create_task(self._deliver(kind, event))
            self._deliveries.add(task)  # held until done: the loop keeps only weak references
            task.add_done_callback(self._deliveries.discard)
        return entry

    async def _deliver(self, kind: NotificationKind, event: EventPayload) -> None:
        try:
            session = self.store.get_session(self.build_id)
            notification = Notification(
                kind=kind,
                build_id=self.build_id,
                status=session.status.value,
                summary=_summary(self.build_id, event),
                user_id=session.user_id,
                data=event.data,
                created_at=self.notifier.clock.now(),
            )
            await self.notifier.deliver(notification)
        except Exception:  # noqa: BLE001 - a notification never changes the build's course
            logger.warning("build %s: notification %s failed", self.build_id, kind, exc_info=True)


def _summary(build_id: str, event: EventPayload) -> str:
    if isinstance(event, BudgetWarning):
        limit = f" of ${event.budget_usd:.2f}" if event.budget_usd is not None else ""
        return f"build {build_id} has spent ${event.spent_usd:.2f}{limit} (past {event.fraction:.0%} of its budget)"
    if isinstance(event, SlotBlocked):
        tasks = "; ".join(f"{task}: {why[:200]}" for task, why in sorted(event.blocked.items())[:3])
        return f"build {build_id}: {event.slot} is blocked ({tasks})"
    return f"build {build_id}: {event.kind}"
