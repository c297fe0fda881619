"""Named random streams: the one place that derives a component's seed from a run's seed.

Every random consumer of a training run draws from its own stream, so that adding draws to one (say,
more minibatch shuffles) never shifts another (the sessions' networks). A stream's seed is the run's
``seed`` times the stream's multiplier plus an offset (the update a run resumes at, a worker's index, a
reset's count), which keeps two streams of the same run apart for any offset below the multipliers'
spacing. The multipliers are primes; their values are part of every recorded result, so they never
change.
"""

from __future__ import annotations

from enum import IntEnum


class Stream(IntEnum):
    """The multiplier of each named stream."""

    #: The simulated sessions of a rollout source (trace choice, start points, delay noise).
    SESSIONS = 1_000_003
    #: Minibatch shuffling in the PPO update; also a Ray rollout worker's sessions and a method's fresh weights.
    SHUFFLE = 7_919
    #: torch's sampling of actions (and a plasticity method's own torch generator).
    ACTIONS = 104_729


def stream_seed(stream: Stream, seed: int, offset: int = 0) -> int:
    """The seed of ``stream`` for a run seeded ``seed``, at ``offset`` (e.g. the update it starts at)."""
    return seed * int(stream) + offset
