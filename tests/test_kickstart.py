"""Kickstarting: PPO with an imitation term towards a causal expert that follows the actor's sessions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from policy.base import make_policy
from policy.learning.config import NetworkConfig, PPOConfig
from policy.learning.ppo import Rollout, expert_coef, ppo_loss
from policy.learning.rollouts import RolloutBatch, SessionRollouts, make_expert
from policy.learning.run import TrainingRun
from simulator.envs import ABRVectorEnv
from simulator.link import LinkConfig
from simulator.video import Video
from tests.helpers import make_trace

SMALL = NetworkConfig(hidden=16, filters=8)
VIDEO = Video.synthetic(n_chunks=6, seed=0)
TRACES = [
    make_trace(list(np.arange(0.0, 60.0)), list(np.linspace(0.5, 5, 60)), name="up"),
    make_trace(list(np.arange(0.0, 60.0)), list(np.linspace(4, 0.3, 60)), name="down"),
]


def test_the_imitation_weight_goes_linearly_from_start_to_end_over_its_fraction_then_stays() -> None:
    config = PPOConfig(expert="robustmpc", expert_coef_start=1.0, expert_coef_end=0.2, expert_fraction=0.5)
    assert [expert_coef(config, p) for p in (0.0, 0.25, 0.5, 0.75, 1.0)] == pytest.approx([1.0, 0.6, 0.2, 0.2, 0.2])
    assert expert_coef(PPOConfig(expert_coef_start=1.0), 0.0) == 0.0  # no expert, no term


def test_the_imitation_term_adds_its_weight_times_the_cross_entropy_to_the_expert() -> None:
    torch.manual_seed(0)
    run = TrainingRun.create(PPOConfig(network=SMALL), VIDEO)
    model, n = run.state.model, 7
    obs = torch.rand(n, 6, run.spec.width(VIDEO))
    expert = torch.tensor([0, 1, 2, 3, 4, 5, 0])
    batch = Rollout(obs, torch.zeros(n, dtype=torch.long), torch.zeros(n), torch.randn(n), torch.randn(n),
                    torch.randn(n), expert)  # fmt: skip
    plain, parts = ppo_loss(model, batch, run.config, 0.01)
    kicked, kicked_parts = ppo_loss(model, batch, run.config, 0.01, imitation_coef=0.5)
    logp = torch.log_softmax(model.logits(obs), dim=1)
    cross_entropy = -logp[torch.arange(n), expert].mean()
    assert "imitation" not in parts
    torch.testing.assert_close(kicked_parts["imitation"], cross_entropy.detach())
    torch.testing.assert_close(kicked - plain, 0.5 * cross_entropy)


def test_labels_are_the_experts_levels_on_the_states_the_actor_visited_across_session_restarts() -> None:
    """Replaying the actor's actions in a fresh environment with a fresh expert gives the same labels."""
    torch.manual_seed(1)
    steps = 3 * VIDEO.n_chunks  # crosses two session ends per row
    source = SessionRollouts(3, steps, TRACES, VIDEO, sessions_seed=5, reward_scale=0.1, qoe="lin",
                             critic_future=False, expert="robustmpc")  # fmt: skip
    model = TrainingRun.create(PPOConfig(network=SMALL), VIDEO).state.model
    batch = source.collect(model, 0, expert=True)
    assert batch.expert_actions is not None
    assert batch.expert_actions.shape == (steps, 3)
    env = ABRVectorEnv(3, TRACES, VIDEO, link=LinkConfig.training(), spec=source.envs.obs_spec)
    env.reset(seed=5)
    expert = make_policy("robustmpc")
    expert.begin(3, VIDEO)
    restarted = 0
    for step in range(steps):
        assert np.array_equal(expert.select(env.observation()), batch.expert_actions[step].numpy()), step
        _, _, terminated, _, _ = env.step(batch.actions[step].numpy())
        expert.restart(terminated)
        restarted += int(terminated.sum())
    assert restarted >= 3
    assert source.collect(model, 1).expert_actions is None  # labels only when asked


def test_restarting_a_row_of_robustmpc_makes_it_decide_as_a_fresh_policy_for_that_row() -> None:
    env = ABRVectorEnv(2, TRACES, VIDEO, link=LinkConfig.training())
    env.reset(seed=2)
    used, fresh = make_policy("robustmpc"), make_policy("robustmpc")
    used.begin(2, VIDEO)
    for level in (5, 0, 5):  # a history of large prediction errors
        used.select(env.observation())
        env.step(np.array([level, level]))
    used.restart(np.array([True, False]))
    fresh.begin(2, VIDEO)
    obs = env.observation()
    assert used.select(obs)[0] == fresh.select(obs)[0]
    assert used._errors[1].any()
    assert not used._errors[0][:-1].any()


def test_an_offline_expert_is_refused_and_batches_with_and_without_labels_do_not_join() -> None:
    with pytest.raises(ValueError, match="causal"):
        make_expert("optimal", 2, VIDEO)
    source = SessionRollouts(2, 3, TRACES, VIDEO, sessions_seed=0, reward_scale=0.1, qoe="lin", critic_future=False)
    model = TrainingRun.create(PPOConfig(network=SMALL), VIDEO).state.model
    with pytest.raises(ValueError, match="expert"):
        source.collect(model, 0, expert=True)
    labelled = SessionRollouts(2, 3, TRACES, VIDEO, sessions_seed=0, reward_scale=0.1, qoe="lin",
                               critic_future=False, expert="bba").collect(model, 0, expert=True)  # fmt: skip
    with pytest.raises(ValueError, match="every joined rollout"):
        RolloutBatch.concat([labelled, source.collect(model, 0)], torch.device("cpu"))


def test_kickstarting_teaches_the_actor_the_experts_choice() -> None:
    """With only the imitation term weighted, the actor ends up fetching the fixed expert's level everywhere."""
    config = PPOConfig(total_steps=8 * 12 * 40, num_envs=8, num_steps=12, network=SMALL, seed=0, learning_rate=3e-3,
                       expert="fixed:4", expert_coef_start=5.0, expert_coef_end=5.0, ent_coef_start=0.0,
                       ent_coef_end=0.0)  # fmt: skip
    run = TrainingRun.create(config, VIDEO)
    run.train(TRACES)
    agreement = [m["charts/expert_agreement"] for m in run.state.metrics]
    assert agreement[-1] > 0.95 > agreement[0]
    env = ABRVectorEnv(2, TRACES, VIDEO, link=LinkConfig.training())
    state, _ = env.reset(seed=9)
    with torch.no_grad():
        assert run.state.model.act_greedy(torch.as_tensor(state)).tolist() == [4, 4]
