"""Data files that ship inside the package, found through :mod:`importlib.resources`.

The example builds (intent contracts, the cassettes that replay them, a README) live in the
repository's top-level ``examples/`` for people to read and edit; ``coordinator/examples`` is a link
to that folder, so a source checkout and an editable install read it in place, and a wheel carries a
copy (``package-data`` in ``pyproject.toml``). They sit on this floor because Control's admission
(:mod:`coordinator.control`) resolves an example's name to its contract and cassette.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def examples_dir() -> Path:
    """The examples' folder: ``intents/{name}.yaml``, ``cassettes/{name}.yaml`` and ``README.md``.

    Raises:
        FileNotFoundError: The package was installed without its data files, or somewhere (a zip)
            where they have no path on disk.
    """
    root = files("coordinator") / "examples"
    if not isinstance(root, Path) or not root.is_dir():
        raise FileNotFoundError(f"the example builds are not installed with the package (looked in {root})")
    return root
