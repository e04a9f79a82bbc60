"""Where a ghost-mode webhook may point (coordinator/webhooks.py): every refused class, IPv4 and IPv6, at
request time on the URL and at send time on what a stub resolver answers; and the users' settings
(coordinator/webhook_settings.py): defaults per user, a build's own settings, secrets kept out of views.

No test resolves a real name or opens a connection.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from coordinator.api_models import BuildRequest, NotifySettings
from coordinator.build.notify import WebhookConfig
from coordinator.store.store import Store
from coordinator.webhook_settings import WebhookSettings
from coordinator.webhooks import DEFAULT_EVENTS, WebhookTargetError, check_url, resolve_checked

REFUSED = [
    ("127.0.0.1", "loopback"),
    ("127.8.9.10", "loopback"),
    ("::1", "loopback"),
    ("0.0.0.0", "unspecified"),
    ("::", "unspecified"),
    ("10.1.2.3", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.254", "private"),
    ("192.168.1.1", "private"),
    ("100.64.0.1", "CGNAT"),
    ("100.127.255.254", "CGNAT"),
    ("fc00::1", "unique local"),
    ("fd12:3456::1", "unique local"),
    ("169.254.169.254", "metadata"),
    ("169.254.1.1", "link-local"),
    ("fe80::1", "link-local"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("ff02::1", "multicast"),
    ("ff0e::1", "multicast"),
    ("255.255.255.255", "private"),
    ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
    ("::ffff:169.254.169.254", "metadata"),
    ("2002:a00:1::", "private"),  # 6to4 of 10.0.0.1
    ("64:ff9b::7f00:1", "loopback"),  # NAT64 of 127.0.0.1
]
PUBLIC = ["93.184.215.14", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"]


def _url(address: str) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"https://{host}:8443/hook"


@pytest.mark.parametrize(("address", "reason"), REFUSED)
def test_an_internal_ip_literal_is_refused_when_given(address: str, reason: str) -> None:
    with pytest.raises(WebhookTargetError, match=reason) as refused:
        check_url(_url(address), allow_private=False)
    assert (
        refused.value.field == "url" and refused.value.reason and "KRIPTIK_WEBHOOK_ALLOW_PRIVATE" in str(refused.value)
    )


@pytest.mark.parametrize("address", PUBLIC)
def test_a_public_ip_literal_is_accepted(address: str) -> None:
    assert check_url(_url(address), allow_private=False) == _url(address)


@pytest.mark.parametrize(
    "url", ["http://localhost:8080/x", "https://api.localhost/x", "http://LOCALHOST/x", "http://localhost./x"]
)
def test_localhost_names_are_loopback_without_resolving(url: str) -> None:
    with pytest.raises(WebhookTargetError, match="loopback"):
        check_url(url, allow_private=False)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("file:///etc/passwd", "http:// or https://"),
        ("ftp://hooks.example.com/x", "http:// or https://"),
        ("gopher://127.0.0.1:6379/_PING", "http:// or https://"),
        ("https:///no-host", "names no host"),
        ("https://hooks.example.com:99999/x", "not a valid URL"),
        ("https://hooks.example.com/" + "x" * 2100, "longer than"),
    ],
)
def test_a_malformed_url_is_refused_even_with_the_allowance(url: str, why: str) -> None:
    with pytest.raises(WebhookTargetError, match=why):
        check_url(url, allow_private=True)


def test_the_allowance_lets_internal_literals_through() -> None:
    for address, _ in REFUSED:
        assert check_url(_url(address), allow_private=True)


def test_a_name_is_left_to_the_send_time_check() -> None:
    assert check_url("https://hooks.example.com/x", allow_private=False) == "https://hooks.example.com/x"


# --- send time: what the name resolves to ---------------------------------------------------------


def _resolver(*answer: str):  # type: ignore[no-untyped-def]
    asked: list[tuple[str, int]] = []

    async def resolve(host: str, port: int) -> list[str]:
        asked.append((host, port))
        return list(answer)

    resolve.asked = asked  # type: ignore[attr-defined]
    return resolve


@pytest.mark.parametrize(("address", "reason"), REFUSED)
async def test_a_name_resolving_to_an_internal_address_is_refused(address: str, reason: str) -> None:
    with pytest.raises(WebhookTargetError, match=reason) as refused:
        await resolve_checked("hooks.example.com", 443, resolver=_resolver(address), allow_private=False)
    assert refused.value.address == address and "hooks.example.com resolves to it" in str(refused.value)


async def test_every_address_of_the_answer_is_checked_and_the_first_is_used() -> None:
    with pytest.raises(WebhookTargetError, match="10.9.9.9"):
        await resolve_checked(
            "hooks.example.com", 443, resolver=_resolver("93.184.215.14", "10.9.9.9"), allow_private=False
        )
    resolver = _resolver("2606:4700:4700::1111", "93.184.215.14")
    assert await resolve_checked("hooks.example.com", 443, resolver=resolver, allow_private=False) == (
        "2606:4700:4700::1111"
    )
    assert resolver.asked == [("hooks.example.com", 443)]  # type: ignore[attr-defined]


async def test_an_ip_literal_is_not_resolved_and_an_empty_answer_is_an_error() -> None:
    resolver = _resolver("10.0.0.1")
    assert await resolve_checked("8.8.8.8", 443, resolver=resolver, allow_private=False) == "8.8.8.8"
    assert resolver.asked == []  # type: ignore[attr-defined]
    with pytest.raises(OSError, match="no address"):
        await resolve_checked("hooks.example.com", 443, resolver=_resolver(), allow_private=False)


async def test_the_allowance_skips_the_address_check_at_send_time() -> None:
    resolver = _resolver("127.0.0.1")
    assert await resolve_checked("receiver.test", 80, resolver=resolver, allow_private=True) == "127.0.0.1"


# --- the request model --------------------------------------------------------------------------


def test_notify_settings_default_to_the_terminal_events_and_the_budget() -> None:
    settings = NotifySettings(url="https://hooks.example.com/x")
    assert settings.events == sorted(DEFAULT_EVENTS) and "blocked" not in settings.events
    assert NotifySettings(url="https://h.example/x", events=["blocked", "failed", "blocked"]).events == [
        "blocked",
        "failed",
    ]
    with pytest.raises(ValidationError):
        NotifySettings(url="https://h.example/x", events=["needs_a_nap"])
    with pytest.raises(ValidationError):
        NotifySettings(url="https://h.example/x", events=[])


def test_a_build_requests_secret_never_shows_in_its_dumps() -> None:
    request = BuildRequest(example="hello-calc", notify={"url": "https://h.example/x", "secret": "s3cret"})
    assert request.notify is not None and request.notify.secret is not None
    assert request.notify.secret.get_secret_value() == "s3cret"
    assert "s3cret" not in request.model_dump_json() and "s3cret" not in repr(request)


def test_a_build_request_refuses_a_non_http_notify_url() -> None:
    with pytest.raises(ValidationError, match="http:// or https://"):
        BuildRequest(example="hello-calc", notify={"url": "ftp://h.example/x"})


# --- users' settings -----------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "store.db") as s:
        yield s


def test_defaults_are_per_user_and_never_show_the_secret(store: Store) -> None:
    webhooks = WebhookSettings(store, allow_private=False)
    view = webhooks.set_defaults("alice", NotifySettings(url="https://a.example/hook", secret="s3cret"))
    assert view.url == "https://a.example/hook" and view.secret_set and "s3cret" not in view.model_dump_json()
    assert webhooks.defaults("bob").url is None
    assert webhooks.for_build("bob", None) is None  # bob set nothing: bob's builds send nothing
    webhooks.set_defaults("alice", NotifySettings(url="https://a.example/v2", events=["failed"]))
    replaced = webhooks.defaults("alice")
    assert replaced.url == "https://a.example/v2" and replaced.events == ["failed"] and not replaced.secret_set
    webhooks.clear_defaults("alice")
    webhooks.clear_defaults("alice")  # idempotent
    assert webhooks.defaults("alice").url is None and store.notify_defaults("alice") is None


def test_a_build_without_notify_takes_its_owners_defaults_and_its_own_wins(store: Store) -> None:
    webhooks = WebhookSettings(store, allow_private=False)
    webhooks.set_defaults("alice", NotifySettings(url="https://a.example/hook", secret="s3cret", events=["failed"]))
    inherited = webhooks.for_build("alice", None)
    assert inherited is not None
    config = WebhookConfig.model_validate(inherited)  # what the coordinator reads back
    assert config.url == "https://a.example/hook" and config.kinds == {"build.failed"}
    assert config.secret is not None and config.secret.get_secret_value() == "s3cret" and not config.allow_private
    own = webhooks.for_build("alice", NotifySettings(url="https://own.example/x"))
    assert own is not None and own["url"] == "https://own.example/x" and "secret" not in own
    assert set(own["kinds"]) == {"build.completed", "build.failed", "build.paused", "build.budget_warning"}


def test_a_loopback_webhook_is_refused_with_the_field_to_fix(store: Store) -> None:
    webhooks = WebhookSettings(store, allow_private=False)
    with pytest.raises(WebhookTargetError, match="loopback") as refused:
        webhooks.for_build("alice", NotifySettings(url="http://127.0.0.1:9000/hook"))
    assert refused.value.field == "notify.url"
    with pytest.raises(WebhookTargetError, match="link-local") as refused:
        webhooks.set_defaults("alice", NotifySettings(url="http://[fe80::1]/hook"))
    assert refused.value.field == "url" and store.notify_defaults("alice") is None


def test_defaults_set_under_the_allowance_are_refused_once_it_is_withdrawn(store: Store) -> None:
    WebhookSettings(store, allow_private=True).set_defaults("alice", NotifySettings(url="http://10.0.0.5/hook"))
    allowed = WebhookSettings(store, allow_private=True).for_build("alice", None)
    assert allowed is not None and allowed["allow_private"] is True
    with pytest.raises(WebhookTargetError, match="your notification defaults"):
        WebhookSettings(store, allow_private=False).for_build("alice", None)


def test_the_fleet_wide_coordinator_config_may_not_set_a_webhook() -> None:
    from actors.control import ControlConfig

    with pytest.raises(ValueError, match="notify or the user's defaults"):
        ControlConfig(redis_url="redis://x", coordinator={"webhook": {"url": "https://ops.example/hook"}})
    assert ControlConfig(redis_url="redis://x").webhook_allow_private is False
