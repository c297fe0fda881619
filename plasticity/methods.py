"""Plasticity methods behind one interface, and the hook the PPO trainer calls after every update.

Every method implements ``after_update(model, optimizer, update, batch, loss_fn) -> stats`` and
``begin_phase(model, optimizer, phase)``; `Plasticity` adds the periodic diagnostics and is what
`policy.learning.ppo.train` receives, so the trainer never knows which method runs.

Neuron resets (ReDo, CBP, ReSiN) share `reset_neurons`: incoming weights re-drawn from the layer's
initial distribution (orthogonal rows, gain sqrt 2, bias 0), outgoing weights zeroed so that the
network computes exactly the same function right after the reset, and the optimizer moments and step
counts of exactly those entries zeroed through ``optimizer.state[param]``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from abr_common import seeding
from abr_common.seeding import stream_seed
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
from plasticity.names import MethodName
from policy.learning.network import ActorCritic, NeuronLayer
from policy.learning.ppo import Rollout

SilentRule = Literal["both", "either", "forward", "backward"]

#: Updates between checks for silent neurons, per method. ReSiN checks twice as often as ReDo: a policy's
#: gradient collapses within a few updates of a network shift, and every update it keeps training silent
#: neurons delays recovery (on the jittered schedules 5 scored at least as well as 10 on every schedule;
#: BENCHMARKS.md). ReDo's forward-only score does not see that collapse at any cadence.
CHECK_EVERY_UPDATES: dict[str, int] = {"resin": 5}
DEFAULT_CHECK_EVERY_UPDATES = 10

#: Gain of the trunk layers' orthogonal init (`policy.learning.network.layer_init`'s default): resets redraw from it.
TRUNK_GAIN = math.sqrt(2.0)


class PlasticityConfig(BaseModel):
    """Which method runs, how often, and its thresholds (recorded with every run)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: MethodName = Field("none", description="none, reset, redo, shrink-perturb, cbp, resin or fresh.")
    every_updates: int | None = Field(
        None, ge=1,
        description="ReDo / ReSiN: check for (and reset) silent neurons every this many updates (None: the "
        "method's own cadence, `CHECK_EVERY_UPDATES`).",
    )  # fmt: skip
    diagnose_every_updates: int = Field(10, ge=0, description="Log plasticity/* every this many updates (0: never).")
    batch_size: int = Field(1024, ge=2, description="Recent transitions the scores are computed on.")
    tau_forward: float = Field(0.025, ge=0, description="Dormant when the normalised activation score <= this.")
    tau_backward: float = Field(0.025, ge=0, description="Gradient-silent when the normalised gradient score <= this.")
    rule: SilentRule = Field("either", description="ReSiN: silent when dormant and/or gradient-silent.")
    backward_reference: Literal["layer", "history"] = Field(
        "history",
        description="ReSiN: normalise gradient scores by the layer's current mean (layer) or by the larger of that "
        "and its running mean over past checks (history), so a collapse of the whole layer's gradient counts.",
    )
    history_decay: float = Field(0.9, ge=0, lt=1, description="ReSiN: per-check decay of the running layer mean.")
    collapse_ratio: float = Field(
        0.2, ge=0, lt=1,
        description="ReSiN with history: a layer whose mean gradient fell to <= this fraction of its running mean "
        "receives no gradient as a whole, and all its neurons count as gradient-silent (0: off).",
    )  # fmt: skip
    collapse_scope: Literal["all", "top"] = Field(
        "top",
        description="ReSiN: which layers can collapse as a whole: all, or only each trunk's top layer (the "
        "lower layers' gradient flows through it, so their silence is its consequence; their silent neurons "
        "are still reset one by one).",
    )
    shift_ratio: float = Field(
        3.0, ge=0,
        description="ReSiN: a layer's collapse counts only while its trunk's inputs have shifted, i.e. some layer's "
        "mean activity is >= this factor above or below its running mean (0: off). A policy converging in a "
        "stationary phase also loses gradient; that is not plasticity loss.",
    )  # fmt: skip
    neuron_reference: Literal["layer", "history"] = Field(
        "layer",
        description="ReSiN with history: normalise each neuron's gradient by max(layer mean, running mean) "
        "(history) or by the layer's current mean only (layer; whole-layer loss of gradient is then left to the "
        "collapse rule).",
    )
    shift_window_updates: int = Field(
        100, ge=1,
        description="ReSiN: how long after an input shift its trunk's collapse still counts (unless its top layer "
        "was reset for it first): a policy's gradient takes a few checks to collapse after the shift.",
    )  # fmt: skip
    grace_updates: int = Field(20, ge=0, description="Neurons reset less than this many updates ago are exempt.")
    futile_backoff: int = Field(
        6, ge=0,
        description="ReDo / ReSiN: a neuron still silent in the forward pass after its reset waits twice as long "
        "before the next (grace x 2^k, k <= this; 0: off). Units that cannot fire (a branch whose input is "
        "never positive) are then not re-drawn at every check.",
    )  # fmt: skip
    reset_every_updates: int = Field(100, ge=1, description="reset / shrink-perturb: period in updates.")
    reset_scope: Literal["all", "last"] = Field("last", description="reset: the whole network or its last layers.")
    shrink: float = Field(0.8, ge=0, le=1, description="shrink-perturb: theta <- shrink * theta + ...")
    perturb: float = Field(0.1, ge=0, description="... + perturb * (a freshly initialised theta).")
    cbp_replacement_rate: float = Field(1e-3, ge=0, description="cbp: fraction of mature units replaced per update.")
    cbp_maturity_updates: int = Field(50, ge=0, description="cbp: units younger than this are never replaced.")
    cbp_decay: float = Field(0.99, ge=0, lt=1, description="cbp: running-average decay of the utility.")
    seed: int = Field(0, description="Seeds re-initialisations and the diagnostic batch.")

    @property
    def check_every_updates(self) -> int:
        """How often ReDo / ReSiN check for silent neurons: ``every_updates``, else the method's cadence."""
        if self.every_updates is not None:
            return self.every_updates
        return CHECK_EVERY_UPDATES.get(self.method, DEFAULT_CHECK_EVERY_UPDATES)


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


class PlasticityMethod(ABC):
    """One way of keeping the network plastic."""

    name: str

    def __init__(self, config: PlasticityConfig) -> None:
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

    @abstractmethod
    def after_update(
        self, model: ActorCritic, optimizer: torch.optim.Optimizer, update: int, batch: Rollout, loss_fn: LossFn
    ) -> dict[str, float]:
        """Act after update number ``update`` (1-based); return stats such as neurons reset."""


class NoMethod(PlasticityMethod):
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


class PeriodicReset(PlasticityMethod):
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


class FreshAtShift(PlasticityMethod):
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


class ShrinkPerturb(PlasticityMethod):
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


class _NeuronResetter(PlasticityMethod):
    """Shared by ReDo and ReSiN: score, select silent neurons outside their grace period, reset them."""

    rule: str

    def __init__(self, config: PlasticityConfig) -> None:
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
            if name in collapsed and self.config.collapse_scope == "top":
                # A collapsed top layer is reset whole, grace or not: a partial reset leaves the head's bias
                # and the kept units' weights, and with them the saturated policy.
                mask[:] = True
            n = reset_neurons(s.layer, mask.to(s.forward.device), optimizer, self.generator)
            last[mask] = update
            futile[mask] += 1
            reset += n
        self.resets += reset
        total = sum(s.layer.units for s in scores)
        return {"plasticity/neurons_reset": float(reset), "plasticity/reset_fraction": reset / max(total, 1)}


class ReDo(_NeuronResetter):
    """ReDo (Sokar et al. 2023): reset neurons whose normalised activation score is <= tau."""

    name = "redo"
    rule = "forward"


class ReSiN(_NeuronResetter):
    """ReSiN: reset neurons silent forward and/or backward (``rule``), each direction with its threshold."""

    name = "resin"

    def __init__(self, config: PlasticityConfig) -> None:
        super().__init__(config)
        self.rule = config.rule
        self.use_history = config.backward_reference == "history"


class ContinualBackprop(PlasticityMethod):
    """Continual backprop (Dohare et al.): replace a small fraction of mature, low-utility units.

    Utility of a unit = running average of mean |h| times the sum of its |outgoing weights|, updated
    every update on the recent batch; ``cbp_replacement_rate`` of the mature units per update are replaced
    (fractional counts accumulate), lowest utility first.
    """

    name = "cbp"

    def __init__(self, config: PlasticityConfig) -> None:
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


_REGISTRY: dict[str, Callable[[PlasticityConfig], PlasticityMethod]] = {
    "none": NoMethod,
    "reset": PeriodicReset,
    "redo": ReDo,
    "shrink-perturb": ShrinkPerturb,
    "cbp": ContinualBackprop,
    "resin": ReSiN,
    "fresh": FreshAtShift,
}


def make_method(config: PlasticityConfig) -> PlasticityMethod:
    """The method ``config.method`` names."""
    return _REGISTRY[config.method](config)


class Plasticity:
    """The trainer's hook: runs the method and logs diagnostics every ``diagnose_every_updates``."""

    def __init__(self, config: PlasticityConfig) -> None:
        self.config = config
        self.method = make_method(config)
        self.sampler = torch.Generator().manual_seed(stream_seed(seeding.METHOD_SAMPLER, config.seed, 3))
        self.held_out: torch.Tensor | None = None
        self.held_out_probs: torch.Tensor | None = None

    def begin_phase(self, model: ActorCritic, optimizer: torch.optim.Optimizer, phase: int) -> dict[str, float]:
        """Tell the method the training distribution changed."""
        return self.method.begin_phase(model, optimizer, phase)

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
