"""The throughput prior a player brings to a session: drawn by the simulator from the trace before the
session's start, carried by every chunk result into the observation, read by a policy whose history
padding is 'prior', and reported to the server by a player."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from abr_server.schemas import ChunkReport
from abr_server.sessions import Session
from simulator.batch import BatchSimulator, TraceTable, start_prior_mbps, window_throughput_mbps
from simulator.envs import ABREnv, ABRVectorEnv
from simulator.link import LinkConfig
from simulator.observation import ObservationBuilder, ObservationSpec
from simulator.video import Video
from tests.helpers import make_trace

#: Interval k spans [k, k + 1) s: 2 Mbit/s for k < 10, then 6 Mbit/s up to the period (20 s).
STEP = make_trace([float(t) for t in range(21)], [2.0] * 11 + [6.0] * 10, name="step")
EXACT = LinkConfig(payload_fraction=1.0, prior_window_s=4.0)
PRIOR_SPEC = ObservationSpec(history_padding="prior")
#: kB per ms in one Mbit/s (the unit of the state's throughput row).
KB_PER_MS_PER_MBPS = 1e6 / 8 / 1000 / 1000


def _prior(link: LinkConfig, clock_s: float) -> float:
    table = TraceTable([STEP], link)
    keys, episodes = np.array([7], dtype=np.uint64), np.array([0], dtype=np.uint64)
    return float(start_prior_mbps(link, table, np.array([0]), np.array([clock_s]), keys, episodes)[0])


def test_the_window_mean_by_hand() -> None:
    table = TraceTable([STEP], EXACT)
    row = np.array([0, 0, 0])
    start, end = np.array([0.0, 8.0, -2.0]), np.array([4.0, 12.0, 2.0])
    # [0, 4): 2; [8, 12): half 2, half 6; [-2, 2): the trace loops, [18, 20) at 6 then [0, 2) at 2.
    assert np.allclose(window_throughput_mbps(table, row, start, end), [2.0, 4.0, 4.0])
    assert _prior(EXACT, 12.0) == pytest.approx(4.0)
    # The link's payload share applies, as it does to every chunk.
    assert _prior(EXACT.model_copy(update={"payload_fraction": 0.5}), 12.0) == pytest.approx(2.0)


def test_noise_and_missing_priors_are_seeded_and_have_the_configured_spread() -> None:
    traces = [STEP]
    link = LinkConfig(start="random", trace_order="random", prior_noise_sigma=0.3, prior_missing_fraction=0.2,
                      prior_window_s=20.0, payload_fraction=1.0)  # fmt: skip
    sims = [BatchSimulator(traces, Video.synthetic(n_chunks=4), link, n_sessions=4000, seed=3) for _ in range(2)]
    for sim in sims:
        sim.reset()
    first, second = sims[0].prior_mbps, sims[1].prior_mbps
    assert np.array_equal(first, second)
    missing = first == 0.0
    assert 0.18 < missing.mean() < 0.22  # 800 of 4000 expected; 3 sigma is 0.019
    # A 20 s window is the whole period: the exact prior is the cycle mean, 4 Mbit/s.
    log_ratio = np.log(first[~missing] / 4.0)
    assert abs(log_ratio.mean()) < 0.02
    assert 0.28 < log_ratio.std() < 0.32


def test_the_evaluation_link_gives_the_exact_prior_and_results_carry_it() -> None:
    video = Video.synthetic(n_chunks=4)
    sim = BatchSimulator([STEP], video, EXACT, n_sessions=2)
    sim.reset(start_index=np.array([4, 12]))  # clocks 4 s and 12 s
    assert np.allclose(sim.prior_mbps, [2.0, 4.0])
    result = sim.step(np.zeros(2, dtype=np.int64))
    assert np.allclose(np.asarray(result.prior_mbps), [2.0, 4.0])
    builder = ObservationBuilder(2, video, PRIOR_SPEC)
    builder.update(result)
    assert np.allclose(builder.observation().prior_mbps, [2.0, 4.0])
    builder.reset(np.array([True, False]))
    assert np.allclose(builder.observation().prior_mbps, [0.0, 4.0])


@settings(max_examples=20, deadline=None)
@given(st.floats(0.0, 50.0), st.integers(0, 7))
def test_prior_padding_fills_the_throughput_row_before_the_first_chunk(prior_mbps: float, n_chunks: int) -> None:
    video = Video.synthetic(n_chunks=20)
    states = {}
    for padding in ("zeros", "prior"):
        spec = ObservationSpec(history_padding=padding)
        builder = ObservationBuilder(1, video, spec)
        builder.set_prior(slice(None), [prior_mbps])
        for i in range(n_chunks):
            next_bytes = video.chunk_bytes[:, i + 1][None]
            builder.push(slice(None), quality=[1], buffer_s=[4.0], chunk_bytes=[500_000.0], delay_ms=[1000.0],
                         chunk_index=[i], chunks_remaining=[19 - i], next_chunk_bytes=next_bytes)  # fmt: skip
        states[padding] = builder.state()[0]
    h = ObservationSpec().history_len
    zeros, prior = states["zeros"], states["prior"]
    # Only the empty columns of the throughput row differ; the measured ones are 500 kB / 1000 ms.
    assert np.array_equal(np.delete(zeros, 2, axis=0), np.delete(prior, 2, axis=0))
    assert np.allclose(prior[2, h - n_chunks :], 0.5)
    assert np.allclose(zeros[2, h - n_chunks :], 0.5)
    assert np.allclose(prior[2, : h - n_chunks], prior_mbps * KB_PER_MS_PER_MBPS)
    assert np.all(zeros[2, : h - n_chunks] == 0.0)


def test_the_scalar_env_draws_the_same_priors_as_the_vector_env() -> None:
    traces = [STEP, make_trace([0.0, 3.0, 7.0, 9.0], [1.0, 1.0, 9.0, 0.5], name="other")]
    link = LinkConfig.training()
    vector = ABRVectorEnv(6, traces, Video.synthetic(n_chunks=5), link=link, spec=PRIOR_SPEC)
    states, _ = vector.reset(seed=11)
    priors = vector.observation().prior_mbps
    assert np.any(priors > 0)
    for i in range(6):
        scalar = ABREnv(traces, Video.synthetic(n_chunks=5), link=link, spec=PRIOR_SPEC)
        state, _ = scalar.reset(seed=11 + i)
        assert np.array_equal(state, states[i])


def test_a_player_reports_its_prior_to_the_server() -> None:
    video = Video.synthetic(n_chunks=5)
    session = Session("s", ObservationBuilder(1, video, PRIOR_SPEC), "default", video, "default")
    report = {"index": 0, "quality": 0, "bytes": 100_000, "mtp": 800.0, "buffer_s": 4.0}
    session.push(ChunkReport.model_validate({**report, "prior_throughput_kbps": 2500.0}))
    assert session.observation().prior_mbps[0] == pytest.approx(2.5)
    session.push(ChunkReport.model_validate({**report, "index": 1}))  # later reports need not repeat it
    assert session.observation().prior_mbps[0] == pytest.approx(2.5)


def test_robust_mpc_can_count_the_prior_in_its_prediction() -> None:
    from policy.base import make_policy
    from policy.classic import harmonic_mean_recent
    from policy.mpc import RobustMPCPolicy

    video = Video.synthetic(n_chunks=10)
    builder = ObservationBuilder(2, video)
    builder.set_prior(slice(None), [4.0, 0.0])
    builder.push(slice(None), quality=[0, 0], buffer_s=[4.0, 4.0], chunk_bytes=[250_000.0, 250_000.0],
                 delay_ms=[1000.0, 1000.0], chunk_index=[0, 0], chunks_remaining=[9, 9],
                 next_chunk_bytes=np.tile(video.chunk_bytes[:, 1], (2, 1)))  # fmt: skip
    obs = builder.observation()
    # One chunk at 2 Mbit/s; with the prior, four more slots at 4: 5 / (4 / 4 + 1 / 2).
    assert np.allclose(harmonic_mean_recent(obs, 5), [2.0, 2.0])
    assert np.allclose(harmonic_mean_recent(obs, 5, prior=True), [5 / 1.5, 2.0])
    with_prior = make_policy("robustmpc:prior=true")
    assert isinstance(with_prior, RobustMPCPolicy)
    with_prior.begin(2, video)
    assert np.allclose(with_prior.predicted_mbps(obs), [5 / 1.5, 2.0])  # no past errors at the first decision


def test_a_model_reading_the_prior_plays_as_with_zero_padding_when_no_session_has_one() -> None:
    import torch

    from policy.evaluation.loop import run_policy
    from policy.learned import ModelPolicy
    from policy.learning.config import NetworkConfig
    from policy.learning.network import ActorCritic

    video = Video.synthetic(n_chunks=12)
    traces = [STEP, make_trace([0.0, 5.0, 9.0, 14.0], [1.0, 8.0, 0.7, 3.0], name="other")]
    torch.manual_seed(0)
    model = ActorCritic(ObservationSpec().width(video), video.n_levels, NetworkConfig(hidden=16, filters=8))

    def logs(spec: ObservationSpec, link: LinkConfig) -> np.ndarray:
        return run_policy(ModelPolicy(model, spec), traces, video, link).quality

    none_known = LinkConfig(prior_missing_fraction=1.0)
    assert np.array_equal(logs(PRIOR_SPEC, none_known), logs(ObservationSpec(), none_known))
    # With the exact prior the model sees other numbers (its choices may or may not change).
    states = {}
    for link in (none_known, LinkConfig()):
        sim = BatchSimulator(traces, video, link, n_sessions=2)
        sim.reset()
        builder = ObservationBuilder(2, video, PRIOR_SPEC)
        builder.update(sim.step(np.zeros(2, dtype=np.int64)))
        states[link.prior_missing_fraction] = builder.state()
    assert not np.array_equal(states[1.0], states[0.0])


def test_a_simulator_without_priors_plays_exactly_the_same_sessions() -> None:
    link = LinkConfig.training()
    video = Video.synthetic(n_chunks=6)
    traces = [STEP, make_trace([0.0, 5.0, 9.0, 30.0], [1.0, 3.0, 0.5, 0.5], name="other")]
    with_prior, without = (BatchSimulator(traces, video, link, n_sessions=8, seed=5, prior=p) for p in (True, False))
    levels = np.random.default_rng(0).integers(0, video.n_levels, size=(20, 8))
    for sim in (with_prior, without):
        sim.reset()
    for step in levels:
        a, b = with_prior.step(step), without.step(step)
        for field in ("quality", "chunk_bytes", "delay_ms", "sleep_ms", "buffer_s", "rebuf_s", "end_of_video"):
            assert np.array_equal(getattr(a, field), getattr(b, field)), field
        assert np.all(np.asarray(b.prior_mbps) == 0.0)
        assert np.any(np.asarray(a.prior_mbps) > 0.0)
        ended = np.asarray(a.end_of_video, dtype=bool)
        if ended.any():
            with_prior.reset(ended)
            without.reset(ended)


def test_sessions_draw_priors_only_where_something_reads_them() -> None:
    from policy.base import make_policy
    from policy.learning.rollouts import SessionRollouts

    video = Video.synthetic(n_chunks=5)
    assert not ABRVectorEnv(2, [STEP], video).sim.draws_prior
    assert ABRVectorEnv(2, [STEP], video, spec=PRIOR_SPEC).sim.draws_prior
    assert ABRVectorEnv(2, [STEP], video, prior=True).sim.draws_prior
    assert make_policy("robustmpc:prior=true").reads_prior
    assert not make_policy("robustmpc").reads_prior

    def rollouts(spec: ObservationSpec | None, expert: str | None) -> bool:
        source = SessionRollouts(2, 4, [STEP], video, sessions_seed=0, reward_scale=1.0, qoe="lin",
                                 critic_future=False, spec=spec, expert=expert)  # fmt: skip
        return source.envs.sim.draws_prior

    assert (rollouts(None, None), rollouts(PRIOR_SPEC, None)) == (False, True)
    assert (rollouts(None, "robustmpc"), rollouts(None, "robustmpc:prior=true")) == (False, True)
