"""The HTTP layer over an in-memory Control double, a real Store (tokens) and no Ray.

SSE over a real bus is tested in tests/integration/test_serve.py.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from coordinator.resources import examples_dir
from coordinator.store.store import Store
from sandbox_agents.errors import BudgetExceededError, BuildNotFoundError
from serve.app import ApiSettings, create_app
from serve.auth import authenticate, create_token, hash_token
from serve.control_port import ControlPort, ControlUnavailableError, MemoryControl
from serve.limits import RateLimitedError, RateLimiter

CONTRACT = examples_dir() / "intents" / "hello-calc.yaml"
PNG = b"\x89PNG\r\n\x1a\n"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def no_bus() -> Any:
    raise AssertionError("the unit tests do not stream from a bus")


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "store.db").start()
    yield s
    s.close()


@pytest.fixture
def control() -> MemoryControl:
    return MemoryControl()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def app(control: MemoryControl, store: Store, clock: FakeClock) -> Any:
    settings = ApiSettings(max_body_bytes=4096)
    return create_app(control, no_bus, store, settings, limiter=RateLimiter(1.0, 1000, clock=clock))


@pytest.fixture
async def client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as c:
        yield c


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def alice(store: Store) -> dict[str, str]:
    return auth(create_token(store, "alice"))


@pytest.fixture
def bob(store: Store) -> dict[str, str]:
    return auth(create_token(store, "bob"))


async def submit(client: httpx.AsyncClient, headers: dict[str, str], **body: Any) -> str:
    r = await client.post("/api/builds", json=body or {"prompt": "a todo app"}, headers=headers)
    assert r.status_code == 202, r.text
    return r.json()["id"]


BUILD_ROUTES = [
    ("GET", "/api/build/status/{id}", None),
    ("GET", "/api/build/preview/{id}", None),
    ("POST", "/api/build/cancel/{id}", None),
    ("POST", "/api/build/resume/{id}", None),
    ("GET", "/api/build/stream/{id}", None),
    ("GET", "/api/build/sandboxes/{id}", None),
    ("GET", "/api/build/screenshots/{id}", None),
    ("GET", "/api/build/screenshots/{id}/shot-1800000000000.png", None),
    ("GET", "/api/build/budget/{id}", None),
    ("POST", "/api/build/budget/{id}", {"usd": 5}),
    ("POST", "/api/build/take-control/{id}", None),
    ("DELETE", "/api/builds/{id}", None),
]


# --- tokens ------------------------------------------------------------------------------


def test_tokens_are_stored_hashed_and_revocable(store: Store) -> None:
    token = create_token(store, "alice")
    assert token.startswith("kt_") and len(token) > 40
    row = store.find_api_token(hash_token(token))
    assert row is not None and row.token_hash != token and token not in row.token_hash
    assert authenticate(store, token).user_id == "alice"
    assert create_token(store, "alice") != token
    store.revoke_api_token(row.id)
    with pytest.raises(PermissionError):
        authenticate(store, token)


def test_rate_limiter_refills_with_the_clock(clock: FakeClock) -> None:
    limiter = RateLimiter(2.0, 2, clock=clock)
    limiter.acquire("t")
    limiter.acquire("t")
    with pytest.raises(RateLimitedError) as err:
        limiter.acquire("t")
    assert err.value.retry_after_s == pytest.approx(0.5)
    limiter.acquire("other")  # buckets are per key
    clock.now += 0.5
    limiter.acquire("t")


def test_memory_control_is_a_control_port() -> None:
    assert isinstance(MemoryControl(), ControlPort)


# --- auth and scoping ------------------------------------------------------------------------


async def test_health_needs_no_token_and_names_the_part_that_does_not_answer(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/health")
    assert r.status_code == 200
    health = r.json()  # these tests have a control plane (in memory) and no bus
    assert health["status"] == "degraded" and health["parts"]["control"] == "ok"
    assert "do not stream from a bus" in health["parts"]["redis"]


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer kt_nope"}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer "}],
    ids=["missing", "unknown", "basic", "empty"],
)
async def test_missing_or_wrong_token_is_401(client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    for method, path, body in [("GET", "/api/builds", None), ("POST", "/api/builds", {"prompt": "x"})] + [
        (m, p.format(id="b000001"), b) for m, p, b in BUILD_ROUTES
    ]:
        r = await client.request(method, path, json=body, headers=headers)
        assert r.status_code == 401, (method, path, r.text)
        assert r.headers["www-authenticate"] == "Bearer"
        assert r.json()["error"] == "unauthorized"


async def test_revoked_token_is_401(client: httpx.AsyncClient, store: Store) -> None:
    token = create_token(store, "carol")
    assert (await client.get("/api/builds", headers=auth(token))).status_code == 200
    store.revoke_api_token(store.find_api_token(hash_token(token)).id)
    assert (await client.get("/api/builds", headers=auth(token))).status_code == 401


async def test_another_users_build_is_404_on_every_route(
    client: httpx.AsyncClient, alice: dict[str, str], bob: dict[str, str]
) -> None:
    build = await submit(client, alice)
    for method, path, body in BUILD_ROUTES:
        r = await client.request(method, path.format(id=build), json=body, headers=bob)
        assert r.status_code == 404, (method, path, r.text)
        assert r.json()["error"] == "not_found"
        unknown = await client.request(method, path.format(id="b999999"), json=body, headers=alice)
        assert unknown.status_code == 404, (method, path)
    assert (await client.get("/api/builds", headers=bob)).json() == []
    assert [b["id"] for b in (await client.get("/api/builds", headers=alice)).json()] == [build]


# --- every route -----------------------------------------------------------------------------


async def test_build_lifecycle_routes(client: httpx.AsyncClient, alice: dict[str, str], control: MemoryControl) -> None:
    r = await client.post("/api/builds", json={"prompt": "a calculator\nwith memory", "budget_usd": 3}, headers=alice)
    assert r.status_code == 202
    created = r.json()
    build = created["id"]
    assert created["status_url"] == f"/api/build/status/{build}"
    assert created["stream_url"] == f"/api/build/stream/{build}"

    status = (await client.get(f"/api/build/status/{build}", headers=alice)).json()
    assert status["status"] == "queued" and status["user_id"] == "alice"
    assert status["budget"] == {
        "limit_usd": 3.0,
        "spent_usd": 0.0,
        "llm_tokens": 0,
        "compute_seconds": 0.0,
        "status": "ok",
        "warn_fraction": 0.8,
    }
    [summary] = (await client.get("/api/builds", headers=alice)).json()
    assert summary["title"] == "a calculator" and summary["status"] == "queued"

    assert (await client.get(f"/api/build/budget/{build}", headers=alice)).json()["limit_usd"] == 3.0
    raised = await client.post(f"/api/build/budget/{build}", json={"usd": 2.5}, headers=alice)
    assert raised.status_code == 200 and raised.json()["limit_usd"] == 5.5

    assert (await client.get(f"/api/build/preview/{build}", headers=alice)).json() == {"url": None, "components": {}}
    assert (await client.post(f"/api/build/take-control/{build}", headers=alice)).status_code == 422
    sandbox = {"id": "sbx-1", "slot": "api~0", "component": "api", "backend": "local", "status": "running",
               "agents": ["a0", "a1"], "swarm_score": 0.8}  # fmt: skip
    preview = {"url": "http://127.0.0.1:5173/", "components": {"api": "http://127.0.0.1:8001/"}}
    await control.set_status(build, status="running", phase="build", sandboxes=[sandbox], preview=preview)
    assert (await client.get(f"/api/build/sandboxes/{build}", headers=alice)).json() == [sandbox]
    assert (await client.get(f"/api/build/preview/{build}", headers=alice)).json() == preview
    taken = await client.post(f"/api/build/take-control/{build}", headers=alice)
    assert taken.json() == {"url": preview["url"]}

    await control.set_status(build, status="paused", budget={"limit_usd": 1.0, "spent_usd": 1.0, "status": "exhausted"})
    refused = await client.post(f"/api/build/resume/{build}", headers=alice)
    assert refused.status_code == 409 and refused.json()["error"] == "conflict"
    await client.post(f"/api/build/budget/{build}", json={"usd": 1}, headers=alice)
    assert (await client.post(f"/api/build/resume/{build}", headers=alice)).json()["status"] == "running"

    cancelled = await client.post(f"/api/build/cancel/{build}", headers=alice)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["finished_at"] is not None
    again = await client.post(f"/api/build/resume/{build}", headers=alice)
    assert again.status_code == 422 and again.json()["field"] == "build_id"


async def test_an_ended_build_is_deleted_and_a_running_one_is_a_409(
    client: httpx.AsyncClient, alice: dict[str, str], control: MemoryControl
) -> None:
    build = await submit(client, alice)
    refused = await client.delete(f"/api/builds/{build}", headers=alice)
    assert refused.status_code == 409 and "cancel it" in refused.json()["message"]
    await control.set_status(build, status="completed")
    deleted = await client.delete(f"/api/builds/{build}", headers=alice)
    assert deleted.status_code == 204 and deleted.content == b""
    assert (await client.get(f"/api/build/status/{build}", headers=alice)).status_code == 404
    assert (await client.delete(f"/api/builds/{build}", headers=alice)).status_code == 404
    assert (await client.get("/api/builds", headers=alice)).json() == []


async def test_screenshots_are_listed_newest_first_and_served_as_png(
    client: httpx.AsyncClient, alice: dict[str, str], bob: dict[str, str], control: MemoryControl
) -> None:
    build = await submit(client, alice)
    assert (await client.get(f"/api/build/screenshots/{build}", headers=alice)).json() == []
    await control.add_screenshot(build, "shot-1800000000000.png", PNG + b"old", tree="aaa")
    await control.add_screenshot(build, "shot-1800000060000.png", PNG + b"new", tree="bbb")
    listed = (await client.get(f"/api/build/screenshots/{build}", headers=alice)).json()
    assert [(s["name"], s["tree"], s["size"]) for s in listed] == [
        ("shot-1800000060000.png", "bbb", len(PNG) + 3),
        ("shot-1800000000000.png", "aaa", len(PNG) + 3),
    ]
    r = await client.get(f"/api/build/screenshots/{build}/shot-1800000000000.png", headers=alice)
    assert r.status_code == 200 and r.content == PNG + b"old"
    assert r.headers["content-type"] == "image/png" and r.headers["cache-control"].startswith("private")

    unknown = await client.get(f"/api/build/screenshots/{build}/shot-1700000000000.png", headers=alice)
    assert unknown.status_code == 404 and unknown.json()["error"] == "not_found"
    theirs = await client.get(f"/api/build/screenshots/{build}/shot-1800000000000.png", headers=bob)
    assert theirs.status_code == 404 and theirs.json()["error"] == "not_found"


@pytest.mark.parametrize(
    "name",
    ["latest.png", "shot-1.png", "shot-1800000000000.jpg", "..shot-1800000000000.png", "shot-1800000000000.png%00"],
)
async def test_a_bad_screenshot_name_is_422(client: httpx.AsyncClient, alice: dict[str, str], name: str) -> None:
    build = await submit(client, alice)
    r = await client.get(f"/api/build/screenshots/{build}/{name}", headers=alice)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "path.name"


async def test_submit_accepts_a_contract_or_an_example(client: httpx.AsyncClient, alice: dict[str, str]) -> None:
    import yaml

    contract = yaml.safe_load(CONTRACT.read_text())
    await submit(client, alice, contract=contract, build_mode="hybrid", priority=3)
    await submit(client, alice, example="hello-calc")
    r = await client.post("/api/builds", json={"example": "missing"}, headers=alice)
    assert r.status_code == 422 and r.json()["field"] == "example"


# --- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": "x", "colour": "red"}, "body.colour"),
        ({"prompt": "x", "prompt_typo": 1}, "body.prompt_typo"),
        ({}, "body"),
        ({"prompt": "x", "example": "hello-calc"}, "body"),
        ({"prompt": ""}, "body.prompt"),
        ({"prompt": "x", "build_mode": "cloud"}, "body.build_mode"),
        ({"prompt": "x", "budget_usd": -1}, "body.budget_usd"),
        ({"contract": {"name": "x"}}, "body.contract"),
        ({"example": "../etc/passwd"}, "body.example"),
        ([1, 2], "body"),
    ],
)
async def test_bad_submit_is_422_naming_the_field(
    client: httpx.AsyncClient, alice: dict[str, str], body: Any, field: str
) -> None:
    r = await client.post("/api/builds", json=body, headers=alice)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "invalid_input"
    assert r.json()["field"] == field, r.json()


async def test_malformed_json_is_422(client: httpx.AsyncClient, alice: dict[str, str]) -> None:
    headers = {**alice, "Content-Type": "application/json"}
    r = await client.post("/api/builds", content=b'{"prompt": "x",', headers=headers)
    assert r.status_code == 422 and r.json()["field"].startswith("body")


async def test_other_bad_input_is_422(client: httpx.AsyncClient, alice: dict[str, str]) -> None:
    build = await submit(client, alice)
    r = await client.post(f"/api/build/budget/{build}", json={"usd": 0}, headers=alice)
    assert r.status_code == 422 and r.json()["field"] == "body.usd"
    r = await client.post(f"/api/build/budget/{build}", json={"usd": 1, "more": True}, headers=alice)
    assert r.status_code == 422 and r.json()["field"] == "body.more"
    r = await client.get("/api/build/status/..%2Fx", headers=alice)
    assert r.status_code in (404, 422)
    r = await client.get("/api/build/status/-bad", headers=alice)
    assert r.status_code == 422 and r.json()["field"] == "path.build_id"
    r = await client.get(f"/api/build/stream/{build}", headers={**alice, "Last-Event-ID": "yesterday"})
    assert r.status_code == 422 and r.json()["field"] == "Last-Event-ID"


async def test_body_over_the_limit_is_413(client: httpx.AsyncClient, alice: dict[str, str]) -> None:
    big = json.dumps({"prompt": "x" * 10_000}).encode()
    r = await client.post("/api/builds", content=big, headers={**alice, "Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"] == "payload_too_large"

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        for i in range(0, len(big), 1000):
            yield big[i : i + 1000]

    r = await client.post("/api/builds", content=chunks(), headers={**alice, "Content-Type": "application/json"})
    assert r.status_code == 413
    small = json.dumps({"prompt": "small"}).encode()

    async def one() -> AsyncIterator[bytes]:
        yield small

    r = await client.post("/api/builds", content=one(), headers={**alice, "Content-Type": "application/json"})
    assert r.status_code == 202


async def test_rate_limit_is_429_with_retry_after(
    control: MemoryControl, store: Store, alice: dict[str, str], bob: dict[str, str], clock: FakeClock
) -> None:
    app = create_app(control, no_bus, store, ApiSettings(), limiter=RateLimiter(1.0, 5, clock=clock))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
        await check_rate_limit(client, alice, bob, clock)


async def check_rate_limit(
    client: httpx.AsyncClient, alice: dict[str, str], bob: dict[str, str], clock: FakeClock
) -> None:
    for _ in range(5):
        assert (await client.get("/api/builds", headers=alice)).status_code == 200
    r = await client.get("/api/builds", headers=alice)
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    assert r.json()["retry_after_s"] == pytest.approx(1.0)
    assert (await client.get("/api/builds", headers=bob)).status_code == 200  # per token
    clock.now += 1.0
    assert (await client.get("/api/builds", headers=alice)).status_code == 200


async def test_errors_of_the_control_map_to_statuses(store: Store, alice: dict[str, str]) -> None:
    class Broken(MemoryControl):
        def __init__(self, exc: Exception) -> None:
            super().__init__()
            self.exc = exc

        async def status(self, user_id: str, build_id: str) -> dict[str, Any]:
            raise self.exc

    cases = [
        (ControlUnavailableError("down"), 503),
        (BuildNotFoundError("gone"), 404),
        (BudgetExceededError("spent"), 409),
        (RuntimeError("a bug"), 500),
    ]
    for exc, code in cases:
        app = create_app(Broken(exc), no_bus, store, ApiSettings())
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as c:
            r = await c.get("/api/build/status/b1", headers=alice)
        assert r.status_code == code, (exc, r.text)
        assert "error" in r.json()
        if code == 503:
            assert r.headers["retry-after"] == "1"


async def test_unknown_route_and_method_are_json(client: httpx.AsyncClient, alice: dict[str, str]) -> None:
    r = await client.get("/api/nope", headers=alice)
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    r = await client.delete("/api/builds", headers=alice)
    assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"


async def test_web_ui_is_served(client: httpx.AsyncClient) -> None:
    r = await client.get("/")
    assert r.status_code in (302, 307) and r.headers["location"] == "/ui/"
    page = await client.get("/ui/")
    assert page.status_code == 200 and "KripTik Fleet" in page.text
    assert (await client.get("/ui/app.js")).status_code == 200


async def test_cors_is_off_unless_configured(control: MemoryControl, store: Store) -> None:
    preflight = {"Origin": "http://evil.example", "Access-Control-Request-Method": "GET"}
    for origins, allowed in [("", False), ("http://ui.example", False), ("http://evil.example", True)]:
        app = create_app(control, no_bus, store, ApiSettings(cors_origins=origins))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as c:
            r = await c.options("/api/builds", headers=preflight)
        assert ("access-control-allow-origin" in r.headers) is allowed, (origins, r.headers)


# --- ghost-mode notifications ----------------------------------------------------------------


async def test_notify_defaults_are_set_shown_without_the_secret_and_cleared(
    client: httpx.AsyncClient, alice: dict[str, str], bob: dict[str, str]
) -> None:
    assert (await client.get("/api/notify", headers=alice)).json()["url"] is None
    body = {"url": "https://hooks.example.com/k", "secret": "s3cret-value", "events": ["failed", "blocked"]}
    put = await client.put("/api/notify", json=body, headers=alice)
    assert put.status_code == 200, put.text
    shown = (await client.get("/api/notify", headers=alice)).json()
    for answer in (put, await client.get("/api/notify", headers=alice)):
        assert "s3cret-value" not in answer.text
    assert shown["url"] == body["url"] and shown["secret_set"] and shown["events"] == ["blocked", "failed"]
    assert (await client.get("/api/notify", headers=bob)).json()["url"] is None  # alice's are hers alone
    cleared = await client.delete("/api/notify", headers=alice)
    assert cleared.status_code == 200 and cleared.json()["url"] is None
    assert (await client.get("/api/notify", headers=alice)).json()["url"] is None
    assert (await client.delete("/api/notify", headers=alice)).status_code == 200  # idempotent


async def test_notify_routes_need_a_token(client: httpx.AsyncClient) -> None:
    for method in ("GET", "PUT", "DELETE"):
        r = await client.request(method, "/api/notify", json={"url": "https://hooks.example.com/k"})
        assert r.status_code == 401, method


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:9000/hook", "http://localhost/hook", "http://10.0.0.1/h", "http://169.254.169.254/latest",
     "http://[::1]:80/h", "http://[fd00::5]/h", "http://100.64.1.1/h"],
)  # fmt: skip
async def test_an_internal_webhook_is_refused_with_a_clear_422(
    client: httpx.AsyncClient, alice: dict[str, str], url: str
) -> None:
    put = await client.put("/api/notify", json={"url": url}, headers=alice)
    assert put.status_code == 422 and put.json()["field"] == "url", put.text
    assert "public addresses" in put.json()["message"] and "KRIPTIK_WEBHOOK_ALLOW_PRIVATE" in put.json()["message"]
    build = await client.post("/api/builds", json={"prompt": "a todo app", "notify": {"url": url}}, headers=alice)
    assert build.status_code == 422 and build.json()["field"] == "notify.url", build.text
    assert (await client.get("/api/builds", headers=alice)).json() == []


async def test_a_malformed_notify_is_422_naming_the_field(client: httpx.AsyncClient, alice: dict[str, str]) -> None:
    for notify, field in [
        ({"url": "ftp://hooks.example.com/x"}, "body.notify.url"),
        ({"url": "https://hooks.example.com/x", "events": ["needs_a_nap"]}, "body.notify.events.0"),
        ({"url": "https://hooks.example.com/x", "allow_private": True}, "body.notify.allow_private"),
    ]:
        r = await client.post("/api/builds", json={"prompt": "x", "notify": notify}, headers=alice)
        assert r.status_code == 422 and r.json()["field"] == field, r.text


async def test_a_build_may_bring_its_own_webhook(client: httpx.AsyncClient, alice: dict[str, str]) -> None:
    notify = {"url": "https://hooks.example.com/x", "secret": "s3cret-value"}
    r = await client.post("/api/builds", json={"prompt": "a todo app", "notify": notify}, headers=alice)
    assert r.status_code == 202 and "s3cret-value" not in r.text
    status = await client.get(r.json()["status_url"], headers=alice)
    assert status.status_code == 200 and "s3cret-value" not in status.text


async def test_the_operators_allowance_admits_internal_webhooks(store: Store, alice: dict[str, str]) -> None:
    control = MemoryControl(allow_private_webhooks=True)
    app = create_app(control, no_bus, store, ApiSettings(), limiter=RateLimiter(100.0, 100))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as c:
        r = await c.put("/api/notify", json={"url": "http://127.0.0.1:9000/hook"}, headers=alice)
        assert r.status_code == 200 and r.json()["url"] == "http://127.0.0.1:9000/hook"


# --- OpenAPI ---------------------------------------------------------------------------------


async def test_openapi_lists_every_route_and_model(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    paths = spec["paths"]
    expected = {
        ("post", "/api/builds"), ("get", "/api/builds"), ("get", "/api/health"), ("delete", "/api/builds/{build_id}"),
        ("get", "/api/build/status/{build_id}"), ("get", "/api/build/preview/{build_id}"),
        ("post", "/api/build/cancel/{build_id}"), ("post", "/api/build/resume/{build_id}"),
        ("get", "/api/build/stream/{build_id}"), ("get", "/api/build/sandboxes/{build_id}"),
        ("get", "/api/build/budget/{build_id}"), ("post", "/api/build/budget/{build_id}"),
        ("post", "/api/build/take-control/{build_id}"), ("get", "/api/build/screenshots/{build_id}"),
        ("get", "/api/build/screenshots/{build_id}/{name}"),
        ("get", "/api/notify"), ("put", "/api/notify"), ("delete", "/api/notify"),
        ("get", "/api/build/tree/{build_id}"), ("get", "/api/build/file/{build_id}"),
        ("get", "/api/build/diff/{build_id}/{commit}"),
    }  # fmt: skip
    assert {(m, p) for p, ops in paths.items() for m in ops} == expected
    models = set(spec["components"]["schemas"])
    for name in (
        "BuildRequest", "BuildStatus", "BuildSummary", "BudgetView", "BudgetRaise", "BuildCreated", "PreviewView",
        "SandboxView", "ScreenshotView", "TakeControlView", "Health", "ErrorBody", "ComponentView", "TournamentView",
        "MergeView", "NotifySettings", "NotifyView", "MainTreeView", "MainFileView", "MergeDiffView",
    ):  # fmt: skip
        assert name in models, name
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    assert (await client.get("/docs")).status_code == 200


# --- main's tree, files and merge diffs (the builder view) --------------------------------------


@pytest.fixture
async def merged_build(client: httpx.AsyncClient, alice: dict[str, str], control: MemoryControl, tmp_path: Path) -> Any:
    """Alice's build whose main holds two merges: the database's, then the api's (a text, a binary, a big file)."""
    from coordinator.merge.host_repo import HostGitRepo

    build = (await client.post("/api/builds", json={"prompt": "todo"}, headers=alice)).json()["id"]
    repo = HostGitRepo(tmp_path / "gates" / f"{build}.git")
    await repo.init()
    commits = []
    for component, files in (
        ("db", {"db/schema.sql": b"create table todos(id int);\n"}),
        ("api", {"api/server.py": b"print('hi')\n", "api/logo.png": PNG + b"\0\1", "api/big.txt": b"x" * 300_000}),
    ):
        await repo.stage(f"merge/{component}", files, [], f"merge {component}\n\nKriptik-Component: {component}")
        commits.append(await repo.accept(f"merge/{component}"))
    control.attach_main(build, str(repo.git_dir))
    return build, commits


async def test_main_tree_lists_every_file_with_its_component(
    client: httpx.AsyncClient, alice: dict[str, str], merged_build: Any
) -> None:
    build, commits = merged_build
    tree = (await client.get(f"/api/build/tree/{build}", headers=alice)).json()
    assert tree["head"] == commits[-1]
    owners = {f["path"]: (f["component"], f["size"]) for f in tree["files"]}
    assert owners == {
        "db/schema.sql": ("db", 28), "api/server.py": ("api", 12), "api/logo.png": ("api", 10),
        "api/big.txt": ("api", 300_000),
    }  # fmt: skip


async def test_a_file_of_main_is_its_text_bounded_and_a_binary_has_none(
    client: httpx.AsyncClient, alice: dict[str, str], merged_build: Any
) -> None:
    build, _ = merged_build
    get = lambda path: client.get(f"/api/build/file/{build}", params={"path": path}, headers=alice)  # noqa: E731
    server = (await get("api/server.py")).json()
    assert server == {"path": "api/server.py", "size": 12, "content": "print('hi')\n", "truncated": False,
                      "binary": False}  # fmt: skip
    big = (await get("api/big.txt")).json()
    assert big["truncated"] and big["size"] == 300_000 and len(big["content"]) == 256 * 1024
    logo = (await get("api/logo.png")).json()
    assert logo["binary"] and logo["content"] == ""
    assert (await get("api/missing.py")).status_code == 404


@pytest.mark.parametrize(
    "path", ["../store.db", "/etc/passwd", "api/../../x", "api//server.py", "./api/server.py", "api\\server.py", "a\0b"]
)
async def test_a_path_that_would_leave_main_is_refused(
    client: httpx.AsyncClient, alice: dict[str, str], merged_build: Any, path: str
) -> None:
    build, _ = merged_build
    response = await client.get(f"/api/build/file/{build}", params={"path": path}, headers=alice)
    assert response.status_code == 422, response.text
    assert response.json()["field"] in ("path", "query.path")


async def test_a_merge_diff_shows_each_changed_file_against_the_parent(
    client: httpx.AsyncClient, alice: dict[str, str], merged_build: Any
) -> None:
    build, commits = merged_build
    diff = (await client.get(f"/api/build/diff/{build}/{commits[1]}", headers=alice)).json()
    assert diff["commit"] == commits[1] and diff["parent"] == commits[0] and diff["message"].startswith("merge api")
    files = {f["path"]: f for f in diff["files"]}
    assert set(files) == {"api/server.py", "api/logo.png", "api/big.txt"}
    assert all(f["status"] == "A" for f in files.values())
    assert "+print('hi')" in files["api/server.py"]["diff"]
    assert files["api/logo.png"]["binary"]
    assert files["api/big.txt"]["truncated"] and diff["truncated"]
    assert len(files["api/big.txt"]["diff"]) <= 128 * 1024
    first = (await client.get(f"/api/build/diff/{build}/{commits[0][:10]}", headers=alice)).json()
    assert [f["path"] for f in first["files"]] == ["db/schema.sql"]


async def test_a_commit_that_is_not_hex_or_not_in_main_is_refused(
    client: httpx.AsyncClient, alice: dict[str, str], merged_build: Any
) -> None:
    build, _ = merged_build
    assert (await client.get(f"/api/build/diff/{build}/HEAD~1", headers=alice)).status_code == 422
    assert (await client.get(f"/api/build/diff/{build}/--output=x", headers=alice)).status_code == 422
    assert (await client.get(f"/api/build/diff/{build}/{'0' * 40}", headers=alice)).status_code == 404


async def test_another_users_main_is_a_404_like_an_unknown_build(
    client: httpx.AsyncClient, alice: dict[str, str], bob: dict[str, str], merged_build: Any
) -> None:
    build, commits = merged_build
    for path in (f"/api/build/tree/{build}", f"/api/build/file/{build}?path=api/server.py",
                 f"/api/build/diff/{build}/{commits[0]}", "/api/build/tree/nope"):  # fmt: skip
        response = await client.get(path, headers=bob)
        assert response.status_code == 404, (path, response.text)
        assert "print" not in response.text


async def test_a_build_without_main_yet_is_a_404(client: httpx.AsyncClient, alice: dict[str, str]) -> None:
    build = (await client.post("/api/builds", json={"prompt": "todo"}, headers=alice)).json()["id"]
    assert (await client.get(f"/api/build/tree/{build}", headers=alice)).status_code == 404


# --- property-based: no input makes a 500 ---------------------------------------------------

schemathesis = pytest.importorskip("schemathesis")


def test_schemathesis_finds_no_500(store: Store, control: MemoryControl) -> None:
    """Random requests from the OpenAPI spec (with a valid token) never get a 5xx."""
    from hypothesis import HealthCheck, given, settings

    app = create_app(control, no_bus, store, ApiSettings(rate_per_s=1e6, burst=10**9))
    token = create_token(store, "fuzz")
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    checked: list[str] = []

    for operation in schema.get_all_operations():
        op = operation.ok()
        if op.path == "/api/build/stream/{build_id}":
            continue  # an SSE stream to a real build never ends; its errors are covered above

        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=op.as_strategy())
        def check(case: Any) -> None:
            response = case.call(headers={"Authorization": f"Bearer {token}"})
            assert response.status_code < 500, (case.method, case.formatted_path, response.text)

        check()
        checked.append(f"{op.method.upper()} {op.path}")
    assert len(checked) == 20
