"""rb, bola, mpc/robustmpc and the offline optimum on situations with a known right answer."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from policy import make_policy
from policy.classic import harmonic_mean_recent
from policy.evaluation.loop import run_policy
from policy.mpc import RobustMPCPolicy
from policy.optimal import _merge, optimal_plan
from simulator.batch import BatchSimulator
from simulator.observation import ObservationBuilder
from simulator.qoe import QoEConfig, session_qoe
from simulator.video import Video
from tests.helpers import make_trace
from traces.generate import generate_from_spec

LADDER = (300, 750, 1200, 1850, 2850, 4300)


def observe(video: Video, chunks: list[tuple[int, float, float, float]]):  # type: ignore[no-untyped-def]
    """An observation of one session after chunks given as (level, bytes, delay_ms, buffer_s)."""
    builder = ObservationBuilder(1, video)
    for i, (level, size, delay_ms, buffer_s) in enumerate(chunks):
        builder.push(
            slice(None),
            quality=[level],
            buffer_s=[buffer_s],
            chunk_bytes=[size],
            delay_ms=[delay_ms],
            chunk_index=[i],
            chunks_remaining=[video.n_chunks - i - 1],
            next_chunk_bytes=[video.chunk_bytes[:, i + 1]],
        )
    return builder.observation()


def constant_video(n_chunks: int = 48) -> Video:
    """Chunk sizes exactly at the nominal bitrates (4 s chunks)."""
    sizes = np.array([[b * 1000 // 8 * 4] * n_chunks for b in LADDER], dtype=np.int64)
    return Video(LADDER, 4.0, sizes)


def test_harmonic_mean_uses_only_valid_recent_chunks() -> None:
    video = constant_video()
    # Throughputs 1, 2 and 4 Mbit/s: bytes = mbps * 1e6 / 8 * delay_s with 1 s delays.
    obs = observe(video, [(0, 125_000, 1000, 4.0), (0, 250_000, 1000, 7.0), (0, 500_000, 1000, 10.0)])
    assert harmonic_mean_recent(obs, 5)[0] == pytest.approx(3 / (1 + 1 / 2 + 1 / 4))
    assert harmonic_mean_recent(obs, 2)[0] == pytest.approx(2 / (1 / 2 + 1 / 4))


def test_rb_picks_highest_bitrate_not_above_estimate() -> None:
    video = constant_video()
    policy = make_policy("rb")
    policy.begin(1, video)
    obs = observe(video, [(0, 250_000, 1000, 4.0)] * 5)  # 2.0 Mbit/s
    assert policy.select(obs).tolist() == [3]  # 1850 <= 2000 < 2850
    obs = observe(video, [(0, 20_000, 1000, 4.0)])  # 0.16 Mbit/s: nothing fits
    assert policy.select(obs).tolist() == [0]


def test_bola_matches_hand_computed_scores() -> None:
    video = constant_video()
    policy = make_policy("bola")
    policy.begin(1, video)
    mbps = np.array(LADDER) / 1000
    u = np.log(mbps / mbps[0]) + 1
    target = max(30.0, 10.0 + 2.0 * 6)  # 30 s
    gp = (u[-1] - 1) / (target / 10.0 - 1)
    v = 10.0 / gp
    for buffer_s in (0.0, 8.0, 14.0, 20.0, 26.0, 40.0):
        expected = int(np.argmax((v * (u + gp) - buffer_s) / mbps))
        obs = observe(video, [(0, 100_000, 500, buffer_s)])
        assert policy.select(obs).tolist() == [expected]
    assert policy.select(observe(video, [(0, 100_000, 500, 0.0)])).tolist() == [0]
    assert policy.select(observe(video, [(0, 100_000, 500, 40.0)])).tolist() == [5]


def _mpc_brute_force(video, buffer_s, mbps, next_index, current, horizon=5):  # type: ignore[no-untyped-def]
    """The MPC objective written as a plain loop over every combination (the test oracle)."""
    h = min(horizon, video.n_chunks - next_index)
    scored = []
    rates = video.bitrates_mbps
    for combo in itertools.product(range(video.n_levels), repeat=h):
        buffer, rebuf, reward, last = buffer_s, 0.0, 0.0, current
        for p, level in enumerate(combo):
            seconds = video.chunk_bytes[level, next_index + p] * 8 / 1e6 / mbps
            if buffer < seconds:
                rebuf += seconds - buffer
                buffer = 0.0
            else:
                buffer -= seconds
            buffer += video.chunk_duration_s
            reward += rates[level] - abs(rates[level] - rates[last])
            last = level
        scored.append((reward - 4.3 * rebuf, combo))
    # The last of the best in enumeration order; scores equal up to rounding are ties.
    top = max(score for score, _ in scored)
    return [combo for score, combo in scored if score >= top - 1e-9 * max(1.0, abs(top))][-1][0]


@pytest.mark.parametrize("seed", range(6))
def test_mpc_plan_equals_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    video = Video.synthetic(n_chunks=12, seed=seed)
    policy = make_policy("mpc")
    policy.begin(8, video)
    buffer_s = rng.uniform(0, 30, 8)
    mbps = rng.uniform(0.2, 6, 8)
    next_index = rng.integers(1, 12, 8)
    current = rng.integers(0, 6, 8)
    for i in range(8):
        h = int(min(5, video.n_chunks - next_index[i]))
        plan = policy._plan(h, buffer_s[i : i + 1], mbps[i : i + 1], next_index[i : i + 1], current[i : i + 1])
        assert plan[0] == _mpc_brute_force(video, buffer_s[i], mbps[i], int(next_index[i]), int(current[i]))


def test_robustmpc_does_not_pick_a_level_it_predicts_will_rebuffer() -> None:
    video = constant_video()
    policy = make_policy("robustmpc")
    policy.begin(1, video)
    # 1.5 Mbit/s measured steadily, 2 s of buffer: 1850 kbps (7.4 Mbit per chunk) would stall.
    obs = observe(video, [(2, 187_500, 1000, 2.0)] * 5)
    level = int(policy.select(obs)[0])
    seconds = video.chunk_bytes[level, 5] * 8 / 1e6 / 1.5
    assert seconds <= 2.0 + 4.0 * 5  # never plans a stall it can see
    assert level <= 2


def test_robustmpc_discounts_by_recent_prediction_error() -> None:
    video = constant_video()
    policy = RobustMPCPolicy()
    policy.begin(1, video)
    steady = [(2, 250_000, 1000, 20.0)] * 3  # 2 Mbit/s
    assert policy.predicted_mbps(observe(video, steady))[0] == pytest.approx(2.0)  # no error yet
    # The next chunk measures 1 Mbit/s: error |2 - 1| / 1 = 1, so the prediction is halved.
    harmonic = 4 / (3 / 2 + 1 / 1)
    got = policy.predicted_mbps(observe(video, [*steady, (2, 125_000, 1000, 20.0)]))[0]
    assert got == pytest.approx(harmonic / 2)


def test_merge_keeps_exactly_the_undominated_labels() -> None:
    rng = np.random.default_rng(0)
    w = 4.3
    for _ in range(200):
        n = int(rng.integers(1, 30))
        level = rng.integers(0, 2, n)
        elapsed = rng.integers(0, 3, n) + 0.5
        buffer = np.round(rng.uniform(0, 5, n), 1)
        reward = np.round(rng.uniform(-5, 5, n), 1)
        expected = set()
        for i in range(n):
            dominated = False
            for j in range(n):
                if i == j or level[i] != level[j] or elapsed[i] != elapsed[j]:
                    continue
                pi, pj = reward[i] + w * buffer[i], reward[j] + w * buffer[j]
                if reward[j] >= reward[i] and buffer[j] >= buffer[i]:
                    dominated |= reward[j] > reward[i] or buffer[j] > buffer[i] or j < i
                if pj >= pi and buffer[j] <= buffer[i]:
                    dominated |= pj > pi or buffer[j] < buffer[i] or j < i
            if not dominated:
                expected.add(i)
        assert set(_merge(level, elapsed, buffer, reward, 1.0, w).tolist()) == expected


@pytest.mark.parametrize("spec", ["markov:n=4,seed=3", "regime:n=3,seed=5,low_mbps=0.3,high_mbps=8"])
def test_optimal_equals_exhaustive_search_on_short_videos(spec: str) -> None:
    video = Video.synthetic(n_chunks=6, seed=2)
    combos = np.array(list(itertools.product(range(video.n_levels), repeat=5)))
    qualities = np.concatenate([np.ones((len(combos), 1), dtype=np.int64), combos], axis=1)
    for trace in generate_from_spec(spec):
        sim = BatchSimulator([trace], video, n_sessions=len(combos))
        sim.reset()
        rebuf = np.stack([sim.step(qualities[:, c]).rebuf_s for c in range(6)], axis=1)
        scores = session_qoe(QoEConfig(), video, qualities, rebuf, 1)[:, 1:].mean(axis=1)
        plan = optimal_plan(trace, video)
        assert plan.score == pytest.approx(scores.max(), abs=1e-9)


def test_optimal_with_a_small_buffer_cap_equals_exhaustive_search() -> None:
    from simulator.link import LinkConfig

    video = Video.synthetic(n_chunks=6, seed=4)
    link = LinkConfig(max_buffer_s=7.0)  # forces sleeps
    trace = make_trace(list(np.arange(0.0, 40.0)), [8.0] * 40)
    combos = np.array(list(itertools.product(range(video.n_levels), repeat=5)))
    qualities = np.concatenate([np.ones((len(combos), 1), dtype=np.int64), combos], axis=1)
    sim = BatchSimulator([trace], video, link, n_sessions=len(combos))
    sim.reset()
    rebuf = np.stack([sim.step(qualities[:, c]).rebuf_s for c in range(6)], axis=1)
    best = session_qoe(QoEConfig(), video, qualities, rebuf, 1)[:, 1:].mean(axis=1).max()
    assert optimal_plan(trace, video, link).score == pytest.approx(best, abs=1e-9)


def test_optimal_policy_replays_its_plan_and_beats_the_baselines() -> None:
    traces = generate_from_spec("markov:n=6,seed=11")
    video = Video.synthetic(n_chunks=20, seed=1)
    scores = {p: run_policy(make_policy(p), traces, video).scores() for p in ("optimal", "bba", "robustmpc", "bola")}
    planned = np.array([optimal_plan(t, video).score for t in traces])
    np.testing.assert_allclose(scores["optimal"], planned, rtol=1e-9)
    for other in ("bba", "robustmpc", "bola"):
        assert np.all(scores["optimal"] >= scores[other] - 1e-9)


def test_optimal_needs_planning_and_deterministic_links() -> None:
    from simulator.link import LinkConfig

    policy = make_policy("optimal")
    video = Video.synthetic(n_chunks=4)
    policy.begin(1, video)
    with pytest.raises(RuntimeError, match="offline"):
        policy.select(observe(video, [(1, 1000, 100, 4.0)]))
    with pytest.raises(ValueError, match="noise"):
        optimal_plan(make_trace([0, 1], [0, 1]), video, LinkConfig.training())


def test_optimal_progress_counts_traces_and_changes_no_plan() -> None:
    from policy.optimal import OptimalConfig, OptimalPolicy, refinement_study
    from simulator.link import LinkConfig

    video = Video.synthetic(n_chunks=6, seed=1)
    link = LinkConfig.evaluation()
    for n, workers in ((3, 1), (16, 2)):  # in this process, and through a process pool
        traces = generate_from_spec(f"markov:n={n},seed=11")
        quiet = OptimalPolicy(OptimalConfig(workers=workers)).plan_sessions(traces, video, link, 1)
        done: list[int] = []
        loud = OptimalPolicy(OptimalConfig(workers=workers)).plan_sessions(traces, video, link, 1, on_trace=done.append)
        assert done == list(range(1, n + 1))
        assert [p.levels.tolist() for p in loud] == [p.levels.tolist() for p in quiet]
        assert [p.total_qoe for p in loud] == [p.total_qoe for p in quiet]
    traces = generate_from_spec("markov:n=3,seed=11")
    planned: list[int] = []
    logs = run_policy(make_policy("optimal"), traces, video, batch_sessions=2, on_planned=planned.append)
    assert planned == [1, 2, 3]  # counted over both batches
    np.testing.assert_array_equal(logs.scores(), run_policy(make_policy("optimal"), traces, video).scores())
    studied: list[int] = []
    refinement_study(traces[:2], video, [8.0, 4.0], workers=1, on_trace=studied.append)
    assert studied == [1, 2, 3, 4]
