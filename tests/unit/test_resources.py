"""Package data found through importlib.resources (coordinator.resources, serve's web UI)."""

from __future__ import annotations

from importlib.resources import files

from coordinator.contracts import load_contract
from coordinator.resources import examples_dir


def test_examples_dir_holds_each_example_intent_with_its_cassette() -> None:
    root = examples_dir()
    intents = {p.stem for p in (root / "intents").glob("*.yaml")}
    assert intents >= {"hello-calc", "todo-fullstack"}
    for name in intents:
        assert (root / "cassettes" / f"{name}.yaml").is_file(), name
        assert load_contract(root / "intents" / f"{name}.yaml").success_criteria
    assert (root / "README.md").is_file()


def test_web_ui_files_are_found_in_the_serve_package() -> None:
    static = files("serve") / "static"
    assert {"index.html", "app.js", "style.css"} <= {p.name for p in static.iterdir()}
