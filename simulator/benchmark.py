"""Throughput benchmark of the scalar reference and the vectorised core (``abr bench sim``)."""

from __future__ import annotations

import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from simulator.batch import BatchSimulator
from simulator.link import LinkConfig
from simulator.reference import ScalarSession
from simulator.video import Video
from traces.trace import Trace


@dataclass(frozen=True)
class SimBenchResult:
    """Chunk-steps per second of one implementation at one batch size."""

    implementation: str
    batch_sessions: int
    chunk_steps: int
    wall_s: float

    @property
    def steps_per_s(self) -> float:
        """Chunk-steps per wall-clock second."""
        return self.chunk_steps / self.wall_s

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record."""
        return {**asdict(self), "steps_per_s": self.steps_per_s}


def bench_scalar(
    traces: Sequence[Trace], video: Video, link: LinkConfig, min_wall_s: float, seed: int = 0
) -> SimBenchResult:
    """Whole sessions of the scalar reference with pre-drawn random levels, for at least ``min_wall_s``."""
    rng = np.random.default_rng(seed)
    levels = rng.integers(0, video.n_levels, size=(64, video.n_chunks)).tolist()
    steps, episode = 0, 0
    started = time.perf_counter()
    while time.perf_counter() - started < min_wall_s:
        trace = traces[episode % len(traces)]
        start = int(rng.integers(len(trace) - 1)) if link.start == "random" else 0
        noise = (
            rng.uniform(link.delay_noise_low, link.delay_noise_high, video.n_chunks).tolist()
            if link.has_noise
            else None
        )
        session = ScalarSession(trace, video, link, start_index=start, noise_factors=noise)
        for level in levels[episode % len(levels)]:
            session.download(level)
        steps += video.n_chunks
        episode += 1
    return SimBenchResult("scalar", 1, steps, time.perf_counter() - started)


def bench_batch(
    traces: Sequence[Trace],
    video: Video,
    link: LinkConfig,
    n_sessions: int,
    min_wall_s: float,
    *,
    device: Any = None,
    seed: int = 0,
    prior: bool = True,
) -> SimBenchResult:
    """Whole videos for B sessions at once (resets included) with random levels, for at least ``min_wall_s``.

    ``prior``: whether the sessions draw a throughput prior at each reset (the ``-no-prior`` rows: off)."""
    sim = BatchSimulator(traces, video, link, n_sessions=n_sessions, seed=seed, device=device, prior=prior)
    rng = np.random.default_rng(seed)
    levels = [
        sim.ops.asarray(rng.integers(0, video.n_levels, size=n_sessions), sim.ops.int) for _ in range(video.n_chunks)
    ]
    sync = _synchronizer(device)
    # One untimed video so one-off costs (allocation, CUDA context) stay out of the figure.
    sim.reset()
    for q in levels:
        sim.step(q)
    sync()
    steps = 0
    started = time.perf_counter()
    while time.perf_counter() - started < min_wall_s:
        sim.reset()
        for q in levels:
            sim.step(q)
        sync()
        steps += n_sessions * video.n_chunks
    name = ("vector-numpy" if device is None else f"vector-torch-{device}") + ("" if prior else "-no-prior")
    return SimBenchResult(name, n_sessions, steps, time.perf_counter() - started)


def _synchronizer(device: Any) -> Any:
    if device is not None and str(device).startswith("cuda"):
        import torch

        return torch.cuda.synchronize
    return lambda: None


def machine_description() -> str:
    """CPU model and core count, for benchmark records."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import os

    import torch

    gpu = f", {torch.cuda.get_device_name(0)} (torch {torch.__version__})" if torch.cuda.is_available() else ""
    return f"{cpu}, {os.cpu_count()} logical cores, Python {platform.python_version()}{gpu}"
