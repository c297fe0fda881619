"""Policies as fleet deciders: `simulator.fleet` players deciding with a policy in process.

Players that decide at the same instant are batched into one call for stateless policies (classic
rules, learned models); stateful ones (MPC) get one instance per player.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import simpy

from policy.base import Policy, make_policy
from simulator.fleet import (
    DeciderFactory,
    FleetConfig,
    FleetResult,
    PlayerLog,
    simulate_fleet,
    stack_observations,
)
from simulator.observation import Observation, ObservationSpec
from simulator.video import Video
from traces.trace import Trace


class PolicyDecider:
    """In-process policy decisions for a fleet (a `simulator.fleet.Decider`).

    Stateless policies decide once per instant for every player asking then; stateful ones per player.
    """

    def __init__(self, env: simpy.Environment, spec: str, video: Video) -> None:
        self.env, self.spec, self.video = env, spec, video
        self.shared = make_policy(spec)
        if self.shared.offline:
            raise ValueError(f"policy {spec!r} is offline (it needs the whole trace); a fleet needs live policies")
        self.shared.begin(1, video)
        self.per_player: dict[int, Policy] = {}
        self._pending: list[tuple[int, Observation, simpy.Event]] = []
        self.calls = 0
        self.decisions = 0

    def decide(self, player: int, obs: Observation, log: PlayerLog) -> simpy.Event:
        """An event whose value is the level ``player`` fetches next (``log``: its session so far)."""
        event = self.env.event()
        if self.shared.stateful:
            policy = self.per_player.get(player)
            if policy is None:
                policy = self.per_player[player] = make_policy(self.spec)
                policy.begin(1, self.video)
            event.succeed(int(policy.select(obs)[0]))
            self.calls += 1
            self.decisions += 1
            return event
        if not self._pending:  # decide once every player deciding at this instant has asked
            self.env.timeout(0).callbacks.append(lambda _e: self._flush())
        self._pending.append((player, obs, event))
        return event

    def finish(self, player: int, log: PlayerLog) -> None:
        """The player left (after its last chunk, or earlier)."""
        self.per_player.pop(player, None)

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        levels = self.shared.select(stack_observations([obs for _, obs, _ in pending]))
        self.calls += 1
        self.decisions += len(pending)
        for (_, _, event), level in zip(pending, levels, strict=True):
            event.succeed(int(np.clip(level, 0, self.video.n_levels - 1)))


def policy_deciders(spec: str, video: Video) -> DeciderFactory:
    """The factory `simulator.fleet.simulate_fleet` takes, deciding with the policy ``spec`` in process.

    The policy is built when the simulation starts (an offline spec raises ValueError then).
    """

    def make(env: simpy.Environment) -> PolicyDecider:
        return PolicyDecider(env, spec, video)

    return make


def simulate_policy_fleet(
    traces: Sequence[Trace],
    video: Video,
    policy: str,
    config: FleetConfig | None = None,
    *,
    spec: ObservationSpec | None = None,
    on_progress: Callable[[float], None] | None = None,
    realtime_factor: float | None = None,
) -> FleetResult:
    """`simulator.fleet.simulate_fleet` with every player deciding by the policy spec ``policy``."""
    return simulate_fleet(traces, video, policy_deciders(policy, video), config, policy=policy, spec=spec,
                          on_progress=on_progress, realtime_factor=realtime_factor)  # fmt: skip
