"""Named random streams: the one place that derives a component's seed from a run's seed.

Every random consumer of a training run draws from its own stream, so that adding draws to one (say,
more minibatch shuffles) never shifts another (the sessions' networks). A stream's seed is
``seed * multiplier + offset`` (`stream_seed`), where the offset is what tells two uses of the stream
apart: the update a run resumes at, a worker's index, a reset's count. The multipliers are primes; their
values are part of every recorded result, so they never change. Several streams share a multiplier:
they are never drawn together from the same seed.
"""

from __future__ import annotations

from typing import Final

#: A rollout source's simulated sessions (trace choice, start points, delay noise), offset by the update.
SESSIONS: Final = 1_000_003
#: Minibatch shuffling in the PPO update, offset by the update.
SHUFFLE: Final = 7_919
#: torch's sampling of actions, offset by the update.
ACTIONS: Final = 104_729
#: A Ray rollout worker's sessions, from its source's sessions seed, offset by the worker's index.
WORKER_SESSIONS: Final = 7_919
#: A plasticity method's torch generator (offset 17).
METHOD_GENERATOR: Final = 1_000_003
#: Fresh weights drawn by a reset, offset by the number of resets so far.
FRESH_WEIGHTS: Final = 7_919
#: A plasticity method's batch sampler (offset 3).
METHOD_SAMPLER: Final = 104_729
#: A benchmark schedule's phase-length jitter: ``numpy.random.default_rng([seed, PHASE_JITTER])``.
PHASE_JITTER: Final = 7_919
#: A deployment timeline's sessions of one epoch (`abr_server.lab.adapt`):
#: ``numpy.random.default_rng([seed, TIMELINE_SESSIONS, epoch])``.
TIMELINE_SESSIONS: Final = 1_000_003
#: A deployment timeline's retraining round after an epoch (its PPO seed), offset by the epoch.
TIMELINE_ROUND: Final = 1_009


def stream_seed(multiplier: int, seed: int, offset: int = 0) -> int:
    """The seed of the stream with ``multiplier`` for a run seeded ``seed``, at ``offset``."""
    return seed * multiplier + offset
