"""The dense (folded) actor computes the same logits as the eager actor."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from policy.learning.config import NetworkConfig
from policy.learning.dense import DenseActor
from policy.learning.network import ActorCritic


@settings(max_examples=40, deadline=None)
@given(
    width=st.integers(4, 10),
    n_levels=st.integers(1, 4),  # a model reads the sizes of up to width levels
    hidden=st.integers(1, 24),
    filters=st.integers(1, 24),
    kernel=st.integers(1, 4),
    shared=st.booleans(),
    layer_norm=st.booleans(),
    injected=st.integers(0, 2),
    seed=st.integers(0, 2**16),
)
def test_dense_actor_matches_the_eager_actor(
    width: int, n_levels: int, hidden: int, filters: int, kernel: int, shared: bool, layer_norm: bool,
    injected: int, seed: int,
) -> None:  # fmt: skip
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # layer_init draws from torch's default generator
    config = NetworkConfig(hidden=hidden, filters=filters, kernel=kernel, shared_trunk=shared, layer_norm=layer_norm,
                           injected_heads=injected)  # fmt: skip
    n_levels = min(n_levels + kernel, width)
    model = ActorCritic(width, n_levels, config)
    with torch.no_grad():  # non-zero biases (and LayerNorm scales and shifts, twins unlike their copies) too
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    obs = 4.0 * torch.rand(33, 6, width, generator=gen) - 1.0
    dense = DenseActor(model)
    with torch.no_grad():
        expected = model.logits(obs)
        got = dense(obs)
    assert got.shape == expected.shape == (33, n_levels)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_dense_actor_is_a_snapshot_not_a_view() -> None:
    model = ActorCritic(8, 6)
    dense = DenseActor(model)
    obs = torch.rand(5, 6, 8)
    with torch.no_grad():
        before = dense(obs).clone()
        for p in model.parameters():
            p.add_(1.0)
        assert torch.equal(dense(obs), before)  # training the model on does not change what is served
        assert not dense.a_weight.requires_grad
