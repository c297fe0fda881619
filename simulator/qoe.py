"""Quality of experience (QoE): per-chunk scores and the standard session score.

Per chunk: ``QoE = u(R) - rebuffer_penalty * rebuffer_s - smooth_penalty * |u(R) - u(R_previous)|``
with the utility ``u`` chosen by the variant:

- ``lin``: ``u(R) = R`` in Mbit/s, rebuffer penalty 4.3 (the maximum ladder bitrate of the standard video).
- ``log``: ``u(R) = ln(R / R_min)``, rebuffer penalty 2.66.
- ``hd``: fixed utilities per ladder level (1, 2, 3, 12, 15, 20 for the standard ladder), penalty 8.

The standard score of a session is the mean per-chunk QoE over chunks 2..N (the first chunk, fetched
at a fixed quality before the policy sees anything, is excluded), averaged over sessions.

The formula is written once, in `QoEConfig.score` (from its three terms; being linear, it also scores a
sum over chunks from the sums of the terms, as MPC plans do) and `QoEConfig.level_qoe` (from ladder
levels); every planner, environment and report calls them.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from simulator.video import Video

FloatArray = npt.NDArray[np.float64]
#: A QoE term: a float, a numpy scalar or an array (any float dtype).
ArrayOrScalar = float | np.floating[Any] | npt.NDArray[np.floating[Any]]

QoEKind = Literal["lin", "log", "hd"]

#: Rebuffer penalty per variant (QoE units per second of stall).
REBUFFER_PENALTY: dict[str, float] = {"lin": 4.3, "log": 2.66, "hd": 8.0}
#: HD utilities of the standard six-level ladder, lowest first.
HD_UTILITIES: tuple[float, ...] = (1.0, 2.0, 3.0, 12.0, 15.0, 20.0)
#: The first chunk is excluded from the standard score.
SCORE_SKIP_CHUNKS = 1


class QoEConfig(BaseModel):
    """Which QoE variant to compute and its weights (defaults: the published values per variant)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: QoEKind = Field("lin", description="Utility variant: lin (Mbit/s), log (ln R/R_min) or hd.")
    rebuffer_penalty: float | None = Field(
        None, ge=0, description="QoE lost per second of rebuffering; None takes the variant's default."
    )
    smooth_penalty: float = Field(1.0, ge=0, description="Weight of |utility change| between chunks.")
    hd_utilities: tuple[float, ...] = Field(
        HD_UTILITIES, description="Utility of each ladder level for the 'hd' variant, lowest first."
    )

    @property
    def rebuffer_weight(self) -> float:
        """The effective rebuffer penalty."""
        return REBUFFER_PENALTY[self.kind] if self.rebuffer_penalty is None else self.rebuffer_penalty

    def utilities(self, video: Video) -> FloatArray:
        """Utility of each ladder level of ``video`` under this variant."""
        mbps = video.bitrates_mbps
        if self.kind == "lin":
            return mbps
        if self.kind == "log":
            return np.log(mbps / mbps[0])
        if len(self.hd_utilities) != video.n_levels:
            raise ValueError(
                f"qoe kind 'hd' has {len(self.hd_utilities)} utilities but the video has {video.n_levels} levels;"
                " pass hd_utilities for this ladder"
            )
        return np.asarray(self.hd_utilities, dtype=np.float64)

    def score(self, utility: ArrayOrScalar, rebuffer_s: ArrayOrScalar, utility_change: ArrayOrScalar) -> Any:
        """QoE from its terms: ``utility - rebuffer_weight * rebuffer_s - smooth_penalty * utility_change``.

        Operands broadcast (numpy scalars and arrays; Python floats for scalars) and keep their dtypes: no
        cast happens here, so each caller's float32/float64 arithmetic is what it passes in. Per chunk,
        ``utility_change`` is ``|u(R) - u(R_previous)|``; for a run of chunks the sums of the three terms
        give the run's total QoE.
        """
        return utility - self.rebuffer_weight * rebuffer_s - self.smooth_penalty * utility_change

    def level_qoe(self, utilities: FloatArray, quality: Any, previous_quality: Any, rebuffer_s: ArrayOrScalar) -> Any:
        """Per-chunk QoE of ladder levels ``quality`` after ``previous_quality`` (broadcast, no validation).

        ``utilities`` is `utilities` of the video (computed once by the caller); the levels are integers or
        integer arrays indexing it.
        """
        u = utilities[quality]
        return self.score(u, rebuffer_s, np.abs(u - utilities[previous_quality]))

    def chunk_qoe(
        self,
        video: Video,
        quality: npt.ArrayLike,
        previous_quality: npt.ArrayLike,
        rebuffer_s: npt.ArrayLike,
    ) -> FloatArray:
        """Per-chunk QoE for arrays of levels, previous levels and rebuffer times (broadcast)."""
        util = self.utilities(video)
        levels = np.asarray(quality, dtype=np.int64)
        previous = np.asarray(previous_quality, dtype=np.int64)
        for name, arr in (("quality", levels), ("previous_quality", previous)):
            if arr.size and (arr.min() < 0 or arr.max() >= video.n_levels):
                raise ValueError(f"{name} must be in [0, {video.n_levels}), got values in [{arr.min()}, {arr.max()}]")
        return np.asarray(
            self.level_qoe(util, levels, previous, np.asarray(rebuffer_s, dtype=np.float64)), dtype=np.float64
        )


def session_qoe(
    config: QoEConfig, video: Video, qualities: npt.ArrayLike, rebuffer_s: npt.ArrayLike, initial_quality: int
) -> FloatArray:
    """Per-chunk QoE of whole sessions: ``qualities``/``rebuffer_s`` are ``[..., n_chunks]``.

    The first chunk's "previous" level is ``initial_quality`` (so with the reference convention, where
    the first chunk is fetched at ``initial_quality``, it has no smoothness penalty).
    """
    levels = np.asarray(qualities, dtype=np.int64)
    return config.chunk_qoe(video, levels, previous_levels(levels, initial_quality), rebuffer_s)


def previous_levels(qualities: npt.ArrayLike, initial_quality: int) -> npt.NDArray[np.int64]:
    """The level before each chunk of sessions ``[..., n_chunks]``: ``initial_quality``, then the levels shifted."""
    levels = np.asarray(qualities, dtype=np.int64)
    return np.concatenate([np.full_like(levels[..., :1], initial_quality), levels[..., :-1]], axis=-1)


def session_score(per_chunk_qoe: npt.ArrayLike) -> FloatArray:
    """Standard score per session: mean per-chunk QoE over chunks 2..N (first chunk excluded)."""
    qoe = np.asarray(per_chunk_qoe, dtype=np.float64)
    if qoe.shape[-1] <= SCORE_SKIP_CHUNKS:
        raise ValueError(f"a session needs more than {SCORE_SKIP_CHUNKS} chunk(s) to be scored, got {qoe.shape[-1]}")
    return np.asarray(qoe[..., SCORE_SKIP_CHUNKS:].mean(axis=-1), dtype=np.float64)


def session_score_terms(
    config: QoEConfig, video: Video, qualities: npt.ArrayLike, rebuffer_s: npt.ArrayLike, initial_quality: int
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """The standard score's three terms per session: utility, rebuffer penalty, smoothness penalty.

    Each is the mean over chunks 2..N of ``u(R)``, ``rebuffer_weight * rebuffer_s`` and
    ``smooth_penalty * |u(R) - u(R_previous)|``, so that ``utility - rebuffer - smoothness`` is
    `session_score` (up to float rounding): where a score is won or lost.
    """
    levels = np.asarray(qualities, dtype=np.int64)
    util = config.utilities(video)
    u = util[levels]
    change = np.abs(u - util[previous_levels(levels, initial_quality)])
    rebuffer = config.rebuffer_weight * np.asarray(rebuffer_s, dtype=np.float64)
    skip = SCORE_SKIP_CHUNKS
    return (
        np.asarray(u[..., skip:].mean(axis=-1), dtype=np.float64),
        np.asarray(rebuffer[..., skip:].mean(axis=-1), dtype=np.float64),
        np.asarray(config.smooth_penalty * change[..., skip:].mean(axis=-1), dtype=np.float64),
    )
