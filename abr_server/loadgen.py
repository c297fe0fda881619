"""Load generator for `abr bench serve`: N concurrent players posting chunk reports on loopback.

Each player streams the served video from chunk 0, reporting plausible chunks (sizes of the level it
was told to fetch, download times from a throughput drawn per player), and immediately asks again: a
closed loop, so the request rate is what the server sustains. Latency is measured at the client.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import numpy as np
import numpy.typing as npt
import torch

from abr_server.inference import LoadedModel, forward_levels
from simulator.video import Video


@dataclass(frozen=True)
class LoadResult:
    """Decisions per second and client-side latency at one concurrency."""

    concurrency: int
    decisions: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def per_second(self) -> float:
        """Decisions answered per second."""
        return self.decisions / self.seconds


async def _player(client: httpx.AsyncClient, name: str, video: Video, rng: np.random.Generator,
                  stop_at: float, latencies: list[float], errors: list[int]) -> None:  # fmt: skip
    throughput_bytes_per_ms = float(rng.uniform(100.0, 1500.0))  # 0.8-12 Mbit/s
    quality, index, clock_ms = 1, 0, 0.0
    while time.perf_counter() < stop_at:
        size = int(video.chunk_bytes[quality, index])
        delay_ms = size / throughput_bytes_per_ms + 80.0
        body = {"index": index, "quality": quality, "bytes": size, "request_start_ms": clock_ms,
                "end_ms": clock_ms + delay_ms, "buffer_s": float(rng.uniform(0.0, 30.0))}  # fmt: skip
        clock_ms += delay_ms
        started = time.perf_counter()
        try:
            reply = await client.post(f"/v1/sessions/{name}/decision", json=body)
            ok = reply.status_code == 200
        except httpx.HTTPError:
            ok = False
        latencies.append(time.perf_counter() - started)
        if not ok:
            errors.append(1)
            continue
        decision = reply.json()
        if decision["end_of_video"]:
            quality, index = 1, 0
        else:
            quality, index = decision["quality"], decision["for_index"]


async def run_load(url: str, concurrency: int, seconds: float, video: Video, seed: int = 0) -> LoadResult:
    """Drive ``concurrency`` players against ``url`` for ``seconds``."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    latencies: list[float] = []
    errors: list[int] = []
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=10.0) as client:
        started = time.perf_counter()
        stop_at = started + seconds
        rngs = np.random.default_rng(seed).spawn(concurrency)
        await asyncio.gather(*(_player(client, f"load-{seed}-{i}", video, rngs[i], stop_at, latencies, errors)
                               for i in range(concurrency)))  # fmt: skip
        elapsed = time.perf_counter() - started
    lat_ms = np.asarray(latencies) * 1000.0
    return LoadResult(concurrency, len(latencies) - len(errors), len(errors), elapsed,
                      float(np.percentile(lat_ms, 50)) if lat_ms.size else float("nan"),
                      float(np.percentile(lat_ms, 99)) if lat_ms.size else float("nan"))  # fmt: skip


def inference_throughput(loaded: LoadedModel, width: int, batch: int, seconds: float = 1.0) -> tuple[float, float]:
    """(decisions/s, ms per forward) of `forward_levels` at ``batch`` states."""
    states: npt.NDArray[np.float32] = np.random.default_rng(0).random((batch, 6, width), dtype=np.float32)
    forward_levels(loaded, states)  # warm-up
    if loaded.device.type == "cuda":
        torch.cuda.synchronize()
    calls, started = 0, time.perf_counter()
    while True:
        forward_levels(loaded, states)
        calls += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            break
    return calls * batch / elapsed, elapsed / calls * 1000.0


@contextmanager
def local_server(
    env: dict[str, str] | None = None, startup_s: float = 60.0
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Run `abr serve` on a free loopback port (``env`` adds ``ABR_*`` settings); yield its URL and process.

    Waits until ``/healthz`` answers; the process is killed when the block ends.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    cmd = [sys.executable, "-m", "abr_cli.main", "serve", "--port", str(port)]
    proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"abr serve exited with code {proc.returncode} before answering on {url}")
            try:
                if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"abr serve did not answer on {url} within {startup_s:.0f} s")
            time.sleep(0.1)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
