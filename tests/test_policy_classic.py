"""Classic rules (BBA, fixed), the policy registry and spec strings, and `policy.evaluation.loop.run_policy`."""

from __future__ import annotations

import numpy as np
import pytest

from policy import PolicySpecError, available_policies, make_policy
from policy.base import IntArray, Policy
from policy.classic import BBAConfig, BBAPolicy, FixedPolicy
from policy.evaluation.loop import RECORD_FIELDS, SessionLogs, run_policy, summarize
from simulator.link import LinkConfig
from simulator.observation import Observation, ObservationBuilder
from simulator.video import Video
from tests.conftest import shared_traces_path
from tests.helpers import make_trace, make_video
from traces.io import load
from traces.trace import Trace

# 8 Mbit/s = 1e6 bytes/s on the wire, of which 95% is payload.
PAYLOAD_BYTES_PER_S_AT_8MBPS = 950_000.0
RTT_MS = 80.0


def observation_at(buffers_s: list[float], video: Video) -> Observation:
    """An observation of ``len(buffers_s)`` sessions that each fetched one chunk and hold ``buffers_s``."""
    n = len(buffers_s)
    builder = ObservationBuilder(n, video)
    builder.push(
        slice(None),
        quality=np.zeros(n, dtype=np.int64),
        buffer_s=buffers_s,
        chunk_bytes=np.full(n, 100_000),
        delay_ms=np.full(n, 500.0),
        chunk_index=np.zeros(n, dtype=np.int64),
        chunks_remaining=np.full(n, video.n_chunks - 1),
        next_chunk_bytes=np.tile(video.chunk_bytes[:, 1], (n, 1)),
    )
    return builder.observation()


# --------------------------------------------------------------------------------------------------
# BBA


def test_bba_levels_at_hand_picked_buffers() -> None:
    video = Video.builtin()  # 6 levels: top = 5
    buffers = [0.0, 4.99, 5.0, 6.99, 7.0, 10.0, 14.99, 15.0, 30.0]
    # Below 5 s: 0; at or above 15 s: 5; else int(5 * (b - 5) / 10):
    # 5 -> int(0) = 0, 6.99 -> int(0.995) = 0, 7 -> int(1.0) = 1, 10 -> int(2.5) = 2, 14.99 -> int(4.995) = 4.
    policy = make_policy("bba")
    policy.begin(len(buffers), video)
    levels = policy.select(observation_at(buffers, video))
    assert levels.dtype == np.int64
    assert levels.tolist() == [0, 0, 0, 0, 1, 2, 4, 5, 5]


def test_bba_with_other_reservoir_and_cushion() -> None:
    video = Video.builtin()
    policy = make_policy("bba:reservoir_s=2,cushion_s=20")
    assert isinstance(policy, BBAPolicy)
    assert policy.config == BBAConfig(reservoir_s=2.0, cushion_s=20.0)
    buffers = [1.99, 2.0, 6.0, 10.0, 21.99, 22.0]
    # int(5 * (b - 2) / 20): 2 -> 0, 6 -> int(1.0) = 1, 10 -> int(2.0) = 2, 21.99 -> int(4.9975) = 4.
    policy.begin(len(buffers), video)
    assert policy.select(observation_at(buffers, video)).tolist() == [0, 0, 1, 2, 4, 5]


def test_bba_scales_to_the_video_ladder() -> None:
    video = make_video([[1, 1], [2, 2], [3, 3]])  # 3 levels: top = 2
    policy = make_policy("bba")
    policy.begin(4, video)
    # int(2 * (b - 5) / 10): 9.99 -> int(0.998) = 0, 10 -> int(1.0) = 1, 14.99 -> 1, 15 -> 2.
    assert policy.select(observation_at([9.99, 10.0, 14.99, 15.0], video)).tolist() == [0, 1, 1, 2]


def test_bba_config_validation() -> None:
    with pytest.raises(PolicySpecError, match="cushion_s"):
        make_policy("bba:cushion_s=0")
    with pytest.raises(PolicySpecError, match="reservoir_s"):
        make_policy("bba:reservoir_s=-1")
    with pytest.raises(PolicySpecError, match="must be finite"):
        make_policy("bba:cushion_s=inf")


def test_select_before_begin_is_an_error() -> None:
    video = Video.builtin()
    with pytest.raises(RuntimeError, match=r"begin\(\) must be called"):
        make_policy("bba").select(observation_at([1.0], video))


# --------------------------------------------------------------------------------------------------
# fixed and the registry


def test_fixed_returns_its_level_for_every_session() -> None:
    video = Video.builtin()
    for level in range(6):
        policy = make_policy(f"fixed:{level}")
        policy.begin(5, video)
        got = policy.select(observation_at([0.0, 3.0, 10.0, 20.0, 60.0], video))
        assert got.dtype == np.int64
        assert got.tolist() == [level] * 5


def test_fixed_level_beyond_the_ladder_fails_at_begin() -> None:
    policy = make_policy("fixed:9")  # nothing is known about the video yet
    assert isinstance(policy, FixedPolicy)
    with pytest.raises(PolicySpecError, match="fixed:9: the video has only 6 levels"):
        policy.begin(1, Video.builtin())
    with pytest.raises(PolicySpecError, match="only 6 levels"):
        make_policy("fixed:6").begin(1, Video.builtin())
    make_policy("fixed:5").begin(1, Video.builtin())


def test_make_policy_errors_name_the_problem() -> None:
    with pytest.raises(PolicySpecError, match=r"unknown policy 'nope' in 'nope:x=1'; available: bba, bola, ") as err:
        make_policy("nope:x=1")
    assert "robustmpc" in str(err.value)
    with pytest.raises(PolicySpecError, match=r"policy 'bba:reservoir=4': reservoir: Extra inputs are not permitted"):
        make_policy("bba:reservoir=4")
    with pytest.raises(PolicySpecError, match="reservoir_s"):
        make_policy("bba:reservoir_s=abc")
    with pytest.raises(PolicySpecError, match="fixed:N needs an integer level, got 'x'"):
        make_policy("fixed:x")
    with pytest.raises(PolicySpecError, match="level"):
        make_policy("fixed:-1")
    with pytest.raises(PolicySpecError, match="takes key=value parameters, got '3'"):
        make_policy("bba:3")
    with pytest.raises(PolicySpecError, match="parameter 'cushion_s' given twice"):
        make_policy("bba:cushion_s=1,cushion_s=2")
    with pytest.raises(PolicySpecError, match="expected key=value, got 'cushion_s'"):
        make_policy("bba:reservoir_s=1,cushion_s")
    assert {"bba", "fixed"} <= set(available_policies())


def test_labels() -> None:
    assert make_policy("bba").label == "bba"
    assert make_policy("bba:reservoir_s=5").label == "bba"  # default values are not repeated
    assert make_policy("bba:reservoir_s=4.0").label == "bba:reservoir_s=4.0"
    assert make_policy("bba:reservoir_s=4").label == "bba:reservoir_s=4.0"
    assert make_policy(" bba:cushion_s=20,reservoir_s=2 ").label == "bba:reservoir_s=2.0,cushion_s=20.0"
    assert make_policy("fixed:3").label == "fixed:3"
    assert make_policy("fixed:level=3").label == "fixed:3"
    assert make_policy("fixed").label == "fixed:0"


# --------------------------------------------------------------------------------------------------
# run_policy and summaries


def constant_8mbps(name: str = "flat") -> list[Trace]:
    return [make_trace([0.0, 1000.0], [8.0, 8.0], name=name)]


def test_run_policy_fixed_on_a_constant_trace() -> None:
    video = Video.builtin()
    logs = run_policy(make_policy("fixed:0"), constant_8mbps(), video)
    assert logs.quality.shape == (1, 48)
    # The first chunk is fetched at initial_quality 1 before the policy is asked.
    assert logs.quality[0].tolist() == [1] + [0] * 47
    np.testing.assert_array_equal(logs.chunk_bytes[0], [video.chunk_bytes[1, 0], *video.chunk_bytes[0, 1:]])
    expected_delay_ms = logs.chunk_bytes[0] / PAYLOAD_BYTES_PER_S_AT_8MBPS * 1000 + RTT_MS
    assert logs.delay_ms[0] == pytest.approx(expected_delay_ms, rel=1e-12)
    # Only the first chunk (empty buffer) stalls, for its whole delay.
    assert logs.rebuf_s[0, 0] == pytest.approx(expected_delay_ms[0] / 1000)
    np.testing.assert_array_equal(logs.rebuf_s[0, 1:], 0.0)
    assert logs.buffer_s[0, 0] == pytest.approx(4.0)
    assert logs.buffer_s[0, 1] == pytest.approx(4.0 - expected_delay_ms[1] / 1000 + 4.0)
    # The buffer never exceeds the 60 s cap: the player sleeps in 500 ms steps instead.
    assert logs.buffer_s.max() <= 60.0
    assert np.all(np.isin(logs.sleep_ms, np.arange(0, 8001, 500)))
    assert logs.sleep_ms.sum() > 0

    summary = summarize(logs, "fixed:0", "flat", wall_s=0.5)
    assert summary.policy == "fixed:0"
    assert summary.traces == "flat"
    assert summary.n_traces == 1
    assert np.isnan(summary.qoe_ci95)  # one session: no interval
    assert summary.bitrate_kbps == pytest.approx((750 + 47 * 300) / 48)  # 309.375
    assert summary.rebuf_s == pytest.approx(expected_delay_ms[0] / 1000)
    assert summary.switches == 1.0  # level 1 -> 0 after the first chunk
    # QoE_lin over chunks 2..48: chunk 2 is 0.3 - |0.3 - 0.75| = -0.15, the other 46 are 0.3.
    assert summary.qoe == pytest.approx((-0.15 + 46 * 0.3) / 47)
    assert summary.wall_s == 0.5


def test_run_policy_initial_quality_and_two_sessions() -> None:
    video = Video.builtin()
    traces = constant_8mbps("a") + constant_8mbps("b")
    logs = run_policy(make_policy("fixed:0"), traces, video, initial_quality=0)
    assert logs.trace_names == ("a", "b")
    assert logs.quality.tolist() == [[0] * 48, [0] * 48]
    summary = summarize(logs, "fixed:0", "flat", wall_s=0.0)
    assert summary.n_traces == 2
    assert summary.qoe_ci95 == 0.0
    assert summary.switches == 0.0
    assert summary.qoe == pytest.approx(0.3)
    assert summary.bitrate_kbps == 300.0


def test_run_policy_rejects_bad_arguments() -> None:
    video = Video.builtin()
    with pytest.raises(ValueError, match="no traces"):
        run_policy(make_policy("bba"), [], video)
    with pytest.raises(ValueError, match=r"initial_quality must be in \[0, 6\), got 6"):
        run_policy(make_policy("bba"), constant_8mbps(), video, initial_quality=6)
    with pytest.raises(ValueError, match="trace_order='sequential'"):
        run_policy(make_policy("bba"), constant_8mbps(), video, LinkConfig.training())


class _OutOfRange(Policy):
    name = "out-of-range-test"

    def select(self, obs: Observation) -> IntArray:
        return np.full(obs.n_sessions, 99, dtype=np.int64)


class _FloatLevels(Policy):
    name = "float-levels-test"

    def select(self, obs: Observation) -> IntArray:
        return np.zeros(obs.n_sessions)  # type: ignore[return-value]


def test_run_policy_checks_the_levels_a_policy_returns() -> None:
    video = Video.builtin()
    with pytest.raises(ValueError, match=r"returned a level outside \[0, 6\)"):
        run_policy(_OutOfRange(), constant_8mbps(), video)
    with pytest.raises(TypeError, match=r"returned float64 \(1,\), expected int \(1,\)"):
        run_policy(_FloatLevels(), constant_8mbps(), video)


def test_records_field_names_and_values() -> None:
    video = Video.builtin()
    logs = run_policy(make_policy("fixed:0"), constant_8mbps("flat"), video)
    records = logs.records()
    assert len(records) == 48
    assert tuple(records[0]) == RECORD_FIELDS
    assert RECORD_FIELDS == (
        "trace", "chunk", "quality", "bitrate_kbps", "chunk_bytes",
        "delay_ms", "sleep_ms", "buffer_s", "rebuf_s", "qoe_lin",
    )  # fmt: skip
    assert records[1]["trace"] == "flat"
    assert records[1]["chunk"] == 1
    assert records[1]["quality"] == 0
    assert records[1]["bitrate_kbps"] == 300
    assert records[1]["chunk_bytes"] == int(video.chunk_bytes[0, 1])
    assert records[1]["delay_ms"] == pytest.approx(video.chunk_bytes[0, 1] / PAYLOAD_BYTES_PER_S_AT_8MBPS * 1000 + 80)
    assert records[1]["qoe_lin"] == pytest.approx(0.3 - 0.45)
    assert records[0]["bitrate_kbps"] == 750
    assert all(type(records[0][k]) is int for k in ("chunk", "quality", "bitrate_kbps", "chunk_bytes"))
    assert all(type(records[0][k]) is float for k in ("delay_ms", "sleep_ms", "buffer_s", "rebuf_s", "qoe_lin"))


# --------------------------------------------------------------------------------------------------
# Published reference numbers on the real traces (skipped where ../shared/traces is absent)


def _envivio() -> Video:
    return Video.from_size_files(shared_traces_path("video-sizes"))


@pytest.mark.shared_traces
@pytest.mark.parametrize(("trace_set", "expected"), [("fcc-test", 0.773), ("norway-test", 0.594)])
def test_bba_reference_scores(trace_set: str, expected: float) -> None:
    traces = load(shared_traces_path(trace_set))
    logs = run_policy(make_policy("bba"), traces, _envivio())
    assert logs.n_sessions == len(traces)
    assert float(logs.scores().mean()) == pytest.approx(expected, abs=1e-3)


@pytest.mark.shared_traces
def test_batching_does_not_change_results() -> None:
    traces = load(shared_traces_path("norway-test"))
    video = _envivio()
    small = run_policy(make_policy("bba"), traces, video, batch_sessions=7)
    large = run_policy(make_policy("bba"), traces, video, batch_sessions=1024)
    assert small.trace_names == large.trace_names
    for field in ("quality", "chunk_bytes", "delay_ms", "sleep_ms", "buffer_s", "rebuf_s"):
        np.testing.assert_array_equal(getattr(small, field), getattr(large, field), err_msg=field)


def test_session_logs_is_frozen() -> None:
    logs = run_policy(make_policy("fixed:0"), constant_8mbps(), Video.builtin())
    assert isinstance(logs, SessionLogs)
    with pytest.raises(AttributeError):
        logs.initial_quality = 0  # type: ignore[misc]
