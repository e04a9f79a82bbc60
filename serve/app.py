"""The HTTP API of KripTik Fleet: a FastAPI app built around a :class:`ControlPort`.

:func:`create_app` wires the routes to the Control port, the bus (for SSE), the store (for
tokens) and the limits. It does no I/O: the bus is made on the first stream, so the same
factory serves tests (an ASGI transport) and the Ray Serve replica (``serve/deployment.py``).
The app's lifespan closes that bus at shutdown (:func:`close_app`): Serve runs the ASGI
lifespan of a replica it stops.

Every route but ``/api/health`` needs ``Authorization: Bearer <token>`` and acts for the
token's user only; another user's build is a 404, exactly like an unknown one. Errors are
JSON :class:`ErrorBody`; a 500 is always a bug and is logged with its traceback.
"""

# No `from __future__ import annotations`: FastAPI must see the route annotations (local aliases) as objects.

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib.resources import files
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException

from coordinator.api_models import (
    SCREENSHOT_NAME,
    BudgetRaise,
    BudgetView,
    BuildCreated,
    BuildRequest,
    BuildStatus,
    BuildSummary,
    ErrorBody,
    Health,
    MainFileView,
    MainTreeView,
    MergeDiffView,
    NotifySettings,
    NotifyView,
    PreviewView,
    SandboxView,
    ScreenshotView,
    TakeControlView,
)
from coordinator.bus.context_bus import ContextBus
from coordinator.store.store import Store
from sandbox_agents.errors import (
    BudgetExceededError,
    BuildActiveError,
    BuildNotFoundError,
    BusUnavailableError,
    InvalidInputError,
    KriptikError,
    StoreError,
)
from sandbox_agents.settings import get_settings
from serve.auth import Principal, UnauthorizedError, authenticate
from serve.control_port import ControlPort, ControlUnavailableError
from serve.limits import BodySizeLimit, RateLimitedError, RateLimiter, add_cors, retry_after_header
from serve.sse import build_events, parse_last_event_id, stream_response

logger = logging.getLogger(__name__)

VERSION = "0.1.0"
BUILD_ID = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"


class ApiSettings(BaseSettings):
    """Settings of the API replica, from ``KRIPTIK_API_*`` variables."""

    model_config = SettingsConfigDict(env_prefix="KRIPTIK_API_", extra="ignore")

    host: str = "127.0.0.1"
    """Address the Serve HTTP proxy binds (``KRIPTIK_API_HOST``)."""
    port: int = Field(default=8000, ge=1, le=65535)
    """Port of the Serve HTTP proxy (``KRIPTIK_API_PORT``); 8265 is Ray's dashboard."""
    rate_per_s: float = Field(default=20.0, gt=0)
    """Sustained requests per second per token."""
    burst: int = Field(default=60, ge=1)
    """Requests per token allowed back to back."""
    max_body_bytes: int = Field(default=1_000_000, ge=1024)
    """Largest request body; larger ones get a 413."""
    cors_origins: str = ""
    """Comma-separated origins allowed to call the API from a browser; empty: CORS off."""
    heartbeat_s: float = Field(default=15.0, gt=0)
    """Seconds between SSE heartbeat comments."""
    sse_block_ms: int = Field(default=1000, ge=10, le=4000)
    """Longest blocking read of the event log before the stream re-checks the build's status."""
    sse_unavailable_s: float = Field(default=30.0, gt=0, le=3600)
    """How long an event stream retries an unreadable event log (Redis down) before it sends ``error`` and closes."""
    control_timeout_s: float = Field(default=30.0, gt=0)
    """Longest wait for one Control call before a 503."""
    status_from_store: bool = True
    """Answer the status of *final* builds from the store in the replica, without a Control call
    (``serve/store_status.py``); the store must be the one Control writes."""

    def origins(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]


_ERRORS: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    422: "invalid_input",
    429: "rate_limited",
    503: "unavailable",
}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": name.replace("_", " ")}
    for code, name in _ERRORS.items()
    if code not in (405,)
}


def _error(status: int, message: str, *, field: str | None = None, headers: dict[str, str] | None = None,
           **extra: Any) -> JSONResponse:  # fmt: skip
    body = ErrorBody(error=_ERRORS.get(status, "internal"), message=message, field=field, **extra)
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status, headers=headers)


def status_of(exc: KriptikError) -> int:
    """HTTP status of one of our errors (see docs/api.md)."""
    if isinstance(exc, UnauthorizedError):
        return 401
    if isinstance(exc, BuildNotFoundError | LookupError):
        return 404
    if isinstance(exc, BudgetExceededError | BuildActiveError):
        return 409
    if isinstance(exc, RateLimitedError):
        return 429
    if isinstance(exc, ControlUnavailableError | BusUnavailableError | StoreError | ConnectionError | TimeoutError):
        return 503
    if isinstance(exc, InvalidInputError | ValueError):
        return 422
    return 400


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors]
        field = ".".join(str(p) for p in errors[0]["loc"]) if errors else None
        return _error(422, "; ".join(problems) or "invalid request", field=field, problems=problems)

    @app.exception_handler(KriptikError)
    async def ours(request: Request, exc: KriptikError) -> JSONResponse:
        status = status_of(exc)
        headers: dict[str, str] = {}
        if status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        retry = getattr(exc, "retry_after_s", None)
        if status == 429 and retry is not None:
            headers["Retry-After"] = retry_after_header(retry)
        elif status == 503:
            headers["Retry-After"] = "1"
        if status == 503:
            logger.warning("%s %s: %s", request.method, request.url.path, exc)
        return _error(status, str(exc), field=getattr(exc, "field", None), headers=headers, retry_after_s=retry)

    @app.exception_handler(StarletteHTTPException)
    async def http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), headers=dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("bug: unhandled error on %s %s", request.method, request.url.path)
        return _error(500, "internal error (logged)")


def create_app(
    control: ControlPort,
    bus_factory: Callable[[], ContextBus],
    store: Store,
    settings: ApiSettings | None = None,
    *,
    limiter: RateLimiter | None = None,
) -> FastAPI:
    """The API app.

    Args:
        control: the Control actor (or a double).
        bus_factory: makes the bus that SSE streams read; called once, at the first stream.
        store: a started store; only its API-token table is used.
        settings: limits and timeouts; read from the environment when ``None``.
        limiter: rate limiter (tests inject one with a fake clock).
    """
    settings = settings or ApiSettings()
    limiter = limiter or RateLimiter(settings.rate_per_s, settings.burst)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await close_app(app)

    app = FastAPI(
        lifespan=lifespan,
        title="KripTik Fleet API",
        version=VERSION,
        description="Start, follow and steer builds. Every route but /api/health needs a bearer token.",
        responses=_RESPONSES,
    )
    app.state.bus = None
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    add_cors(app, settings.origins())
    _install_error_handlers(app)
    bearer = HTTPBearer(auto_error=False, description="A token from `kriptik token create USER`.")

    async def principal(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Principal:
        who = authenticate(store, credentials.credentials if credentials else None)
        limiter.acquire(who.token_id)
        return who

    User = Annotated[Principal, Depends(principal)]
    BuildId = Annotated[str, Path(pattern=BUILD_ID, description="A build id from POST /api/builds.")]
    ShotName = Annotated[
        str, Path(pattern=SCREENSHOT_NAME, description="A name from GET /api/build/screenshots/{build_id}.")
    ]

    def bus() -> ContextBus:
        if app.state.bus is None:
            app.state.bus = bus_factory()
        return app.state.bus

    @app.get("/api/health", response_model=Health, tags=["meta"])
    async def health() -> Health:
        """This replica and its parts (Redis, the control plane), each checked with a short timeout; no token.
        Also how local sandboxes are limited here."""
        limits = None
        if get_settings().kriptik_backend == "local":
            from sandbox_agents.backends.local.backend import host_sandbox_limits

            limits = await asyncio.to_thread(host_sandbox_limits)

        async def redis_ok() -> None:
            await bus().ping()

        checks = {"redis": redis_ok(), "control": control.ping()}
        answers = await asyncio.gather(*checks.values(), return_exceptions=True)
        parts = {name: "ok" if answer is None else str(answer) for name, answer in zip(checks, answers, strict=True)}
        healthy = all(v == "ok" for v in parts.values())
        return Health(status="ok" if healthy else "degraded", version=VERSION, sandbox_limits=limits, parts=parts)

    @app.post("/api/builds", response_model=BuildCreated, status_code=202, tags=["builds"])
    async def submit(body: BuildRequest, who: User) -> BuildCreated:
        """Queue a build; it runs in the background. Follow it with the returned URLs."""
        build_id = await control.submit(who.user_id, body)
        return BuildCreated(
            id=build_id, status_url=f"/api/build/status/{build_id}", stream_url=f"/api/build/stream/{build_id}"
        )

    @app.get("/api/builds", response_model=list[BuildSummary], tags=["builds"])
    async def list_builds(who: User) -> list[BuildSummary]:
        """Your builds, newest first."""
        return await control.list_builds(who.user_id)

    @app.delete("/api/builds/{build_id}", status_code=204, tags=["builds"])
    async def delete_build(build_id: BuildId, who: User) -> Response:
        """Delete an ended build and everything it holds: its preview and other sandboxes, its actors,
        event log, files and records (409 while it is queued, running or paused: cancel it first)."""
        await control.delete(who.user_id, build_id)
        return Response(status_code=204)

    @app.get("/api/build/status/{build_id}", response_model=BuildStatus, tags=["builds"])
    async def status(build_id: BuildId, who: User) -> BuildStatus:
        """Everything about one build: phase, fleet, budget, tournaments, merges."""
        return await control.status(who.user_id, build_id)

    @app.get("/api/build/preview/{build_id}", response_model=PreviewView, tags=["builds"])
    async def preview(build_id: BuildId, who: User) -> PreviewView:
        """Preview URLs: the merged app and each component's dev server."""
        return await control.preview(who.user_id, build_id)

    @app.get("/api/build/screenshots/{build_id}", response_model=list[ScreenshotView], tags=["builds"])
    async def screenshots(build_id: BuildId, who: User) -> list[ScreenshotView]:
        """Screenshots of the live preview, newest first (the last few the preview keeps)."""
        return await control.screenshots(who.user_id, build_id)

    @app.get(
        "/api/build/screenshots/{build_id}/{name}",
        tags=["builds"],
        response_class=Response,
        responses={200: {"content": {"image/png": {}}, "description": "The PNG"}},
    )
    async def screenshot(build_id: BuildId, name: ShotName, who: User) -> Response:
        """One screenshot of the live preview, as a PNG."""
        png = await control.screenshot(who.user_id, build_id, name)
        # A name is never reused for other bytes; the token's user alone may keep a copy.
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=86400, immutable"})

    @app.post("/api/build/cancel/{build_id}", response_model=BuildStatus, tags=["builds"])
    async def cancel(build_id: BuildId, who: User) -> BuildStatus:
        """Cancel a build (idempotent); its sandboxes are ended."""
        return await control.cancel(who.user_id, build_id)

    @app.post("/api/build/resume/{build_id}", response_model=BuildStatus, tags=["builds"])
    async def resume(build_id: BuildId, who: User) -> BuildStatus:
        """Resume a paused build (409 if its budget is still spent)."""
        return await control.resume(who.user_id, build_id)

    @app.get("/api/build/sandboxes/{build_id}", response_model=list[SandboxView], tags=["builds"])
    async def sandboxes(build_id: BuildId, who: User) -> list[SandboxView]:
        """The build's fleet: one sandbox per slot, with its agents and swarm score."""
        return await control.sandboxes(who.user_id, build_id)

    @app.get("/api/build/budget/{build_id}", response_model=BudgetView, tags=["budget"])
    async def budget(build_id: BuildId, who: User) -> BudgetView:
        """Spending limit and spend so far."""
        view = (await control.status(who.user_id, build_id)).budget
        if view is None:
            raise InvalidInputError(f"build {build_id} has no budget yet", field="build_id")
        return view

    @app.post("/api/build/budget/{build_id}", response_model=BudgetView, tags=["budget"])
    async def raise_budget(build_id: BuildId, body: BudgetRaise, who: User) -> BudgetView:
        """Add dollars to the build's limit; a paused build then continues with resume."""
        return await control.raise_budget(who.user_id, build_id, body.usd)

    @app.post("/api/build/take-control/{build_id}", response_model=TakeControlView, tags=["builds"])
    async def take_control(build_id: BuildId, who: User) -> TakeControlView:
        """A URL where you drive the live preview yourself."""
        return await control.take_control(who.user_id, build_id)

    @app.get("/api/build/tree/{build_id}", response_model=MainTreeView, tags=["main"])
    async def main_tree(build_id: BuildId, who: User) -> MainTreeView:
        """Every file of the build's main (404 once the build's gate is closed)."""
        return MainTreeView.model_validate(await control.main_read(who.user_id, build_id, "tree"))

    @app.get("/api/build/file/{build_id}", response_model=MainFileView, tags=["main"])
    async def main_file(
        build_id: BuildId, who: User, path: Annotated[str, Query(min_length=1, max_length=1024)]
    ) -> MainFileView:
        """One file of main: its first 256 KiB as text (none of a binary file). ``path`` is relative to main."""
        return MainFileView.model_validate(await control.main_read(who.user_id, build_id, "file", path))

    @app.get("/api/build/diff/{build_id}/{commit}", response_model=MergeDiffView, tags=["main"])
    async def merge_diff(
        build_id: BuildId, who: User, commit: Annotated[str, Path(pattern=r"^[0-9a-f]{7,40}$")]
    ) -> MergeDiffView:
        """A merge commit's diff against its parent, per file and bounded (a rejected merge's too)."""
        return MergeDiffView.model_validate(await control.main_read(who.user_id, build_id, "diff", commit))

    @app.get(
        "/api/build/stream/{build_id}",
        tags=["builds"],
        response_class=JSONResponse,  # documented below; the body is text/event-stream
        responses={200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events"}},
    )
    async def stream(
        build_id: BuildId,
        who: User,
        last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    ) -> Any:
        """The build's events as SSE; send ``Last-Event-ID`` to resume after an event. Ends with ``end``."""
        after = parse_last_event_id(last_event_id)
        current = await control.status(who.user_id, build_id)  # 404 before the stream starts
        events = build_events(
            bus(), control, who.user_id, build_id, after,
            initial_status=current.status, block_ms=settings.sse_block_ms,
            unavailable_s=settings.sse_unavailable_s,
        )  # fmt: skip
        return stream_response(events, heartbeat_s=settings.heartbeat_s)

    @app.get("/api/notify", response_model=NotifyView, tags=["notify"])
    async def notify_defaults(who: User) -> NotifyView:
        """Your ghost-mode webhook defaults (never the secret); ``url`` is null when none are set."""
        return await control.notify_defaults(who.user_id)

    @app.put("/api/notify", response_model=NotifyView, tags=["notify"])
    async def set_notify_defaults(body: NotifySettings, who: User) -> NotifyView:
        """Set the webhook your builds notify when they bring no ``notify`` of their own. A loopback,
        private or link-local destination is a 422 unless the operator allows them."""
        return await control.set_notify_defaults(who.user_id, body)

    @app.delete("/api/notify", response_model=NotifyView, tags=["notify"])
    async def clear_notify_defaults(who: User) -> NotifyView:
        """Drop your webhook defaults (idempotent): builds without their own ``notify`` send nothing."""
        await control.clear_notify_defaults(who.user_id)
        return NotifyView()

    static = files("serve") / "static"
    app.mount("/ui", StaticFiles(directory=str(static), html=True), name="ui")

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/ui/")

    return app


async def close_app(app: FastAPI) -> None:
    """Close what the app opened (the bus of its streams); its lifespan calls this at shutdown."""
    bus: ContextBus | None = app.state.bus
    app.state.bus = None
    if bus is not None:
        try:
            await bus.aclose(flush_timeout=1.0)
        except Exception as exc:  # noqa: BLE001 - the replica is going away; nothing is left to retry it
            logger.warning("closing the API's bus failed: %r", exc)
