"""Fleet players that ask a running decision server, over HTTP, exactly as a real player would.

`RemoteDecider` plugs into `simulator.fleet.simulate_fleet`: after every chunk a player POSTs its
report to ``/v1/sessions/{id}/decision`` (chunk index, level, bytes, request start and end on the
fleet's simulated clock in ms, buffer after the chunk, cumulative stall time) and fetches the level it
is told. Players deciding at the same simulated instant ask concurrently (one keep-alive connection
per worker thread). A request that fails gets a local BB decision, counted in ``errors``; the
simulation never stops for the server. Client-side latency of every request is kept.

`stream_through_server` runs a whole fleet through a server that way, and `served_model_version` /
`wait_for_model_version` read which registry version it serves (the retraining tests and benchmarks).
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.request
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import numpy as np
import simpy

from abr_common.units import KBIT_PER_MBIT, MS_PER_S
from policy.base import make_policy
from simulator.fleet import FleetConfig, FleetResult, PlayerLog, simulate_fleet
from simulator.observation import Observation
from simulator.video import Video
from traces.trace import Trace

#: Concurrent requests at most (players deciding at one instant beyond this wait for a connection).
MAX_PARALLEL = 32
TIMEOUT_S = 10.0
#: How often `wait_for_model_version` asks the server.
VERSION_POLL_S = 0.2


class RemoteDecider:
    """Decisions from a decision server at ``url`` (``http://host:port``)."""

    def __init__(self, env: simpy.Environment, url: str, video: Video) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"server url {url!r}: expected http://host:port")
        self.env, self.url, self.video = env, url, video
        self.host, self.port = parts.hostname, parts.port or 80
        self.run_id = uuid.uuid4().hex[:8]
        self.calls = self.decisions = self.errors = 0
        self.latencies_s: list[float] = []
        self.policies: dict[str, int] = {}
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(MAX_PARALLEL, thread_name_prefix="abr-fleet-client")
        self._pending: list[tuple[int, Observation, PlayerLog, simpy.Event]] = []
        self._fallback = make_policy("bba")
        self._fallback.begin(1, video)
        self.started_wall_s = time.perf_counter()
        self._check_server()

    def _check_server(self) -> None:
        status, body = self._request("GET", "/player/config.json", None)
        if status != 200:
            raise ValueError(f"{self.url}: not an abr_server (GET /player/config.json answered {status})")
        config = json.loads(body)
        if list(config["bitrates_kbps"]) != [int(b) for b in self.video.bitrates_kbps]:
            raise ValueError(f"{self.url} serves the ladder {config['bitrates_kbps']}, the fleet's video has "
                             f"{list(self.video.bitrates_kbps)}")  # fmt: skip
        if config["n_chunks"] != self.video.n_chunks:
            raise ValueError(
                f"{self.url} serves {config['n_chunks']} chunks, the fleet's video has {self.video.n_chunks}"
            )

    def _connection(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = http.client.HTTPConnection(self.host, self.port, timeout=TIMEOUT_S)
        return conn

    def _request(self, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
        """One request; a kept-alive connection the server has closed meanwhile is reopened once.

        Retrying is safe: the server answers a repeated report from the session's last decision.
        """
        headers = {"content-type": "application/json"} if body is not None else {}
        for _attempt in range(2):
            conn = self._connection()
            try:
                conn.request(method, path, body=body, headers=headers)
                reply = conn.getresponse()
                return reply.status, reply.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                self._local.conn = None
        return 0, b""

    def report(self, player: int, log: PlayerLog, obs: Observation | None = None) -> bytes:
        """The v1 report of ``player``'s last chunk; the first one carries the player's throughput prior
        (from ``obs``) where it has one."""
        start_ms = log.request_s[-1] * MS_PER_S
        body = {
            "index": len(log.quality) - 1, "quality": log.quality[-1], "bytes": log.chunk_bytes[-1],
            "request_start_ms": round(start_ms, 3), "end_ms": round(start_ms + log.delay_ms[-1], 3),
            "buffer_s": log.buffer_s[-1], "rebuffer_ms": round(sum(log.rebuf_s) * MS_PER_S, 3),
        }  # fmt: skip
        if obs is not None and len(log.quality) == 1 and obs.prior_mbps[0] > 0:
            body["prior_throughput_kbps"] = round(float(obs.prior_mbps[0]) * KBIT_PER_MBIT, 3)
        return json.dumps(body).encode()

    def _ask(self, player: int, body: bytes) -> tuple[int | None, float]:
        started = time.perf_counter()
        status, payload = self._request("POST", f"/v1/sessions/fleet-{self.run_id}-{player}/decision", body)
        latency = time.perf_counter() - started
        if status != 200:
            return None, latency
        decision = json.loads(payload)
        self.policies[decision["policy"]] = self.policies.get(decision["policy"], 0) + 1
        return int(decision["quality"]), latency

    def decide(self, player: int, obs: Observation, log: PlayerLog) -> simpy.Event:
        """An event with the server's level for ``player``'s next chunk."""
        event = self.env.event()
        if not self._pending:
            self.env.timeout(0).callbacks.append(lambda _e: self._flush())
        self._pending.append((player, obs, log, event))
        return event

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        bodies = [self.report(player, log, obs) for player, obs, log, _ in pending]
        if len(pending) == 1:
            answers = [self._ask(pending[0][0], bodies[0])]
        else:
            answers = list(self._pool.map(self._ask, [p[0] for p in pending], bodies))
        self.calls += 1
        for (_, obs, _, event), (level, latency) in zip(pending, answers, strict=True):
            self.latencies_s.append(latency)
            self.decisions += 1
            if level is None:
                self.errors += 1
                level = int(self._fallback.select(obs)[0])
            event.succeed(int(np.clip(level, 0, self.video.n_levels - 1)))

    def finish(self, player: int, log: PlayerLog) -> None:
        """Report the player's last chunk, as a player does (the server then ends the session)."""
        if log.quality:
            level, latency = self._ask(player, self.report(player, log))
            self.latencies_s.append(latency)
            self.decisions += 1
            self.errors += level is None

    def close(self) -> None:
        """Stop the worker threads."""
        self._pool.shutdown(wait=True)

    def stats(self) -> dict[str, object]:
        """Requests, errors, the server's policies, wall-clock request rate and client-side latency."""
        wall_s = time.perf_counter() - self.started_wall_s
        lat = np.asarray(self.latencies_s) * MS_PER_S
        return {
            "server": self.url, "requests": self.decisions, "errors": self.errors, "policies": self.policies,
            "requests_per_s": self.decisions / wall_s if wall_s > 0 else None,
            "p50_ms": float(np.percentile(lat, 50)) if lat.size else None,
            "p99_ms": float(np.percentile(lat, 99)) if lat.size else None,
        }  # fmt: skip


def stream_through_server(
    url: str, traces: Sequence[Trace], video: Video, config: FleetConfig | None = None
) -> FleetResult:
    """A fleet whose every decision comes from the server at ``url``; by default one player per trace.

    Raises RuntimeError if any request failed: those players decided locally, so the result would not
    be the server's.
    """
    clients: list[RemoteDecider] = []

    def factory(env: simpy.Environment) -> RemoteDecider:
        clients.append(RemoteDecider(env, url, video))
        return clients[-1]

    config = config or FleetConfig(n_links=len(traces), players_per_link=1)
    try:
        result = simulate_fleet(traces, video, factory, config, policy="server")
    finally:
        for client in clients:
            client.close()
    errors = sum(client.errors for client in clients)
    if errors:
        raise RuntimeError(f"{errors} of the fleet's requests to {url} failed (answered locally instead)")
    return result


def served_model_version(url: str, timeout_s: float = 5.0) -> str:
    """The registry version the server at ``url`` serves now (from ``/readyz``)."""
    with urllib.request.urlopen(f"{url}/readyz", timeout=timeout_s) as reply:
        return str(json.loads(reply.read())["model_version"])


def wait_for_model_version(url: str, version: str, timeout_s: float = 30.0) -> str:
    """Wait until the server at ``url`` serves ``version`` or ``timeout_s`` passed; the version served then."""
    deadline = time.monotonic() + timeout_s
    served = served_model_version(url)
    while served != version and time.monotonic() < deadline:
        time.sleep(VERSION_POLL_S)
        served = served_model_version(url)
    return served
