"""Run policies over trace sets in the batch simulator and score them.

Evaluation follows the reference convention: every trace is played once from its first sample with an
empty buffer; the first chunk is fetched at ``initial_quality`` before the policy sees anything; the
score is the mean per-chunk QoE over chunks 2..N, averaged over traces.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from abr_common.files import write_atomic
from abr_common.stats import mean_ci95
from policy.base import Policy
from simulator.batch import BatchSimulator
from simulator.link import LinkConfig
from simulator.observation import ObservationBuilder, ObservationSpec
from simulator.qoe import QoEConfig, previous_levels, session_qoe, session_score
from simulator.reference import DEFAULT_INITIAL_QUALITY
from simulator.video import Video
from traces.trace import Trace

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

#: Fields of one per-chunk record (`SessionLogs.records`, the `abr simulate --log` lines), in order.
RECORD_FIELDS = (
    "trace", "chunk", "quality", "bitrate_kbps", "chunk_bytes",
    "delay_ms", "sleep_ms", "buffer_s", "rebuf_s", "qoe_lin",
)  # fmt: skip
#: The policies `abr simulate` and `abr eval` compare when none is named: strong classic rules and the
#: shipped learned model (``optimal`` is added by `abr eval`).
DEFAULT_POLICIES = ("bba", "rb", "bola", "robustmpc", "default")
#: Sessions simulated together by default.
DEFAULT_BATCH_SESSIONS = 1024


@dataclass(frozen=True)
class SessionLogs:
    """Per-chunk outcomes of S sessions, arrays ``[S, n_chunks]`` (one session per trace)."""

    trace_names: tuple[str, ...]
    video: Video
    initial_quality: int
    quality: IntArray
    chunk_bytes: IntArray
    delay_ms: FloatArray
    sleep_ms: FloatArray
    buffer_s: FloatArray
    rebuf_s: FloatArray

    @property
    def n_sessions(self) -> int:
        """Number of sessions (traces)."""
        return len(self.trace_names)

    def bitrate_kbps(self) -> IntArray:
        """Bitrate of every fetched chunk."""
        return np.asarray(self.video.bitrates_kbps, dtype=np.int64)[self.quality]

    def qoe(self, config: QoEConfig | None = None) -> FloatArray:
        """Per-chunk QoE ``[S, n_chunks]``."""
        return session_qoe(config or QoEConfig(), self.video, self.quality, self.rebuf_s, self.initial_quality)

    def scores(self, config: QoEConfig | None = None) -> FloatArray:
        """Standard score per session (mean per-chunk QoE over chunks 2..N)."""
        return session_score(self.qoe(config))

    def switches(self) -> IntArray:
        """Number of level changes per session (the first chunk counts against ``initial_quality``)."""
        prev = previous_levels(self.quality, self.initial_quality)
        return np.asarray((self.quality != prev).sum(axis=1), dtype=np.int64)

    def records(self) -> list[dict[str, object]]:
        """One JSON-ready dict per chunk (the `abr simulate --log` line format)."""
        qoe_lin = self.qoe(QoEConfig(kind="lin"))
        kbps = self.bitrate_kbps()
        out: list[dict[str, object]] = []
        for s, name in enumerate(self.trace_names):
            for c in range(self.video.n_chunks):
                values = (
                    name, c, int(self.quality[s, c]), int(kbps[s, c]), int(self.chunk_bytes[s, c]),
                    float(self.delay_ms[s, c]), float(self.sleep_ms[s, c]), float(self.buffer_s[s, c]),
                    float(self.rebuf_s[s, c]), float(qoe_lin[s, c]),
                )  # fmt: skip
                out.append(dict(zip(RECORD_FIELDS, values, strict=True)))
        return out


def run_policy(
    policy: Policy,
    traces: Sequence[Trace],
    video: Video,
    link: LinkConfig | None = None,
    *,
    spec: ObservationSpec | None = None,
    initial_quality: int = DEFAULT_INITIAL_QUALITY,
    batch_sessions: int = DEFAULT_BATCH_SESSIONS,
    seed: int = 0,
    on_batch: Callable[[int], None] | None = None,
    on_planned: Callable[[int], None] | None = None,
) -> SessionLogs:
    """Play every trace once with ``policy`` (batched) and return the per-chunk logs.

    ``on_batch(n)`` is called after each batch of ``n`` sessions, and, for an offline policy,
    ``on_planned(done)`` with the number of sessions planned so far over all batches (for progress bars).
    """
    if not traces:
        raise ValueError("no traces to run")
    if not 0 <= initial_quality < video.n_levels:
        raise ValueError(f"initial_quality must be in [0, {video.n_levels}), got {initial_quality}")
    link = link if link is not None else LinkConfig.evaluation()
    if link.trace_order != "sequential":
        raise ValueError("run_policy plays each trace once; use a link with trace_order='sequential'")
    fields: dict[str, list[npt.NDArray[np.generic]]] = {
        k: [] for k in ("quality", "chunk_bytes", "delay_ms", "sleep_ms", "buffer_s", "rebuf_s")
    }
    for first in range(0, len(traces), batch_sessions):
        batch = traces[first : first + batch_sessions]
        b = len(batch)
        sim = BatchSimulator(batch, video, link, n_sessions=b, seed=seed + first)
        sim.reset()
        builder = ObservationBuilder(b, video, spec)
        if policy.offline:
            policy.plan_sessions(batch, video, link, initial_quality, on_trace=_offset(on_planned, first))
        policy.begin(b, video)
        levels = np.full(b, initial_quality, dtype=np.int64)
        columns: dict[str, list[npt.NDArray[np.generic]]] = {k: [] for k in fields}
        for chunk in range(video.n_chunks):
            result = sim.step(levels)
            for key in columns:
                columns[key].append(np.asarray(getattr(result, key)))
            builder.update(result)
            if chunk + 1 < video.n_chunks:
                levels = _checked_levels(policy, policy.select(builder.observation()), b, video)
        for key in fields:
            fields[key].append(np.stack(columns[key], axis=1))
        if on_batch is not None:
            on_batch(b)
    return SessionLogs(
        trace_names=tuple(t.name for t in traces),
        video=video,
        initial_quality=initial_quality,
        quality=np.concatenate(fields["quality"]).astype(np.int64),
        chunk_bytes=np.concatenate(fields["chunk_bytes"]).astype(np.int64),
        delay_ms=np.concatenate(fields["delay_ms"]).astype(np.float64),
        sleep_ms=np.concatenate(fields["sleep_ms"]).astype(np.float64),
        buffer_s=np.concatenate(fields["buffer_s"]).astype(np.float64),
        rebuf_s=np.concatenate(fields["rebuf_s"]).astype(np.float64),
    )


def _offset(report: Callable[[int], None] | None, first: int) -> Callable[[int], None] | None:
    """``report`` shifted by the sessions of earlier batches."""
    if report is None:
        return None
    return lambda done: report(first + done)


def _checked_levels(policy: Policy, levels: npt.ArrayLike, n: int, video: Video) -> IntArray:
    out = np.asarray(levels)
    if out.shape != (n,) or not np.issubdtype(out.dtype, np.integer):
        raise TypeError(f"policy {policy.label!r} returned {out.dtype} {out.shape}, expected int ({n},)")
    if out.min() < 0 or out.max() >= video.n_levels:
        raise ValueError(f"policy {policy.label!r} returned a level outside [0, {video.n_levels})")
    return out.astype(np.int64)


@dataclass(frozen=True)
class Summary:
    """Aggregate figures of one policy on one trace set."""

    policy: str
    traces: str
    n_traces: int
    qoe: float
    qoe_ci95: float
    bitrate_kbps: float
    rebuf_s: float
    switches: float
    wall_s: float


def summarize(logs: SessionLogs, policy: str, traces: str, wall_s: float, qoe: QoEConfig | None = None) -> Summary:
    """Mean score with its 95% interval (`mean_ci95`), mean bitrate, rebuffering and switches per session."""
    scores = logs.scores(qoe)
    mean, ci = mean_ci95(scores)
    return Summary(
        policy=policy,
        traces=traces,
        n_traces=scores.size,
        qoe=mean,
        qoe_ci95=ci,
        bitrate_kbps=float(logs.bitrate_kbps().mean()),
        rebuf_s=float(logs.rebuf_s.sum(axis=1).mean()),
        switches=float(logs.switches().mean()),
        wall_s=wall_s,
    )


def write_jsonl(records: Sequence[dict[str, object]], path: str | Path) -> None:
    """Write records as JSON lines atomically (readers see the old file or the complete new one)."""
    write_atomic(Path(path), "".join(json.dumps(r) + "\n" for r in records).encode())
