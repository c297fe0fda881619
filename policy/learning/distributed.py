"""PPO rollouts on Ray actors."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from policy.cluster import ray_module
from policy.learning.network import ActorCritic
from policy.learning.ppo import PlasticityHook, PPOConfig, TrainState, entropy_coef
from simulator.link import LinkConfig
from simulator.observation import ObservationSpec
from simulator.video import Video
from traces.trace import Trace


class RolloutWorker:
    """A Ray actor: a vectorised simulator over a shard of the trace pool and a CPU copy of the policy.

    Each call to `collect` loads the learner's weights (from the object store) and plays ``num_steps``
    steps in its ``num_envs`` sessions, which carry on from one rollout to the next.
    """

    def __init__(self, config_json: str, traces: Sequence[Trace], video: Video, link: LinkConfig | None,
                 spec: ObservationSpec, num_envs: int, worker: int, start_update: int) -> None:  # fmt: skip
        import torch

        from policy.learning.ppo import PPOConfig
        from simulator.envs import ABRVectorEnv
        from simulator.qoe import QoEConfig

        torch.set_num_threads(1)
        self.config = PPOConfig.model_validate_json(config_json)
        self.worker = worker
        self.envs = ABRVectorEnv(num_envs, traces, video, link=link or LinkConfig.training(),
                                 qoe=QoEConfig(kind=self.config.qoe), spec=spec)  # fmt: skip
        seed = (self.config.seed * 1_000_003 + start_update) * 7_919 + worker
        self.video = video
        obs, _ = self.envs.reset(seed=seed)
        self.next_obs = self._observed(obs)
        self.next_done = torch.zeros(num_envs)
        self.model = ActorCritic(spec.width(video), video.n_levels, self.config.network)
        self.ladder_kbps = np.asarray(video.bitrates_kbps, dtype=np.float64)
        self.generator_seed = seed

    def _observed(self, obs: np.ndarray) -> Any:
        import torch

        from policy.learning.ppo import with_future_row

        if self.config.network.critic_future:
            obs = with_future_row(obs, self.envs.sim, self.video)
        return torch.as_tensor(obs)

    def collect(self, weights: dict[str, Any], update: int) -> dict[str, Any]:
        """One rollout with ``weights``: ``[T, N]`` buffers, the bootstrap value and QoE statistics."""
        import torch

        self.model.load_state_dict(weights)
        torch.manual_seed(self.generator_seed * 104_729 + update)
        t, n = self.config.num_steps, self.envs.num_envs
        obs = torch.zeros((t, n, *self.next_obs.shape[1:]))
        actions = torch.zeros((t, n), dtype=torch.long)
        logprobs, rewards, dones, values = (torch.zeros((t, n)) for _ in range(4))
        qoe_sum, bitrate_sum = 0.0, 0.0
        with torch.no_grad():
            for step in range(t):
                obs[step], dones[step] = self.next_obs, self.next_done
                action, logprob, _, value = self.model.get_action_and_value(self.next_obs)
                actions[step], logprobs[step], values[step] = action, logprob, value
                next_obs, reward, terminated, truncated, _ = self.envs.step(action.numpy())
                rewards[step] = torch.as_tensor(reward * self.config.reward_scale, dtype=torch.float32)
                self.next_obs = self._observed(next_obs)
                self.next_done = torch.as_tensor(np.logical_or(terminated, truncated), dtype=torch.float32)
                qoe_sum += float(reward.sum())
                bitrate_sum += float(self.ladder_kbps[action.numpy()].sum())
            next_value = self.model.get_value(self.next_obs)
        return {"obs": obs, "actions": actions, "logprobs": logprobs, "rewards": rewards, "dones": dones,
                "values": values, "next_value": next_value, "next_done": self.next_done.clone(),
                "qoe_sum": qoe_sum, "bitrate_sum": bitrate_sum, "count": t * n}  # fmt: skip


def train_on_ray(
    config: PPOConfig,
    traces: Sequence[Trace],
    video: Video,
    *,
    workers: int,
    state: TrainState | None = None,
    device: Any = None,
    link: LinkConfig | None = None,
    spec: ObservationSpec | None = None,
    on_update: Callable[[TrainState, dict[str, float]], None] | None = None,
    stop_after_updates: int | None = None,
    plasticity: PlasticityHook | None = None,
) -> TrainState:
    """PPO with rollouts from ``workers`` Ray actors (``num_envs`` split among them, traces sharded).

    The learner (this process, on ``device``) broadcasts its weights through the object store each
    update, concatenates the workers' rollouts along the session axis and updates exactly as `train`
    does. Statistically equivalent to local training, not identical: sessions are seeded per worker.
    """
    import torch

    from policy.learning.ppo import gae_rollout, new_state, ppo_update, update_metrics

    ray = ray_module()
    if workers < 1 or workers > config.num_envs:
        raise ValueError(f"workers must be in [1, num_envs={config.num_envs}], got {workers}")
    if len(traces) < workers:
        raise ValueError(f"{len(traces)} traces cannot be sharded over {workers} workers")
    device = device or torch.device("cpu")
    spec = spec or ObservationSpec()
    state = state or new_state(config, video, spec, device)
    model, optimizer = state.model, state.optimizer
    sizes = [config.num_envs // workers + (1 if k < config.num_envs % workers else 0) for k in range(workers)]
    actor = ray.remote(num_cpus=1)(RolloutWorker)
    video_ref = ray.put(video)
    # The workers build the learner's architecture, which is the model's own (a checkpoint being
    # fine-tuned may differ from ``config.network``).
    worker_config = config.model_copy(update={"network": model.config}).model_dump_json()
    pool = [actor.remote(worker_config, list(traces[k::workers]), video_ref, link, spec, sizes[k], k,
                         state.update) for k in range(workers)]  # fmt: skip
    shuffle = np.random.default_rng(config.seed * 7_919 + state.update)
    torch.manual_seed(config.seed * 104_729 + state.update)
    last = config.num_updates if stop_after_updates is None else min(config.num_updates,
                                                                      state.update + stop_after_updates)  # fmt: skip
    while state.update < last:
        started = time.perf_counter()
        progress = state.update / config.num_updates
        if config.anneal_lr:
            optimizer.param_groups[0]["lr"] = config.learning_rate * (1.0 - progress)
        weights = ray.put({k: v.detach().cpu() for k, v in model.state_dict().items()})
        parts_ = ray.get([w.collect.remote(weights, state.update) for w in pool])

        def cat(key: str, axis: int = 1) -> torch.Tensor:
            return torch.cat([p[key] for p in parts_], dim=axis).to(device)  # noqa: B023

        rollout = gae_rollout(config, cat("obs"), cat("actions"), cat("logprobs"), cat("rewards"), cat("dones"),
                              cat("values"), cat("next_value", 0), cat("next_done", 0))  # fmt: skip
        state.global_step += sum(p["count"] for p in parts_)
        ent_coef = entropy_coef(config, progress)
        loss_parts, clip_fracs = ppo_update(model, optimizer, rollout, config, ent_coef, shuffle)
        state.update += 1
        count = max(sum(p["count"] for p in parts_), 1)
        metrics = update_metrics(state, optimizer, rollout, loss_parts, clip_fracs, ent_coef,
                                 qoe=sum(p["qoe_sum"] for p in parts_) / count,
                                 bitrate_kbps=sum(p["bitrate_sum"] for p in parts_) / count,
                                 steps_per_s=count / (time.perf_counter() - started))  # fmt: skip
        if plasticity is not None:
            from functools import partial

            from policy.learning.ppo import _loss_only

            metrics.update(plasticity.after_update(model, optimizer, state.update, rollout,
                                                   partial(_loss_only, model, config, ent_coef)))  # fmt: skip
        state.metrics.append(metrics)
        if on_update is not None:
            on_update(state, metrics)
    for worker in pool:
        ray.kill(worker)
    return state
