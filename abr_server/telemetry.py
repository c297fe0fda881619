"""Telemetry: every chunk report appended to a journal before the answer, then to SQLite (WAL) in groups.

Acknowledging a decision only after its row was committed to SQLite put a thread round trip and an
event-loop wake-up on every request, which measured as a third of the server's throughput and most of
its latency tail (BENCHMARKS.md). Instead, a report is made durable the way SQLite's own WAL does it:
`TelemetryStore.append` writes the row as one JSON line to this process's journal segment (one
``write`` system call, a few microseconds, in the event loop) and returns; the row is then on the
operating system, so a crash or kill of the server loses nothing acknowledged (as before, and as with
SQLite at ``synchronous=NORMAL``, a power loss may lose the last moments). A writer thread rotates the
segment every `FLUSH_INTERVAL_S`, inserts its rows into SQLite in one transaction, which also records the
segment's name as ingested, and deletes the segment. Rows reach SQLite within about that interval.

Each process holds an exclusive ``flock`` on the segments it has not ingested yet. Segments whose owner
died (a killed server) are ingested by the next store opened on the database, or by `ingest_pending`;
the ingested-segment record makes that exactly-once even if a crash came between commit and delete.

When the journal cannot be written (disk full, quota, I/O error), decisions go on: rows wait in a
bounded in-memory spill (`SPILL_MAX_ROWS`; newer rows queue behind older ones, so order is kept) and the
writer thread retries every interval; a row that finds the spill full is dropped and counted. Spilled
rows are not durable: a crash during the outage loses them. One log line marks the outage's start, one
its end (with the rows spilled and dropped). A write that fails half-way is cut back, so the journal
never holds a torn row in the middle.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("abr_server.telemetry")

COLUMNS = (
    "received_at_s", "session_id", "chunk_index", "quality", "chunk_bytes", "request_start_ms", "first_byte_ms",
    "end_ms", "delay_ms", "buffer_s", "rebuffer_ms", "decided_quality", "policy", "model_version", "video",
)  # fmt: skip
#: Columns added since the first schema: an older database gets them (NULL in its rows) when opened, and an
#: older server's journal lines, without them, are ingested with NULL there.
ADDED_COLUMNS = ("video",)
# Readers select by arrival time (retraining windows), so that is the index; it is also the cheapest to
# keep (appends at the end of the b-tree).
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    {", ".join(COLUMNS)}
);
CREATE INDEX IF NOT EXISTS chunks_received ON chunks (received_at_s);
CREATE TABLE IF NOT EXISTS ingested_segments (name TEXT PRIMARY KEY);
"""
# A segment goes in as one statement over one JSON array of rows, so SQLite parses and inserts them all in
# one call that runs without the GIL: the event loop's thread is not held up by the writer's inserts.
INSERT_JSON = (
    f"INSERT INTO chunks ({', '.join(COLUMNS)}) SELECT "
    + ", ".join(f"json_extract(value, '$[{i}]')" for i in range(len(COLUMNS)))
    + " FROM json_each(?)"
)
#: How often the writer moves journaled rows into SQLite.
FLUSH_INTERVAL_S = 0.1
SEGMENT_SUFFIX = ".jsonl"
#: Rows held in memory while the journal cannot be written (about 250 bytes each: 25 MB).
SPILL_MAX_ROWS = 100_000
#: Spilled rows go back to the journal in writes of at most this many.
SPILL_BATCH_ROWS = 1000


def connect(path: Path) -> sqlite3.Connection:
    """Open (creating) the telemetry database in WAL mode."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, check_same_thread=False, timeout=30.0)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(SCHEMA)
        present = {row[1] for row in conn.execute("PRAGMA table_info(chunks)")}
        for column in ADDED_COLUMNS:
            if column not in present:
                conn.execute(f"ALTER TABLE chunks ADD COLUMN {column}")
    except (OSError, sqlite3.Error) as err:
        raise ValueError(f"telemetry database {path}: cannot open ({err})") from None
    return conn


def journal_dir(path: Path) -> Path:
    """The folder of ``path``'s journal segments (``NAME.pending/`` beside the database)."""
    return path.with_name(path.name + ".pending")


@dataclass
class _Segment:
    name: str
    fd: int
    rows: list[str]  # each row as a JSON array
    size: int = 0  # bytes of whole rows written


_write = os.write  # the one system call that journals rows (tests replace it to fill the disk)


def _append_lines(segment: _Segment, texts: Sequence[str]) -> OSError | None:
    """Write ``texts`` (rows) to ``segment`` in one call; on failure, cut the file back and return why."""
    data = "".join(text + "\n" for text in texts).encode()
    problem: OSError | None = None
    try:
        written = _write(segment.fd, data)
    except OSError as err:
        written, problem = -1, err
    if problem is None and written != len(data):
        problem = OSError(errno.ENOSPC, f"short write ({written} of {len(data)} bytes)")
    if problem is not None:
        if written != 0:  # a failed write may still have left part of it
            with contextlib.suppress(OSError):
                os.ftruncate(segment.fd, segment.size)  # no torn row for a recovery to trip on
        return problem
    segment.size += written
    segment.rows.extend(texts)
    return None


def _read_segment(file: Path) -> tuple[list[str], int]:
    """(rows, unreadable lines) of a segment file; a torn last line (a crash mid-write) is unreadable."""
    rows, bad = [], 0
    for line in file.read_text(errors="replace").splitlines():
        try:
            values = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(values, list) and len(COLUMNS) - len(ADDED_COLUMNS) <= len(values) <= len(COLUMNS):
            rows.append(line)
        else:
            bad += 1
    return rows, bad


def _commit_segment(conn: sqlite3.Connection, name: str, rows: Sequence[str]) -> bool:
    """Insert ``rows`` and mark segment ``name`` ingested, atomically; False if it already was."""
    try:
        with conn:
            conn.execute("INSERT INTO ingested_segments (name) VALUES (?)", (name,))
            conn.execute(INSERT_JSON, ("[" + ",".join(rows) + "]",))
    except sqlite3.IntegrityError:
        return False  # another process ingested it first (the record is the primary key)
    return True


def _forget_segment(conn: sqlite3.Connection, name: str) -> None:
    with conn:
        conn.execute("DELETE FROM ingested_segments WHERE name = ?", (name,))


def _ingest_orphans(conn: sqlite3.Connection, folder: Path) -> int:
    """Ingest every segment in ``folder`` that no live process holds; the number of rows added."""
    added = 0
    for file in sorted(folder.glob(f"*{SEGMENT_SUFFIX}")):
        try:
            fd = os.open(file, os.O_RDONLY)
        except FileNotFoundError:
            continue  # its owner ingested and deleted it meanwhile
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live process's segment: it ingests it itself
            if not file.exists():
                continue
            rows, bad = _read_segment(file)
            if bad:
                log.warning("telemetry journal %s: %d unreadable line(s) skipped", file, bad)
            if _commit_segment(conn, file.name, rows):
                added += len(rows)
            file.unlink()
            _forget_segment(conn, file.name)
        finally:
            os.close(fd)
    return added


def ingest_pending(path: Path) -> int:
    """Move rows journaled by servers that stopped without ingesting them into ``path``; rows added."""
    folder = journal_dir(path)
    if not folder.is_dir():
        return 0
    conn = connect(path)
    try:
        return _ingest_orphans(conn, folder)
    finally:
        conn.close()


class TelemetryStore:
    """Journals rows on `append` (durable on return); a writer thread moves them into SQLite."""

    def __init__(
        self, path: Path, flush_interval_s: float = FLUSH_INTERVAL_S, spill_max_rows: int = SPILL_MAX_ROWS
    ) -> None:
        if spill_max_rows < 1:
            raise ValueError(f"spill_max_rows must be at least 1, got {spill_max_rows}")
        self.path, self.flush_interval_s, self.spill_max_rows = path, flush_interval_s, spill_max_rows
        self._conn = connect(path)
        self._dir = journal_dir(path)
        try:
            self._dir.mkdir(exist_ok=True)
        except OSError as err:
            raise ValueError(f"telemetry journal {self._dir}: cannot create ({err})") from None
        self.recovered = _ingest_orphans(self._conn, self._dir)
        if self.recovered:
            log.info("telemetry: %d journaled row(s) of an earlier server ingested", self.recovered)
        self._prefix = f"{os.getpid()}-{time.time_ns()}"
        self._seq = 0
        self._lock = threading.Lock()  # guards the current segment (append vs rotation)
        self._flush_lock = threading.Lock()  # one flush at a time
        self._current = self._open_segment()
        self._closed_segments: list[_Segment] = []  # rotated out, not yet in SQLite
        self.rows_written = 0
        self.failed = 0  # rows whose move into SQLite is failing now (they stay journaled and are retried)
        self.failures = 0  # failed attempts so far
        self._spill: deque[str] = deque()  # rows waiting for the journal to be writable again
        self.spilled_total = 0  # rows that went through the spill
        self.dropped = 0  # rows lost because the spill was full
        self.outages = 0  # times the journal stopped being writable
        self._outage: tuple[int, int] | None = None  # (spilled_total, dropped) when the current outage began
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="abr-telemetry", daemon=True)
        self._thread.start()

    def _open_segment(self) -> _Segment:
        self._seq += 1
        name = f"{self._prefix}-{self._seq:09d}{SEGMENT_SUFFIX}"
        fd = os.open(self._dir / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)  # ours until ingested: no other process recovers it meanwhile
        return _Segment(name, fd, [])

    @property
    def spilled(self) -> int:
        """Rows in memory now, waiting for the journal."""
        return len(self._spill)

    @property
    def journal_ok(self) -> bool:
        """The journal is being written (no outage now)."""
        return self._outage is None

    def append(self, row: Sequence[Any]) -> bool:
        """Journal ``row`` (values in `COLUMNS` order): True if it is durable on return (survives a crash of
        this process), False if it waits in the spill or was dropped (the journal cannot be written).

        Raises ValueError for a row of the wrong length or with a non-finite number (nothing is kept).
        """
        if len(row) != len(COLUMNS):
            raise ValueError(f"telemetry row has {len(row)} values, expected {len(COLUMNS)}")
        text = json.dumps(list(row), separators=(",", ":"), allow_nan=False)  # non-finite: ValueError
        with self._lock:
            if not self._spill:
                problem = _append_lines(self._current, (text,))
                if problem is None:
                    return True
                self._begin_outage(problem)
            if len(self._spill) >= self.spill_max_rows:
                if self.dropped == (self._outage[1] if self._outage else 0):
                    log.error("telemetry: spill full (%d rows); dropping rows until the journal is writable",
                              len(self._spill))  # fmt: skip
                self.dropped += 1
            else:
                self._spill.append(text)
                self.spilled_total += 1
            return False

    def _begin_outage(self, problem: OSError) -> None:
        if self._outage is None:
            self._outage = (self.spilled_total, self.dropped)
            self.outages += 1
            log.error("telemetry journal %s: cannot write (%s); rows wait in memory (up to %d) and are retried",
                      self._dir, problem, self.spill_max_rows)  # fmt: skip

    def _drain_spill(self) -> None:
        """Move spilled rows into the journal, oldest first, while it takes them."""
        while True:
            with self._lock:
                if not self._spill:
                    break
                batch = [self._spill[k] for k in range(min(SPILL_BATCH_ROWS, len(self._spill)))]
                if _append_lines(self._current, batch) is not None:
                    return  # still failing: the next interval retries
                for _ in batch:
                    self._spill.popleft()
        with self._lock:
            if self._outage is not None:
                spilled, dropped = self.spilled_total - self._outage[0], self.dropped - self._outage[1]
                self._outage = None
                log.warning("telemetry journal %s: writable again; %d spilled row(s) journaled, %d dropped",
                            self._dir, spilled, dropped)  # fmt: skip

    def flush(self) -> None:
        """Move everything journaled so far into SQLite now (the writer does this every interval)."""
        with self._flush_lock:
            with self._lock:
                if self._current.rows:
                    fresh = self._open_segment()  # if this fails, nothing has moved
                    self._closed_segments.append(self._current)
                    self._current = fresh
            while self._closed_segments:
                segment = self._closed_segments[0]
                try:
                    _commit_segment(self._conn, segment.name, segment.rows)
                except sqlite3.Error as err:
                    if not self.failed:  # once per outage, not every interval
                        log.error("telemetry: rows not moved into %s (%s); kept in the journal, retrying",
                                  self.path, err)  # fmt: skip
                    self.failed = sum(len(s.rows) for s in self._closed_segments)
                    self.failures += 1
                    return
                self._closed_segments.pop(0)
                self.rows_written += len(segment.rows)
                self._retire(segment)
            self.failed = 0

    def _retire(self, segment: _Segment) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self._dir / segment.name).unlink()
        os.close(segment.fd)
        with contextlib.suppress(sqlite3.Error):
            _forget_segment(self._conn, segment.name)

    def close(self) -> None:
        """Move what is journaled into SQLite and stop the writer (rows that cannot be stay journaled)."""
        self._stop.set()
        self._thread.join(timeout=30)
        self._drain_spill()
        if self._spill:
            log.error("telemetry: %d spilled row(s) lost at shutdown (the journal %s cannot be written)",
                      len(self._spill), self._dir)  # fmt: skip
        try:
            self.flush()
        except OSError as err:  # no new segment file: what is journaled stays for the next start
            log.error("telemetry journal %s: %s; journaled rows are ingested at the next start", self._dir, err)
        with self._lock:
            if not self._current.rows:  # else: appended meanwhile; the next start ingests it
                self._retire(self._current)
            else:
                os.close(self._current.fd)
        for segment in self._closed_segments:  # could not be moved: the next start retries
            os.close(segment.fd)
        self._conn.close()

    def _run(self) -> None:
        while not self._stop.wait(self.flush_interval_s):
            if self._spill or self._outage is not None:
                self._drain_spill()
            if self._current.rows or self._closed_segments:  # a racy peek is fine: the next turn sees it
                try:
                    self.flush()
                except OSError as err:  # e.g. no new segment file (disk full): rows stay journaled, retry
                    self.failures += 1
                    log.error("telemetry journal %s: %s", self._dir, err)


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Every telemetry row of ``path`` as a dict (for retraining and tests)."""
    conn = sqlite3.connect(path)
    try:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM chunks ORDER BY id")]
    finally:
        conn.close()
