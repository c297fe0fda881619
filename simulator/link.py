"""Network link and player-buffer parameters of the chunk-level simulator."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: Spread of the training prior's multiplicative noise (log scale): a measurement from another moment.
TRAINING_PRIOR_NOISE_SIGMA = 0.3
#: Share of training sessions without a prior, so a policy that reads one also plays without it.
TRAINING_PRIOR_MISSING_FRACTION = 0.2


class LinkConfig(BaseModel):
    """How chunks travel over a trace and fill the player buffer.

    The defaults are the reference (Pensieve) semantics used by published ABR results; evaluation
    uses them unchanged. `LinkConfig.training()` turns on delay noise and random start points.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    rtt_ms: float = Field(80.0, ge=0, description="Round-trip time added to every chunk download.")
    payload_fraction: float = Field(
        0.95, gt=0, le=1, description="Share of the link's bytes that carry chunk payload (packet overhead)."
    )
    max_buffer_s: float = Field(60.0, gt=0, description="Player buffer cap; above it the player sleeps.")
    drain_step_ms: float = Field(500.0, gt=0, description="The player sleeps in multiples of this.")
    delay_noise_low: float = Field(1.0, gt=0, description="Lower bound of the multiplicative delay noise.")
    delay_noise_high: float = Field(1.0, gt=0, description="Upper bound of the multiplicative delay noise.")
    start: Literal["first", "random"] = Field(
        "first",
        description="'first': start at the trace's first sample; 'random': at a uniformly random sample.",
    )
    trace_order: Literal["sequential", "random"] = Field(
        "sequential",
        description="How a session picks its next trace: in order (evaluation) or uniformly at random.",
    )
    prior_window_s: float = Field(
        30.0,
        gt=0,
        description="A session's throughput prior is the trace's mean payload throughput over this many seconds "
        "before the session starts (what the player measured just before: the previous video, the manifest).",
    )
    prior_noise_sigma: float = Field(
        0.0, ge=0, description="The prior is multiplied by exp(sigma * z), z standard normal, drawn per session."
    )
    prior_missing_fraction: float = Field(
        0.0, ge=0, le=1, description="Share of sessions, drawn at random, whose player knows no prior (0 = unknown)."
    )

    @model_validator(mode="after")
    def _check_noise(self) -> LinkConfig:
        if self.delay_noise_high < self.delay_noise_low:
            raise ValueError(
                f"delay_noise_high ({self.delay_noise_high}) must be >= delay_noise_low ({self.delay_noise_low})"
            )
        return self

    @property
    def has_noise(self) -> bool:
        """Whether delays are multiplied by random noise."""
        return self.delay_noise_low != 1.0 or self.delay_noise_high != 1.0

    @classmethod
    def evaluation(cls) -> LinkConfig:
        """Reference semantics: no noise, every trace played once from its first sample."""
        return cls()

    @classmethod
    def training(cls) -> LinkConfig:
        """Training semantics: delay noise uniform in [0.9, 1.1], random traces and start points, and a
        throughput prior that is noisy (sigma 0.3) and missing for a fifth of the sessions."""
        return cls(
            delay_noise_low=0.9,
            delay_noise_high=1.1,
            start="random",
            trace_order="random",
            prior_noise_sigma=TRAINING_PRIOR_NOISE_SIGMA,
            prior_missing_fraction=TRAINING_PRIOR_MISSING_FRACTION,
        )
