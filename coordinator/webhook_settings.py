"""Users' ghost-mode webhooks: each user's defaults, and the webhook each build is told through.

Control (``coordinator/control.py``) owns one :class:`WebhookSettings`. A build that brings its own
``notify`` is told through it; one that does not, through its owner's defaults
(``PUT /api/notify``); a user without either is sent nothing. Every destination is checked
here, when it is given (:func:`coordinator.webhooks.check_url`, under the operator's allowance), and
again by the sender on what its host resolves to. The result is a ``WebhookConfig`` saved in the
build's coordinator config, so a revived coordinator keeps notifying the same way.

Users are kept apart: every call names the user, and nothing here returns a secret.
"""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter

from coordinator.api_models import NotifySettings, NotifyView
from coordinator.build.notify import WebhookConfig
from coordinator.store.store import Store
from coordinator.webhooks import NotifyEvent, WebhookTargetError, check_url

_EVENTS = TypeAdapter(list[NotifyEvent])


class WebhookSettings:
    """Where each user's builds send their notifications.

    Args:
        store: Where users' defaults are kept.
        allow_private: The operator's allowance of loopback, private and link-local destinations.
    """

    def __init__(self, store: Store, *, allow_private: bool) -> None:
        self.store = store
        self.allow_private = allow_private

    def set_defaults(self, user_id: str, settings: NotifySettings) -> NotifyView:
        """Make ``settings`` the webhook of the user's builds that bring none of their own.

        Raises:
            WebhookTargetError: The destination is refused (a 422).
        """
        check_url(settings.url, allow_private=self.allow_private)
        secret = settings.secret.get_secret_value() if settings.secret is not None else None
        self.store.set_notify_defaults(user_id, settings.url, secret, list(settings.events))
        return self.defaults(user_id)

    def defaults(self, user_id: str) -> NotifyView:
        """The user's defaults, without the secret (an empty view when none are set)."""
        row = self.store.notify_defaults(user_id)
        if row is None:
            return NotifyView()
        return NotifyView(url=row.url, events=row.events, secret_set=row.secret is not None, updated_at=row.updated_at)

    def clear_defaults(self, user_id: str) -> None:
        """Drop the user's defaults (a no-op when none are set)."""
        self.store.clear_notify_defaults(user_id)

    def for_build(self, user_id: str, notify: NotifySettings | None) -> dict[str, Any] | None:
        """The ``WebhookConfig`` (as saved in the coordinator config) of a build ``user_id`` submits.

        Args:
            user_id: The build's owner.
            notify: The build's own settings; None: the owner's defaults.

        Returns:
            The config with its secret in clear (the coordinator signs with it), or None: nothing is sent.

        Raises:
            WebhookTargetError: The destination is refused (``notify.url``: the request's; ``url``: the
                defaults', which were allowed when set and are not now).
        """
        events: list[str]
        if notify is not None:
            url, events, secret_str = notify.url, list(notify.events), notify.secret
            check_url(url, allow_private=self.allow_private, field="notify.url")
        else:
            row = self.store.notify_defaults(user_id)
            if row is None:
                return None
            url, events, secret_str = row.url, row.events, row.secret
            try:  # allowed when set; the operator may have withdrawn the allowance since
                check_url(url, allow_private=self.allow_private)
            except WebhookTargetError as exc:
                raise WebhookTargetError(
                    f"{exc}; these are your notification defaults: change them with PUT /api/notify "
                    "(kriptik notify set) or clear them",
                    url=exc.url,
                    address=exc.address,
                    reason=exc.reason,
                ) from None
        secret = secret_str.get_secret_value() if secret_str is not None else None
        config = WebhookConfig.for_events(
            url, secret, _EVENTS.validate_python(events), allow_private=self.allow_private
        )
        data = config.model_dump(mode="json", exclude={"secret"})  # a JSON dump would mask the secret
        if secret is not None:
            data["secret"] = secret
        return data
