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
widen the middle layer, and their output layers (the twins' negated) stack under the head's. A network
with LayerNorm (`NetworkConfig.layer_norm`, a training option) is not an affine map before its ReLUs
and cannot be folded: `DenseActor` refuses it, naming why.
"""

from __future__ import annotations

import copy

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


class DenseActor(nn.Module):
    """The logits of an `ActorCritic`'s actor, folded into three dense layers."""

    a_weight: torch.Tensor
    a_bias: torch.Tensor
    b_weight: torch.Tensor
    b_bias: torch.Tensor
    c_weight: torch.Tensor
    c_bias: torch.Tensor

    def __init__(self, model: ActorCritic) -> None:
        super().__init__()
        if model.config.layer_norm:
            raise ValueError("the network has LayerNorm, which cannot be folded into dense layers for serving")
        matrix, bias = _branch_map(model.actor_trunk, model.width)
        dtype = model.actor_head.weight.dtype
        device = model.actor_head.weight.device
        # (merged layer, output layer, sign) of the head and of every injection's trained copy and twin.
        paths: list[tuple[nn.Linear, nn.Linear, float]] = [(model.actor_trunk.hidden, model.actor_head, 1.0)]
        for injection in model.injected():
            paths.append((injection.trained.actor_hidden, injection.trained.actor_head, 1.0))
            paths.append((injection.twin.actor_hidden, injection.twin.actor_head, -1.0))
        with torch.no_grad():
            b_weight = torch.cat([hidden.weight.t() for hidden, _, _ in paths], dim=1)
            b_bias = torch.cat([hidden.bias for hidden, _, _ in paths])
            c_weight = torch.cat([sign * head.weight.t() for _, head, sign in paths], dim=0)
            c_bias = torch.stack([sign * head.bias for _, head, sign in paths]).sum(dim=0)
        self.register_buffer("a_weight", matrix.to(dtype).to(device).contiguous())
        self.register_buffer("a_bias", bias.to(dtype).to(device))
        self.register_buffer("b_weight", b_weight.contiguous().clone())
        self.register_buffer("b_bias", b_bias.clone())
        self.register_buffer("c_weight", c_weight.contiguous().clone())
        self.register_buffer("c_bias", c_bias.clone())

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, n_levels]`` of observations ``[B, 6, W]``."""
        h = torch.relu(torch.addmm(self.a_bias, obs.flatten(1), self.a_weight))
        h = torch.relu(torch.addmm(self.b_bias, h, self.b_weight))
        return torch.addmm(self.c_bias, h, self.c_weight)
