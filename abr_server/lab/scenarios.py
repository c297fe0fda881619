"""Network-shift scenarios for the online-retraining experiments (tests and benchmarks share them).

A scenario is three trace generator specs (`traces.generate.generate_from_spec`): the sessions before
the shift, the sessions after it that a retraining round learns from, and unseen test sessions of the
new network, played before and after the round.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NetworkShift:
    """Trace specs of one network shift (one player per trace, through a live server)."""

    before: str
    """Sessions on the old network."""
    after_train: str
    """Sessions on the new network: the telemetry a retraining round rebuilds its traces from."""
    after_test: str
    """Unseen sessions on the new network, scored with the frozen and with the retrained model."""


#: A 3G-like network, then a much faster one, where the shipped model is too timid.
SHIFT_3G_TO_FAST = NetworkShift(
    before="markov:n=4,seed=21,low_mbps=0.3,high_mbps=2",
    after_train="markov:n=24,seed=22,low_mbps=4,high_mbps=9",
    after_test="markov:n=8,seed=23,low_mbps=4,high_mbps=9",
)
