"""Telemetry: every chunk report appended to SQLite (WAL), group-committed off the request path.

A request hands its row to the writer thread and waits until the batch holding it is committed, so a
decision is only acknowledged once its report is on disk (a restart loses nothing acknowledged). The
writer never waits for more rows: everything that queued up while it was committing goes into the next
transaction, so batches grow with the load and a lone request pays one commit.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

COLUMNS = (
    "received_at_s", "session_id", "chunk_index", "quality", "chunk_bytes", "request_start_ms", "first_byte_ms",
    "end_ms", "delay_ms", "buffer_s", "rebuffer_ms", "decided_quality", "policy", "model_version",
)  # fmt: skip
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    {", ".join(COLUMNS)}
);
CREATE INDEX IF NOT EXISTS chunks_session ON chunks (session_id, chunk_index);
"""
#: Most rows in one transaction.
MAX_ROWS_PER_COMMIT = 4096


def connect(path: Path) -> sqlite3.Connection:
    """Open (creating) the telemetry database in WAL mode."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, check_same_thread=False)
    except (OSError, sqlite3.Error) as err:
        raise ValueError(f"telemetry database {path}: cannot open ({err})") from None
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(SCHEMA)
    return conn


_Item = tuple[tuple[Any, ...], asyncio.Future[None], asyncio.AbstractEventLoop]


class TelemetryStore:
    """Appends rows from any coroutine; one writer thread commits them in groups."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn = connect(path)
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="abr-telemetry", daemon=True)
        self.rows_written = 0
        self.failed = 0
        self._thread.start()

    async def append(self, row: Sequence[Any]) -> None:
        """Queue ``row`` (values in `COLUMNS` order) and return once it is committed."""
        if len(row) != len(COLUMNS):
            raise ValueError(f"telemetry row has {len(row)} values, expected {len(COLUMNS)}")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._queue.put((tuple(row), future, loop))
        await future

    def close(self) -> None:
        """Commit what is queued and stop the writer."""
        self._queue.put(None)
        self._thread.join(timeout=10)
        self._conn.close()

    def _run(self) -> None:
        insert = f"INSERT INTO chunks ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
        stop = False
        while not stop:
            item = self._queue.get()
            if item is None:
                break
            batch = [item]
            # Natural group commit: take whatever queued up while the previous commit ran, never wait.
            while len(batch) < MAX_ROWS_PER_COMMIT:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            error: Exception | None = None
            try:
                with self._conn:
                    self._conn.executemany(insert, [row for row, _, _ in batch])
                self.rows_written += len(batch)
            except sqlite3.Error as err:
                error = err
                self.failed += len(batch)
            # One wake-up per event loop and commit, not one per row.
            by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
            for _, future, loop in batch:
                by_loop.setdefault(loop, []).append(future)
            for loop, futures in by_loop.items():
                loop.call_soon_threadsafe(_settle, futures, error)


def _settle(futures: list[asyncio.Future[None]], error: Exception | None) -> None:
    for future in futures:
        if future.done():
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Every telemetry row of ``path`` as a dict (for retraining and tests)."""
    conn = sqlite3.connect(path)
    try:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM chunks ORDER BY id")]
    finally:
        conn.close()
