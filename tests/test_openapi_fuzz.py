"""Property-based fuzz of the server over its own OpenAPI schema (both decision paths).

Bodies and path parameters are drawn from the schema the server publishes (valid by the schema), from
the schema with every field's value replaced by anything JSON (invalid), and as raw bytes. Every answer
must be below 500, have a status the operation declares, and match the schema declared for it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import jsonschema
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from abr_server.main import create_app
from abr_server.settings import Settings

TOKEN = "fuzz-token"
ANY_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=12,
)
FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _app(fast_path: bool) -> Any:
    return create_app(Settings(telemetry_db=None, fast_path=fast_path, admin_token=TOKEN))  # type: ignore[call-arg]


@pytest.fixture(scope="module", params=[True, False], ids=["fast-path", "fastapi"])
def client(request: pytest.FixtureRequest) -> Iterator[TestClient]:
    with TestClient(_app(request.param)) as c:
        yield c


SPEC: dict[str, Any] = _app(True).openapi()


def _resolved(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with the spec's components attached, so that ``$ref``s resolve."""
    text = json.dumps(schema).replace("#/components/schemas/", "#/$defs/")
    defs = json.loads(json.dumps(SPEC["components"]["schemas"]).replace("#/components/schemas/", "#/$defs/"))
    return {**json.loads(text), "$defs": defs}


def from_schema(schema: dict[str, Any], root: dict[str, Any] | None = None) -> st.SearchStrategy[Any]:
    """Values valid by ``schema`` (the subset of JSON Schema that pydantic emits for these models)."""
    root = schema if root is None else root
    if "$ref" in schema:
        return from_schema(root["$defs"][schema["$ref"].rsplit("/", 1)[-1]], root)
    if "anyOf" in schema:
        return st.one_of([from_schema(option, root) for option in schema["anyOf"]])
    kind = schema.get("type")
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum"))
        high = schema.get("maximum", schema.get("exclusiveMaximum"))
        if kind == "integer":
            low = None if low is None else int(low) + ("exclusiveMinimum" in schema)
            high = None if high is None else int(high) - ("exclusiveMaximum" in schema)
            return st.integers(low, high)
        exclusive = {"exclude_min": "exclusiveMinimum" in schema, "exclude_max": "exclusiveMaximum" in schema}
        return st.floats(low, high, allow_nan=False, allow_infinity=False, **exclusive)
    if kind == "string":
        if "pattern" in schema:
            return st.from_regex(schema["pattern"], fullmatch=True).filter(
                lambda text: schema.get("minLength", 0) <= len(text) <= schema.get("maxLength", 10**9)
            )
        return st.text(min_size=schema.get("minLength", 0), max_size=min(schema.get("maxLength", 20), 20))
    if kind == "array":
        return st.lists(from_schema(schema.get("items", {}), root), min_size=schema.get("minItems", 0),
                        max_size=min(schema.get("maxItems", 8), 8))  # fmt: skip
    if kind == "object":
        properties = schema.get("properties", {})
        required = set(schema.get("required", ()))
        fields = {name: from_schema(sub, root) for name, sub in properties.items()}
        optional = [name for name in properties if name not in required]
        return st.builds(
            lambda base, extra: {**base, **extra},
            st.fixed_dictionaries({name: fields[name] for name in properties if name in required}),
            st.sets(st.sampled_from(optional) if optional else st.nothing()).flatmap(
                lambda names: st.fixed_dictionaries({name: fields[name] for name in names})
            ),
        )
    return ANY_JSON


def _body_schema(path: str, method: str) -> dict[str, Any]:
    return _resolved(SPEC["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"])


def _check(reply: Any, path: str, method: str) -> None:
    """Below 500, a declared status, and the declared schema for it."""
    assert reply.status_code < 500, reply.text
    responses = SPEC["paths"][path][method]["responses"]
    declared = responses.get(str(reply.status_code))
    assert declared is not None, f"{method.upper()} {path} answered an undeclared {reply.status_code}: {reply.text}"
    content = declared.get("content", {}).get("application/json")
    if content is not None and content.get("schema"):
        jsonschema.validate(reply.json(), _resolved(content["schema"]))


def _invalid_variants(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Objects with the schema's field names and arbitrary JSON values, or not objects at all."""
    names = sorted(schema.get("properties", {}))
    return st.dictionaries(st.sampled_from([*names, "junk"]), ANY_JSON, max_size=len(names) + 1) | ANY_JSON


DECISION = "/v1/sessions/{session_id}/decision"
# "." and ".." are valid ids but not path segments a client can send (RFC 3986 removes them).
SESSION_IDS = from_schema(SPEC["paths"][DECISION]["post"]["parameters"][0]["schema"]).filter(
    lambda sid: sid not in (".", "..")
)
DECISION_BODIES = from_schema(_body_schema(DECISION, "post"))


@FUZZ
@given(body=DECISION_BODIES, session=SESSION_IDS)
def test_decision_bodies_valid_by_the_schema(client: TestClient, body: Any, session: str) -> None:
    _check(client.post(f"/v1/sessions/{session}/decision", json=body), DECISION, "post")


@FUZZ
@given(body=_invalid_variants(_body_schema(DECISION, "post")), session=SESSION_IDS)
def test_decision_bodies_invalid(client: TestClient, body: Any, session: str) -> None:
    _check(client.post(f"/v1/sessions/{session}/decision", json=body), DECISION, "post")


@FUZZ
@given(raw=st.binary(max_size=80) | st.text(alphabet='[]{}":,-.0123456789eE truefalsn', max_size=120).map(str.encode))
def test_decision_raw_bytes(client: TestClient, raw: bytes) -> None:
    reply = client.post("/v1/sessions/raw/decision", content=raw, headers={"content-type": "application/json"})
    _check(reply, DECISION, "post")


@FUZZ
@given(body=from_schema(_body_schema("/", "post")) | _invalid_variants(_body_schema("/", "post")))
def test_pensieve_bodies(client: TestClient, body: Any) -> None:
    _check(client.post("/", json=body), "/", "post")


@settings(FUZZ, max_examples=30)
@given(session=SESSION_IDS, version=st.text(max_size=20), token=st.sampled_from([None, TOKEN, "wrong"]))
def test_the_other_operations(client: TestClient, session: str, version: str, token: str | None) -> None:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    _check(client.delete(f"/v1/sessions/{session}"), "/v1/sessions/{session_id}", "delete")
    _check(client.get("/admin/models", headers=headers), "/admin/models", "get")
    if "/" not in version and version not in ("", ".", ".."):
        url = f"/admin/models/{quote(version, safe='')}/activate"
        _check(client.post(url, headers=headers), "/admin/models/{version}/activate", "post")
    _check(client.post("/admin/models/rollback", headers=headers), "/admin/models/rollback", "post")
    for path in ("/healthz", "/readyz", "/metrics", "/player/config.json"):
        _check(client.get(path), path, "get")
