"""One-line error messages from validation errors (a user's bad input gets one line naming each field)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol


class HasErrors(Protocol):
    """What `problems` reads: pydantic's ``ValidationError`` (``errors()`` lists each failed field)."""

    def errors(self) -> Iterable[Mapping[str, Any]]:
        """One mapping per problem, with its location ``loc`` and message ``msg``."""
        ...


def problems(error: HasErrors) -> str:
    """``field.sub: message; other: message`` for every problem of ``error`` (pydantic's ``Value error, `` cut)."""
    return "; ".join(
        f"{'.'.join(str(part) for part in item['loc'])}: {str(item['msg']).removeprefix('Value error, ')}"
        for item in error.errors()
    )
