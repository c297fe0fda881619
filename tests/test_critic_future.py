"""A critic that sees the network's future (input-dependent baseline): the simulator's look-ahead, the
network's extra branch, PPO with it, checkpoints and `abr train --critic-future`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from typer.testing import CliRunner

from abr_cli.main import app
from policy.evaluation.loop import run_policy
from policy.learned import ModelPolicy
from policy.learning.checkpoint import load_checkpoint, save_checkpoint
from policy.learning.config import NetworkConfig, PPOConfig
from policy.learning.network import ROW_FUTURE, ActorCritic
from policy.learning.ppo import train
from policy.learning.rollouts import with_future_row
from simulator.batch import BatchSimulator, SessionState
from simulator.link import LinkConfig
from simulator.observation import ObservationBuilder, ObservationSpec
from simulator.video import Video
from tests.helpers import make_trace

FUTURE = NetworkConfig(hidden=16, filters=8, critic_future=True)
#: 2 Mbit/s for intervals 0..48 (times 0..49 s), 8 Mbit/s after; the link keeps 95% as payload.
STEP = make_trace(list(np.arange(0.0, 100.0)), [2.0] * 50 + [8.0] * 50, name="step")


def _sim_at(clock_s: float) -> BatchSimulator:
    sim = BatchSimulator([STEP], Video.synthetic(n_chunks=6), LinkConfig(), n_sessions=1)
    interval = int(np.floor(clock_s)) % 99
    sim.load_state(
        SessionState(np.array([0]), np.array([interval]), np.array([clock_s]), np.zeros(1), np.zeros(1, int))
    )
    return sim


def test_future_throughput_hand_computed() -> None:
    # Interval k spans [k, k + 1) s and carries the throughput sample k + 1: 8 Mbit/s from 49 s on.
    assert np.allclose(_sim_at(45.0).future_throughput_mbps(4, 2.0), [[1.9, 1.9, 7.6, 7.6]])
    assert np.allclose(_sim_at(48.5).future_throughput_mbps(1, 1.0), [[0.5 * 1.9 + 0.5 * 7.6]])
    # Across the end of the trace (period 99 s) the trace repeats from its start.
    assert np.allclose(_sim_at(98.0).future_throughput_mbps(1, 2.0), [[(7.6 + 1.9) / 2]])
    with pytest.raises(ValueError, match="bins"):
        _sim_at(1.0).future_throughput_mbps(0, 4.0)


@settings(max_examples=30, deadline=None)
@given(st.floats(0.0, 98.9))
def test_future_over_a_whole_period_is_the_cycle_mean(clock_s: float) -> None:
    cycle_mean_mbps = (49 * 2.0 + 50 * 8.0) * 0.95 / 99
    assert np.allclose(_sim_at(clock_s).future_throughput_mbps(1, 99.0), cycle_mean_mbps)
    # Bins add up: 9 bins of 11 s average to the same.
    assert np.isclose(_sim_at(clock_s).future_throughput_mbps(9, 11.0).mean(), cycle_mean_mbps)


def test_future_row_is_in_the_throughput_rows_unit() -> None:
    video = Video.synthetic(n_chunks=6)
    sim = _sim_at(45.0)
    builder = ObservationBuilder(1, video)
    obs = builder.state()
    out = with_future_row(obs, sim, video)
    assert out.shape == (1, 7, obs.shape[2])
    assert np.array_equal(out[:, :ROW_FUTURE], obs)
    # MB/s: 1.9 Mbit/s of payload is 0.2375 MB/s, per chunk duration (4 s) from the clock.
    expected = sim.future_throughput_mbps(obs.shape[2], video.chunk_duration_s) / 8.0
    assert np.allclose(out[0, ROW_FUTURE], expected[0])
    assert np.isclose(out[0, ROW_FUTURE, 0], 1.9 / 8.0)
    with pytest.raises(ValueError, match="6-row"):
        with_future_row(out, sim, video)


def test_only_the_critic_reads_the_future() -> None:
    torch.manual_seed(0)
    model = ActorCritic(8, 6, FUTURE)
    obs = torch.rand(5, 7, 8)
    other = obs.clone()
    other[:, ROW_FUTURE] = torch.rand(5, 8) * 10
    assert torch.equal(model.logits(obs), model.logits(other))
    assert torch.equal(model.logits(obs), model.logits(obs[:, :ROW_FUTURE]))  # serving sees 6 rows
    assert not torch.allclose(model.get_value(obs), model.get_value(other))
    with pytest.raises(ValueError, match="reads the future"):
        model.get_value(obs[:, :ROW_FUTURE])
    with pytest.raises(ValidationError, match="separate trunks"):
        NetworkConfig(critic_future=True, shared_trunk=True)
    future = [layer for layer in model.neuron_layers() if layer.name == "critic.future"]
    assert len(future) == 1
    head, cols = future[0].outgoing[0]
    assert head is model.critic_head
    assert cols.flatten().tolist() == list(range(16, 32))


def test_a_future_critic_checkpoint_round_trips(tmp_path: Path) -> None:
    video = Video.synthetic(n_chunks=6, seed=0)
    config = PPOConfig(total_steps=64, num_envs=4, num_steps=8, network=FUTURE)
    state = train(config, [make_trace([0, 1, 2, 3], [0, 2, 3, 4])], video)
    save_checkpoint(tmp_path / "ck", state.model, video, ObservationSpec(), qoe_kind="lin",
                    train_config=json.loads(config.model_dump_json()), progress={"update": state.update})  # fmt: skip
    loaded = load_checkpoint(tmp_path / "ck", video)
    assert loaded.network.critic_future
    for name, tensor in state.model.state_dict().items():
        assert torch.equal(tensor, loaded.model.state_dict()[name]), name
    # It serves from the usual 6-row observation.
    assert run_policy(ModelPolicy(loaded.model, ObservationSpec()), [STEP], video).quality.shape == (1, 6)


def test_train_cli_critic_future_and_init_from_a_plain_model(tmp_path: Path) -> None:
    runner = CliRunner()
    config = tmp_path / "tiny.json"
    tiny = {"network": {"hidden": 8, "filters": 4}, "num_steps": 8, "num_minibatches": 2, "update_epochs": 1}
    config.write_text(json.dumps(tiny))
    base = ["train", "-t", "markov:n=4,seed=1", "--steps", "128", "--num-envs", "8", "--device", "cpu"]
    plain = runner.invoke(app, [*base, "--out", str(tmp_path / "plain"), "--config", str(config)])
    assert plain.exit_code == 0, plain.output
    still = tmp_path / "still.json"
    still.write_text(json.dumps({**tiny, "learning_rate": 1e-12}))
    args = [
        "--out",
        str(tmp_path / "fc"),
        "--config",
        str(still),
        "--critic-future",
        "--init",
        str(tmp_path / "plain" / "last"),
    ]
    result = runner.invoke(app, [*base, *args])
    assert result.exit_code == 0, result.output
    tuned = load_checkpoint(tmp_path / "fc" / "best")
    assert tuned.network.critic_future
    # The policy carries over unchanged (learning rate ~0); the value head is new.
    start = load_checkpoint(tmp_path / "plain" / "last").model.state_dict()
    for name, tensor in tuned.model.state_dict().items():
        if name.startswith("actor"):
            assert (tensor - start[name]).abs().max() < 1e-6, name
    assert tuned.model.state_dict()["critic_head.weight"].shape == (1, 16)


def test_runs_saved_before_the_option_existed_still_resume(tmp_path: Path) -> None:
    runner = CliRunner()
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({"network": {"hidden": 8, "filters": 4}, "num_steps": 8, "update_epochs": 1}))
    args = ["train", "-t", "markov:n=4,seed=1", "--num-envs", "8", "--device", "cpu", "--out", str(tmp_path / "run")]
    first = runner.invoke(app, [*args, "--steps", "128", "--config", str(config)])
    assert first.exit_code == 0, first.output
    meta_path = tmp_path / "run" / "last" / "meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["train_config"]["network"]["critic_future"]  # as written by earlier versions
    del meta["network"]["critic_future"]
    meta_path.write_text(json.dumps(meta))
    resumed = runner.invoke(app, [*args, "--steps", "128", "--config", str(config), "--resume"])
    assert resumed.exit_code == 0, resumed.output
