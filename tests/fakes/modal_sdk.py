"""The Modal fake as an importable SDK module, for code that imports the SDK by name in other processes.

A build's sandboxes are created inside Ray workers (proxies of the fleet, the merge gate and the
preview), each from a backend config dict; none can be handed a :class:`FakeModal` object. With
``ModalBackendConfig(sdk_module="tests.fakes.modal_sdk")`` each of them imports this module
instead of ``modal``: its attributes (``Sandbox``, ``Image``, ``App``, ``Client``, ``Secret``,
``Tunnel``, ``exception``, ``__version__``) are those of one FakeModal per process, rooted at
``KRIPTIK_HOME`` (records under ``KRIPTIK_HOME/fake-modal``). All of them share that root's
sandboxes, images, apps and call log, as clients of one Modal account do; a test reads them with
``FakeModal(kriptik_home)``.
"""

from __future__ import annotations

import functools
from typing import Any

from sandbox_agents.settings import get_settings
from tests.fakes.fake_modal import FakeModal


@functools.cache
def fake() -> FakeModal:
    """This process's FakeModal, on ``KRIPTIK_HOME``."""
    return FakeModal(get_settings().home())


def __getattr__(name: str) -> Any:
    if name.startswith("_") and name != "__version__":  # import machinery probes (__path__…): a plain module
        raise AttributeError(name)
    return getattr(fake(), name)
