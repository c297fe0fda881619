"""Rollout sources for PPO: where the learner's transitions come from.

A source plays the current policy in simulated sessions and hands the learner ``[T, N]`` buffers
(`RolloutBatch`). `SessionRollouts` steps the numpy vector environment in this process; `RayRollouts`
splits the sessions over Ray actors, each a `SessionRollouts` on a shard of the traces, and concatenates
their buffers along the session axis. The PPO loop (`policy.learning.ppo.train`) never knows which one
runs. Sessions carry on from one rollout to the next.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np
import torch

from abr_common import seeding
from abr_common.seeding import stream_seed
from abr_common.units import BITS_PER_BYTE, BITS_PER_MBIT, BYTES_PER_MB
from policy.base import Policy, make_policy
from policy.learning.network import ROW_FUTURE, ActorCritic
from simulator.batch import BatchSimulator
from simulator.envs import ABRVectorEnv
from simulator.link import LinkConfig
from simulator.observation import ObservationSpec
from simulator.qoe import QoEConfig, QoEKind
from simulator.video import Video
from traces.trace import Trace


@dataclass(frozen=True)
class RolloutBatch:
    """One rollout: ``[T, N]`` buffers, the bootstrap value and done flags after it, and QoE sums."""

    obs: torch.Tensor
    actions: torch.Tensor
    logprobs: torch.Tensor
    rewards: torch.Tensor
    dones: torch.Tensor
    values: torch.Tensor
    next_value: torch.Tensor
    next_done: torch.Tensor
    qoe_sum: float
    bitrate_kbps_sum: float
    count: int
    #: ``[T, N]`` levels the expert would have fetched from the same states (kickstarting rollouts only).
    expert_actions: torch.Tensor | None = None

    #: The tensor fields and the axis along which two batches' sessions are joined.
    SESSION_AXIS: ClassVar[dict[str, int]] = {
        "obs": 1, "actions": 1, "logprobs": 1, "rewards": 1, "dones": 1, "values": 1, "next_value": 0, "next_done": 0,
    }  # fmt: skip

    @staticmethod
    def concat(parts: Sequence[RolloutBatch], device: torch.device) -> RolloutBatch:
        """Batches of the same length joined along the session axis, on ``device``."""
        joined = {
            name: torch.cat([getattr(p, name) for p in parts], dim=axis).to(device)
            for name, axis in RolloutBatch.SESSION_AXIS.items()
        }
        labelled = [p.expert_actions for p in parts if p.expert_actions is not None]
        if labelled and len(labelled) != len(parts):
            raise ValueError("either every joined rollout carries expert actions or none does")
        expert = torch.cat(labelled, dim=1).to(device) if labelled else None
        return RolloutBatch(**joined, qoe_sum=sum(p.qoe_sum for p in parts),
                            bitrate_kbps_sum=sum(p.bitrate_kbps_sum for p in parts),
                            count=sum(p.count for p in parts), expert_actions=expert)  # fmt: skip


class RolloutSource(Protocol):
    """What the PPO loop draws its transitions from."""

    def collect(self, model: ActorCritic, update: int, *, expert: bool = False) -> RolloutBatch:
        """One rollout of ``model``'s sampled actions (``update``: the learner's update count).

        With ``expert``, every state is also labelled with the expert policy's level (`RolloutBatch.expert_actions`).
        """
        ...

    def close(self) -> None:
        """Release what the source holds (actors, simulators)."""
        ...


def with_future_row(obs: np.ndarray, sim: BatchSimulator, video: Video) -> np.ndarray:
    """``obs [B, 6, W]`` plus row `ROW_FUTURE`: each session's next W chunk durations of network throughput.

    In the throughput row's unit (MB/s), one column per chunk duration from the session's clock. Only a
    ``critic_future`` critic reads it; the simulator knows it, a player never does.
    """
    _, rows, width = obs.shape
    if rows != ROW_FUTURE:
        raise ValueError(f"expected {ROW_FUTURE}-row observations, got {rows}")
    future_mbps = sim.future_throughput_mbps(width, video.chunk_duration_s)
    row = (future_mbps * BITS_PER_MBIT / BITS_PER_BYTE / BYTES_PER_MB).astype(np.float32)
    return np.concatenate([obs, row[:, None, :]], axis=1)


def make_expert(spec: str, n_sessions: int, video: Video) -> Policy:
    """The kickstarting expert ``spec`` (a causal policy), begun for ``n_sessions`` sessions of ``video``."""
    expert = make_policy(spec)
    if expert.offline:
        raise ValueError(f"expert {spec!r} plans offline (it sees the future): kickstarting needs a causal policy")
    expert.begin(n_sessions, video)
    return expert


class SessionRollouts:
    """``num_envs`` simulated sessions in this process (the numpy vector environment), buffers on ``device``.

    The sessions' random streams are seeded with ``sessions_seed`` (for a run, the `seeding.SESSIONS`
    stream at the update it starts from, so a resumed run continues exactly). Actions are sampled from
    torch's global generator, which the caller seeds. With an ``expert`` policy spec, the expert follows
    every session (it sees each observation once, as if it were playing, and restarts with the session)
    so that `collect(expert=True)` can label the states the actor visits with the expert's levels.
    """

    def __init__(
        self, num_envs: int, num_steps: int, traces: Sequence[Trace], video: Video, *, sessions_seed: int,
        reward_scale: float, qoe: QoEKind, critic_future: bool, link: LinkConfig | None = None,
        spec: ObservationSpec | None = None, device: torch.device | None = None, expert: str | None = None,
    ) -> None:  # fmt: skip
        self.device = device or torch.device("cpu")
        self.video = video
        self.num_steps = num_steps
        self.reward_scale = reward_scale
        self.critic_future = critic_future
        self.expert = make_expert(expert, num_envs, video) if expert is not None else None
        # Sessions draw a throughput prior where the state reads it (the env's default) or the expert does.
        prior = True if self.expert is not None and self.expert.reads_prior else None
        self.envs = ABRVectorEnv(num_envs, traces, video, link=link or LinkConfig.training(), qoe=QoEConfig(kind=qoe),
                                 spec=spec or ObservationSpec(), prior=prior)  # fmt: skip
        obs, _ = self.envs.reset(seed=sessions_seed)
        self.next_obs = self._observed(obs)
        self.next_done = torch.zeros(num_envs, device=self.device)
        t, n, obs_shape = num_steps, num_envs, tuple(self.next_obs.shape[1:])
        self.obs = torch.zeros((t, n, *obs_shape), device=self.device)
        self.actions = torch.zeros((t, n), dtype=torch.long, device=self.device)
        self.logprobs = torch.zeros((t, n), device=self.device)
        self.rewards = torch.zeros((t, n), device=self.device)
        self.dones = torch.zeros((t, n), device=self.device)
        self.values = torch.zeros((t, n), device=self.device)
        self.ladder_kbps = np.asarray(video.bitrates_kbps, dtype=np.float64)
        self.expert_actions = torch.zeros((t, n), dtype=torch.long, device=self.device)

    def _observed(self, obs: np.ndarray) -> torch.Tensor:
        if self.critic_future:
            obs = with_future_row(obs, self.envs.sim, self.video)
        return torch.as_tensor(obs, device=self.device)

    def collect(self, model: ActorCritic, update: int, *, expert: bool = False) -> RolloutBatch:
        """Play ``num_steps`` steps in every session; the buffers are reused by the next call."""
        del update  # the sessions carry on; actions come from the generator the caller seeded
        if expert and self.expert is None:
            raise ValueError("collect(expert=True) needs a source built with an expert policy")
        qoe_sum, bitrate_kbps_sum = 0.0, 0.0
        for step in range(self.num_steps):
            self.obs[step] = self.next_obs
            self.dones[step] = self.next_done
            if expert:
                assert self.expert is not None
                levels = self.expert.select(self.envs.observation())
                self.expert_actions[step] = torch.as_tensor(levels, device=self.device)
            with torch.no_grad():
                action, logprob, _, value = model.get_action_and_value(self.next_obs)
            self.values[step] = value
            self.actions[step] = action
            self.logprobs[step] = logprob
            next_obs, reward, terminated, truncated, _ = self.envs.step(action.cpu().numpy())
            if expert:
                assert self.expert is not None
                self.expert.restart(np.logical_or(terminated, truncated))
            self.rewards[step] = torch.as_tensor(reward * self.reward_scale, dtype=torch.float32, device=self.device)
            self.next_obs = self._observed(next_obs)
            self.next_done = torch.as_tensor(np.logical_or(terminated, truncated), dtype=torch.float32,
                                             device=self.device)  # fmt: skip
            qoe_sum += float(reward.sum())
            bitrate_kbps_sum += float(self.ladder_kbps[action.cpu().numpy()].sum())
        with torch.no_grad():
            next_value = model.get_value(self.next_obs)
        return RolloutBatch(self.obs, self.actions, self.logprobs, self.rewards, self.dones, self.values, next_value,
                            self.next_done, qoe_sum, bitrate_kbps_sum, self.num_steps * self.envs.num_envs,
                            self.expert_actions if expert else None)  # fmt: skip

    def close(self) -> None:
        """Nothing to release (the simulator is garbage-collected)."""


class RolloutWorker:
    """A Ray actor: `SessionRollouts` over a shard of the traces with a CPU copy of the policy.

    Each call to `collect` loads the learner's weights (from the object store), seeds torch's sampling
    with the `seeding.ACTIONS` stream of its own seed at ``update`` and plays one rollout.
    """

    def __init__(self, network_json: str, traces: Sequence[Trace], video: Video, *, num_envs: int, num_steps: int,
                 seed: int, reward_scale: float, qoe: QoEKind, link: LinkConfig | None,
                 spec: ObservationSpec, expert: str | None = None) -> None:  # fmt: skip
        from policy.learning.config import NetworkConfig

        torch.set_num_threads(1)
        network = NetworkConfig.model_validate_json(network_json)
        self.network_json, self.spec, self.video = network_json, spec, video
        self.seed = seed
        self.sessions = SessionRollouts(num_envs, num_steps, traces, video, sessions_seed=seed,
                                        reward_scale=reward_scale, qoe=qoe, critic_future=network.critic_future,
                                        link=link, spec=spec, expert=expert)  # fmt: skip
        self.model = ActorCritic(spec.width(video), video.n_levels, network)

    def collect(
        self, weights: dict[str, Any], update: int, expert: bool = False, network_json: str | None = None
    ) -> RolloutBatch:
        """One rollout with ``weights`` (of the network ``network_json``, if it changed: an injected head)."""
        if network_json is not None and network_json != self.network_json:
            from policy.learning.config import NetworkConfig

            network = NetworkConfig.model_validate_json(network_json)
            self.model = ActorCritic(self.spec.width(self.video), self.video.n_levels, network)
            self.network_json = network_json
        self.model.load_state_dict(weights)
        torch.manual_seed(stream_seed(seeding.ACTIONS, self.seed, update))
        return self.sessions.collect(self.model, update, expert=expert)


class RayRollouts:
    """``num_envs`` sessions split over ``workers`` Ray actors (traces sharded round-robin among them).

    The learner broadcasts its weights through the object store every rollout. Worker ``k``'s sessions
    are seeded from ``sessions_seed`` and ``k`` (`seeding.WORKER_SESSIONS`): statistically equivalent to
    `SessionRollouts`, not identical. The caller connects to Ray first (`policy.cluster.connect`).
    """

    def __init__(
        self, num_envs: int, num_steps: int, traces: Sequence[Trace], video: Video, *, workers: int,
        sessions_seed: int, reward_scale: float, qoe: QoEKind, network_json: str, link: LinkConfig | None = None,
        spec: ObservationSpec | None = None, device: torch.device | None = None, expert: str | None = None,
    ) -> None:  # fmt: skip
        from policy.cluster import ray_module

        if workers < 1 or workers > num_envs:
            raise ValueError(f"workers must be in [1, num_envs={num_envs}], got {workers}")
        if len(traces) < workers:
            raise ValueError(f"{len(traces)} traces cannot be sharded over {workers} workers")
        self.ray = ray_module()
        self.device = device or torch.device("cpu")
        spec = spec or ObservationSpec()
        sizes = [num_envs // workers + (1 if k < num_envs % workers else 0) for k in range(workers)]
        actor = self.ray.remote(num_cpus=1)(RolloutWorker)
        video_ref = self.ray.put(video)
        self.pool = [
            actor.remote(network_json, list(traces[k::workers]), video_ref, num_envs=sizes[k], num_steps=num_steps,
                         seed=stream_seed(seeding.WORKER_SESSIONS, sessions_seed, k), reward_scale=reward_scale,
                         qoe=qoe, link=link, spec=spec, expert=expert)
            for k in range(workers)
        ]  # fmt: skip

    def collect(self, model: ActorCritic, update: int, *, expert: bool = False) -> RolloutBatch:
        """One rollout from every worker with ``model``'s current weights, joined along the session axis."""
        weights = self.ray.put({k: v.detach().cpu() for k, v in model.state_dict().items()})
        network = model.config.model_dump_json()
        parts = self.ray.get([w.collect.remote(weights, update, expert, network) for w in self.pool])
        return RolloutBatch.concat(parts, self.device)

    def close(self) -> None:
        """Stop the actors."""
        for worker in self.pool:
            self.ray.kill(worker)
        self.pool = []
