"""Chaos benchmark: open-loop load on a real server while it is hot-swapped, starved of disk and killed.

One server process (`local_server`) with a model registry and telemetry. Players post chunk reports
at Poisson times (open loop: a server that falls behind cannot hide it); a share of the requests are
hostile bodies. Over the run, in this order:

1. **steady**: load only (the reference p99);
2. **swaps**: every ``swap_interval_s`` the admin API activates the other good version, and every
   ``bad_every``-th time a bad one (NaN weights, a network that cannot be built, a truncated weights
   file), which must be refused with 409 while the current model keeps serving;
3. **disk full**: the server may not grow any file (``RLIMIT_FSIZE`` = 0 on its process, set from
   outside with ``prlimit``: every journal and database write that needs space fails, as on a full
   disk), then space returns;
4. **kill**: ``SIGKILL``, then a restart on the same port, database and registry; players reconnect.

It reports requests and failures by cause (5xx, connection errors outside the kill window, other
unexpected statuses), p99 per phase, and the telemetry account: every report acknowledged (answered
200) while the journal was writable must be in the database exactly once; those acknowledged while
the disk was full are counted as stored or lost; rows stored whose answer was lost in the kill are
counted apart. Row identity is (session, chunk, request start), unique per report by construction.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import sqlite3
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from abr_common.units import MS_PER_S
from abr_server.lab.launcher import LOOPBACK, free_port, local_server
from abr_server.lab.loadgen import Connection
from abr_server.telemetry import ingest_pending
from policy.learned import DEFAULT_MODEL_DIR
from policy.learning.checkpoint import META_FILE, MODEL_FILE
from simulator.video import Video

#: Phases, in order, as fractions of the run: (name, start, end).
PHASES = (("steady", 0.0, 0.2), ("swaps", 0.2, 0.45), ("calm", 0.45, 0.5), ("disk_full", 0.5, 0.65),
          ("recover", 0.65, 0.75), ("after_kill", 0.75, 1.0))  # fmt: skip
KILL_AT = 0.75
GOOD_VERSIONS = ("good-a", "good-b")
BAD_VERSIONS = ("bad-nan", "bad-kernel", "bad-truncated")
ADMIN_TOKEN = "chaos"
#: Hostile bodies mixed into the load; each must get a 4xx.
FUZZ_BODIES: tuple[bytes, ...] = (
    b'{"a":' * 5000 + b"1" + b"}" * 5000,
    b"[" * 20000 + b"]" * 20000,
    b'{"index": ' + b"9" * 5000 + b"}",
    b'{"index":0,"quality":1,"bytes":2147483648,"mtp":1e-300,"bl":0}',
    b'{"index":0,"quality":1,"bytes":true,"mtp":5000,"bl":0}',
    b'{"index":0,"quality":1,"bytes":"600000","mtp":5000,"bl":0}',
    b'{"index":0,"quality":1,"bytes":600000,"request_start_ms":0,"end_ms":1e12,"buffer_s":1}',
    b'{"index":0,"quality":99,"bytes":600000,"mtp":5000,"bl":0}',
    b"\xff\xfe\x00garbage",
    b"",
    b"null",
    b'{"index": NaN}',
)


@dataclass(frozen=True)
class ChaosConfig:
    """What the run does; times scale with ``seconds``."""

    seconds: float = 60.0
    rate_per_s: float = 300.0
    players: int = 48
    fuzz_fraction: float = 0.05
    swap_interval_s: float = 0.2
    bad_every: int = 4
    seed: int = 0


@dataclass
class Request:
    """One request as the client saw it."""

    sent_s: float  # since the start of the run
    latency_s: float
    status: int  # 0: no answer (connection refused, reset, closed)
    kind: str  # "report" or "fuzz"
    key: tuple[str, int, float] | None = None  # (session, chunk, request start) of a report


@dataclass
class Timeline:
    """When things happened, seconds since the start of the run."""

    fill_s: float | None = None
    free_s: float | None = None
    kill_s: float | None = None
    ready_again_s: float | None = None
    swaps: Counter[str] = field(default_factory=Counter)  # "good:200", "bad:409", ...


def build_registry(root: Path) -> Path:
    """A registry with two good versions (the shipped model) and three bad ones, ``good-a`` active."""
    for version in GOOD_VERSIONS + BAD_VERSIONS:
        shutil.copytree(DEFAULT_MODEL_DIR, root / version)
    weights = root / "bad-nan" / MODEL_FILE
    _poison_weights(weights)
    meta_path = root / "bad-kernel" / META_FILE
    meta = json.loads(meta_path.read_text())
    meta["network"]["kernel"] = 7  # wider than the 8-chunk history allows
    meta_path.write_text(json.dumps(meta))
    truncated = root / "bad-truncated" / MODEL_FILE
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    (root / "ACTIVE").write_text("good-a\n")
    return root


def _poison_weights(path: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].clone().fill_(float("nan"))
    save_file(tensors, str(path))


def _phase_of(t_s: float, seconds: float) -> str:
    for name, start, end in PHASES:
        if start * seconds <= t_s < end * seconds:
            return name
    return PHASES[-1][0]


async def _player(url: str, name: str, video: Video, rng: np.random.Generator, t0: float, stop_at: float,
                  interval_s: float, fuzz_fraction: float, out: list[Request]) -> None:  # fmt: skip
    """Posts reports at Poisson times; reconnects after a failure; a share of its requests are fuzz."""
    throughput_bytes_per_ms = float(rng.uniform(100.0, 1500.0))
    quality, index, clock_ms = 1, 0, 0.0
    path = f"/v1/sessions/{name}/decision"
    conn: Connection | None = None
    due = time.perf_counter() + rng.exponential(interval_s)
    while due < stop_at:
        await asyncio.sleep(max(due - time.perf_counter(), 0.0))
        fuzz = bool(rng.random() < fuzz_fraction)
        key = None
        if fuzz:
            body = FUZZ_BODIES[int(rng.integers(len(FUZZ_BODIES)))]
        else:
            size = int(video.chunk_bytes[quality, index])
            delay_ms = size / throughput_bytes_per_ms + 80.0
            report = {"index": index, "quality": quality, "bytes": size, "request_start_ms": clock_ms,
                      "end_ms": clock_ms + delay_ms, "buffer_s": float(rng.uniform(0.0, 30.0))}  # fmt: skip
            key = (name, index, clock_ms)
            clock_ms += delay_ms
            body = json.dumps(report).encode()
        started = time.perf_counter()
        try:
            if conn is None:
                conn = await Connection.open(url)
            status, payload = await conn.post_json(path, body)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            status, payload = 0, b""
            if conn is not None:
                await conn.close()
            conn = None
        out.append(Request(started - t0, time.perf_counter() - started, status, "fuzz" if fuzz else "report", key))
        due += rng.exponential(interval_s)
        if status == 200 and not fuzz:
            decision = json.loads(payload)
            if decision["end_of_video"]:
                quality, index = 1, 0
            else:
                quality, index = decision["quality"], decision["for_index"]
        elif not fuzz and status == 0:
            index = min(index + 1, video.n_chunks - 1)  # the player moves on; this chunk's report is lost
    if conn is not None:
        await conn.close()


def _admin_post(url: str, path: str) -> int:
    request = urllib.request.Request(f"{url}{path}", method="POST", data=b"",
                                     headers={"authorization": f"Bearer {ADMIN_TOKEN}"})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except (urllib.error.URLError, OSError):
        return 0


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=1.0) as reply:
            return bool(reply.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _set_file_size_limit(pid: int, limit_bytes: int) -> None:
    hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)[1]
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (limit_bytes, hard))


def _stored_keys(db: Path) -> Counter[tuple[str, int, float]]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT session_id, chunk_index, request_start_ms FROM chunks").fetchall()
    return Counter((str(s), int(i), float(r)) for s, i, r in rows)


async def _orchestrate(config: ChaosConfig, url: str, settings: dict[str, object], log_dir: Path, port: int,
                       first: Any, t0: float, timeline: Timeline, stack: contextlib.ExitStack) -> None:  # fmt: skip
    """Swaps, disk full and the kill, at their times (blocking calls run on a thread)."""
    seconds = config.seconds
    process = first.process

    async def until(fraction: float) -> None:
        await asyncio.sleep(max(t0 + fraction * seconds - time.perf_counter(), 0.0))

    await until(PHASES[1][1])
    turn = 0
    while time.perf_counter() < t0 + PHASES[1][2] * seconds:
        turn += 1
        if turn % config.bad_every == 0:
            version, kind = BAD_VERSIONS[(turn // config.bad_every) % len(BAD_VERSIONS)], "bad"
        else:
            version, kind = GOOD_VERSIONS[turn % 2], "good"
        status = await asyncio.to_thread(_admin_post, url, f"/admin/models/{version}/activate")
        timeline.swaps[f"{kind}:{status}"] += 1
        await asyncio.sleep(config.swap_interval_s)
    await until(PHASES[3][1])
    _set_file_size_limit(process.pid, 0)
    timeline.fill_s = time.perf_counter() - t0
    await until(PHASES[3][2])
    _set_file_size_limit(process.pid, resource.RLIM_INFINITY)
    timeline.free_s = time.perf_counter() - t0
    await until(KILL_AT)
    os.kill(process.pid, signal.SIGKILL)
    timeline.kill_s = time.perf_counter() - t0
    await asyncio.to_thread(process.wait)
    # The same port, database and registry; the context manager stops it at the end.
    restarted = local_server(settings=settings, log_path=log_dir / "server-2.log", port=port)
    await asyncio.to_thread(stack.enter_context, restarted)
    timeline.ready_again_s = time.perf_counter() - t0


def _p99_ms(latencies: list[float]) -> float | None:
    return float(np.percentile(np.asarray(latencies) * MS_PER_S, 99)) if latencies else None


def run_chaos(config: ChaosConfig, workdir: Path) -> dict[str, Any]:
    """Run the benchmark in ``workdir`` (registry, database, logs); the results as a JSON-ready dict."""
    video = Video.builtin()
    registry = build_registry(workdir / "models")
    db = workdir / "telemetry.sqlite"
    settings: dict[str, object] = {"models_dir": str(registry), "telemetry_db": str(db), "admin_token": ADMIN_TOKEN,
                                   "device": "cpu", "watch_interval_s": 0}  # fmt: skip
    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    requests: list[Request] = []
    timeline = Timeline()
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(local_server(settings=settings, log_path=workdir / "server-1.log", port=port))

        async def main() -> None:
            t0 = time.perf_counter()
            stop_at = t0 + config.seconds
            rngs = np.random.default_rng(config.seed).spawn(config.players)
            interval_s = config.players / config.rate_per_s
            players = [_player(url, f"chaos-{i}", video, rngs[i], t0, stop_at, interval_s, config.fuzz_fraction,
                               requests) for i in range(config.players)]  # fmt: skip
            await asyncio.gather(_orchestrate(config, url, settings, workdir, port, first, t0, timeline, stack),
                                 *players)  # fmt: skip

        asyncio.run(main())
    ingest_pending(db)  # anything journaled but not yet moved (nothing, after a graceful stop)
    return _account(config, requests, timeline, _stored_keys(db), workdir)


def _in_kill_window(t_s: float, timeline: Timeline) -> bool:
    return (
        timeline.kill_s is not None
        and timeline.ready_again_s is not None
        and (timeline.kill_s - 0.05 <= t_s <= timeline.ready_again_s + 0.05)
    )


def _during_outage(t_s: float, timeline: Timeline) -> bool:
    return timeline.fill_s is not None and timeline.free_s is not None and timeline.fill_s <= t_s <= timeline.free_s


def _account(config: ChaosConfig, requests: list[Request], timeline: Timeline,
             stored: Counter[tuple[str, int, float]], workdir: Path) -> dict[str, Any]:  # fmt: skip
    failures: Counter[str] = Counter()
    latencies: dict[str, list[float]] = {name: [] for name, _, _ in PHASES}
    acked_writable: list[tuple[str, int, float]] = []
    acked_outage: list[tuple[str, int, float]] = []
    for r in requests:
        in_kill = _in_kill_window(r.sent_s, timeline)
        if r.status >= 500:
            failures["5xx"] += 1
        elif r.status == 0:
            failures["kill window (expected)" if in_kill else "connection"] += 1
        elif r.kind == "fuzz" and not 400 <= r.status < 500:
            failures[f"fuzz answered {r.status}"] += 1
        elif r.kind == "report" and r.status != 200:
            failures[f"report answered {r.status}"] += 1
        if r.kind == "report" and r.status == 200:
            assert r.key is not None
            (acked_outage if _during_outage(r.sent_s, timeline) else acked_writable).append(r.key)
            latencies[_phase_of(r.sent_s, config.seconds)].append(r.latency_s)
    acked = set(acked_writable) | set(acked_outage)
    missing = [k for k in acked_writable if stored[k] == 0]
    duplicated = [k for k in acked if stored[k] > 1]
    p99 = {name: _p99_ms(values) for name, values in latencies.items()}
    steady, swaps = p99["steady"], p99["swaps"]
    logs = "".join((workdir / f"server-{k}.log").read_text(errors="replace") for k in (1, 2)
                   if (workdir / f"server-{k}.log").exists())  # fmt: skip
    return {
        "config": asdict(config),
        "requests": len(requests),
        "reports": sum(r.kind == "report" for r in requests),
        "fuzz": sum(r.kind == "fuzz" for r in requests),
        "failures": dict(failures),
        "unexpected_failures": sum(n for cause, n in failures.items() if cause != "kill window (expected)"),
        "timeline_s": {
            "fill": timeline.fill_s,
            "free": timeline.free_s,
            "kill": timeline.kill_s,
            "ready_again": timeline.ready_again_s,
        },
        "swaps": dict(timeline.swaps),
        "p99_ms": p99,
        "p99_swaps_over_steady": swaps / steady if swaps and steady else None,
        "telemetry": {
            "acknowledged_while_writable": len(acked_writable),
            "missing": len(missing),
            "duplicated": len(duplicated),
            "acknowledged_while_disk_full": len(acked_outage),
            "stored_of_those": sum(stored[k] > 0 for k in acked_outage),
            "stored_not_acknowledged": sum(1 for k in stored if k not in acked),
        },
        "server_tracebacks": logs.count("Traceback"),
    }
