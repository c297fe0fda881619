"""Vectorised chunk-level simulator: B sessions stepped at once, with no per-sample Python loop.

Same semantics as `simulator.reference` (see its docstring). Instead of walking a trace interval by
interval, the core works in *cycle coordinates*: after the first wrap a trace repeats with period
``times_s[-1]`` and its interval 1 starts at clock 0, so a position on the trace is (cycles, clock).
Prefix sums of deliverable payload bytes turn "when is this chunk complete?" into one binary search
(``searchsorted``) for the byte target, and "where does a sleep end?" into one search on interval
end times. All traces of a set live in one flat table; a session's row is found by adding its trace
number to a normalised key, so a single ``searchsorted`` serves the whole batch. Rounding near an
interval boundary is repaired by exact comparisons against the un-normalised values.

Units: times in seconds (``_s``), buffer and delays in milliseconds (``_ms``) internally as in the
reference, sizes in bytes, throughput in bytes/s after the payload fraction (``rate_bytes_per_s``).

Backends: numpy (default) or torch (``device="cpu"|"cuda"``); both run the same code through a small
operations shim. Random draws (trace choice, start points, delay noise) always come from per-session
numpy Generators, so every backend sees the same random stream for the same seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from simulator.link import LinkConfig
from simulator.reference import BITS_PER_BYTE, BITS_PER_MBIT, MS_PER_S
from simulator.video import Video
from traces.trace import Trace

# Arrays are numpy arrays on the numpy backend and torch tensors on the torch backend.
Array = Any

#: Safety bound on boundary-repair iterations; each moves one interval, and rounding moves at most one.
_MAX_REPAIR_STEPS = 64


@dataclass(frozen=True)
class ChunkResult:
    """Per-session outcome of one `BatchSimulator.step` (arrays of length B, except where noted).

    Sessions that were not active in the step have zeros everywhere and ``active`` False.
    """

    active: Array
    trace_index: Array
    chunk_index: Array
    quality: Array
    chunk_bytes: Array
    delay_ms: Array
    sleep_ms: Array
    buffer_s: Array
    rebuf_s: Array
    end_of_video: Array
    chunks_remaining: Array
    next_chunk_bytes: Array  # [B, n_levels]; zeros after the last chunk


class _NumpyOps:
    """The handful of operations whose spelling differs between numpy and torch."""

    name = "numpy"

    def __init__(self) -> None:
        self.xp: Any = np
        self.float = np.float64
        self.int = np.int64

    def asarray(self, x: Any, dtype: Any) -> Array:
        return np.asarray(x, dtype=dtype)

    def searchsorted_right(self, keys: Array, values: Array) -> Array:
        return np.searchsorted(keys, values, side="right")

    def clip_min(self, x: Array, low: float) -> Array:
        return np.maximum(x, low)

    def to_int(self, x: Array) -> Array:
        return x.astype(np.int64)

    def any(self, x: Array) -> bool:
        return bool(x.any())

    def to_numpy(self, x: Array) -> npt.NDArray[Any]:
        return np.asarray(x)


class _TorchOps:
    name = "torch"

    def __init__(self, device: Any) -> None:
        import torch

        self.xp: Any = torch
        self.device = torch.device(device)
        self.float = torch.float64
        self.int = torch.int64

    def asarray(self, x: Any, dtype: Any) -> Array:
        return self.xp.as_tensor(np.asarray(x), dtype=dtype, device=self.device)

    def searchsorted_right(self, keys: Array, values: Array) -> Array:
        return self.xp.searchsorted(keys, values, right=True)

    def clip_min(self, x: Array, low: float) -> Array:
        return self.xp.clamp(x, min=low)

    def to_int(self, x: Array) -> Array:
        return x.to(self.xp.int64)

    def any(self, x: Array) -> bool:
        return bool(x.any().item())

    def to_numpy(self, x: Array) -> npt.NDArray[Any]:
        return np.asarray(x.detach().cpu().numpy())


_Ops = _NumpyOps | _TorchOps


class TraceTable:
    """All intervals of a trace set in flat arrays (cycle coordinates), ready for batched lookups.

    Interval ``k`` of a trace (0-based; the reference's pointer ``k + 1``) runs from ``start_s`` to
    ``end_s`` in cycle time; interval 0 starts at 0, which is where the reference's wrap puts the clock.
    """

    def __init__(self, traces: Sequence[Trace], link: LinkConfig) -> None:
        if len(traces) == 0:
            raise ValueError("the trace set is empty")
        n_intervals = np.array([len(t) - 1 for t in traces], dtype=np.int64)
        self.n_traces = len(traces)
        self.offset = np.concatenate([[0], np.cumsum(n_intervals)[:-1]]).astype(np.int64)
        self.n_intervals = n_intervals
        starts, ends, rates, cum_starts, cum_ends, byte_keys, time_keys = ([] for _ in range(7))
        self.period_s = np.empty(self.n_traces)
        self.cycle_bytes = np.empty(self.n_traces)
        self.first_time_s = np.empty(self.n_traces)
        for row, trace in enumerate(traces):
            times = trace.times_s
            end = times[1:]
            start = np.concatenate([[0.0], times[1:-1]])
            rate = trace.throughput_mbps[1:] * (BITS_PER_MBIT / BITS_PER_BYTE) * link.payload_fraction
            cum_end = np.cumsum(rate * (end - start))
            cum_start = np.concatenate([[0.0], cum_end[:-1]])
            self.period_s[row] = times[-1]
            self.cycle_bytes[row] = cum_end[-1]
            self.first_time_s[row] = times[0]
            starts.append(start)
            ends.append(end)
            rates.append(rate)
            cum_starts.append(cum_start)
            cum_ends.append(cum_end)
            byte_keys.append(row + cum_end / cum_end[-1])
            time_keys.append(row + end / times[-1])
        self.start_s = np.concatenate(starts)
        self.end_s = np.concatenate(ends)
        self.rate_bytes_per_s = np.concatenate(rates)
        self.cum_start_bytes = np.concatenate(cum_starts)
        self.cum_end_bytes = np.concatenate(cum_ends)
        # Keys are non-decreasing across rows (row r spans (r, r + 1]); np.maximum.accumulate guards
        # against a last key of a row rounding above the next row's first key.
        self.byte_key = np.maximum.accumulate(np.concatenate(byte_keys))
        self.time_key = np.maximum.accumulate(np.concatenate(time_keys))


class _DeviceTable:
    """A `TraceTable`'s arrays moved to a backend."""

    def __init__(self, table: TraceTable, ops: _Ops) -> None:
        f, i = ops.float, ops.int
        self.offset = ops.asarray(table.offset, i)
        self.last = ops.asarray(table.offset + table.n_intervals - 1, i)
        self.period_s = ops.asarray(table.period_s, f)
        self.cycle_bytes = ops.asarray(table.cycle_bytes, f)
        self.start_s = ops.asarray(table.start_s, f)
        self.end_s = ops.asarray(table.end_s, f)
        self.rate = ops.asarray(table.rate_bytes_per_s, f)
        self.cum_start = ops.asarray(table.cum_start_bytes, f)
        self.cum_end = ops.asarray(table.cum_end_bytes, f)
        self.byte_key = ops.asarray(table.byte_key, f)
        self.time_key = ops.asarray(table.time_key, f)


def _wrap(ops: _Ops, value: Array, period: Array) -> tuple[Array, Array]:
    """Split ``value`` into (whole periods, remainder in [0, period)), robust to rounding."""
    xp = ops.xp
    cycles = xp.floor(value / period)
    rest = value - cycles * period
    over = rest >= period
    cycles = xp.where(over, cycles + 1, cycles)
    rest = xp.where(over, rest - period, rest)
    under = rest < 0
    cycles = xp.where(under, cycles - 1, cycles)
    rest = xp.where(under, rest + period, rest)
    return cycles, rest


def _locate(
    ops: _Ops, keys: Array, values: Array, row: Array, first: Array, last: Array, target: Array, scale: Array
) -> Array:
    """Global index of the first interval of each row whose ``values`` exceed ``target`` (strictly).

    ``values`` are per-row non-decreasing, ``target`` in [0, row maximum); ``keys = row + values/scale``.
    """
    xp = ops.xp
    j = ops.searchsorted_right(keys, row + target / scale)
    j = xp.minimum(xp.maximum(j, first), last)
    for _ in range(_MAX_REPAIR_STEPS):
        right = (values[j] <= target) & (j < last)
        left = (j > first) & (values[j - 1] > target)
        if not (ops.any(right) or ops.any(left)):
            return j
        j = j + ops.to_int(right) - ops.to_int(left)
    raise RuntimeError("interval search did not converge (trace table corrupted?)")


class BatchSimulator:
    """B streaming sessions over a trace set, stepped together.

    Args:
        traces: the trace set; each session plays one trace at a time.
        video: the video every session streams.
        link: link/buffer parameters (`LinkConfig.evaluation()` or `.training()`).
        n_sessions: the batch size B.
        seed: seeds the per-session generators (session i uses ``seed + i``, as Gymnasium's vector
            envs do), which draw trace choice, start point and delay noise at each session reset.
        device: None for the numpy backend; "cpu", "cuda" or a torch.device for the torch backend.

    Sessions start un-initialised; call `reset` first. A session that finished its video must be reset
    before it is stepped again. In ``trace_order="sequential"`` mode session i plays traces
    i, i + B, i + 2B, ... (mod the number of traces), so B = number of traces plays each trace once.
    """

    def __init__(
        self,
        traces: Sequence[Trace],
        video: Video,
        link: LinkConfig | None = None,
        n_sessions: int = 1,
        seed: int | None = None,
        *,
        device: Any = None,
    ) -> None:
        if n_sessions < 1:
            raise ValueError(f"n_sessions must be >= 1, got {n_sessions}")
        self.traces = list(traces)
        self.video = video
        self.link = link if link is not None else LinkConfig.evaluation()
        self.n_sessions = n_sessions
        self.table = TraceTable(self.traces, self.link)
        self.ops: _Ops = _NumpyOps() if device is None else _TorchOps(device)
        self._dev = _DeviceTable(self.table, self.ops)
        ops, xp = self.ops, self.ops.xp
        self._chunk_bytes = ops.asarray(video.chunk_bytes, ops.int)
        self._rngs = self._make_rngs(seed, n_sessions)
        self._next_sequential = np.arange(n_sessions, dtype=np.int64)
        b = n_sessions
        self.trace_index: Array = xp.zeros(b, dtype=ops.int) if ops.name == "numpy" else self._zeros_i(b)
        self._interval = self._zeros_i(b)  # global interval index
        self._clock_s = self._zeros_f(b)
        self._buffer_ms = self._zeros_f(b)
        self.chunk_index: Array = self._zeros_i(b)
        self._noise = self._zeros_f((b, video.n_chunks)) + 1.0
        self._ready = np.zeros(b, dtype=bool)  # host-side: reset at least once and not finished
        self._arange = ops.asarray(np.arange(b), ops.int)

    # -- helpers -----------------------------------------------------------------------------------
    def _zeros_f(self, shape: Any) -> Array:
        ops = self.ops
        if ops.name == "numpy":
            return np.zeros(shape, dtype=np.float64)
        return ops.xp.zeros(shape, dtype=ops.float, device=ops.device)  # type: ignore[union-attr]

    def _zeros_i(self, shape: Any) -> Array:
        ops = self.ops
        if ops.name == "numpy":
            return np.zeros(shape, dtype=np.int64)
        return ops.xp.zeros(shape, dtype=ops.int, device=ops.device)  # type: ignore[union-attr]

    @staticmethod
    def _make_rngs(seed: int | None, n: int) -> list[np.random.Generator]:
        if seed is None:
            root = np.random.SeedSequence()
            return [np.random.default_rng(s) for s in root.spawn(n)]
        return [np.random.default_rng(seed + i) for i in range(n)]

    @property
    def buffer_s(self) -> Array:
        """Current buffer of every session in seconds."""
        return self._buffer_ms / MS_PER_S

    @property
    def done(self) -> npt.NDArray[np.bool_]:
        """Host-side mask of sessions that must be reset before their next step."""
        return ~self._ready

    # -- reset -------------------------------------------------------------------------------------
    def reset(
        self,
        mask: npt.ArrayLike | None = None,
        *,
        seed: int | None = None,
        trace_index: npt.ArrayLike | None = None,
        start_index: npt.ArrayLike | None = None,
    ) -> None:
        """Start new sessions (all, or those in the boolean ``mask``): empty buffer, chunk 0.

        Trace and start point come from ``trace_index``/``start_index`` when given (one value per reset
        session), else from the link's ``trace_order``/``start`` modes. With ``seed``, the generators of
        the reset sessions are re-seeded first (session i with ``seed + i``).
        """
        sel = np.arange(self.n_sessions) if mask is None else np.flatnonzero(np.asarray(mask, dtype=bool))
        if mask is not None and np.asarray(mask).shape != (self.n_sessions,):
            raise ValueError(f"mask must have shape ({self.n_sessions},), got {np.asarray(mask).shape}")
        if sel.size == 0:
            return
        if seed is not None:
            for i in sel:
                self._rngs[i] = np.random.default_rng(seed + int(i))
        table, link, n_chunks = self.table, self.link, self.video.n_chunks
        traces = np.empty(sel.size, dtype=np.int64)
        starts = np.empty(sel.size, dtype=np.int64)
        noise = np.ones((sel.size, n_chunks))
        given_traces = None if trace_index is None else np.broadcast_to(np.asarray(trace_index), sel.shape)
        given_starts = None if start_index is None else np.broadcast_to(np.asarray(start_index), sel.shape)
        for k, i in enumerate(sel):
            rng = self._rngs[i]
            if given_traces is not None:
                t = int(given_traces[k])
            elif link.trace_order == "random":
                t = int(rng.integers(table.n_traces))
            else:
                t = int(self._next_sequential[i] % table.n_traces)
                self._next_sequential[i] += self.n_sessions
            if not 0 <= t < table.n_traces:
                raise ValueError(f"trace_index {t} out of range [0, {table.n_traces})")
            if given_starts is not None:
                s = int(given_starts[k])
            elif link.start == "random":
                s = int(rng.integers(table.n_intervals[t]))
            else:
                s = 0
            if not 0 <= s < table.n_intervals[t]:
                raise ValueError(f"start_index {s} out of range [0, {table.n_intervals[t]}) for trace {t}")
            if link.has_noise:
                noise[k] = rng.uniform(link.delay_noise_low, link.delay_noise_high, size=n_chunks)
            traces[k], starts[k] = t, s
        first_clock = np.where(starts == 0, table.first_time_s[traces], 0.0)
        later_clock = table.start_s[table.offset[traces] + starts]
        clock = np.where(starts == 0, first_clock, later_clock)
        ops = self.ops
        idx = ops.asarray(sel, ops.int)
        self.trace_index[idx] = ops.asarray(traces, ops.int)
        self._interval[idx] = ops.asarray(table.offset[traces] + starts, ops.int)
        self._clock_s[idx] = ops.asarray(clock, ops.float)
        self._buffer_ms[idx] = 0.0
        self.chunk_index[idx] = 0
        self._noise[idx] = ops.asarray(noise, ops.float)
        self._ready[sel] = True

    # -- step --------------------------------------------------------------------------------------
    def step(self, qualities: npt.ArrayLike | Array, active: npt.ArrayLike | None = None) -> ChunkResult:
        """Fetch the next chunk of every active session (all, or the boolean mask ``active``)."""
        ops, xp, dev, link = self.ops, self.ops.xp, self._dev, self.link
        b, n_levels = self.n_sessions, self.video.n_levels
        act = np.ones(b, dtype=bool) if active is None else np.asarray(active, dtype=bool)
        if act.shape != (b,):
            raise ValueError(f"active must have shape ({b},), got {act.shape}")
        if np.any(act & ~self._ready):
            bad = np.flatnonzero(act & ~self._ready)[:5].tolist()
            raise RuntimeError(f"sessions {bad} have not been reset (or already finished their video)")
        q_all = ops.asarray(ops.to_numpy(qualities) if ops.name == "torch" else qualities, ops.int)
        if tuple(q_all.shape) != (b,):
            raise ValueError(f"qualities must have shape ({b},), got {tuple(q_all.shape)}")
        full = bool(act.all())
        sel = self._arange if full else ops.asarray(np.flatnonzero(act), ops.int)
        q = q_all if full else q_all[sel]
        if ops.any((q < 0) | (q >= n_levels)):
            raise ValueError(f"qualities must be in [0, {n_levels}), got {ops.to_numpy(q).tolist()[:10]}")

        trace = self.trace_index[sel]
        chunk = self.chunk_index[sel]
        g = self._interval[sel]
        clock = self._clock_s[sel]
        size = self._chunk_bytes[q, chunk].to(ops.float) if ops.name == "torch" else (
            self._chunk_bytes[q, chunk].astype(np.float64)
        )

        # Download: byte position on the cycle, plus the chunk, located by one search.
        cycle_bytes = dev.cycle_bytes[trace]
        period = dev.period_s[trace]
        first, last = dev.offset[trace], dev.last[trace]
        position = dev.cum_start[g] + dev.rate[g] * (clock - dev.start_s[g])
        cycles, target = _wrap(ops, position + size, cycle_bytes)
        j = _locate(ops, dev.byte_key, dev.cum_end, trace, first, last, target, cycle_bytes)
        end_clock = dev.start_s[j] + (target - dev.cum_start[j]) / dev.rate[j]
        delay_s = cycles * period + (end_clock - clock)
        delay_ms = delay_s * MS_PER_S + link.rtt_ms
        if link.has_noise:
            delay_ms = delay_ms * self._noise[sel, chunk]

        buffer_ms = self._buffer_ms[sel]
        rebuf_ms = ops.clip_min(delay_ms - buffer_ms, 0.0)
        buffer_ms = ops.clip_min(buffer_ms - delay_ms, 0.0) + self.video.chunk_duration_s * MS_PER_S
        excess_ms = buffer_ms - link.max_buffer_s * MS_PER_S
        sleep_ms = xp.where(excess_ms > 0, xp.ceil(excess_ms / link.drain_step_ms) * link.drain_step_ms, 0.0)
        buffer_ms = buffer_ms - sleep_ms

        # Sleep: advance the clock without downloading, located by one search on interval ends.
        if ops.any(sleep_ms > 0):
            _, woke = _wrap(ops, end_clock + sleep_ms / MS_PER_S, period)
            sleeping = sleep_ms > 0
            j_woke = _locate(ops, dev.time_key, dev.end_s, trace, first, last, woke, period)
            j = xp.where(sleeping, j_woke, j)
            end_clock = xp.where(sleeping, woke, end_clock)

        chunk = chunk + 1
        remaining = self.video.n_chunks - chunk
        ended = remaining <= 0
        next_index = xp.minimum(chunk, self.video.n_chunks - 1)
        next_sizes = self._chunk_bytes[:, next_index].T * ops.to_int(~ended)[:, None]

        self._interval[sel] = j
        self._clock_s[sel] = end_clock
        self._buffer_ms[sel] = buffer_ms
        self.chunk_index[sel] = chunk
        ended_host = ops.to_numpy(ended).astype(bool)
        self._ready[np.flatnonzero(act)[ended_host]] = False

        if full:
            return ChunkResult(
                active=ops.asarray(act, bool if ops.name == "numpy" else xp.bool),
                trace_index=trace,
                chunk_index=chunk - 1,
                quality=q,
                chunk_bytes=ops.to_int(size),
                delay_ms=delay_ms,
                sleep_ms=sleep_ms,
                buffer_s=buffer_ms / MS_PER_S,
                rebuf_s=rebuf_ms / MS_PER_S,
                end_of_video=ended,
                chunks_remaining=remaining,
                next_chunk_bytes=next_sizes,
            )
        return self._scatter(act, sel, trace, chunk - 1, q, size, delay_ms, sleep_ms, buffer_ms, rebuf_ms,
                             ended, remaining, next_sizes)

    def _scatter(self, act: npt.NDArray[np.bool_], sel: Array, *values: Array) -> ChunkResult:
        ops, xp, b = self.ops, self.ops.xp, self.n_sessions
        trace, chunk, q, size, delay_ms, sleep_ms, buffer_ms, rebuf_ms, ended, remaining, next_sizes = values

        def put(v: Array, dtype: Any, width: int | None = None) -> Array:
            out = self._zeros_f(b if width is None else (b, width)) if dtype is ops.float else (
                self._zeros_i(b if width is None else (b, width))
            )
            out[sel] = v if dtype is ops.float else ops.to_int(v)
            return out

        booltype = bool if ops.name == "numpy" else xp.bool
        ended_full = put(ended, ops.int) > 0
        return ChunkResult(
            active=ops.asarray(act, booltype),
            trace_index=put(trace, ops.int),
            chunk_index=put(chunk, ops.int),
            quality=put(q, ops.int),
            chunk_bytes=put(size, ops.int),
            delay_ms=put(delay_ms, ops.float),
            sleep_ms=put(sleep_ms, ops.float),
            buffer_s=put(buffer_ms / MS_PER_S, ops.float),
            rebuf_s=put(rebuf_ms / MS_PER_S, ops.float),
            end_of_video=ended_full,
            chunks_remaining=put(remaining, ops.int),
            next_chunk_bytes=put(next_sizes, ops.int, self.video.n_levels),
        )
