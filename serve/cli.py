"""The ``kriptik`` command line (typer + rich)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import typer

from serve.cli_commands import RAY_AUTH_ENV

app = typer.Typer(help="KripTik Fleet: sandboxed agent fleets that build apps.", no_args_is_help=True)


@app.callback()
def main(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at INFO level."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks behind error messages (KRIPTIK_DEBUG=1)."),
) -> None:
    if debug:
        os.environ["KRIPTIK_DEBUG"] = "1"
    # Ray reads RAY_AUTH_MODE when it is imported, and every command imports it later than this: a
    # value set after the import is not seen, and the token-authenticated head refuses the driver.
    for key, value in RAY_AUTH_ENV.items():
        os.environ.setdefault(key, value)
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )


@app.command()
def demo(
    example: str = typer.Option(
        "todo-fullstack", help="The example to build: hello-calc, todo-fullstack or kanban-vite (npm registry)."
    ),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object as the last line."),
    keep: bool = typer.Option(False, "--keep", help="Keep the preview running until Ctrl-C."),
    serve_api: bool = typer.Option(False, "--serve", help="Also start the HTTP API and web UI to watch the build."),
    port: int = typer.Option(8000, help="Port of the API and web UI with --serve."),
    home: str = typer.Option("", help="State directory to use and keep (default: a temp dir, removed)."),
    sandboxes_only: bool = typer.Option(False, "--sandboxes-only", help="Only exercise the sandbox fleet."),
    sandboxes: int = typer.Option(3, min=1, max=16, help="How many sandboxes --sandboxes-only starts."),
) -> None:
    """Run the main job offline: an example app built by the fleet, replayed from its cassette."""
    from serve.demo import DemoOptions, run_demo, run_sandbox_demo
    from serve.demo_build import EXAMPLES

    if sandboxes_only:
        raise typer.Exit(run_sandbox_demo(sandboxes=sandboxes, as_json=json_output))
    if example not in EXAMPLES:
        raise typer.BadParameter(f"one of {', '.join(EXAMPLES)}", param_hint="--example")
    options = DemoOptions(
        example=example, keep=keep, serve_api=serve_api, api_port=port, home=Path(home) if home else None
    )
    raise typer.Exit(run_demo(options, as_json=json_output))


@app.command("sandbox-bench")
def sandbox_bench() -> None:
    """Measure sandbox create/exec/snapshot latencies (same as ``python -m bench.sandbox``)."""
    from bench.sandbox import main as bench_main

    bench_main()


def _register_commands() -> None:
    from serve.cli_commands import register
    from serve.cli_notify import register_notify

    register(app)
    register_notify(app)


_register_commands()
