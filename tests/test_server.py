"""abr_server through FastAPI's TestClient: both APIs, sessions, validation, fallback, telemetry, models."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from abr_server.main import create_app
from abr_server.metrics import Metrics
from abr_server.registry import ModelRegistry
from abr_server.service import DecisionService
from abr_server.sessions import SessionStore
from abr_server.settings import Settings
from abr_server.telemetry import journal_dir, read_rows
from policy.learned import DEFAULT_MODEL_DIR, DefaultPolicy
from simulator.observation import ObservationBuilder, ObservationSpec
from simulator.video import Video

VIDEO = Video.builtin()
TOKEN = "s3cret"


def report(index: int = 0, quality: int = 1, **extra: object) -> dict[str, object]:
    body: dict[str, object] = {
        "index": index, "quality": quality, "bytes": int(VIDEO.chunk_bytes[quality, index]),
        "request_start_ms": 1000.0 * index, "end_ms": 1000.0 * index + 800.0, "buffer_s": 4.0 + index,
    }  # fmt: skip
    body.update(extra)
    return body


def make_registry(root: Path, versions: tuple[str, ...] = ("v1", "v2")) -> Path:
    for version in versions:
        shutil.copytree(DEFAULT_MODEL_DIR, root / version)
    return root


@pytest.fixture
def app_settings(tmp_path: Path) -> Settings:
    return Settings(telemetry_db=tmp_path / "telemetry.sqlite", admin_token=TOKEN, max_wait_ms=0.5)  # type: ignore[arg-type]


@pytest.fixture
def client(app_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(app_settings)) as c:
        yield c


def test_decision_matches_the_model_on_the_shared_observation(client: TestClient) -> None:
    builder = ObservationBuilder(1, VIDEO, ObservationSpec())
    policy = DefaultPolicy()
    policy.begin(1, VIDEO)
    for index in range(3):
        body = report(index, quality=index)
        reply = client.post("/v1/sessions/player-1/decision", json=body)
        assert reply.status_code == 200, reply.text
        decision = reply.json()
        builder.push(slice(None), quality=[index], buffer_s=[body["buffer_s"]], chunk_bytes=[float(body["bytes"])],
                     delay_ms=[800.0], chunk_index=[index], chunks_remaining=[VIDEO.n_chunks - index - 1],
                     next_chunk_bytes=VIDEO.chunk_bytes[:, index + 1][None, :])  # fmt: skip
        expected = int(policy.select(builder.observation())[0])
        assert decision == {"quality": expected, "bitrate_kbps": VIDEO.bitrates_kbps[expected],
                            "for_index": index + 1, "policy": "learned", "model_version": "default",
                            "end_of_video": False, "video": "default"}  # fmt: skip


def test_last_chunk_ends_the_session(client: TestClient) -> None:
    last = VIDEO.n_chunks - 1
    reply = client.post("/v1/sessions/p/decision", json=report(last, quality=0))
    assert reply.json()["end_of_video"] is True
    assert client.delete("/v1/sessions/p").status_code == 404  # already forgotten


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"end_ms": 10.0, "request_start_ms": 20.0}, "end_ms is before"),
        ({"quality": 9}, "quality"),
        ({"bytes": -5}, "bytes"),
        ({"index": 10_000}, "index"),
        ({"buffer_s": None}, "buffer_s"),
        ({"next_chunk_bytes": [1, 2]}, "next_chunk_bytes"),
        ({"request_start_ms": None, "end_ms": None}, "mtp"),
        ({"prior_throughput_kbps": -1.0}, "prior_throughput_kbps"),
    ],
)
def test_bad_reports_get_422_naming_the_field(client: TestClient, change: dict[str, object], field: str) -> None:
    body = report()
    body.update(change)
    reply = client.post("/v1/sessions/p/decision", json=body)
    assert reply.status_code == 422
    assert field in reply.text


def test_non_finite_numbers_and_oversized_bodies_are_refused(client: TestClient) -> None:
    body = json.dumps(report()).replace("4.0", "NaN")
    reply = client.post("/v1/sessions/p/decision", content=body, headers={"content-type": "application/json"})
    assert reply.status_code == 422
    huge = json.dumps({**report(), "pad": "x" * 100_000})
    assert client.post("/v1/sessions/p/decision", content=huge,
                       headers={"content-type": "application/json"}).status_code == 413  # fmt: skip
    assert client.post("/v1/sessions/bad id!/decision", json=report()).status_code in (404, 422)


def test_cmcd_names_are_accepted(client: TestClient) -> None:
    body = {"index": 0, "quality": 1, "bytes": 500_000, "bl": 6000, "mtp": 4000}
    reply = client.post("/v1/sessions/cmcd/decision", json=body)
    assert reply.status_code == 200, reply.text


def test_pensieve_api(client: TestClient) -> None:
    body = {"lastquality": 1, "buffer": 5.0, "RebufferTime": 0, "lastRequest": 1, "lastChunkStartTime": 1000,
            "lastChunkFinishTime": 1500, "lastChunkSize": 400_000}  # fmt: skip
    reply = client.post("/", json=body)
    assert reply.status_code == 200
    assert reply.text.isdigit()
    assert 0 <= int(reply.text) < VIDEO.n_levels
    body["lastRequest"] = VIDEO.n_chunks
    assert client.post("/", json=body).text == "REFRESH"
    assert client.post("/", json={"pastThroughput": [1, 2]}).text == "0"
    assert client.post("/", content=b"{not json").status_code == 422
    bad = {**body, "lastChunkFinishTime": 10}
    reply = client.post("/", json=bad)
    assert reply.status_code == 422
    assert "lastChunkFinishTime" in reply.text


def test_fallback_when_the_model_fails(client: TestClient) -> None:
    service = client.app.state.service  # type: ignore[attr-defined]

    def broken(*_: object) -> np.ndarray:
        raise RuntimeError("GPU on fire")

    service.batcher.forward = broken
    reply = client.post("/v1/sessions/f/decision", json=report())
    assert reply.status_code == 200
    assert reply.json()["policy"] == "fallback:bba"
    assert reply.json()["quality"] == 0  # BBA below its 5 s reservoir
    assert 'abr_fallbacks_total{reason="model_error"} 1.0' in client.get("/metrics").text


def test_fallback_when_the_model_is_late(tmp_path: Path) -> None:
    settings = Settings(telemetry_db=None, inference_timeout_ms=20, inference_thread=True)

    def slow(*_: object) -> np.ndarray:
        time.sleep(0.2)
        return np.zeros(1, dtype=np.int64)

    with TestClient(create_app(settings)) as client:
        client.app.state.service.batcher.forward = slow  # type: ignore[attr-defined]
        reply = client.post("/v1/sessions/slow/decision", json=report())
        assert reply.json()["policy"] == "fallback:bba"
        assert 'reason="timeout"' in client.get("/metrics").text


def test_telemetry_is_journaled_before_the_answer_and_in_the_database_after(tmp_path: Path) -> None:
    db = tmp_path / "t.sqlite"
    settings = Settings(telemetry_db=db, telemetry_flush_interval_s=3600)  # type: ignore[call-arg]
    with TestClient(create_app(settings)) as client:
        for index in range(3):
            assert client.post("/v1/sessions/t/decision", json=report(index)).status_code == 200
            journaled = [json.loads(line) for f in sorted(journal_dir(db).iterdir()) for line in f.open()]
            assert len(journaled) == index + 1  # on the OS before the answer: survives a crash
            assert journaled[-1][2] == index
        assert read_rows(db) == []  # the writer moves rows every hour in this test...
    rows = read_rows(db)  # ...and at shutdown
    assert [r["chunk_index"] for r in rows] == [0, 1, 2]
    assert rows[0]["session_id"] == "t"
    assert rows[0]["delay_ms"] == 800.0


def test_a_retried_report_gets_the_same_answer_and_is_recorded_once(client: TestClient, app_settings: Settings) -> None:
    first = [client.post("/v1/sessions/r/decision", json=report(i)).json() for i in range(3)]
    again = client.post("/v1/sessions/r/decision", json=report(2))  # the player's retry of chunk 2
    assert again.status_code == 200
    assert again.json() == first[2]
    nxt = client.post("/v1/sessions/r/decision", json=report(3)).json()
    assert nxt["for_index"] == 4
    # The same index with a different report is not a retry (a player restarting, say): it is recorded.
    assert client.post("/v1/sessions/r/decision", json=report(3, buffer_s=1.0)).status_code == 200
    assert app_settings.telemetry_db is not None
    client.app.state.service.telemetry.flush()  # type: ignore[attr-defined]
    assert [r["chunk_index"] for r in read_rows(app_settings.telemetry_db)] == [0, 1, 2, 3, 3]
    assert "abr_repeated_reports_total 1.0" in client.get("/metrics").text


def test_sessions_expire_and_are_bounded() -> None:
    store = SessionStore(VIDEO, ObservationSpec(), max_sessions=2, ttl_s=10.0)
    a = store.get("a", "learned", now_s=0.0)
    store.get("b", "learned", now_s=1.0)
    assert store.get("a", "learned", now_s=5.0) is a
    store.get("c", "learned", now_s=6.0)  # evicts b, the least recently used
    assert len(store) == 2
    assert store.evicted == 1
    assert store.get("a", "learned", now_s=100.0) is not a  # idle too long: a new session
    assert store.sweep(now_s=105.0) == 1  # c idle since 6 s; a was just renewed


def test_ab_assignment_is_stable_and_splits(tmp_path: Path) -> None:
    settings = Settings(telemetry_db=None, ab_policy="bba", ab_percent=50)
    service = DecisionService(settings, VIDEO, ModelRegistry(None, VIDEO, __import__("torch").device("cpu")),
                              Metrics())  # fmt: skip
    picks = [service.assign(f"s{i}") for i in range(400)]
    assert picks == [service.assign(f"s{i}") for i in range(400)]
    assert 150 < picks.count("bba") < 250


def test_admin_needs_the_token(client: TestClient, tmp_path: Path) -> None:
    assert client.get("/admin/models").status_code == 401
    assert client.get("/admin/models", headers={"Authorization": "Bearer nope"}).status_code == 401
    reply = client.get("/admin/models", headers={"Authorization": f"Bearer {TOKEN}"})
    assert reply.json()["serving"] == "default"
    with TestClient(create_app(Settings(telemetry_db=None))) as no_admin:
        assert no_admin.get("/admin/models").status_code == 403


def test_activate_refuse_and_rollback(tmp_path: Path) -> None:
    root = make_registry(tmp_path / "models")
    (root / "v3").mkdir()
    shutil.copy(root / "v1" / "meta.json", root / "v3" / "meta.json")
    (root / "v3" / "model.safetensors").write_bytes(b"garbage")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    settings = Settings(telemetry_db=None, admin_token=TOKEN, models_dir=root)  # type: ignore[arg-type]
    with TestClient(create_app(settings)) as client:
        assert client.get("/admin/models", headers=auth).json()["serving"] == "v2"  # newest servable
        reply = client.post("/admin/models/v1/activate", headers=auth)
        assert reply.json()["serving"] == "v1"
        reply = client.post("/admin/models/v3/activate", headers=auth)
        assert reply.status_code == 409
        assert "refused" in reply.json()["detail"]
        assert client.get("/admin/models", headers=auth).json()["serving"] == "v1"
        assert client.post("/admin/models/nope/activate", headers=auth).status_code == 404
        client.post("/admin/models/v2/activate", headers=auth)
        assert client.post("/v1/sessions/x/decision", json=report()).json()["model_version"] == "v2"
        reply = client.post("/admin/models/rollback", headers=auth)
        assert reply.json()["serving"] == "v1"
    assert (root / "ACTIVE").read_text().strip() == "v1"


def test_a_corrupt_newest_version_does_not_stop_start_up_of_the_active_one(tmp_path: Path) -> None:
    root = make_registry(tmp_path / "models", ("v1",))
    (root / "ACTIVE").write_text("v1\n")
    (root / "v2").mkdir()
    shutil.copy(root / "v1" / "meta.json", root / "v2" / "meta.json")
    (root / "v2" / "model.safetensors").write_bytes(b"garbage")
    with TestClient(create_app(Settings(telemetry_db=None, models_dir=root))) as client:  # type: ignore[arg-type]
        assert client.post("/v1/sessions/x/decision", json=report()).json()["model_version"] == "v1"


def test_hot_swap_during_a_stream_of_requests_drops_nothing(tmp_path: Path) -> None:
    root = make_registry(tmp_path / "models")
    (root / "ACTIVE").write_text("v1\n")
    settings = Settings(telemetry_db=None, models_dir=root)  # type: ignore[arg-type]

    async def scenario() -> tuple[list[str | None], list[str | None]]:
        service = DecisionService(settings, VIDEO, ModelRegistry(root, VIDEO, __import__("torch").device("cpu")),
                                  Metrics())  # fmt: skip
        await service.start()
        from abr_server.schemas import ChunkReport

        swapped = asyncio.Event()
        before: list[str | None] = []
        after: list[str | None] = []

        async def player(i: int) -> None:
            # Keep streaming (chunk indices wrap) until the swap is done, then 3 more chunks each.
            index, extra = 0, 3
            while extra > 0:
                done = swapped.is_set()
                decision = await service.decide(f"p{i}", ChunkReport(**report(index % 40)), api="v1")  # type: ignore[arg-type]
                (after if done else before).append(decision.model_version)
                extra -= done
                index += 1
                await asyncio.sleep(0)

        async def swap() -> None:
            await asyncio.sleep(0.01)
            await service.activate("v2")
            swapped.set()

        await asyncio.gather(*(player(i) for i in range(40)), swap())
        await service.stop()
        return before, after

    before, after = asyncio.run(scenario())
    versions = before + after
    assert before  # requests were in flight while the new version loaded
    assert set(before) <= {"v1", "v2"}
    assert after == ["v2"] * 120  # everything asked after the swap returned is answered by v2
    assert versions.count(None) == 0  # every answer came from a model, none from the fallback


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.dictionaries(
        st.sampled_from(
            [
                "index",
                "quality",
                "bytes",
                "request_start_ms",
                "end_ms",
                "first_byte_ms",
                "buffer_s",
                "bl",
                "mtp",
                "rebuffer_ms",
                "next_chunk_bytes",
                "junk",
            ]
        ),
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(-(2**70), 2**70),
            st.floats(allow_nan=True),
            st.text(max_size=5),
            st.lists(st.integers(-10, 10**7), max_size=8),
        ),
    )
)
def test_fuzzed_reports_never_get_a_5xx(client: TestClient, body: dict[str, object]) -> None:
    content = json.dumps(body)
    reply = client.post("/v1/sessions/fuzz/decision", content=content, headers={"content-type": "application/json"})
    assert reply.status_code < 500, reply.text


@pytest.fixture(scope="module")
def both_paths() -> Iterator[tuple[TestClient, TestClient]]:
    """Two servers, with and without the decision fast path."""
    fast = create_app(Settings(telemetry_db=None, fast_path=True))  # type: ignore[call-arg]
    routed = create_app(Settings(telemetry_db=None, fast_path=False))  # type: ignore[call-arg]
    with TestClient(fast) as a, TestClient(routed) as b:
        yield a, b


REPORT_FIELDS = st.sampled_from(
    ["index", "quality", "bytes", "request_start_ms", "end_ms", "first_byte_ms", "buffer_s", "bl", "mtp",
     "next_chunk_bytes"]
)  # fmt: skip
VALID_OR_NOT = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 3 * 10**6), st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=3), st.lists(st.integers(-10, 10**7), min_size=5, max_size=7),
)  # fmt: skip


@settings(max_examples=80, deadline=None)
@given(
    fields=st.dictionaries(REPORT_FIELDS, VALID_OR_NOT),
    raw=st.sampled_from(
        [
            None,
            b"",
            b"[]",
            b"{",
            b"null",
            b'{"index": 1e999}',
            b"\xff\xfe",
            b"[" * 99 + b"]" * 99,
            b'{"index": ' + b"1" * 99 + b"}",
        ]
    ),
    session=st.sampled_from(["a", "b.c:d-1", "x" * 128]),
)
def test_fast_path_answers_exactly_like_the_fastapi_route(
    both_paths: tuple[TestClient, TestClient], fields: dict[str, object], raw: bytes | None, session: str
) -> None:
    """Same status, same decision, same error locations, whether or not the fast path answers."""
    content = raw if raw is not None else json.dumps({**report(index=3), **fields}).encode()
    fast, routed = both_paths
    url = f"/v1/sessions/{session}/decision"
    headers = {"content-type": "application/json"}
    a, b = fast.post(url, content=content, headers=headers), routed.post(url, content=content, headers=headers)
    assert a.status_code == b.status_code, (a.text, b.text)
    if a.status_code == 200:
        assert a.json() == b.json()
    else:
        assert a.status_code == 422
        assert [e["loc"][:2] for e in a.json()["detail"]] == [e["loc"][:2] for e in b.json()["detail"]]


def test_logs_are_json_lines() -> None:
    import logging

    from abr_server.logs import JsonFormatter

    record = logging.LogRecord("abr_server", logging.WARNING, __file__, 1, "model %s refused", ("v3",), None)
    entry = json.loads(JsonFormatter().format(record))
    assert entry["level"] == "WARNING"
    assert entry["message"] == "model v3 refused"


def test_empty_settings_mean_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ABR_TELEMETRY_DB", "")
    monkeypatch.setenv("ABR_MODELS_DIR", " ")
    settings = Settings()
    assert settings.telemetry_db is None
    assert settings.models_dir is None


def test_unopenable_telemetry_database_is_a_clear_error(tmp_path: Path) -> None:
    from abr_server.telemetry import TelemetryStore

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ValueError, match="cannot open"):
        TelemetryStore(blocker / "sub" / "t.sqlite")
