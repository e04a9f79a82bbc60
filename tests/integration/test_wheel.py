"""The wheel carries what an installed ``kriptik`` reads at run time: the web UI and the examples.

Built from a copy of the working tree (setuptools' in-tree ``build/`` would otherwise keep files of
earlier builds). Installing the wheel in a fresh virtual environment and running ``kriptik demo`` from
outside the repository is checked by hand: it takes minutes.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SKIP = shutil.ignore_patterns(
    ".git", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "node_modules", "tests", "docs"
)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_wheel_ships_the_web_ui_and_the_examples(tmp_path: Path) -> None:
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, symlinks=True, ignore=SKIP)
    out = tmp_path / "dist"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "-q", "-w", str(out)],
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = out.glob("kriptik_fleet-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())

    ui = {f"serve/static/{p.name}" for p in (ROOT / "serve" / "static").iterdir() if p.is_file()}
    assert {"serve/static/index.html", "serve/static/app.js", "serve/static/style.css"} <= ui
    examples = {
        f"coordinator/examples/{p.relative_to(ROOT / 'examples')}"
        for p in [ROOT / "examples" / "README.md", *(ROOT / "examples").glob("*/*.yaml")]
    }
    assert {
        "coordinator/examples/intents/hello-calc.yaml",
        "coordinator/examples/cassettes/hello-calc.yaml",
    } <= examples
    assert ui | examples <= names, sorted((ui | examples) - names)
    assert {"coordinator/resources.py", "serve/cli.py"} <= names
    assert not any(n.startswith(("tests/", "examples/")) for n in names), "only the packages ship"
