"""Plasticity: detectors on planted silent neurons, function-preserving resets, optimizer state, methods."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from plasticity.config import (
    CbpConfig,
    CChainConfig,
    InjectionConfig,
    L2InitConfig,
    LnWdConfig,
    RedoConfig,
    RegramaConfig,
    ResinConfig,
    ShrinkPerturbConfig,
    method_fields,
    network_for,
    parse_plasticity,
)
from plasticity.diagnostics import churn, effective_rank, layer_scores, silent_mask, summarise
from plasticity.methods import METHODS, Plasticity, fresh_like, make_method, reset_neurons
from policy.learning.checkpoint import load_checkpoint, probe_states, save_checkpoint
from policy.learning.config import NetworkConfig, PPOConfig
from policy.learning.dense import DenseActor
from policy.learning.network import ActorCritic
from policy.learning.optim import EntryAdam
from policy.learning.ppo import Rollout, new_state, ppo_loss, ppo_update
from policy.learning.run import TrainingRun
from simulator.observation import ObservationSpec
from simulator.video import Video

WIDTH, LEVELS = 8, 6
DEAD, MUTE = 2, 5  # planted in actor.hidden: zero incoming weights / zero outgoing weights


def tiny_model(seed: int = 0) -> ActorCritic:
    torch.manual_seed(seed)
    return ActorCritic(WIDTH, LEVELS, NetworkConfig(hidden=8, filters=4, kernel=3))


def batch_for(model: ActorCritic, n: int = 256, seed: int = 1) -> Rollout:
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(n, 6, WIDTH, generator=g)  # both signs, so no branch neuron is dead by chance
    with torch.no_grad():
        actions, logprobs, _, values = model.get_action_and_value(obs)
    return Rollout(obs, actions, logprobs, torch.randn(n, generator=g), torch.randn(n, generator=g), values)


def loss_fn(model: ActorCritic):
    config = PPOConfig()
    return lambda batch: ppo_loss(model, batch, config, 0.01)[0]


def planted() -> ActorCritic:
    model = tiny_model()
    with torch.no_grad():
        hidden = model.actor_trunk.hidden
        hidden.weight[DEAD] = 0.0
        hidden.bias[DEAD] = 0.0
        hidden.bias[MUTE] = 5.0  # fires on every input
        model.actor_head.weight[:, MUTE] = 0.0
    return model


def flagged(model: ActorCritic, rule: str) -> dict[str, list[int]]:
    scores = layer_scores(model, batch_for(model), loss_fn(model))
    out = {}
    for s in scores:
        hits = silent_mask(s, 0.0, 0.0, rule).nonzero().flatten().tolist()
        if hits:
            out[s.layer.name] = hits
    return out


def test_forward_detector_flags_exactly_the_dead_neuron() -> None:
    assert flagged(planted(), "forward") == {"actor.hidden": [DEAD]}


def test_backward_detector_flags_exactly_the_neurons_that_get_no_gradient() -> None:
    # The muted neuron fires but its outgoing weights are zero; the dead one gets no gradient through the ReLU.
    assert flagged(planted(), "backward") == {"actor.hidden": [DEAD, MUTE]}


def test_rules_combine_the_two_directions() -> None:
    model = planted()
    assert flagged(model, "both") == {"actor.hidden": [DEAD]}
    assert flagged(model, "either") == {"actor.hidden": [DEAD, MUTE]}


def test_unplanted_network_has_no_silent_neurons_at_tau_zero() -> None:
    assert flagged(tiny_model(), "either") == {}


def test_summary_ratios_count_planted_neurons() -> None:
    model = planted()
    scores = layer_scores(model, batch_for(model), loss_fn(model))
    stats = summarise(scores, 0.0, 0.0)
    total = sum(s.layer.units for s in scores)
    assert stats["plasticity/dormant_ratio_tau0"] == pytest.approx(1 / total)
    assert stats["plasticity/grad_silent_ratio"] == pytest.approx(2 / total)
    assert stats["plasticity/silent_ratio"] == pytest.approx(1 / total)
    assert stats["plasticity/penultimate_grad_silent_ratio"] == pytest.approx(2 / 8)
    assert 1.0 <= stats["plasticity/effective_rank"] <= 8.0


def _train_steps(model: ActorCritic, optimizer: torch.optim.Optimizer, batch: Rollout, steps: int = 3) -> None:
    fn = loss_fn(model)
    for _ in range(steps):
        optimizer.zero_grad()
        fn(batch).backward()
        optimizer.step()


@pytest.mark.parametrize("layer_name", ["actor.hidden", "actor.throughput", "critic.buffer", "actor.sizes"])
def test_reset_preserves_the_function_and_untouched_optimizer_state(layer_name: str) -> None:
    model = tiny_model()
    batch = batch_for(model)
    optimizer = EntryAdam(model.parameters(), lr=1e-3)
    _train_steps(model, optimizer, batch)  # every optimizer entry now has non-zero moments
    layer = next(layer for layer in model.neuron_layers() if layer.name == layer_name)
    first, last = 0, layer.units - 1
    with torch.no_grad():  # plant a dead neuron (first) and a muted one (last): neither contributes
        layer.incoming.weight[first] = 0.0
        layer.incoming.bias[first] = 0.0
        for consumer, cols in layer.outgoing:
            consumer.weight[:, cols[last]] = 0.0
    units = torch.zeros(layer.units, dtype=torch.bool)
    units[[first, last]] = True
    before_state = {p: {k: v.clone() for k, v in optimizer.state[p].items()} for p in model.parameters()}
    with torch.no_grad():
        logits_before, values_before = model.logits(batch.obs), model.get_value(batch.obs)
        old_rows = layer.incoming.weight[units].clone()

    n = reset_neurons(layer, units, optimizer, torch.Generator().manual_seed(3))

    assert n == 2
    with torch.no_grad():
        torch.testing.assert_close(model.logits(batch.obs), logits_before, rtol=0, atol=1e-6)
        torch.testing.assert_close(model.get_value(batch.obs), values_before, rtol=0, atol=1e-6)
        assert not torch.equal(layer.incoming.weight[units], old_rows)
        assert torch.all(layer.incoming.bias[units] == 0)
    touched: dict[torch.Tensor, torch.Tensor] = {}
    w_mask = torch.zeros_like(layer.incoming.weight, dtype=torch.bool)
    w_mask[units] = True
    touched[layer.incoming.weight] = w_mask
    touched[layer.incoming.bias] = units
    for consumer, cols in layer.outgoing:
        c_mask = torch.zeros_like(consumer.weight, dtype=torch.bool)
        c_mask[:, cols[units].flatten()] = True
        touched[consumer.weight] = c_mask
    for param in model.parameters():
        mask = touched.get(param, torch.zeros_like(param, dtype=torch.bool))
        for key in ("exp_avg", "exp_avg_sq", "step"):
            now, was = optimizer.state[param][key], before_state[param][key]
            assert torch.equal(now[~mask], was[~mask]), (key, param.shape)
            assert torch.all(now[mask] == 0), key


def test_reset_entries_restart_like_a_fresh_adam() -> None:
    """After a reset the entry's next update is exactly a first Adam step: lr * sign(grad)."""
    model = tiny_model()
    batch = batch_for(model)
    lr = 1e-3
    optimizer = EntryAdam(model.parameters(), lr=lr, eps=1e-12)
    _train_steps(model, optimizer, batch, steps=5)
    layer = next(layer for layer in model.neuron_layers() if layer.name == "critic.hidden")
    units = torch.zeros(layer.units, dtype=torch.bool)
    units[1] = True
    reset_neurons(layer, units, optimizer, torch.Generator().manual_seed(0))
    before = layer.incoming.weight[1].detach().clone()
    optimizer.zero_grad()
    loss_fn(model)(batch).backward()
    grad = layer.incoming.weight.grad[1].clone()
    optimizer.step()
    # The outgoing weights are zero, so this neuron's incoming gradient is zero: the step is zero too.
    assert torch.all(grad == 0)
    torch.testing.assert_close(layer.incoming.weight[1].detach(), before)
    head_col = layer.outgoing[0][1][1]
    assert torch.all(optimizer.state[model.critic_head.weight]["step"][:, head_col] == 1)


def test_entry_adam_matches_torch_adam() -> None:
    a, b = tiny_model(), tiny_model()
    batch = batch_for(a)
    opt_a = EntryAdam(a.parameters(), lr=3e-3, eps=1e-5)
    opt_b = torch.optim.Adam(b.parameters(), lr=3e-3, eps=1e-5)
    _train_steps(a, opt_a, batch, steps=10)
    _train_steps(b, opt_b, batch, steps=10)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)


def test_effective_rank_of_k_equal_orthogonal_directions_is_k() -> None:
    features = torch.zeros(10, 6)
    for i in range(3):
        features[i, i] = 2.0
    assert effective_rank(features) == pytest.approx(3.0)
    assert effective_rank(torch.ones(10, 6)) == pytest.approx(1.0)
    assert effective_rank(torch.zeros(4, 4)) == 0.0


def test_churn_is_total_variation() -> None:
    p = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    q = torch.tensor([[0.0, 1.0], [0.5, 0.5]])
    assert churn(p, p) == 0.0
    assert churn(p, q) == pytest.approx(0.5)


def test_shrink_perturb_is_the_convex_mix_with_a_fresh_network() -> None:
    model = tiny_model()
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = ShrinkPerturbConfig(reset_every_updates=1, shrink=0.7, perturb=0.2, seed=4)
    method = make_method(config)
    optimizer = EntryAdam(model.parameters())
    method.after_update(model, optimizer, 1, batch_for(model), loss_fn(model))
    fresh = dict(fresh_like(model, 4 * 7_919 + 1).named_parameters())
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.detach(), 0.7 * original[name] + 0.2 * fresh[name])


def test_redo_resets_the_dead_neuron_and_respects_the_grace_period() -> None:
    model = planted()
    config = RedoConfig(every_updates=1, tau_forward=0.0, grace_updates=5)
    method = make_method(config)
    optimizer = EntryAdam(model.parameters())
    batch = batch_for(model)
    stats = method.after_update(model, optimizer, 1, batch, loss_fn(model))
    assert stats["plasticity/neurons_reset"] == 1.0
    assert torch.any(model.actor_trunk.hidden.weight[DEAD] != 0)
    with torch.no_grad():
        model.actor_trunk.hidden.weight[DEAD] = 0.0  # dead again at once: still within its grace period
    assert method.after_update(model, optimizer, 2, batch, loss_fn(model))["plasticity/neurons_reset"] == 0.0


@pytest.mark.parametrize("method", ["redo", "resin"])
def test_a_neuron_that_cannot_fire_is_reset_with_exponential_backoff(method: str) -> None:
    model = tiny_model()
    config = parse_plasticity({"method": method, "every_updates": 10, "grace_updates": 20, "futile_backoff": 2})
    resetter = make_method(config)
    optimizer = EntryAdam(model.parameters())
    batch = batch_for(model)
    batch.obs[:, 0, :] = 0.0  # the last-bitrate branch sees only zeros: its units can never fire
    reset_at = []
    for update in range(0, 400, 10):
        resetter.after_update(model, optimizer, update, batch, loss_fn(model))
        if int(resetter.last_reset["actor.bitrate"][0]) == update:  # type: ignore[attr-defined]
            reset_at.append(update)
    # grace 20 x 2^k after each futile reset, k capped at 2: waits of 40, 80, 80, ...
    assert reset_at == [0, 40, 120, 200, 280, 360]


def test_a_revived_neuron_gets_the_plain_grace_period_again() -> None:
    model = planted()
    config = RedoConfig(every_updates=1, tau_forward=0.0, grace_updates=5)
    method = make_method(config)
    optimizer = EntryAdam(model.parameters())
    batch = batch_for(model)
    method.after_update(model, optimizer, 1, batch, loss_fn(model))  # DEAD is reset and fires again
    assert int(method.futile["actor.hidden"][DEAD]) == 1  # type: ignore[attr-defined]
    method.after_update(model, optimizer, 3, batch, loss_fn(model))
    assert int(method.futile["actor.hidden"][DEAD]) == 0  # type: ignore[attr-defined]
    with torch.no_grad():
        model.actor_trunk.hidden.weight[DEAD] = 0.0  # dies again: 5 updates of grace, not 10
    assert method.after_update(model, optimizer, 6, batch, loss_fn(model))["plasticity/neurons_reset"] == 1.0


def test_resin_either_resets_dead_and_muted_neurons() -> None:
    model = planted()
    config = ResinConfig(every_updates=1, tau_forward=0.0, tau_backward=0.0, rule="either")
    stats = make_method(config).after_update(model, EntryAdam(model.parameters()), 1, batch_for(model), loss_fn(model))
    assert stats["plasticity/neurons_reset"] == 2.0


def test_cbp_replaces_the_lowest_utility_mature_unit() -> None:
    model = planted()
    config = CbpConfig(cbp_replacement_rate=1 / 8, cbp_maturity_updates=0, cbp_decay=0.0)
    method = make_method(config)
    optimizer = EntryAdam(model.parameters())
    method.after_update(model, optimizer, 1, batch_for(model), loss_fn(model))
    # In actor.hidden the dead and the muted neuron both have utility 0; one unit per layer is replaced
    # (8 units x 1/8), and it is one of those two.
    hidden = model.actor_trunk.hidden
    bias, weight = hidden.bias.detach(), hidden.weight.detach()
    replaced = [u for u in (DEAD, MUTE) if float(bias[u]) == 0.0 and bool(torch.any(weight[u] != 0))]
    assert len(replaced) == 1


@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_behind_the_trainer_hook(method: str) -> None:
    model = tiny_model()
    fields = {"every_updates": 1, "reset_every_updates": 1, "diagnose_every_updates": 1}
    hook = Plasticity(
        parse_plasticity({k: v for k, v in fields.items() if k in method_fields(method)} | {"method": method})
    )
    optimizer = EntryAdam(model.parameters())
    batch = batch_for(model)
    hook.begin_phase(model, optimizer, 1)
    shuffle = np.random.default_rng(0)
    for update in (1, 2):  # the PPO epochs call the hook's loss term and after-step too
        ppo_update(model, optimizer, batch, PPOConfig(update_epochs=1), 0.01, shuffle, plasticity=hook)
        metrics = hook.after_update(model, optimizer, update, batch, loss_fn(model))
        assert all(math.isfinite(v) for v in metrics.values())
    assert "plasticity/churn" in metrics
    assert "plasticity/effective_rank" in metrics
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


def test_resin_treats_a_collapse_of_a_layers_gradient_as_silence() -> None:
    model = tiny_model()
    config = ResinConfig(every_updates=1, tau_forward=0.0, tau_backward=0.0, grace_updates=0,
                              shift_ratio=0.0)  # no input-shift gate  # fmt: skip
    method = make_method(config)
    optimizer = EntryAdam(model.parameters())
    batch = batch_for(model)
    assert method.after_update(model, optimizer, 1, batch, loss_fn(model))["plasticity/neurons_reset"] == 0.0
    with torch.no_grad():  # the actor's output layer goes quiet: almost no gradient reaches actor.hidden
        model.actor_head.weight.mul_(1e-4)
    stats = method.after_update(model, optimizer, 2, batch, loss_fn(model))
    hidden = model.actor_trunk.hidden
    assert stats["plasticity/neurons_reset"] >= hidden.out_features
    assert torch.all(model.actor_head.weight == 0)  # every actor.hidden neuron was reset
    assert torch.any(model.critic_head.weight != 0)


def test_resin_layer_reference_ignores_history() -> None:
    model = tiny_model()
    config = ResinConfig(every_updates=1, tau_forward=0.0, tau_backward=0.0,
                              grace_updates=0, backward_reference="layer")  # fmt: skip
    method = make_method(config)
    optimizer = EntryAdam(model.parameters())
    batch = batch_for(model)
    method.after_update(model, optimizer, 1, batch, loss_fn(model))
    with torch.no_grad():
        model.actor_head.weight.mul_(1e-4)
    assert method.after_update(model, optimizer, 2, batch, loss_fn(model))["plasticity/neurons_reset"] == 0.0


def _unchanged(before: dict[str, torch.Tensor], model: ActorCritic, prefix: str) -> bool:
    return all(torch.equal(before[n], p.detach()) for n, p in model.named_parameters() if n.startswith(prefix))


def test_resin_top_scope_resets_only_the_topmost_collapsed_layer() -> None:
    model = tiny_model()
    config = ResinConfig(every_updates=1, tau_forward=0.0, tau_backward=0.0, grace_updates=0,
                              collapse_scope="top", shift_ratio=0.0)  # fmt: skip
    method = make_method(config)
    optimizer = EntryAdam(model.parameters())
    batch = batch_for(model)
    method.after_update(model, optimizer, 1, batch, loss_fn(model))
    with torch.no_grad():  # every actor layer's gradient flows through the head: all of them collapse
        model.actor_head.weight.mul_(1e-4)
        model.actor_head.bias[3] = 8.0  # and the policy is saturated on level 3
        model.critic_head.bias.fill_(2.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    method.after_update(model, optimizer, 2, batch, loss_fn(model))
    assert torch.all(model.actor_head.weight == 0)  # actor.hidden, the topmost, was reset
    assert torch.all(model.actor_head.bias == 0)  # the head has no input left: uniform policy, it explores
    assert torch.all(model.critic_head.bias == 2.0)
    assert _unchanged(before, model, "actor_trunk.throughput")  # the branches below keep their features
    assert _unchanged(before, model, "actor_trunk.buffer")


def test_resin_shift_gate_ignores_a_collapse_while_the_inputs_are_stationary() -> None:
    config = ResinConfig(every_updates=1, tau_forward=0.0, tau_backward=0.0, grace_updates=0,
                              collapse_scope="top", shift_ratio=3.0)  # fmt: skip
    for shift, reset in ((1.0, False), (10.0, True)):
        model = tiny_model()
        method = make_method(config)
        optimizer = EntryAdam(model.parameters())
        batch = batch_for(model)
        method.after_update(model, optimizer, 1, batch, loss_fn(model))
        with torch.no_grad():
            model.actor_head.weight.mul_(1e-4)
        shifted = Rollout(batch.obs * shift, batch.actions, batch.logprobs, batch.advantages, batch.returns,
                          batch.values)  # fmt: skip
        method.after_update(model, optimizer, 2, shifted, loss_fn(model))
        # A converging policy loses gradient too: only a collapse that follows an input shift is reset.
        assert bool(torch.all(model.actor_head.weight == 0)) is reset


def test_resin_state_carries_the_running_levels_into_a_new_round() -> None:
    config = ResinConfig(every_updates=1, tau_forward=0.0, tau_backward=0.0, grace_updates=0,
                              shift_ratio=0.0)  # fmt: skip
    model = tiny_model()
    optimizer = EntryAdam(model.parameters())
    batch = batch_for(model)
    trained = make_method(config)
    for update in (1, 2, 3):
        trained.after_update(model, optimizer, update, batch, loss_fn(model))
    state = json.loads(json.dumps(trained.state_dict()))  # JSON-ready
    with torch.no_grad():  # the network arrives at the next round with a collapsed actor
        model.actor_head.weight.mul_(1e-4)
    fresh = make_method(config)  # no history: the collapse is the first thing it sees, so it is "normal"
    fresh.after_update(model, optimizer, 1, batch, loss_fn(model))
    assert not torch.all(model.actor_head.weight == 0)
    carried = make_method(config)
    carried.load_state_dict(state, same_run=False)
    assert carried.gradient_reference == trained.gradient_reference  # type: ignore[attr-defined]
    assert carried.last_reset == {}  # type: ignore[attr-defined]  # update numbers restart with the round
    carried.after_update(model, optimizer, 1, batch, loss_fn(model))
    assert torch.all(model.actor_head.weight == 0)  # seen at the new round's first check
    resumed = make_method(config)
    resumed.load_state_dict(state, same_run=True)
    assert resumed.resets == trained.resets
    assert resumed.last_reset.keys() == trained.last_reset.keys()  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="redo"):
        make_method(RedoConfig()).load_state_dict(state, same_run=True)


def test_resin_shift_gate_stays_open_for_a_window_after_the_shift() -> None:
    config = ResinConfig(every_updates=1, tau_forward=0.0, tau_backward=0.0, grace_updates=0,
                              collapse_scope="top", shift_ratio=3.0, shift_window_updates=5)  # fmt: skip
    for collapse_at, reset in ((4, True), (8, False)):
        model = tiny_model()
        method = make_method(config)
        optimizer = EntryAdam(model.parameters())
        batch = batch_for(model)
        shifted = Rollout(batch.obs * 10, batch.actions, batch.logprobs, batch.advantages, batch.returns,
                          batch.values)  # fmt: skip
        method.after_update(model, optimizer, 1, batch, loss_fn(model))
        method.after_update(model, optimizer, 2, shifted, loss_fn(model))  # the inputs shift; no collapse yet
        with torch.no_grad():
            model.actor_head.weight.mul_(1e-4)
        method.after_update(model, optimizer, collapse_at, batch, loss_fn(model))  # (no new shift: 10x -> 1x
        # is under 3x against the running mean of 1.9x). The gradient collapses 2 updates after the shift
        # (within the window of 5) or 6 after (outside it).
        assert bool(torch.all(model.actor_head.weight == 0)) is reset


def test_resin_resets_a_collapsed_top_layer_whole_even_within_grace() -> None:
    model = tiny_model()
    config = ResinConfig(every_updates=1, tau_forward=0.0, tau_backward=0.0, grace_updates=50,
                              shift_ratio=0.0)  # fmt: skip
    method = make_method(config)
    optimizer = EntryAdam(model.parameters())
    batch = batch_for(model)
    method.after_update(model, optimizer, 1, batch, loss_fn(model))
    method.last_reset["actor.hidden"][:3] = 0  # type: ignore[attr-defined]  # three units reset recently
    with torch.no_grad():
        model.actor_head.weight.mul_(1e-4)
        model.actor_head.bias[3] = 8.0
    method.after_update(model, optimizer, 2, batch, loss_fn(model))
    assert torch.all(model.actor_head.weight == 0)
    assert torch.all(model.actor_head.bias == 0)


def test_regrama_resets_the_neurons_that_get_no_gradient_and_keeps_the_function() -> None:
    model = planted()  # DEAD gets no gradient through its ReLU, MUTE none from its (zeroed) consumers
    batch = batch_for(model)
    with torch.no_grad():
        logits, values = model.logits(batch.obs), model.get_value(batch.obs)
        rows = model.actor_trunk.hidden.weight[[DEAD, MUTE]].clone()
    method = make_method(RegramaConfig(every_updates=1, tau_backward=0.0))
    stats = method.after_update(model, EntryAdam(model.parameters()), 1, batch, loss_fn(model))
    assert stats["plasticity/neurons_reset"] == 2.0
    assert int(method.last_reset["actor.hidden"][DEAD]) == int(method.last_reset["actor.hidden"][MUTE]) == 1  # type: ignore[attr-defined]
    with torch.no_grad():
        assert not torch.equal(model.actor_trunk.hidden.weight[[DEAD, MUTE]], rows)
        torch.testing.assert_close(model.logits(batch.obs), logits, rtol=0, atol=1e-6)
        torch.testing.assert_close(model.get_value(batch.obs), values, rtol=0, atol=1e-6)


def test_regrama_resets_a_firing_neuron_with_a_vanishing_gradient_which_redo_keeps() -> None:
    model = tiny_model()
    weak = 4
    with torch.no_grad():
        model.actor_head.weight[:, weak] *= 1e-4  # it fires as before, but its gradient is ~1e-4 of its layer's
    batch = batch_for(model)
    grama = next(s for s in layer_scores(model, batch, loss_fn(model)) if s.layer.name == "actor.hidden").backward
    assert float(grama[weak]) < 1e-3
    assert int((grama <= 0.025).sum()) == 1
    for config, reset in ((RedoConfig, []), (RegramaConfig, [weak])):
        copy = tiny_model()
        copy.load_state_dict(model.state_dict())
        method = make_method(config(every_updates=1, tau_forward=0.025, tau_backward=0.025))
        method.after_update(copy, EntryAdam(copy.parameters()), 1, batch, loss_fn(copy))
        assert method.last_reset["actor.hidden"].eq(1).nonzero().flatten().tolist() == reset  # type: ignore[attr-defined]


def _no_rollout() -> Rollout:
    """A placeholder for methods whose loss term does not read the rollout."""
    empty = torch.zeros(1)
    return Rollout(empty, empty.long(), empty, empty, empty, empty)


def test_l2_init_penalises_the_squared_distance_to_the_runs_own_initialisation() -> None:
    ppo = PPOConfig(seed=5, network=NetworkConfig(hidden=8, filters=4, kernel=3))
    model = new_state(ppo, Video.builtin(), ObservationSpec(), torch.device("cpu")).model
    method = make_method(L2InitConfig(seed=5, coef=0.5))
    everything = torch.arange(1)
    start = method.loss_term(model, _no_rollout(), everything)
    assert start is not None
    assert float(start.detach()) == 0.0  # the anchor is the run's own initialisation
    hidden = model.actor_trunk.hidden
    with torch.no_grad():
        hidden.weight[0, 0] += 0.5
        hidden.bias[1] -= 0.25
    term = method.loss_term(model, _no_rollout(), everything)
    assert term is not None
    torch.testing.assert_close(term, torch.tensor(0.5 * (0.5**2 + 0.25**2)))
    term.backward()
    assert float(hidden.weight.grad[0, 0]) == pytest.approx(2 * 0.5 * 0.5)
    assert float(hidden.bias.grad[1]) == pytest.approx(2 * 0.5 * -0.25)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert sum(int(g.count_nonzero()) for g in grads) == 2
    stats = method.after_update(model, EntryAdam(model.parameters()), 1, _no_rollout(), loss_fn(model))
    assert stats["plasticity/l2_init_distance"] == pytest.approx(0.5**2 + 0.25**2)


LN = NetworkConfig(hidden=8, filters=4, kernel=3, layer_norm=True)


def test_ln_wd_trains_a_layer_normed_network_where_the_run_builds_one() -> None:
    plain = NetworkConfig(hidden=8)
    assert network_for(LnWdConfig(), plain) == plain.model_copy(update={"layer_norm": True})
    assert network_for(LnWdConfig(layer_norm=False), plain) == plain
    assert network_for(ResinConfig(), plain) == plain
    assert not any("norm" in name for name in tiny_model().state_dict())  # the plain network is unchanged
    torch.manual_seed(0)
    model = ActorCritic(WIDTH, LEVELS, LN)
    seen: dict[str, torch.Tensor] = {}
    model.actor_trunk.acts["hidden"].register_forward_hook(lambda _m, inputs, _o: seen.update(pre=inputs[0]))
    model.logits(batch_for(model).obs)
    pre = seen["pre"]  # the merged layer's normalised pre-activations (gain 1, offset 0 at initialisation)
    torch.testing.assert_close(pre.mean(dim=1), torch.zeros(len(pre)), atol=1e-5, rtol=0)
    torch.testing.assert_close(pre.var(dim=1, unbiased=False), torch.ones(len(pre)), atol=1e-3, rtol=0)


def test_ln_wd_decays_every_linear_weight_after_each_step_and_nothing_else() -> None:
    torch.manual_seed(0)
    model = ActorCritic(WIDTH, LEVELS, LN)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = EntryAdam(model.parameters(), lr=0.1)
    make_method(LnWdConfig(weight_decay=0.5)).after_step(model, optimizer)
    for name, param in model.named_parameters():
        decayed = name.endswith(".weight") and "norm" not in name  # linear weights; LayerNorm's are "norm"
        expected = before[name] * (1 - 0.1 * 0.5) if decayed else before[name]
        torch.testing.assert_close(param.detach(), expected, rtol=0, atol=0, msg=name)


def test_ln_wd_project_holds_each_normalised_layers_weight_norm_at_its_start() -> None:
    torch.manual_seed(0)
    model = ActorCritic(WIDTH, LEVELS, LN)
    method = make_method(LnWdConfig(project=True))
    assert method.loss_term(model, _no_rollout(), torch.arange(1)) is None  # records the norms before a step
    start = {layer.name: float(layer.incoming.weight.detach().norm()) for layer in model.neuron_layers()}
    head, buffer = model.actor_head.weight.detach().clone(), model.critic_trunk.buffer.weight.detach().clone()
    with torch.no_grad():
        model.actor_trunk.hidden.weight.mul_(3.0)  # a step that grew the weights
        model.critic_trunk.hidden.weight.mul_(0.5)
        model.critic_trunk.buffer.weight.mul_(0.5)
        model.actor_head.weight.mul_(2.0)
    method.after_step(model, EntryAdam(model.parameters(), lr=0.1))
    for name in ("actor.hidden", "critic.hidden"):  # the layers LayerNorm follows are projected back
        layer = next(layer for layer in model.neuron_layers() if layer.name == name)
        assert float(layer.incoming.weight.detach().norm()) == pytest.approx(start[name], rel=1e-6)
    # A branch is not normalised, so its weights' scale is the function's: left alone, like the heads.
    torch.testing.assert_close(model.critic_trunk.buffer.weight.detach(), 0.5 * buffer)
    torch.testing.assert_close(model.actor_head.weight.detach(), 2.0 * head)


def test_a_layer_normed_network_still_sees_the_scale_of_its_inputs() -> None:
    # Normalising a one-row branch over its units would divide out its input's scale (at zero bias the
    # pre-activations are the input times fixed weights): the buffer level and the bandwidth would vanish.
    torch.manual_seed(0)
    model = ActorCritic(WIDTH, LEVELS, LN)
    trunk = model.actor_trunk
    with torch.no_grad():
        for branch in (trunk.buffer, trunk.throughput.linear):
            branch.bias.zero_()
        obs = torch.rand(1, 6, WIDTH)
        for scale in (0.5, 2.0, 8.0):
            scaled = obs.clone()
            scaled[:, 1:3] *= scale
            for name, rows in (("buffer", (1, slice(-1, None))), ("throughput", (2, slice(None)))):
                row, cols = rows
                run = trunk._dense if name == "buffer" else trunk._conv
                torch.testing.assert_close(run(name, scaled[:, row, cols]), scale * run(name, obs[:, row, cols]))
        assert not torch.allclose(model.logits(obs), model.logits(obs * 4.0))


def test_a_layer_normed_checkpoint_round_trips(tmp_path: Path) -> None:
    video, spec = Video.builtin(), ObservationSpec()
    ppo = PPOConfig(network=LN)
    model = new_state(ppo, video, spec, torch.device("cpu")).model
    save_checkpoint(tmp_path / "ck", model, video, spec, qoe_kind="lin", train_config={}, progress={})
    loaded = load_checkpoint(tmp_path / "ck", video)
    assert loaded.network.layer_norm
    assert loaded.model.state_dict().keys() == model.state_dict().keys()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.model.state_dict()[name]), name
    obs = batch_for(loaded.model, n=64).obs
    with torch.no_grad():  # LayerNorm folds for serving: the same logits
        torch.testing.assert_close(DenseActor(loaded.model)(obs), loaded.model.logits(obs), rtol=1e-4, atol=1e-5)


def test_c_chain_penalises_the_last_steps_change_of_the_outputs_off_the_minibatch() -> None:
    model = tiny_model()
    batch = batch_for(model, n=16)
    minibatch = torch.arange(4)
    with torch.no_grad():
        batch.obs[minibatch] = float("nan")  # any transition of the minibatch in the reference batch shows
    method = make_method(CChainConfig(policy_coef=1.0, value_coef=0.5, reference_size=64))
    assert method.loss_term(model, batch, minibatch) is None  # no earlier network yet: it is remembered
    outside = batch.obs[4:]
    with torch.no_grad():
        before = torch.log_softmax(model.logits(outside), dim=-1)
        model.actor_head.bias += torch.linspace(-1.0, 1.0, LEVELS)  # what an optimizer step did
        model.critic_head.bias += 0.3
        after = torch.log_softmax(model.logits(outside), dim=-1)
    kl = float((before.exp() * (before - after)).sum(dim=-1).mean())
    term = method.loss_term(model, batch, minibatch)
    assert term is not None
    assert float(term.detach()) == pytest.approx(kl + 0.5 * 0.3**2, rel=1e-5)
    term.backward()
    assert model.actor_head.bias.grad is not None
    assert float(model.critic_head.bias.grad) == pytest.approx(0.5 * 2 * 0.3, rel=1e-5)  # d/db of 0.5 (V - V')^2
    unchanged = method.loss_term(model, batch, minibatch)  # the network it is compared with moved along
    assert unchanged is not None
    assert float(unchanged.detach()) == 0.0
    stats = method.after_update(model, EntryAdam(model.parameters()), 1, batch, loss_fn(model))
    assert stats == {
        "plasticity/policy_churn_kl": 0.0,
        "plasticity/value_churn": 0.0,
        "plasticity/policy_churn_coef": 1.0,
    }


def test_c_chain_sets_its_policy_coefficient_to_a_target_share_of_the_policy_loss() -> None:
    model = tiny_model()
    batch = batch_for(model, n=16)
    minibatch = torch.arange(4)
    config = CChainConfig(policy_coef=1.0, value_coef=0.0, reference_size=64, target_relative_scale=0.5,
                          auto_window_updates=2, auto_warmup_updates=2)  # fmt: skip
    method = make_method(config)
    adam = EntryAdam(model.parameters())
    outside = batch.obs[4:]

    def step(shift: float, policy_loss: float) -> tuple[float, float]:
        """Move the actor as a step would; the churn the method sees and the term it adds."""
        with torch.no_grad():
            before = torch.log_softmax(model.logits(outside), dim=-1)
            model.actor_head.bias += shift * torch.linspace(-1.0, 1.0, LEVELS)
            after = torch.log_softmax(model.logits(outside), dim=-1)
        term = method.loss_term(model, batch, minibatch, policy_loss=policy_loss)
        assert term is not None
        return float((before.exp() * (before - after)).sum(dim=-1).mean()), float(term.detach())

    assert method.loss_term(model, batch, minibatch, policy_loss=-0.4) is None  # remembers the network
    kl1, term1 = step(1.0, -0.4)
    assert term1 == pytest.approx(kl1, rel=1e-5)  # the starting coefficient, 1
    assert method.after_update(model, adam, 1, batch, loss_fn(model))["plasticity/policy_churn_coef"] == 1.0
    kl2, _ = step(0.5, 0.2)
    coef2 = method.after_update(model, adam, 2, batch, loss_fn(model))["plasticity/policy_churn_coef"]
    assert coef2 == pytest.approx(0.5 * (0.4 + 0.2) / 2 / ((kl1 + kl2) / 2), rel=1e-5)  # warmed up: 0.5 x |loss| / KL
    kl3, term3 = step(0.25, 0.6)
    assert term3 == pytest.approx(coef2 * kl3, rel=1e-5)
    coef3 = method.after_update(model, adam, 3, batch, loss_fn(model))["plasticity/policy_churn_coef"]
    assert coef3 == pytest.approx(0.5 * (0.2 + 0.6) / 2 / ((kl2 + kl3) / 2), rel=1e-5)  # the last 2 updates
    resumed = make_method(config)
    resumed.load_state_dict(json.loads(json.dumps(method.state_dict())), same_run=True)
    assert resumed.state_dict() == method.state_dict()
    fresh = make_method(config)
    fresh.load_state_dict(method.state_dict(), same_run=False)  # a new run starts its own coefficient
    assert fresh.state_dict()["policy_coef"] == 1.0


@pytest.mark.parametrize(
    "network",
    [NetworkConfig(hidden=8, filters=4, kernel=3), NetworkConfig(hidden=8, filters=4, kernel=3, shared_trunk=True),
     NetworkConfig(hidden=8, filters=4, kernel=3, critic_future=True)],
    ids=["separate", "shared", "critic-future"],
)  # fmt: skip
def test_injection_keeps_the_function_and_trains_only_the_new_head_and_the_encoders(network: NetworkConfig) -> None:
    torch.manual_seed(0)
    model = ActorCritic(WIDTH, LEVELS, network)
    obs = torch.randn(64, 7, WIDTH)  # the 7th row is what a future-seeing critic reads
    with torch.no_grad():
        actions, logprobs, _, values = model.get_action_and_value(obs)
    batch = Rollout(obs, actions, logprobs, torch.randn(64), torch.randn(64), values)
    optimizer = EntryAdam(model.parameters(), lr=1e-2)
    method = make_method(InjectionConfig(at_update=3))
    with torch.no_grad():
        logits, values = model.logits(obs), model.get_value(obs)
    assert method.after_update(model, optimizer, 2, batch, loss_fn(model)) == {}
    assert method.after_update(model, optimizer, 3, batch, loss_fn(model)) == {"plasticity/injected": 1.0}
    assert model.config.injected_heads == 1
    with torch.no_grad():  # old + new - twin, with new == twin: exactly the same outputs
        assert torch.equal(model.logits(obs), logits)
        assert torch.equal(model.get_value(obs), values)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ppo_update(model, optimizer, batch, PPOConfig(update_epochs=2), 0.01, np.random.default_rng(0))
    moved = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    heads = {n for n in before if "head" in n or ".hidden." in n or ".norms.hidden." in n}
    assert {n for n in moved if n.startswith("injections.0.trained.")}  # the new head learns
    assert not moved & {n for n in heads if not n.startswith("injections.")}  # the old heads are frozen
    assert not {n for n in moved if n.startswith("injections.0.twin.")}  # and so is the twin
    assert {n for n in moved if n.startswith("actor_trunk.throughput")}  # the encoders keep learning
    names = [layer.name for layer in model.neuron_layers()]
    assert names[-1] == ("shared.injected0" if network.shared_trunk else "critic.injected0")
    assert method.after_update(model, optimizer, 4, batch, loss_fn(model)) == {}  # once, by default


def test_injection_repeats_up_to_its_cap_counting_the_heads_the_network_came_with() -> None:
    model = tiny_model()
    optimizer = EntryAdam(model.parameters())
    config = InjectionConfig(at_update=2, every_updates=3, max_injections=2)
    assert [u for u in range(1, 12) if config.due(u)] == [2, 5, 8, 11]
    method = make_method(config)
    injected = [u for u in range(1, 12) if method.after_update(model, optimizer, u, batch_for(model), loss_fn(model))]
    assert injected == [2, 5]
    assert model.config.injected_heads == 2
    assert len(optimizer.param_groups) == 3


def test_an_injected_network_checkpoints_folds_and_resumes(tmp_path: Path) -> None:
    video = Video.builtin()
    ppo = PPOConfig(num_envs=4, num_steps=8, total_steps=64, network=NetworkConfig(hidden=8, filters=4))
    run = TrainingRun.create(ppo, video)
    model = run.state.model
    make_method(InjectionConfig(at_update=1)).after_update(model, run.state.optimizer, 1, _no_rollout(), loss_fn(model))
    with torch.no_grad():  # as if trained: the injected head now differs from its twin
        for param in model.injected()[0].trained.parameters():
            param.add_(0.1)
    run.save(tmp_path / "ck")
    obs = torch.from_numpy(probe_states(video, ObservationSpec()))
    loaded = load_checkpoint(tmp_path / "ck", video)
    assert loaded.network.injected_heads == 1
    with torch.no_grad():
        logits = model.logits(obs)
        assert torch.equal(loaded.model.logits(obs), logits)
        torch.testing.assert_close(DenseActor(loaded.model)(obs), logits, rtol=1e-5, atol=1e-5)  # served folded
    resumed = TrainingRun.resume(tmp_path / "ck", ppo, video)
    assert resumed.state.model.config.injected_heads == 1
    assert len(resumed.state.optimizer.param_groups) == 2
    with torch.no_grad():
        assert torch.equal(resumed.state.model.logits(obs), logits)
    trainable = {n for n, p in resumed.state.model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, p in model.named_parameters() if p.requires_grad}


def test_erfi_matches_known_values_and_is_odd() -> None:
    from plasticity.methods import erfi

    x = torch.tensor([0.0, 0.5, 1.0, 2.0, 5.0, -1.0], dtype=torch.float64)
    # erfi(x) = 2 / sqrt(pi) * integral_0^x exp(t^2) dt, to 15 digits.
    known = [0.0, 0.614952094696511, 1.6504257587975428, 18.564802414575553, 8298273880.676804, -1.6504257587975428]
    assert erfi(x).tolist() == pytest.approx(known, rel=1e-12)
    step = 1e-6  # its derivative is 2 / sqrt(pi) * exp(x^2)
    slope = erfi(torch.tensor(1.5 + step, dtype=torch.float64)) - erfi(torch.tensor(1.5 - step, dtype=torch.float64))
    assert float(slope) / (2 * step) == pytest.approx(2 / math.sqrt(math.pi) * math.exp(2.25), rel=1e-8)


def trac_after_two_steps(first: torch.Tensor, second: torch.Tensor) -> tuple[torch.Tensor, float]:
    """A one-tensor model's parameters after two SGD steps (lr 1) with the given gradients, under TRAC."""
    from plasticity.config import TracConfig

    method = make_method(TracConfig(betas=(0.5, 0.9), scale_init=0.25, eps=1e-12))
    model = tiny_model()
    optimizer = torch.optim.SGD([model.actor_head.bias], lr=1.0)
    start = model.actor_head.bias.detach().clone()
    method.loss_term(model, batch_for(model), torch.arange(4))  # the run's first step: the reference
    for k, grad in enumerate((first, second)):
        for p in model.parameters():
            p.grad = None
        model.actor_head.bias.grad = grad.clone()
        optimizer.step()
        method.after_step(model, optimizer)
        if k == 0:  # no path yet (h = 0): every tuner proposes erfi(0) = 0, back to the reference
            assert torch.equal(model.actor_head.bias.detach(), start)
    return model.actor_head.bias.detach() - start, method.scale  # type: ignore[attr-defined]


def test_trac_by_hand_scales_the_path_up_when_gradients_agree_and_to_zero_when_they_oppose() -> None:
    g = torch.zeros(tiny_model().actor_head.bias.shape)
    g[0], g[1] = 0.6, 0.8  # |g| = 1
    # Second step: h = <delta, g> = <-g, g> = -1, then delta = -2g; each tuner has v = 1, sigma = 1, so
    # ratio 1 / sqrt 2 and proposes scale_init: S = 2 x 0.25 and the parameters move by S * delta = -g.
    moved, scale = trac_after_two_steps(g, g)
    assert scale == pytest.approx(0.5, rel=1e-9)
    assert moved.tolist() == pytest.approx((-g).tolist(), abs=1e-7)
    # Opposed: h = +1, sigma = -1, every proposal negative: S = 0 and the parameters sit at the reference.
    moved, scale = trac_after_two_steps(g, -g)
    assert scale == 0.0
    assert torch.all(moved == 0)


def test_trac_keeps_its_tuners_across_a_resume_only() -> None:
    from plasticity.config import TracConfig

    method = make_method(TracConfig())
    model = tiny_model()
    optimizer = EntryAdam(model.parameters())
    hook = Plasticity(TracConfig())
    hook.method = method
    for update in (1, 2):
        ppo_update(model, optimizer, batch_for(model), PPOConfig(update_epochs=1), 0.01, np.random.default_rng(0),
                   plasticity=hook)  # fmt: skip
        assert set(method.after_update(model, optimizer, update, batch_for(model), loss_fn(model))) == {
            "plasticity/trac_scale",
            "plasticity/trac_path_norm",
        }
    state = method.state_dict()
    resumed, fresh = make_method(TracConfig()), make_method(TracConfig())
    resumed.load_state_dict(state, same_run=True)
    fresh.load_state_dict(state, same_run=False)
    assert resumed.state_dict() == state
    assert fresh.state_dict()["variance"] == [0.0] * 6


def test_trac_speeds_a_descent_whose_gradients_keep_their_direction() -> None:
    from plasticity.config import TracConfig

    def loss_after(steps: int, trac: bool) -> tuple[float, float]:
        model = tiny_model()
        optimizer = EntryAdam(model.parameters(), lr=1e-2)
        method = make_method(TracConfig())
        target = torch.arange(6, dtype=torch.float32)
        batch = batch_for(model)
        for _ in range(steps):
            if trac:
                method.loss_term(model, batch, torch.arange(4))
            loss = ((model.actor_head.bias - target) ** 2).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if trac:
                method.after_step(model, optimizer)
        return float(((model.actor_head.bias.detach() - target) ** 2).sum()), method.scale  # type: ignore[attr-defined]

    adam, _ = loss_after(400, trac=False)
    trac, scale = loss_after(400, trac=True)
    # Adam alone moves 0.01 per step: 400 steps cover 4 of the 5 units to the farthest target. TRAC's tuners
    # see the gradient agree with the path step after step and scale the path up beyond 1.
    assert scale > 1.0
    assert trac < adam / 100
