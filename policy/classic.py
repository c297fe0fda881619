"""Classic ABR rules that need no learning."""

from __future__ import annotations

from typing import Any

import numpy as np
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
