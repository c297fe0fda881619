"""The typed configs of learning: the actor-critic's shape, its named presets, and PPO's hyper-parameters.

Plain pydantic (no torch), so command lines and services can parse and validate them cheaply.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from simulator.qoe import QoEKind


class NetworkConfig(BaseModel):
    """Shape of the actor-critic."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    hidden: int = Field(128, ge=1, description="Units of the dense branches and of the merged hidden layer.")
    filters: int = Field(128, ge=1, description="Channels of the 1-D convolutions.")
    kernel: int = Field(4, ge=1, description="Kernel width of the 1-D convolutions.")
    shared_trunk: bool = Field(False, description="One trunk for actor and critic instead of one each.")
    critic_future: bool = Field(
        False, description="The critic also reads the network's future throughput (training only; separate trunks)."
    )
    layer_norm: bool = Field(
        False,
        description="LayerNorm on the merged hidden layers' pre-activations, before their ReLU (not on the "
        "one-row branches, whose input's scale it would remove). Off in the shipped model.",
    )
    injected_heads: int = Field(
        0, ge=0, le=64,
        description="Plasticity injection: heads added on top of the trunks' encoders, each a trained copy and a "
        "frozen twin (`ActorCritic.inject`); recorded so a checkpoint rebuilds the same network.",
    )  # fmt: skip

    @model_validator(mode="after")
    def _future_needs_own_critic(self) -> NetworkConfig:
        if self.critic_future and self.shared_trunk:
            raise ValueError("critic_future needs separate trunks: with a shared trunk the actor would see the future")
        return self


#: Named shapes: Pensieve's size, and a smaller one that trains several times faster on a CPU.
NETWORK_PRESETS: dict[str, NetworkConfig] = {"pensieve": NetworkConfig(), "small": NetworkConfig(hidden=64, filters=32)}


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
    expert: str | None = Field(
        None,
        description="Kickstarting: a causal policy spec (e.g. robustmpc) run beside the actor on the same "
        "sessions; the actor is also trained to pick the expert's level, with weight expert_coef.",
    )
    expert_coef_start: float = Field(1.0, ge=0, description="Weight of the imitation loss at the start.")
    expert_coef_end: float = Field(0.0, ge=0, description="Weight of the imitation loss from expert_fraction on.")
    expert_fraction: float = Field(
        0.25, gt=0, le=1, description="Share of training over which the imitation weight goes linearly start -> end."
    )

    @property
    def batch_size(self) -> int:
        """Transitions per rollout."""
        return self.num_envs * self.num_steps

    @property
    def num_updates(self) -> int:
        """Rollout/update iterations for ``total_steps``."""
        return max(1, self.total_steps // self.batch_size)
