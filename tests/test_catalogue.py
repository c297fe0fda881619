"""One server, several videos: each session bound to its video, answered from its ladder; a ladder the
model was not trained for is decided by the ladder fallback rule, visibly."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from abr_server.main import create_app
from abr_server.settings import Settings
from abr_server.telemetry import COLUMNS, connect, read_rows
from simulator.video import ASSET_META, DEFAULT_LADDER_KBPS, Video

OTHER_LADDER_KBPS = (400, 1000, 2500, 6000)  # another ladder, 2 s chunks
OTHER_CHUNKS = 20
SAME_CHUNKS = 12


def write_asset(folder: Path, ladder: tuple[int, ...], n_chunks: int, segment_s: float) -> Path:
    """A folder like `abr media make` writes: size files and the asset description."""
    folder.mkdir()
    for level, kbps in enumerate(ladder):
        size = int(kbps * 1000 / 8 * segment_s)
        (folder / f"video_size_{level}").write_text("".join(f"{size + i}\n" for i in range(n_chunks)))
    meta = {"bitrates_kbps": list(ladder), "segment_s": segment_s, "n_segments": n_chunks}
    (folder / ASSET_META).write_text(json.dumps(meta))
    return folder


@pytest.fixture
def videos(tmp_path: Path) -> dict[str, Path]:
    return {
        "other": write_asset(tmp_path / "other", OTHER_LADDER_KBPS, OTHER_CHUNKS, 2.0),
        "short": write_asset(tmp_path / "short", tuple(DEFAULT_LADDER_KBPS), SAME_CHUNKS, 4.0),
    }


@pytest.fixture
def client(tmp_path: Path, videos: dict[str, Path]) -> Iterator[TestClient]:
    listing = ",".join(f"{name}={path}" for name, path in videos.items())
    settings = Settings(telemetry_db=tmp_path / "t.sqlite", videos=listing, max_wait_ms=0.5)  # type: ignore[arg-type]
    with TestClient(create_app(settings)) as c:
        yield c


def report(video: Video, index: int, quality: int = 1, name: str | None = None) -> dict[str, object]:
    body: dict[str, object] = {
        "index": index, "quality": quality, "bytes": int(video.chunk_bytes[quality, index]),
        "request_start_ms": 1000.0 * index, "end_ms": 1000.0 * index + 600.0, "buffer_s": 6.0,
    }  # fmt: skip
    if name is not None:
        body["video"] = name
    return body


def test_sessions_of_three_videos_at_once_are_each_answered_from_their_own_ladder(
    client: TestClient, videos: dict[str, Path]
) -> None:
    from simulator.video import load_video

    other, short, default = load_video(str(videos["other"])), load_video(str(videos["short"])), Video.builtin()
    plays = {"d": (default, None), "o": (other, "other"), "s": (short, "short")}
    answers: dict[str, list[dict[str, object]]] = {sid: [] for sid in plays}
    for index in range(max(v.n_chunks for v, _ in plays.values())):
        for sid, (video, name) in plays.items():  # interleaved: all three sessions live at once
            if index < video.n_chunks:
                reply = client.post(f"/v1/sessions/{sid}/decision", json=report(video, index, name=name))
                assert reply.status_code == 200, reply.text
                answers[sid].append(reply.json())
    for sid, (video, name) in plays.items():
        assert len(answers[sid]) == video.n_chunks
        assert [a["end_of_video"] for a in answers[sid]] == [False] * (video.n_chunks - 1) + [True]
        assert all(a["video"] == (name or "default") for a in answers[sid])
        assert all(a["bitrate_kbps"] == video.bitrates_kbps[a["quality"]] for a in answers[sid])  # type: ignore[index]
    assert {a["policy"] for a in answers["d"][:-1]} == {"learned"}
    assert {a["policy"] for a in answers["s"][:-1]} == {"learned"}  # same ladder, another length: the model fits
    assert {a["policy"] for a in answers["o"][:-1]} == {"fallback:robustmpc"}  # never the model's levels
    metrics = client.get("/metrics").text
    assert f'abr_fallbacks_total{{reason="ladder"}} {OTHER_CHUNKS - 1}.0' in metrics
    assert f'abr_video_decisions_total{{video="other"}} {OTHER_CHUNKS}.0' in metrics
    assert f'abr_video_decisions_total{{video="short"}} {SAME_CHUNKS}.0' in metrics


def test_telemetry_rows_name_their_video(client: TestClient, tmp_path: Path, videos: dict[str, Path]) -> None:
    from simulator.video import load_video

    other = load_video(str(videos["other"]))
    assert client.post("/v1/sessions/a/decision", json=report(other, 0, name="other")).status_code == 200
    assert client.post("/v1/sessions/b/decision", json=report(Video.builtin(), 0)).status_code == 200
    client.app.state.service.telemetry.flush()  # type: ignore[attr-defined]
    assert [(r["session_id"], r["video"]) for r in read_rows(tmp_path / "t.sqlite")] == [
        ("a", "other"),
        ("b", "default"),
    ]


def test_a_session_plays_one_video_and_an_unknown_one_is_named(client: TestClient, videos: dict[str, Path]) -> None:
    from simulator.video import load_video

    other = load_video(str(videos["other"]))
    assert client.post("/v1/sessions/x/decision", json=report(other, 0, name="other")).status_code == 200
    reply = client.post("/v1/sessions/x/decision", json=report(Video.builtin(), 1))
    assert reply.status_code == 422
    assert "plays 'other', not 'default'" in reply.text
    reply = client.post("/v1/sessions/y/decision", json=report(Video.builtin(), 0, name="nope"))
    assert reply.status_code == 422
    assert "no video 'nope' on this server (served: default, other, short)" in reply.text
    reply = client.post("/v1/sessions/z/decision", json=report(other, 0, quality=3))  # level 3 fits both ladders...
    assert reply.status_code == 200
    reply = client.post("/v1/sessions/w/decision", json={**report(Video.builtin(), OTHER_CHUNKS + 5), "video": "other"})
    assert reply.status_code == 422  # ...but the chunk index must fit the named video
    assert len(client.app.state.service.store) == 2  # type: ignore[attr-defined]  # x and z; no session for refusals


@pytest.mark.parametrize(
    ("listing", "problem"),
    [("default=somewhere", "not 'default'"), ("a b=x", "video name 'a b'"), ("a", "is not NAME=FOLDER"),
     ("{not json", "not a JSON object")],
)  # fmt: skip
def test_bad_video_listings_are_named(listing: str, problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        Settings(videos=listing)  # type: ignore[arg-type]


def test_listings_parse_as_pairs_or_json() -> None:
    assert Settings(videos="a=x, b = y").videos == {"a": "x", "b": "y"}  # type: ignore[arg-type]
    assert Settings(videos='{"a": "x"}').videos == {"a": "x"}  # type: ignore[arg-type]


def test_a_database_without_the_video_column_gets_it(tmp_path: Path) -> None:
    db = tmp_path / "old.sqlite"
    old_columns = [c for c in COLUMNS if c != "video"]
    with sqlite3.connect(db) as conn:
        conn.execute(f"CREATE TABLE chunks (id INTEGER PRIMARY KEY AUTOINCREMENT, {', '.join(old_columns)})")
        conn.execute("INSERT INTO chunks (session_id, chunk_index) VALUES ('old', 0)")
    connect(db).close()
    rows = read_rows(db)
    assert rows[0]["session_id"] == "old"
    assert rows[0]["video"] is None
