"""Clairvoyant MPC: with a horizon covering the rest of the video it is the exact optimum."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from policy import clairvoyant as clairvoyant_module
from policy import make_policy
from policy.clairvoyant import ClairvoyantConfig, clairvoyant_levels
from policy.evaluation.loop import run_policy
from simulator.batch import BatchSimulator
from simulator.link import LinkConfig
from simulator.observation import ObservationBuilder
from simulator.qoe import QoEConfig, session_qoe
from simulator.video import Video
from tests.helpers import make_trace
from traces.generate import generate_from_spec


def exhaustive_best(trace_spec: str, video: Video) -> np.ndarray:
    """The best score of every trace over all level sequences (first chunk at level 1)."""
    n = video.n_chunks
    combos = np.array(list(itertools.product(range(video.n_levels), repeat=n - 1)))
    qualities = np.concatenate([np.ones((len(combos), 1), dtype=np.int64), combos], axis=1)
    best = []
    for trace in generate_from_spec(trace_spec):
        sim = BatchSimulator([trace], video, n_sessions=len(combos))
        sim.reset()
        rebuf = np.stack([sim.step(qualities[:, c]).rebuf_s for c in range(n)], axis=1)
        best.append(session_qoe(QoEConfig(), video, qualities, rebuf, 1)[:, 1:].mean(axis=1).max())
    return np.array(best)


@pytest.mark.parametrize("spec", ["markov:n=4,seed=3", "regime:n=3,seed=5,low_mbps=0.3,high_mbps=8"])
def test_a_horizon_covering_the_video_reaches_the_exhaustive_optimum(spec: str) -> None:
    video = Video.synthetic(n_chunks=5, seed=2)
    policy = make_policy("clairvoyant:horizon=4,terminal_buffer_weight=0")
    scores = run_policy(policy, generate_from_spec(spec), video).scores()
    np.testing.assert_allclose(scores, exhaustive_best(spec, video), atol=1e-9)


def test_a_short_horizon_falls_between_robustmpc_and_the_optimum_on_average() -> None:
    traces = generate_from_spec("markov:n=8,seed=11")
    video = Video.synthetic(n_chunks=16, seed=1)
    names = ("clairvoyant:horizon=3", "robustmpc", "optimal")
    scores = {p: run_policy(make_policy(p), traces, video).scores().mean() for p in names}
    assert scores["robustmpc"] < scores["clairvoyant:horizon=3"] <= scores["optimal"] + 1e-9


def test_grouping_sessions_does_not_change_the_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    traces = generate_from_spec("markov:n=7,seed=4")
    video = Video.synthetic(n_chunks=10, seed=3)
    link = LinkConfig.evaluation()
    sim = BatchSimulator(traces, video, link, n_sessions=len(traces))
    sim.reset()
    for level in (1, 3, 0):
        sim.step(np.full(len(traces), level))
    last = np.array([0, 1, 2, 3, 4, 5, 0])
    config = ClairvoyantConfig(horizon=3)
    together = clairvoyant_levels(traces, video, link, sim.state(), last, config)
    monkeypatch.setattr(clairvoyant_module, "_LEAVES_PER_GROUP", 2 * video.n_levels**3)  # two sessions per group
    np.testing.assert_array_equal(clairvoyant_levels(traces, video, link, sim.state(), last, config), together)


def test_a_large_terminal_buffer_credit_buys_buffer_over_bitrate() -> None:
    # Each second of buffer left is worth far more than any bitrate: the fastest download (the lowest
    # level) always leaves the most buffer, so that is all it fetches after the first chunk.
    traces = generate_from_spec("markov:n=3,seed=9")
    video = Video.synthetic(n_chunks=12, seed=6)
    spec = "clairvoyant:horizon=2,terminal_buffer_weight=100,terminal_buffer_cap_s=1000"
    logs = run_policy(make_policy(spec), traces, video)
    assert np.all(logs.quality[:, 1:] == 0)
    plain = run_policy(make_policy("clairvoyant:horizon=2,terminal_buffer_weight=0"), traces, video)
    assert np.any(plain.quality[:, 1:] > 0)


def test_clairvoyant_needs_planning_and_a_deterministic_link() -> None:
    video = Video.synthetic(n_chunks=4)
    trace = make_trace([0, 1], [1, 1])
    policy = make_policy("clairvoyant")
    with pytest.raises(ValueError, match="noise"):
        policy.plan_sessions([trace], video, LinkConfig.training(), 1)
    sim = BatchSimulator([trace], video, n_sessions=1)
    sim.reset()
    builder = ObservationBuilder(1, video)
    builder.update(sim.step(np.array([1])))
    policy.begin(1, video)
    with pytest.raises(RuntimeError, match="offline"):
        policy.select(builder.observation())
