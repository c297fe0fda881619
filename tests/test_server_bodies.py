"""Request bodies: one bounded parser for every endpoint, strict numbers, physical bounds on reports."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from abr_server.bodies import MAX_DEPTH, MAX_NUMBER_DIGITS, BodyError, parse_body, scan_problem
from abr_server.main import create_app
from abr_server.schemas import MAX_DELAY_MS, ChunkReport
from abr_server.settings import Settings
from tests.test_server import report

JSON = {"content-type": "application/json"}
DEEP_OBJECT = ('{"a":' * 10_000 + "1" + "}" * 10_000).encode()
DEEP_ARRAY = ("[" * 30_000 + "]" * 30_000).encode()
LONG_INT = b'{"lastquality": ' + b"9" * 5000 + b"}"


@pytest.fixture(scope="module", params=[True, False], ids=["fast-path", "fastapi"])
def client(request: pytest.FixtureRequest) -> Iterator[TestClient]:
    app = create_app(Settings(telemetry_db=None, fast_path=request.param))  # type: ignore[call-arg]
    with TestClient(app) as c:
        yield c


def test_scan_counts_nesting_outside_strings_only() -> None:
    assert scan_problem(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH) is None
    assert scan_problem(b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1)) is not None
    # many brackets side by side are shallow; brackets and digits inside strings do not count
    assert scan_problem(b"[" + b"[]," * 1000 + b"[]]") is None
    assert scan_problem(b'{"a": "' + b"[{" * 1000 + b'"}') is None
    assert scan_problem(b'{"a": "' + b"9" * 1000 + b'"}') is None
    assert scan_problem(b'["\\"' + b"[" * 40 + b'"]') is None  # an escaped quote does not end the string
    assert "digits" in str(scan_problem(b"[" + b"1" * (MAX_NUMBER_DIGITS + 1) + b"]"))
    assert scan_problem(b"[" + b"1" * MAX_NUMBER_DIGITS + b"]") is None


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**20), 10**20) | st.floats(allow_nan=False) | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=40,
)


def _depth(value: object) -> int:
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    return 0


@settings(max_examples=200, deadline=None)
@given(value=JSON_VALUES, wrap=st.integers(0, 2 * MAX_DEPTH))
def test_parse_body_agrees_with_json_up_to_the_bounds(value: object, wrap: int) -> None:
    wrapped: object = value
    for _ in range(wrap):
        wrapped = [wrapped]
    raw = json.dumps(wrapped).encode()
    if _depth(wrapped) <= MAX_DEPTH:
        assert parse_body(raw, Any, 1 << 20) == json.loads(raw)  # type: ignore[arg-type]
    else:
        with pytest.raises(BodyError) as err:
            parse_body(raw, Any, 1 << 20)  # type: ignore[arg-type]
        assert err.value.status_code == 422
        assert "nested deeper" in err.value.message


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=64) | st.text(alphabet='[]{}"\\:,0123456789 ae', max_size=80).map(str.encode))
def test_parse_body_refuses_garbage_with_a_4xx_only(raw: bytes) -> None:
    problem: BodyError | None = None
    try:
        parse_body(raw, ChunkReport, 1 << 20)
    except BodyError as err:
        problem = err
    if problem is not None:  # anything but a BodyError fails the test
        assert problem.status_code in (413, 422)
        assert problem.message


@pytest.mark.parametrize(("url", "body"), [
    ("/v1/sessions/x/decision", DEEP_OBJECT), ("/v1/sessions/x/decision", DEEP_ARRAY), ("/", DEEP_OBJECT),
    ("/", DEEP_ARRAY), ("/", LONG_INT), ("/v1/sessions/x/decision", LONG_INT), ("/", b"\xff"), ("/", b""),
])  # fmt: skip
def test_hostile_bodies_get_422_on_every_endpoint(client: TestClient, url: str, body: bytes) -> None:
    reply = client.post(url, content=body, headers=JSON)
    assert reply.status_code == 422, reply.text
    assert reply.json()["detail"][0]["loc"][0] == "body"


@pytest.mark.parametrize(("change", "field"), [
    ({"bytes": True}, "bytes"), ({"bytes": "600000"}, "bytes"), ({"bytes": 6e5}, "bytes"),
    ({"index": 1.0}, "index"), ({"quality": "1"}, "quality"), ({"next_chunk_bytes": []}, "next_chunk_bytes"),
    ({"next_chunk_bytes": [1, True, 3, 4, 5, 6]}, "next_chunk_bytes"),
])  # fmt: skip
def test_numbers_are_strict(client: TestClient, change: dict[str, object], field: str) -> None:
    reply = client.post("/v1/sessions/strict/decision", json={**report(), **change})
    assert reply.status_code == 422, reply.text
    assert reply.json()["detail"][0]["loc"][:2] == ["body", field]


def test_a_float_field_takes_an_integer(client: TestClient) -> None:
    reply = client.post("/v1/sessions/ints/decision", json=report(buffer_s=4, request_start_ms=0, end_ms=800))
    assert reply.status_code == 200, reply.text


@pytest.mark.parametrize("change", [
    {"bytes": 2**31, "mtp": 1e-300, "bl": 0, "request_start_ms": None, "end_ms": None},  # infinite delay
    {"mtp": 0.5, "request_start_ms": None, "end_ms": None},  # below 1 kbit/s
    {"request_start_ms": 0.0, "end_ms": MAX_DELAY_MS + 1},  # a download of over an hour
    {"bytes": 2**31, "request_start_ms": 0.0, "end_ms": 0.0},  # 2 GiB in a millisecond
])  # fmt: skip
def test_reports_whose_derived_download_is_not_physical_are_refused(
    client: TestClient, change: dict[str, object]
) -> None:
    body = {k: v for k, v in report(**change).items() if v is not None}
    reply = client.post("/v1/sessions/phys/decision", json=body)
    assert reply.status_code == 422, reply.text
    assert reply.json()["detail"][0]["loc"][0] == "body"


def test_pensieve_derived_download_is_bounded(client: TestClient) -> None:
    body = {"lastquality": 1, "buffer": 3.0, "lastRequest": 1, "lastChunkStartTime": 0.0,
            "lastChunkFinishTime": 0.0, "lastChunkSize": 2**31}  # fmt: skip
    reply = client.post("/", json=body)
    assert reply.status_code == 422, reply.text
    assert "faster than 100000 Mbit/s" in reply.json()["detail"][0]["msg"]


def test_openapi_declares_the_error_answers_and_the_metrics_text(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    decision = paths["/v1/sessions/{session_id}/decision"]["post"]
    assert {"200", "413", "422"} <= set(decision["responses"])
    assert decision["requestBody"]["content"]["application/json"]["schema"]["title"] == "ChunkReport"
    assert {"200", "413", "422"} <= set(paths["/"]["post"]["responses"])
    assert "404" in paths["/v1/sessions/{session_id}"]["delete"]["responses"]
    assert "application/json" not in paths["/metrics"]["get"]["responses"]["200"]["content"]
