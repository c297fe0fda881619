"""Classic ABR rules that need no learning."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import Field, model_validator

from policy.base import IntArray, Policy, PolicyConfig, PolicySpecError, register
from simulator.observation import Observation
from simulator.video import Video


class FixedConfig(PolicyConfig):
    """Always the same level."""

    level: int = Field(0, ge=0, description="Ladder level to fetch every chunk at (0 = lowest).")


@register("fixed")
class FixedPolicy(Policy):
    """Always fetches ``level`` (``fixed:N``); a floor/ceiling reference in tables."""

    config: FixedConfig
    config_type = FixedConfig

    @property
    def label(self) -> str:
        return f"fixed:{self.config.level}"

    @classmethod
    def parse_shorthand(cls, text: str) -> dict[str, Any]:
        try:
            return {"level": int(text)}
        except ValueError:
            raise PolicySpecError(f"fixed:N needs an integer level, got {text!r}") from None

    def begin(self, n_sessions: int, video: Video) -> None:
        if self.config.level >= video.n_levels:
            raise PolicySpecError(f"fixed:{self.config.level}: the video has only {video.n_levels} levels")
        super().begin(n_sessions, video)

    def select(self, obs: Observation) -> IntArray:
        self._video()
        return np.full(obs.n_sessions, self.config.level, dtype=np.int64)


class BBAConfig(PolicyConfig):
    """Buffer-based rule (Huang et al., SIGCOMM 2014), in the reference's linear-map form."""

    reservoir_s: float = Field(5.0, ge=0, description="Below this buffer, fetch the lowest level.")
    cushion_s: float = Field(10.0, gt=0, description="Above reservoir + cushion, fetch the highest level.")

    @model_validator(mode="after")
    def _finite(self) -> BBAConfig:
        if not np.isfinite(self.reservoir_s + self.cushion_s):
            raise ValueError("reservoir_s and cushion_s must be finite")
        return self


@register("bba")
class BBAPolicy(Policy):
    """Buffer-based: level 0 below the reservoir, the top level at or above reservoir + cushion, else
    ``int((n_levels - 1) * (buffer - reservoir) / cushion)``, decided on the buffer after the last chunk."""

    config: BBAConfig
    config_type = BBAConfig

    def select(self, obs: Observation) -> IntArray:
        top = self._video().n_levels - 1
        cfg = self.config
        buffer_s = obs.buffer_s
        linear = (top * (buffer_s - cfg.reservoir_s) / cfg.cushion_s).astype(np.int64)
        levels = np.where(
            buffer_s < cfg.reservoir_s, 0, np.where(buffer_s >= cfg.reservoir_s + cfg.cushion_s, top, linear)
        )
        return np.clip(levels, 0, top).astype(np.int64)


def harmonic_mean_recent(obs: Observation, window: int, *, prior: bool = False) -> npt.NDArray[np.float64]:
    """Harmonic mean of the last ``window`` measured chunk throughputs (Mbit/s) per session; 0 if none.

    With ``prior``, the window's slots older than the session's first chunk hold its throughput prior
    (`Observation.prior_mbps`) where it has one.
    """
    tput = obs.throughput_mbps_history()[:, -window:]
    n_measured = np.minimum(obs.n_history, window)
    valid = np.arange(tput.shape[1])[None, :] >= (tput.shape[1] - n_measured)[:, None]
    valid &= tput > 0
    count = valid.sum(axis=1).astype(np.float64)
    with np.errstate(divide="ignore"):
        inverse_sum = np.where(valid, 1.0 / np.where(valid, tput, 1.0), 0.0).sum(axis=1)
    if prior:
        has_prior = obs.prior_mbps > 0
        n_prior = np.where(has_prior, window - n_measured, 0)
        count = count + n_prior
        inverse_sum = inverse_sum + n_prior / np.where(has_prior, obs.prior_mbps, 1.0)
    return np.where(count > 0, count / np.where(inverse_sum > 0, inverse_sum, 1.0), 0.0)


class RateBasedConfig(PolicyConfig):
    """Rate-based rule: the highest bitrate not above a throughput estimate."""

    window: int = Field(5, ge=1, le=64, description="Past chunks in the harmonic-mean throughput estimate.")
    safety_factor: float = Field(1.0, gt=0, description="The estimate is multiplied by this before comparing.")


@register("rb")
class RateBasedPolicy(Policy):
    """Harmonic mean of the last ``window`` measured chunk throughputs (chunk bytes / delay including RTT);
    picks the highest bitrate not above it (level 0 when none is)."""

    config: RateBasedConfig
    config_type = RateBasedConfig

    def select(self, obs: Observation) -> IntArray:
        video = self._video()
        estimate = harmonic_mean_recent(obs, self.config.window) * self.config.safety_factor
        fits = video.bitrates_mbps[None, :] <= estimate[:, None]
        # Highest fitting level: count of fitting levels minus one (the ladder is increasing).
        return np.maximum(fits.sum(axis=1) - 1, 0).astype(np.int64)


class BolaConfig(PolicyConfig):
    """BOLA-BASIC with log utilities, parameterised as in dash.js's BolaRule."""

    minimum_buffer_s: float = Field(10.0, gt=0, description="Buffer at which the lowest level starts to lose.")
    buffer_target_s: float = Field(30.0, gt=0, description="Buffer at which the top level is chosen.")
    buffer_per_level_s: float = Field(
        2.0, ge=0, description="The target is at least minimum + this per level (dash.js's rule)."
    )

    @model_validator(mode="after")
    def _target_above_minimum(self) -> BolaConfig:
        if self.buffer_target_s <= self.minimum_buffer_s:
            raise ValueError("buffer_target_s must exceed minimum_buffer_s")
        return self


@register("bola")
class BolaPolicy(Policy):
    """BOLA-BASIC (Spiteri et al., INFOCOM 2016) as dash.js implements it.

    Utilities ``u_m = ln(R_m / R_0) + 1``; the buffer target ``Q = max(buffer_target_s, minimum_buffer_s
    + buffer_per_level_s * n_levels)``; ``gp = (u_top - 1) / (Q / minimum_buffer_s - 1)`` and
    ``V = minimum_buffer_s / gp``; the level maximises ``(V * (u_m + gp) - buffer_s) / R_m``. Decided on
    the buffer after the last chunk, with no throughput input (dash.js adds throughput-based start-up
    and abandonment rules that have no counterpart in a chunk-level simulator).
    """

    config: BolaConfig
    config_type = BolaConfig

    def select(self, obs: Observation) -> IntArray:
        video = self._video()
        cfg = self.config
        bitrates = video.bitrates_mbps
        utilities = np.log(bitrates / bitrates[0]) + 1.0
        target_s = max(cfg.buffer_target_s, cfg.minimum_buffer_s + cfg.buffer_per_level_s * video.n_levels)
        if video.n_levels == 1:
            return np.zeros(obs.n_sessions, dtype=np.int64)
        gp = (utilities[-1] - 1.0) / (target_s / cfg.minimum_buffer_s - 1.0)
        v = cfg.minimum_buffer_s / gp
        scores = (v * (utilities[None, :] + gp) - obs.buffer_s[:, None]) / bitrates[None, :]
        return np.argmax(scores, axis=1).astype(np.int64)
