"""Scale-out on Ray (a local Ray instance): evaluation through Ray equals the local result exactly."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from abr_cli.main import app
from policy.base import make_policy
from policy.evaluation.distributed import concat_logs, run_policy_ray, shard_batches
from policy.evaluation.loop import run_policy
from simulator.video import Video
from traces.generate import generate_from_spec

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'resin-abr[ray]')")
VIDEO = Video.builtin()


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_shards_follow_the_batches() -> None:
    assert shard_batches(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert shard_batches(3, 8) == [(0, 3)]
    with pytest.raises(ValueError, match="batch_sessions"):
        shard_batches(3, 0)


def test_concat_logs_undoes_sharding() -> None:
    traces = generate_from_spec("markov:n=6,seed=2")
    whole = run_policy(make_policy("bba"), traces, VIDEO, batch_sessions=2)
    parts = [run_policy(make_policy("bba"), traces[a:b], VIDEO, batch_sessions=2, seed=a) for a, b in ((0, 2), (2, 6))]
    merged = concat_logs(parts)
    assert merged.trace_names == whole.trace_names
    np.testing.assert_array_equal(merged.delay_ms, whole.delay_ms)


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["robustmpc", "default"])
def test_evaluation_through_ray_is_identical(local_ray: None, spec: str) -> None:
    traces = generate_from_spec("markov:n=14,seed=4")
    local = run_policy(make_policy(spec), traces, VIDEO, batch_sessions=4)
    remote = run_policy_ray(make_policy(spec), traces, VIDEO, batch_sessions=4)
    assert remote.trace_names == local.trace_names
    for name in ("quality", "chunk_bytes", "delay_ms", "sleep_ms", "buffer_s", "rebuf_s"):
        np.testing.assert_array_equal(getattr(remote, name), getattr(local, name))


@pytest.mark.slow
def test_abr_eval_with_ray_writes_the_same_results(local_ray: None, tmp_path: Path) -> None:
    common = ["eval", "-p", "bba", "-p", "default", "--traces", "markov:n=9,seed=2", "--batch-sessions", "3",
              "--no-optimal"]  # fmt: skip
    assert CliRunner().invoke(app, [*common, "--out", str(tmp_path / "local")]).exit_code == 0
    result = CliRunner().invoke(app, [*common, "--ray", "local", "--out", str(tmp_path / "ray")])
    assert result.exit_code == 0, result.output
    local, remote = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("local", "ray"))
    for a, b in zip(local["results"], remote["results"], strict=True):
        assert {k: v for k, v in a.items() if k != "wall_s"} == {k: v for k, v in b.items() if k != "wall_s"}
    assert local["per_trace"] == remote["per_trace"]


@pytest.mark.slow
def test_plasticity_bench_through_ray_gives_the_same_records(local_ray: None, tmp_path: Path) -> None:
    from plasticity.bench import BenchConfig, run_bench
    from tests.test_plasticity_bench import TINY_PPO, TINY_SCHEDULE

    shared = {"every_updates": 1, "diagnose_every_updates": 1, "batch_size": 64}
    config = BenchConfig(methods=["none", "resin"], seeds=1, workers=1, ppo=TINY_PPO, plasticity=shared)
    local = run_bench(TINY_SCHEDULE, config, VIDEO, tmp_path / "local")
    seen: list[str] = []
    remote = run_bench(TINY_SCHEDULE, config, VIDEO, tmp_path / "ray", on_done=seen.append, ray="local")
    assert sorted(seen) == ["none-seed1.json", "resin-seed1.json"]
    for a, b in zip(local, remote, strict=True):
        assert a["evals"] == b["evals"]
        assert a["resets"] == b["resets"]


@pytest.mark.slow
@pytest.mark.parametrize("critic_future", [False, True], ids=["critic", "critic-sees-future"])
def test_training_through_ray_learns(local_ray: None, critic_future: bool) -> None:
    from policy.learning.config import NetworkConfig, PPOConfig
    from policy.learning.ppo import train
    from traces.trace import Trace

    # On fast constant links the best policy fetches high levels: a learner that learns gains a lot of QoE.
    traces = [Trace(f"c{k}", np.array([0.0, 500.0]), np.array([8.0 + k, 8.0 + k])) for k in range(4)]
    config = PPOConfig(num_envs=8, num_steps=48, total_steps=8 * 48 * 16, learning_rate=3e-3, torch_threads=1,
                       network=NetworkConfig(critic_future=critic_future))  # fmt: skip
    state = train(config, traces, VIDEO, ray_workers=2)
    qoe = [m["charts/qoe"] for m in state.metrics]
    assert len(qoe) == 16
    assert state.global_step == 8 * 48 * 16
    assert np.mean(qoe[-3:]) > np.mean(qoe[:3]) + 1.5
    with pytest.raises(ValueError, match="workers"):
        train(config, traces, VIDEO, ray_workers=9)


@pytest.mark.slow
def test_a_retraining_round_through_ray_gates_on_the_same_scores(local_ray: None, tmp_path: Path) -> None:
    import shutil

    import torch

    from abr_server.registry import ModelRegistry
    from abr_server.retrain.loop import RetrainConfig, retrain_once
    from policy.learned import DEFAULT_MODEL_DIR
    from policy.learning.config import PPOConfig
    from tests.test_retrain import session_rows, write_rows
    from traces.trace import Trace

    now_s = 1_000_000.0
    db = tmp_path / "telemetry.sqlite"
    rows = []
    for k in range(10):
        link = Trace(f"l{k}", np.array([0.0, 1000.0]), np.array([2.0 + k, 2.0 + k]))
        rows += session_rows(f"s{k}", link, level=2, received_at_s=now_s - 1000 + 50 * k, n=8)
    write_rows(db, rows)
    tiny = PPOConfig(num_envs=4, num_steps=8, num_minibatches=1, update_epochs=1, anneal_lr=False)
    config = RetrainConfig(min_traces=4, pool_size=8, updates=2, checkpoint_every=2, ppo=tiny, margin=-100.0)
    results = {}
    for name, workers in (("local", 0), ("ray", 2)):
        models = tmp_path / name / "models"
        shutil.copytree(DEFAULT_MODEL_DIR, models / "v0001")
        results[name] = retrain_once(db, models, tmp_path / name / "work", VIDEO, config, now_s=now_s,
                                     ray_workers=workers)  # fmt: skip
        assert results[name].status == "published"
        ModelRegistry(models, VIDEO, torch.device("cpu")).load("v0002")  # a whole, servable version
    local, remote = results["local"], results["ray"]
    assert (local.trainer, remote.trainer) == ("local", "ray x2")
    assert remote.traces == local.traces
    # The same held-out sessions, scored through Ray tasks: the models that did not change score the same.
    for name in ("deployed", "robustmpc"):
        assert remote.scores["holdout"][name] == local.scores["holdout"][name]


@pytest.mark.slow
def test_continual_training_through_a_schedule_on_ray(local_ray: None, tmp_path: Path) -> None:
    from tests.test_plasticity_bench import TINY_PPO, TINY_SCHEDULE

    schedule = tmp_path / "tiny.json"
    schedule.write_text(TINY_SCHEDULE.model_dump_json())
    config = tmp_path / "ppo.json"
    config.write_text(json.dumps({k: v for k, v in TINY_PPO.model_dump().items() if k != "total_steps"}))
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "--schedule", str(schedule), "--plasticity", "resin", "--out", str(out),
                                      "--config", str(config), "--ray", "local", "--ray-workers", "2"])  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads((out / "run.json").read_text())
    # Same phases, updates and evaluation points as a local run: only where the rollouts come from differs.
    assert record["phase_updates"] == [4, 2]
    assert record["total_steps"] == 6 * TINY_PPO.num_envs * TINY_PPO.num_steps
    assert [(e["phase"], e["update"]) for e in record["evals"]] == [(0, 2), (0, 4), (1, 5), (1, 6)]
    assert set(record["evals"][-1]["scores"]) == {"low", "high"}


@pytest.mark.slow
def test_ray_rollout_workers_follow_an_injected_head(local_ray: None) -> None:
    from policy.learning.config import NetworkConfig
    from policy.learning.network import ActorCritic
    from policy.learning.rollouts import RayRollouts
    from simulator.observation import ObservationSpec

    model = ActorCritic(ObservationSpec().width(VIDEO), VIDEO.n_levels, NetworkConfig(hidden=8, filters=4))
    source = RayRollouts(4, 8, generate_from_spec("markov:n=4,seed=3"), VIDEO, workers=2, sessions_seed=1,
                         reward_scale=0.1, qoe="lin", network_json=model.config.model_dump_json())  # fmt: skip
    try:
        assert source.collect(model, 0).count == 32
        model.inject(seed=1)  # the learner's network grew: the workers rebuild theirs from its config
        assert source.collect(model, 1).count == 32
    finally:
        source.close()


@pytest.mark.slow
def test_a_timeline_arm_retrains_through_ray(local_ray: None) -> None:
    from abr_server.lab.adapt import run_arm
    from tests.test_adapt import FAST, SLOW, tiny

    config = tiny([SLOW, FAST], ["resin+continual"], margin=-100.0).model_copy(update={"ray": "local"})
    record = run_arm(config, "resin+continual", 1)
    assert record["trainer"] == "ray x2"
    rounds = [e["round"] for e in record["epochs"] if "round" in e]
    assert [r["status"] for r in rounds] == ["published", "published"]
    assert [r["trainer_update"] for r in rounds] == [config.retrain.updates, 2 * config.retrain.updates]
