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
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("abr_server.telemetry")

COLUMNS = (
    "received_at_s", "session_id", "chunk_index", "quality", "chunk_bytes", "request_start_ms", "first_byte_ms",
    "end_ms", "delay_ms", "buffer_s", "rebuffer_ms", "decided_quality", "policy", "model_version",
)  # fmt: skip
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


def connect(path: Path) -> sqlite3.Connection:
    """Open (creating) the telemetry database in WAL mode."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, check_same_thread=False, timeout=30.0)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(SCHEMA)
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


def _read_segment(file: Path) -> tuple[list[str], int]:
    """(rows, unreadable lines) of a segment file; a torn last line (a crash mid-write) is unreadable."""
    rows, bad = [], 0
    for line in file.read_text(errors="replace").splitlines():
        try:
            values = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(values, list) and len(values) == len(COLUMNS):
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

    def __init__(self, path: Path, flush_interval_s: float = FLUSH_INTERVAL_S) -> None:
        self.path, self.flush_interval_s = path, flush_interval_s
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
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="abr-telemetry", daemon=True)
        self._thread.start()

    def _open_segment(self) -> _Segment:
        self._seq += 1
        name = f"{self._prefix}-{self._seq:09d}{SEGMENT_SUFFIX}"
        fd = os.open(self._dir / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)  # ours until ingested: no other process recovers it meanwhile
        return _Segment(name, fd, [])

    def append(self, row: Sequence[Any]) -> None:
        """Journal ``row`` (values in `COLUMNS` order); on return it survives a crash of this process."""
        if len(row) != len(COLUMNS):
            raise ValueError(f"telemetry row has {len(row)} values, expected {len(COLUMNS)}")
        text = json.dumps(list(row), separators=(",", ":"), allow_nan=False)  # non-finite: ValueError
        line = (text + "\n").encode()
        with self._lock:
            if os.write(self._current.fd, line) != len(line):
                raise OSError(f"telemetry journal {self._dir}: short write")
            self._current.rows.append(text)

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
        self.flush()
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
