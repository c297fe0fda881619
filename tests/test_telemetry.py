"""The telemetry store: durable on return (journaled), then in SQLite in order, exactly once, never blocking."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from abr_server.telemetry import COLUMNS, TelemetryStore, connect, ingest_pending, journal_dir, read_rows

FAST_S = 0.02  # flush interval in these tests


def row(session: str, index: int) -> tuple[object, ...]:
    values: dict[str, object] = dict.fromkeys(COLUMNS, 0)
    values |= {"session_id": session, "chunk_index": index, "policy": "learned", "buffer_s": 1.5 * index}
    return tuple(values[c] for c in COLUMNS)


def committed(path: Path) -> list[tuple[str, int]]:
    """What another connection (another process) sees."""
    with sqlite3.connect(path) as conn:
        return [(s, i) for s, i in conn.execute("SELECT session_id, chunk_index FROM chunks ORDER BY id")]


def wait_for(predicate: object, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_rows_reach_sqlite_in_arrival_order_and_the_journal_empties(tmp_path: Path) -> None:
    path = tmp_path / "t.sqlite"
    store = TelemetryStore(path, flush_interval_s=FAST_S)
    for k in range(50):
        store.append(row("a", k))
    wait_for(lambda: len(committed(path)) == 50)
    assert committed(path) == [("a", k) for k in range(50)]
    assert store.rows_written == 50
    assert store.failed == 0
    store.append(row("b", 0))
    store.close()  # moves the rest in
    assert committed(path)[-1] == ("b", 0)
    assert list(journal_dir(path).iterdir()) == []  # nothing left journaled
    fourth = read_rows(path)[3]  # values and their types round-trip through the journal
    assert (fourth["buffer_s"], fourth["chunk_index"], fourth["policy"]) == (4.5, 3, "learned")
    assert isinstance(fourth["chunk_index"], int)


def test_an_acknowledged_row_survives_a_killed_process(tmp_path: Path) -> None:
    path = tmp_path / "t.sqlite"
    # A process journals 30 rows, says so, and dies at once (no close, no flush: flush interval 1 hour).
    code = f"""
import os, sys
from pathlib import Path
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
from abr_server.telemetry import TelemetryStore
from tests.test_telemetry import row
store = TelemetryStore(Path({str(path)!r}), flush_interval_s=3600)
for k in range(30):
    store.append(row("killed", k))
print("acknowledged", flush=True)
os._exit(9)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "acknowledged" in done.stdout, done.stderr
    assert committed(path) == []  # it never reached SQLite...
    assert ingest_pending(path) == 30  # ...but the journal had it: the next start (or this) moves it in
    assert committed(path) == [("killed", k) for k in range(30)]
    assert ingest_pending(path) == 0  # exactly once
    assert list(journal_dir(path).iterdir()) == []


def test_a_segment_committed_but_not_deleted_is_not_ingested_twice(tmp_path: Path) -> None:
    path = tmp_path / "t.sqlite"
    folder = journal_dir(path)
    folder.mkdir(parents=True)
    lines = [json.dumps(list(row("s", k))) for k in range(3)]
    (folder / "1-1-000000001.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "1-1-000000002.jsonl").write_text(lines[0] + "\n" + lines[1][:-7])  # a torn last line
    conn = connect(path)
    with conn:  # as if a crash came right after segment 1's commit, before its file was deleted
        conn.execute("INSERT INTO ingested_segments (name) VALUES ('1-1-000000001.jsonl')")
    conn.close()
    assert ingest_pending(path) == 1  # segment 1 skipped; segment 2's whole line only
    assert committed(path) == [("s", 0)]
    assert list(folder.iterdir()) == []


def test_a_locked_database_delays_rows_but_never_an_append(tmp_path: Path) -> None:
    path = tmp_path / "t.sqlite"
    store = TelemetryStore(path, flush_interval_s=FAST_S)
    store.append(row("a", 0))
    wait_for(lambda: committed(path) == [("a", 0)])
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    # Every append returns, durable, while the lock is held (one that waited for the database would
    # block here, on this thread, until SQLite's 30 s busy timeout).
    assert all(store.append(row("a", k)) for k in range(1, 20))
    time.sleep(10 * FAST_S)
    assert committed(path) == [("a", 0)]  # the writer is still waiting for the lock
    other.execute("COMMIT")
    other.close()
    wait_for(lambda: len(committed(path)) == 20)
    store.close()
    assert committed(path) == [("a", k) for k in range(20)]


def test_a_failing_database_keeps_rows_journaled_and_is_reported_until_it_recovers(tmp_path: Path) -> None:
    path = tmp_path / "t.sqlite"
    store = TelemetryStore(path, flush_interval_s=FAST_S)
    store.append(row("a", 0))
    wait_for(lambda: store.rows_written == 1)
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE chunks")
    store.append(row("a", 1))
    store.append(row("a", 2))
    wait_for(lambda: store.failed == 2)  # not moved, counted (readiness reports it)
    assert store.failures >= 1
    assert len(list(journal_dir(path).iterdir())) >= 2  # still journaled: nothing lost
    connect(path).close()  # the table is back (an operator's repair)
    wait_for(lambda: store.failed == 0)
    store.close()
    assert committed(path) == [("a", 1), ("a", 2)]


def test_two_processes_on_one_database_each_keep_their_own_journal(tmp_path: Path) -> None:
    path = tmp_path / "t.sqlite"
    first = TelemetryStore(path, flush_interval_s=3600)
    first.append(row("first", 0))
    second = TelemetryStore(path, flush_interval_s=FAST_S)  # a second worker starting: recovers orphans only
    assert second.recovered == 0  # the first one's live segment is not taken
    second.append(row("second", 0))
    wait_for(lambda: committed(path) == [("second", 0)])
    first.close()
    second.close()
    assert sorted(committed(path)) == [("first", 0), ("second", 0)]
