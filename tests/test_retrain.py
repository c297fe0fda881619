"""Online retraining: traces rebuilt from telemetry, recency weights."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from abr_server.retrain.rebuild import RebuildConfig, rebuild_traces, weighted_sample
from abr_server.telemetry import COLUMNS, SCHEMA
from policy.base import make_policy
from policy.evaluation.loop import run_policy
from simulator.link import LinkConfig
from simulator.reference import ScalarSession
from simulator.video import Video
from traces.trace import Trace

VIDEO = Video.builtin()


def write_rows(db: Path, rows: list[dict[str, object]]) -> None:
    with sqlite3.connect(db) as con:
        con.executescript(SCHEMA)
        for row in rows:
            values = dict.fromkeys(COLUMNS) | row
            con.execute(f"INSERT INTO chunks ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                        [values[c] for c in COLUMNS])  # fmt: skip


def session_rows(session: str, trace: Trace, level: int, received_at_s: float, n: int | None = None) -> list[dict]:
    """Telemetry of a reference session fetching every chunk at ``level`` (clock: delays and sleeps)."""
    sim = ScalarSession(trace, VIDEO, LinkConfig())
    rows, clock_ms = [], 1_000_000.0
    for index in range(n or VIDEO.n_chunks):
        out = sim.download(level)
        rows.append({"received_at_s": received_at_s + index, "session_id": session, "chunk_index": index,
                     "quality": level, "chunk_bytes": out.chunk_bytes, "request_start_ms": clock_ms,
                     "end_ms": clock_ms + out.delay_ms, "delay_ms": out.delay_ms,
                     "buffer_s": out.buffer_s})  # fmt: skip
        clock_ms += out.delay_ms + out.sleep_ms
    return rows


def test_a_constant_link_is_rebuilt_exactly_and_replays_the_same_delays(tmp_path: Path) -> None:
    link = Trace("c", np.array([0.0, 1000.0]), np.array([3.0, 3.0]))
    db = tmp_path / "t.sqlite"
    rows = session_rows("s1", link, level=3, received_at_s=100.0)
    write_rows(db, rows)
    pool = rebuild_traces(db)
    [trace] = pool.traces
    np.testing.assert_allclose(trace.throughput_mbps, 3.0, rtol=1e-9)
    assert trace.times_s[-1] == pytest.approx((rows[-1]["end_ms"] - rows[0]["request_start_ms"]) / 1000)
    assert pool.ended_at_s == [100.0 + VIDEO.n_chunks - 1]
    replay = run_policy(make_policy("fixed:3"), [trace], VIDEO, initial_quality=3)
    np.testing.assert_allclose(replay.delay_ms[0], [r["delay_ms"] for r in rows], rtol=1e-9)


def test_a_varying_link_gives_each_chunk_its_average_rate(tmp_path: Path) -> None:
    # 2 Mbit/s for 10 s, then 6 Mbit/s: chunks entirely inside one phase get exactly that rate.
    link = Trace("v", np.array([0.0, 10.0, 1000.0]), np.array([2.0, 2.0, 6.0]))
    db = tmp_path / "t.sqlite"
    write_rows(db, session_rows("s", link, level=2, received_at_s=0.0, n=12))
    [trace] = rebuild_traces(db).traces
    rates = trace.throughput_mbps[1:]
    assert rates[0] == pytest.approx(2.0)
    assert rates[-1] == pytest.approx(6.0)
    assert np.all((rates > 2.0 - 1e-9) & (rates < 6.0 + 1e-9))


def test_broken_rows_and_sessions_are_skipped_and_counted(tmp_path: Path) -> None:
    link = Trace("c", np.array([0.0, 1000.0]), np.array([3.0, 3.0]))
    good = session_rows("good", link, level=1, received_at_s=0.0, n=6)
    jumpy = session_rows("jumpy", link, level=1, received_at_s=0.0, n=10)
    del jumpy[5]  # chunk 5 missing: pieces 0-4 and 6-9
    short = session_rows("short", link, level=1, received_at_s=0.0, n=2)
    backwards = session_rows("backwards", link, level=1, received_at_s=0.0, n=5)
    backwards[3]["end_ms"] = backwards[0]["request_start_ms"]  # the clock went back
    bad: list[dict[str, object]] = [
        {"received_at_s": 1.0, "session_id": "bad", "chunk_index": 0, "chunk_bytes": "lots", "delay_ms": 100.0},
        {"received_at_s": 1.0, "session_id": "bad", "chunk_index": 1, "chunk_bytes": 100, "delay_ms": None},
    ]
    db = tmp_path / "t.sqlite"
    write_rows(db, good + jumpy + short + backwards + bad)
    pool = rebuild_traces(db, RebuildConfig(min_chunks=4))
    assert sorted(t.name for t in pool.traces) == ["good#0", "jumpy#0", "jumpy#1"]
    assert pool.skipped == {"bad row": 2, "too short": 1, "clock runs backwards": 1}
    assert pool.rows_read == len(good + jumpy + short + backwards + bad)


def test_time_window_selects_rows(tmp_path: Path) -> None:
    link = Trace("c", np.array([0.0, 1000.0]), np.array([3.0, 3.0]))
    db = tmp_path / "t.sqlite"
    write_rows(db, session_rows("old", link, 1, received_at_s=0.0, n=5) + session_rows("new", link, 1, 500.0, n=5))
    assert [t.name for t in rebuild_traces(db, since_s=400.0).traces] == ["new#0"]
    assert [t.name for t in rebuild_traces(db, until_s=400.0).traces] == ["old#0"]
    with pytest.raises(ValueError, match="no such file"):
        rebuild_traces(tmp_path / "missing.sqlite")


def test_recency_weights_and_weighted_sample(tmp_path: Path) -> None:
    link = Trace("c", np.array([0.0, 1000.0]), np.array([3.0, 3.0]))
    db = tmp_path / "t.sqlite"
    write_rows(db, session_rows("a", link, 1, received_at_s=0.0, n=4) + session_rows("b", link, 1, 100.0, n=4))
    pool = rebuild_traces(db)
    weights = pool.weights(now_s=103.0, half_life_s=100.0)
    np.testing.assert_allclose(weights, [0.5, 1.0])  # a ended at 3 s, b at 103 s
    sample = weighted_sample(pool.traces, weights, size=6)
    assert [t.name for t in sample] == ["a#0", "a#0", "b#0", "b#0", "b#0", "b#0"]
    with pytest.raises(ValueError, match="half_life_s"):
        pool.weights(now_s=0.0, half_life_s=0.0)
    with pytest.raises(ValueError, match="weights"):
        weighted_sample(pool.traces, np.zeros(2), size=3)
