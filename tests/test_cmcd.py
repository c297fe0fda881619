"""CMCD (CTA-5004) as players send it: parsed exactly, and a session decided from it alone."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st

from abr_server import cmcd
from abr_server.main import create_app
from abr_server.settings import Settings
from simulator.video import Video

VIDEO = Video.builtin()


def test_payloads_parse_to_numbers_strings_tokens_and_bare_booleans() -> None:
    text = 'br=3200,bl=21300,bs,d=4004,mtp=25400,ot=v,sf=d,sid="6e2f-1a,\\"x\\"",cid="envivio",su,pr=1.25'
    assert cmcd.parse([text]) == {
        "br": 3200, "bl": 21300, "bs": True, "d": 4004, "mtp": 25400, "ot": "v", "sf": "d",
        "sid": '6e2f-1a,"x"', "cid": "envivio", "su": True, "pr": 1.25,
    }  # fmt: skip


def test_headers_and_query_combine_and_the_query_wins() -> None:
    headers = {"cmcd-object": "br=750,d=4000,ot=v", "cmcd-request": "bl=8000,mtp=1200", "cmcd-session": 'sid="s1"'}
    assert cmcd.collect({"CMCD": "bl=9000"}, headers) == {
        "br": 750,
        "d": 4000,
        "ot": "v",
        "bl": 9000,
        "mtp": 1200,
        "sid": "s1",
    }


@pytest.mark.parametrize(
    ("text", "problem"),
    [('sid="open', "not closed"), ("Br=1", "is not a key"), ("br=1e3", "not a number, string or token"),
     ("x" * 5000, "at most 4096")],
)  # fmt: skip
def test_unreadable_payloads_are_named(text: str, problem: str) -> None:
    with pytest.raises(cmcd.CmcdError, match=problem):
        cmcd.parse([text])


KEYS = st.from_regex(r"[a-z]{1,4}", fullmatch=True)
VALUES = st.one_of(st.integers(0, 10**9), st.text(alphabet='abc ,=\\"', max_size=8))


@given(st.dictionaries(KEYS, VALUES, max_size=6))
def test_any_encoded_payload_parses_back(data: dict[str, int | str]) -> None:
    def encode(value: int | str) -> str:
        return str(value) if isinstance(value, int) else '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'

    assert cmcd.parse([",".join(f"{k}={encode(v)}" for k, v in data.items())]) == data


def test_the_nearest_rung_is_the_level() -> None:
    assert [cmcd.level_for(kbps, VIDEO) for kbps in (0, 300, 700, 1199, 4300, 9000)] == [0, 0, 1, 2, 5, 5]


def test_the_first_request_s_throughput_is_the_session_s_prior() -> None:
    data = cmcd.parse(['br=750,bl=0,mtp=2400,ot=v,sid="p"'])
    assert cmcd.to_report(data, 0, VIDEO, None).prior_throughput_kbps == 2400.0
    assert cmcd.to_report(data, 1, VIDEO, None).prior_throughput_kbps is None


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(create_app(Settings(telemetry_db=None, max_wait_ms=0.5))) as c:  # type: ignore[call-arg]
        yield c


def test_a_session_is_decided_from_cmcd_alone(client: TestClient) -> None:
    level, answers = 1, []
    for _ in range(VIDEO.n_chunks):
        payload = f'br={VIDEO.bitrates_kbps[level]},bl=12000,mtp=3000,ot=v,sid="p-1"'
        reply = client.get("/v1/cmcd/decision", params={"CMCD": payload})
        assert reply.status_code == 200, reply.text
        answers.append(reply.json())
        level = reply.json()["quality"]
    assert [a["for_index"] for a in answers] == list(range(1, VIDEO.n_chunks + 1))  # indices counted per session
    assert [a["end_of_video"] for a in answers] == [False] * (VIDEO.n_chunks - 1) + [True]
    headers = {"CMCD-Request": "bl=2000,mtp=800", "CMCD-Object": "br=1850,ot=v", "CMCD-Session": 'sid="p-2"'}
    assert client.post("/v1/cmcd/decision", headers=headers).json()["for_index"] == 1


def _ask(client: TestClient, payload: str) -> int:
    reply = client.get("/v1/cmcd/decision", params={"CMCD": payload})
    return reply.status_code


def test_non_video_objects_get_nothing_and_missing_keys_are_named(client: TestClient) -> None:
    assert _ask(client, 'ot=a,br=128,bl=1,mtp=9,sid="a"') == 204
    reply = client.get("/v1/cmcd/decision", params={"CMCD": 'br=750,ot=v,sid="a"'})
    assert reply.status_code == 422
    assert "bl, mtp" in reply.text
    reply = client.get("/v1/cmcd/decision", params={"CMCD": "br=750,bl=100,mtp=900"})
    assert reply.status_code == 422
    assert "needs sid" in reply.text
    assert client.get("/v1/cmcd/decision").status_code == 422
    assert len(client.app.state.service.store) == 0  # type: ignore[attr-defined]


def test_cmcd_headers_pass_the_cors_preflight(client: TestClient) -> None:
    reply = client.options("/v1/cmcd/decision", headers={
        "origin": "https://player.example", "access-control-request-method": "POST",
        "access-control-request-headers": "cmcd-request, cmcd-object, cmcd-session",
    })  # fmt: skip
    assert reply.status_code == 200
    assert "cmcd-request" in reply.headers["access-control-allow-headers"].lower()
