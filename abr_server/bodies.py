"""Request bodies: raw bytes to a validated model, or a 4xx answer, the same way on every endpoint.

Every endpoint that takes a JSON body (the v1 decision on its fast path and through FastAPI, the
Pensieve endpoint) goes through `parse_body`, so a body is refused for the same reason with the same
one-line message whichever code path answers it. The checks come in the order of their cost and before
anything recursive looks at the bytes:

1. size (``ABR_MAX_BODY_BYTES``; the body-size middleware refuses larger bodies before they are read,
   this is the same limit for callers that are not behind it): 413;
2. empty body: 422, like a missing required field;
3. UTF-8 (RFC 8259 JSON is UTF-8): 422;
4. nesting deeper than `MAX_DEPTH` arrays or objects, and numbers with more than `MAX_NUMBER_DIGITS`
   digits in a row: 422. This is a linear scan; recursive parsers (the standard library's, FastAPI's)
   overflow the stack on deep nesting, and CPython refuses to convert integers of more than 4300
   digits, both of which used to end as 500s;
5. the JSON itself and the model's fields (strict types, bounds, consistency): pydantic, 422.

Every 422 has FastAPI's validation shape, ``{"detail": [{"loc": [...], "msg": "...", "type": "..."}]}``,
without echoing the input; the 413 is ``{"detail": "request body too large"}`` as the middleware's.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar, cast

import numpy as np
from fastapi import HTTPException
from pydantic import TypeAdapter, ValidationError

from abr_server.schemas import UNPROCESSABLE

T = TypeVar("T")

#: Deepest nesting of arrays and objects accepted (the deepest valid body has 2 levels).
MAX_DEPTH = 32
#: Longest run of digits accepted in a number (2**31 has 10, a float's shortest repr at most 17).
MAX_NUMBER_DIGITS = 64
TOO_LARGE = "request body too large"
PAYLOAD_TOO_LARGE = 413

_LONG_DIGITS = re.compile(rb"\d{%d,}" % (MAX_NUMBER_DIGITS + 1))
# A JSON string, or the rest of the body after an unterminated quote. It never fails once it starts,
# so substituting it is linear even on bodies made of quotes and backslashes.
_STRING = re.compile(rb'"(?:[^"\\]+|\\.)*"?', re.DOTALL)
_NOT_BRACKET = re.compile(rb"[^\[\]{}]+")


class BodyError(HTTPException):
    """A request body refused: ``status_code`` 413 or 422, ``detail`` ready to send as ``{"detail": ...}``."""

    def __init__(self, status_code: int, detail: str | list[dict[str, Any]]) -> None:
        super().__init__(status_code, detail=detail)

    @property
    def message(self) -> str:
        """The problem in one line (the first one if there are several)."""
        if isinstance(self.detail, str):
            return self.detail
        first = self.detail[0]
        where = ".".join(str(part) for part in first["loc"])
        return f"{where}: {first['msg']}"


def _invalid(msg: str, kind: str = "json_invalid", loc: tuple[str | int, ...] = ()) -> BodyError:
    return BodyError(UNPROCESSABLE, [{"loc": ["body", *loc], "msg": msg, "type": kind}])


def scan_problem(raw: bytes) -> str | None:
    """Why ``raw`` is too deep or holds too long a number for a parser to see it, or None (a linear scan)."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH and _LONG_DIGITS.search(raw) is None:
        return None  # the common case: two scans in C, nothing to look at more closely
    text = _STRING.sub(b'""', raw)  # strings can neither nest nor hold numbers
    if _LONG_DIGITS.search(text) is not None:
        return f"a number has more than {MAX_NUMBER_DIGITS} digits"
    brackets = np.frombuffer(_NOT_BRACKET.sub(b"", text), dtype=np.uint8)
    if brackets.size > MAX_DEPTH:
        opens = (brackets == ord("[")) | (brackets == ord("{"))
        if int(np.cumsum(np.where(opens, 1, -1)).max()) > MAX_DEPTH:
            return f"JSON nested deeper than {MAX_DEPTH} levels of arrays and objects"
    return None


_ADAPTERS: dict[Any, TypeAdapter[Any]] = {}


def _adapter(target: Any) -> TypeAdapter[Any]:
    adapter = _ADAPTERS.get(target)
    if adapter is None:
        adapter = _ADAPTERS[target] = TypeAdapter(target)
    return adapter


def parse_body(raw: bytes, target: type[T], max_bytes: int) -> T:
    """``raw`` (a request body) validated as ``target`` (a pydantic model or any type pydantic validates).

    Raises `BodyError` (413 or 422) for a body that is too large, empty, not UTF-8, too deeply nested,
    holds a number with too many digits, is not JSON or does not validate as ``target``.
    """
    if len(raw) > max_bytes:
        raise BodyError(PAYLOAD_TOO_LARGE, TOO_LARGE)
    if not raw:  # as FastAPI: a missing body is a missing field, not bad JSON
        raise _invalid("Field required", "missing")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise _invalid(f"body is not UTF-8 (byte {err.start})") from None
    problem = scan_problem(raw)
    if problem is not None:
        raise _invalid(problem)
    try:
        return cast(T, _adapter(target).validate_json(raw))
    except ValidationError as err:
        raise _refused(err) from None
    except RecursionError:  # unreachable after the scan; a 422 rather than a 500 if a parser changes
        raise _invalid(f"JSON nested deeper than {MAX_DEPTH} levels of arrays and objects") from None


def validate_parsed(data: Any, target: type[T]) -> T:
    """``data`` (a body `parse_body` already parsed) validated as ``target``; `BodyError` 422 if it fails."""
    try:
        return cast(T, _adapter(target).validate_python(data))
    except ValidationError as err:
        raise _refused(err) from None


def _refused(err: ValidationError) -> BodyError:
    detail = [{"loc": ["body", *e["loc"]], "msg": e["msg"], "type": e["type"]} for e in err.errors()]
    return BodyError(UNPROCESSABLE, detail)
