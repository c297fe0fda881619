"""Clairvoyant MPC: model predictive control that knows the network's future exactly (an offline reference).

Before each chunk it searches every level sequence for the next ``horizon`` chunks on the simulator
itself, branched from the session's exact state (trace position, clock, buffer), so the "prediction"
is the true future: download times, rebuffering and sleeps are what the simulator will produce. Each
sequence is scored with the QoE (utility, rebuffering, switches from the current level) plus
``terminal_buffer_weight`` x the buffer left at the horizon (capped at ``terminal_buffer_cap_s``), a
stand-in for the chunks beyond the horizon that keeps the plan from draining the buffer at its end;
the first level of the best sequence is fetched, and the search repeats at the next chunk.

It sits between the online rules and the offline optimum: `robustmpc` plans with a *predicted*
throughput over the same horizon, `optimal` plans the whole session knowing the whole trace. How much
a policy that sees only the past can gain is bounded, roughly, by what this planner reaches with a
few chunks of perfect foresight (BENCHMARKS.md, "Classic rules, the optimum and the clairvoyant
reference").

Cost: ``n_levels ** horizon`` leaves per decision (7,776 at the default horizon of 5 with six
levels), simulated as a tree (each depth branches the previous one by every level), in groups of
sessions that bound memory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt
from pydantic import Field

from policy.base import IntArray, PlannedPolicy, PolicyConfig, register
from simulator.batch import BatchSimulator, SessionState
from simulator.link import LinkConfig
from simulator.qoe import QoEConfig, QoEKind
from simulator.video import Video
from traces.trace import Trace

FloatArray = npt.NDArray[np.float64]

#: Leaves (sessions x level sequences) searched together: bounds the branch simulators' memory.
_LEAVES_PER_GROUP = 400_000
_STATE_FIELDS = ("trace_index", "interval", "clock_s", "buffer_s", "chunk_index")


class ClairvoyantConfig(PolicyConfig):
    """Look-ahead and end-of-horizon value of the clairvoyant planner."""

    horizon: int = Field(5, ge=1, le=7, description="Chunks looked ahead (fewer near the end of the video).")
    terminal_buffer_weight: float = Field(
        0.1, ge=0, description="QoE credited per second of buffer left at the horizon (0: plain MPC objective)."
    )
    terminal_buffer_cap_s: float = Field(20.0, gt=0, description="Buffer seconds beyond this earn no credit.")
    qoe: QoEKind = Field("lin", description="QoE variant the plan maximises.")


def _take(state: SessionState, rows: npt.NDArray[np.int64] | slice) -> SessionState:
    return SessionState(*(np.asarray(getattr(state, f))[rows] for f in _STATE_FIELDS))


def clairvoyant_levels(
    traces: Sequence[Trace],
    video: Video,
    link: LinkConfig,
    state: SessionState,
    last_level: IntArray,
    config: ClairvoyantConfig | None = None,
) -> IntArray:
    """The level the clairvoyant planner fetches next for each session at ``state`` (after ``last_level``).

    ``state`` comes from `BatchSimulator.state` of a simulator over ``traces`` with a noise-free ``link``;
    every session must still have a chunk to fetch.
    """
    cfg = config if config is not None else ClairvoyantConfig()
    if link.has_noise:
        raise ValueError("the clairvoyant planner needs deterministic delays: use a link without delay noise")
    chunk = np.asarray(state.chunk_index, dtype=np.int64)
    if np.any(chunk >= video.n_chunks):
        raise ValueError("every session must have a chunk left to fetch")
    n_levels = video.n_levels
    group = max(1, _LEAVES_PER_GROUP // n_levels**cfg.horizon)
    out = np.empty(chunk.size, dtype=np.int64)
    for first in range(0, chunk.size, group):
        rows = slice(first, first + group)
        part = _take(state, rows)
        # The branch simulators index only this group's traces: their trace table is rebuilt at every depth.
        used, local = np.unique(part.trace_index, return_inverse=True)
        part = SessionState(local.astype(np.int64), part.interval, part.clock_s, part.buffer_s, part.chunk_index)
        out[rows] = _search([traces[i] for i in used], video, link, part, np.asarray(last_level)[rows], cfg)
    return out


def _search(
    traces: Sequence[Trace],
    video: Video,
    link: LinkConfig,
    state: SessionState,
    last_level: IntArray,
    cfg: ClairvoyantConfig,
) -> IntArray:
    qoe = QoEConfig(kind=cfg.qoe)
    util = qoe.utilities(video)
    n_levels, n = video.n_levels, state.chunk_index.size
    score = np.zeros(n)
    last = np.asarray(last_level, dtype=np.int64)
    for _ in range(cfg.horizon):
        parent = np.repeat(np.arange(score.size), n_levels)
        level = np.tile(np.arange(n_levels), score.size)
        state, last, score = _take(state, parent), last[parent], score[parent]
        live = state.chunk_index < video.n_chunks  # past the video's end a branch just keeps its score
        if not live.any():
            continue
        sim = BatchSimulator(traces, video, link, n_sessions=parent.size)
        sim.load_state(
            SessionState(
                trace_index=state.trace_index,
                interval=state.interval,
                clock_s=state.clock_s,
                buffer_s=state.buffer_s,
                chunk_index=np.minimum(state.chunk_index, video.n_chunks - 1),
            )
        )
        result = sim.step(level, active=live)
        gained = qoe.level_qoe(util, level, last, np.asarray(result.rebuf_s))
        after = sim.state()
        state = SessionState(
            trace_index=state.trace_index,
            interval=np.where(live, after.interval, state.interval),
            clock_s=np.where(live, after.clock_s, state.clock_s),
            buffer_s=np.where(live, np.asarray(result.buffer_s, dtype=np.float64), state.buffer_s),
            chunk_index=state.chunk_index + live,
        )
        score = score + np.where(live, gained, 0.0)
        last = np.where(live, level, last)
    score = score + cfg.terminal_buffer_weight * np.minimum(state.buffer_s, cfg.terminal_buffer_cap_s)
    # Leaves are in product order per session, so the first level of leaf j is j // n_levels**(horizon-1).
    best = np.argmax(score.reshape(n, n_levels**cfg.horizon), axis=1)
    return (best // n_levels ** (cfg.horizon - 1)).astype(np.int64)


class ClairvoyantPolicy(PlannedPolicy):
    """Clairvoyant MPC: plans each session in advance with `clairvoyant_levels`, then replays the levels."""

    config: ClairvoyantConfig
    config_type = ClairvoyantConfig

    def plan_sessions(
        self,
        traces: Sequence[Trace],
        video: Video,
        link: LinkConfig,
        initial_quality: int,
        *,
        on_trace: Callable[[int], None] | None = None,
    ) -> IntArray:
        """Play every session (one per trace) with the planner and remember the levels for `select`.

        The sessions are planned together, so ``on_trace`` is called once, with all of them, at the end.
        """
        if link.has_noise:
            raise ValueError("the clairvoyant planner needs deterministic delays: use a link without delay noise")
        b = len(traces)
        sim = BatchSimulator(traces, video, link, n_sessions=b)
        sim.reset(trace_index=np.arange(b), start_index=0)
        levels = np.zeros((b, video.n_chunks), dtype=np.int64)
        levels[:, 0] = initial_quality
        for k in range(video.n_chunks):
            sim.step(levels[:, k])
            if k + 1 < video.n_chunks:
                levels[:, k + 1] = clairvoyant_levels(traces, video, link, sim.state(), levels[:, k], self.config)
        self._remember(levels)
        if on_trace is not None:
            on_trace(b)
        return levels


register("clairvoyant")(ClairvoyantPolicy)
