"""Cassettes: recorded assistant turns keyed by (role, task, turn), in YAML meant to be written by hand.

Format version 1 (docs/cassettes.md has a complete example)::

    version: 1
    meta: {note: anything}          # optional, free-form, ignored by replay
    turns:
      - role: planner               # TurnKey.role
        task: plan                  # TurnKey.task
        turn: 0                     # TurnKey.turn, from 0 within (role, task)
        text: "the answer"          # optional
        tool_calls:                 # optional
          - name: write_file
            arguments: {path: app.py, content: "print(1)"}
            id: call_1              # optional; replay makes "{role}:{task}:{turn}:{i}"
        usage: {input_tokens: 10, output_tokens: 5, cost_usd: 0.0}   # optional
        stop_reason: tool_use       # optional; tool_use if there are calls, else end_turn
        model: claude-sonnet-4-5    # optional

A key twice in one file, or twice with different answers across merged files, is an error; so is a
YAML mapping with a repeated field (PyYAML would silently keep the last one).
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from sandbox_agents.errors import LLMConfigError
from sandbox_agents.llm.base import AssistantTurn, ToolCall, TurnKey, Usage

logger = logging.getLogger(__name__)

CASSETTE_VERSION = 1
"""The format version this code reads and writes; a file of any other version is refused."""


class CassetteFormatError(LLMConfigError):
    """A cassette file is unreadable, invalid, of another version, or conflicts with another cassette."""

    def __init__(self, message: str, *, source: str = "", duplicates: list[TurnKey] | None = None) -> None:
        super().__init__(message, provider="replay")
        self.source = source
        self.duplicates = duplicates or []


class CassetteToolCall(BaseModel):
    """A recorded tool call; ``id`` may be left out, replay then derives a deterministic one."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    """Tool name, as in the ToolSpec the agent offered."""
    arguments: dict[str, Any] = Field(default_factory=dict)
    """The call's arguments (a YAML mapping)."""
    id: str | None = None
    """Call id; ``"{role}:{task}:{turn}:{index}"`` when absent."""


class CassetteTurn(BaseModel):
    """One recorded answer and the key it answers."""

    model_config = ConfigDict(extra="forbid")

    role: str = Field(min_length=1)
    """Who asked (``planner``, ``agent:backend:0``…)."""
    task: str = Field(min_length=1)
    """The task id the turn belongs to."""
    turn: int = Field(ge=0)
    """Index of the turn within (role, task), from 0."""
    text: str = ""
    """The assistant's text."""
    tool_calls: list[CassetteToolCall] = Field(default_factory=list)
    """The calls the assistant made."""
    usage: Usage | None = None
    """Tokens and cost as recorded; zero when absent."""
    stop_reason: Literal["end_turn", "tool_use", "max_tokens", "other"] | None = None
    """Why the model stopped; derived from ``tool_calls`` when absent."""
    model: str | None = None
    """The model that answered, as recorded."""

    @property
    def key(self) -> TurnKey:
        return TurnKey(role=self.role, task=self.task, turn=self.turn)

    def to_assistant_turn(self, default_model: str = "replay") -> AssistantTurn:
        """The turn as a provider answer, with deterministic ids for calls recorded without one."""
        prefix = f"{self.role}:{self.task}:{self.turn}"
        calls = [
            ToolCall(id=c.id or f"{prefix}:{i}", name=c.name, arguments=c.arguments)
            for i, c in enumerate(self.tool_calls)
        ]
        stop = self.stop_reason or ("tool_use" if calls else "end_turn")
        usage = self.usage.model_copy() if self.usage else Usage()
        return AssistantTurn(
            text=self.text, tool_calls=calls, usage=usage, stop_reason=stop, model=self.model or default_model
        )

    @classmethod
    def from_assistant_turn(cls, key: TurnKey, turn: AssistantTurn) -> CassetteTurn:
        """Record a provider answer under its key."""
        calls = [CassetteToolCall(name=c.name, arguments=c.arguments, id=c.id) for c in turn.tool_calls]
        return cls(
            role=key.role,
            task=key.task,
            turn=key.turn,
            text=turn.text,
            tool_calls=calls,
            usage=turn.usage,
            stop_reason=turn.stop_reason,
            model=turn.model or None,
        )


class Cassette(BaseModel):
    """A set of recorded turns, at most one per key."""

    model_config = ConfigDict(extra="forbid")

    version: int = CASSETTE_VERSION
    """Format version; only 1 exists."""
    meta: dict[str, Any] = Field(default_factory=dict)
    """Free-form notes (who recorded it, with which model, when); replay ignores them."""
    turns: list[CassetteTurn] = Field(default_factory=list)
    """The recorded turns, in any order."""

    _index: dict[TurnKey, CassetteTurn] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> Cassette:
        if self.version != CASSETTE_VERSION:
            raise ValueError(f"unsupported cassette version {self.version}; this code reads version {CASSETTE_VERSION}")
        index: dict[TurnKey, CassetteTurn] = {}
        duplicates: list[TurnKey] = []
        for entry in self.turns:
            if entry.key in index and entry.key not in duplicates:
                duplicates.append(entry.key)
            index[entry.key] = entry
        if duplicates:
            names = ", ".join(f"(role={k.role!r}, task={k.task!r}, turn={k.turn})" for k in duplicates)
            raise ValueError(f"duplicate turn keys: {names}")
        self._index = index
        return self

    # --- lookup --------------------------------------------------------------------------

    def lookup(self, key: TurnKey) -> CassetteTurn | None:
        """The recorded turn for ``key``, or ``None``."""
        return self._index.get(key)

    def keys(self) -> list[TurnKey]:
        """Every recorded key, sorted."""
        return sorted(self._index, key=_sort_key)

    def __len__(self) -> int:
        return len(self._index)

    def put(self, entry: CassetteTurn) -> bool:
        """Add or replace the turn of ``entry.key``; returns whether it replaced one (a re-recording)."""
        replaced = self._index.get(entry.key)
        if replaced is not None:
            self.turns.remove(replaced)
        self.turns.append(entry)
        self._index[entry.key] = entry
        return replaced is not None

    # --- files ---------------------------------------------------------------------------

    @classmethod
    def loads(cls, text: str, *, source: str = "<string>") -> Cassette:
        """Parse and validate a cassette from YAML text.

        Raises:
            CassetteFormatError: Bad YAML, a repeated field, an invalid entry, duplicate keys or another version.
        """
        try:
            data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
        except yaml.YAMLError as exc:
            raise CassetteFormatError(f"{source}: not valid YAML: {exc}", source=source) from exc
        if not isinstance(data, dict):
            raise CassetteFormatError(f"{source}: a cassette is a mapping with 'version' and 'turns'", source=source)
        if "version" not in data:
            # A file must say which format it is in, so that a later version can never be misread.
            raise CassetteFormatError(f"{source}: missing 'version: {CASSETTE_VERSION}'", source=source)
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            dups = _duplicates_of(data)
            raise CassetteFormatError(f"{source}: invalid cassette: {exc}", source=source, duplicates=dups) from exc

    @classmethod
    def load(cls, path: str | Path) -> Cassette:
        """Read and validate a cassette file (see :meth:`loads`)."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise CassetteFormatError(f"cannot read cassette {path}: {exc}", source=str(path)) from exc
        return cls.loads(text, source=str(path))

    def dumps(self) -> str:
        """The cassette as YAML: turns sorted by key, multi-line text as literal blocks, for readable diffs."""
        data: dict[str, Any] = {"version": self.version}
        if self.meta:
            data["meta"] = self.meta
        data["turns"] = [_entry_dict(t) for t in sorted(self.turns, key=lambda t: _sort_key(t.key))]
        return yaml.dump(data, Dumper=_BlockDumper, sort_keys=False, allow_unicode=True, width=120)

    def save(self, path: str | Path) -> None:
        """Write the cassette atomically: a temporary file beside it, fsync'd, then renamed over it.

        A crash at any point leaves either the old file or the new one, never a torn one.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(self.dumps())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        try:  # make the rename itself durable
            dir_fd = os.open(path.parent, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(dir_fd)
        except OSError:
            pass
        finally:
            os.close(dir_fd)


def merge(cassettes: list[Cassette], *, sources: list[str] | None = None) -> Cassette:
    """One cassette holding the turns of several.

    The same key in two cassettes with the same answer is fine (overlapping recordings); with
    different answers it is a conflict, because replay could not say which one is meant.

    Raises:
        CassetteFormatError: Conflicting answers for one key; the message names the keys and sources.
    """
    names = sources or [f"cassette #{i}" for i in range(len(cassettes))]
    merged = Cassette()
    origin: dict[TurnKey, str] = {}
    conflicts: list[str] = []
    conflict_keys: list[TurnKey] = []
    for cassette, source in zip(cassettes, names, strict=True):
        merged.meta.update(cassette.meta)
        for entry in cassette.turns:
            existing = merged.lookup(entry.key)
            if existing is None:
                merged.put(entry)
                origin[entry.key] = source
            elif existing != entry:
                k = entry.key
                conflicts.append(f"(role={k.role!r}, task={k.task!r}, turn={k.turn}) in {origin[k]} and {source}")
                conflict_keys.append(k)
    if conflicts:
        raise CassetteFormatError("conflicting cassette turns: " + "; ".join(conflicts), duplicates=conflict_keys)
    return merged


def load_many(paths: list[str | Path]) -> Cassette:
    """Load several cassette files and merge them (see :func:`merge`)."""
    return merge([Cassette.load(p) for p in paths], sources=[str(p) for p in paths])


# --- YAML details ------------------------------------------------------------------------


def _sort_key(key: TurnKey) -> tuple[str, str, int]:
    return (key.role, key.task, key.turn)


def _entry_dict(entry: CassetteTurn) -> dict[str, Any]:
    """An entry as a plain mapping, leaving out what is empty so that files stay short."""
    data: dict[str, Any] = {"role": entry.role, "task": entry.task, "turn": entry.turn}
    if entry.text:
        data["text"] = entry.text
    if entry.tool_calls:
        data["tool_calls"] = [c.model_dump(exclude_none=True) for c in entry.tool_calls]
    if entry.usage is not None:
        data["usage"] = entry.usage.model_dump()
    if entry.stop_reason is not None:
        data["stop_reason"] = entry.stop_reason
    if entry.model:
        data["model"] = entry.model
    return data


def _duplicates_of(data: dict[str, Any]) -> list[TurnKey]:
    """Duplicate keys of raw cassette data, for the error's ``duplicates`` field (best effort)."""
    seen: set[TurnKey] = set()
    dups: list[TurnKey] = []
    for raw in data.get("turns") or []:
        try:
            key = TurnKey(role=raw["role"], task=raw["task"], turn=raw["turn"])
        except (KeyError, TypeError, ValidationError):
            continue
        if key in seen and key not in dups:
            dups.append(key)
        seen.add(key)
    return dups


class _StrictLoader(yaml.SafeLoader):
    """A safe loader that refuses a mapping with a repeated field instead of keeping the last one."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark, f"found duplicate field {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


class _BlockDumper(yaml.SafeDumper):
    """A safe dumper that writes multi-line strings as ``|`` blocks, as a person would."""


def _represent_str(dumper: _BlockDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _represent_str)
