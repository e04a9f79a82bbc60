"""The ``kriptik`` command line (typer + rich)."""

from __future__ import annotations

import logging

import typer

app = typer.Typer(help="KripTik Fleet: sandboxed agent fleets that build apps.", no_args_is_help=True)


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at INFO level.")) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )


@app.command()
def demo(
    sandboxes: int = typer.Option(3, min=1, max=16, help="How many sandboxes to start."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object as the last line."),
) -> None:
    """Run the main job offline: a warm proxy pool, real sandboxes, a program in each, snapshot, restore."""
    from serve.demo import run_demo

    raise typer.Exit(run_demo(sandboxes=sandboxes, as_json=json_output))


@app.command("sandbox-bench")
def sandbox_bench() -> None:
    """Measure sandbox create/exec/snapshot latencies (same as ``python -m bench.sandbox``)."""
    from bench.sandbox import main as bench_main

    bench_main()


def _register_commands() -> None:
    from serve.cli_commands import register

    register(app)


_register_commands()
