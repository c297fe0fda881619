"""Network link and player-buffer parameters of the chunk-level simulator."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


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
        """Training semantics: delay noise uniform in [0.9, 1.1], random traces and start points."""
        return cls(delay_noise_low=0.9, delay_noise_high=1.1, start="random", trace_order="random")
