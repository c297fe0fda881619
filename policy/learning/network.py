"""The Pensieve-style actor-critic over the 6 x W observation (see `simulator.observation`).

Each of actor and critic has its own trunk (``shared_trunk=False``, the default) or they share one:

- dense branches (``hidden`` units) for the last bitrate (row 0), the buffer (row 1) and the chunks
  remaining (row 5), each read from the newest column;
- 1-D convolutions (``filters`` channels, kernel ``kernel``) over the throughput history (row 2), the
  delay history (row 3) and the next chunk's sizes (row 4, first ``n_levels`` columns);
- the concatenation goes through one hidden layer (``hidden`` units), then to the softmax policy
  (actor) or to the value (critic).

The published Pensieve code feeds row 4 into the branch meant for row 5 (chunks remaining); here each
branch reads its own row. All layers are initialised orthogonally through `layer_init`. With
``layer_norm`` the merged hidden layers normalise their pre-activations (LayerNorm, before the ReLU).
The branches do not: a branch reads one number or one row, so its pre-activations are (at zero bias
exactly) that input times fixed weights, and normalising them over the branch's units would divide the
input's scale out: the network could no longer see the buffer level or the bandwidth. The default
network has no LayerNorm, so its weights and checkpoints are those of the network without the option.

Plasticity injection (`ActorCritic.inject`, Nikishin et al. 2023) adds heads on top of the trunks'
encoders (everything below the merged hidden layers): each is a freshly initialised merged layer and
output layers (`HeadPaths`), trained, plus a frozen twin of it. Every output is then the original head's
plus, for each injection, trained minus twin: unchanged at the moment of injection. Only the newest
injection's trained copy and the encoders learn; ``injected_heads`` records how many there are.

With ``critic_future`` the critic (never the actor) also reads one more row, ``ROW_FUTURE``: the mean
throughput the network will offer over the next W chunk durations, which only training in the
simulator knows. The value then explains the part of the return that the network alone decides, an
input-dependent baseline (Mao et al., ICLR 2019): it does not depend on the action, so the policy
gradient stays unbiased, and the advantages are less noisy. The actor's branches never index that row,
so the policy serves from the usual 6-row observation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TypeVar

import torch
from torch import nn
from torch.distributions import Categorical

from policy.learning.config import NetworkConfig

#: Rows of the observation (see simulator.observation).
ROW_BITRATE, ROW_BUFFER, ROW_THROUGHPUT, ROW_DELAY, ROW_SIZES, ROW_REMAINING = range(6)
#: The row only a future-seeing critic reads (training only; see `policy.learning.ppo.with_future_row`).
ROW_FUTURE = 6


#: The trunk's input branches, in the order their outputs are concatenated: the scalar ones (a dense layer of
#: the latest value), then the 1-D convolutions over a row's history.
SCALAR_BRANCHES = ("bitrate", "buffer", "remaining")
CONV_BRANCHES = ("throughput", "delay", "sizes")
BRANCHES = (*SCALAR_BRANCHES, *CONV_BRANCHES)


@dataclass(frozen=True)
class NeuronLayer:
    """One layer of ReLU neurons: what plasticity diagnostics and resets act on.

    ``incoming`` computes the pre-activations (row ``u`` of its weight and bias feed neuron ``u``);
    ``activation`` is the module whose output holds the neurons' activations, ``[B, positions * units]``
    position-major; ``outgoing`` lists each consumer with the columns ``[units, k]`` that read each neuron.
    """

    name: str
    incoming: nn.Linear
    activation: nn.Module
    positions: int
    outgoing: list[tuple[nn.Linear, torch.Tensor]] = field(default_factory=list)

    @property
    def units(self) -> int:
        """Number of neurons."""
        return self.incoming.out_features


ModuleT = TypeVar("ModuleT", bound=nn.Module)


def layer_init(layer: ModuleT, gain: float = math.sqrt(2.0), bias: float = 0.0) -> ModuleT:
    """Orthogonal weights with ``gain`` and constant bias: the one initialiser every layer goes through."""
    weight = getattr(layer, "weight", None)
    if isinstance(weight, torch.Tensor):
        nn.init.orthogonal_(weight, gain)
    layer_bias = getattr(layer, "bias", None)
    if isinstance(layer_bias, torch.Tensor):
        nn.init.constant_(layer_bias, bias)
    return layer


class HistoryConv(nn.Module):
    """A 1-D convolution over one observation row (one input channel): ``[B, W]`` -> ``[B, (W-k+1) * f]``.

    Computed as a linear layer on the sliding windows, which is the same function as ``nn.Conv1d``
    with one input channel and 2-3x faster on a CPU at these sizes.
    """

    def __init__(self, kernel: int, filters: int) -> None:
        super().__init__()
        self.kernel = kernel
        self.linear = layer_init(nn.Linear(kernel, filters))

    def windows(self, row: torch.Tensor) -> torch.Tensor:
        """Each filter's pre-activation at each position, ``[B, W-k+1, f]``."""
        return self.linear(row.unfold(1, self.kernel, 1))

    def forward(self, row: torch.Tensor) -> torch.Tensor:
        return self.windows(row).flatten(1)


#: The trunk's layers that ``layer_norm`` normalises (the merged layer; see the module docstring).
NORMALISED_LAYERS = ("hidden",)


class Trunk(nn.Module):
    """Branches plus the merged hidden layer: observation ``[B, 6, W]`` -> features ``[B, hidden]``."""

    def __init__(self, width: int, n_levels: int, config: NetworkConfig) -> None:
        super().__init__()
        if config.kernel > min(width, n_levels):
            raise ValueError(f"kernel {config.kernel} is wider than the history ({width}) or the ladder ({n_levels})")
        self.n_levels = n_levels
        h, f, k = config.hidden, config.filters, config.kernel
        self.bitrate = layer_init(nn.Linear(1, h))
        self.buffer = layer_init(nn.Linear(1, h))
        self.remaining = layer_init(nn.Linear(1, h))
        self.throughput = HistoryConv(k, f)
        self.delay = HistoryConv(k, f)
        self.sizes = HistoryConv(k, f)
        merged = 3 * h + 2 * f * (width - k + 1) + f * (n_levels - k + 1)
        self.merged = merged
        self.hidden = layer_init(nn.Linear(merged, h))
        # One activation module per layer of neurons, so hooks (plasticity diagnostics) can tell them apart.
        self.acts = nn.ModuleDict({name: nn.ReLU() for name in (*BRANCHES, "hidden")})
        # Only the merged layer (module docstring); empty without layer_norm, so the state dict is then
        # exactly the plain network's.
        self.norms = nn.ModuleDict({name: nn.LayerNorm(h) for name in NORMALISED_LAYERS} if config.layer_norm else {})
        self.layer_norm = config.layer_norm
        self.positions = {
            "bitrate": 1, "buffer": 1, "remaining": 1,
            "throughput": width - k + 1, "delay": width - k + 1, "sizes": n_levels - k + 1,
        }  # fmt: skip

    def _dense(self, name: str, x: torch.Tensor) -> torch.Tensor:
        pre = getattr(self, name)(x)
        return self.acts[name](self.norms[name](pre) if name in self.norms else pre)

    def _conv(self, name: str, row: torch.Tensor) -> torch.Tensor:
        conv: HistoryConv = getattr(self, name)
        return self.acts[name](conv(row))

    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        """The branches' outputs, concatenated: what the merged hidden layer reads, ``[B, merged]``."""
        parts = [
            self._dense("bitrate", obs[:, ROW_BITRATE, -1:]),
            self._dense("buffer", obs[:, ROW_BUFFER, -1:]),
            self._dense("remaining", obs[:, ROW_REMAINING, -1:]),
            self._conv("throughput", obs[:, ROW_THROUGHPUT, :]),
            self._conv("delay", obs[:, ROW_DELAY, :]),
            self._conv("sizes", obs[:, ROW_SIZES, : self.n_levels]),
        ]
        return torch.cat(parts, dim=1)

    def top(self, encoded: torch.Tensor) -> torch.Tensor:
        """The merged hidden layer on `encode`'s output: the trunk's features ``[B, hidden]``."""
        return self._dense("hidden", encoded)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.top(self.encode(obs))

    def neuron_layers(self, heads: list[nn.Linear]) -> list[NeuronLayer]:
        """The trunk's layers of ReLU neurons, each with its incoming and outgoing weights.

        A convolution filter is one neuron (shared over positions): its outgoing weights are the columns of
        ``hidden`` that read it at every position. The merged layer's outgoing weights are ``heads``.
        """
        layers: list[NeuronLayer] = []
        offset = 0
        for name in BRANCHES:
            module = getattr(self, name)
            linear = module.linear if isinstance(module, HistoryConv) else module
            units, positions = linear.out_features, self.positions[name]
            # Flattened branch output is position-major: column p * units + u feeds from unit u.
            cols = offset + torch.arange(positions).unsqueeze(0) * units + torch.arange(units).unsqueeze(1)
            layers.append(NeuronLayer(name, linear, self.acts[name], positions, [(self.hidden, cols)]))
            offset += units * positions
        head_cols = torch.arange(self.hidden.out_features).unsqueeze(1)
        layers.append(NeuronLayer("hidden", self.hidden, self.acts["hidden"], 1, [(h, head_cols) for h in heads]))
        return layers


class HeadPaths(nn.Module):
    """The layers above the encoders: merged hidden layer(s) and output layers (what an injection adds).

    ``actor_hidden`` reads the actor's encoding; with separate trunks ``critic_hidden`` reads the critic's
    (next to the future features, with ``critic_future``); with a shared trunk both heads read
    ``actor_hidden``'s features, as in `ActorCritic`.
    """

    def __init__(self, merged: int, n_levels: int, config: NetworkConfig) -> None:
        super().__init__()
        h = config.hidden
        self.actor_hidden = layer_init(nn.Linear(merged, h))
        self.actor_norm = nn.LayerNorm(h) if config.layer_norm else None
        self.actor_act = nn.ReLU()
        self.actor_head = layer_init(nn.Linear(h, n_levels), gain=0.01)
        separate = not config.shared_trunk
        self.critic_hidden = layer_init(nn.Linear(merged, h)) if separate else None
        self.critic_norm = nn.LayerNorm(h) if separate and config.layer_norm else None
        self.critic_act = nn.ReLU()
        self.critic_head = layer_init(nn.Linear(2 * h if config.critic_future else h, 1), gain=1.0)

    def actor_features(self, encoded: torch.Tensor) -> torch.Tensor:
        """The merged layer's activations ``[B, hidden]`` on the actor's encoding."""
        pre = self.actor_hidden(encoded)
        return self.actor_act(self.actor_norm(pre) if self.actor_norm is not None else pre)

    def logits(self, encoded: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, n_levels]`` from the actor's encoding."""
        return self.actor_head(self.actor_features(encoded))

    def value(self, encoded: torch.Tensor, future: torch.Tensor | None) -> torch.Tensor:
        """Values ``[B, 1]`` from the critic's encoding (the shared one with a shared trunk) and future features."""
        if self.critic_hidden is None:
            features = self.actor_features(encoded)
        else:
            pre = self.critic_hidden(encoded)
            features = self.critic_act(self.critic_norm(pre) if self.critic_norm is not None else pre)
        if future is not None:
            features = torch.cat([features, future], dim=1)
        return self.critic_head(features)


class Injection(nn.Module):
    """One plasticity injection: fresh `HeadPaths` that learn, and a frozen twin subtracted from them."""

    def __init__(self, merged: int, n_levels: int, config: NetworkConfig) -> None:
        super().__init__()
        self.trained = HeadPaths(merged, n_levels, config)
        self.twin = HeadPaths(merged, n_levels, config)
        self.twin.load_state_dict(self.trained.state_dict())
        self.twin.requires_grad_(False)

    def logits(self, encoded: torch.Tensor) -> torch.Tensor:
        """What it adds to the logits: trained minus twin (exactly zero while they are equal)."""
        return self.trained.logits(encoded) - self.twin.logits(encoded)

    def value(self, encoded: torch.Tensor, future: torch.Tensor | None) -> torch.Tensor:
        """What it adds to the values ``[B, 1]``."""
        return self.trained.value(encoded, future) - self.twin.value(encoded, future)


class ActorCritic(nn.Module):
    """Softmax policy over ladder levels and a state-value estimate."""

    def __init__(self, width: int, n_levels: int, config: NetworkConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else NetworkConfig()
        self.width, self.n_levels = width, n_levels
        self.actor_trunk = Trunk(width, n_levels, self.config)
        self.critic_trunk = None if self.config.shared_trunk else Trunk(width, n_levels, self.config)
        h = self.config.hidden
        self.actor_head = layer_init(nn.Linear(h, n_levels), gain=0.01)
        self.critic_future = layer_init(nn.Linear(width, h)) if self.config.critic_future else None
        self.critic_future_act = nn.ReLU()
        with_norm = self.config.layer_norm and self.config.critic_future
        self.critic_future_norm = nn.LayerNorm(h) if with_norm else None
        self.critic_head = layer_init(nn.Linear(2 * h if self.config.critic_future else h, 1), gain=1.0)
        merged, count = self.actor_trunk.merged, self.config.injected_heads
        self.injections = nn.ModuleList(Injection(merged, n_levels, self.config) for _ in range(count))
        self._freeze_injected_heads()

    def _value(
        self, obs: torch.Tensor, actor_encoded: torch.Tensor | None = None, actor_features: torch.Tensor | None = None
    ) -> torch.Tensor:
        future = None
        if self.critic_trunk is None:
            encoded = actor_encoded if actor_encoded is not None else self.actor_trunk.encode(obs)
            features = actor_features if actor_features is not None else self.actor_trunk.top(encoded)
        else:
            encoded = self.critic_trunk.encode(obs)
            features = self.critic_trunk.top(encoded)
            if self.critic_future is not None:
                if obs.shape[1] <= ROW_FUTURE:
                    raise ValueError(
                        f"this critic reads the future (row {ROW_FUTURE}); got {obs.shape[1]}-row observations"
                    )
                pre = self.critic_future(obs[:, ROW_FUTURE, :])
                norm = self.critic_future_norm
                future = self.critic_future_act(norm(pre) if norm is not None else pre)
                features = torch.cat([features, future], dim=1)
        value = self.critic_head(features)
        for injection in self.injected():
            value = value + injection.value(encoded, future)
        return value.squeeze(-1)

    def _logits(self, encoded: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        logits = self.actor_head(features)
        for injection in self.injected():
            logits = logits + injection.logits(encoded)
        return logits

    def get_value(self, obs: torch.Tensor) -> torch.Tensor:
        """State values ``[B]``."""
        return self._value(obs)

    def logits(self, obs: torch.Tensor) -> torch.Tensor:
        """Unnormalised action log-probabilities ``[B, n_levels]``."""
        encoded = self.actor_trunk.encode(obs)
        return self._logits(encoded, self.actor_trunk.top(encoded))

    def get_action_and_value(
        self, obs: torch.Tensor, action: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sample (or score) actions: returns ``(action, log_prob, entropy, value)``, each ``[B]``."""
        encoded = self.actor_trunk.encode(obs)
        features = self.actor_trunk.top(encoded)
        dist = Categorical(logits=self._logits(encoded, features))
        if action is None:
            action = dist.sample()
        value = self._value(obs, encoded, features)
        return action, dist.log_prob(action), dist.entropy(), value

    def _head_modules(self) -> list[nn.Module]:
        """The original heads: the merged hidden layers (with their LayerNorms) and the output layers."""
        modules: list[nn.Module] = [self.actor_head, self.critic_head]
        for trunk in (self.actor_trunk, self.critic_trunk):
            if trunk is not None:
                modules.append(trunk.hidden)
                if "hidden" in trunk.norms:
                    modules.append(trunk.norms["hidden"])
        return modules

    def injected(self) -> list[Injection]:
        """The injections (`inject`), oldest first."""
        return [module for module in self.injections if isinstance(module, Injection)]

    def _freeze_injected_heads(self) -> None:
        """With injections, only the encoders and the newest injection's trained copy learn."""
        if not len(self.injections):
            return
        for module in self._head_modules():
            module.requires_grad_(False)
        for index, injection in enumerate(self.injected()):
            injection.twin.requires_grad_(False)
            injection.trained.requires_grad_(index == len(self.injections) - 1)

    def inject(self, seed: int) -> list[nn.Parameter]:
        """Plasticity injection: freeze the heads, add fresh ones (seeded) and a frozen twin; the function is kept.

        Returns the new trainable parameters (for the optimizer); ``config.injected_heads`` counts the
        injections. The global RNG is left untouched.
        """
        device = self.actor_head.weight.device
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            injection = Injection(self.actor_trunk.merged, self.n_levels, self.config).to(device)
        self.injections.append(injection)
        self.config = self.config.model_copy(update={"injected_heads": len(self.injections)})
        self._freeze_injected_heads()
        return list(injection.trained.parameters())

    def neuron_layers(self) -> list[NeuronLayer]:
        """Every layer of ReLU neurons, named ``actor.*`` / ``critic.*``, found by walking the trunks."""
        layers: list[NeuronLayer] = []
        if self.critic_trunk is None:
            trunks = [("shared", self.actor_trunk, [self.actor_head, self.critic_head])]
        else:
            trunks = [("actor", self.actor_trunk, [self.actor_head]), ("critic", self.critic_trunk, [self.critic_head])]
        for prefix, trunk, heads in trunks:
            for layer in trunk.neuron_layers(heads):
                layers.append(NeuronLayer(f"{prefix}.{layer.name}", layer.incoming, layer.activation,
                                          layer.positions, layer.outgoing))  # fmt: skip
        h = self.config.hidden
        if self.critic_future is not None:
            cols = (h + torch.arange(h)).unsqueeze(1)  # the head reads these after the trunk's features
            layers.append(NeuronLayer("critic.future", self.critic_future, self.critic_future_act, 1,
                                      [(self.critic_head, cols)]))  # fmt: skip
        first = torch.arange(h).unsqueeze(1)
        for index, injection in enumerate(self.injected()):  # the trained copies (the twins never learn)
            paths = injection.trained
            if paths.critic_hidden is None:
                layers.append(NeuronLayer(f"shared.injected{index}", paths.actor_hidden, paths.actor_act, 1,
                                          [(paths.actor_head, first), (paths.critic_head, first)]))  # fmt: skip
                continue
            layers.append(NeuronLayer(f"actor.injected{index}", paths.actor_hidden, paths.actor_act, 1,
                                      [(paths.actor_head, first)]))  # fmt: skip
            layers.append(NeuronLayer(f"critic.injected{index}", paths.critic_hidden, paths.critic_act, 1,
                                      [(paths.critic_head, first)]))  # fmt: skip
        return layers

    def act_greedy(self, obs: torch.Tensor) -> torch.Tensor:
        """The most likely level per observation (deterministic evaluation)."""
        return self.logits(obs).argmax(dim=-1)
