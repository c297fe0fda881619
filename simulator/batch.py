"""Vectorised chunk-level simulator: B sessions stepped at once, with no per-sample Python loop.

Same semantics as `simulator.reference` (see its docstring). Instead of walking a trace interval by
interval, the core works in *cycle coordinates*: after the first wrap a trace repeats with period
``times_s[-1]`` and its interval 1 starts at clock 0, so a position on the trace is (cycles, clock).
Prefix sums of deliverable payload bytes turn "when is this chunk complete?" into a search for a byte
target among interval ends, and "where does a sleep end?" into a search among interval end times.

Search: every trace row has a bucket index (a uniform grid over its cycle's bytes, and one over its
period) that names, for each bucket, the first interval that can contain a target falling in it.
A session looks up its bucket and then steps forward over the (usually zero or one) interval ends
left before its target; the few still unresolved after `_NEAR_STEPS` rounds use a global
``searchsorted`` over all rows (keys ``row + value / row maximum``) with exact boundary repair.
All comparisons that decide an interval are exact comparisons of un-normalised values.

Units: times in seconds (``_s``), buffer and delays in milliseconds (``_ms``) internally as in the
reference, sizes in bytes, throughput in bytes/s after the payload fraction (``rate_bytes_per_s``).

Randomness (trace choice, start point, delay noise) is counter-based: draw ``c`` of a session's e-th
episode is a pure function of the session's 64-bit key, e and c (`episode_uniforms`). Resets of many
sessions are one vectorised call, every backend sees the same numbers, and the scalar
`simulator.envs.ABREnv`, whose key comes from its own ``np_random``, reproduces a vector session exactly.

Backends: numpy (default) or torch (``device="cpu"|"cuda"``); both run the same code through a small
operations shim.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from abr_common.units import BITS_PER_BYTE, BITS_PER_MBIT, MS_PER_S
from simulator.link import LinkConfig
from simulator.video import Video
from traces.trace import Trace

# Arrays are numpy arrays on the numpy backend and torch tensors on the torch backend.
Array = Any

#: Safety bound on boundary-repair iterations; each moves one interval, and rounding moves at most one.
_MAX_REPAIR_STEPS = 64
#: Rounds of stepping forward from the bucket's first interval before the global search takes over.
_NEAR_STEPS = 4
#: Buckets per interval in the byte index (byte shares of intervals vary with their rates).
_BYTE_BUCKETS_PER_INTERVAL = 4
#: Buckets per interval in the time index.
_TIME_BUCKETS_PER_INTERVAL = 2
#: Buckets start this fraction of a bucket early, so rounding never puts a target before its bucket's
#: first candidate interval.
_BUCKET_MARGIN = 1e-6


def _mix64(z: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """SplitMix64's finaliser: a bijection on 64-bit integers with good avalanche."""
    z = z ^ (z >> np.uint64(30))
    z = z * np.uint64(0xBF58476D1CE4E5B9)
    z = z ^ (z >> np.uint64(27))
    z = z * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


#: SplitMix64's increment (odd, so ``key + n * _GOLDEN`` is a bijection of n for a fixed key).
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
#: Draw counters per episode: draw c of episode e is SplitMix64 output number ``e * 2**20 + c``.
_DRAWS_PER_EPISODE_BITS = 20


def _stream_states(keys: npt.ArrayLike, episodes: npt.ArrayLike, draws: npt.ArrayLike) -> npt.NDArray[np.uint64]:
    """SplitMix64 states of draw ``draws`` of episode ``episodes`` for sessions keyed ``keys`` (broadcast)."""
    draw = np.asarray(draws, dtype=np.uint64)
    if np.any(draw >= np.uint64(1 << _DRAWS_PER_EPISODE_BITS)):
        raise ValueError(f"at most {(1 << _DRAWS_PER_EPISODE_BITS) - 1} draws per episode")
    with np.errstate(over="ignore"):  # arithmetic modulo 2**64 is the point
        n = (np.asarray(episodes, dtype=np.uint64) << np.uint64(_DRAWS_PER_EPISODE_BITS)) + draw + np.uint64(1)
        return np.asarray(np.asarray(keys, dtype=np.uint64) + n * _GOLDEN, dtype=np.uint64)


def _uniform_from_state(state: npt.NDArray[np.uint64]) -> npt.NDArray[np.float64]:
    with np.errstate(over="ignore"):
        bits = _mix64(state)
    return np.asarray((bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53)), dtype=np.float64)


def episode_uniforms(keys: npt.ArrayLike, episodes: npt.ArrayLike, draws: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Uniforms in [0, 1): draw ``draws`` of episode ``episodes`` of the session keyed ``keys`` (broadcast).

    Counter-based SplitMix64: output number ``n = episode * 2**20 + draw`` of the stream seeded with
    the key is ``mix64(key + (n + 1) * golden)``; its top 53 bits make the uniform.
    """
    return _uniform_from_state(_stream_states(keys, episodes, draws))


def session_key(rng: np.random.Generator) -> int:
    """The 64-bit key of a session, drawn from a generator (how seeds become keys everywhere)."""
    return int(rng.integers(0, 1 << 63, dtype=np.int64))


#: Draw numbers within an episode: the trace choice, the start point, then one per chunk for noise.
TRACE_DRAW, START_DRAW, NOISE_DRAW0 = 0, 1, 2
#: The throughput prior's draws (two for its normal noise, one for whether it is missing), at the top of
#: an episode's counter range, clear of the per-chunk noise draws.
PRIOR_DRAWS = tuple((1 << _DRAWS_PER_EPISODE_BITS) - k for k in (3, 2, 1))


def noise_factors(link: LinkConfig, uniforms: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Map uniforms in [0, 1) to the link's multiplicative delay noise."""
    return link.delay_noise_low + (link.delay_noise_high - link.delay_noise_low) * uniforms


def uniform_index(u: npt.ArrayLike, n: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """``floor(u * n)`` clipped to ``[0, n - 1]`` (uniform over n choices for u uniform in [0, 1))."""
    n_arr = np.asarray(n, dtype=np.int64)
    return np.minimum((np.asarray(u) * n_arr).astype(np.int64), n_arr - 1)


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
    prior_mbps: Array  # every session's throughput prior (`start_prior_mbps`), inactive ones too; 0: none known


@dataclass(frozen=True)
class SessionState:
    """Where B sessions are (host numpy arrays): enough to resume them exactly (evaluation semantics).

    ``interval`` is relative to the session's trace (0 = its first interval); ``clock_s`` is cycle time.
    """

    trace_index: npt.NDArray[np.int64]
    interval: npt.NDArray[np.int64]
    clock_s: npt.NDArray[np.float64]
    buffer_s: npt.NDArray[np.float64]
    chunk_index: npt.NDArray[np.int64]


class _NumpyOps:
    """The handful of operations whose spelling differs between numpy and torch."""

    name = "numpy"

    def __init__(self) -> None:
        self.xp: Any = np
        self.float = np.float64
        self.int = np.int64
        self.bool = np.bool_

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
        self.bool = torch.bool

    def asarray(self, x: Any, dtype: Any) -> Array:
        return self.xp.as_tensor(np.array(x, copy=True), dtype=dtype, device=self.device)

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


def _bucket_index(ends: npt.NDArray[np.float64], total: float, n_buckets: int) -> npt.NDArray[np.int64]:
    """For each of ``n_buckets`` equal buckets of [0, total): the first interval whose end exceeds its start."""
    width = total / n_buckets
    starts = np.arange(n_buckets) * width - _BUCKET_MARGIN * width
    return np.minimum(np.searchsorted(ends, starts, side="right"), ends.size - 1).astype(np.int64)


class TraceTable:
    """All intervals of a trace set in flat arrays (cycle coordinates), ready for batched lookups.

    Interval ``k`` of a trace (0-based; the reference's pointer ``k + 1``) runs from ``start_s`` to
    ``end_s`` in cycle time; interval 0 starts at 0, which is where the reference's wrap puts the clock.
    ``cum_end_bytes`` are the payload bytes delivered from the cycle start to each interval's end.
    ``byte_bucket``/``time_bucket`` hold global interval indices per bucket (see the module docstring).
    """

    def __init__(self, traces: Sequence[Trace], link: LinkConfig) -> None:
        if len(traces) == 0:
            raise ValueError("the trace set is empty")
        n_intervals = np.array([len(t) - 1 for t in traces], dtype=np.int64)
        self.n_traces = len(traces)
        self.offset = np.concatenate([[0], np.cumsum(n_intervals)[:-1]]).astype(np.int64)
        self.n_intervals = n_intervals
        self.n_byte_buckets = n_intervals * _BYTE_BUCKETS_PER_INTERVAL
        self.n_time_buckets = n_intervals * _TIME_BUCKETS_PER_INTERVAL
        self.byte_bucket_offset = np.concatenate([[0], np.cumsum(self.n_byte_buckets)[:-1]]).astype(np.int64)
        self.time_bucket_offset = np.concatenate([[0], np.cumsum(self.n_time_buckets)[:-1]]).astype(np.int64)
        columns: dict[str, list[npt.NDArray[Any]]] = {
            k: [] for k in ("start", "end", "rate", "cum_start", "cum_end", "byte_key", "time_key", "bb", "tb")
        }
        self.period_s = np.empty(self.n_traces)
        self.cycle_bytes = np.empty(self.n_traces)
        self.first_time_s = np.empty(self.n_traces)
        for row, trace in enumerate(traces):
            times = trace.times_s
            end = times[1:]
            start = np.concatenate([[0.0], times[1:-1]])
            rate = trace.throughput_mbps[1:] * (BITS_PER_MBIT / BITS_PER_BYTE) * link.payload_fraction
            cum_end = np.cumsum(rate * (end - start))
            self.period_s[row] = times[-1]
            self.cycle_bytes[row] = cum_end[-1]
            self.first_time_s[row] = times[0]
            off = self.offset[row]
            columns["start"].append(start)
            columns["end"].append(end)
            columns["rate"].append(rate)
            columns["cum_start"].append(np.concatenate([[0.0], cum_end[:-1]]))
            columns["cum_end"].append(cum_end)
            columns["byte_key"].append(row + cum_end / cum_end[-1])
            columns["time_key"].append(row + end / times[-1])
            columns["bb"].append(off + _bucket_index(cum_end, cum_end[-1], int(self.n_byte_buckets[row])))
            columns["tb"].append(off + _bucket_index(end, times[-1], int(self.n_time_buckets[row])))
        self.start_s = np.concatenate(columns["start"])
        self.end_s = np.concatenate(columns["end"])
        self.rate_bytes_per_s = np.concatenate(columns["rate"])
        self.cum_start_bytes = np.concatenate(columns["cum_start"])
        self.cum_end_bytes = np.concatenate(columns["cum_end"])
        # Keys are non-decreasing across rows (row r spans (r, r + 1]); np.maximum.accumulate guards
        # against a last key of a row rounding above the next row's first key.
        self.byte_key = np.maximum.accumulate(np.concatenate(columns["byte_key"]))
        self.time_key = np.maximum.accumulate(np.concatenate(columns["time_key"]))
        self.byte_bucket = np.concatenate(columns["bb"])
        self.time_bucket = np.concatenate(columns["tb"])


def delivered_bytes(
    table: TraceTable, row: npt.NDArray[np.int64], position_s: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """Payload bytes the looping trace ``row`` delivers from cycle time 0 to ``position_s`` (any real
    number: whole cycles are counted, so a negative position gives a negative count)."""
    period_s = table.period_s[row]
    first = table.offset[row]
    last = first + table.n_intervals[row] - 1
    cycles, x = np.divmod(position_s, period_s)
    k = np.clip(np.searchsorted(table.time_key, row + x / period_s, side="right"), first, last)
    within = table.cum_start_bytes[k] + table.rate_bytes_per_s[k] * np.clip(x - table.start_s[k], 0.0, None)
    return np.asarray(cycles * table.cycle_bytes[row] + np.minimum(within, table.cum_end_bytes[k]))


def window_throughput_mbps(
    table: TraceTable, row: npt.NDArray[np.int64], start_s: npt.NDArray[np.float64], end_s: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """Mean payload throughput (Mbit/s) trace ``row`` offers between cycle times ``start_s`` < ``end_s``."""
    delivered = delivered_bytes(table, row, end_s) - delivered_bytes(table, row, start_s)
    return np.asarray(delivered * BITS_PER_BYTE / BITS_PER_MBIT / (end_s - start_s))


def start_prior_mbps(
    link: LinkConfig,
    table: TraceTable,
    row: npt.NDArray[np.int64],
    clock_s: npt.NDArray[np.float64],
    keys: npt.NDArray[np.uint64],
    episodes: npt.NDArray[np.uint64],
) -> npt.NDArray[np.float64]:
    """What a player knows of its network when a session starts at ``clock_s``: the mean throughput of
    the last ``link.prior_window_s`` seconds, times log-normal noise, or 0 (unknown) for a random
    ``link.prior_missing_fraction`` of sessions. Draws `PRIOR_DRAWS` of the sessions' episodes."""
    prior = window_throughput_mbps(table, row, clock_s - link.prior_window_s, clock_s)
    u = episode_uniforms(keys[:, None], episodes[:, None], np.asarray(PRIOR_DRAWS)[None, :])
    if link.prior_noise_sigma > 0:
        z = np.sqrt(-2.0 * np.log1p(-u[:, 0])) * np.cos(2.0 * np.pi * u[:, 1])  # Box-Muller
        prior = prior * np.exp(link.prior_noise_sigma * z)
    return np.asarray(np.where(u[:, 2] < link.prior_missing_fraction, 0.0, prior))


class _DeviceTable:
    """A `TraceTable`'s arrays moved to a backend."""

    def __init__(self, table: TraceTable, ops: _Ops) -> None:
        f, i = ops.float, ops.int
        self.start_s = ops.asarray(table.start_s, f)
        self.end_s = ops.asarray(table.end_s, f)
        self.rate = ops.asarray(table.rate_bytes_per_s, f)
        self.cum_start = ops.asarray(table.cum_start_bytes, f)
        self.cum_end = ops.asarray(table.cum_end_bytes, f)
        self.byte_key = ops.asarray(table.byte_key, f)
        self.time_key = ops.asarray(table.time_key, f)
        self.byte_bucket = ops.asarray(table.byte_bucket, i)
        self.time_bucket = ops.asarray(table.time_bucket, i)


class _RowConstants:
    """Per-session copies of the constants of the session's trace row (refreshed at reset)."""

    def __init__(self, ops: _Ops, n: int) -> None:
        def ints(fill: int) -> Array:
            return ops.asarray(np.full(n, fill, dtype=np.int64), ops.int)

        def floats(fill: float) -> Array:
            return ops.asarray(np.full(n, fill), ops.float)

        self.trace, self.first, self.last = ints(0), ints(0), ints(0)
        self.period_s, self.cycle_bytes = floats(1.0), floats(1.0)
        # Bucket of a value v in [0, total): min(int(v * scale + first bucket), last bucket).
        self.byte_bucket_scale, self.byte_bucket_first, self.byte_bucket_last = floats(1.0), floats(0.0), ints(0)
        self.time_bucket_scale, self.time_bucket_first, self.time_bucket_last = floats(1.0), floats(0.0), ints(0)

    def assign(self, ops: _Ops, idx: Array, table: TraceTable, traces: npt.NDArray[np.int64]) -> None:
        f, i = ops.float, ops.int
        self.trace[idx] = ops.asarray(traces, i)
        self.first[idx] = ops.asarray(table.offset[traces], i)
        self.last[idx] = ops.asarray(table.offset[traces] + table.n_intervals[traces] - 1, i)
        self.period_s[idx] = ops.asarray(table.period_s[traces], f)
        self.cycle_bytes[idx] = ops.asarray(table.cycle_bytes[traces], f)
        for kind, total in (("byte", table.cycle_bytes[traces]), ("time", table.period_s[traces])):
            first = getattr(table, f"{kind}_bucket_offset")[traces]
            count = getattr(table, f"n_{kind}_buckets")[traces]
            getattr(self, f"{kind}_bucket_scale")[idx] = ops.asarray(count / total, f)
            getattr(self, f"{kind}_bucket_first")[idx] = ops.asarray(first, f)
            getattr(self, f"{kind}_bucket_last")[idx] = ops.asarray(first + count - 1, i)


def _wrap(ops: _Ops, value: Array, period: Array) -> tuple[Array, Array]:
    """Split ``value >= 0`` into (whole periods, remainder in [0, period)).

    ``fmod`` is exact in IEEE arithmetic, so the remainder is exactly in range with no repair step.
    """
    rest = ops.xp.fmod(value, period)
    return ops.xp.round((value - rest) / period), rest


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


def _broadcast_rows(ops: _Ops, row: Array, n: int) -> Array:
    if ops.name == "numpy":
        return np.broadcast_to(row, (n, row.shape[0]))
    return row.expand(n, row.shape[0])


class BatchSimulator:
    """B streaming sessions over a trace set, stepped together.

    Args:
        traces: the trace set; each session plays one trace at a time.
        video: the video every session streams.
        link: link/buffer parameters (`LinkConfig.evaluation()` or `.training()`).
        n_sessions: the batch size B.
        seed: seeds the sessions' random streams (session i's key comes from ``seed + i``, as
            Gymnasium's vector envs seed sub-env i); None draws fresh entropy.
        device: None for the numpy backend; "cpu", "cuda" or a torch.device for the torch backend.
        prior: whether sessions draw a throughput prior when they start (`start_prior_mbps`); without,
            every prior is 0 (unknown) and resets skip the draw, for runs where nothing reads it.

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
        prior: bool = True,
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
        ops, b = self.ops, n_sessions
        # Sizes by [chunk, level], plus a row of zeros standing for "after the last chunk".
        padded = np.concatenate([video.chunk_bytes.T, np.zeros((1, video.n_levels), dtype=np.int64)])
        self._next_bytes = ops.asarray(padded, ops.int)
        self._chunk_bytes_f = ops.asarray(video.chunk_bytes, ops.float)
        self._keys = np.zeros(b, dtype=np.uint64)
        self._next_episode = np.zeros(b, dtype=np.uint64)
        self._episode = np.zeros(b, dtype=np.uint64)  # of the running episode
        self._noise_state0 = np.zeros(b, dtype=np.uint64)  # stream state of the running episode's chunk-0 noise
        self._seed_sessions(np.arange(b), seed)
        self._next_sequential = np.arange(b, dtype=np.int64)
        self._rows = _RowConstants(ops, b)
        self.chunk_index: Array = ops.asarray(np.zeros(b), ops.int)
        self._interval = ops.asarray(np.zeros(b), ops.int)  # global interval index
        self._clock_s = ops.asarray(np.zeros(b), ops.float)
        self._buffer_ms = ops.asarray(np.zeros(b), ops.float)
        self._ready = np.zeros(b, dtype=bool)  # host-side: reset at least once and not finished
        self._all = np.ones(b, dtype=bool)
        self._host_chunk = np.zeros(b, dtype=np.int64)  # host copy of chunk_index, for the noise draws
        self.draws_prior = prior
        self.prior_mbps = np.zeros(b)  # host: each session's throughput prior, drawn when it starts
        self._prior_dev: Array = ops.asarray(self.prior_mbps, ops.float)

    def _seed_sessions(self, sel: npt.NDArray[np.int64], seed: int | None) -> None:
        if seed is None:
            # Fresh entropy once, then distinct keys along a SplitMix64 stream (cheap for large batches).
            base = np.random.SeedSequence().generate_state(1, dtype=np.uint64)[0]
            with np.errstate(over="ignore"):
                keys = _mix64(base + (np.arange(sel.size, dtype=np.uint64) + np.uint64(1)) * _GOLDEN)
        else:
            keys = np.array([session_key(np.random.default_rng(seed + int(i))) for i in sel], dtype=np.uint64)
        self._keys[sel] = keys
        self._next_episode[sel] = 0

    @property
    def trace_index(self) -> Array:
        """Index (into ``traces``) of the trace each session is playing."""
        return self._rows.trace

    @property
    def start_index(self) -> Array:
        """Interval each session is in now, relative to its trace (0 = the first interval)."""
        return self._interval - self._rows.first

    @property
    def buffer_s(self) -> Array:
        """Current buffer of every session in seconds."""
        return self._buffer_ms / MS_PER_S

    @property
    def done(self) -> npt.NDArray[np.bool_]:
        """Host-side mask of sessions that must be reset before their next step."""
        return ~self._ready

    def episode_key(self) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
        """(key, episode number) of every session's running episode: what its random draws depend on."""
        return self._keys.copy(), self._episode.copy()

    def state(self) -> SessionState:
        """A copy of every session's position (trace, interval, clock, buffer, next chunk)."""
        ops = self.ops
        return SessionState(
            trace_index=ops.to_numpy(self._rows.trace).astype(np.int64),
            interval=ops.to_numpy(self._interval - self._rows.first).astype(np.int64),
            clock_s=ops.to_numpy(self._clock_s).astype(np.float64),
            buffer_s=ops.to_numpy(self._buffer_ms).astype(np.float64) / MS_PER_S,
            chunk_index=ops.to_numpy(self.chunk_index).astype(np.int64),
        )

    def future_throughput_mbps(self, bins: int, bin_s: float) -> npt.NDArray[np.float64]:
        """Mean deliverable throughput (Mbit/s of payload) of each session's trace over the next ``bins``
        windows of ``bin_s`` seconds from its clock, ``[B, bins]``: what the network will offer, whatever
        the player fetches (delay noise aside). Training-only knowledge, for a critic that sees the future.
        """
        if bins < 1 or not bin_s > 0:
            raise ValueError(f"bins must be >= 1 and bin_s > 0, got {bins} and {bin_s}")
        state, table = self.state(), self.table
        row = state.trace_index
        edges = np.stack([delivered_bytes(table, row, state.clock_s + bin_s * j) for j in range(bins + 1)], axis=1)
        return np.diff(edges, axis=1) * BITS_PER_BYTE / BITS_PER_MBIT / bin_s

    def load_state(self, state: SessionState) -> None:
        """Put every session at ``state`` (e.g. to branch a search from saved positions).

        Random streams are untouched: with delay noise, the noise of the loaded chunk indices is drawn
        from the sessions' current episodes.
        """
        table, ops, b = self.table, self.ops, self.n_sessions
        fields = {
            k: np.asarray(getattr(state, k)) for k in ("trace_index", "interval", "clock_s", "buffer_s", "chunk_index")
        }
        for name, value in fields.items():
            if value.shape != (b,):
                raise ValueError(f"state.{name} must have shape ({b},), got {value.shape}")
        traces = fields["trace_index"].astype(np.int64)
        if np.any((traces < 0) | (traces >= table.n_traces)):
            raise ValueError(f"state.trace_index must be in [0, {table.n_traces})")
        interval = fields["interval"].astype(np.int64)
        if np.any((interval < 0) | (interval >= table.n_intervals[traces])):
            raise ValueError("state.interval must be within each session's trace")
        chunk = fields["chunk_index"].astype(np.int64)
        if np.any((chunk < 0) | (chunk >= self.video.n_chunks)):
            raise ValueError(f"state.chunk_index must be in [0, {self.video.n_chunks}) (a chunk still to fetch)")
        if np.any(fields["buffer_s"] < 0) or not np.all(np.isfinite(fields["clock_s"])):
            raise ValueError("state.buffer_s must be >= 0 and state.clock_s finite")
        idx = ops.asarray(np.arange(b), ops.int)
        self._rows.assign(ops, idx, table, traces)
        self._interval = ops.asarray(table.offset[traces] + interval, ops.int)
        self._clock_s = ops.asarray(fields["clock_s"], ops.float)
        self._buffer_ms = ops.asarray(fields["buffer_s"] * MS_PER_S, ops.float)
        self.chunk_index = ops.asarray(chunk, ops.int)
        self._host_chunk = chunk.copy()
        self._ready[:] = True

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

        Trace and start point come from ``trace_index``/``start_index`` when given (one value, or one
        per reset session), else from the link's ``trace_order``/``start`` modes. With ``seed`` the
        reset sessions' random streams restart (session i from ``seed + i``).
        """
        if mask is None:
            sel = np.arange(self.n_sessions)
        else:
            m = np.asarray(mask, dtype=bool)
            if m.shape != (self.n_sessions,):
                raise ValueError(f"mask must have shape ({self.n_sessions},), got {m.shape}")
            sel = np.flatnonzero(m)
        if sel.size == 0:
            return
        if seed is not None:
            self._seed_sessions(sel, seed)
        table, link = self.table, self.link
        episodes = self._next_episode[sel]
        self._episode[sel] = episodes
        self._noise_state0[sel] = _stream_states(self._keys[sel], episodes, NOISE_DRAW0)
        self._next_episode[sel] += np.uint64(1)
        if trace_index is not None:
            traces = np.broadcast_to(np.asarray(trace_index, dtype=np.int64), sel.shape).copy()
            if np.any((traces < 0) | (traces >= table.n_traces)):
                raise ValueError(f"trace_index must be in [0, {table.n_traces}), got {traces[:10].tolist()}")
        elif link.trace_order == "random":
            traces = uniform_index(episode_uniforms(self._keys[sel], episodes, TRACE_DRAW), table.n_traces)
        else:
            traces = self._next_sequential[sel] % table.n_traces
            self._next_sequential[sel] += self.n_sessions
        n_intervals = table.n_intervals[traces]
        if start_index is not None:
            starts = np.broadcast_to(np.asarray(start_index, dtype=np.int64), sel.shape).copy()
            if np.any((starts < 0) | (starts >= n_intervals)):
                raise ValueError("start_index must be in [0, number of samples - 1) of each session's trace")
        elif link.start == "random":
            starts = uniform_index(episode_uniforms(self._keys[sel], episodes, START_DRAW), n_intervals)
        else:
            starts = np.zeros(sel.size, dtype=np.int64)
        # Interval 0 starts at clock 0 in cycle time, but a session starting there starts at the first
        # sample's time (the reference's initial clock); any other interval starts at its own start.
        clock = np.where(starts == 0, table.first_time_s[traces], table.start_s[table.offset[traces] + starts])
        ops = self.ops
        idx = ops.asarray(sel, ops.int)
        self._rows.assign(ops, idx, table, traces)
        self._interval[idx] = ops.asarray(table.offset[traces] + starts, ops.int)
        self._clock_s[idx] = ops.asarray(clock, ops.float)
        self._buffer_ms[idx] = 0.0
        self.chunk_index[idx] = 0
        self._host_chunk[sel] = 0
        self._ready[sel] = True
        if self.draws_prior:
            prior = start_prior_mbps(link, table, traces, clock, self._keys[sel], episodes)
            self.prior_mbps[sel] = prior
            self._prior_dev[idx] = ops.asarray(prior, ops.float)

    # -- step --------------------------------------------------------------------------------------
    def step(self, qualities: npt.ArrayLike | Array, active: npt.ArrayLike | None = None) -> ChunkResult:
        """Fetch the next chunk of every active session (all, or the boolean mask ``active``)."""
        ops, xp, dev, link = self.ops, self.ops.xp, self._dev, self.link
        b, n_levels = self.n_sessions, self.video.n_levels
        act = self._all if active is None else np.asarray(active, dtype=bool)
        if act.shape != (b,):
            raise ValueError(f"active must have shape ({b},), got {act.shape}")
        if not self._ready[act].all():
            bad = np.flatnonzero(act & ~self._ready)[:5].tolist()
            raise RuntimeError(f"sessions {bad} have not been reset (or already finished their video)")
        q_all = self._as_levels(qualities)
        full = bool(act.all())
        host_sel = None if full else np.flatnonzero(act)
        sel = None if host_sel is None else ops.asarray(host_sel, ops.int)

        def rows(x: Array) -> Array:
            return x if sel is None else x[sel]

        q = rows(q_all)
        if int(q.min()) < 0 or int(q.max()) >= n_levels:
            raise ValueError(f"qualities must be in [0, {n_levels}), got {ops.to_numpy(q).tolist()[:10]}")
        r = self._rows
        trace, first, last = rows(r.trace), rows(r.first), rows(r.last)
        chunk, g, clock = rows(self.chunk_index), rows(self._interval), rows(self._clock_s)
        stepped_chunks = self._host_chunk if host_sel is None else self._host_chunk[host_sel]
        lockstep = bool(stepped_chunks.size) and bool((stepped_chunks == stepped_chunks[0]).all())
        # Lockstep (every stepped session at the same chunk) is the usual case: gather from one column.
        size = self._chunk_bytes_f[:, int(stepped_chunks[0])][q] if lockstep else self._chunk_bytes_f[q, chunk]

        # Download: byte position on the cycle plus the chunk; find the interval where it completes.
        cycle_bytes, period = rows(r.cycle_bytes), rows(r.period_s)
        position = dev.cum_start[g] + dev.rate[g] * (clock - dev.start_s[g])
        cycles, target = _wrap(ops, position + size, cycle_bytes)
        bucket = self._bucket(target, rows(r.byte_bucket_scale), rows(r.byte_bucket_first), rows(r.byte_bucket_last))
        j = self._search(dev.cum_end, dev.byte_key, dev.byte_bucket[bucket], trace, first, last, target, cycle_bytes)
        end_clock = dev.start_s[j] + (target - dev.cum_start[j]) / dev.rate[j]
        delay_ms = (cycles * period + (end_clock - clock)) * MS_PER_S + link.rtt_ms
        if link.has_noise:
            delay_ms = delay_ms * self._noise(host_sel)

        buffer_ms = rows(self._buffer_ms)
        rebuf_ms = ops.clip_min(delay_ms - buffer_ms, 0.0)
        buffer_ms = ops.clip_min(buffer_ms - delay_ms, 0.0) + self.video.chunk_duration_s * MS_PER_S
        excess_ms = buffer_ms - link.max_buffer_s * MS_PER_S
        sleep_ms = xp.ceil(ops.clip_min(excess_ms, 0.0) / link.drain_step_ms) * link.drain_step_ms
        buffer_ms = buffer_ms - sleep_ms

        # Sleep: advance the clock without downloading; find the interval where the sleep ends.
        sleeping = self._nonzero(sleep_ms > 0)
        if sleeping.shape[0]:
            s_rows = sleeping if sel is None else sel[sleeping]
            s_period = period[sleeping]
            _, woke = _wrap(ops, end_clock[sleeping] + sleep_ms[sleeping] / MS_PER_S, s_period)
            s_bucket = self._bucket(
                woke, r.time_bucket_scale[s_rows], r.time_bucket_first[s_rows], r.time_bucket_last[s_rows]
            )
            j[sleeping] = self._search(
                dev.end_s, dev.time_key, dev.time_bucket[s_bucket], trace[sleeping], first[sleeping],
                last[sleeping], woke, s_period,
            )  # fmt: skip
            end_clock[sleeping] = woke

        chunk = chunk + 1
        remaining = self.video.n_chunks - chunk
        ended = remaining <= 0
        if lockstep:  # one row, broadcast (read-only) instead of gathered
            next_sizes = _broadcast_rows(ops, self._next_bytes[int(stepped_chunks[0]) + 1], q.shape[0])
        else:
            next_sizes = self._next_bytes[chunk]

        if sel is None:
            self._interval, self._clock_s, self._buffer_ms, self.chunk_index = j, end_clock, buffer_ms, chunk
            self._host_chunk += 1
        else:
            self._interval[sel] = j
            self._clock_s[sel] = end_clock
            self._buffer_ms[sel] = buffer_ms
            self.chunk_index[sel] = chunk
            self._host_chunk[host_sel] += 1
        ended_host = ops.to_numpy(ended).astype(bool)
        if host_sel is None:
            self._ready &= ~ended_host
        else:
            self._ready[host_sel[ended_host]] = False

        values = (
            trace + 0,
            chunk - 1,
            q + 0,
            ops.to_int(size),
            delay_ms,
            sleep_ms,
            buffer_ms / MS_PER_S,
            rebuf_ms / MS_PER_S,
            ended,
            remaining,
            next_sizes,
        )
        prior = self._prior_dev + 0  # every session's (constant within a session: nothing to scatter)
        if sel is not None:
            values = tuple(self._scatter(sel, v) for v in values)
        return ChunkResult(ops.asarray(act, ops.bool), *values, prior_mbps=prior)

    def _noise(self, host_sel: npt.NDArray[np.int64] | None) -> Array:
        """This chunk's delay noise factor for the stepped sessions (draw ``NOISE_DRAW0 + chunk``)."""
        rows = slice(None) if host_sel is None else host_sel
        # Same numbers as episode_uniforms(key, episode, NOISE_DRAW0 + chunk), one multiply-add cheaper.
        with np.errstate(over="ignore"):
            state = self._noise_state0[rows] + self._host_chunk[rows].astype(np.uint64) * _GOLDEN
        u = _uniform_from_state(state)
        return self.ops.asarray(noise_factors(self.link, u), self.ops.float)

    def _bucket(self, value: Array, scale: Array, first: Array, last: Array) -> Array:
        """Global bucket of ``value`` in its row's index (see `_RowConstants`)."""
        ops = self.ops
        return ops.xp.minimum(ops.to_int(value * scale + first), last)

    def _as_levels(self, qualities: Any) -> Array:
        ops = self.ops
        if ops.name == "torch" and not isinstance(qualities, np.ndarray) and hasattr(qualities, "to"):
            q = qualities.to(device=ops.device, dtype=ops.int)  # type: ignore[union-attr]
        else:
            q = ops.asarray(qualities, ops.int)
        if tuple(q.shape) != (self.n_sessions,):
            raise ValueError(f"qualities must have shape ({self.n_sessions},), got {tuple(q.shape)}")
        return q

    def _search(
        self,
        values: Array,
        keys: Array,
        j0: Array,
        trace: Array,
        first: Array,
        last: Array,
        target: Array,
        scale: Array,
    ) -> Array:
        """First interval (global index) of each session's row whose ``values`` exceed ``target``.

        ``j0`` (from the bucket index) never lies past the answer; sessions step forward together (a
        shrinking set); those left after `_NEAR_STEPS` rounds use the global key search.
        """
        j = j0 + 0
        idx = self._nonzero(values[j] <= target)
        for _ in range(_NEAR_STEPS):
            if idx.shape[0] == 0:
                return j
            j[idx] += 1
            idx = idx[values[j[idx]] <= target[idx]]
        if idx.shape[0]:
            j[idx] = _locate(self.ops, keys, values, trace[idx], first[idx], last[idx], target[idx], scale[idx])
        return j

    def _nonzero(self, mask: Array) -> Array:
        if self.ops.name == "numpy":
            return np.flatnonzero(mask)
        return mask.nonzero().flatten()

    def _scatter(self, sel: Array, value: Array) -> Array:
        ops = self.ops
        shape = (self.n_sessions, *tuple(value.shape[1:]))
        if ops.name == "numpy":
            out = np.zeros(shape, dtype=value.dtype)
        else:
            out = ops.xp.zeros(shape, dtype=value.dtype, device=ops.device)  # type: ignore[union-attr]
        out[sel] = value
        return out
