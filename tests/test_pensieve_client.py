"""The Pensieve project's dash.js client, scripted exactly as it speaks to its server, against ``POST /``.

The client reports after each chunk: ``lastRequest`` is the index of the chunk just downloaded (0 for
the first), ``nextChunkSize`` the sizes of the next one at each level (0 after the last), and it sends
no session id. It fetches the level it is told and reloads on ``REFRESH``, which its reference server
answers to the report of the last chunk.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from abr_server.main import create_app
from abr_server.players import AnonymousPlayers
from abr_server.schemas import ChunkReport, PensieveReport
from abr_server.settings import Settings
from abr_server.telemetry import read_rows
from simulator.video import Video

VIDEO = Video.builtin()
CHUNK_S = 4.0


class ScriptedClient:
    """One player on a constant link: follows every answer, stops at REFRESH."""

    def __init__(self, throughput_kbps: float, start_ms: float = 1.7e12, first_quality: int = 1,
                 n_segments: int = VIDEO.n_chunks + 1) -> None:  # fmt: skip
        # By default one segment more than the served video models, like the Envivio page and its size files.
        self.throughput_kbps, self.now_ms, self.n_segments = throughput_kbps, start_ms, n_segments
        self.quality, self.index = first_quality, 0
        self.buffer_s, self.rebuffer_ms = 0.0, 0.0
        self.answers: list[str] = []

    def next_body(self) -> dict[str, object]:
        """Download chunk ``index`` at the current level; the report the client then sends."""
        size = int(_sizes(self.index)[self.quality])
        start_ms = self.now_ms
        delay_ms = size * 8 / self.throughput_kbps
        self.now_ms += delay_ms
        stall_ms = max(delay_ms - self.buffer_s * 1000, 0.0)
        self.rebuffer_ms += stall_ms if self.index > 0 else 0.0
        self.buffer_s = max(self.buffer_s - delay_ms / 1000, 0.0) + CHUNK_S
        following = self.index + 1
        next_sizes: object = [int(v) for v in _sizes(following)] if following < self.n_segments else 0
        return {
            "nextChunkSize": next_sizes, "Type": "BB", "lastquality": self.quality, "buffer": self.buffer_s,
            "bufferAdjusted": self.buffer_s, "bandwidthEst": self.throughput_kbps, "lastRequest": self.index,
            "RebufferTime": self.rebuffer_ms, "lastChunkFinishTime": self.now_ms, "lastChunkStartTime": start_ms,
            "lastChunkSize": size,
        }  # fmt: skip

    def step(self, client: TestClient) -> str:
        reply = client.post("/", json=self.next_body())
        assert reply.status_code == 200, reply.text
        self.answers.append(reply.text)
        if reply.text != "REFRESH":
            self.quality, self.index = int(reply.text), self.index + 1
        return reply.text

    def play(self, client: TestClient) -> list[str]:
        while self.step(client) != "REFRESH":
            pass
        return self.answers


def _sizes(index: int) -> list[int]:
    """A segment's size at each level (past the modelled chunks, the last one's)."""
    return [int(v) for v in VIDEO.chunk_bytes[:, min(index, VIDEO.n_chunks - 1)]]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "telemetry.sqlite"


@pytest.fixture
def client(db: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(telemetry_db=db, max_wait_ms=0.5))) as c:  # type: ignore[call-arg]
        yield c


def _rows(client: TestClient, db: Path) -> list[dict[str, object]]:
    client.app.state.service.telemetry.flush()  # type: ignore[attr-defined]
    return read_rows(db)


@pytest.mark.parametrize("n_segments", [VIDEO.n_chunks + 1, VIDEO.n_chunks])
def test_a_whole_video_each_chunk_once_and_refresh_after_the_last(
    client: TestClient, db: Path, n_segments: int
) -> None:
    answers = ScriptedClient(3000, n_segments=n_segments).play(client)
    assert len(answers) == n_segments  # one report per segment: REFRESH answers the client's last one
    assert answers[-1] == "REFRESH"
    assert all(a.isdigit() and int(a) < VIDEO.n_levels for a in answers[:-1])
    rows = _rows(client, db)
    assert [r["chunk_index"] for r in rows] == list(range(VIDEO.n_chunks))
    assert len({r["session_id"] for r in rows}) == 1
    assert len(client.app.state.service.store) == 0  # type: ignore[attr-defined]  # finished: forgotten


def test_two_players_on_one_address_keep_separate_histories(db: Path, tmp_path: Path) -> None:
    def alone(throughput_kbps: float) -> list[str]:
        settings = Settings(telemetry_db=None, max_wait_ms=0.5)  # type: ignore[call-arg]
        with TestClient(create_app(settings)) as fresh:
            return ScriptedClient(throughput_kbps).play(fresh)

    slow_alone, fast_alone = alone(900), alone(6000)
    settings = Settings(telemetry_db=db, max_wait_ms=0.5)  # type: ignore[call-arg]
    with TestClient(create_app(settings)) as shared:
        slow, fast = ScriptedClient(900), ScriptedClient(6000, start_ms=1.7e12 + 50)
        while not (slow.answers[-1:] == ["REFRESH"] and fast.answers[-1:] == ["REFRESH"]):
            for player in (slow, fast):
                if player.answers[-1:] != ["REFRESH"]:
                    player.step(shared)
        rows = _rows(shared, db)
    assert slow.answers == slow_alone
    assert fast.answers == fast_alone
    assert slow_alone != fast_alone  # the two histories differ, so a merge would have shown
    by_session: dict[object, list[object]] = {}
    for row in rows:
        by_session.setdefault(row["session_id"], []).append(row["chunk_index"])
    assert sorted(by_session.values()) == [list(range(VIDEO.n_chunks))] * 2


def test_a_player_that_restarts_begins_a_fresh_history(client: TestClient) -> None:
    with TestClient(create_app(Settings(telemetry_db=None, max_wait_ms=0.5))) as fresh:  # type: ignore[call-arg]
        first_answer_fresh = ScriptedClient(2000).step(fresh)
    player = ScriptedClient(6000)
    for _ in range(20):
        player.step(client)
    restarted = ScriptedClient(2000)  # the page reloaded mid-video: lastRequest 0 again, same address
    assert restarted.step(client) == first_answer_fresh


def test_a_retried_report_gets_the_same_answer_and_is_recorded_once(client: TestClient, db: Path) -> None:
    player = ScriptedClient(3000)
    player.step(client)
    body = player.next_body()
    first = client.post("/", json=body).text
    assert client.post("/", json=body).text == first
    assert [r["chunk_index"] for r in _rows(client, db)] == [0, 1]


def test_a_refused_report_creates_no_session(client: TestClient) -> None:
    body = ScriptedClient(3000).next_body()
    reply = client.post("/", json={**body, "lastquality": VIDEO.n_levels})
    assert reply.status_code == 422
    assert "lastquality" in reply.text
    reply = client.post("/", json={**body, "nextChunkSize": [-1] * VIDEO.n_levels})
    assert reply.status_code == 422
    assert "nextChunkSize" in reply.text
    assert client.post("/", json={**body, "lastRequest": VIDEO.n_chunks}).text == "REFRESH"  # past the end
    assert len(client.app.state.service.store) == 0  # type: ignore[attr-defined]


def test_a_session_header_names_the_session(client: TestClient, db: Path) -> None:
    body = ScriptedClient(3000).next_body()
    assert client.post("/", json=body, headers={"x-session-id": "tab-7"}).status_code == 200
    assert [r["session_id"] for r in _rows(client, db)] == ["tab-7"]


def test_next_chunk_sizes_are_taken_when_there_is_one_per_level() -> None:
    body = ScriptedClient(3000).next_body()
    sizes = body["nextChunkSize"]
    assert PensieveReport.model_validate(body).to_report(VIDEO.n_levels).next_chunk_bytes == sizes
    assert PensieveReport.model_validate(body).to_report(VIDEO.n_levels + 1).next_chunk_bytes is None
    assert (
        PensieveReport.model_validate({**body, "nextChunkSize": 0}).to_report(VIDEO.n_levels).next_chunk_bytes is None
    )
    assert PensieveReport.model_validate(body).to_report(VIDEO.n_levels).index == 0


def _report(index: int, quality: int, start_ms: float) -> ChunkReport:
    return ChunkReport(index=index, quality=quality, bytes=100_000, request_start_ms=start_ms, end_ms=start_ms + 500,
                       buffer_s=4.0)  # fmt: skip


def test_matching_claims_at_once_prefers_the_level_told_and_the_nearest_time() -> None:
    players = AnonymousPlayers("p", max_addresses=8)
    alive = lambda _: True  # noqa: E731
    a = players.session_for("h", _report(0, 1, 0), alive)
    b = players.session_for("h", _report(0, 1, 10), alive)
    assert a != b  # two starts are two players
    # Two reports of chunk 1 arrive before either is answered: each claims its own player.
    assert {
        players.session_for("h", _report(1, 1, 600), alive),
        players.session_for("h", _report(1, 1, 610), alive),
    } == {a, b}
    players.told("h", a, 4)
    players.told("h", b, 2)
    assert players.session_for("h", _report(2, 2, 2000), alive) == b  # it fetched the level b was told
    assert players.session_for("h", _report(2, 4, 2100), alive) == a  # a's download ends at 2600, b's at 2500
    # With the same level told, the download that began closest after a player's last one ended.
    players.told("h", a, 3)
    players.told("h", b, 3)
    assert players.session_for("h", _report(3, 3, 2700), alive) == a  # 100 ms after a's, 200 after b's
    assert players.session_for("h", _report(3, 3, 2510), alive) == b
    assert players.session_for("h", _report(7, 3, 9000), alive) not in {a, b}  # continues nobody: a new player
    assert players.session_for("other", _report(1, 1, 600), alive) not in {a, b}  # another address


def test_forgotten_sessions_are_not_continued() -> None:
    players = AnonymousPlayers("p", max_addresses=8)
    a = players.session_for("h", _report(0, 1, 0), lambda _: True)
    assert players.session_for("h", _report(1, 1, 600), lambda sid: sid != a) != a
