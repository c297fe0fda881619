"""abr serve as a real uvicorn process: answers, metrics, and nothing acknowledged is lost on restart."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from abr_server.lab.launcher import local_server
from abr_server.lab.loadgen import run_load
from abr_server.telemetry import ingest_pending, read_rows
from simulator.video import Video


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path, subprocess.Popen[bytes]]]:
    db = tmp_path / "telemetry.sqlite"
    with local_server({"ABR_TELEMETRY_DB": str(db), "ABR_DEVICE": "cpu"}) as (url, proc):
        yield url, db, proc


@pytest.mark.slow
def test_real_server_answers_and_keeps_acknowledged_reports(server: tuple[str, Path, subprocess.Popen[bytes]]) -> None:
    url, db, proc = server
    acknowledged = 0
    with httpx.Client(base_url=url) as client:
        for index in range(5):
            body = {"index": index, "quality": 1, "bytes": 500_000, "request_start_ms": index * 1000.0,
                    "end_ms": index * 1000.0 + 600, "buffer_s": 8.0}  # fmt: skip
            reply = client.post("/v1/sessions/real/decision", json=body)
            assert reply.status_code == 200
            assert reply.json()["policy"] == "learned"
            acknowledged += 1
        assert client.post("/v1/sessions/real/decision", json={"index": -1}).status_code == 422
        assert "abr_decision_latency_seconds_count" in client.get("/metrics").text
    proc.kill()  # no graceful shutdown at all: what was acknowledged must already be journaled
    proc.wait(timeout=30)
    in_database = len(read_rows(db))
    assert in_database + ingest_pending(db) == acknowledged  # the rest was journaled: the next start moves it in
    assert len(read_rows(db)) == acknowledged


@pytest.mark.slow
def test_load_generator_drives_a_real_server(server: tuple[str, Path, subprocess.Popen[bytes]]) -> None:
    url, db, _ = server
    video = Video.builtin()
    closed = asyncio.run(run_load(url, concurrency=4, seconds=1.0, video=video))
    opened = asyncio.run(run_load(url, concurrency=4, seconds=1.0, video=video, rate_per_s=40.0))
    assert closed.errors == opened.errors == 0
    assert closed.decisions > 20  # a closed loop asks as fast as the server answers
    assert 10 <= opened.decisions <= 80  # Poisson arrivals at 40/s for 1 s
    assert 0 < closed.p50_ms <= closed.p99_ms
    assert closed.mean_batch is not None
    assert 1.0 <= closed.mean_batch <= 4.0
    deadline = time.monotonic() + 5.0  # rows reach the database within the flush interval (0.1 s)
    while len(read_rows(db)) < closed.decisions + opened.decisions and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(read_rows(db)) == closed.decisions + opened.decisions  # every answer was logged


@pytest.mark.slow
def test_bench_serve_runs_each_offered_rate(tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from abr_cli.main import app

    out = tmp_path / "serve.json"
    args = ["bench", "serve", "--seconds", "0.5", "--concurrency", "2", "--rate", "20", "--rate", "40",
            "--batch", "1", "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    load = json.loads(out.read_text())["load"]
    assert [row["offered_per_s"] for row in load] == [None, 20.0, 40.0]
    assert all(row["errors"] == 0 and row["decisions"] > 0 for row in load)
    assert all(row["mean_batch"] >= 1.0 for row in load)
    # Two server processes: each one's /metrics counts only its own batches, so no mean batch is claimed.
    args = ["bench", "serve", "--seconds", "0.5", "--concurrency", "2", "--rate", "0", "--workers", "2",
            "--batch", "1", "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert [row["mean_batch"] for row in json.loads(out.read_text())["load"]] == [None]
    # Beside the default video another (another ladder): each load alone, then players spread over both.
    other = tmp_path / "other"
    other.mkdir()
    for level, kbps in enumerate((400, 1000, 2500)):
        (other / f"video_size_{level}").write_text(f"{kbps * 250}\n" * 10)
    (other / "asset.json").write_text(json.dumps({"bitrates_kbps": [400, 1000, 2500], "segment_s": 2.0,
                                                  "n_segments": 10}))  # fmt: skip
    args = ["bench", "serve", "--seconds", "0.5", "--concurrency", "4", "--rate", "0", "--batch", "1",
            "--also-video", f"other={other}", "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    load = json.loads(out.read_text())["load"]
    assert [row["videos"] for row in load] == [1, 2]
    assert all(row["errors"] == 0 and row["decisions"] > 0 for row in load)


@pytest.mark.slow
def test_a_local_server_with_workers_leaves_no_process_behind() -> None:
    with local_server({"ABR_TELEMETRY_DB": ""}, workers=2) as (url, proc):
        assert httpx.get(f"{url}/healthz").status_code == 200
        group = os.getpgid(proc.pid)
        assert group == proc.pid  # a group of its own: the master and its workers

    def running() -> list[int]:
        members = [pid for pid in map(int, filter(str.isdigit, os.listdir("/proc"))) if _group_of(pid) == group]
        return [pid for pid in members if _state_of(pid) not in ("Z", "X", None)]

    deadline = time.monotonic() + 5.0  # a SIGKILLed process takes a moment to be torn down
    while running() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert running() == []  # nobody left running in it
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/healthz")


def _group_of(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def _state_of(pid: int) -> str | None:
    """The process's state letter (R, S, Z for a zombie, ...), None if it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


@pytest.mark.parametrize("entry", ["abr serve", "python -m abr_server"])
def test_bad_settings_get_one_line_naming_the_field_and_no_server(entry: str) -> None:
    import sys

    cmd = [sys.executable, "-m", "abr_cli.main", "serve"] if entry == "abr serve" else [sys.executable, "-m",
                                                                                         "abr_server"]  # fmt: skip
    env = {**os.environ, "ABR_WATCH_INTERVAL_S": "-1"}
    done = subprocess.run([*cmd, "--port", "1"], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "watch_interval_s: Input should be greater than or equal to 0" in lines[0]


def _bad_start_cases(tmp_path: Path) -> list[tuple[dict[str, str], str]]:
    """(environment, what the one stderr line must name)."""
    not_sqlite = tmp_path / "not.sqlite"
    not_sqlite.write_text("not a database")
    return [
        ({"ABR_POLICY": "no-such-rule"}, "policy 'no-such-rule'"),
        ({"ABR_VIDEO": str(tmp_path / "missing-video")}, "video"),
        ({"ABR_DEVICE": "tpu"}, "device"),
        ({"ABR_TELEMETRY_DB": str(not_sqlite)}, "telemetry_db"),
        ({"ABR_TELEMETRY_DB": str(tmp_path)}, "is a folder"),
        ({"ABR_MODELS_DIR": str(tmp_path / "no-models")}, "models_dir"),
    ]


@pytest.mark.parametrize(("entry", "case"), [*(("abr serve", case) for case in range(6)), ("python -m abr_server", 0)])
def test_an_unusable_setting_stops_start_up_with_one_line_and_creates_nothing(
    entry: str, case: int, tmp_path: Path
) -> None:
    import sys

    env_extra, named = _bad_start_cases(tmp_path)[case]
    before = sorted(tmp_path.rglob("*"))
    cmd = [sys.executable, "-m", "abr_cli.main", "serve"] if entry == "abr serve" else [sys.executable, "-m",
                                                                                         "abr_server"]  # fmt: skip
    env = {**os.environ, **env_extra}
    done = subprocess.run([*cmd, "--port", "8339"], env=env, capture_output=True, text=True, timeout=60,
                          check=False, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert named in lines[0]
    assert "listening" not in done.stdout
    assert sorted(tmp_path.rglob("*")) == before  # no telemetry database or folder left behind


def test_a_port_in_use_is_named_before_any_worker_starts() -> None:
    import socket

    from abr_server.run import preflight
    from abr_server.settings import Settings

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ValueError, match=f"port {port} on 127.0.0.1"):
            preflight(Settings(telemetry_db=None), "127.0.0.1", port)
    preflight(Settings(telemetry_db=None), "127.0.0.1", port)  # free again: no error


def test_an_unresolvable_host_is_named() -> None:
    from abr_server.run import preflight
    from abr_server.settings import Settings

    with pytest.raises(ValueError, match=r"host 'no-such-host\.invalid'"):
        preflight(Settings(telemetry_db=None), "no-such-host.invalid", 0)


def test_a_telemetry_database_in_a_folder_to_be_created_passes_without_creating_it(tmp_path: Path) -> None:
    from abr_server.run import preflight
    from abr_server.settings import Settings

    db = tmp_path / "a" / "b" / "telemetry.sqlite"
    preflight(Settings(telemetry_db=db), "127.0.0.1", 0)
    assert not (tmp_path / "a").exists()
