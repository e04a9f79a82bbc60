"""The Modal backend: the sandbox contract mapped onto Modal Sandboxes (the optional ``modal`` SDK, 1.6).

:class:`ModalBackend` and :class:`ModalSandbox` (:mod:`.backend`, with their file and exec
methods in :mod:`.files` and :mod:`.exec`) reach Modal only through the SDK module they are
given or import on first use, so importing this package never imports ``modal``.
:mod:`.image` defines the image every sandbox runs (plain data with a stable digest),
:mod:`.support` translates SDK errors and holds credentials and tag helpers, and
:mod:`.deploy` is the deploy script (``python -m sandbox_agents.backends.modal.deploy``); the
script is not imported here, so that ``-m`` runs it fresh. See docs/modal.md.
"""

from sandbox_agents.backends.modal.backend import ModalBackend, ModalSandbox
from sandbox_agents.backends.modal.image import IMAGE_DEFINITIONS, build_image, image_definition, image_digest
from sandbox_agents.backends.modal.support import (
    find_credentials,
    missing_credentials_message,
    translate_modal_error,
)

__all__ = [
    "IMAGE_DEFINITIONS",
    "ModalBackend",
    "ModalSandbox",
    "build_image",
    "find_credentials",
    "image_definition",
    "image_digest",
    "missing_credentials_message",
    "translate_modal_error",
]
