"""Model predictive control: MPC and robustMPC (Yin et al., SIGCOMM 2015), vectorised.

Before each chunk, for every combination of levels for the next ``horizon`` chunks (6^5 = 7,776 for
the standard ladder), the buffer is simulated with the predicted throughput: download time = chunk
size / prediction; the buffer runs dry -> rebuffer; each chunk adds its duration. Each combination is
scored with the configured QoE (default QoE_lin: sum of bitrates in Mbit/s - 4.3 x rebuffer seconds -
sum of |bitrate changes| starting from the current level) and the first level of the best one is
fetched. The prediction is the harmonic mean of the last 5 measured chunk throughputs; robustMPC
divides it by 1 + the largest relative prediction error of the last 5 chunks, the error of a chunk
being |previous harmonic-mean prediction - measured| / measured.

Differences from the published implementation, on purpose: the look-ahead uses the sizes of the
chunks that actually come next (the published code reads one chunk too far ahead); ties between
combinations are broken as it does (the last best combination in enumeration order).

Vectorised: combinations share prefixes, so the buffer is simulated on the tree of prefixes (one
level deeper per look-ahead step, about 1.2 x 7,776 nodes) for all sessions at once, and the
QoE terms that do not depend on the network (utility sums, summed utility changes per current level)
are precomputed per horizon.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from pydantic import Field

from abr_common.units import BITS_PER_BYTE, BITS_PER_MBIT
from policy.base import IntArray, Policy, PolicyConfig, register
from policy.classic import harmonic_mean_recent
from simulator.observation import Observation
from simulator.qoe import QoEConfig, QoEKind
from simulator.video import Video

FloatArray = npt.NDArray[np.float64]

#: Relative score difference below which two plans tie.
_TIE_TOLERANCE = 1e-9
#: Sessions planned together; bounds memory to about sessions x 7,776 x 8 bytes per array.
_PLAN_BATCH_SESSIONS = 256


class MPCConfig(PolicyConfig):
    """Parameters shared by `mpc` and `robustmpc`."""

    horizon: int = Field(5, ge=1, le=8, description="Chunks looked ahead (fewer near the end of the video).")
    window: int = Field(5, ge=1, le=64, description="Past chunks in the harmonic-mean prediction.")
    error_window: int = Field(5, ge=1, le=64, description="Past prediction errors considered by robustMPC.")
    qoe: QoEKind = Field("lin", description="QoE variant the plan maximises.")
    prior: bool = Field(
        False,
        description="Fill the prediction window's slots older than the session's first chunk with the "
        "throughput the player knew before it (its prior), where it has one.",
    )


class _Plans:
    """Network-independent parts of the objective for each horizon length."""

    def __init__(self, video: Video, qoe: QoEConfig, horizon: int) -> None:
        util = qoe.utilities(video)
        n = video.n_levels
        self.utility_sum: dict[int, FloatArray] = {}
        self.utility_change: dict[int, FloatArray] = {}  # [current level, combination]
        for h in range(1, horizon + 1):
            levels = np.stack(np.unravel_index(np.arange(n**h), (n,) * h), axis=1)  # product order
            values = util[levels]
            self.utility_sum[h] = values.sum(axis=1)
            inner = np.abs(np.diff(values, axis=1)).sum(axis=1)
            self.utility_change[h] = np.abs(values[None, :, 0] - util[:, None]) + inner[None, :]


class _MPCBase(Policy):
    """Shared planner; subclasses choose the throughput prediction."""

    config: MPCConfig
    config_type = MPCConfig
    robust = False
    stateful = True  # past prediction errors per session

    @property
    def reads_prior(self) -> bool:
        return self.config.prior

    def begin(self, n_sessions: int, video: Video) -> None:
        super().begin(n_sessions, video)
        self._qoe = QoEConfig(kind=self.config.qoe)
        self._plans = _Plans(video, self._qoe, self.config.horizon)
        self._last_prediction = np.full(n_sessions, np.nan)
        self._errors = np.zeros((n_sessions, self.config.error_window))
        self._n_errors = np.zeros(n_sessions, dtype=np.int64)

    def restart(self, rows: npt.NDArray[np.bool_]) -> None:
        self._last_prediction[rows] = np.nan
        self._errors[rows] = 0.0
        self._n_errors[rows] = 0

    def predicted_mbps(self, obs: Observation) -> FloatArray:
        """Throughput prediction per session, updating the prediction-error history (once per chunk)."""
        harmonic = harmonic_mean_recent(obs, self.config.window, prior=self.config.prior)
        if not self.robust:
            return harmonic
        measured = obs.throughput_mbps_history()[:, -1]
        with np.errstate(divide="ignore", invalid="ignore"):
            error = np.abs(self._last_prediction - measured) / measured
        # No prediction yet (first decision): error 0, as in the reference.
        error = np.where(np.isfinite(error), error, 0.0)
        self._errors = np.roll(self._errors, -1, axis=1)
        self._errors[:, -1] = error
        self._n_errors = np.minimum(self._n_errors + 1, self.config.error_window)
        recent = np.arange(self.config.error_window)[None, :] >= (self.config.error_window - self._n_errors)[:, None]
        max_error = np.where(recent, self._errors, 0.0).max(axis=1)
        self._last_prediction = harmonic
        return harmonic / (1.0 + max_error)

    def select(self, obs: Observation) -> IntArray:
        video = self._video()
        prediction = self.predicted_mbps(obs)
        levels = np.zeros(obs.n_sessions, dtype=np.int64)
        horizon = np.minimum(self.config.horizon, video.n_chunks - obs.chunk_index)
        for h in np.unique(horizon):
            if h < 1:
                continue  # past the last chunk: nothing to plan
            rows = np.flatnonzero(horizon == h)
            for start in range(0, rows.size, _PLAN_BATCH_SESSIONS):
                part = rows[start : start + _PLAN_BATCH_SESSIONS]
                levels[part] = self._plan(int(h), obs.buffer_s[part], prediction[part], obs.chunk_index[part],
                                          obs.last_quality[part])  # fmt: skip
        return levels

    def _plan(
        self, h: int, buffer_s: FloatArray, mbps: FloatArray, next_index: IntArray, current: IntArray
    ) -> IntArray:
        video = self._video()
        n = video.n_levels
        # Seconds to fetch chunk next_index + p at each level: [sessions, h, levels].
        chunks = next_index[:, None] + np.arange(h)[None, :]
        sizes_bits = video.chunk_bytes[:, chunks].transpose(1, 2, 0) * BITS_PER_BYTE
        with np.errstate(divide="ignore"):
            seconds = sizes_bits / (np.maximum(mbps, 0.0)[:, None, None] * BITS_PER_MBIT)
        buffer = buffer_s[:, None]
        rebuffer = np.zeros_like(buffer)
        for p in range(h):
            left = buffer[:, :, None] - seconds[:, p, None, :]  # [sessions, prefixes, levels]
            rebuffer = (rebuffer[:, :, None] + np.maximum(-left, 0.0)).reshape(left.shape[0], -1)
            buffer = (np.maximum(left, 0.0) + video.chunk_duration_s).reshape(left.shape[0], -1)
        # The QoE of each combination from its summed terms (the formula is linear in them).
        score = self._qoe.score(self._plans.utility_sum[h][None, :], rebuffer, self._plans.utility_change[h][current])
        # The last best combination in enumeration order (the reference keeps ties' later combination).
        # Scores equal up to rounding count as ties: summation order must not decide the level.
        top = score.max(axis=1, keepdims=True)
        tied = score >= top - _TIE_TOLERANCE * np.maximum(1.0, np.abs(top))
        best = score.shape[1] - 1 - np.argmax(tied[:, ::-1], axis=1)
        return (best // n ** (h - 1)).astype(np.int64)


@register("mpc")
class MPCPolicy(_MPCBase):
    """MPC with the plain harmonic-mean throughput prediction."""


@register("robustmpc")
class RobustMPCPolicy(_MPCBase):
    """robustMPC: the harmonic-mean prediction divided by 1 + the largest recent relative error."""

    robust = True
