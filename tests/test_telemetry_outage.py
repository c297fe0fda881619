"""Telemetry while the journal cannot be written (a bounded spill, retried, drops counted), and the session sweep."""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from abr_server import service as service_module
from abr_server import telemetry
from abr_server.main import create_app
from abr_server.sessions import SessionStore, sweep_interval_s
from abr_server.settings import Settings
from abr_server.telemetry import TelemetryStore, journal_dir, read_rows
from simulator.observation import ObservationSpec
from tests.test_server import VIDEO, report
from tests.test_telemetry import FAST_S, committed, row, wait_for


class Disk:
    """Stands in for the journal's ``os.write``: full, or taking only part of each write, on demand."""

    def __init__(self) -> None:
        self.full = False
        self.partial = False

    def write(self, fd: int, data: bytes) -> int:
        if self.full:
            if self.partial:
                return os.write(fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return os.write(fd, data)


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch) -> Disk:
    fake = Disk()
    monkeypatch.setattr(telemetry, "_write", fake.write)
    return fake


def outage_lines(caplog: pytest.LogCaptureFixture) -> Callable[[str], int]:
    return lambda text: sum(text in r.getMessage() for r in caplog.records if r.name == "abr_server.telemetry")


@pytest.mark.parametrize("partial", [False, True], ids=["refused", "short-write"])
def test_rows_wait_in_memory_and_reach_sqlite_once_in_order_when_space_returns(
    tmp_path: Path, disk: Disk, caplog: pytest.LogCaptureFixture, partial: bool
) -> None:
    caplog.set_level(logging.INFO, logger="abr_server.telemetry")
    path = tmp_path / "t.sqlite"
    store = TelemetryStore(path, flush_interval_s=FAST_S)
    assert store.append(row("a", 0))
    disk.full, disk.partial = True, partial
    assert [store.append(row("a", k)) for k in range(1, 6)] == [False] * 5
    assert not store.journal_ok
    assert store.spilled == 5
    assert store.outages == 1
    for name in os.listdir(journal_dir(path)):  # no torn row left behind for a recovery to trip on
        content = (journal_dir(path) / name).read_bytes()
        assert content == b"" or content.endswith(b"\n")
    disk.full = False
    wait_for(lambda: store.journal_ok and len(committed(path)) == 6)
    assert store.append(row("a", 6))
    store.close()
    assert committed(path) == [("a", k) for k in range(7)]
    lines = outage_lines(caplog)
    assert lines("cannot write") == 1
    assert lines("writable again; 5 spilled row(s) journaled, 0 dropped") == 1


def test_a_full_spill_drops_new_rows_and_counts_them(
    tmp_path: Path, disk: Disk, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "t.sqlite"
    store = TelemetryStore(path, flush_interval_s=FAST_S, spill_max_rows=3)
    disk.full = True
    for k in range(10):
        store.append(row("a", k))
    assert (store.spilled, store.dropped) == (3, 7)
    assert outage_lines(caplog)("spill full") == 1
    disk.full = False
    wait_for(lambda: len(committed(path)) == 3)
    store.close()
    assert committed(path) == [("a", 0), ("a", 1), ("a", 2)]  # the oldest rows are kept


def test_rows_spilled_at_shutdown_are_reported_lost_and_close_still_succeeds(
    tmp_path: Path, disk: Disk, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "t.sqlite"
    store = TelemetryStore(path, flush_interval_s=3600)
    store.append(row("a", 0))
    disk.full = True
    store.append(row("a", 1))
    store.close()  # no exception
    assert outage_lines(caplog)("1 spilled row(s) lost at shutdown") == 1
    assert committed(path) == [("a", 0)]


def test_a_row_with_a_non_finite_number_is_refused_and_nothing_is_kept(tmp_path: Path) -> None:
    store = TelemetryStore(tmp_path / "t.sqlite", flush_interval_s=FAST_S)
    bad = list(row("a", 0))
    bad[telemetry.COLUMNS.index("delay_ms")] = float("inf")
    with pytest.raises(ValueError, match="Out of range float"):
        store.append(bad)
    assert store.spilled == 0
    store.close()


def test_the_spill_must_hold_a_row(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="spill_max_rows must be at least 1"):
        TelemetryStore(tmp_path / "t.sqlite", spill_max_rows=0)


def test_the_server_keeps_answering_and_ready_through_a_journal_outage(
    tmp_path: Path, disk: Disk, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(telemetry_db=tmp_path / "t.sqlite", telemetry_flush_interval_s=FAST_S, max_wait_ms=0.5)  # type: ignore[call-arg]
    with TestClient(create_app(settings)) as client:
        disk.full = True
        for index in range(3):
            assert client.post("/v1/sessions/out/decision", json=report(index)).status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 200  # a full disk does not take the server out of the load balancer
        assert ready.json()["telemetry"] == "spilling"
        assert "abr_telemetry_spilled_rows 3.0" in client.get("/metrics").text
        disk.full = False
        wait_for(lambda: client.get("/readyz").json()["telemetry"] == "ok")
        metrics = client.get("/metrics").text
        assert "abr_telemetry_spilled_rows 0.0" in metrics
        assert "abr_telemetry_outages 1.0" in metrics
    assert [r["chunk_index"] for r in read_rows(settings.telemetry_db)] == [0, 1, 2]  # type: ignore[arg-type]
    assert not [r for r in caplog.records if r.exc_info]  # one line per outage, no tracebacks


def test_idle_sessions_are_swept_without_being_used_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service_module, "sweep_interval_s", lambda ttl_s: 0.01)
    settings = Settings(telemetry_db=None, session_ttl_s=0.05)  # type: ignore[call-arg]
    with TestClient(create_app(settings)) as client:
        for name in ("a", "b", "c"):
            assert client.post(f"/v1/sessions/{name}/decision", json=report(0)).status_code == 200
        service = client.app.state.service  # type: ignore[attr-defined]
        wait_for(lambda: len(service.store) == 0)
        assert service.store.expired == 3


def test_a_sweep_stops_at_the_first_fresh_session() -> None:
    store = SessionStore(VIDEO, ObservationSpec(), max_sessions=10, ttl_s=10.0)
    for k, seen_s in enumerate([0.0, 1.0, 5.0, 20.0]):
        store.get(f"s{k}", "learned", now_s=seen_s)
    store.get("s0", "learned", now_s=21.0)  # used again: now the freshest
    assert store.sweep(now_s=25.0) == 2  # s1 and s2 are idle over 10 s
    assert sorted(store._sessions) == ["s0", "s3"]


@pytest.mark.parametrize(("ttl_s", "interval_s"), [(0.5, 1.0), (8.0, 2.0), (600.0, 60.0), (1e6, 60.0)])
def test_sweep_interval(ttl_s: float, interval_s: float) -> None:
    assert sweep_interval_s(ttl_s) == interval_s
