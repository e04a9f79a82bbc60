"""``kriptik notify set|show|clear``: a user's ghost-mode webhook defaults, through ``/api/notify``.

Builds that bring no ``notify`` of their own (``kriptik build --notify URL``) tell their owner
through these. The secret can come from ``KRIPTIK_NOTIFY_SECRET`` rather than the command line
(where other users of the host could see it in the process list); it is never shown back.
``kriptik build --notify URL`` (``serve/cli_commands.py``) sets one build's webhook.
"""

from __future__ import annotations

from typing import Any

import typer

from serve.cli_commands import NOTIFY_EVENTS_HELP, NOTIFY_SECRET_ENV, call, console, notify_body

_EVENTS = typer.Option(None, "--event", help=NOTIFY_EVENTS_HELP)


def register_notify(app: typer.Typer) -> None:
    """Add ``kriptik notify`` to the ``kriptik`` app."""
    notify_app = typer.Typer(help="Ghost mode: the webhook your builds notify when they end, pause or need you.")
    app.add_typer(notify_app, name="notify")

    @notify_app.command("set")
    def notify_set(
        url: str = typer.Argument(..., help="The webhook (http or https) that receives one JSON POST per event."),
        secret: str = typer.Option(
            None,
            "--secret",
            envvar=NOTIFY_SECRET_ENV,
            help=f"Signing key of X-Kriptik-Signature (or {NOTIFY_SECRET_ENV}).",
        ),
        events: list[str] = _EVENTS,
    ) -> None:
        """Set the webhook of your builds that bring no --notify of their own."""
        _show(call("PUT", "/api/notify", json=notify_body(url, secret, events)))

    @notify_app.command("show")
    def notify_show() -> None:
        """Show your webhook defaults (never the secret)."""
        _show(call("GET", "/api/notify"))

    @notify_app.command("clear")
    def notify_clear() -> None:
        """Drop your webhook defaults: builds without --notify then send nothing."""
        call("DELETE", "/api/notify")
        console.print("notification defaults cleared: builds without --notify send nothing")


def _show(view: dict[str, Any]) -> None:
    if not view.get("url"):
        console.print("no notification defaults (builds without --notify send nothing)")
        return
    signed = "signed" if view.get("secret_set") else "unsigned"
    console.print(f"webhook {view['url']} ({signed}) for {', '.join(view.get('events', []))}")
