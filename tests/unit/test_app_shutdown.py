"""The API app closes what it opened when its server shuts it down (Serve runs the ASGI lifespan of a replica it stops)."""

from __future__ import annotations

from pathlib import Path

from coordinator.store.store import Store
from serve.app import ApiSettings, create_app
from serve.control_port import MemoryControl


class RecordingBus:
    def __init__(self) -> None:
        self.closed_with: list[float] = []

    async def aclose(self, flush_timeout: float) -> None:
        self.closed_with.append(flush_timeout)


async def test_the_apps_shutdown_closes_the_bus_its_streams_opened(tmp_path: Path) -> None:
    bus = RecordingBus()
    with Store(tmp_path / "store.db") as store:
        app = create_app(MemoryControl(), lambda: bus, store, ApiSettings())  # type: ignore[arg-type,return-value]
        async with app.router.lifespan_context(app):
            app.state.bus = bus  # what the first SSE stream makes
        assert bus.closed_with == [1.0] and app.state.bus is None
        async with app.router.lifespan_context(app):  # no stream, no bus: nothing to close
            pass
        assert bus.closed_with == [1.0]
