"""Load generator for `abr bench serve`: N concurrent players posting chunk reports on loopback.

Each player streams the served video from chunk 0, reporting plausible chunks (sizes of the level it
was told to fetch, download times from a throughput drawn per player), and immediately asks again: a
closed loop, so the request rate is what the server sustains. Latency is measured at the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import numpy as np
import numpy.typing as npt
import torch

from abr_common.units import MS_PER_S
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
    mean_batch: float | None = None  # decisions per forward pass, from the server's /metrics

    @property
    def per_second(self) -> float:
        """Decisions answered per second."""
        return self.decisions / self.seconds


class Connection:
    """One keep-alive HTTP/1.1 connection speaking just enough of the protocol for JSON POSTs.

    httpx costs more CPU per request than the server under test; on a 2-core machine the load
    generator would measure itself. This client builds each request with one format call and parses
    only the status line and ``Content-Length``.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> None:
        self.reader, self.writer, self.host = reader, writer, host

    @classmethod
    async def open(cls, url: str) -> Connection:
        parts = urlsplit(url)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError(f"load generator url {url!r}: only http://host:port is supported")
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
        return cls(reader, writer, parts.netloc)

    async def post_json(self, path: str, body: bytes) -> tuple[int, bytes]:
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n")  # fmt: skip
        self.writer.write(head.encode() + body)
        header = await self.reader.readuntil(b"\r\n\r\n")
        status = int(header[9:12])
        length = 0
        for line in header.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


async def _player(url: str, name: str, video: Video, rng: np.random.Generator, stop_at: float,
                  interval_s: float | None, latencies: list[float], errors: list[int],
                  video_name: str | None = None) -> None:  # fmt: skip
    throughput_bytes_per_ms = float(rng.uniform(100.0, 1500.0))  # 0.8-12 Mbit/s
    quality, index, clock_ms = 1, 0, 0.0
    path = f"/v1/sessions/{name}/decision"
    conn: Connection | None = None
    due = time.perf_counter() + (rng.exponential(interval_s) if interval_s else 0.0)
    answered = 0.0  # when the previous answer arrived
    while due < stop_at:
        if interval_s:  # open loop: requests are due at Poisson times whether or not the server kept up
            await asyncio.sleep(max(due - time.perf_counter(), 0.0))
        size = int(video.chunk_bytes[quality, index])
        delay_ms = size / throughput_bytes_per_ms + 80.0
        body: dict[str, object] = {"index": index, "quality": quality, "bytes": size, "request_start_ms": clock_ms,
                "end_ms": clock_ms + delay_ms, "buffer_s": float(rng.uniform(0.0, 30.0))}  # fmt: skip
        if video_name is not None:
            body["video"] = video_name
        clock_ms += delay_ms
        # Open loop: a request held back by the previous answer counts from when it was due, so a server
        # that falls behind cannot hide it; one sent late only by the client's timer counts from sending.
        started = due if interval_s and answered > due else time.perf_counter()
        try:
            if conn is None:
                conn = await Connection.open(url)
            status, payload = await conn.post_json(path, json.dumps(body).encode())
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            status, payload = 0, b""
            if conn is not None:
                await conn.close()
            conn = None
        answered = time.perf_counter()
        latencies.append(answered - started)
        due = due + rng.exponential(interval_s) if interval_s else time.perf_counter()
        if status != 200:
            errors.append(1)
            continue
        decision = json.loads(payload)
        if decision["end_of_video"]:
            quality, index = 1, 0
        else:
            quality, index = decision["quality"], decision["for_index"]
    if conn is not None:
        await conn.close()


async def run_load(
    url: str,
    concurrency: int,
    seconds: float,
    video: Video,
    seed: int = 0,
    rate_per_s: float | None = None,
    measure_batch: bool = True,
    named_videos: Sequence[tuple[str, Video]] = (),
) -> LoadResult:
    """Drive ``concurrency`` players against ``url`` for ``seconds`` (one keep-alive connection each).

    Closed loop by default: each player asks again as soon as it has its answer, so the rate is what
    the server sustains and latency is queueing (``concurrency / rate``). With ``rate_per_s``, open
    loop: the players together send that many requests per second at Poisson times (each player's
    requests still one at a time, as a real player's are), and latency counts from when a request
    was due. The mean micro-batch comes from the server's /metrics before and after (``measure_batch``
    False: not measured, as behind several server processes, whose /metrics each count their own).
    With ``named_videos``, player i plays the i-th of them (round robin), naming it in its reports.
    """
    latencies: list[float] = []
    errors: list[int] = []
    interval_s = concurrency / rate_per_s if rate_per_s else None
    batches_before = await asyncio.to_thread(batch_totals, url) if measure_batch else None
    started = time.perf_counter()
    stop_at = started + seconds
    rngs = np.random.default_rng(seed).spawn(concurrency)
    plays: list[tuple[str | None, Video]] = [*named_videos] or [(None, video)]
    # A session plays one video: players of a named video have their own session ids.
    assigned = [plays[i % len(plays)] for i in range(concurrency)]
    await asyncio.gather(*(_player(url, f"load-{seed}-{i}" + (f"-{name}" if name else ""), played, rngs[i], stop_at,
                                   interval_s, latencies, errors, name)
                           for i, (name, played) in enumerate(assigned)))  # fmt: skip
    elapsed = time.perf_counter() - started
    batches_after = await asyncio.to_thread(batch_totals, url) if measure_batch else None
    mean_batch = None
    if batches_before is not None and batches_after is not None and batches_after[0] > batches_before[0]:
        mean_batch = (batches_after[1] - batches_before[1]) / (batches_after[0] - batches_before[0])
    lat_ms = np.asarray(latencies) * MS_PER_S
    return LoadResult(concurrency, len(latencies) - len(errors), len(errors), elapsed,
                      float(np.percentile(lat_ms, 50)) if lat_ms.size else float("nan"),
                      float(np.percentile(lat_ms, 99)) if lat_ms.size else float("nan"), mean_batch)  # fmt: skip


def batch_totals(url: str) -> tuple[float, float] | None:
    """(forward passes, decisions in them) so far, from the server's ``/metrics``; None if unavailable.

    With several workers this is one worker's count (whichever answered the scrape).
    """
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=5.0) as reply:
            text = reply.read().decode()
    except (OSError, ValueError):
        return None
    totals = {}
    for family in text_string_to_metric_families(text):
        if family.name == "abr_inference_batch_size":
            totals = {s.name: s.value for s in family.samples}
    if "abr_inference_batch_size_count" not in totals:
        return None
    return totals["abr_inference_batch_size_count"], totals["abr_inference_batch_size_sum"]


INFERENCE_PATHS = ("served", "folded", "module", "resident")
"""What `inference_throughput` times, host numpy in and out except ``resident``:
``served``: what the server runs (`forward_levels`: CUDA graphs on a GPU, the folded actor on a CPU);
``folded``: the folded actor, eager; ``module``: the trained network's actor as it is (plain eager
PyTorch); ``resident``: the folded actor, eager, on states already on the device, levels left there
(the device's ceiling, no transfers)."""


def inference_throughput(
    loaded: LoadedModel, width: int, batch: int, seconds: float = 1.0, path: str = "served"
) -> tuple[float, float]:
    """(decisions/s, ms per forward pass) of ``path`` (one of `INFERENCE_PATHS`) at ``batch`` states."""
    states: npt.NDArray[np.float32] = np.random.default_rng(0).random((batch, 6, width), dtype=np.float32)
    on_device = torch.from_numpy(states).to(loaded.device)

    def served() -> None:
        forward_levels(loaded, states)

    def folded() -> None:
        with torch.inference_mode():
            loaded.actor(torch.from_numpy(states).to(loaded.device)).argmax(dim=-1).cpu().numpy()

    def module() -> None:
        with torch.inference_mode():
            loaded.model.logits(torch.from_numpy(states).to(loaded.device)).argmax(dim=-1).cpu().numpy()

    def resident() -> None:
        with torch.inference_mode():
            loaded.actor(on_device).argmax(dim=-1)

    runs = {"served": served, "folded": folded, "module": module, "resident": resident}
    if path not in runs:
        raise ValueError(f"inference path must be one of {', '.join(INFERENCE_PATHS)}, got {path!r}")
    run = runs[path]
    run()  # warm-up (and CUDA graph capture)
    run()
    cuda = loaded.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(loaded.device)
    calls, started = 0, time.perf_counter()
    while True:
        run()
        calls += 1
        if cuda and path == "resident":
            if calls % 64:
                continue
            torch.cuda.synchronize(loaded.device)
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            break
    return calls * batch / elapsed, elapsed / calls * MS_PER_S
