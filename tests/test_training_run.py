"""The training run API and the rollout sources behind the one PPO loop (tiny budgets: seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from policy.learning.config import NETWORK_PRESETS, NetworkConfig, PPOConfig
from policy.learning.rollouts import RolloutBatch, SessionRollouts
from policy.learning.run import TrainingRun, merged_config, read_metrics
from simulator.video import Video
from tests.helpers import make_trace

SMALL = NetworkConfig(hidden=16, filters=8)
VIDEO = Video.synthetic(n_chunks=6, seed=0)
TRACES = [make_trace(list(np.arange(0.0, 60.0)), list(np.linspace(0.5, 5, 60)), name="t")]
CONFIG = PPOConfig(total_steps=8 * 16 * 6, num_envs=8, num_steps=16, network=SMALL, seed=3)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb), name


def test_a_resumed_run_continues_exactly_as_one_trained_in_the_same_chunks(tmp_path: Path) -> None:
    straight = TrainingRun.create(CONFIG, VIDEO)
    straight.train(TRACES, updates=3)
    straight.train(TRACES)  # to the end of the schedule: 3 more
    first = TrainingRun.create(CONFIG, VIDEO)
    first.train(TRACES, updates=3)
    first.save(tmp_path / "ck")
    resumed = TrainingRun.resume(tmp_path / "ck", CONFIG, VIDEO)
    assert (resumed.state.update, resumed.state.global_step) == (3, 3 * 8 * 16)
    resumed.train(TRACES)
    assert resumed.state.update == straight.state.update == 6
    _same_weights(resumed.state.model, straight.state.model)
    assert [m["charts/qoe"] for m in resumed.state.metrics] == [m["charts/qoe"] for m in straight.state.metrics[3:]]
    with pytest.raises(ValueError, match="differ"):
        TrainingRun.resume(tmp_path / "ck", CONFIG.model_copy(update={"seed": 4}), VIDEO)
    with pytest.raises(ValueError, match="no checkpoint"):
        TrainingRun.resume(tmp_path / "nothing", CONFIG, VIDEO)


def test_fit_keeps_best_and_last_and_every_update_in_metrics(tmp_path: Path) -> None:
    run = TrainingRun.create(CONFIG, VIDEO)
    evaluated: list[int] = []
    run.fit(TRACES, tmp_path, eval_sets={"t": TRACES}, eval_every=4, data={"note": "x"},
            on_evaluated=lambda state, _: evaluated.append(state.update))  # fmt: skip
    assert evaluated == [4, 6]  # every 4 updates and at the end
    rows = read_metrics(tmp_path / "metrics.csv")
    assert [int(r["update"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [("eval/t" in r) for r in rows] == [False, False, False, True, False, True]
    last = json.loads((tmp_path / "last" / "meta.json").read_text())
    best = json.loads((tmp_path / "best" / "meta.json").read_text())
    assert last["progress"]["update"] == 6
    scored = [(r["eval/t"], int(r["update"])) for r in rows if "eval/t" in r]
    top = max(score for score, _ in scored)
    assert best["progress"]["best_score"] == top
    assert best["progress"]["update"] == min(update for score, update in scored if score == top)  # the first best
    assert last["data"] == {"note": "x"}
    with pytest.raises(FileExistsError):
        TrainingRun.open(tmp_path, CONFIG, VIDEO)
    assert TrainingRun.open(tmp_path, CONFIG, VIDEO, resume=True).state.update == 6


def test_a_fine_tune_starts_from_the_checkpoint_and_keeps_its_shape(tmp_path: Path) -> None:
    from policy.learning.checkpoint import load_checkpoint

    run = TrainingRun.create(CONFIG, VIDEO)
    run.train(TRACES, updates=2)
    run.save(tmp_path / "ck")
    start = load_checkpoint(tmp_path / "ck", VIDEO)
    config = merged_config({"total_steps": 256, "num_envs": 4, "num_steps": 8}, init=start)
    assert config.network == SMALL
    tuned = TrainingRun.create(config, VIDEO, init=start)
    _same_weights(tuned.state.model, run.state.model)
    assert tuned.state.update == 0
    assert not tuned.state.optimizer.state  # a fresh optimizer
    with pytest.raises(ValueError, match="network"):
        merged_config({"network": NETWORK_PRESETS["small"]}, init=start)
    # Adding the future-seeing critic keeps the policy and starts a fresh value head.
    future = merged_config({}, init=start, critic_future=True)
    assert future.network.critic_future
    seeing = TrainingRun.create(future, VIDEO, init=start)
    torch.testing.assert_close(seeing.state.model.actor_head.weight, run.state.model.actor_head.weight)


def test_session_rollouts_fill_t_by_n_buffers_and_batches_join_along_sessions() -> None:
    torch.manual_seed(0)
    source = SessionRollouts(4, 5, TRACES, VIDEO, sessions_seed=1, reward_scale=0.1, qoe="lin", critic_future=False)
    model = TrainingRun.create(CONFIG, VIDEO).state.model
    batch = source.collect(model, 0)
    assert batch.obs.shape[:2] == (5, 4)
    assert batch.actions.shape == batch.rewards.shape == (5, 4)
    assert batch.next_value.shape == batch.next_done.shape == (4,)
    assert batch.count == 20
    ladder = np.asarray(VIDEO.bitrates_kbps, dtype=np.float64)
    assert batch.bitrate_kbps_sum == pytest.approx(float(ladder[batch.actions.numpy()].sum()))
    assert batch.qoe_sum == pytest.approx(float(batch.rewards.sum()) / 0.1, rel=1e-5)
    joined = RolloutBatch.concat([batch, batch], torch.device("cpu"))
    assert joined.obs.shape[:2] == (5, 8)
    assert joined.next_done.shape == (8,)
    assert (joined.count, joined.qoe_sum) == (40, 2 * batch.qoe_sum)
    assert torch.equal(joined.actions[:, 4:], batch.actions)
