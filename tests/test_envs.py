"""Gymnasium environments: API conformance, registration, and vector env == SyncVectorEnv."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from simulator import ENV_ID, ABREnv, ABRVectorEnv, LinkConfig, Video
from simulator.qoe import QoEConfig
from traces.trace import Trace


@pytest.fixture
def small_traces() -> list[Trace]:
    rng = np.random.default_rng(0)
    return [Trace(f"t{i}", np.cumsum(rng.uniform(0.5, 1.5, 40)) - 0.5, rng.uniform(0.2, 6, 40)) for i in range(5)]


def test_check_env_passes(small_traces: list[Trace]) -> None:
    env = ABREnv(small_traces, Video.builtin())
    with _no_warning():
        check_env(env, skip_render_check=True)


class _no_warning:
    def __enter__(self) -> None:
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("error")

    def __exit__(self, *exc: object) -> None:
        self._ctx.__exit__(*exc)


def test_episode_is_one_video_and_rewards_are_qoe(small_traces: list[Trace]) -> None:
    video = Video.builtin()
    env = ABREnv(small_traces, video, link=LinkConfig.evaluation())
    obs, info = env.reset(seed=0)
    assert obs.shape == (6, 8)
    assert info["chunk_index"] == 0
    assert info["quality"] == 1
    steps, total = 0, 0.0
    terminated = False
    last = 1
    while not terminated:
        level = steps % video.n_levels
        obs, reward, terminated, truncated, info = env.step(level)
        mbps = video.bitrates_mbps
        assert reward == pytest.approx(mbps[level] - 4.3 * info["rebuf_s"] - abs(mbps[level] - mbps[last]))
        last = level
        assert not truncated
        steps += 1
        total += reward
    assert steps == video.n_chunks - 1
    assert info["chunk_index"] == video.n_chunks - 1


def test_log_qoe_reward(small_traces: list[Trace]) -> None:
    video = Video.builtin()
    env = ABREnv(small_traces, video, qoe=QoEConfig(kind="log"))
    env.reset(seed=1)
    _, reward, _, _, info = env.step(0)
    util = np.log(video.bitrates_mbps / video.bitrates_mbps[0])
    assert reward == pytest.approx(util[0] - 2.66 * info["rebuf_s"] - abs(util[0] - util[1]))


def test_bad_action_is_rejected(small_traces: list[Trace]) -> None:
    env = ABREnv(small_traces, Video.builtin())
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action"):
        env.step(6)


@pytest.mark.parametrize("link", [LinkConfig.training(), LinkConfig(start="random", trace_order="random")])
def test_vector_env_equals_sync_vector_env(small_traces: list[Trace], link: LinkConfig) -> None:
    video = Video.builtin()
    n = 4
    native = ABRVectorEnv(n, small_traces, video, link=link)
    sync = SyncVectorEnv(
        [lambda: ABREnv(small_traces, video, link=link) for _ in range(n)], autoreset_mode=AutoresetMode.SAME_STEP
    )
    obs_a, info_a = native.reset(seed=11)
    obs_b, info_b = sync.reset(seed=11)
    np.testing.assert_allclose(obs_a, obs_b, rtol=1e-6)
    rng = np.random.default_rng(3)
    finished = 0
    for _ in range(3 * video.n_chunks):
        actions = rng.integers(0, video.n_levels, n)
        obs_a, rew_a, term_a, trunc_a, info_a = native.step(actions)
        obs_b, rew_b, term_b, trunc_b, info_b = sync.step(actions)
        np.testing.assert_allclose(obs_a, obs_b, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(rew_a, rew_b, rtol=1e-9, atol=1e-9)
        np.testing.assert_array_equal(term_a, term_b)
        np.testing.assert_array_equal(trunc_a, trunc_b)
        for key in ("delay_ms", "buffer_s", "rebuf_s", "quality", "chunk_index", "trace_index"):
            np.testing.assert_allclose(info_a[key], info_b[key], rtol=1e-9, err_msg=key)
        if term_a.any():
            finished += int(term_a.sum())
            for i in np.flatnonzero(term_a):
                np.testing.assert_allclose(info_a["final_obs"][i], info_b["final_obs"][i], rtol=1e-6, atol=1e-7)
                assert info_a["final_info"]["chunk_index"][i] == info_b["final_info"]["chunk_index"][i]
    assert finished == 3 * n  # 144 steps = three whole 47-step episodes per session


def test_registered_id_and_vector_entry_point(small_traces: list[Trace]) -> None:
    env = gym.make(ENV_ID, traces=small_traces)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (6, 8)
    venv = gym.make_vec(ENV_ID, num_envs=3, vectorization_mode="vector_entry_point", traces=small_traces)
    assert isinstance(venv.unwrapped, ABRVectorEnv)
    obs, _ = venv.reset(seed=0)
    assert obs.shape == (3, 6, 8)


def test_default_traces_make_a_working_env() -> None:
    env = ABREnv()
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
