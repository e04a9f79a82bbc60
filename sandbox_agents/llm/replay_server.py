"""Replay served as an OpenAI-compatible HTTP endpoint, for anything that speaks chat completions.

    python -m sandbox_agents.llm.replay_server CASSETTE [CASSETTE ...] [--host 127.0.0.1] [--port 8765]

OpenAI requests carry no (role, task, turn), so the key travels in headers, which our openai
provider sends on every request (values percent-encoded)::

    X-Kriptik-Role: agent%3Abackend%3A0
    X-Kriptik-Task: t1
    X-Kriptik-Turn: 0

Routes: ``POST /v1/chat/completions`` (non-streaming) and ``GET /v1/models``. A key with no
recorded turn is a 404 in OpenAI's error shape with ``code: "cassette_miss"``, which our openai
provider turns back into :class:`~sandbox_agents.errors.CassetteMissError`. :func:`create_app`
builds the app in-process and :func:`serve_in_thread` runs it on a free local port (tests do).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from sandbox_agents.errors import CassetteMissError
from sandbox_agents.llm.base import AssistantTurn, TurnKey
from sandbox_agents.llm.cassette import Cassette, load_many
from sandbox_agents.llm.replay import ReplayProvider

logger = logging.getLogger(__name__)

ROLE_HEADER, TASK_HEADER, TURN_HEADER = "x-kriptik-role", "x-kriptik-task", "x-kriptik-turn"
_FINISH = {"end_turn": "stop", "tool_use": "tool_calls", "max_tokens": "length", "other": "stop"}


def _error(status: int, message: str, *, code: str, kind: str = "invalid_request_error") -> JSONResponse:
    """An error in OpenAI's shape, which the openai SDK parses into its exception's ``body``."""
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": code}}, status_code=status)


def _key_from_headers(request: Request) -> TurnKey | str:
    """The turn key the headers carry, or why they do not carry one."""
    role, task, turn = (request.headers.get(h) for h in (ROLE_HEADER, TASK_HEADER, TURN_HEADER))
    if role is None or task is None or turn is None:
        return "replay needs the turn key in headers X-Kriptik-Role, X-Kriptik-Task and X-Kriptik-Turn"
    try:
        return TurnKey(role=unquote(role), task=unquote(task), turn=int(turn))
    except ValueError as exc:
        return f"bad turn key headers: {exc}"


def completion_body(turn: AssistantTurn, key: TurnKey, model: str) -> dict[str, Any]:
    """A recorded turn as an OpenAI ``chat.completion`` object (deterministic: no clock, no randomness)."""
    message: dict[str, Any] = {"role": "assistant", "content": turn.text or None}
    if turn.tool_calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
            for c in turn.tool_calls
        ]
    u = turn.usage
    return {
        "id": f"chatcmpl-replay-{key.role}-{key.task}-{key.turn}",
        "object": "chat.completion",
        "created": 0,
        "model": turn.model or model,
        "choices": [{"index": 0, "message": message, "finish_reason": _FINISH[turn.stop_reason], "logprobs": None}],
        "usage": {
            "prompt_tokens": u.input_tokens,
            "completion_tokens": u.output_tokens,
            "total_tokens": u.total_tokens,
        },
    }


def create_app(source: Cassette | ReplayProvider) -> FastAPI:
    """The replay endpoint as a FastAPI app over a cassette (or a replay provider).

    Args:
        source: What to answer from.

    Returns:
        An app serving ``/v1/chat/completions`` and ``/v1/models``.
    """
    provider = source if isinstance(source, ReplayProvider) else ReplayProvider.from_cassette(source)
    app = FastAPI(title="KripTik replay", docs_url=None, redoc_url=None)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": "replay", "object": "model", "created": 0, "owned_by": "kriptik"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> JSONResponse:
        key = _key_from_headers(request)
        if isinstance(key, str):
            return _error(400, key, code="missing_turn_key")
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "the body is not JSON", code="invalid_json")
        if not isinstance(body, dict):
            return _error(400, "the body is not a JSON object", code="invalid_json")
        if body.get("stream"):
            return _error(400, "replay serves only non-streaming completions", code="stream_unsupported")
        try:
            turn = provider.lookup(key)
        except CassetteMissError as exc:
            logger.warning("replay server: %s", exc)
            return _error(404, str(exc), code="cassette_miss", kind="not_found_error")
        return JSONResponse(completion_body(turn, key, str(body.get("model") or "replay")))

    return app


@contextlib.contextmanager
def serve_in_thread(app: Any, *, host: str = "127.0.0.1", startup_timeout_s: float = 10.0) -> Iterator[str]:
    """Run an ASGI app with uvicorn on a free local port in a daemon thread.

    Yields:
        The server's base URL, e.g. ``http://127.0.0.1:40123``.

    Raises:
        RuntimeError: The server did not start within ``startup_timeout_s``.
    """
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"uvicorn:{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError(f"uvicorn did not start on {host}:{port}")
        time.sleep(0.005)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=5)
        sock.close()


def main(argv: list[str] | None = None) -> None:
    """Entry point: load the cassettes and serve them until interrupted."""
    import uvicorn

    parser = argparse.ArgumentParser(
        prog="python -m sandbox_agents.llm.replay_server", description=__doc__.split("\n")[0]
    )
    parser.add_argument("cassettes", nargs="+", type=Path, metavar="CASSETTE", help="cassette files (merged)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="port to listen on (default 8765)")
    parser.add_argument("--log-level", default="info", help="uvicorn and replay log level")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cassette = load_many(list(args.cassettes))
    logger.info("replay server: %d turns on http://%s:%d/v1", len(cassette), args.host, args.port)
    uvicorn.run(create_app(cassette), host=args.host, port=args.port, log_level=args.log_level.lower())


if __name__ == "__main__":
    main()
