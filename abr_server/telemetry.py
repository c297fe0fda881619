"""Telemetry: every chunk report appended to SQLite (WAL), group-committed before it is acknowledged.

A request queues its row and waits until the transaction holding it is committed, so a decision is only
acknowledged once its report is in the database (a restart of the server loses nothing acknowledged).
Rows queued during one turn of the event loop are committed together at the end of that turn, in the
event loop itself: in WAL mode with ``synchronous=NORMAL`` a commit is a write into the WAL without an
fsync (tens of microseconds), far cheaper than handing rows to a thread, which under load waits for the
GIL once per row (milliseconds each; BENCHMARKS.md, "Decision server"). What could block the loop runs
on a writer thread instead:

- checkpoints (copying the WAL into the database, with fsyncs), every ``checkpoint_interval_s``;
- a batch that finds the database locked by another writer (a second server worker, a tool): the loop
  never waits for a lock; the thread waits, commits it, and batches after it follow it there, in order,
  until it is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
import time
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
INSERT = f"INSERT INTO chunks ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
#: Seconds the writer thread waits for a database locked by another writer before failing a batch.
LOCK_WAIT_S = 10.0


def connect(path: Path, lock_wait_s: float = LOCK_WAIT_S) -> sqlite3.Connection:
    """Open (creating) the telemetry database in WAL mode; statements wait up to ``lock_wait_s`` for a lock."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, timeout=lock_wait_s, check_same_thread=False)
    except (OSError, sqlite3.Error) as err:
        raise ValueError(f"telemetry database {path}: cannot open ({err})") from None
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(SCHEMA)
    return conn


LOOP, WRITER = 0, 1  # who committed (counter index)
_Batch = list[tuple[tuple[Any, ...], asyncio.Future[None]]]


class TelemetryStore:
    """Appends rows from coroutines of one event loop; commits each loop turn's rows in one transaction."""

    def __init__(self, path: Path, checkpoint_interval_s: float = 1.0) -> None:
        self.path = path
        self.checkpoint_interval_s = checkpoint_interval_s
        self._conn = connect(path, lock_wait_s=0.0)  # the event loop never waits for a lock
        self._conn.isolation_level = None  # explicit BEGIN IMMEDIATE / COMMIT
        self._conn.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints run on the writer thread
        self._writer_conn = connect(path)
        self._writer_conn.execute("PRAGMA wal_autocheckpoint=0")
        self._pending: _Batch = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handed_off = 0  # batches given to the thread and not yet committed (changed in the loop only)
        self._queue: queue.Queue[_Batch | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="abr-telemetry", daemon=True)
        # Counters per thread (the loop's and the writer's), so that neither loses the other's increments.
        self._written = [0, 0]
        self._failed = [0, 0]
        self.handed_off_batches = 0
        self._thread.start()

    @property
    def rows_written(self) -> int:
        """Rows committed so far."""
        return sum(self._written)

    @property
    def failed(self) -> int:
        """Rows whose transaction failed (their requests were answered, and the loss counted)."""
        return sum(self._failed)

    async def append(self, row: Sequence[Any]) -> None:
        """Queue ``row`` (values in `COLUMNS` order) and return once it is committed."""
        if len(row) != len(COLUMNS):
            raise ValueError(f"telemetry row has {len(row)} values, expected {len(COLUMNS)}")
        loop = asyncio.get_running_loop()
        self._loop = loop
        future: asyncio.Future[None] = loop.create_future()
        if not self._pending:
            loop.call_soon(self.flush)  # after the callbacks already due this turn, which may add rows
        self._pending.append((tuple(row), future))
        await future

    def flush(self) -> None:
        """Commit the queued rows now (in the event loop), or hand them to the writer thread."""
        batch, self._pending = self._pending, []
        if not batch:
            return
        if self._handed_off == 0:  # otherwise earlier rows are still on the thread: keep the order
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError:  # locked by another writer: the thread waits, not the loop
                pass
            else:
                error = self._insert(self._conn, batch, LOOP)
                _settle(batch, error)
                return
        self._handed_off += 1
        self.handed_off_batches += 1
        self._queue.put(batch)

    def close(self) -> None:
        """Commit what is queued, checkpoint, and stop the writer (call from the loop's thread or after it)."""
        self.flush()
        self._queue.put(None)
        self._thread.join(timeout=LOCK_WAIT_S + 5)
        self._conn.close()

    def _insert(self, conn: sqlite3.Connection, batch: _Batch, by: int) -> Exception | None:
        """Insert and commit ``batch`` in the transaction ``conn`` has begun; the error if it failed."""
        try:
            conn.executemany(INSERT, [row for row, _ in batch])
            conn.execute("COMMIT")
        except sqlite3.Error as err:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._failed[by] += len(batch)
            return err
        self._written[by] += len(batch)
        return None

    def _run(self) -> None:
        conn = self._writer_conn
        conn.isolation_level = None
        next_checkpoint = time.monotonic() + self.checkpoint_interval_s
        while True:
            try:
                batch = self._queue.get(timeout=max(0.0, next_checkpoint - time.monotonic()))
            except queue.Empty:
                batch = []
            if batch is None:
                break
            if batch:
                try:
                    conn.execute("BEGIN IMMEDIATE")  # waits up to LOCK_WAIT_S for other writers
                    error = self._insert(conn, batch, WRITER)
                except sqlite3.Error as err:
                    self._failed[WRITER] += len(batch)
                    error = err
                loop = self._loop
                if loop is not None and not loop.is_closed():
                    loop.call_soon_threadsafe(self._settle_handed_off, batch, error)
            if time.monotonic() >= next_checkpoint:
                self._checkpoint(conn)
                next_checkpoint = time.monotonic() + self.checkpoint_interval_s
        self._checkpoint(conn)
        conn.close()

    def _settle_handed_off(self, batch: _Batch, error: Exception | None) -> None:
        self._handed_off -= 1
        _settle(batch, error)

    @staticmethod
    def _checkpoint(conn: sqlite3.Connection) -> None:
        # PASSIVE: copies what it can without waiting for readers or writers; if it fails, the next one
        # catches up (the rows are safe in the WAL meanwhile).
        with contextlib.suppress(sqlite3.Error):
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")


def _settle(batch: _Batch, error: Exception | None) -> None:
    for _, future in batch:
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
