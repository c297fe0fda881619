"""Actor-critic, PPO smoke training, checkpoints and learned policies (tiny budgets: seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from policy import make_policy
from policy.base import PolicySpecError
from policy.evaluation.loop import run_policy
from policy.learned import ModelPolicy
from policy.learning.checkpoint import CheckpointError, load_checkpoint, load_optimizer_state, save_checkpoint
from policy.learning.config import NetworkConfig, PPOConfig
from policy.learning.network import ActorCritic
from policy.learning.ppo import new_state, train
from simulator.observation import ObservationSpec
from simulator.video import Video
from tests.helpers import make_trace

SMALL = NetworkConfig(hidden=16, filters=8)


def test_network_shapes_branches_and_init() -> None:
    model = ActorCritic(8, 6)
    obs = torch.rand(5, 6, 8)
    action, logprob, entropy, value = model.get_action_and_value(obs)
    assert action.shape == logprob.shape == entropy.shape == value.shape == (5,)
    assert model.get_value(obs).shape == (5,)
    # The remaining-chunks branch reads row 5: changing row 5 changes the output, row 4 beyond the ladder does not.
    base = model.logits(obs)
    changed = obs.clone()
    changed[:, 5, -1] += 1.0
    assert not torch.allclose(model.logits(changed), base)
    padded = obs.clone()
    padded[:, 4, 6:] += 1.0
    assert torch.allclose(model.logits(padded), base)
    # Small-gain actor head: a fresh policy is close to uniform.
    probs = torch.softmax(base.detach(), dim=-1)
    assert float((probs - 1 / 6).abs().max()) < 0.05
    # Pensieve-size trunk is about 266k parameters.
    assert 250_000 < sum(p.numel() for p in model.actor_trunk.parameters()) < 280_000
    shared = ActorCritic(8, 6, NetworkConfig(shared_trunk=True))
    assert shared.critic_trunk is None


@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"))],
)
@pytest.mark.parametrize("critic_future", [False, True], ids=["critic", "critic-sees-future"])
def test_smoke_training_learns_the_top_level_on_a_fast_link(device: str, critic_future: bool) -> None:
    traces = [make_trace(list(np.arange(0.0, 200.0)), [50.0] * 200, name=f"fast{i}") for i in range(3)]
    video = Video.synthetic(n_chunks=12, seed=0)
    network = SMALL.model_copy(update={"critic_future": critic_future})
    config = PPOConfig(
        total_steps=24_000, num_envs=32, num_steps=24, network=network, learning_rate=3e-3, ent_coef_start=0.01,
        ent_coef_end=0.0, seed=0,
    )  # fmt: skip
    state = train(config, traces, video, device=torch.device(device))
    assert next(state.model.parameters()).device.type == device
    levels = run_policy(ModelPolicy(state.model, ObservationSpec()), traces, video).quality[:, 1:]
    assert (levels == video.n_levels - 1).mean() > 0.9
    assert state.metrics[-1]["charts/qoe"] > state.metrics[0]["charts/qoe"]


def test_training_is_reproducible_on_cpu() -> None:
    traces = [make_trace(list(np.arange(0.0, 60.0)), list(np.linspace(0.5, 5, 60)), name="t")]
    video = Video.synthetic(n_chunks=6, seed=0)
    config = PPOConfig(total_steps=512, num_envs=8, num_steps=16, network=SMALL, seed=3)
    a = train(config, traces, video)
    b = train(config, traces, video)
    for (name, pa), pb in zip(a.model.named_parameters(), b.model.parameters(), strict=True):
        assert torch.equal(pa, pb), name


def _save(folder: Path, video: Video, optimizer: bool = True) -> ActorCritic:
    config = PPOConfig(network=SMALL, total_steps=64, num_envs=4, num_steps=8)
    traces = [make_trace([0, 1, 2, 3], [0, 2, 3, 4])]
    state = train(config, traces, video)
    save_checkpoint(
        folder,
        state.model,
        video,
        ObservationSpec(),
        qoe_kind="lin",
        train_config=json.loads(config.model_dump_json()),
        progress={"update": state.update, "global_step": state.global_step},
        optimizer=state.optimizer if optimizer else None,
    )
    return state.model


def test_checkpoint_round_trip_and_resume_state(tmp_path: Path) -> None:
    video = Video.synthetic(n_chunks=6)
    model = _save(tmp_path / "ck", video)
    loaded = load_checkpoint(tmp_path / "ck", video)
    for (name, a), b in zip(model.state_dict().items(), loaded.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    meta = json.loads((tmp_path / "ck" / "meta.json").read_text())
    assert meta["video"]["bitrates_kbps"] == list(video.bitrates_kbps)
    assert meta["observation"]["shape"] == [6, 8]
    assert meta["progress"]["global_step"] > 0
    fresh = new_state(PPOConfig(network=SMALL), video, ObservationSpec(), torch.device("cpu"))
    fresh.model.load_state_dict(loaded.model.state_dict())
    load_optimizer_state(tmp_path / "ck", fresh.model, fresh.optimizer)
    assert all(len(fresh.optimizer.state[p]) == 3 for p in fresh.model.parameters())
    # No pickle anywhere: the weights file is safetensors (8-byte header length, then JSON).
    raw = (tmp_path / "ck" / "model.safetensors").read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    assert json.loads(raw[8 : 8 + header_len])


def test_checkpoint_refuses_other_videos_and_corrupt_files(tmp_path: Path) -> None:
    video = Video.synthetic(n_chunks=6)
    _save(tmp_path / "ck", video, optimizer=False)
    other = Video.synthetic((300, 750, 1200), n_chunks=6)
    with pytest.raises(CheckpointError, match=r"ladder \[300, 750, 1200, 1850, 2850, 4300\]"):
        load_checkpoint(tmp_path / "ck", other)
    longer = Video.synthetic(n_chunks=6, chunk_duration_s=2.0)
    with pytest.raises(CheckpointError, match=r"2\.0 s"):
        load_checkpoint(tmp_path / "ck", longer)
    with pytest.raises(CheckpointError, match="optimizer"):
        load_optimizer_state(
            tmp_path / "ck", ActorCritic(8, 6, SMALL), torch.optim.Adam(ActorCritic(8, 6, SMALL).parameters())
        )
    (tmp_path / "ck" / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(tmp_path / "ck", video)
    (tmp_path / "ck" / "meta.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt metadata"):
        load_checkpoint(tmp_path / "ck", video)
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_checkpoint(tmp_path / "nothing", video)


def test_atomic_save_leaves_the_old_checkpoint_when_interrupted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    video = Video.synthetic(n_chunks=6)
    _save(tmp_path / "ck", video, optimizer=False)
    before = (tmp_path / "ck" / "model.safetensors").read_bytes()

    def boom(*_: object, **__: object) -> None:
        raise OSError("disk full")

    import os

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        _save(tmp_path / "ck", video, optimizer=False)
    monkeypatch.undo()
    assert (tmp_path / "ck" / "model.safetensors").read_bytes() == before
    assert not [p for p in (tmp_path / "ck").iterdir() if p.name.endswith(".tmp")]
    load_checkpoint(tmp_path / "ck", video)


def test_checkpoint_policy_spec(tmp_path: Path) -> None:
    video = Video.synthetic(n_chunks=6)
    _save(tmp_path / "ck", video, optimizer=False)
    traces = [make_trace([0, 10], [0, 3])]
    greedy = run_policy(make_policy(f"checkpoint:{tmp_path / 'ck'}"), traces, video)
    again = run_policy(make_policy(f"checkpoint:path={tmp_path / 'ck'}"), traces, video)
    np.testing.assert_array_equal(greedy.quality, again.quality)
    sampled = run_policy(make_policy(f"checkpoint:path={tmp_path / 'ck'},sample=true,seed=1"), traces, video)
    assert sampled.quality.shape == greedy.quality.shape
    with pytest.raises(PolicySpecError, match="not a checkpoint"):
        run_policy(make_policy(f"checkpoint:{tmp_path / 'missing'}"), traces, video)
