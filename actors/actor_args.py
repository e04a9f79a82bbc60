"""Arguments that cross an actor boundary: a model passes as it is, a dict is validated into one.

Callers of an actor may hand it a pydantic model or its dict form (what a model becomes
between processes); either way the actor works with the model, and bad input is refused
with our own :class:`~sandbox_agents.errors.InvalidInputError` naming the argument. Every
actor validates its config and its arguments through :func:`validated_arg`.
"""

from __future__ import annotations

from typing import Any, TypeVar, overload

from pydantic import BaseModel, TypeAdapter

from sandbox_agents.errors import InvalidInputError

M = TypeVar("M", bound=BaseModel)

_ADAPTERS: dict[int, tuple[Any, TypeAdapter[Any]]] = {}


@overload
def validated_arg(model: type[M], value: Any, field: str) -> M: ...


@overload
def validated_arg(model: Any, value: Any, field: str) -> Any: ...


def validated_arg(model: Any, value: Any, field: str) -> Any:
    """``value`` as a ``model``: a pydantic model class, or any type pydantic validates (a tagged union).

    A JSON string is accepted for a model class too (what some callers send across Ray).

    Raises:
        InvalidInputError: ``value`` is not a valid ``model`` (``field`` names the argument).
    """
    try:
        if isinstance(model, type) and issubclass(model, BaseModel):
            if isinstance(value, model):
                return value
            if isinstance(value, str | bytes):
                return model.model_validate_json(value)
            return model.model_validate(value)
        return _adapter(model).validate_python(value)
    except ValueError as exc:
        raise InvalidInputError(f"invalid {field}: {exc}", field=field) from exc


def _adapter(kind: Any) -> TypeAdapter[Any]:
    """One TypeAdapter per type (building one costs milliseconds)."""
    known = _ADAPTERS.get(id(kind))
    if known is None:
        known = _ADAPTERS[id(kind)] = (kind, TypeAdapter(kind))  # the type is kept so that its id stays its own
    return known[1]
