"""The telemetry store: rows acknowledged only once committed, in order, and never a blocked event loop."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from abr_server.telemetry import COLUMNS, TelemetryStore, read_rows


def row(session: str, index: int) -> tuple[object, ...]:
    values: dict[str, object] = dict.fromkeys(COLUMNS, 0)
    values |= {"session_id": session, "chunk_index": index, "policy": "learned"}
    return tuple(values[c] for c in COLUMNS)


def committed(path: Path) -> list[tuple[str, int]]:
    """What another connection (another process) sees."""
    with sqlite3.connect(path) as conn:
        return [(s, i) for s, i in conn.execute("SELECT session_id, chunk_index FROM chunks ORDER BY id")]


def test_each_append_returns_once_its_row_is_committed_and_one_turn_is_one_transaction(tmp_path: Path) -> None:
    path = tmp_path / "t.sqlite"

    async def main() -> None:
        store = TelemetryStore(path)
        seen: list[int] = []

        async def one(k: int) -> None:
            await store.append(row("a", k))
            seen.append(len(committed(path)))

        await asyncio.gather(*(one(k) for k in range(50)))
        # All 50 were queued in the same turn of the loop, so one transaction holds them all.
        assert seen == [50] * 50
        await store.append(row("b", 0))
        assert committed(path)[-1] == ("b", 0)
        assert store.rows_written == 51
        assert store.failed == 0
        assert store.handed_off_batches == 0
        store.close()

    asyncio.run(main())
    assert [r["chunk_index"] for r in read_rows(path)] == [*range(50), 0]


def test_a_database_locked_by_another_writer_never_blocks_the_loop_and_keeps_the_order(tmp_path: Path) -> None:
    path = tmp_path / "t.sqlite"

    async def main() -> None:
        store = TelemetryStore(path)
        await store.append(row("a", 0))
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        first = asyncio.create_task(store.append(row("a", 1)))
        await asyncio.sleep(0.05)
        second = asyncio.create_task(store.append(row("a", 2)))
        # The loop keeps running (this coroutine does) while both rows wait on the writer thread.
        ticks = 0
        for _ in range(10):
            await asyncio.sleep(0.01)
            ticks += 1
        assert ticks == 10
        assert not first.done()
        assert not second.done()
        assert store.handed_off_batches == 2
        other.execute("COMMIT")
        other.close()
        await asyncio.wait_for(asyncio.gather(first, second), timeout=10)
        # Once the thread has caught up, the loop commits again itself.
        await store.append(row("a", 3))
        assert store.handed_off_batches == 2
        assert store.rows_written == 4
        assert store.failed == 0
        store.close()

    asyncio.run(main())
    assert committed(path) == [("a", 0), ("a", 1), ("a", 2), ("a", 3)]


def test_checkpoints_run_on_the_writer_thread_not_on_commits(tmp_path: Path) -> None:
    """Commits only append to the WAL; the thread copies it into the database file every interval."""

    async def db_bytes_after_writing(interval_s: float) -> int:
        path = tmp_path / f"t{interval_s}.sqlite"
        store = TelemetryStore(path, checkpoint_interval_s=interval_s)
        empty = path.stat().st_size
        for k in range(20):
            await asyncio.gather(*(store.append(row(f"s{k}", j)) for j in range(100)))
        await asyncio.sleep(0.3)
        grown = path.stat().st_size - empty
        store.close()
        assert len(committed(path)) == 2000
        return grown

    assert asyncio.run(db_bytes_after_writing(3600.0)) == 0  # all in the WAL, no commit checkpointed
    assert asyncio.run(db_bytes_after_writing(0.05)) > 50_000  # the thread checkpointed 2,000 rows
