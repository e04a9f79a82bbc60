"""Arguments that cross an actor boundary: a model passes as it is, a dict is validated into one.

Callers of an actor may hand it a pydantic model or its dict form (what a model becomes
between processes); either way the actor works with the model, and bad input is refused
with our own :class:`~sandbox_agents.errors.InvalidInputError` naming the argument.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel

from sandbox_agents.errors import InvalidInputError

M = TypeVar("M", bound=BaseModel)


def validated_arg(model: type[M], value: M | Any, field: str) -> M:
    """``value`` as a ``model``.

    Raises:
        InvalidInputError: ``value`` is not a valid ``model`` (``field`` names the argument).
    """
    if isinstance(value, model):
        return value
    try:
        return model.model_validate(value)
    except ValueError as exc:
        raise InvalidInputError(f"invalid {field}: {exc}", field=field) from exc
