"""Plasticity methods behind one interface, and the hook the PPO trainer calls around its updates.

Every method implements ``after_update(model, optimizer, update, batch, loss_fn) -> stats`` and may
implement ``begin_phase(model, optimizer, phase)``, ``loss_term(model, rollout, minibatch, policy_loss=)``
(a regulariser added to every minibatch's loss; ``policy_loss`` is that minibatch's PPO policy loss) and
``after_step(model, optimizer)`` (after every optimizer step); `Plasticity` adds the periodic
diagnostics and is what `policy.learning.ppo.train` receives, so the trainer never knows which method
runs.

Neuron resets (ReDo, CBP, ReSiN, ReGraMa) share `reset_neurons`: incoming weights re-drawn from the layer's
initial distribution (orthogonal rows, gain sqrt 2, bias 0), outgoing weights zeroed so that the
network computes exactly the same function right after the reset, and the optimizer moments and step
counts of exactly those entries zeroed through ``optimizer.state[param]``.
"""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Generic, TypeVar

import torch
from torch import nn

from abr_common import seeding
from abr_common.seeding import stream_seed
from plasticity.config import CHECK_EVERY_UPDATES as CHECK_EVERY_UPDATES
from plasticity.config import DEFAULT_CHECK_EVERY_UPDATES as DEFAULT_CHECK_EVERY_UPDATES
from plasticity.config import (
    CbpConfig,
    CChainConfig,
    FreshConfig,
    InjectionConfig,
    L2InitConfig,
    LnWdConfig,
    MethodConfig,
    NoneConfig,
    RedoConfig,
    RegramaConfig,
    ResetConfig,
    ResetterConfig,
    ResinConfig,
    ShrinkPerturbConfig,
    TracConfig,
)
from plasticity.config import PlasticityConfig as PlasticityConfig
from plasticity.config import parse_plasticity as parse_plasticity
from plasticity.diagnostics import (
    SCORE_EPS,
    LayerScores,
    LossFn,
    churn,
    layer_scores,
    policy_probs,
    record_activations,
    silent_mask,
    summarise,
    unit_activity,
    weight_magnitude,
)
from plasticity.names import METHODS as METHODS
from policy.learning.network import NORMALISED_LAYERS, ActorCritic, NeuronLayer
from policy.learning.ppo import Rollout

#: Gain of the trunk layers' orthogonal init (`policy.learning.network.layer_init`'s default): resets redraw from it.
TRUNK_GAIN = math.sqrt(2.0)
#: Added to the mean policy churn where C-CHAIN divides by it (a run whose policy never moves).
CHURN_EPS = 1e-8
#: TRAC's tuner ratios are clipped to this magnitude before erfi (erfi(20) is about 1e172: a scale no
#: training survives anyway), and the terms of erfi's power series summed (enough for |x| <= 20).
ERFI_MAX_ARG, ERFI_TERMS = 20.0, 1024


# --------------------------------------------------------------------------- per-layer operations


def _reset_optimizer_entries(optimizer: torch.optim.Optimizer, param: torch.Tensor, index: tuple) -> None:
    """Zero Adam's moments (and per-entry step counts, where the optimizer keeps them) at ``param[index]``."""
    state = optimizer.state.get(param)
    if not state:
        return
    for key in ("exp_avg", "exp_avg_sq"):
        state[key][index] = 0.0
    step = state.get("step")
    if isinstance(step, torch.Tensor) and step.shape == param.shape:
        step[index] = 0.0


@torch.no_grad()
def reset_neurons(
    layer: NeuronLayer, units: torch.Tensor, optimizer: torch.optim.Optimizer, generator: torch.Generator
) -> int:
    """Re-initialise the incoming and zero the outgoing weights of ``units`` (bool ``[units]``); count reset."""
    idx = units.nonzero().flatten()
    if idx.numel() == 0:
        return 0
    incoming = layer.incoming
    fresh = torch.empty(incoming.weight.shape, device="cpu")
    nn.init.orthogonal_(fresh, TRUNK_GAIN, generator=generator)
    incoming.weight[idx] = fresh[idx.cpu()].to(incoming.weight)
    _reset_optimizer_entries(optimizer, incoming.weight, (idx,))
    if incoming.bias is not None:
        incoming.bias[idx] = 0.0
        _reset_optimizer_entries(optimizer, incoming.bias, (idx,))
    for consumer, cols in layer.outgoing:
        columns = cols.to(idx.device)[idx].flatten()
        consumer.weight[:, columns] = 0.0
        _reset_optimizer_entries(optimizer, consumer.weight, (slice(None), columns))
        if consumer.bias is not None and not torch.any(consumer.weight):
            # The consumer has no input left (a head whose whole layer was reset): its bias alone would
            # keep the old output (a policy saturated on one level stays saturated), so it restarts too.
            consumer.bias.zero_()
            _reset_optimizer_entries(optimizer, consumer.bias, (slice(None),))
    return int(idx.numel())


def fresh_like(model: ActorCritic, seed: int) -> ActorCritic:
    """A freshly initialised network of the same shape, seeded (the global RNG is left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = ActorCritic(model.width, model.n_levels, model.config)
    return fresh.to(next(model.parameters()).device)


def _last_layer_names(model: ActorCritic) -> set[str]:
    """Parameter names of the heads and the trunks' merged hidden layers (``reset_scope = last``)."""
    return {name for name, _ in model.named_parameters() if "head" in name or ".hidden." in name}


# --------------------------------------------------------------------------- methods


ConfigT = TypeVar("ConfigT", bound=MethodConfig)
ResetterT = TypeVar("ResetterT", bound=ResetterConfig)


class PlasticityMethod(ABC, Generic[ConfigT]):
    """One way of keeping the network plastic, with its own config."""

    name: str

    def __init__(self, config: ConfigT) -> None:
        self.config = config
        self.generator = torch.Generator().manual_seed(stream_seed(seeding.METHOD_GENERATOR, config.seed, 17))
        self.resets = 0

    def state_dict(self) -> dict[str, Any]:
        """What the method has learned about the network so far, JSON-ready (see `load_state_dict`)."""
        return {"method": self.name, "resets": self.resets}

    def load_state_dict(self, state: dict[str, Any], *, same_run: bool) -> None:
        """Restore `state_dict`. ``same_run``: the update count continues (a resumed run), so per-update
        bookkeeping is restored too; otherwise (a new fine-tuning round of the same network) only what
        describes the network itself is carried over."""
        if state.get("method") != self.name:
            raise ValueError(f"plasticity state is for {state.get('method')!r}, not {self.name!r}")
        if same_run:
            self.resets = int(state.get("resets", 0))

    def begin_phase(self, model: ActorCritic, optimizer: torch.optim.Optimizer, phase: int) -> dict[str, float]:
        """Called when the training distribution changes (a new schedule phase); most methods ignore it."""
        return {}

    def loss_term(
        self, model: ActorCritic, rollout: Rollout, minibatch: torch.Tensor, *, policy_loss: float | None = None
    ) -> torch.Tensor | None:
        """A regulariser added to the loss of ``rollout.take(minibatch)`` (None: the PPO loss alone)."""
        return None

    def after_step(self, model: ActorCritic, optimizer: torch.optim.Optimizer) -> None:
        """Called after every optimizer step; most methods act only between updates."""

    @abstractmethod
    def after_update(
        self, model: ActorCritic, optimizer: torch.optim.Optimizer, update: int, batch: Rollout, loss_fn: LossFn
    ) -> dict[str, float]:
        """Act after update number ``update`` (1-based); return stats such as neurons reset."""


class NoMethod(PlasticityMethod[NoneConfig]):
    """Plain continual training."""

    name = "none"

    def after_update(
        self, model: ActorCritic, optimizer: torch.optim.Optimizer, update: int, batch: Rollout, loss_fn: LossFn
    ) -> dict[str, float]:
        return {}


def _reinit_parameters(model: ActorCritic, optimizer: torch.optim.Optimizer, names: set[str] | None, seed: int) -> int:
    """Copy a fresh network's parameters into ``names`` (all when None) and forget their optimizer state."""
    fresh = dict(fresh_like(model, seed).named_parameters())
    count = 0
    with torch.no_grad():
        for name, param in model.named_parameters():
            if names is None or name in names:
                param.copy_(fresh[name])
                optimizer.state.pop(param, None)
                count += param.numel()
    return count


class PeriodicReset(PlasticityMethod[ResetConfig]):
    """Re-initialise the whole network or its last layers every ``reset_every_updates`` updates."""

    name = "reset"

    def after_update(
        self, model: ActorCritic, optimizer: torch.optim.Optimizer, update: int, batch: Rollout, loss_fn: LossFn
    ) -> dict[str, float]:
        if update % self.config.reset_every_updates:
            return {}
        names = None if self.config.reset_scope == "all" else _last_layer_names(model)
        self.resets += 1
        _reinit_parameters(model, optimizer, names, stream_seed(seeding.FRESH_WEIGHTS, self.config.seed, self.resets))
        return {"plasticity/reset": 1.0}


class FreshAtShift(PlasticityMethod[FreshConfig]):
    """A fresh network at every new phase: the reference for how fast an unburdened network adapts."""

    name = "fresh"

    def begin_phase(self, model: ActorCritic, optimizer: torch.optim.Optimizer, phase: int) -> dict[str, float]:
        if phase == 0:
            return {}
        self.resets += 1
        _reinit_parameters(model, optimizer, None, stream_seed(seeding.FRESH_WEIGHTS, self.config.seed, self.resets))
        return {"plasticity/reset": 1.0}

    def after_update(
        self, model: ActorCritic, optimizer: torch.optim.Optimizer, update: int, batch: Rollout, loss_fn: LossFn
    ) -> dict[str, float]:
        return {}


class ShrinkPerturb(PlasticityMethod[ShrinkPerturbConfig]):
    """theta <- shrink * theta + perturb * theta_fresh every ``reset_every_updates`` (Ash & Adams)."""

    name = "shrink-perturb"

    def after_update(
        self, model: ActorCritic, optimizer: torch.optim.Optimizer, update: int, batch: Rollout, loss_fn: LossFn
    ) -> dict[str, float]:
        if update % self.config.reset_every_updates:
            return {}
        self.resets += 1
        fresh = dict(
            fresh_like(model, stream_seed(seeding.FRESH_WEIGHTS, self.config.seed, self.resets)).named_parameters()
        )
        with torch.no_grad():
            for name, param in model.named_parameters():
                param.mul_(self.config.shrink).add_(fresh[name], alpha=self.config.perturb)
        return {"plasticity/reset": 1.0}


class _NeuronResetter(PlasticityMethod[ResetterT]):
    """Shared by ReDo, ReSiN and ReGraMa: score, select silent neurons outside their grace period, reset them.

    The history of layer means (``use_history``) and whole-layer collapses are ReSiN's (`ReSiN`); the others
    normalise by the layer's current mean and reset neuron by neuron.
    """

    rule: str

    def __init__(self, config: ResetterT) -> None:
        super().__init__(config)
        self.last_reset: dict[str, torch.Tensor] = {}  # layer name -> update of each neuron's last reset
        self.futile: dict[str, torch.Tensor] = {}  # layer name -> resets since each neuron last fired
        self.gradient_reference: dict[str, float] = {}  # layer name -> running mean of its raw gradient score
        self.activity_reference: dict[str, float] = {}  # layer name -> running mean of its raw activity
        self.shift_at: dict[str, int] = {}  # trunk -> update at which its inputs were last seen shifted
        self.use_history = False

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "gradient_reference": dict(self.gradient_reference),
            "activity_reference": dict(self.activity_reference),
            "last_reset": {k: v.tolist() for k, v in self.last_reset.items()},
            "futile": {k: v.tolist() for k, v in self.futile.items()},
            "shift_at": dict(self.shift_at),
        }

    def load_state_dict(self, state: dict[str, Any], *, same_run: bool) -> None:
        super().load_state_dict(state, same_run=same_run)
        # The running means describe the network's normal gradient and activity: they carry over to a new
        # round, which is what lets a collapse be seen at the new round's first check.
        self.gradient_reference = {k: float(v) for k, v in state.get("gradient_reference", {}).items()}
        self.activity_reference = {k: float(v) for k, v in state.get("activity_reference", {}).items()}
        if same_run:
            self.last_reset = {k: torch.tensor(v, dtype=torch.long) for k, v in state.get("last_reset", {}).items()}
            self.futile = {k: torch.tensor(v, dtype=torch.long) for k, v in state.get("futile", {}).items()}
            self.shift_at = {k: int(v) for k, v in state.get("shift_at", {}).items()}

    def _collapsed(self, scores: list[LayerScores], update: int) -> set[str]:
        """Layers whose gradient collapsed as a whole (ReSiN only; updates its running means)."""
        return set()

    def _backward_scores(self, s: LayerScores, collapsed: bool) -> torch.Tensor:
        """Per-neuron gradient scores: normalised by the layer's current mean."""
        return s.backward

    def _reset_whole(self, name: str, collapsed: set[str]) -> bool:
        """Whether layer ``name`` is reset whole at this check, grace or not (ReSiN's collapsed top layers)."""
        return False

    def after_update(
        self, model: ActorCritic, optimizer: torch.optim.Optimizer, update: int, batch: Rollout, loss_fn: LossFn
    ) -> dict[str, float]:
        if update % self.config.check_every_updates:
            return {}
        scores = layer_scores(model, batch, loss_fn)
        # The backward scores are normalised by the running mean as it was before this check.
        reference_before = dict(self.gradient_reference)
        collapsed = self._collapsed(scores, update)
        current_reference = self.gradient_reference
        self.gradient_reference = reference_before
        backward = {s.layer.name: self._backward_scores(s, s.layer.name in collapsed) for s in scores}
        self.gradient_reference = current_reference
        reset = 0
        for s in scores:
            name = s.layer.name
            last = self.last_reset.setdefault(name, torch.full((s.layer.units,), -(10**9), dtype=torch.long))
            futile = self.futile.setdefault(name, torch.zeros(s.layer.units, dtype=torch.long))
            futile[(s.forward > self.config.tau_forward).cpu()] = 0  # it fires: its last reset was not futile
            scored = replace(s, backward=backward[name])
            mask = silent_mask(scored, self.config.tau_forward, self.config.tau_backward, self.rule).cpu()
            mask &= (update - last) >= self.config.grace_updates * 2 ** futile.clamp(max=self.config.futile_backoff)
            if self._reset_whole(name, collapsed):
                mask[:] = True
            n = reset_neurons(s.layer, mask.to(s.forward.device), optimizer, self.generator)
            last[mask] = update
            futile[mask] += 1
            reset += n
        self.resets += reset
        total = sum(s.layer.units for s in scores)
        return {"plasticity/neurons_reset": float(reset), "plasticity/reset_fraction": reset / max(total, 1)}


class ReDo(_NeuronResetter[RedoConfig]):
    """ReDo (Sokar et al. 2023): reset neurons whose normalised activation score is <= tau."""

    name = "redo"
    rule = "forward"


class ReGraMa(_NeuronResetter[RegramaConfig]):
    """ReGraMa (Liu et al. 2025): reset neurons whose gradient magnitude (GraMa) is <= ``tau_backward``.

    GraMa is the mean |gradient| of the training loss over a neuron's incoming weights (and bias),
    divided by its layer's mean: the backward score of `plasticity.diagnostics.layer_scores`. A dead ReLU
    unit gets no gradient through its activation, and a unit whose outgoing weights vanished gets none
    from its consumers, so both are reset; activity alone does not protect a unit that cannot learn.
    """

    name = "regrama"
    rule = "backward"


class ReSiN(_NeuronResetter[ResinConfig]):
    """ReSiN: reset neurons silent forward and/or backward (``rule``), each direction with its threshold."""

    name = "resin"

    def __init__(self, config: ResinConfig) -> None:
        super().__init__(config)
        self.rule = config.rule
        self.use_history = config.backward_reference == "history"

    def _collapsed(self, scores: list[LayerScores], update: int) -> set[str]:
        """Layers whose mean gradient fell to ``collapse_ratio`` of its running mean (history reference only).

        Updates the running means. With ``shift_ratio`` a collapse counts only in a trunk whose inputs shifted
        within the last ``shift_window_updates``; with ``collapse_scope`` top only each trunk's top layer can
        collapse.
        """
        if not self.use_history:
            return set()
        c = self.config
        collapsed: list[str] = []
        top = {s.layer.name.split(".")[0]: s.layer.name for s in scores}  # layers are listed input first
        for s in scores:
            name, trunk = s.layer.name, s.layer.name.split(".")[0]
            current, activity = float(s.raw_backward.mean()), float(s.raw_forward.mean())
            reference = self.gradient_reference.get(name, current)
            activity_ref = self.activity_reference.get(name, activity)
            self.gradient_reference[name] = c.history_decay * reference + (1 - c.history_decay) * current
            self.activity_reference[name] = c.history_decay * activity_ref + (1 - c.history_decay) * activity
            if c.collapse_ratio > 0 and current <= c.collapse_ratio * reference:
                collapsed.append(name)
            # The inputs' shift is read where they enter: the layers below the top one (whose activity also
            # moves as it learns, and most after its own reset).
            below_top = name != top[trunk] or len(scores) == 1
            if c.shift_ratio > 0 and below_top and activity_ref > SCORE_EPS and activity > SCORE_EPS:
                ratio = activity / activity_ref
                if max(ratio, 1.0 / ratio) >= c.shift_ratio:
                    self.shift_at[trunk] = update
        shifted = {t for t, at in self.shift_at.items() if update - at <= c.shift_window_updates}
        if c.shift_ratio > 0:
            collapsed = [n for n in collapsed if n.split(".")[0] in shifted]
            # A shift is handled once its trunk's top layer is reset (the policy or value is then renewed):
            # the trunk's activity is re-baselined, so the gate closes until the inputs shift again (the
            # policy re-converging on the new network loses gradient too). A lower layer's reset leaves
            # the gate open.
            tops = set(top.values())
            handled = {n.split(".")[0] for n in collapsed if n in tops or c.collapse_scope == "all"}
            for s in scores:
                if s.layer.name.split(".")[0] in handled:
                    self.activity_reference[s.layer.name] = float(s.raw_forward.mean())
            for trunk in handled:
                self.shift_at.pop(trunk, None)
        if c.collapse_scope == "top":  # a trunk's lower layers lose gradient through its top layer
            collapsed = [n for n in collapsed if n in top.values()]
        return set(collapsed)

    def _backward_scores(self, s: LayerScores, collapsed: bool) -> torch.Tensor:
        """Per-neuron gradient scores, normalised by the layer mean or by max(layer mean, running mean)."""
        if not self.use_history:
            return s.backward
        if collapsed:
            return torch.zeros_like(s.raw_backward)  # the whole layer's gradient collapsed
        if self.config.neuron_reference == "layer":
            return s.backward
        current = float(s.raw_backward.mean())
        reference = self.gradient_reference.get(s.layer.name, current)
        return s.raw_backward / max(current, reference, SCORE_EPS)

    def _reset_whole(self, name: str, collapsed: set[str]) -> bool:
        # A collapsed top layer is reset whole, grace or not: a partial reset leaves the head's bias and the
        # kept units' weights, and with them the saturated policy.
        return name in collapsed and self.config.collapse_scope == "top"


class ContinualBackprop(PlasticityMethod[CbpConfig]):
    """Continual backprop (Dohare et al.): replace a small fraction of mature, low-utility units.

    Utility of a unit = running average of mean |h| times the sum of its |outgoing weights|, updated
    every update on the recent batch; ``cbp_replacement_rate`` of the mature units per update are replaced
    (fractional counts accumulate), lowest utility first.
    """

    name = "cbp"

    def __init__(self, config: CbpConfig) -> None:
        super().__init__(config)
        self.utility: dict[str, torch.Tensor] = {}
        self.age: dict[str, torch.Tensor] = {}
        self.pending: dict[str, float] = {}

    def after_update(
        self, model: ActorCritic, optimizer: torch.optim.Optimizer, update: int, batch: Rollout, loss_fn: LossFn
    ) -> dict[str, float]:
        layers = model.neuron_layers()
        with torch.no_grad(), record_activations(layers) as acts:
            model.get_action_and_value(batch.obs, batch.actions)
        reset = 0
        decay = self.config.cbp_decay
        with torch.no_grad():
            for layer in layers:
                out_mass = sum(
                    consumer.weight[:, cols.to(consumer.weight.device)].abs().sum(dim=(0, 2))
                    for consumer, cols in layer.outgoing
                )
                instant = (unit_activity(acts[layer.name], layer) * out_mass).cpu()
                util = self.utility.setdefault(layer.name, torch.zeros(layer.units))
                age = self.age.setdefault(layer.name, torch.zeros(layer.units, dtype=torch.long))
                util.mul_(decay).add_(instant, alpha=1 - decay)
                age += 1
                mature = age >= self.config.cbp_maturity_updates
                self.pending[layer.name] = self.pending.get(layer.name, 0.0) + self.config.cbp_replacement_rate * int(
                    mature.sum()
                )
                n = int(self.pending[layer.name])
                if n == 0 or not bool(mature.any()):
                    continue
                self.pending[layer.name] -= n
                candidates = mature.nonzero().flatten()
                order = util[candidates].argsort()[:n]
                mask = torch.zeros(layer.units, dtype=torch.bool)
                mask[candidates[order]] = True
                reset += reset_neurons(layer, mask.to(layer.incoming.weight.device), optimizer, self.generator)
                util[mask] = 0.0
                age[mask] = 0
        self.resets += reset
        return {"plasticity/neurons_reset": float(reset)} if reset else {}


class L2Init(PlasticityMethod[L2InitConfig]):
    """L2 Init (Kumar et al. 2023): regularise the parameters towards their initial values.

    Every minibatch's loss gains ``coef * sum_i (theta_i - theta0_i) ** 2`` over all parameters. The
    initial values are the network `fresh_like` builds from the method's seed: the run's own
    initialisation when it trained from scratch with that seed (`new_state` builds the network the same
    way), and a fresh draw from the same initial distribution when the run started from a trained
    network (a fine-tune, a retraining round). Either way nothing needs saving to resume.
    """

    name = "l2-init"

    def __init__(self, config: L2InitConfig) -> None:
        super().__init__(config)
        self.initial: dict[str, torch.Tensor] = {}
        self.distance = 0.0  # sum of squares at the last minibatch

    def _initial(self, model: ActorCritic) -> dict[str, torch.Tensor]:
        if not self.initial:
            self.initial = {n: p.detach() for n, p in fresh_like(model, self.config.seed).named_parameters()}
        return self.initial

    def loss_term(
        self, model: ActorCritic, rollout: Rollout, minibatch: torch.Tensor, *, policy_loss: float | None = None
    ) -> torch.Tensor | None:
        initial = self._initial(model)
        distance = torch.stack([(p - initial[n]).pow(2).sum() for n, p in model.named_parameters()]).sum()
        self.distance = float(distance.detach())
        return self.config.coef * distance

    def after_update(
        self, model: ActorCritic, optimizer: torch.optim.Optimizer, update: int, batch: Rollout, loss_fn: LossFn
    ) -> dict[str, float]:
        return {"plasticity/l2_init_distance": self.distance}


class LayerNormWeightDecay(PlasticityMethod[LnWdConfig]):
    """LayerNorm and weight decay (Lyle et al. 2024); Normalize-and-Project with ``project``.

    LayerNorm is part of the network (`NetworkConfig.layer_norm`, switched on by `network_for` where the
    run builds its network). After every optimizer step every linear layer's weight matrix decays,
    ``w <- w - lr * weight_decay * w`` (decoupled from Adam's moments, as AdamW does), or with
    ``project`` each layer that LayerNorm follows (the merged layers) has its weight matrix rescaled to
    the norm it had at the start of the run: there the scale of the weights changes only the effective
    step size, not the function. Biases and LayerNorm's own parameters are left alone.
    """

    name = "ln-wd"

    def __init__(self, config: LnWdConfig) -> None:
        super().__init__(config)
        self.norms: dict[str, float] = {}  # hidden layer -> its weight matrix's norm before the run's first step

    def loss_term(
        self, model: ActorCritic, rollout: Rollout, minibatch: torch.Tensor, *, policy_loss: float | None = None
    ) -> torch.Tensor | None:
        if self.config.project and not self.norms:  # called before every step: the first sees the start
            self.norms = {layer.name: float(layer.incoming.weight.detach().norm()) for layer in _normalised(model)}
        return None

    @torch.no_grad()
    def after_step(self, model: ActorCritic, optimizer: torch.optim.Optimizer) -> None:
        if self.config.project:
            for layer in _normalised(model):
                weight = layer.incoming.weight
                target = self.norms.setdefault(layer.name, float(weight.norm()))
                weight.mul_(target / float(weight.norm().clamp_min(SCORE_EPS)))
            return
        lr = float(optimizer.param_groups[0]["lr"])
        for module in model.modules():
            if isinstance(module, nn.Linear) and module.weight.requires_grad:
                module.weight.mul_(1.0 - lr * self.config.weight_decay)

    def after_update(
        self, model: ActorCritic, optimizer: torch.optim.Optimizer, update: int, batch: Rollout, loss_fn: LossFn
    ) -> dict[str, float]:
        return {}


def _normalised(model: ActorCritic) -> list[NeuronLayer]:
    """The model's neuron layers whose pre-activations LayerNorm normalises (where ``layer_norm`` is on)."""
    return [layer for layer in model.neuron_layers() if layer.name.rsplit(".", 1)[-1] in NORMALISED_LAYERS]


class PlasticityInjection(PlasticityMethod[InjectionConfig]):
    """Plasticity injection (Nikishin et al. 2023): freeze the heads, learn a change to them from scratch.

    At ``at_update`` (and every ``every_updates`` after, up to ``max_injections`` heads in the network)
    `ActorCritic.inject` freezes the merged hidden layers and output layers, adds freshly initialised ones
    and a frozen twin of them, and outputs old + new - twin: the same function at that moment, with fresh
    units to learn the change. The encoders (the trunks' branches) keep learning. The new parameters join
    the optimizer in a group of their own, starting as fresh Adam entries.
    """

    name = "injection"

    def after_update(
        self, model: ActorCritic, optimizer: torch.optim.Optimizer, update: int, batch: Rollout, loss_fn: LossFn
    ) -> dict[str, float]:
        if not self.config.due(update) or model.config.injected_heads >= self.config.max_injections:
            return {}
        self.resets += 1
        seed = stream_seed(seeding.FRESH_WEIGHTS, self.config.seed, 1_000 + model.config.injected_heads)
        optimizer.add_param_group({"params": model.inject(seed)})
        return {"plasticity/injected": 1.0}


class ChurnReduction(PlasticityMethod[CChainConfig]):
    """C-CHAIN (Tang et al. 2025): reduce churn, the change of the outputs on data outside the minibatch.

    Every step's loss gains ``policy_coef * KL(pi_previous || pi) + value_coef * (V - V_previous)^2``,
    averaged over a reference batch of ``reference_size`` transitions drawn from the update's rollout
    outside the step's minibatch; ``previous`` is the network as it was one optimizer step earlier (the
    churn the last step caused on data it did not train on is what the term pulls back). The first step
    of a run has no earlier network, so its term is zero.

    With ``target_relative_scale`` the policy coefficient is set automatically, as the paper does: after
    ``auto_warmup_updates`` updates, after every update it becomes ``target_relative_scale`` times the
    mean |policy loss| over the last ``auto_window_updates`` updates divided by their mean policy churn,
    so the churn term stays at that fraction of the RL loss whatever the reward scale.
    """

    name = "c-chain"

    def __init__(self, config: CChainConfig) -> None:
        super().__init__(config)
        self.sampler = torch.Generator().manual_seed(stream_seed(seeding.METHOD_SAMPLER, config.seed, 29))
        self.previous: ActorCritic | None = None
        self.policy_churn = 0.0
        self.value_churn = 0.0
        self.policy_coef = config.policy_coef
        # Per update: the mean |policy loss| and mean policy churn of its steps (for the automatic coefficient).
        self.step_losses: list[float] = []
        self.step_churns: list[float] = []
        self.update_losses: list[float] = []
        self.update_churns: list[float] = []
        self.updates_seen = 0

    def _remember(self, model: ActorCritic) -> None:
        """``previous`` <- the network as it is now (before the coming step)."""
        if self.previous is None or self.previous.config != model.config:
            self.previous = copy.deepcopy(model).requires_grad_(False)
            return
        with torch.no_grad():
            for kept, now in zip(self.previous.parameters(), model.parameters(), strict=True):
                kept.copy_(now)

    def reference(self, rollout: Rollout, minibatch: torch.Tensor) -> torch.Tensor:
        """Indices of the reference batch: up to ``reference_size`` transitions of ``rollout`` off ``minibatch``."""
        outside = torch.ones(len(rollout), dtype=torch.bool)
        outside[minibatch.cpu()] = False
        candidates = outside.nonzero().flatten()
        pick = torch.randperm(len(candidates), generator=self.sampler)[: self.config.reference_size]
        return candidates[pick].to(rollout.actions.device)

    def loss_term(
        self, model: ActorCritic, rollout: Rollout, minibatch: torch.Tensor, *, policy_loss: float | None = None
    ) -> torch.Tensor | None:
        previous = self.previous
        index = self.reference(rollout, minibatch)
        term: torch.Tensor | None = None
        if previous is not None and previous.config == model.config and index.numel():
            obs = rollout.obs[index]
            with torch.no_grad():
                old_log_probs = torch.log_softmax(previous.logits(obs), dim=-1)
                old_values = previous.get_value(obs)
            log_probs = torch.log_softmax(model.logits(obs), dim=-1)
            kl = (old_log_probs.exp() * (old_log_probs - log_probs)).sum(dim=-1).mean()
            value = (model.get_value(obs) - old_values).pow(2).mean()
            self.policy_churn, self.value_churn = float(kl.detach()), float(value.detach())
            if policy_loss is not None:
                self.step_losses.append(abs(policy_loss))
                self.step_churns.append(self.policy_churn)
            term = self.policy_coef * kl + self.config.value_coef * value
        self._remember(model)
        return term

    def after_update(
        self, model: ActorCritic, optimizer: torch.optim.Optimizer, update: int, batch: Rollout, loss_fn: LossFn
    ) -> dict[str, float]:
        self.updates_seen += 1
        if self.step_losses:
            window = self.config.auto_window_updates
            self.update_losses = [*self.update_losses, sum(self.step_losses) / len(self.step_losses)][-window:]
            self.update_churns = [*self.update_churns, sum(self.step_churns) / len(self.step_churns)][-window:]
            self.step_losses, self.step_churns = [], []
        target = self.config.target_relative_scale
        if target is not None and self.updates_seen >= self.config.auto_warmup_updates and self.update_losses:
            mean_loss = sum(self.update_losses) / len(self.update_losses)
            mean_churn = sum(self.update_churns) / len(self.update_churns)
            self.policy_coef = target * mean_loss / (mean_churn + CHURN_EPS)
        return {"plasticity/policy_churn_kl": self.policy_churn, "plasticity/value_churn": self.value_churn,
                "plasticity/policy_churn_coef": self.policy_coef}  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "policy_coef": self.policy_coef, "update_losses": list(self.update_losses),
                "update_churns": list(self.update_churns), "updates_seen": self.updates_seen}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any], *, same_run: bool) -> None:
        super().load_state_dict(state, same_run=same_run)
        if same_run:  # a new run of the network starts its own running means and coefficient
            self.policy_coef = float(state.get("policy_coef", self.config.policy_coef))
            self.update_losses = [float(v) for v in state.get("update_losses", [])]
            self.update_churns = [float(v) for v in state.get("update_churns", [])]
            self.updates_seen = int(state.get("updates_seen", 0))


def erfi(x: torch.Tensor) -> torch.Tensor:
    """The imaginary error function, erfi(x) = -i erf(ix) = 2 / sqrt(pi) * sum_n x^(2n+1) / (n! (2n+1)), in float64.

    Every term of the series has the sign of x, so it is summed in the log domain (no cancellation);
    |x| is clipped to `ERFI_MAX_ARG`.
    """
    x = x.to(torch.float64).clamp(-ERFI_MAX_ARG, ERFI_MAX_ARG)
    n = torch.arange(ERFI_TERMS, dtype=torch.float64)
    log_terms = (2 * n + 1) * torch.log(x.abs())[..., None] - torch.lgamma(n + 1) - torch.log(2 * n + 1)
    return torch.sign(x) * (2.0 / math.sqrt(math.pi)) * torch.exp(torch.logsumexp(log_terms, dim=-1))


class Trac(PlasticityMethod[TracConfig]):
    """TRAC (Muppidi et al. 2024): a parameter-free scale on the base optimizer's path from a reference point.

    The parameters are ``theta_ref + S * delta``: ``theta_ref`` the parameters when the run (or round)
    began, ``delta`` the sum of every step the base optimizer (Adam) has taken, and ``S`` a scale tuned
    online. After each optimizer step: ``h = <delta, g>`` (g the clipped gradient the step used, delta
    before the step); ``delta`` grows by the step; every tuner j (one per discount ``beta_j``) updates
    ``v_j = beta_j^2 v_j + h^2`` and ``sigma_j = beta_j sigma_j - h`` and proposes
    ``s_j = scale_init / erfi(1 / sqrt 2) * erfi(sigma_j / (sqrt(2 v_j) + eps))``; ``S = max(0, sum_j s_j)``
    and the parameters are set to ``theta_ref + S * delta``. When gradients keep pointing along the path
    (h < 0) the scale grows; when they turn against it, it shrinks back towards the reference, which is
    how TRAC stays plastic. ``delta`` is kept as it is (not recovered from the parameters), so a scale
    that falls to 0 keeps the path. A resumed run keeps the tuners and restarts the reference at the
    parameters it resumes from (the reference and the path are not saved).
    """

    name = "trac"

    def __init__(self, config: TracConfig) -> None:
        super().__init__(config)
        self.reference: dict[str, torch.Tensor] = {}
        self.path: dict[str, torch.Tensor] = {}  # delta: the base optimizer's steps, summed
        self.last: dict[str, torch.Tensor] = {}  # the parameters TRAC set last (where the next step starts)
        self.betas = torch.tensor(config.betas, dtype=torch.float64)
        self.variance = torch.zeros(len(config.betas), dtype=torch.float64)
        self.sigma = torch.zeros(len(config.betas), dtype=torch.float64)
        self.scale = 0.0
        #: erfi(1 / sqrt 2): a tuner whose gradients all point along the path proposes scale_init.
        self.erfi_unit = float(erfi(torch.tensor(1.0 / math.sqrt(2.0), dtype=torch.float64)))

    def _start(self, model: ActorCritic) -> None:
        for name, param in model.named_parameters():
            if param.requires_grad:
                self.reference[name] = param.detach().clone()
                self.path[name] = torch.zeros_like(param)
                self.last[name] = param.detach().clone()

    def loss_term(
        self, model: ActorCritic, rollout: Rollout, minibatch: torch.Tensor, *, policy_loss: float | None = None
    ) -> torch.Tensor | None:
        if not self.reference:  # called before every step: the first sees the run's starting point
            self._start(model)
        return None

    @torch.no_grad()
    def after_step(self, model: ActorCritic, optimizer: torch.optim.Optimizer) -> None:
        if not self.reference:
            self._start(model)
            return
        stepped = [(n, p, p.grad) for n, p in model.named_parameters() if p.grad is not None and n in self.reference]
        if not stepped:
            return
        h = float(torch.stack([(self.path[n] * g).sum(dtype=torch.float64) for n, _, g in stepped]).sum())
        for name, param, _ in stepped:
            self.path[name] += param - self.last[name]
        self.variance = self.betas**2 * self.variance + h * h
        self.sigma = self.betas * self.sigma - h
        c = self.config
        ratio = self.sigma / (math.sqrt(2.0) * torch.sqrt(self.variance) + c.eps)
        proposals = c.scale_init / self.erfi_unit * erfi(ratio)
        self.scale = max(float(proposals.sum()), 0.0)
        for name, param, _ in stepped:
            param.copy_(self.reference[name] + self.scale * self.path[name])
            self.last[name].copy_(param)

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() | {"variance": self.variance.tolist(), "sigma": self.sigma.tolist(),
                                       "scale": self.scale}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any], *, same_run: bool) -> None:
        super().load_state_dict(state, same_run=same_run)
        if same_run and len(state.get("variance", [])) == len(self.config.betas):
            self.variance = torch.tensor(state["variance"], dtype=torch.float64)
            self.sigma = torch.tensor(state["sigma"], dtype=torch.float64)
            self.scale = float(state["scale"])

    def after_update(
        self, model: ActorCritic, optimizer: torch.optim.Optimizer, update: int, batch: Rollout, loss_fn: LossFn
    ) -> dict[str, float]:
        norm = float(torch.stack([d.pow(2).sum() for d in self.path.values()]).sum().sqrt()) if self.path else 0.0
        return {"plasticity/trac_scale": self.scale, "plasticity/trac_path_norm": norm}


_REGISTRY: dict[str, Callable[[Any], PlasticityMethod[Any]]] = {
    "none": NoMethod,
    "reset": PeriodicReset,
    "redo": ReDo,
    "shrink-perturb": ShrinkPerturb,
    "cbp": ContinualBackprop,
    "resin": ReSiN,
    "regrama": ReGraMa,
    "l2-init": L2Init,
    "ln-wd": LayerNormWeightDecay,
    "injection": PlasticityInjection,
    "c-chain": ChurnReduction,
    "trac": Trac,
    "fresh": FreshAtShift,
}


def make_method(config: MethodConfig) -> PlasticityMethod[Any]:
    """The method ``config.method`` names, with ``config``."""
    return _REGISTRY[config.method](config)


class Plasticity:
    """The trainer's hook: runs the method and logs diagnostics every ``diagnose_every_updates``."""

    def __init__(self, config: MethodConfig) -> None:
        self.config = config
        self.method = make_method(config)
        self.sampler = torch.Generator().manual_seed(stream_seed(seeding.METHOD_SAMPLER, config.seed, 3))
        self.held_out: torch.Tensor | None = None
        self.held_out_probs: torch.Tensor | None = None

    def begin_phase(self, model: ActorCritic, optimizer: torch.optim.Optimizer, phase: int) -> dict[str, float]:
        """Tell the method the training distribution changed."""
        return self.method.begin_phase(model, optimizer, phase)

    def loss_term(
        self, model: ActorCritic, rollout: Rollout, minibatch: torch.Tensor, *, policy_loss: float | None = None
    ) -> torch.Tensor | None:
        """The method's regulariser for the minibatch ``rollout.take(minibatch)``, if it has one."""
        return self.method.loss_term(model, rollout, minibatch, policy_loss=policy_loss)

    def after_step(self, model: ActorCritic, optimizer: torch.optim.Optimizer) -> None:
        """Let the method act after an optimizer step."""
        self.method.after_step(model, optimizer)

    def state_dict(self) -> dict[str, Any]:
        """The method's state (JSON-ready), to resume a run or carry it into the next round."""
        return self.method.state_dict()

    def load_state_dict(self, state: dict[str, Any], *, same_run: bool) -> None:
        """Restore `state_dict` (``same_run``: the update count continues; else a new run of the same network)."""
        self.method.load_state_dict(state, same_run=same_run)

    def diagnose(self, model: ActorCritic, batch: Rollout, loss_fn: LossFn) -> dict[str, float]:
        """All ``plasticity/*`` diagnostics on ``batch``."""
        c = self.config
        metrics = summarise(layer_scores(model, batch, loss_fn), c.tau_forward, c.tau_backward)
        metrics["plasticity/weight_magnitude"] = weight_magnitude(model)
        if self.held_out is None:
            self.held_out = batch.obs.detach().clone()  # the first diagnostic batch stays the churn probe
        probs = policy_probs(model, self.held_out)
        if self.held_out_probs is not None:
            metrics["plasticity/churn"] = churn(self.held_out_probs, probs)
        self.held_out_probs = probs
        return metrics

    def after_update(
        self,
        model: ActorCritic,
        optimizer: torch.optim.Optimizer,
        update: int,
        rollout: Rollout,
        loss_fn: Callable[[Rollout], torch.Tensor],
    ) -> dict[str, float]:
        n = len(rollout)
        pick = torch.randperm(n, generator=self.sampler)[: min(self.config.batch_size, n)]
        batch = rollout.take(pick.to(rollout.actions.device))
        metrics: dict[str, float] = {}
        every = self.config.diagnose_every_updates
        if every and update % every == 0:
            metrics.update(self.diagnose(model, batch, loss_fn))
        metrics.update(self.method.after_update(model, optimizer, update, batch, loss_fn))
        return metrics
