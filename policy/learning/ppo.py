"""PPO for the actor-critic, on the native vector environment (many sessions per step).

Reads top to bottom like a CleanRL script: config, seeding, vector env, preallocated rollout buffers,
GAE under ``torch.no_grad()``, the clipped update, metrics named ``charts/*`` and ``losses/*``.
Rollouts run on the numpy batch core; learning runs on ``device`` (CPU or CUDA). With the same seed
on the CPU two runs are identical.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from functools import partial
from typing import Protocol

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from policy.learning.network import ROW_FUTURE, ActorCritic, NetworkConfig
from policy.learning.optim import EntryAdam
from simulator.batch import BatchSimulator
from simulator.envs import ABRVectorEnv
from simulator.link import LinkConfig
from simulator.observation import BYTES_PER_MB, ObservationSpec
from simulator.qoe import QoEConfig, QoEKind
from simulator.reference import BITS_PER_BYTE, BITS_PER_MBIT
from simulator.video import Video
from traces.trace import Trace


class PPOConfig(BaseModel):
    """Hyper-parameters of a training run (recorded in every checkpoint)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    total_steps: int = Field(2_000_000, ge=1, description="Environment steps (chunks, all sessions) to train for.")
    num_envs: int = Field(128, ge=1, description="Sessions simulated in parallel.")
    num_steps: int = Field(96, ge=1, description="Steps per session per rollout (rollout = num_envs x num_steps).")
    learning_rate: float = Field(1e-3, gt=0, description="Adam step size (linearly annealed to 0 if anneal_lr).")
    anneal_lr: bool = Field(True, description="Anneal the learning rate linearly over training.")
    gamma: float = Field(0.99, ge=0, le=1, description="Discount per chunk.")
    gae_lambda: float = Field(0.95, ge=0, le=1, description="GAE lambda.")
    num_minibatches: int = Field(4, ge=1, description="Minibatches per epoch.")
    update_epochs: int = Field(4, ge=1, description="Passes over each rollout.")
    clip_coef: float = Field(0.2, gt=0, description="PPO ratio clip.")
    clip_vloss: bool = Field(False, description="Clip the value loss as PPO's reference implementation does.")
    ent_coef_start: float = Field(0.05, ge=0, description="Entropy bonus at the start (decays linearly).")
    ent_coef_end: float = Field(0.002, ge=0, description="Entropy bonus at the end of training.")
    vf_coef: float = Field(0.5, ge=0, description="Weight of the value loss.")
    max_grad_norm: float = Field(5.0, gt=0, description="Gradient-norm clip (one norm over actor and critic).")
    norm_adv: bool = Field(True, description="Normalise advantages per minibatch.")
    reward_scale: float = Field(0.1, gt=0, description="Rewards (QoE per chunk) are multiplied by this.")
    qoe: QoEKind = Field("lin", description="QoE variant used as the reward.")
    seed: int = Field(1, description="Seeds torch, the sessions' random streams and minibatch shuffling.")
    torch_threads: int = Field(0, ge=0, description="torch CPU threads (0: torch's default).")
    network: NetworkConfig = Field(default_factory=NetworkConfig, description="Actor-critic shape.")

    @property
    def batch_size(self) -> int:
        """Transitions per rollout."""
        return self.num_envs * self.num_steps

    @property
    def num_updates(self) -> int:
        """Rollout/update iterations for ``total_steps``."""
        return max(1, self.total_steps // self.batch_size)


@dataclass
class TrainState:
    """Everything a run needs to continue exactly where it stopped."""

    model: ActorCritic
    optimizer: EntryAdam
    update: int = 0
    global_step: int = 0
    metrics: list[dict[str, float]] = field(default_factory=list)


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` fails clearly where there is no GPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available here (use auto or cpu)")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, got {device!r}")
    return torch.device(device)


def new_state(config: PPOConfig, video: Video, spec: ObservationSpec, device: torch.device) -> TrainState:
    """A freshly initialised model and optimizer (seeded)."""
    torch.manual_seed(config.seed)
    model = ActorCritic(spec.width(video), video.n_levels, config.network).to(device)
    optimizer = EntryAdam(model.parameters(), lr=config.learning_rate, eps=1e-5)
    return TrainState(model, optimizer)


def entropy_coef(config: PPOConfig, progress: float) -> float:
    """Linear decay from ``ent_coef_start`` to ``ent_coef_end`` as ``progress`` goes 0 -> 1."""
    return config.ent_coef_start + (config.ent_coef_end - config.ent_coef_start) * min(max(progress, 0.0), 1.0)


MetricsCallback = Callable[[TrainState, dict[str, float]], None]


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


@dataclass(frozen=True)
class Rollout:
    """Transitions flattened to ``[N, ...]``, with their GAE advantages and returns."""

    obs: torch.Tensor
    actions: torch.Tensor
    logprobs: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    values: torch.Tensor

    def take(self, index: torch.Tensor) -> Rollout:
        """The transitions at ``index``."""
        return Rollout(*(getattr(self, f.name)[index] for f in fields(self)))

    def __len__(self) -> int:
        return int(self.actions.shape[0])


def ppo_loss(
    model: ActorCritic, batch: Rollout, config: PPOConfig, ent_coef: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The PPO objective on ``batch`` (clipped policy loss, value loss, entropy bonus) and its parts."""
    _, new_logprob, entropy, new_value = model.get_action_and_value(batch.obs, batch.actions)
    log_ratio = new_logprob - batch.logprobs
    ratio = log_ratio.exp()
    with torch.no_grad():
        approx_kl = ((ratio - 1) - log_ratio).mean()
        clip_fraction = ((ratio - 1.0).abs() > config.clip_coef).float().mean()
    adv = batch.advantages
    if config.norm_adv and adv.numel() > 1:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    pg_loss = torch.max(-adv * ratio, -adv * torch.clamp(ratio, 1 - config.clip_coef, 1 + config.clip_coef)).mean()
    if config.clip_vloss:
        v_unclipped = (new_value - batch.returns) ** 2
        v_clipped = batch.values + torch.clamp(new_value - batch.values, -config.clip_coef, config.clip_coef)
        v_loss = 0.5 * torch.max(v_unclipped, (v_clipped - batch.returns) ** 2).mean()
    else:
        v_loss = 0.5 * ((new_value - batch.returns) ** 2).mean()
    entropy_loss = entropy.mean()
    loss = pg_loss - ent_coef * entropy_loss + config.vf_coef * v_loss
    parts = {
        "policy": pg_loss.detach(), "value": v_loss.detach(), "entropy": entropy_loss.detach(),
        "approx_kl": approx_kl, "clip_fraction": clip_fraction,
    }  # fmt: skip
    return loss, parts


def _loss_only(model: ActorCritic, config: PPOConfig, ent_coef: float, batch: Rollout) -> torch.Tensor:
    return ppo_loss(model, batch, config, ent_coef)[0]


class PlasticityHook(Protocol):
    """What the trainer calls after every update; the trainer never knows which method runs behind it."""

    def after_update(
        self,
        model: ActorCritic,
        optimizer: torch.optim.Optimizer,
        update: int,
        rollout: Rollout,
        loss_fn: Callable[[Rollout], torch.Tensor],
    ) -> dict[str, float]:
        """Diagnose and/or reset as the method's schedule says; return metrics to log (may be empty)."""
        ...


def train(
    config: PPOConfig,
    traces: Sequence[Trace],
    video: Video,
    *,
    state: TrainState | None = None,
    device: torch.device | None = None,
    link: LinkConfig | None = None,
    spec: ObservationSpec | None = None,
    on_update: MetricsCallback | None = None,
    stop_after_updates: int | None = None,
    plasticity: PlasticityHook | None = None,
) -> TrainState:
    """Train (or continue training ``state``) with PPO; ``on_update`` sees metrics after every update."""
    device = device or torch.device("cpu")
    spec = spec or ObservationSpec()
    link = link or LinkConfig.training()
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    state = state or new_state(config, video, spec, device)
    model, optimizer = state.model, state.optimizer

    # The environment's random streams are keyed by (seed, update) so a resumed run continues exactly.
    envs = ABRVectorEnv(config.num_envs, traces, video, link=link, qoe=QoEConfig(kind=config.qoe), spec=spec)
    future = model.config.critic_future

    def observed(obs_np: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(with_future_row(obs_np, envs.sim, video) if future else obs_np, device=device)

    next_obs_np, _ = envs.reset(seed=config.seed * 1_000_003 + state.update)
    next_obs = observed(next_obs_np)
    shuffle = np.random.default_rng(config.seed * 7_919 + state.update)
    torch.manual_seed(config.seed * 104_729 + state.update)

    obs_shape = tuple(next_obs.shape[1:])
    n, t = config.num_envs, config.num_steps
    obs_buf = torch.zeros((t, n, *obs_shape), device=device)
    actions = torch.zeros((t, n), dtype=torch.long, device=device)
    logprobs = torch.zeros((t, n), device=device)
    rewards = torch.zeros((t, n), device=device)
    dones = torch.zeros((t, n), device=device)
    values = torch.zeros((t, n), device=device)
    next_done = torch.zeros(n, device=device)
    ladder_kbps = np.asarray(video.bitrates_kbps, dtype=np.float64)

    last_update = (
        config.num_updates if stop_after_updates is None else min(config.num_updates, state.update + stop_after_updates)
    )
    while state.update < last_update:
        started = time.perf_counter()
        progress = state.update / config.num_updates
        if config.anneal_lr:
            optimizer.param_groups[0]["lr"] = config.learning_rate * (1.0 - progress)
        qoe_sum, qoe_count, bitrate_sum = 0.0, 0, 0.0
        for step in range(t):
            obs_buf[step] = next_obs
            dones[step] = next_done
            with torch.no_grad():
                action, logprob, _, value = model.get_action_and_value(next_obs)
            values[step] = value
            actions[step] = action
            logprobs[step] = logprob
            next_obs_np, reward, terminated, truncated, _ = envs.step(action.cpu().numpy())
            rewards[step] = torch.as_tensor(reward * config.reward_scale, dtype=torch.float32, device=device)
            next_obs = observed(next_obs_np)
            next_done = torch.as_tensor(np.logical_or(terminated, truncated), dtype=torch.float32, device=device)
            qoe_sum += float(reward.sum())
            qoe_count += reward.size
            bitrate_sum += float(ladder_kbps[action.cpu().numpy()].sum())
        state.global_step += n * t

        with torch.no_grad():
            next_value = model.get_value(next_obs)
        rollout = gae_rollout(config, obs_buf, actions, logprobs, rewards, dones, values, next_value, next_done)
        ent_coef = entropy_coef(config, progress)
        parts, clip_fracs = ppo_update(model, optimizer, rollout, config, ent_coef, shuffle)
        state.update += 1
        metrics = update_metrics(state, optimizer, rollout, parts, clip_fracs, ent_coef,
                                 qoe=qoe_sum / max(qoe_count, 1), bitrate_kbps=bitrate_sum / max(qoe_count, 1),
                                 steps_per_s=n * t / (time.perf_counter() - started))  # fmt: skip
        if plasticity is not None:
            metrics.update(
                plasticity.after_update(
                    model, optimizer, state.update, rollout, partial(_loss_only, model, config, ent_coef)
                )
            )
        state.metrics.append(metrics)
        if on_update is not None:
            on_update(state, metrics)
    return state


def gae_rollout(
    config: PPOConfig, obs: torch.Tensor, actions: torch.Tensor, logprobs: torch.Tensor, rewards: torch.Tensor,
    dones: torch.Tensor, values: torch.Tensor, next_value: torch.Tensor, next_done: torch.Tensor,
) -> Rollout:  # fmt: skip
    """GAE advantages and returns of ``[T, N]`` buffers, flattened into a `Rollout`."""
    t, n = rewards.shape
    with torch.no_grad():
        advantages = torch.zeros_like(rewards)
        last_gae = torch.zeros(n, device=rewards.device)
        for step in reversed(range(t)):
            if step == t - 1:
                not_done, following = 1.0 - next_done, next_value
            else:
                not_done, following = 1.0 - dones[step + 1], values[step + 1]
            delta = rewards[step] + config.gamma * following * not_done - values[step]
            last_gae = delta + config.gamma * config.gae_lambda * not_done * last_gae
            advantages[step] = last_gae
        returns = advantages + values
    return Rollout(
        obs.reshape((-1, *obs.shape[2:])), actions.reshape(-1), logprobs.reshape(-1),
        advantages.reshape(-1), returns.reshape(-1), values.reshape(-1),
    )  # fmt: skip


def ppo_update(
    model: ActorCritic, optimizer: torch.optim.Optimizer, rollout: Rollout, config: PPOConfig, ent_coef: float,
    shuffle: np.random.Generator,
) -> tuple[dict[str, torch.Tensor], list[float]]:  # fmt: skip
    """The clipped PPO epochs over ``rollout``; the last minibatch's loss parts and every clip fraction."""
    device = rollout.actions.device
    size = len(rollout)
    minibatch = size // config.num_minibatches
    clip_fracs: list[float] = []
    parts: dict[str, torch.Tensor] = {}
    for _ in range(config.update_epochs):
        order = shuffle.permutation(size)
        for start in range(0, size, minibatch):
            mb = torch.as_tensor(order[start : start + minibatch], device=device)
            loss, parts = ppo_loss(model, rollout.take(mb), config, ent_coef)
            clip_fracs.append(float(parts["clip_fraction"]))
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
    return parts, clip_fracs


def update_metrics(
    state: TrainState, optimizer: torch.optim.Optimizer, rollout: Rollout, parts: dict[str, torch.Tensor],
    clip_fracs: list[float], ent_coef: float, *, qoe: float, bitrate_kbps: float, steps_per_s: float,
) -> dict[str, float]:  # fmt: skip
    """The ``charts/*`` and ``losses/*`` of one update."""
    with torch.no_grad():
        var_y = rollout.returns.var()
        explained_var = float("nan") if var_y == 0 else float(1 - (rollout.returns - rollout.values).var() / var_y)
    return {
        "update": float(state.update),
        "global_step": float(state.global_step),
        "charts/qoe": qoe,
        "charts/bitrate_kbps": bitrate_kbps,
        "charts/learning_rate": float(optimizer.param_groups[0]["lr"]),
        "charts/entropy_coef": ent_coef,
        "charts/steps_per_s": steps_per_s,
        "losses/policy": float(parts["policy"]),
        "losses/value": float(parts["value"]),
        "losses/entropy": float(parts["entropy"]),
        "losses/approx_kl": float(parts["approx_kl"]),
        "losses/clip_fraction": float(np.mean(clip_fracs)),
        "losses/explained_variance": explained_var,
    }
