"""The Pensieve observation matrix, row by row, against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from simulator.batch import BatchSimulator
from simulator.link import LinkConfig
from simulator.observation import HistoryPadding, ObservationBuilder, ObservationSpec
from simulator.video import Video
from tests.helpers import make_trace, make_video

# Ladder 300, 600, 900 kbps; 5 chunks. Sizes are multiples of 95,000 B: at 8 Mbit/s (950,000 payload
# bytes per second) level L of any chunk downloads in (L + 1) * 100 ms, plus 80 ms RTT.
SIZES = [[95_000 * (level + 1) + chunk for chunk in range(5)] for level in range(3)]
N_LEVELS, N_CHUNKS = 3, 5


def video3() -> Video:
    return make_video(SIZES)


def push_all(builder: ObservationBuilder, **values: object) -> None:
    """Push one chunk for every session (all rows)."""
    builder.push(slice(None), **values)  # type: ignore[arg-type]


def test_spec_width() -> None:
    spec = ObservationSpec()
    assert (spec.history_len, spec.buffer_norm_s, spec.remaining_cap_chunks) == (8, 10.0, 48)
    assert spec.width(make_video([[1]] * 10)) == 10
    assert spec.width(Video.builtin()) == 8
    assert spec.width(video3()) == 8
    assert ObservationSpec(history_len=4).width(video3()) == 4
    assert spec.to_metadata() == {"rows": 6, "history_len": 8, "buffer_norm_s": 10.0, "remaining_cap_chunks": 48,
                                  "history_padding": "zeros"}  # fmt: skip


def test_state_before_any_history_is_zero_except_next_sizes() -> None:
    builder = ObservationBuilder(2, video3())
    state = builder.state()
    assert state.shape == (2, 6, 8)
    assert state.dtype == np.float32
    expected = np.zeros((2, 6, 8), dtype=np.float32)
    # Row 4: first chunk's sizes in MB at each level, zeros beyond the 3 levels.
    expected[:, 4, :3] = [0.095, 0.190, 0.285]
    np.testing.assert_allclose(state, expected, rtol=1e-6)
    obs = builder.observation()
    np.testing.assert_array_equal(obs.chunk_index, [0, 0])
    np.testing.assert_array_equal(obs.chunks_remaining, [5, 5])
    np.testing.assert_array_equal(obs.n_history, [0, 0])


def test_one_pushed_chunk_every_row() -> None:
    builder = ObservationBuilder(2, video3())
    push_all(
        builder,
        quality=[2, 0],
        buffer_s=[4.0, 3.5],
        chunk_bytes=[1_000_000, 250_000],
        delay_ms=[2000.0, 1000.0],
        chunk_index=[0, 0],
        chunks_remaining=[4, 4],
        next_chunk_bytes=[[1_000, 2_000, 3_000], [4_000, 5_000, 6_000]],
    )
    state = builder.state()
    expected = np.zeros((2, 6, 8))
    # Session 0: level 2 of 900 kbps top; 4 s buffer; 1e6 B / 2000 ms / 1000 = 0.5 kB/ms; 2000 ms/1000/10.
    expected[0, :, 7] = [900 / 900, 4.0 / 10, 1_000_000 / 2000 / 1000, 2000 / 1000 / 10, 0, 4 / 48]
    # Session 1: level 0 -> 300/900; 3.5 s; 250,000 B / 1000 ms / 1000 = 0.25 kB/ms; 0.1.
    expected[1, :, 7] = [300 / 900, 3.5 / 10, 250_000 / 1000 / 1000, 1000 / 1000 / 10, 0, 4 / 48]
    expected[0, 4, :3] = [0.001, 0.002, 0.003]
    expected[1, 4, :3] = [0.004, 0.005, 0.006]
    np.testing.assert_allclose(state, expected, rtol=1e-6, atol=1e-9)

    obs = builder.observation()
    np.testing.assert_array_equal(obs.last_quality, [2, 0])
    np.testing.assert_array_equal(obs.buffer_s, [4.0, 3.5])
    np.testing.assert_array_equal(obs.chunk_index, [1, 1])  # the next chunk to fetch
    np.testing.assert_array_equal(obs.chunks_remaining, [4, 4])
    np.testing.assert_array_equal(obs.n_history, [1, 1])
    # 1e6 B * 8 bit in 2 s = 4 Mbit/s; 250,000 B * 8 bit in 1 s = 2 Mbit/s; zeros where no history.
    tput = obs.throughput_mbps_history()
    np.testing.assert_allclose(tput[:, 7], [4.0, 2.0])
    np.testing.assert_array_equal(tput[:, :7], 0.0)


def test_oldest_padding_repeats_the_first_chunk_and_leaves_empty_rows_empty() -> None:
    spec = ObservationSpec(history_len=4, history_padding=HistoryPadding.oldest)
    builder = ObservationBuilder(3, video3(), spec)
    chunk = {"next_chunk_bytes": [[1_000, 2_000, 3_000]] * 2, "chunks_remaining": [4, 3]}
    builder.push(np.array([True, True, False]), quality=[2, 0], buffer_s=[4.0, 3.5], chunk_bytes=[1_000_000, 250_000],
                 delay_ms=[2000.0, 1000.0], chunk_index=[0, 0], **chunk)  # fmt: skip
    builder.push(np.array([False, True, False]), quality=[1], buffer_s=[5.0], chunk_bytes=[500_000], delay_ms=[500.0],
                 chunk_index=[1], next_chunk_bytes=[[1_000, 2_000, 3_000]], chunks_remaining=[2])  # fmt: skip
    state = builder.state()
    first = [900 / 900, 4.0 / 10, 1_000_000 / 2000 / 1000, 2000 / 1000 / 10, 0, 4 / 48]
    # session 0: one chunk, repeated in all four columns (row 4 holds the next chunk's sizes)
    for col in range(4):
        np.testing.assert_allclose(state[0, [0, 1, 2, 3, 5], col], [first[i] for i in (0, 1, 2, 3, 5)], rtol=1e-6)
    # session 1: two chunks; the older one fills the three columns before the newest
    older = [300 / 900, 3.5 / 10, 250_000 / 1000 / 1000, 1000 / 1000 / 10, 3 / 48]
    newest = [600 / 900, 5.0 / 10, 500_000 / 500 / 1000, 500 / 1000 / 10, 2 / 48]
    for col in range(3):
        np.testing.assert_allclose(state[1, [0, 1, 2, 3, 5], col], older, rtol=1e-6)
    np.testing.assert_allclose(state[1, [0, 1, 2, 3, 5], 3], newest, rtol=1e-6)
    # session 2: no chunk yet: as with zero padding
    np.testing.assert_array_equal(state[2, [0, 1, 2, 3, 5]], 0.0)
    zeros = ObservationBuilder(3, video3(), ObservationSpec(history_len=4))
    np.testing.assert_array_equal(zeros.state()[2], state[2])


def test_history_is_right_aligned_and_rolls_after_eight_chunks() -> None:
    video = make_video([[1] * 20, [2] * 20, [3] * 20])
    builder = ObservationBuilder(2, video)
    for k in range(10):
        push_all(
            builder,
            quality=[k % 3, 2 - k % 3],
            buffer_s=[float(k), float(k) + 0.5],
            chunk_bytes=[(k + 1) * 1000, (k + 1) * 2000],
            delay_ms=[100.0, 100.0],
            chunk_index=[k, k],
            chunks_remaining=[19 - k, 19 - k],
            next_chunk_bytes=[[1, 2, 3], [1, 2, 3]],
        )
        if k == 2:
            # Three chunks: columns 5, 6, 7 hold chunks 0, 1, 2; columns 0..4 are still zero.
            state = builder.state()
            np.testing.assert_allclose(state[0, 1], [0, 0, 0, 0, 0, 0.0, 0.1, 0.2], atol=1e-7)
            np.testing.assert_allclose(state[0, 0], [0, 0, 0, 0, 0, 1 / 3, 2 / 3, 1.0], rtol=1e-6)
            np.testing.assert_allclose(state[1, 5], [0, 0, 0, 0, 0, 19 / 48, 18 / 48, 17 / 48], rtol=1e-6)
    state = builder.state()
    kept = np.arange(2, 10)  # chunks 0 and 1 were dropped
    np.testing.assert_allclose(state[0, 0], (300 * (kept % 3 + 1)) / 900, rtol=1e-6)
    np.testing.assert_allclose(state[1, 0], (300 * (3 - kept % 3)) / 900, rtol=1e-6)
    np.testing.assert_allclose(state[0, 1], kept / 10, rtol=1e-6)
    np.testing.assert_allclose(state[1, 1], (kept + 0.5) / 10, rtol=1e-6)
    np.testing.assert_allclose(state[0, 2], (kept + 1) * 1000 / 100 / 1000, rtol=1e-6)  # (k+1)/100 kB/ms
    np.testing.assert_allclose(state[1, 2], (kept + 1) * 2000 / 100 / 1000, rtol=1e-6)
    np.testing.assert_allclose(state[:, 3], 0.01, rtol=1e-6)  # 100 ms / 1000 / 10
    np.testing.assert_allclose(state[0, 5], (19 - kept) / 48, rtol=1e-6)
    obs = builder.observation()
    np.testing.assert_array_equal(obs.n_history, [8, 8])
    np.testing.assert_array_equal(obs.quality_history[0], kept % 3)
    np.testing.assert_array_equal(obs.chunk_index, [10, 10])


def test_masked_push_changes_only_selected_rows() -> None:
    builder = ObservationBuilder(2, video3())
    first = {
        "quality": [1, 1],
        "buffer_s": [4.0, 4.0],
        "chunk_bytes": [190_000, 190_000],
        "delay_ms": [280.0, 280.0],
        "chunk_index": [0, 0],
        "chunks_remaining": [4, 4],
        "next_chunk_bytes": [[95_001, 190_001, 285_001]] * 2,
    }
    push_all(builder, **first)
    before = builder.state()
    # Values over all B sessions with a mask: only session 1 takes its value.
    builder.push(
        np.array([False, True]),
        quality=[0, 2],
        buffer_s=[9.0, 7.5],
        chunk_bytes=[1, 570_000],
        delay_ms=[1.0, 380.0],
        chunk_index=[9, 1],
        chunks_remaining=[9, 3],
        next_chunk_bytes=[[1, 1, 1], [95_002, 190_002, 285_002]],
    )
    after = builder.state()
    np.testing.assert_array_equal(after[0], before[0])
    np.testing.assert_allclose(after[1, :, 6], before[1, :, 7])  # the old newest chunk moved left
    np.testing.assert_allclose(after[1, :, 7], [900 / 900, 0.75, 570_000 / 380 / 1000, 0.038, 0.0, 3 / 48], rtol=1e-6)
    np.testing.assert_allclose(after[1, 4, :3], [0.095002, 0.190002, 0.285002], rtol=1e-6)
    obs = builder.observation()
    np.testing.assert_array_equal(obs.n_history, [1, 2])
    np.testing.assert_array_equal(obs.chunk_index, [1, 2])
    np.testing.assert_array_equal(obs.last_quality, [1, 2])

    # Values given only for the selected rows (here: session 0).
    builder.push(
        np.array([True, False]),
        quality=[0],
        buffer_s=[2.0],
        chunk_bytes=[95_001],
        delay_ms=[180.0],
        chunk_index=[1],
        chunks_remaining=[3],
        next_chunk_bytes=[[95_002, 190_002, 285_002]],
    )
    again = builder.state()
    np.testing.assert_array_equal(again[1], after[1])
    np.testing.assert_allclose(again[0, :, 7], [300 / 900, 0.2, 95_001 / 180 / 1000, 0.018, 0.0, 3 / 48], rtol=1e-6)


def test_reset_mask_clears_only_those_rows() -> None:
    builder = ObservationBuilder(2, video3())
    push_all(
        builder,
        quality=[2, 1],
        buffer_s=[4.0, 5.0],
        chunk_bytes=[285_000, 190_000],
        delay_ms=[380.0, 280.0],
        chunk_index=[0, 0],
        chunks_remaining=[4, 4],
        next_chunk_bytes=[[95_001, 190_001, 285_001]] * 2,
    )
    initial = ObservationBuilder(2, video3()).state()
    before = builder.state()
    builder.reset(np.array([True, False]))
    state = builder.state()
    np.testing.assert_array_equal(state[0], initial[0])
    np.testing.assert_array_equal(state[1], before[1])
    obs = builder.observation()
    np.testing.assert_array_equal(obs.n_history, [0, 1])
    np.testing.assert_array_equal(obs.chunk_index, [0, 1])
    np.testing.assert_array_equal(obs.chunks_remaining, [5, 4])
    np.testing.assert_array_equal(obs.buffer_s, [0.0, 5.0])
    builder.reset()
    np.testing.assert_array_equal(builder.state(), initial)


def test_remaining_is_capped_at_48_chunks() -> None:
    video = make_video([[1] * 60, [2] * 60])
    builder = ObservationBuilder(1, video)
    for k, remaining in enumerate((59, 48, 47, 1)):
        builder.push(
            slice(None),
            quality=[0],
            buffer_s=[1.0],
            chunk_bytes=[1],
            delay_ms=[100.0],
            chunk_index=[k],
            chunks_remaining=[remaining],
            next_chunk_bytes=[[1, 2]],
        )
    state = builder.state()
    np.testing.assert_allclose(state[0, 5, 4:], [1.0, 1.0, 47 / 48, 1 / 48], rtol=1e-6)
    np.testing.assert_array_equal(state[0, 5, :4], 0.0)
    capped = ObservationBuilder(1, video, ObservationSpec(remaining_cap_chunks=10))
    capped.push(
        slice(None),
        quality=[0],
        buffer_s=[1.0],
        chunk_bytes=[1],
        delay_ms=[100.0],
        chunk_index=[0],
        chunks_remaining=[5],
        next_chunk_bytes=[[1, 2]],
    )
    assert capped.state()[0, 5, 7] == pytest.approx(0.5)


def test_ten_level_ladder_fills_ten_columns() -> None:
    video = make_video([[100_000 * (i + 1)] * 3 for i in range(10)])
    builder = ObservationBuilder(1, video)
    builder.push(
        slice(None),
        quality=[9],
        buffer_s=[4.0],
        chunk_bytes=[1_000_000],
        delay_ms=[500.0],
        chunk_index=[0],
        chunks_remaining=[2],
        next_chunk_bytes=[[100_000 * (i + 1) for i in range(10)]],
    )
    state = builder.state()
    assert state.shape == (1, 6, 10)
    np.testing.assert_allclose(state[0, 4], np.arange(1, 11) / 10, rtol=1e-6)
    # History columns are the last 8 (2..9); the newest chunk is in column 9.
    np.testing.assert_allclose(state[0, :4, 9], [1.0, 0.4, 2.0, 0.05], rtol=1e-6)
    np.testing.assert_array_equal(state[0, [0, 1, 2, 3, 5], :9], 0.0)


def test_update_from_batch_simulator_results() -> None:
    video = video3()
    trace = make_trace([0, 1000], [8, 8])  # constant 8 Mbit/s: 950,000 payload bytes/s
    sim = BatchSimulator([trace], video, LinkConfig.evaluation(), n_sessions=2, seed=0)
    sim.reset()
    builder = ObservationBuilder(2, video)
    result = sim.step(np.array([0, 2]))
    builder.update(result)
    # Chunk 0: level 0 is 95,000 B -> 100 ms + 80 ms; level 2 is 285,000 B -> 300 ms + 80 ms.
    np.testing.assert_allclose(result.delay_ms, [180.0, 380.0])
    state = builder.state()
    np.testing.assert_allclose(
        state[:, :4, 7],
        [
            [300 / 900, 4.0 / 10, 95_000 / 180 / 1000, 180 / 1000 / 10],
            [900 / 900, 4.0 / 10, 285_000 / 380 / 1000, 380 / 1000 / 10],
        ],
        rtol=1e-6,
    )
    np.testing.assert_allclose(state[:, 5, 7], 4 / 48, rtol=1e-6)
    # Row 4: chunk 1's sizes, 95,001 / 190,001 / 285,001 B.
    np.testing.assert_allclose(state[:, 4, :3], [[0.095001, 0.190001, 0.285001]] * 2, rtol=1e-6)
    np.testing.assert_allclose(builder.observation().throughput_mbps_history()[:, 7], [95_000 * 8 / 180e3, 6.0])

    # Step only session 1: session 0's row must not change.
    before = builder.state()
    result = sim.step(np.array([0, 1]), active=np.array([False, True]))
    builder.update(result)
    after = builder.state()
    np.testing.assert_array_equal(after[0], before[0])
    # Level 1 of chunk 1 is 190,001 B: 200.001 ms + 80 ms; the 4 s buffer covers it.
    delay_ms = 190_001 / 950_000 * 1000 + 80
    buffer_s = 4.0 - delay_ms / 1000 + 4.0
    np.testing.assert_allclose(
        after[1, :, 7],
        [600 / 900, buffer_s / 10, 190_001 / delay_ms / 1000, delay_ms / 1000 / 10, 0.0, 3 / 48],
        rtol=1e-6,
    )
    np.testing.assert_allclose(after[1, :, 6], before[1, :, 7])
    obs = builder.observation()
    np.testing.assert_array_equal(obs.chunk_index, [1, 2])
    np.testing.assert_array_equal(obs.n_history, [1, 2])


def test_update_rejects_a_result_of_another_batch_size() -> None:
    video = video3()
    sim = BatchSimulator([make_trace([0, 1000], [8, 8])], video, n_sessions=3, seed=0)
    sim.reset()
    with pytest.raises(ValueError, match="result has 3 sessions, the builder 2"):
        ObservationBuilder(2, video).update(sim.step(np.zeros(3, dtype=np.int64)))
