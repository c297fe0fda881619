"""PPO for the actor-critic: one loop over a rollout source (sessions simulated here or on Ray actors).

Reads top to bottom like a CleanRL script: config, seeding (named streams, `abr_common.seeding`), the
rollout source (`policy.learning.rollouts`: the native vector environment with preallocated buffers),
GAE under ``torch.no_grad()``, the clipped update, metrics named ``charts/*`` and ``losses/*``, the
plasticity hook. Rollouts run on the numpy batch core; learning runs on ``device`` (CPU or CUDA). With
the same seed on the CPU two local runs are identical.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from functools import partial
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from abr_common import seeding
from abr_common.seeding import stream_seed
from policy.learning.config import PPOConfig
from policy.learning.network import ActorCritic
from policy.learning.optim import EntryAdam
from policy.learning.rollouts import RayRollouts, RolloutSource, SessionRollouts
from simulator.link import LinkConfig
from simulator.observation import ObservationSpec
from simulator.video import Video
from traces.trace import Trace


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


def _linear(start: float, end: float, along: float) -> float:
    return start + (end - start) * min(max(along, 0.0), 1.0)


def entropy_coef(config: PPOConfig, progress: float) -> float:
    """Linear decay from ``ent_coef_start`` to ``ent_coef_end`` as ``progress`` goes 0 -> 1."""
    return _linear(config.ent_coef_start, config.ent_coef_end, progress)


def expert_coef(config: PPOConfig, progress: float) -> float:
    """Weight of the imitation loss: ``expert_coef_start`` -> ``_end`` over ``expert_fraction``; 0 without expert."""
    if config.expert is None:
        return 0.0
    return _linear(config.expert_coef_start, config.expert_coef_end, progress / config.expert_fraction)


MetricsCallback = Callable[[TrainState, dict[str, float]], None]


@dataclass(frozen=True)
class Rollout:
    """Transitions flattened to ``[N, ...]``, with their GAE advantages and returns."""

    obs: torch.Tensor
    actions: torch.Tensor
    logprobs: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    values: torch.Tensor
    #: The expert's level in each state (kickstarting rollouts only).
    expert_actions: torch.Tensor | None = None

    def take(self, index: torch.Tensor) -> Rollout:
        """The transitions at ``index``."""
        taken: dict[str, Any] = {}
        for f in fields(self):
            part = getattr(self, f.name)
            taken[f.name] = None if part is None else part[index]
        return Rollout(**taken)

    def __len__(self) -> int:
        return int(self.actions.shape[0])


def ppo_loss(
    model: ActorCritic, batch: Rollout, config: PPOConfig, ent_coef: float, imitation_coef: float = 0.0
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The PPO objective on ``batch`` (clipped policy loss, value loss, entropy bonus) and its parts.

    With ``imitation_coef`` > 0 and expert labels in ``batch`` it adds kickstarting's imitation term:
    ``imitation_coef`` times the cross-entropy of the actor's distribution against the expert's level.
    """
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
    if imitation_coef > 0 and batch.expert_actions is not None:
        imitation = nn.functional.cross_entropy(model.logits(batch.obs), batch.expert_actions)
        loss = loss + imitation_coef * imitation
        parts["imitation"] = imitation.detach()
    return loss, parts


class PlasticityHook(Protocol):
    """What the trainer calls around its updates; the trainer never knows which method runs behind it.

    ``loss_term`` may add a regulariser to every minibatch's loss and ``after_step`` acts after every
    optimizer step (both return nothing for methods that act only between updates).
    """

    def loss_term(
        self, model: ActorCritic, rollout: Rollout, minibatch: torch.Tensor, *, policy_loss: float | None = None
    ) -> torch.Tensor | None:
        """A term added to the loss of the minibatch ``rollout.take(minibatch)`` (None: nothing added).

        ``policy_loss``: that minibatch's clipped policy loss, for methods that scale a term against it.
        """
        ...

    def after_step(self, model: ActorCritic, optimizer: torch.optim.Optimizer) -> None:
        """Called after every optimizer step."""
        ...

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
    ray_workers: int = 0,
) -> TrainState:
    """Train (or continue training ``state``) with PPO on ``traces``; ``on_update`` sees every update's metrics.

    Rollouts come from sessions simulated here, or with ``ray_workers`` > 0 from that many Ray actors
    (`policy.learning.rollouts.RayRollouts`; the caller connects to Ray first). Runs to the end of
    ``config``'s schedule, or for at most ``stop_after_updates`` updates. On the CPU, with the same seed,
    two local runs are identical; a run continued from ``state`` re-seeds every stream at its update.
    """
    device = device or torch.device("cpu")
    spec = spec or ObservationSpec()
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    state = state or new_state(config, video, spec, device)
    sessions_seed = stream_seed(seeding.SESSIONS, config.seed, state.update)
    source: RolloutSource
    # The expert is only built if it will still be consulted (a run resumed past expert_fraction skips it).
    expert = config.expert if expert_coef(config, state.update / config.num_updates) > 0 else None
    if ray_workers:
        source = RayRollouts(config.num_envs, config.num_steps, traces, video, workers=ray_workers,
                             sessions_seed=sessions_seed, reward_scale=config.reward_scale, qoe=config.qoe,
                             network_json=state.model.config.model_dump_json(), link=link, spec=spec,
                             device=device, expert=expert)  # fmt: skip
    else:
        source = SessionRollouts(config.num_envs, config.num_steps, traces, video, sessions_seed=sessions_seed,
                                 reward_scale=config.reward_scale, qoe=config.qoe,
                                 critic_future=state.model.config.critic_future, link=link, spec=spec,
                                 device=device, expert=expert)  # fmt: skip
    try:
        run_updates(config, state, source, on_update=on_update, stop_after_updates=stop_after_updates,
                    plasticity=plasticity)  # fmt: skip
    finally:
        source.close()
    return state


def run_updates(
    config: PPOConfig,
    state: TrainState,
    source: RolloutSource,
    *,
    on_update: MetricsCallback | None = None,
    stop_after_updates: int | None = None,
    plasticity: PlasticityHook | None = None,
) -> TrainState:
    """The PPO loop: rollout from ``source``, GAE, clipped update, plasticity hook, metrics; until done.

    The minibatch shuffle and torch's action sampling are seeded from their streams at ``state.update``.
    """
    model, optimizer = state.model, state.optimizer
    shuffle = np.random.default_rng(stream_seed(seeding.SHUFFLE, config.seed, state.update))
    torch.manual_seed(stream_seed(seeding.ACTIONS, config.seed, state.update))
    last_update = (
        config.num_updates if stop_after_updates is None else min(config.num_updates, state.update + stop_after_updates)
    )
    while state.update < last_update:
        started = time.perf_counter()
        progress = state.update / config.num_updates
        if config.anneal_lr:  # every group: a plasticity method may have added parameters in a group of their own
            for group in optimizer.param_groups:
                group["lr"] = config.learning_rate * (1.0 - progress)
        imitation_coef = expert_coef(config, progress)
        batch = source.collect(model, state.update, expert=imitation_coef > 0)
        state.global_step += batch.count
        rollout = gae_rollout(config, batch.obs, batch.actions, batch.logprobs, batch.rewards, batch.dones,
                              batch.values, batch.next_value, batch.next_done,
                              expert_actions=batch.expert_actions)  # fmt: skip
        ent_coef = entropy_coef(config, progress)
        parts, clip_fracs = ppo_update(model, optimizer, rollout, config, ent_coef, shuffle, imitation_coef,
                                       plasticity=plasticity)  # fmt: skip
        state.update += 1
        count = max(batch.count, 1)
        metrics = update_metrics(state, optimizer, rollout, parts, clip_fracs, ent_coef, qoe=batch.qoe_sum / count,
                                 bitrate_kbps=batch.bitrate_kbps_sum / count,
                                 steps_per_s=batch.count / (time.perf_counter() - started))  # fmt: skip
        if rollout.expert_actions is not None:
            metrics["charts/expert_coef"] = imitation_coef
            metrics["charts/expert_agreement"] = float((rollout.actions == rollout.expert_actions).float().mean())
            metrics["losses/imitation"] = float(parts["imitation"])
        if plasticity is not None:
            loss_fn = partial(_rollout_loss, model, config, ent_coef)
            metrics.update(plasticity.after_update(model, optimizer, state.update, rollout, loss_fn))
        state.metrics.append(metrics)
        if on_update is not None:
            on_update(state, metrics)
    return state


def _rollout_loss(model: ActorCritic, config: PPOConfig, ent_coef: float, batch: Rollout) -> torch.Tensor:
    """The PPO loss alone (what a plasticity method differentiates to find gradient-silent neurons)."""
    return ppo_loss(model, batch, config, ent_coef)[0]


def gae_rollout(
    config: PPOConfig, obs: torch.Tensor, actions: torch.Tensor, logprobs: torch.Tensor, rewards: torch.Tensor,
    dones: torch.Tensor, values: torch.Tensor, next_value: torch.Tensor, next_done: torch.Tensor,
    *, expert_actions: torch.Tensor | None = None,
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
        None if expert_actions is None else expert_actions.reshape(-1),
    )  # fmt: skip


def ppo_update(
    model: ActorCritic, optimizer: torch.optim.Optimizer, rollout: Rollout, config: PPOConfig, ent_coef: float,
    shuffle: np.random.Generator, imitation_coef: float = 0.0, *, plasticity: PlasticityHook | None = None,
) -> tuple[dict[str, torch.Tensor], list[float]]:  # fmt: skip
    """The clipped PPO epochs over ``rollout``; the last minibatch's loss parts and every clip fraction.

    ``plasticity`` may add a term to each minibatch's loss and act after each optimizer step.
    """
    device = rollout.actions.device
    size = len(rollout)
    minibatch = size // config.num_minibatches
    clip_fracs: list[float] = []
    parts: dict[str, torch.Tensor] = {}
    for _ in range(config.update_epochs):
        order = shuffle.permutation(size)
        for start in range(0, size, minibatch):
            mb = torch.as_tensor(order[start : start + minibatch], device=device)
            loss, parts = ppo_loss(model, rollout.take(mb), config, ent_coef, imitation_coef)
            clip_fracs.append(float(parts["clip_fraction"]))
            extra = (
                plasticity.loss_term(model, rollout, mb, policy_loss=float(parts["policy"]))
                if plasticity is not None
                else None
            )
            if extra is not None:
                loss = loss + extra
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            if plasticity is not None:
                plasticity.after_step(model, optimizer)
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
