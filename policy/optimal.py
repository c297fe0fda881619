"""The offline optimum: the best level sequence for a trace, knowing the whole trace in advance.

Dynamic programming over chunks under the exact simulator semantics. A *label* is one reachable
situation after chunk k: its exact simulator state (trace interval and clock, buffer), the level of
chunk k, the elapsed wall-clock time and the QoE collected so far, plus a back-pointer. Each step
extends every label by every level with the batch simulator itself (so the semantics are the
simulator's by construction), then merges labels that fall in the same cell of
(level, elapsed time / ``time_step_s``, buffer / ``buffer_step_s``), keeping the one with the most QoE.
That merge is the only approximation, and the labels keep exact states, so every value the DP reports
is achieved by a real level sequence (replaying it reproduces it) and is a lower bound of the true
optimum; refining the cells can only find better sequences. `refinement_study` shows the value
converging as the cells shrink (see BENCHMARKS.md), and a test checks the DP against exhaustive
search on short videos.

Why these coordinates: after chunk k, the future depends only on the trace position (given by the
elapsed time), the buffer and the last level; two labels that agree on all three up to the cell size
face (almost) the same future, so the one with less QoE so far is dropped.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial

import numpy as np
import numpy.typing as npt
from pydantic import Field

from abr_common.units import MS_PER_S
from policy.base import IntArray, PlannedPolicy, PolicyConfig, register
from simulator.batch import BatchSimulator, SessionState
from simulator.link import LinkConfig
from simulator.qoe import QoEConfig, QoEKind
from simulator.reference import DEFAULT_INITIAL_QUALITY
from simulator.video import Video
from traces.trace import Trace

FloatArray = npt.NDArray[np.float64]

#: Below twice this many traces, planning stays in this process (a pool costs more than it saves).
_MIN_TRACES_PER_WORKER = 8


class OptimalConfig(PolicyConfig):
    """Cell size of the label merge (smaller: closer to the exact optimum, slower)."""

    time_step_s: float = Field(4.0, gt=0, description="Cell width in elapsed wall-clock time.")
    qoe: QoEKind = Field("lin", description="QoE variant maximised.")
    max_labels: int = Field(2_000_000, ge=1, description="Safety cap on labels per step (memory).")
    workers: int = Field(0, ge=0, description="Processes planning traces in parallel; 0: one per CPU core.")


@dataclass(frozen=True)
class Plan:
    """The optimal levels of one session and the QoE they achieve."""

    levels: IntArray  # [n_chunks], chunk 0 at the initial quality
    total_qoe: float  # sum of per-chunk QoE over all chunks
    score: float  # mean per-chunk QoE over chunks 2..N (the standard score)
    labels_per_step: tuple[int, ...]


def optimal_plan(
    trace: Trace,
    video: Video,
    link: LinkConfig | None = None,
    *,
    qoe: QoEConfig | None = None,
    initial_quality: int = DEFAULT_INITIAL_QUALITY,
    time_step_s: float = 4.0,
    max_labels: int = 2_000_000,
) -> Plan:
    """Best level sequence for ``trace`` (evaluation semantics) by label-merging dynamic programming."""
    link = link if link is not None else LinkConfig.evaluation()
    if link.has_noise:
        raise ValueError("the offline optimum needs deterministic delays: use a link without delay noise")
    qoe = qoe if qoe is not None else QoEConfig()
    util = qoe.utilities(video)
    n_levels = video.n_levels

    sim = BatchSimulator([trace], video, link, n_sessions=1)
    sim.reset()
    first = sim.step(np.array([initial_quality]))
    # No switch penalty: the previous level is the initial one.
    reward0 = float(qoe.level_qoe(util, initial_quality, initial_quality, first.rebuf_s[0]))
    state = sim.state() if video.n_chunks > 1 else None
    elapsed_s = np.array([(first.delay_ms[0] + first.sleep_ms[0]) / MS_PER_S])
    reward = np.array([reward0])
    last = np.array([initial_quality], dtype=np.int64)
    parents: list[IntArray] = []
    levels_at: list[IntArray] = []
    counts = [1]
    for _ in range(1, video.n_chunks):
        assert state is not None
        n = reward.size
        if n * n_levels > max_labels:
            raise ValueError(f"{trace.name}: {n * n_levels} labels exceed max_labels={max_labels}; use larger cells")
        parent = np.repeat(np.arange(n), n_levels)
        level = np.tile(np.arange(n_levels), n)
        branch = BatchSimulator([trace], video, link, n_sessions=parent.size)
        branch.load_state(
            SessionState(
                trace_index=state.trace_index[parent],
                interval=state.interval[parent],
                clock_s=state.clock_s[parent],
                buffer_s=state.buffer_s[parent],
                chunk_index=state.chunk_index[parent],
            )
        )
        result = branch.step(level)
        gained = qoe.level_qoe(util, level, last[parent], result.rebuf_s)
        new_reward = reward[parent] + gained
        new_elapsed = elapsed_s[parent] + (result.delay_ms + result.sleep_ms) / MS_PER_S
        buffer_s = np.asarray(result.buffer_s)
        keep = _merge(level, new_elapsed, buffer_s, new_reward, time_step_s, qoe.rebuffer_weight)
        new_state = branch.state()
        state = SessionState(
            trace_index=new_state.trace_index[keep],
            interval=new_state.interval[keep],
            clock_s=new_state.clock_s[keep],
            buffer_s=new_state.buffer_s[keep],
            chunk_index=np.minimum(new_state.chunk_index[keep], video.n_chunks - 1),
        )
        reward, elapsed_s, last = new_reward[keep], new_elapsed[keep], level[keep]
        parents.append(parent[keep])
        levels_at.append(level[keep])
        counts.append(int(keep.size))

    best = int(np.argmax(reward))
    path = [0] * video.n_chunks
    path[0] = initial_quality
    node = best
    for k in range(video.n_chunks - 1, 0, -1):
        path[k] = int(levels_at[k - 1][node])
        node = int(parents[k - 1][node])
    total = float(reward[best])
    score = (total - reward0) / (video.n_chunks - 1) if video.n_chunks > 1 else float("nan")
    return Plan(np.array(path, dtype=np.int64), total, score, tuple(counts))


def _merge(
    level: IntArray,
    elapsed_s: FloatArray,
    buffer_s: FloatArray,
    reward: FloatArray,
    time_step_s: float,
    rebuffer_weight: float,
) -> IntArray:
    """Indices of the labels that survive, per (level, elapsed-time cell) group.

    Within a group (same level, nearly the same trace position), a label is dropped when another has
    (1) at least its reward and at least its buffer, or (2) at most its buffer and at least its
    ``reward + rebuffer_weight * buffer``: a second of extra buffer can save at most a second of future
    rebuffering, worth ``rebuffer_weight``. The survivors form a front on which reward rises with the
    buffer, but by less than ``rebuffer_weight`` per second: usually a handful of labels.
    """
    n = reward.size
    group = level * (int(np.floor(elapsed_s.max() / time_step_s)) + 1) + np.floor(elapsed_s / time_step_s).astype(
        np.int64
    )
    potential = reward + rebuffer_weight * buffer_s
    # Sort by group, then buffer ascending, then reward descending (the best of equal buffers first).
    order = np.lexsort((-reward, buffer_s, group))
    g, b, r, pot = group[order], buffer_s[order], reward[order], potential[order]
    starts = np.ones(n, dtype=bool)
    starts[1:] = g[1:] != g[:-1]
    same_buffer = np.zeros(n, dtype=bool)
    same_buffer[1:] = (~starts[1:]) & (b[1:] == b[:-1])
    group_id = np.cumsum(starts) - 1
    # Rule 2: potential must beat every label before it in the group (prefix maximum, exclusive).
    pot_rank = np.unique(pot, return_inverse=True)[1].astype(np.int64) + 1
    running = np.maximum.accumulate(pot_rank + group_id * (n + 1))
    before = np.concatenate([[0], running[:-1]])
    beats_before = starts | (pot_rank + group_id * (n + 1) > before)
    # Rule 1: reward must beat every label after it in the group (suffix maximum, exclusive).
    # Offsets shrink along the array here, so a suffix maximum never reaches into an earlier group.
    r_rank = np.unique(r, return_inverse=True)[1].astype(np.int64) + 1 + (group_id[-1] - group_id) * (n + 1)
    tail = np.maximum.accumulate(r_rank[::-1])[::-1]
    ends = np.ones(n, dtype=bool)
    ends[:-1] = starts[1:]
    after = np.concatenate([tail[1:], [0]])
    beats_after = ends | (r_rank > after)
    keep = beats_before & beats_after & ~same_buffer
    return np.sort(order[keep])


class OptimalPolicy(PlannedPolicy):
    """Offline optimum (an upper bound for tables): plans each session with `optimal_plan`, then replays.

    It needs the traces in advance, so it only runs where the evaluation loop gives them
    (`plan_sessions`); it cannot serve live players.
    """

    config: OptimalConfig
    config_type = OptimalConfig

    def plan_sessions(
        self,
        traces: Sequence[Trace],
        video: Video,
        link: LinkConfig,
        initial_quality: int,
        *,
        on_trace: Callable[[int], None] | None = None,
    ) -> list[Plan]:
        """Plan every session (one per trace) and remember the levels for `select`.

        ``on_trace(done)`` is called with the number of traces planned so far (for progress bars).
        """
        cfg = self.config
        plan = partial(
            optimal_plan,
            video=video,
            link=link,
            qoe=QoEConfig(kind=cfg.qoe),
            initial_quality=initial_quality,
            time_step_s=cfg.time_step_s,
            max_labels=cfg.max_labels,
        )
        workers = min(cfg.workers or os.cpu_count() or 1, len(traces))
        if workers <= 1 or len(traces) < _MIN_TRACES_PER_WORKER * 2:
            plans = _collect(map(plan, traces), on_trace)
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                plans = _collect(pool.map(plan, traces, chunksize=max(1, len(traces) // (4 * workers))), on_trace)
        self._remember(np.stack([p.levels for p in plans]))
        return plans


def _collect(plans: Iterable[Plan], on_trace: Callable[[int], None] | None) -> list[Plan]:
    """The plans in trace order (as `map` and `pool.map` yield them), reporting the count after each."""
    done: list[Plan] = []
    for plan in plans:
        done.append(plan)
        if on_trace is not None:
            on_trace(len(done))
    return done


register("optimal")(OptimalPolicy)


@dataclass(frozen=True)
class RefinementRow:
    """The mean optimal score of a trace set at one cell size."""

    time_step_s: float
    mean_score: float
    max_labels: int
    wall_s: float


def refinement_study(
    traces: Sequence[Trace],
    video: Video,
    time_steps_s: Sequence[float],
    *,
    link: LinkConfig | None = None,
    initial_quality: int = DEFAULT_INITIAL_QUALITY,
    workers: int = 0,
    on_trace: Callable[[int], None] | None = None,
) -> list[RefinementRow]:
    """Mean optimal score at each cell size (coarse to fine): a converged value shows the merge is exact enough.

    ``on_trace(done)`` is called with the plans finished so far, over all cell sizes (for progress bars).
    """
    import time

    finished = 0  # plans of the cell sizes already done

    def planned(done: int) -> None:
        if on_trace is not None:
            on_trace(finished + done)

    rows = []
    for step in time_steps_s:
        policy = OptimalPolicy(OptimalConfig(time_step_s=step, workers=workers))
        started = time.perf_counter()
        plans = policy.plan_sessions(traces, video, link or LinkConfig.evaluation(), initial_quality, on_trace=planned)
        finished += len(traces)
        rows.append(
            RefinementRow(
                time_step_s=step,
                mean_score=float(np.mean([p.score for p in plans])),
                max_labels=max(max(p.labels_per_step) for p in plans),
                wall_s=time.perf_counter() - started,
            )
        )
    return rows
