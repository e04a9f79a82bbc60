"""``kriptik up|down|build|status|logs|cancel|resume|preview|token``: the CLI of the API.

:func:`register` adds the commands to the ``kriptik`` typer app. Every command but ``up``,
``down`` and ``token`` talks HTTP to the API (httpx) with the token from ``KRIPTIK_TOKEN``
or ``~/.kriptik/token``, at ``KRIPTIK_API_URL`` (default ``http://KRIPTIK_API_HOST:PORT``).
``kriptik notify`` is in ``serve/cli_notify.py``.
"""

from __future__ import annotations

import difflib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import httpx
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

console = Console()
EXIT_COMPLETED, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_DOWN = 0, 1, 2, 3
"""Exit codes: the build completed (or the command did its job); the build failed, was cancelled,
paused or blocked (or the API answered with a server error); the input was bad (an unknown build,
an invalid contract, a missing file, a refused token); the system is not up (no API to talk to)."""
FINAL = {"completed": EXIT_COMPLETED, "failed": EXIT_FAILED, "cancelled": EXIT_FAILED, "paused": EXIT_FAILED}
CONTRACT_SUFFIXES = (".yaml", ".yml", ".json")
PHASES = ("intent", "fleet", "build", "verify", "merge", "preview", "done")
REDIS_KEEPER = "kriptik-redis"
UP_MARKER = "up.json"
NOTIFY_SECRET_ENV = "KRIPTIK_NOTIFY_SECRET"
"""Where ``--notify-secret`` and ``kriptik notify set --secret`` are read from when not given (not in ``ps``)."""
NOTIFY_EVENTS_HELP = (
    "An event to be told about (repeat it): completed, failed, paused, budget_warning, blocked. "
    "Default: all but blocked."
)
#: ``kriptik up`` starts and joins Ray with token authentication on, explicitly: Ray 2.60 turns it on
#: by itself only for ``ray.init()``'s own clusters, and for ``ray start`` only when a token exists.
RAY_AUTH_ENV = {"RAY_AUTH_MODE": "token"}


# --- talking to the API ------------------------------------------------------------------


def api_url() -> str:
    from serve.app import ApiSettings

    s = ApiSettings()
    return os.environ.get("KRIPTIK_API_URL", f"http://{s.host}:{s.port}").rstrip("/")


def token() -> str:
    value = os.environ.get("KRIPTIK_TOKEN") or _read(Path("~/.kriptik/token").expanduser())
    if not value:
        console.print("[red]no token: set KRIPTIK_TOKEN or write ~/.kriptik/token (kriptik token create USER)")
        raise typer.Exit(EXIT_BAD_INPUT)
    return value


def _read(path: Path) -> str:
    return path.read_text().strip() if path.exists() else ""


def client(timeout: float | httpx.Timeout = 30.0) -> httpx.Client:
    return httpx.Client(base_url=api_url(), headers={"Authorization": f"Bearer {token()}"}, timeout=timeout)


def call(method: str, path: str, **kwargs: Any) -> Any:
    """One API call. No API: exit 3; a refused request (4xx): its message, exit 2; a server error: exit 1."""
    try:
        with client() as c:
            r = c.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        _not_up(exc)
    if r.is_error:
        _refused(r)
    return r.json() if r.content else None


def _not_up(exc: Exception) -> NoReturn:
    console.print(f"[red]cannot reach the API at {api_url()}: {exc} (is `kriptik up` running?)")
    raise typer.Exit(EXIT_DOWN) from None


def _refused(r: httpx.Response) -> NoReturn:
    """Print an error answer (its message, and each invalid field's path) and exit 2 (4xx) or 1."""
    try:
        body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
    except ValueError:
        body = {}
    problems = [str(p) for p in body.get("problems") or []]
    if len(problems) > 1:  # one line per invalid field, its path first
        console.print(f"[red]{r.status_code} {body.get('error', '')}: {len(problems)} problems")
        for problem in problems:
            console.print(f"[red]  {problem}")
    else:
        field = f" ({body['field']})" if body.get("field") and body["field"] not in str(body.get("message")) else ""
        console.print(f"[red]{r.status_code} {body.get('error', '')}{field}: {body.get('message', r.text)}")
    raise typer.Exit(EXIT_BAD_INPUT if r.status_code < 500 else EXIT_FAILED)


def events(build_id: str, *, follow: bool) -> Iterator[dict[str, Any]]:
    """The build's SSE events; without ``follow``, stop once the backlog is read."""
    timeout = httpx.Timeout(30.0, read=None if follow else 2.0)
    last_id: str | None = None
    while True:
        headers = {"Last-Event-ID": last_id} if last_id else {}
        try:
            with client(timeout) as c, c.stream("GET", f"/api/build/stream/{build_id}", headers=headers) as r:
                if r.is_error:
                    r.read()
                    _refused(r)
                event: dict[str, Any] = {}
                for line in r.iter_lines():
                    if line == "":
                        if "data" in event:
                            last_id = event.get("id", last_id)
                            _stop_if_unavailable(event)
                            yield event
                            if event.get("event") == "end":
                                return
                        event = {}
                    elif not line.startswith(":"):
                        key, _, value = line.partition(":")
                        event[key] = value.removeprefix(" ")
        except httpx.ReadTimeout:
            return  # backlog read (not following)
        except httpx.ConnectError as exc:
            if not follow or last_id is None:  # never connected: the system is not up
                _not_up(exc)
            console.print(f"[yellow]the API went away ({exc}); reconnecting after {last_id}")
            time.sleep(1.0)
        except httpx.TransportError as exc:
            if not follow:
                raise
            console.print(f"[yellow]stream dropped ({exc}); resuming after {last_id}")


def _stop_if_unavailable(event: dict[str, Any]) -> None:
    """The API closes a stream whose event log (Redis) it cannot read: say so and exit 3."""
    if event.get("event") != "error":
        return
    try:
        body = json.loads(event["data"])
    except ValueError:
        return
    if body.get("kind") == "stream.unavailable":
        console.print(f"[red]{body['data'].get('error')} (is `kriptik up` healthy? see `kriptik status`)")
        raise typer.Exit(EXIT_DOWN)


# --- commands ------------------------------------------------------------------------------


class BuildOn(StrEnum):
    """``kriptik build --on``: the build modes of ``coordinator/placement.py``."""

    local = "local"
    modal = "modal"
    hybrid = "hybrid"


_ON = typer.Option(
    None,
    "--on",
    "--mode",
    case_sensitive=False,
    help="Where its sandboxes run: local, modal, or hybrid (components on Modal, the gate and preview here). "
    "Default: the contract's build_mode, else the server's KRIPTIK_BACKEND.",
)

_NOTIFY_EVENTS = typer.Option(None, "--notify-event", help=NOTIFY_EVENTS_HELP)


def register(app: typer.Typer) -> None:
    """Add the API commands to the ``kriptik`` app."""
    token_app = typer.Typer(help="API tokens.")
    app.add_typer(token_app, name="token")

    @token_app.command("create")
    def token_create(user: str = typer.Argument(..., help="User the token acts for.")) -> None:
        """Create a bearer token for USER (shown once; only its hash is stored)."""
        from coordinator.store.store import Store
        from serve.auth import create_token

        with Store() as store:
            print(create_token(store, user))

    @app.command()
    def up(port: int = typer.Option(None, help="API port (default KRIPTIK_API_PORT or 8000).")) -> None:
        """Start a local Ray head, the managed Redis, the Control actor and the API; print the URLs."""
        raise typer.Exit(_up(port))

    @app.command()
    def down() -> None:
        """Stop the API and the managed Redis; stop Ray if `kriptik up` started it."""
        raise typer.Exit(_down())

    @app.command()
    def build(
        what: str = typer.Argument(None, help="A prompt, or a contract file (YAML/JSON)."),
        example: str = typer.Option(None, help="Build one of examples/ (with its cassette), e.g. hello-calc."),
        budget: float = typer.Option(None, help="Budget in dollars."),
        on: BuildOn = _ON,
        detach: bool = typer.Option(False, "--detach", "-d", help="Print the id and return."),
        notify: str = typer.Option(
            None, "--notify", help="A webhook told when the build ends or pauses (default: `kriptik notify set`)."
        ),
        notify_secret: str = typer.Option(
            None, "--notify-secret", envvar=NOTIFY_SECRET_ENV, help="Signing key of the --notify webhook."
        ),
        notify_events: list[str] = _NOTIFY_EVENTS,
    ) -> None:
        """Start a build and show its progress live."""
        body: dict[str, Any] = {"budget_usd": budget}
        if on is not None:
            body["build_mode"] = on.value
        if notify:
            body["notify"] = notify_body(notify, notify_secret, notify_events)
        if (what is None) == (example is None):
            raise typer.BadParameter("give a prompt or a contract file, or --example NAME (one of them)")
        if example is not None:
            body["example"] = example
        elif _path_like(what):
            body["contract"] = _read_contract(Path(what).expanduser())
        else:
            body["prompt"] = what
        created = call("POST", "/api/builds", json=body)
        console.print(f"build [bold]{created['id']}[/] queued")
        if not detach:
            raise typer.Exit(_follow_progress(created["id"]))

    @app.command()
    def status(build_id: str, json_output: bool = typer.Option(False, "--json")) -> None:
        """Show a build's status, fleet and budget."""
        s = call("GET", f"/api/build/status/{build_id}")
        if json_output:
            print(json.dumps(s))
            return
        console.print(f"[bold]{s['id']}[/] {s['status']} phase={s['phase'] or '-'} preview={s.get('preview_url')}")
        if s.get("budget"):
            b = s["budget"]
            tokens = f", {b.get('llm_tokens', 0):,} LLM tokens" if b.get("llm_tokens") else ""
            console.print(f"budget ${b['spent_usd']:.2f} of ${b['limit_usd']:.2f} ({b['status']}){tokens}")
        table = Table("slot", "component", "sandbox", "status", "agents", "swarm")
        for c in s.get("components", []):
            score = "" if c.get("swarm_score") is None else f"{c['swarm_score']:.2f}"
            ended = f"[dim]{c['last_sandbox_id']} (ended)[/]" if c.get("last_sandbox_id") else ""
            sandbox = c.get("sandbox_id") or ended
            agents = ", ".join(_agent_label(a) for a in c.get("agents", []))
            table.add_row(c["slot"], c["component"], sandbox, c["status"], agents, score)
        if s.get("components"):
            console.print(table)
        for m in s.get("merges", []):
            colour = {"merged": "green", "rejected": "red"}.get(m["status"], "yellow")
            what = (m.get("commit") or "")[:10] if m["status"] == "merged" else (m.get("message") or "")[:100]
            console.print(f"[{colour}]merge {m['component']}: {m['status']}[/] {what}")
        if s.get("main_commit"):
            console.print(f"main {s['main_commit']}")
        if s.get("error"):
            console.print(f"[red]{s['error']}")
        health = call("GET", "/api/health")
        for name, state in health.get("parts", {}).items():
            if state != "ok":
                console.print(f"[bold red]{name} does not answer:[/] {state}")
        if health.get("sandbox_limits") == "unlimited":
            console.print(
                "[bold red]sandboxes on this host run WITHOUT memory, process or CPU limits[/] "
                "(no writable cgroups; KRIPTIK_ALLOW_UNLIMITED_SANDBOXES=1 opted in)"
            )

    @app.command()
    def logs(build_id: str, follow: bool = typer.Option(False, "--follow", "-f", help="Keep streaming.")) -> None:
        """Print a build's event log (with -f, follow it until the build ends; the exit code is then its outcome)."""
        for event in events(build_id, follow=follow):
            if event.get("event") == "end":
                console.print(f"[bold]end[/] {event['data']}")
                raise typer.Exit(_ended(build_id, event["data"]))
            body = json.loads(event["data"])
            data = escape(json.dumps(body["data"]))  # the model's words are data, never rich markup
            console.print(f"[dim]{escape(event.get('id', ''))}[/] [bold]{escape(body['kind'])}[/] {data}")

    @app.command()
    def cancel(build_id: str) -> None:
        """Cancel a build."""
        console.print(f"{build_id}: {call('POST', f'/api/build/cancel/{build_id}')['status']}")

    @app.command("rm")
    def remove(build_ids: Annotated[list[str], typer.Argument(metavar="ID...", help="Builds to delete.")]) -> None:
        """Delete ended builds and everything they hold: preview and sandboxes, actors, event log, files, records.

        A build that has not ended is refused (exit 2): cancel it first.
        """
        for build_id in build_ids:
            call("DELETE", f"/api/builds/{build_id}")
            console.print(f"{build_id}: deleted")

    @app.command()
    def resume(build_id: str) -> None:
        """Resume a paused build."""
        console.print(f"{build_id}: {call('POST', f'/api/build/resume/{build_id}')['status']}")

    @app.command()
    def preview(build_id: str) -> None:
        """Print the build's preview URLs."""
        p = call("GET", f"/api/build/preview/{build_id}")
        if not p.get("url"):
            s = call("GET", f"/api/build/status/{build_id}")
            if s["status"] in FINAL:  # it will never have one (or not until it is resumed)
                reason = f": {s['error']}" if s.get("error") else ""
                console.print(f"[red]build {build_id} {s['status']}{reason}; it has no preview")
                raise typer.Exit(FINAL[s["status"]] or EXIT_FAILED)
        console.print(f"app: {p.get('url') or '(not yet)'}")
        for name, url in p.get("components", {}).items():
            console.print(f"  {name}: {url}")


def _agent_label(name: str) -> str:
    """``build:{id}:agent:{slot}:{n}`` as the web UI names it: ``agent {n+1}``."""
    last = name.rsplit(":", 1)[-1]
    return f"agent {int(last) + 1}" if last.isdigit() else last


def notify_body(url: str, secret: str | None, events: list[str] | None) -> dict[str, Any]:
    """The ``NotifySettings`` JSON of ``kriptik build --notify`` and ``kriptik notify set``."""
    body: dict[str, Any] = {"url": url}
    if secret:
        body["secret"] = secret
    if events:
        body["events"] = events
    return body


def _path_like(what: str) -> bool:
    """Whether ``kriptik build WHAT`` names a contract file (rather than being a prompt)."""
    if len(what) >= 4096 or "\n" in what:
        return False
    one_word = not any(c.isspace() for c in what.strip())
    return Path(what).expanduser().is_file() or (one_word and what.lower().endswith(CONTRACT_SUFFIXES))


def _read_contract(path: Path) -> dict[str, Any]:
    """The contract file as JSON for the API; a missing or invalid file exits 2 with what to fix."""
    from coordinator.contracts import load_contract
    from sandbox_agents.errors import ContractError

    if not path.is_file():
        parent = path.parent if path.parent.is_dir() else None
        siblings = [p.name for p in parent.iterdir() if p.suffix.lower() in CONTRACT_SUFFIXES] if parent else []
        near = difflib.get_close_matches(path.name, siblings)
        hint = f" (did you mean {path.parent / near[0]}?)" if near else ""
        console.print(f"[red]no contract file {path}{hint}")
        raise typer.Exit(EXIT_BAD_INPUT)
    try:
        return load_contract(path).model_dump(mode="json")
    except ContractError as exc:  # every problem with its field path; the traceback only with --debug
        console.print(f"[red]invalid contract {path}:[/]\n{exc}")
        if os.environ.get("KRIPTIK_DEBUG"):
            console.print_exception()
        raise typer.Exit(EXIT_BAD_INPUT) from None


def _ended(build_id: str, data: str) -> int:
    """The exit code of a build that ended (the status of the stream's ``end`` event); prints why it failed."""
    try:
        status = str(json.loads(data).get("status"))
    except (ValueError, AttributeError):
        status = "unknown"
    if status != "completed":
        error = call("GET", f"/api/build/status/{build_id}").get("error")
        if error:
            console.print(f"[red]why: {error}")
    return FINAL.get(status, EXIT_FAILED)


def _follow_progress(build_id: str) -> int:
    """Progress bars fed by SSE: one per phase, plus the latest message; returns the build's exit code."""
    with Progress(TextColumn("{task.description:>10}"), BarColumn(), TextColumn("{task.fields[note]}"),
                  TimeElapsedColumn(), console=console) as progress:  # fmt: skip
        tasks = {p: progress.add_task(p, total=1.0, note="", start=False) for p in PHASES}
        ended = "{}"
        for event in events(build_id, follow=True):
            if event.get("event") == "end":
                ended = event["data"]
                status = json.loads(ended)["status"]
                colour = "green" if status == "completed" else "red"
                progress.console.print(f"[{colour}]build {build_id} {status}")
                break
            body = json.loads(event["data"])
            data = body.get("data") or {}
            phase = data.get("phase") or body["kind"].split(".")[0]
            task = tasks.get(phase)
            if task is None:
                progress.console.print(f"[dim]{body['kind']}[/] {json.dumps(data)}")
                continue
            progress.start_task(task)
            fraction = data.get("fraction")
            if body["kind"].endswith((".completed", ".done", ".finished")):
                fraction = 1.0
            progress.update(task, completed=fraction if fraction is not None else 0.0,
                            note=str(data.get("message", body["kind"]))[:60])  # fmt: skip
            if event.get("event") == "error":
                progress.console.print(f"[red]{body['kind']}[/] {json.dumps(data)}")
    return _ended(build_id, ended)


# --- up / down -----------------------------------------------------------------------------


def ray_head_command() -> list[str]:
    """``ray start --head`` as ``kriptik up`` runs it (with :data:`RAY_AUTH_ENV` in its environment).

    The dashboard listens on 127.0.0.1 only. Ray 2.60's GCS, raylet and object manager listen on
    every interface whatever ``--node-ip-address`` says (the CLI turns 127.0.0.1 into the host's
    address), so the token is what guards them; firewall their ports on a one-machine host.
    """
    return ["ray", "start", "--head", "--dashboard-host=127.0.0.1", "--disable-usage-stats"]


def ensure_ray_token() -> Path | None:
    """Make sure Ray has an auth token: ``~/.ray/auth_token`` (0600), generated by Ray if missing.

    Returns:
        The token file, or None when ``RAY_AUTH_TOKEN``/``RAY_AUTH_TOKEN_PATH`` name the token.
    """
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return None
    path = Path.home() / ".ray" / "auth_token"
    if not path.exists():
        subprocess.run(["ray", "get-auth-token", "--generate"], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)  # fmt: skip
    if path.stat().st_mode & 0o077:  # Ray writes it with the umask's mode
        path.chmod(0o600)
    return path


def _up(port: int | None) -> int:
    import ray

    from actors.handles import NAMESPACE
    from actors.ray_local import RAY_ENV
    from coordinator.bus.redis_server import redact_url
    from coordinator.store.store import Store
    from sandbox_agents.private_files import write_private
    from sandbox_agents.settings import get_settings
    from serve.app import ApiSettings
    from serve.deployment import run_api

    settings = get_settings()
    home = settings.home()
    problem = _export_resolved_paths(home)
    if problem:
        console.print(f"[red]{problem}")
        return EXIT_BAD_INPUT
    api = ApiSettings(port=port) if port else ApiSettings()
    started = False
    token_file = ensure_ray_token()
    os.environ.update(RAY_AUTH_ENV)  # this driver, and what it starts, speak to Ray with the token
    os.environ.update(RAY_ENV)  # a head started here runs its actors on asyncio's loop (actors/ray_local.py)
    try:
        ray.init(address="auto", namespace=NAMESPACE, log_to_driver=False)
    except ConnectionError:
        console.print("starting a local Ray head (token authentication) …")
        env = {**os.environ, **RAY_AUTH_ENV, **RAY_ENV}
        subprocess.run(ray_head_command(), check=True, stdout=subprocess.DEVNULL, env=env)
        started = True
        ray.init(address="auto", namespace=NAMESPACE, log_to_driver=False)
    redis_url = settings.redis_url or _start_redis_keeper(home)
    Store().start().close()  # create and migrate the store before Control and the replica open it
    if not _control_running():
        from actors.control import ControlConfig, start_control

        control = start_control(ControlConfig(redis_url=redis_url, store_path=str(home / "store.db")))
        ray.get(control.queued.remote(), timeout=120)  # answers once revival of active builds is under way
    url = run_api(redis_url, str(home / "store.db"), api)
    parts = _wait_healthy(url)
    if parts is not None:
        for name, state in parts.items():
            console.print(f"[{'green' if state == 'ok' else 'red'}]{name:<10} {state}")
        console.print("[red]kriptik up: not every part answers; see the lines above (and `kriptik down` to stop)")
        return EXIT_DOWN
    # 0600: the Redis URL carries the managed server's password.
    write_private(home / UP_MARKER, json.dumps({"started_ray": started, "api": url, "redis": redis_url}))
    console.print(f"API        {url}/api   (docs {url}/docs)")
    console.print(f"web UI     {url}/ui/")
    console.print(f"Ray        http://127.0.0.1:8265  (dashboard; token in {token_file or 'RAY_AUTH_TOKEN(_PATH)'})")
    console.print(f"Redis      {redact_url(redis_url)}")
    console.print("token      kriptik token create USER > ~/.kriptik/token")
    return 0


def _export_resolved_paths(home: Path) -> str | None:
    """Put absolute paths in the environment Ray and Control inherit (their working directory is not ours).

    ``KRIPTIK_HOME`` and each file of ``KRIPTIK_CASSETTES`` are resolved against the directory
    ``kriptik up`` runs in. Returns what is wrong (a cassette file that does not exist), else None.
    """
    from sandbox_agents.llm.config import CASSETTES_ENV

    os.environ["KRIPTIK_HOME"] = str(home)
    raw = os.environ.get(CASSETTES_ENV, "")
    paths = [Path(p).expanduser().resolve() for p in raw.split(os.pathsep) if p.strip()]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        return f"{CASSETTES_ENV} names cassette files that do not exist: {', '.join(missing)}"
    if paths:
        os.environ[CASSETTES_ENV] = os.pathsep.join(str(p) for p in paths)
    return None


def _wait_healthy(url: str, timeout_s: float = 60.0) -> dict[str, str] | None:
    """Wait until ``/api/health`` says every part answers; None then, else the parts as last seen."""
    deadline = time.monotonic() + timeout_s
    parts: dict[str, str] = {"api": "no answer"}
    while time.monotonic() < deadline:
        try:
            health = httpx.get(f"{url}/api/health", timeout=5).json()
            parts = {"api": "ok", **health.get("parts", {})}
            if health.get("status") == "ok":
                return None
        except (httpx.HTTPError, ValueError) as exc:
            parts = {"api": f"no answer: {exc}"}
        time.sleep(0.5)
    return parts


def _control_running() -> bool:
    from actors import handles

    return handles.find(handles.CONTROL_NAME) is not None


class _RedisKeeper:
    """A detached actor that owns the managed redis-server, so it outlives ``kriptik up``."""

    def __init__(self, data_dir: str) -> None:
        from coordinator.bus.redis_server import ManagedRedis

        self.server = ManagedRedis(data_dir)
        self.server.start()
        self.server.keep_alive()  # killed (e.g. by the OOM killer): back on the same URL, its events reloaded

    def url(self) -> str:
        return self.server.url

    def stop(self) -> None:
        self.server.stop()


def _start_redis_keeper(home: Path) -> str:
    import ray

    from actors import handles

    keeper = handles.find(REDIS_KEEPER)
    if keeper is None:
        keeper_class = handles.actor_class(_RedisKeeper, restartable=False, max_concurrency=1)
        keeper = handles.start(keeper_class, REDIS_KEEPER, str(home / "redis"))
    return ray.get(keeper.url.remote(), timeout=60)


def _down() -> int:
    import asyncio

    import ray
    from ray import serve as ray_serve

    from actors import handles
    from sandbox_agents.settings import get_settings

    marker = get_settings().home() / UP_MARKER
    info = json.loads(marker.read_text()) if marker.exists() else {}
    try:  # with a token in ~/.ray, Ray joins in token mode by itself
        ray.init(address="auto", namespace=handles.NAMESPACE, log_to_driver=False)
    except ConnectionError:
        console.print("no Ray running")
        marker.unlink(missing_ok=True)
        return 0
    ray_serve.shutdown()
    from actors.control import stop_control

    control = handles.find(handles.CONTROL_NAME)
    if control is not None:  # its pools and the actor; builds stay in the store for the next `up`
        asyncio.run(stop_control(control))
    _stop_coordinators()  # before the sandboxes end: a live coordinator would respawn them at once
    from sandbox_agents.backends.local.backend import LocalBackend

    ended = asyncio.run(LocalBackend().end_all())  # previews and standbys too; checkpoints (snapshots) stay
    keeper = handles.find(REDIS_KEEPER)
    if keeper is not None:
        try:
            ray.get(keeper.stop.remote(), timeout=30)
        except (handles.RayError, TimeoutError) as exc:  # its redis-server dies with it below, without a save
            console.print(f"[yellow]the managed Redis did not stop cleanly: {exc}")
        handles.kill(keeper)
    ray.shutdown()
    if info.get("started_ray"):
        subprocess.run(["ray", "stop"], check=False, stdout=subprocess.DEVNULL)
        ended += asyncio.run(LocalBackend().end_all())  # any a dying actor started meanwhile
    console.print(f"ended {ended} local sandboxes")
    marker.unlink(missing_ok=True)
    console.print("stopped")
    return 0


def _stop_coordinators() -> None:
    """Kill every build's coordinator (``build:{id}``; they are revived from the store by the next ``up``)."""
    import asyncio

    import ray

    from actors import handles

    killed = []
    for entry in ray.util.list_named_actors(all_namespaces=True):
        name = entry["name"] if isinstance(entry, dict) else entry
        if isinstance(entry, dict) and entry.get("namespace") != handles.NAMESPACE:
            continue
        if name.startswith("build:") and name.count(":") == 1 and (found := handles.find(name)) is not None:
            handles.kill(found)
            killed.append(name)

    async def gone() -> None:
        await asyncio.gather(*(handles.wait_gone(name) for name in killed))

    asyncio.run(gone())
