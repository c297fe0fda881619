"""Silent-neuron diagnostics: per-neuron forward (ReDo) and backward (gradient) scores, and summary metrics.

A neuron's forward score is its mean |activation| over a batch (and over positions, for a convolution
filter) divided by the mean of that over its layer (ReDo's normalisation). Its backward score is the mean
|gradient| of the training loss with respect to its incoming weights and bias, normalised the same way.
A neuron whose score is at or below ``tau`` is *dormant* (forward) or *gradient-silent* (backward); with
``tau = 0`` only exact zeros count. A dead ReLU neuron is both (no activation, so no gradient either);
a neuron that fires but whose outgoing weights are zero is only gradient-silent: that second kind is what
the backward view adds over ReDo.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from policy.learning.network import ActorCritic, NeuronLayer
from policy.learning.ppo import Rollout

LossFn = Callable[[Rollout], torch.Tensor]

#: Floor of a layer's mean score, so that an all-silent layer scores 0 everywhere instead of NaN.
SCORE_EPS = 1e-12


@dataclass(frozen=True)
class LayerScores:
    """Normalised forward and backward scores ``[units]`` of one layer, the raw ones, and its activations."""

    layer: NeuronLayer
    forward: torch.Tensor
    backward: torch.Tensor
    activations: torch.Tensor  # [B, positions * units], as recorded
    raw_forward: torch.Tensor  # mean |activation| per neuron
    raw_backward: torch.Tensor  # mean |incoming gradient| per neuron


@contextmanager
def record_activations(layers: list[NeuronLayer]) -> Iterator[dict[str, torch.Tensor]]:
    """Record each layer's activation output by name while the block runs; hooks are always removed."""
    store: dict[str, torch.Tensor] = {}

    def hook_for(name: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Tensor], None]:
        def hook(_module: nn.Module, _inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            store[name] = output.detach()

        return hook

    handles = [layer.activation.register_forward_hook(hook_for(layer.name)) for layer in layers]
    try:
        yield store
    finally:
        for handle in handles:
            handle.remove()


def normalise(score: torch.Tensor) -> torch.Tensor:
    """Divide per-neuron scores by their layer mean (ReDo's normalisation)."""
    return score / score.mean().clamp_min(SCORE_EPS)


def unit_activity(activations: torch.Tensor, layer: NeuronLayer) -> torch.Tensor:
    """Mean |activation| per neuron ``[units]`` over the batch and over positions."""
    return activations.reshape(activations.shape[0], layer.positions, layer.units).abs().mean(dim=(0, 1))


def incoming_gradient(layer: NeuronLayer) -> torch.Tensor:
    """Mean |gradient| of each neuron's incoming weights and bias ``[units]`` (zeros where no gradient)."""
    weight, bias = layer.incoming.weight, layer.incoming.bias
    grad_w = weight.grad if weight.grad is not None else torch.zeros_like(weight)
    total = grad_w.abs().sum(dim=1)
    count = weight.shape[1]
    if bias is not None:
        total = total + (bias.grad.abs() if bias.grad is not None else torch.zeros_like(bias))
        count += 1
    return total / count


def layer_scores(model: ActorCritic, batch: Rollout, loss_fn: LossFn) -> list[LayerScores]:
    """Forward and backward scores of every neuron layer on ``batch`` (leaves no gradients behind)."""
    layers = model.neuron_layers()
    model.zero_grad(set_to_none=True)
    with record_activations(layers) as acts:
        loss = loss_fn(batch)
    loss.backward()
    out = []
    with torch.no_grad():
        for layer in layers:
            activations = acts[layer.name]
            activity, gradient = unit_activity(activations, layer), incoming_gradient(layer)
            out.append(LayerScores(layer, normalise(activity), normalise(gradient), activations, activity, gradient))
    model.zero_grad(set_to_none=True)
    return out


def effective_rank(features: torch.Tensor) -> float:
    """exp of the entropy of the normalised singular values of ``features`` ``[B, d]`` (Roy & Vetterli)."""
    singular = torch.linalg.svdvals(features.double())
    total = singular.sum()
    if total <= 0:
        return 0.0
    p = singular / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def silent_mask(scores: LayerScores, tau_forward: float, tau_backward: float, rule: str) -> torch.Tensor:
    """Which neurons are silent under ``rule``: forward, backward, both (and) or either (or)."""
    dormant = scores.forward <= tau_forward
    grad_silent = scores.backward <= tau_backward
    if rule == "forward":
        return dormant
    if rule == "backward":
        return grad_silent
    if rule == "both":
        return dormant & grad_silent
    if rule == "either":
        return dormant | grad_silent
    raise ValueError(f"unknown silent rule {rule!r} (forward, backward, both, either)")


def summarise(scores: list[LayerScores], tau_forward: float, tau_backward: float) -> dict[str, float]:
    """The ``plasticity/*`` ratios over all neurons, plus the actor's penultimate layer on its own."""

    def ratios(prefix: str, picked: list[LayerScores]) -> dict[str, float]:
        n = max(sum(s.layer.units for s in picked), 1)

        def r(masks: list[torch.Tensor]) -> float:
            return float(sum(int(m.sum()) for m in masks)) / n

        return {
            f"{prefix}dormant_ratio": r([s.forward <= tau_forward for s in picked]),
            f"{prefix}dormant_ratio_tau0": r([s.forward <= 0 for s in picked]),
            f"{prefix}grad_silent_ratio": r([s.backward <= tau_backward for s in picked]),
            f"{prefix}silent_ratio": r([silent_mask(s, tau_forward, tau_backward, "both") for s in picked]),
        }

    out = ratios("plasticity/", scores)
    penultimate = [s for s in scores if s.layer.name.endswith("hidden") and not s.layer.name.startswith("critic")]
    out.update(ratios("plasticity/penultimate_", penultimate))
    if penultimate:
        features = penultimate[0].activations
        out["plasticity/effective_rank"] = effective_rank(features)
        out["plasticity/feature_norm"] = float(features.norm(dim=1).mean())
    return out


@torch.no_grad()
def weight_magnitude(model: nn.Module) -> float:
    """Mean |parameter| over all parameters."""
    params = [p.detach().abs() for p in model.parameters()]
    return float(sum(p.sum() for p in params) / sum(p.numel() for p in params))


@torch.no_grad()
def policy_probs(model: ActorCritic, obs: torch.Tensor) -> torch.Tensor:
    """Action probabilities ``[B, levels]`` (for churn)."""
    return torch.softmax(model.logits(obs), dim=-1)


def churn(before: torch.Tensor, after: torch.Tensor) -> float:
    """Mean total-variation distance between two batches of action distributions."""
    return float(0.5 * (before - after).abs().sum(dim=-1).mean())
