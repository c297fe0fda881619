"""Property-based checks: invariants of the semantics, and scalar == vector (numpy and torch)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulator.batch import NOISE_DRAW0, BatchSimulator, episode_uniforms, noise_factors
from simulator.link import LinkConfig
from simulator.reference import ScalarSession
from simulator.video import Video
from traces.trace import Trace

FIELDS = ("delay_ms", "sleep_ms", "buffer_s", "rebuf_s")


@st.composite
def traces(draw: st.DrawFn) -> Trace:
    n = draw(st.integers(2, 25))
    steps = draw(st.lists(st.floats(0.05, 3.0), min_size=n - 1, max_size=n - 1))
    first = draw(st.sampled_from([0.0, 0.0, 0.3, 1.7]))
    rates = draw(st.lists(st.one_of(st.just(0.0), st.floats(0.05, 30.0)), min_size=n, max_size=n))
    if not any(r > 0 for r in rates[1:]):
        rates[-1] = 1.0
    times = first + np.concatenate([[0.0], np.cumsum(steps)])
    return Trace("h", times, np.array(rates))


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[Trace], Video, LinkConfig, list[list[int]], list[int], list[int]]:
    trace_set = draw(st.lists(traces(), min_size=1, max_size=4))
    n_levels = draw(st.integers(1, 4))
    n_chunks = draw(st.integers(1, 8))
    sizes = draw(st.lists(st.integers(1_000, 4_000_000), min_size=n_levels * n_chunks, max_size=n_levels * n_chunks))
    video = Video(
        tuple(500 * (i + 1) for i in range(n_levels)),
        draw(st.sampled_from([1.0, 2.0, 4.0])),
        np.sort(np.array(sizes).reshape(n_chunks, n_levels), axis=1).T,
    )
    link = LinkConfig(
        max_buffer_s=draw(st.sampled_from([3.0, 6.0, 60.0])),
        drain_step_ms=draw(st.sampled_from([250.0, 500.0])),
        rtt_ms=draw(st.sampled_from([0.0, 80.0])),
    )
    b = draw(st.integers(1, 5))
    levels = [draw(st.lists(st.integers(0, n_levels - 1), min_size=b, max_size=b)) for _ in range(n_chunks)]
    trace_ids = draw(st.lists(st.integers(0, len(trace_set) - 1), min_size=b, max_size=b))
    starts = [draw(st.integers(0, len(trace_set[t]) - 2)) for t in trace_ids]
    return trace_set, video, link, levels, trace_ids, starts


def _run_both(scenario, device=None):  # type: ignore[no-untyped-def]
    trace_set, video, link, levels, trace_ids, starts = scenario
    b = len(trace_ids)
    sim = BatchSimulator(trace_set, video, link, n_sessions=b, seed=0, device=device)
    sim.reset(trace_index=trace_ids, start_index=starts)
    sessions = [ScalarSession(trace_set[t], video, link, start_index=s) for t, s in zip(trace_ids, starts, strict=True)]
    for chunk_levels in levels:
        result = sim.step(np.array(chunk_levels))
        for i, session in enumerate(sessions):
            expected = session.download(chunk_levels[i])
            for key in FIELDS:
                got = float(np.asarray(getattr(result, key) if device is None else getattr(result, key).cpu())[i])
                want = getattr(expected, key)
                assert got == pytest.approx(want, rel=1e-9, abs=1e-9), (key, i)
            assert bool(result.end_of_video[i]) == expected.end_of_video
            assert int(result.chunks_remaining[i]) == expected.chunks_remaining
            assert [int(x) for x in result.next_chunk_bytes[i]] == list(expected.next_chunk_bytes)
    return sessions


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_vector_core_equals_scalar_reference(scenario) -> None:  # type: ignore[no-untyped-def]
    _run_both(scenario)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_torch_backend_equals_scalar_reference(scenario) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("torch")
    _run_both(scenario, device="cpu")


@settings(max_examples=100, deadline=None)
@given(scenarios())
def test_invariants(scenario) -> None:  # type: ignore[no-untyped-def]
    trace_set, video, link, levels, trace_ids, starts = scenario
    sim = BatchSimulator(trace_set, video, link, n_sessions=len(trace_ids), seed=0)
    sim.reset(trace_index=trace_ids, start_index=starts)
    for chunk_levels in levels:
        r = sim.step(np.array(chunk_levels))
        assert np.all(r.buffer_s >= 0)
        assert np.all(r.buffer_s <= link.max_buffer_s + 1e-9)
        assert np.all(r.delay_ms >= link.rtt_ms - 1e-9)
        assert np.all(r.rebuf_s * 1000 <= r.delay_ms + 1e-9)
        assert np.all(r.sleep_ms >= 0)
        assert np.all(np.mod(r.sleep_ms, link.drain_step_ms) == 0)


@settings(max_examples=40, deadline=None)
@given(scenarios(), st.integers(0, 2**31 - 1))
def test_training_mode_noise_and_starts_match_scalar_with_same_draws(scenario, seed) -> None:  # type: ignore[no-untyped-def]
    """Random traces/starts/noise: the vector core equals scalar sessions fed the same counter-based draws."""
    trace_set, video, _, levels, trace_ids, _ = scenario
    link = LinkConfig.training()
    b = len(trace_ids)
    sim = BatchSimulator(trace_set, video, link, n_sessions=b, seed=seed)
    sim.reset()
    traces_now = sim.trace_index.tolist()
    starts = sim.start_index.tolist()
    keys, episodes = sim.episode_key()
    draws = NOISE_DRAW0 + np.arange(video.n_chunks)
    noise = noise_factors(link, episode_uniforms(keys[:, None], episodes[:, None], draws[None, :]))
    sessions = [
        ScalarSession(trace_set[t], video, link, start_index=s, noise_factors=noise[i].tolist())
        for i, (t, s) in enumerate(zip(traces_now, starts, strict=True))
    ]
    for chunk_levels in levels:
        r = sim.step(np.array(chunk_levels))
        for i, session in enumerate(sessions):
            expected = session.download(chunk_levels[i])
            assert float(r.delay_ms[i]) == pytest.approx(expected.delay_ms, rel=1e-9)
            assert 0.9 * link.rtt_ms <= r.delay_ms[i]


def test_episode_uniforms_are_uniform_and_distinct() -> None:
    keys = np.arange(1, 5, dtype=np.uint64)
    u = episode_uniforms(np.repeat(keys, 1000)[:, None], np.tile(np.arange(1000), 4)[:, None], np.arange(50))
    assert u.min() >= 0.0
    assert u.max() < 1.0
    assert abs(u.mean() - 0.5) < 0.01
    assert np.unique(u).size == u.size
    # Same key and episode: the same numbers; another episode: different numbers.
    draws = np.arange(10)
    np.testing.assert_array_equal(episode_uniforms(7, 3, draws), episode_uniforms(7, 3, draws))
    assert not np.array_equal(episode_uniforms(7, 3, draws), episode_uniforms(7, 4, draws))
    assert not np.array_equal(episode_uniforms(7, 3, draws), episode_uniforms(8, 3, draws))


def test_same_seed_same_sessions_and_reseeding_restarts_the_stream() -> None:
    rng = np.random.default_rng(1)
    trace_set = [Trace(f"t{i}", np.arange(30.0), rng.uniform(0.5, 5, 30)) for i in range(6)]
    video = Video.builtin()

    def first_delays(sim: BatchSimulator) -> list[float]:
        sim.reset()
        return list(sim.step(np.ones(8, dtype=np.int64)).delay_ms)

    a = BatchSimulator(trace_set, video, LinkConfig.training(), n_sessions=8, seed=5)
    b = BatchSimulator(trace_set, video, LinkConfig.training(), n_sessions=8, seed=5)
    assert first_delays(a) == first_delays(b)
    second = first_delays(a)
    assert second != first_delays(BatchSimulator(trace_set, video, LinkConfig.training(), n_sessions=8, seed=6))
    a.reset(seed=5)
    b.reset(seed=5)
    assert list(a.step(np.ones(8, dtype=np.int64)).delay_ms) == list(b.step(np.ones(8, dtype=np.int64)).delay_ms)


def test_sequential_order_plays_each_trace_once_per_round() -> None:
    trace_set = [Trace(f"t{i}", np.arange(5.0), np.ones(5)) for i in range(5)]
    sim = BatchSimulator(trace_set, Video.builtin(), LinkConfig.evaluation(), n_sessions=2)
    seen = []
    for _ in range(3):
        sim.reset()
        seen.extend(sim.trace_index.tolist())
    assert seen == [0, 1, 2, 3, 4, 0]
