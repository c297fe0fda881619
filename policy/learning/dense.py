"""The actor as three dense layers, for serving.

Every branch of a `Trunk` (the scalar branches and the 1-D convolutions) is an affine function of the
observation followed by a ReLU, so the whole branch layer is one affine map of the flattened
observation ``[B, 6 * W]`` to the merged layer's input ``[B, M]``: a convolution is a Toeplitz block
of that matrix, a scalar branch a single row. The actor then computes

    logits = relu(relu(x @ A + a) @ B + b) @ C + c

in three matrix products instead of some thirty small operations. At serving batch sizes a CPU spends
most of the eager forward pass dispatching those small operations, and a GPU launches one kernel per
operation, so the folded actor is several times faster at batch 1 and the same function (up to float
rounding) at every batch size. It is built from a trained model's weights and never trained itself.
Injected heads (`ActorCritic.inject`) read the same encoding, so they fold too: their merged layers
widen the middle layer, and their output layers (the twins' negated) stack under the head's.

With LayerNorm (`NetworkConfig.layer_norm`) the merged layers' pre-activations are normalised before
the ReLU, each path's ``hidden`` units as one group (the head's, then each injection's copy and twin:
contiguous in the middle layer), followed by each unit's LayerNorm scale and shift:

    h = relu(norm(h @ B + b) * g + s)        norm: per group, (v - mean) / sqrt(var + eps)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from policy.learning.network import ActorCritic, Trunk


def _branch_map(trunk: Trunk, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, a) with ``concat(branch pre-activations) = x.flatten(1) @ A + a``, found by probing in float64.

    Probing a float64 copy with the zero observation and the unit observations gives every entry of A
    exactly (each is one weight of the trunk, or zero), whatever the branch layout.
    """
    twin = copy.deepcopy(trunk).cpu().double()
    for name in twin.acts:
        twin.acts[name] = nn.Identity()
    captured: list[torch.Tensor] = []
    handle = twin.hidden.register_forward_hook(lambda _m, args, _out: captured.append(args[0]))
    try:
        with torch.no_grad():
            twin(torch.zeros(1, 6, width, dtype=torch.float64))
            twin(torch.eye(6 * width, dtype=torch.float64).reshape(-1, 6, width))
    finally:
        handle.remove()
    bias = captured[0][0]
    return captured[1] - bias, bias


@dataclass(frozen=True)
class NormGroups:
    """Where a LayerNorm network's folded middle layer normalises: groups of ``head_units`` columns, one
    per path (the head, each injection's copy and twin)."""

    head_units: int
    eps: float


class DenseActor(nn.Module):
    """The logits of an `ActorCritic`'s actor, folded into three dense layers."""

    a_weight: torch.Tensor
    a_bias: torch.Tensor
    b_weight: torch.Tensor
    b_bias: torch.Tensor
    c_weight: torch.Tensor
    c_bias: torch.Tensor

    #: With LayerNorm: per-unit scale and shift after the middle layer's normalisation (empty without).
    b_scale: torch.Tensor
    b_shift: torch.Tensor

    def __init__(self, model: ActorCritic) -> None:
        super().__init__()
        trunk = model.actor_trunk
        matrix, bias = _branch_map(trunk, model.width)
        dtype = model.actor_head.weight.dtype
        device = model.actor_head.weight.device
        # (merged layer, its LayerNorm, output layer, sign) of the head and of every injection's copy and twin.
        head_norm = _layer_norm(trunk.norms["hidden"]) if trunk.layer_norm else None
        paths: list[tuple[nn.Linear, nn.LayerNorm | None, nn.Linear, float]] = [
            (trunk.hidden, head_norm, model.actor_head, 1.0)
        ]
        for injection in model.injected():
            for part, sign in ((injection.trained, 1.0), (injection.twin, -1.0)):
                paths.append((part.actor_hidden, part.actor_norm, part.actor_head, sign))
        with torch.no_grad():
            b_weight = torch.cat([hidden.weight.t() for hidden, _, _, _ in paths], dim=1)
            b_bias = torch.cat([hidden.bias for hidden, _, _, _ in paths])
            c_weight = torch.cat([sign * head.weight.t() for _, _, head, sign in paths], dim=0)
            c_bias = torch.stack([sign * head.bias for _, _, head, sign in paths]).sum(dim=0)
        self.register_buffer("a_weight", matrix.to(dtype).to(device).contiguous())
        self.register_buffer("a_bias", bias.to(dtype).to(device))
        self.register_buffer("b_weight", b_weight.contiguous().clone())
        self.register_buffer("b_bias", b_bias.clone())
        self.register_buffer("c_weight", c_weight.contiguous().clone())
        self.register_buffer("c_bias", c_bias.clone())
        self.groups: NormGroups | None = None
        empty = torch.zeros(0, dtype=dtype, device=device)
        b_scale, b_shift = empty, empty
        if trunk.layer_norm:
            norms = [norm for _, norm, _, _ in paths if norm is not None]
            self.groups = NormGroups(head_units=trunk.hidden.out_features, eps=_one_eps(norms))
            with torch.no_grad():
                b_scale = torch.cat([norm.weight for norm in norms])
                b_shift = torch.cat([norm.bias for norm in norms])
            if b_scale.numel() != self.b_weight.shape[1]:
                raise ValueError("the network's LayerNorms do not cover its folded middle layer")
        self.register_buffer("b_scale", b_scale.detach().clone())
        self.register_buffer("b_shift", b_shift.detach().clone())

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, n_levels]`` of observations ``[B, 6, W]``."""
        groups = self.groups
        pre = torch.addmm(self.a_bias, obs.flatten(1), self.a_weight)
        pre = torch.addmm(self.b_bias, torch.relu(pre), self.b_weight)
        if groups is not None:
            pre = _grouped_norm(pre, groups.head_units, groups.eps) * self.b_scale + self.b_shift
        return torch.addmm(self.c_bias, torch.relu(pre), self.c_weight)


def _grouped_norm(values: torch.Tensor, group: int, eps: float) -> torch.Tensor:
    """``values [B, G * group]`` normalised over each run of ``group`` columns (LayerNorm without its affine)."""
    grouped = values.reshape(values.shape[0], -1, group)
    return nn.functional.layer_norm(grouped, (group,), eps=eps).reshape(values.shape)


def _layer_norm(module: nn.Module) -> nn.LayerNorm:
    if not isinstance(module, nn.LayerNorm):
        raise TypeError(f"expected a LayerNorm, got {type(module).__name__}")
    return module


def _one_eps(norms: list[nn.LayerNorm]) -> float:
    """The LayerNorms' common epsilon (the network builds them all alike)."""
    values = {float(norm.eps) for norm in norms}
    if len(values) != 1:
        raise ValueError(f"the network's LayerNorms use different epsilons {sorted(values)}")
    return values.pop()
