"""Hand-computed cases of the chunk-download semantics, checked on the scalar and the vector core."""

from __future__ import annotations

import numpy as np
import pytest

from simulator.batch import BatchSimulator
from simulator.link import LinkConfig
from simulator.reference import ScalarSession
from tests.helpers import make_trace, make_video

# 8 Mbit/s = 1e6 bytes/s on the wire, of which 95% is payload: 950,000 payload bytes per second.
PAYLOAD_BYTES_PER_S_AT_8MBPS = 950_000.0


def both(trace, video, link=None, start_index=0):  # type: ignore[no-untyped-def]
    """Run the same levels through the scalar and the vector core, return both outcome lists."""
    link = link or LinkConfig.evaluation()

    def run(levels: list[int]) -> list[dict[str, float]]:
        scalar = ScalarSession(trace, video, link, start_index=start_index)
        sim = BatchSimulator([trace], video, link, n_sessions=1, seed=0)
        sim.reset(start_index=start_index)
        out = []
        for level in levels:
            s = scalar.download(level)
            v = sim.step(np.array([level]))
            for key in ("delay_ms", "sleep_ms", "buffer_s", "rebuf_s"):
                assert float(getattr(v, key)[0]) == pytest.approx(getattr(s, key), rel=1e-12, abs=1e-9), key
            out.append({"delay_ms": s.delay_ms, "sleep_ms": s.sleep_ms, "buffer_s": s.buffer_s, "rebuf_s": s.rebuf_s})
        return out

    return run


def test_chunk_inside_one_interval_and_first_chunk_rebuffers() -> None:
    trace = make_trace([0, 1, 2, 3], [0, 8, 8, 8])
    video = make_video([[1_425_000, 1_425_000]])
    out = both(trace, video)([0])
    # 1,425,000 B at 950,000 B/s = 1.5 s, spanning intervals 1 and 2; +80 ms RTT.
    assert out[0]["delay_ms"] == pytest.approx(1580.0)
    assert out[0]["rebuf_s"] == pytest.approx(1.58)  # empty buffer: the whole delay stalls
    assert out[0]["buffer_s"] == pytest.approx(4.0)
    assert out[0]["sleep_ms"] == 0.0


def test_chunk_spanning_intervals_with_different_rates() -> None:
    # Interval 1 (0-1 s) at 8 Mbit/s: 950,000 B; interval 2 (1-3 s) at 2 Mbit/s: 237,500 B/s.
    trace = make_trace([0, 1, 3, 10], [5, 8, 2, 8])
    video = make_video([[1_425_000]])
    out = both(trace, video)([0])
    # 950,000 B in 1 s, the remaining 475,000 B at 237,500 B/s = 2 s: exactly at the end of interval 2,
    # which the reference (strict >) resolves by moving on and adding 0 s of interval 3.
    assert out[0]["delay_ms"] == pytest.approx(3080.0)


def test_second_chunk_rebuffers_only_beyond_the_buffer() -> None:
    # 1 Mbit/s: 118,750 payload bytes/s.
    trace = make_trace([0, 100], [1, 1])
    video = make_video([[118_750 * 2, 118_750 * 5]])
    out = both(trace, video)([0, 0])
    assert out[0]["delay_ms"] == pytest.approx(2080.0)
    assert out[0]["buffer_s"] == pytest.approx(4.0)
    # Second chunk takes 5.08 s with 4 s in the buffer: 1.08 s stall, buffer restarts at one chunk.
    assert out[1]["delay_ms"] == pytest.approx(5080.0)
    assert out[1]["rebuf_s"] == pytest.approx(1.08)
    assert out[1]["buffer_s"] == pytest.approx(4.0)


def test_wrap_to_second_sample_with_clock_zero() -> None:
    # The first sample is at 0.5 s: the first pass has interval 1 of 0.5 s; after the wrap interval 1
    # runs from clock 0, i.e. for a full second.
    trace = make_trace([0.5, 1, 2], [99, 8, 4])
    video = make_video([[1_200_000]])
    out = both(trace, video)([0])
    # First pass: 0.5 s x 950,000 + 1 s x 475,000 = 950,000 B in 1.5 s; wrap; 250,000 B at 950,000 B/s.
    expected_s = 1.5 + 250_000 / PAYLOAD_BYTES_PER_S_AT_8MBPS
    assert out[0]["delay_ms"] == pytest.approx(expected_s * 1000 + 80)


def test_several_wraps_in_one_chunk() -> None:
    trace = make_trace([0, 1], [0, 8])  # one interval of 950,000 B per second, looping
    video = make_video([[950_000 * 3 + 475_000]])
    out = both(trace, video)([0])
    assert out[0]["delay_ms"] == pytest.approx(3500.0 + 80)


def test_sleep_when_buffer_exceeds_cap_advances_the_trace_clock() -> None:
    # Rates change at 3 s: 8 Mbit/s before, 16 Mbit/s after. Cap the buffer at 5 s to force a sleep.
    trace = make_trace([0, 1, 2, 3, 4, 10], [0, 8, 8, 8, 16, 16])
    video = make_video([[475_000, 475_000, 475_000]])
    link = LinkConfig(max_buffer_s=5.0)
    out = both(trace, video, link)([0, 0, 0])
    # Chunk 1: 0.5 s + RTT; buffer 4 s. Clock at 0.5 s.
    assert out[0]["delay_ms"] == pytest.approx(580.0)
    # Chunk 2: 0.58 s; buffer 4 - 0.58 + 4 = 7.42 s > 5 s: sleep ceil(2.42 / 0.5) * 0.5 = 2.5 s.
    assert out[1]["delay_ms"] == pytest.approx(580.0)
    assert out[1]["sleep_ms"] == pytest.approx(2500.0)
    assert out[1]["buffer_s"] == pytest.approx(4.92)
    # The clock moved from 1.0 s to 3.5 s while sleeping: chunk 3 downloads at 16 Mbit/s.
    assert out[2]["delay_ms"] == pytest.approx(475_000 / (2 * PAYLOAD_BYTES_PER_S_AT_8MBPS) * 1000 + 80)


def test_sleep_wraps_the_trace() -> None:
    trace = make_trace([0, 1, 2], [0, 8, 4])
    video = make_video([[475_000, 475_000]])
    link = LinkConfig(max_buffer_s=4.2)
    out = both(trace, video, link)([0, 0])
    # Chunk 1: 0.5 s; chunk 2: 0.5 s. Buffer 4 - 0.58 + 4 = 7.42 s: sleep 3.5 s; clock 1.0 -> 4.5 -> wraps
    # twice (period 2 s) to 0.5 s.
    assert out[1]["sleep_ms"] == pytest.approx(3500.0)


def test_random_start_index_starts_at_that_sample() -> None:
    trace = make_trace([0, 1, 2, 3], [0, 1, 8, 1])
    video = make_video([[475_000]])
    out = both(trace, video, start_index=1)([0])  # interval 2: 8 Mbit/s from clock 1 s
    assert out[0]["delay_ms"] == pytest.approx(580.0)


def test_noise_multiplies_delay_after_rtt() -> None:
    trace = make_trace([0, 10], [0, 8])
    video = make_video([[475_000, 475_000]])
    session = ScalarSession(trace, video, LinkConfig(), noise_factors=[1.1, 0.9])
    assert session.download(0).delay_ms == pytest.approx(580.0 * 1.1)
    assert session.download(0).delay_ms == pytest.approx(580.0 * 0.9)


def test_end_of_video_and_next_sizes() -> None:
    trace = make_trace([0, 10], [0, 8])
    video = make_video([[100, 200], [300, 400]])
    sim = BatchSimulator([trace], video, n_sessions=1)
    sim.reset()
    r = sim.step(np.array([1]))
    assert r.chunk_bytes.tolist() == [300]
    assert r.next_chunk_bytes.tolist() == [[200, 400]]
    assert r.chunks_remaining.tolist() == [1]
    assert not r.end_of_video[0]
    r = sim.step(np.array([0]))
    assert r.end_of_video[0]
    assert r.chunks_remaining.tolist() == [0]
    assert r.next_chunk_bytes.tolist() == [[0, 0]]
    with pytest.raises(RuntimeError, match="reset"):
        sim.step(np.array([0]))


def test_step_rejects_bad_levels_and_shapes() -> None:
    trace = make_trace([0, 10], [0, 8])
    sim = BatchSimulator([trace], make_video([[100, 200]]), n_sessions=2)
    sim.reset()
    with pytest.raises(ValueError, match=r"qualities must be in \[0, 1\)"):
        sim.step(np.array([0, 1]))
    with pytest.raises(ValueError, match="shape"):
        sim.step(np.array([0]))


def test_masked_step_only_moves_active_sessions() -> None:
    trace = make_trace([0, 10], [0, 8])
    video = make_video([[475_000, 475_000]])
    sim = BatchSimulator([trace], video, n_sessions=3)
    sim.reset()
    r = sim.step(np.array([0, 0, 0]), active=np.array([True, False, True]))
    assert r.active.tolist() == [True, False, True]
    assert r.delay_ms[1] == 0.0
    assert r.delay_ms[0] == pytest.approx(580.0)
    assert sim.chunk_index.tolist() == [1, 0, 1]
