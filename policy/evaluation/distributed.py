"""Evaluation shards as Ray tasks.

The trace set of each policy is cut into contiguous shards of ``batch_sessions`` traces, one Ray task
each; a shard is simulated exactly as the local loop simulates that batch (same sessions together, same
seed), so the merged result is identical to `policy.evaluation.loop.run_policy` with the same
``batch_sessions``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from policy.base import Policy
from policy.cluster import ray_module
from policy.evaluation.loop import DEFAULT_BATCH_SESSIONS, SessionLogs, run_policy
from simulator.link import LinkConfig
from simulator.reference import DEFAULT_INITIAL_QUALITY
from simulator.video import Video
from traces.trace import Trace


def shard_batches(n_traces: int, batch_sessions: int) -> list[tuple[int, int]]:
    """Contiguous (start, stop) shards of at most ``batch_sessions`` traces, in order."""
    if batch_sessions < 1:
        raise ValueError(f"batch_sessions must be >= 1, got {batch_sessions}")
    return [(start, min(start + batch_sessions, n_traces)) for start in range(0, n_traces, batch_sessions)]


def _shard(policy: Policy, traces: Sequence[Trace], video: Video, link: LinkConfig, initial_quality: int,
           seed: int) -> tuple[SessionLogs, float]:  # fmt: skip
    started = time.perf_counter()
    logs = run_policy(policy, traces, video, link, initial_quality=initial_quality, batch_sessions=len(traces),
                      seed=seed)  # fmt: skip
    return logs, time.perf_counter() - started


def run_policies_ray(
    jobs: Sequence[tuple[Policy, Sequence[Trace]]],
    video: Video,
    link: LinkConfig | None = None,
    *,
    initial_quality: int = DEFAULT_INITIAL_QUALITY,
    batch_sessions: int = DEFAULT_BATCH_SESSIONS,
    seed: int = 0,
    on_batch: Callable[[int], None] | None = None,
) -> list[tuple[SessionLogs, float]]:
    """`run_policy` for every (policy, traces) job, all shards submitted at once as Ray tasks.

    Returns per job its logs (identical to the local loop with the same ``batch_sessions``) and the
    seconds its shards ran (summed over tasks).
    """
    ray = ray_module()
    link = link if link is not None else LinkConfig.evaluation()
    remote = ray.remote(num_cpus=1)(_shard)
    video_ref = ray.put(video)
    pending: dict[Any, tuple[int, int, int]] = {}
    for index, (policy, traces) in enumerate(jobs):
        if not traces:
            raise ValueError("no traces to run")
        policy_ref = ray.put(policy)
        for a, b in shard_batches(len(traces), batch_sessions):
            ref = remote.remote(policy_ref, list(traces[a:b]), video_ref, link, initial_quality, seed + a)
            pending[ref] = (index, a, b)
    parts: dict[int, dict[int, SessionLogs]] = {i: {} for i in range(len(jobs))}
    seconds = [0.0] * len(jobs)
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            index, start, stop = pending.pop(ref)
            logs, took = ray.get(ref)
            parts[index][start] = logs
            seconds[index] += took
            if on_batch is not None:
                on_batch(stop - start)
    return [(concat_logs([parts[i][k] for k in sorted(parts[i])]), seconds[i]) for i in range(len(jobs))]


def run_policy_ray(
    policy: Policy,
    traces: Sequence[Trace],
    video: Video,
    link: LinkConfig | None = None,
    *,
    initial_quality: int = DEFAULT_INITIAL_QUALITY,
    batch_sessions: int = DEFAULT_BATCH_SESSIONS,
    seed: int = 0,
) -> SessionLogs:
    """`run_policy` with one Ray task per batch of sessions; identical results, shards run in parallel."""
    [(logs, _)] = run_policies_ray([(policy, traces)], video, link, initial_quality=initial_quality,
                                   batch_sessions=batch_sessions, seed=seed)  # fmt: skip
    return logs


def concat_logs(parts: Sequence[SessionLogs]) -> SessionLogs:
    """One `SessionLogs` from shards of the same video and initial quality, in order."""
    if not parts:
        raise ValueError("no logs to concatenate")
    first = parts[0]
    return SessionLogs(
        trace_names=tuple(name for p in parts for name in p.trace_names),
        video=first.video,
        initial_quality=first.initial_quality,
        **{k: np.concatenate([getattr(p, k) for p in parts])
           for k in ("quality", "chunk_bytes", "delay_ms", "sleep_ms", "buffer_s", "rebuf_s")},
    )  # fmt: skip
