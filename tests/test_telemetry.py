"""The telemetry store: rows acknowledged only once committed, in order, and never a blocked event loop."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from abr_server.telemetry import COLUMNS, TelemetryStore, read_rows


def row(session: str, index: int) -> tuple[object, ...]:
    values: dict[str, object] = dict.fromkeys(COLUMNS, 0)
    values |= {"session_id": session, "chunk_index": index, "policy": "learned"}
    return tuple(values[c] for c in COLUMNS)


def committed(path: Path) -> list[tuple[str, int]]:
    """What another connection (another process) sees."""
    with sqlite3.connect(path) as conn:
        return [(s, i) for s, i in conn.execute("SELECT session_id, chunk_index FROM chunks ORDER BY id")]


def test_each_append_returns_once_its_row_is_committed_in_arrival_order(tmp_path: Path) -> None:
    path = tmp_path / "t.sqlite"

    async def main() -> None:
        store = TelemetryStore(path)

        async def one(k: int) -> None:
            await store.append(row("a", k))
            assert ("a", k) in committed(path)  # visible to other processes once acknowledged

        await asyncio.gather(*(one(k) for k in range(50)))
        assert store.rows_written == 50
        assert store.failed == 0
        store.close()

    asyncio.run(main())
    assert [r["chunk_index"] for r in read_rows(path)] == list(range(50))


def test_a_database_locked_by_another_writer_does_not_block_the_event_loop(tmp_path: Path) -> None:
    path = tmp_path / "t.sqlite"

    async def main() -> None:
        store = TelemetryStore(path)
        await store.append(row("a", 0))
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        waiting = asyncio.create_task(store.append(row("a", 1)))
        ticks = 0
        for _ in range(10):  # the loop keeps running while the row waits for the lock
            await asyncio.sleep(0.01)
            ticks += 1
        assert ticks == 10
        assert not waiting.done()
        other.execute("COMMIT")
        other.close()
        await asyncio.wait_for(waiting, timeout=10)
        store.close()

    asyncio.run(main())
    assert committed(path) == [("a", 0), ("a", 1)]


def test_a_failed_commit_fails_its_appends_and_is_counted(tmp_path: Path) -> None:
    path = tmp_path / "t.sqlite"

    async def main() -> None:
        store = TelemetryStore(path)
        await store.append(row("a", 0))
        with sqlite3.connect(path) as conn:
            conn.execute("DROP TABLE chunks")
        with pytest.raises(sqlite3.Error, match="no such table"):  # never acknowledged as if committed
            await store.append(row("a", 1))
        assert store.failed == 1
        store.close()

    asyncio.run(main())
