"""Cassettes: the hand-written YAML format, validation, duplicates, merging, atomic saves."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from sandbox_agents.errors import LLMConfigError
from sandbox_agents.llm.base import AssistantTurn, ToolCall, TurnKey, Usage
from sandbox_agents.llm.cassette import Cassette, CassetteFormatError, CassetteTurn, load_many, merge

HAND_WRITTEN = textwrap.dedent(
    """\
    version: 1
    meta:
      note: written by hand
    turns:
      - role: planner
        task: plan
        turn: 0
        text: |
          Two components:
          api and web.
      - role: agent:backend:0
        task: t1
        turn: 0
        text: Writing the app.
        tool_calls:
          - name: write_file
            arguments: {path: app.py, content: "print('hi')"}
          - name: exec
            arguments: {cmd: python app.py}
            id: my-id
        usage: {input_tokens: 12, output_tokens: 7, cost_usd: 0.001}
      - role: agent:backend:0
        task: t1
        turn: 1
        text: Done.
        model: claude-test
    """
)


def key(role: str, task: str, turn: int) -> TurnKey:
    return TurnKey(role=role, task=task, turn=turn)


def test_hand_written_cassette_loads() -> None:
    cassette = Cassette.loads(HAND_WRITTEN)
    assert len(cassette) == 3 and cassette.meta == {"note": "written by hand"}
    plan = cassette.lookup(key("planner", "plan", 0))
    assert plan is not None and plan.text == "Two components:\napi and web.\n"
    assert cassette.lookup(key("planner", "plan", 1)) is None

    turn = cassette.lookup(key("agent:backend:0", "t1", 0)).to_assistant_turn()  # type: ignore[union-attr]
    assert turn.stop_reason == "tool_use"
    assert [c.id for c in turn.tool_calls] == ["agent:backend:0:t1:0:0", "my-id"]
    assert turn.tool_calls[0].arguments == {"path": "app.py", "content": "print('hi')"}
    assert turn.usage == Usage(input_tokens=12, output_tokens=7, cost_usd=0.001)
    done = cassette.lookup(key("agent:backend:0", "t1", 1)).to_assistant_turn()  # type: ignore[union-attr]
    assert done.stop_reason == "end_turn" and done.model == "claude-test" and done.usage == Usage()


def test_duplicate_keys_are_an_error_naming_them() -> None:
    text = HAND_WRITTEN + "  - {role: planner, task: plan, turn: 0, text: again}\n"
    with pytest.raises(
        CassetteFormatError, match=r"duplicate turn keys: \(role='planner', task='plan', turn=0\)"
    ) as info:
        Cassette.loads(text, source="dup.yaml")
    assert info.value.duplicates == [key("planner", "plan", 0)]
    assert isinstance(info.value, LLMConfigError) and "dup.yaml" in str(info.value)


def test_repeated_yaml_field_is_an_error() -> None:
    text = "version: 1\nturns:\n  - {role: a, task: b, turn: 0, text: x, text: y}\n"
    with pytest.raises(CassetteFormatError, match="duplicate field 'text'"):
        Cassette.loads(text)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("version: 2\nturns: []\n", "unsupported cassette version 2"),
        ("turns: []\n", "missing 'version: 1'"),
        ("version: 1\nturns:\n  - {role: a, task: b, turn: -1}\n", "turn"),
        ("version: 1\nturns:\n  - {role: a, task: b, turn: 0, answer: x}\n", "answer"),
        ("version: 1\nturns:\n  - {role: a, task: b, turn: 0, tool_calls: [{arguments: {}}]}\n", "name"),
        ("- just a list\n", "a cassette is a mapping"),
        ("version: 1\nturns: [\n", "not valid YAML"),
    ],
)
def test_invalid_cassettes_are_refused(text: str, match: str) -> None:
    with pytest.raises(CassetteFormatError, match=match):
        Cassette.loads(text)


def test_missing_file_is_a_format_error(tmp_path: Path) -> None:
    with pytest.raises(CassetteFormatError, match="cannot read cassette"):
        Cassette.load(tmp_path / "nope.yaml")


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    cassette = Cassette.loads(HAND_WRITTEN)
    path = tmp_path / "sub" / "c.yaml"
    cassette.save(path)
    again = Cassette.load(path)
    assert again.keys() == cassette.keys()
    for k in cassette.keys():
        assert again.lookup(k) == cassette.lookup(k)
    assert "text: |" in path.read_text()  # multi-line text stays readable
    assert [p.name for p in path.parent.iterdir()] == ["c.yaml"]  # no temporary file left behind


def test_save_failure_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.yaml"
    Cassette.loads(HAND_WRITTEN).save(path)
    before = path.read_text()

    def boom(self: Cassette) -> str:
        raise RuntimeError("crash while writing")

    monkeypatch.setattr(Cassette, "dumps", boom)
    with pytest.raises(RuntimeError):
        Cassette().save(path)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.yaml"]


def test_assistant_turn_round_trip() -> None:
    original = AssistantTurn(
        text="hi",
        tool_calls=[ToolCall(id="x1", name="exec", arguments={"cmd": "ls"})],
        usage=Usage(input_tokens=3, output_tokens=4, cost_usd=0.5),
        stop_reason="tool_use",
        model="m",
    )
    entry = CassetteTurn.from_assistant_turn(key("r", "t", 2), original)
    assert entry.to_assistant_turn() == original


def test_merge_combines_and_refuses_conflicts(tmp_path: Path) -> None:
    a = Cassette.loads("version: 1\nturns:\n  - {role: r, task: t, turn: 0, text: A}\n")
    b = Cassette.loads(
        "version: 1\nturns:\n  - {role: r, task: t, turn: 0, text: A}\n  - {role: r, task: t, turn: 1, text: B}\n"
    )
    merged = merge([a, b])
    assert merged.keys() == [key("r", "t", 0), key("r", "t", 1)]  # an identical overlap is no conflict

    c = Cassette.loads("version: 1\nturns:\n  - {role: r, task: t, turn: 1, text: C}\n")
    pa, pb, pc = tmp_path / "a.yaml", tmp_path / "b.yaml", tmp_path / "c.yaml"
    for cas, path in ((a, pa), (b, pb), (c, pc)):
        cas.save(path)
    with pytest.raises(CassetteFormatError, match=r"\(role='r', task='t', turn=1\) in .*b.yaml and .*c.yaml") as info:
        load_many([pa, pb, pc])
    assert info.value.duplicates == [key("r", "t", 1)]
    assert len(load_many([pa, pb])) == 2


def test_put_replaces_a_re_recorded_turn() -> None:
    cassette = Cassette()
    assert cassette.put(CassetteTurn(role="r", task="t", turn=0, text="old")) is False
    assert cassette.put(CassetteTurn(role="r", task="t", turn=0, text="new")) is True
    assert len(cassette.turns) == 1 and cassette.lookup(key("r", "t", 0)).text == "new"  # type: ignore[union-attr]
