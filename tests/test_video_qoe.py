"""The video model (size files, synthetic video), QoE variants and scores, and the link config."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from simulator.link import LinkConfig
from simulator.qoe import QoEConfig, previous_levels, session_qoe, session_score, session_score_terms
from simulator.video import DEFAULT_LADDER_KBPS, Video, VideoError
from tests.conftest import shared_traces_path
from tests.helpers import make_video

LADDER_2 = (300, 750)


def write_sizes(folder: Path, rows: Sequence[Sequence[object]]) -> Path:
    """Write ``video_size_<level>`` files, one line per entry of each row."""
    folder.mkdir(parents=True, exist_ok=True)
    for level, row in enumerate(rows):
        (folder / f"video_size_{level}").write_text("".join(f"{v}\n" for v in row))
    return folder


# --------------------------------------------------------------------------------------------------
# Video.from_size_files


def test_size_files_exact_sizes_and_name(tmp_path: Path) -> None:
    folder = write_sizes(tmp_path / "clip", [[10, 20, 30], [100, 200, 300]])
    video = Video.from_size_files(folder, LADDER_2)
    np.testing.assert_array_equal(video.chunk_bytes, [[10, 20, 30], [100, 200, 300]])
    assert video.chunk_bytes.dtype == np.int64
    assert video.bitrates_kbps == LADDER_2
    assert video.chunk_duration_s == 4.0
    assert video.name == "clip"
    assert (video.n_levels, video.n_chunks, video.duration_s) == (2, 3, 12.0)


def test_size_files_ignore_blank_lines_and_trailing_fields(tmp_path: Path) -> None:
    (tmp_path / "video_size_0").write_text("10\n\n20 extra\n")
    (tmp_path / "video_size_1").write_text("100\n200\n\n")
    video = Video.from_size_files(tmp_path, LADDER_2)
    np.testing.assert_array_equal(video.chunk_bytes, [[10, 20], [100, 200]])


def test_size_files_with_49_lines_are_cut_to_48_chunks(tmp_path: Path) -> None:
    rows = [list(range(1, 50)), list(range(101, 150))]
    video = Video.from_size_files(write_sizes(tmp_path, rows), LADDER_2)
    assert video.n_chunks == 48
    # The 49th line only feeds the reference's look-ahead: chunks are lines 1..48.
    np.testing.assert_array_equal(video.chunk_bytes[0], np.arange(1, 49))
    np.testing.assert_array_equal(video.chunk_bytes[1], np.arange(101, 149))


def test_size_files_with_10_lines_keep_10_chunks(tmp_path: Path) -> None:
    video = Video.from_size_files(write_sizes(tmp_path, [list(range(1, 11))] * 2), LADDER_2)
    assert video.n_chunks == 10
    np.testing.assert_array_equal(video.chunk_bytes[0], np.arange(1, 11))


def test_size_files_n_chunks_argument(tmp_path: Path) -> None:
    folder = write_sizes(tmp_path, [list(range(1, 50)), list(range(101, 150))])
    assert Video.from_size_files(folder, LADDER_2, n_chunks=49).n_chunks == 49
    five = Video.from_size_files(folder, LADDER_2, n_chunks=5, chunk_duration_s=2.0, name="five")
    np.testing.assert_array_equal(five.chunk_bytes, [[1, 2, 3, 4, 5], [101, 102, 103, 104, 105]])
    assert (five.chunk_duration_s, five.name) == (2.0, "five")
    with pytest.raises(VideoError, match="n_chunks=50 but the files have 49 chunks"):
        Video.from_size_files(folder, LADDER_2, n_chunks=50)
    with pytest.raises(VideoError, match="n_chunks=0"):
        Video.from_size_files(folder, LADDER_2, n_chunks=0)


def test_size_files_missing_file_names_the_path(tmp_path: Path) -> None:
    write_sizes(tmp_path, [[1, 2], [3, 4]])
    with pytest.raises(VideoError) as err:
        Video.from_size_files(tmp_path, (300, 750, 1200))
    assert str(err.value).startswith(f"{tmp_path / 'video_size_2'}: missing")


def test_size_files_not_a_folder(tmp_path: Path) -> None:
    with pytest.raises(VideoError, match="not a folder of video_size_N files"):
        Video.from_size_files(tmp_path / "absent", LADDER_2)


def test_size_files_non_integer_line_names_file_and_line(tmp_path: Path) -> None:
    write_sizes(tmp_path, [[1, 2, 3], [4, "5.5", 6]])
    with pytest.raises(VideoError) as err:
        Video.from_size_files(tmp_path, LADDER_2)
    assert str(err.value) == f"{tmp_path / 'video_size_1'}:2: not an integer byte count: '5.5'"


def test_size_files_zero_size_names_file_and_line(tmp_path: Path) -> None:
    write_sizes(tmp_path, [[1, 2, 0], [4, 5, 6]])
    with pytest.raises(VideoError) as err:
        Video.from_size_files(tmp_path, LADDER_2)
    assert str(err.value) == f"{tmp_path / 'video_size_0'}:3: chunk size must be > 0, got 0"


def test_size_files_empty_file(tmp_path: Path) -> None:
    write_sizes(tmp_path, [[1], []])
    with pytest.raises(VideoError, match="video_size_1: empty file"):
        Video.from_size_files(tmp_path, LADDER_2)


def test_size_files_of_different_lengths(tmp_path: Path) -> None:
    write_sizes(tmp_path, [[1, 2, 3], [4, 5]])
    with pytest.raises(VideoError, match=r"different numbers of chunks: \[3, 2\]"):
        Video.from_size_files(tmp_path, LADDER_2)


def test_size_files_extra_level_file(tmp_path: Path) -> None:
    write_sizes(tmp_path, [[1, 2], [3, 4], [5, 6]])
    with pytest.raises(VideoError) as err:
        Video.from_size_files(tmp_path, LADDER_2)
    assert str(err.value).startswith(f"{tmp_path / 'video_size_2'}: more size files than ladder levels")


def test_size_files_ladder_not_increasing(tmp_path: Path) -> None:
    write_sizes(tmp_path, [[1, 2], [3, 4]])
    with pytest.raises(VideoError, match="strictly increasing"):
        Video.from_size_files(tmp_path, (750, 300))
    with pytest.raises(VideoError, match="strictly increasing"):
        Video.from_size_files(tmp_path, (300, 300))


def test_envivio_video(envivio_video: Video) -> None:
    assert (envivio_video.n_levels, envivio_video.n_chunks) == (6, 48)
    assert envivio_video.bitrates_kbps == DEFAULT_LADDER_KBPS
    assert envivio_video.chunk_bytes[0, 0] == 181801  # first line of video_size_0
    # Lines 1..48 of each file are the chunks; line 49 is dropped.
    for level in range(6):
        lines = shared_traces_path("video-sizes", f"video_size_{level}").read_text().split()
        assert len(lines) == 49
        np.testing.assert_array_equal(envivio_video.chunk_bytes[level], [int(x) for x in lines[:48]])


# --------------------------------------------------------------------------------------------------
# Video construction, synthetic and builtin


def test_synthetic_is_deterministic_per_seed() -> None:
    a = Video.synthetic(seed=7)
    b = Video.synthetic(seed=7)
    c = Video.synthetic(seed=8)
    np.testing.assert_array_equal(a.chunk_bytes, b.chunk_bytes)
    assert not np.array_equal(a.chunk_bytes, c.chunk_bytes)
    assert Video.synthetic(n_chunks=5, seed=7).chunk_bytes.shape == (6, 5)
    with pytest.raises(VideoError, match="n_chunks must be >= 1"):
        Video.synthetic(n_chunks=0)


def test_builtin_video_properties() -> None:
    video = Video.builtin()
    assert video.bitrates_kbps == (300, 750, 1200, 1850, 2850, 4300)
    assert (video.n_chunks, video.chunk_duration_s, video.name) == (48, 4.0, "builtin")
    np.testing.assert_array_equal(video.chunk_bytes, Video.builtin().chunk_bytes)
    nominal_bytes = np.array(video.bitrates_kbps) * 1000 / 8 * 4.0
    ratio = video.chunk_bytes.mean(axis=1) / nominal_bytes
    np.testing.assert_allclose(ratio, 1.0, atol=0.15)
    # Every level's chunks are larger than the level below's (levels share the scene complexity).
    assert np.all(np.diff(video.chunk_bytes.mean(axis=1)) > 0)
    assert video.to_metadata() == {
        "name": "builtin",
        "bitrates_kbps": [300, 750, 1200, 1850, 2850, 4300],
        "chunk_duration_s": 4.0,
        "n_chunks": 48,
    }
    np.testing.assert_allclose(video.bitrates_mbps, [0.3, 0.75, 1.2, 1.85, 2.85, 4.3])


def test_video_copies_and_freezes_its_sizes() -> None:
    sizes = np.array([[1, 2], [3, 4]])
    video = Video((300, 750), 4.0, sizes)
    sizes[0, 0] = 99
    assert video.chunk_bytes[0, 0] == 1
    with pytest.raises(ValueError, match="read-only"):
        video.chunk_bytes[0, 0] = 5


@pytest.mark.parametrize(
    ("ladder", "duration_s", "sizes", "message"),
    [
        ((), 4.0, np.zeros((0, 1)), "ladder is empty"),
        ((300, 750), 4.0, [1, 2], r"shape \[n_levels=2, n_chunks>=1\], got \(2,\)"),
        ((300, 750), 4.0, [[1, 2]], r"got \(1, 2\)"),
        ((300, 750), 4.0, np.zeros((2, 0)), r"got \(2, 0\)"),
        ((300, 750), 4.0, [[1, 2], [3, -4]], "chunk 1 at level 1 has size -4 <= 0"),
        ((300, 750), 0.0, [[1], [2]], "chunk_duration_s must be > 0"),
        ((0, 750), 4.0, [[1], [2]], "positive and strictly increasing"),
    ],
)
def test_video_rejects_bad_shapes_and_values(
    ladder: tuple[int, ...], duration_s: float, sizes: object, message: str
) -> None:
    with pytest.raises(VideoError, match=message):
        Video(ladder, duration_s, np.asarray(sizes, dtype=np.int64))


# --------------------------------------------------------------------------------------------------
# QoE
#
# A hand-made session on the standard ladder (Mbit/s 0.3, 0.75, 1.2, 1.85, 2.85, 4.3), first chunk's
# "previous" level = 1:
LEVELS = [1, 3, 3, 0]
REBUF_S = [0.5, 0.0, 1.0, 0.2]


def ladder_video() -> Video:
    return Video.synthetic(n_chunks=4)


def test_qoe_lin_by_hand() -> None:
    expected = [
        0.75 - 4.3 * 0.5 - 0.0,  # -1.4
        1.85 - 0.0 - abs(1.85 - 0.75),  # 0.75
        1.85 - 4.3 * 1.0 - 0.0,  # -2.45
        0.3 - 4.3 * 0.2 - abs(0.3 - 1.85),  # -2.11
    ]
    assert expected == pytest.approx([-1.4, 0.75, -2.45, -2.11])
    got = session_qoe(QoEConfig(), ladder_video(), LEVELS, REBUF_S, initial_quality=1)
    assert got == pytest.approx(expected, abs=1e-12)
    # Score: chunks 2..4 only, (0.75 - 2.45 - 2.11) / 3.
    assert session_score(got) == pytest.approx(-3.81 / 3)


def test_qoe_log_by_hand() -> None:
    u1, u3, u0 = math.log(0.75 / 0.3), math.log(1.85 / 0.3), 0.0
    expected = [
        u1 - 2.66 * 0.5,
        u3 - abs(u3 - u1),  # = u1 = ln 2.5
        u3 - 2.66 * 1.0,
        u0 - 2.66 * 0.2 - abs(u0 - u3),
    ]
    got = session_qoe(QoEConfig(kind="log"), ladder_video(), LEVELS, REBUF_S, initial_quality=1)
    assert got == pytest.approx(expected, abs=1e-12)
    assert got[1] == pytest.approx(math.log(2.5))


def test_qoe_hd_by_hand() -> None:
    # Utilities 1, 2, 3, 12, 15, 20: level 1 -> 2, level 3 -> 12, level 0 -> 1; penalty 8.
    expected = [
        2 - 8 * 0.5 - 0,  # -2
        12 - 0 - 10,  # 2
        12 - 8 * 1.0 - 0,  # 4
        1 - 8 * 0.2 - 11,  # -11.6
    ]
    got = session_qoe(QoEConfig(kind="hd"), ladder_video(), LEVELS, REBUF_S, initial_quality=1)
    assert got == pytest.approx(expected, abs=1e-12)
    assert session_score(got) == pytest.approx((2 + 4 - 11.6) / 3)


def test_session_score_terms_by_hand() -> None:
    video = ladder_video()
    # Chunks 2..4 of LEVELS after initial level 1: utilities 1.85, 1.85, 0.3; stalls 0, 1.0, 0.2 s;
    # utility changes |1.85 - 0.75|, 0, |0.3 - 1.85|.
    levels = np.array([LEVELS, [0, 0, 0, 0]])
    rebuf = np.array([REBUF_S, [0.0, 0.0, 0.0, 0.0]])
    utility, rebuffer, smoothness = session_score_terms(QoEConfig(), video, levels, rebuf, initial_quality=1)
    assert utility == pytest.approx([4.0 / 3, 0.3])
    assert rebuffer == pytest.approx([4.3 * 1.2 / 3, 0.0])
    assert smoothness == pytest.approx([2.65 / 3, 0.0])
    score = session_score(session_qoe(QoEConfig(), video, levels, rebuf, initial_quality=1))
    assert utility - rebuffer - smoothness == pytest.approx(score)
    weighted = QoEConfig(rebuffer_penalty=10.0, smooth_penalty=0.5)
    _, rebuffer, smoothness = session_score_terms(weighted, video, levels, rebuf, initial_quality=1)
    assert rebuffer == pytest.approx([10.0 * 1.2 / 3, 0.0])
    assert smoothness == pytest.approx([0.5 * 2.65 / 3, 0.0])


def test_session_qoe_first_chunk_uses_initial_quality() -> None:
    video = ladder_video()
    # Same levels with initial_quality 5: the first chunk pays |0.75 - 4.3| for switching.
    got = session_qoe(QoEConfig(), video, LEVELS, REBUF_S, initial_quality=5)
    assert got[0] == pytest.approx(0.75 - 4.3 * 0.5 - (4.3 - 0.75))
    assert got[1:] == pytest.approx([0.75, -2.45, -2.11])


def test_session_qoe_is_batched() -> None:
    video = ladder_video()
    levels = np.array([LEVELS, [0, 0, 0, 0]])
    rebuf = np.array([REBUF_S, [0.0, 0.0, 0.0, 0.0]])
    got = session_qoe(QoEConfig(), video, levels, rebuf, initial_quality=1)
    assert got.shape == (2, 4)
    assert got[0] == pytest.approx([-1.4, 0.75, -2.45, -2.11])
    assert got[1] == pytest.approx([0.3 - 0.45, 0.3, 0.3, 0.3])
    assert session_score(got) == pytest.approx([-3.81 / 3, 0.3])


def test_rebuffer_weight_defaults_and_override() -> None:
    assert QoEConfig().kind == "lin"
    assert QoEConfig(kind="lin").rebuffer_weight == 4.3
    assert QoEConfig(kind="log").rebuffer_weight == 2.66
    assert QoEConfig(kind="hd").rebuffer_weight == 8.0
    assert QoEConfig(kind="log", rebuffer_penalty=10.0).rebuffer_weight == 10.0
    assert QoEConfig(rebuffer_penalty=0.0).rebuffer_weight == 0.0  # 0 is a value, not "default"
    config = QoEConfig(rebuffer_penalty=1.0, smooth_penalty=0.5)
    got = config.chunk_qoe(ladder_video(), quality=[3], previous_quality=[1], rebuffer_s=[2.0])
    assert got == pytest.approx([1.85 - 1.0 * 2.0 - 0.5 * 1.1])


# The formula itself, on values that are exact in binary floating point (so equality is exact):
# HD utilities 1, 2, 3, 12, 15, 20, rebuffer penalty 8, smoothness 0.5.
HD_EXACT = QoEConfig(kind="hd", smooth_penalty=0.5)
HD_UTIL = np.array([1.0, 2.0, 3.0, 12.0, 15.0, 20.0])


def test_score_from_terms_by_hand_and_broadcast() -> None:
    assert HD_EXACT.score(12.0, 0.5, 10.0) == 12.0 - 4.0 - 5.0  # 3
    # utility [2, 1] x rebuffer [0, 0.25, 1] x change 2: u - 8 r - 1.
    got = HD_EXACT.score(np.array([[20.0], [1.0]]), np.array([0.0, 0.25, 1.0]), 2.0)
    np.testing.assert_array_equal(got, [[19.0, 17.0, 11.0], [0.0, -2.0, -8.0]])
    assert got.dtype == np.float64


def test_level_qoe_by_hand_scalars_and_arrays() -> None:
    # Level 3 after level 1: 12 - 8 * 0.5 - 0.5 * |12 - 2| = 3.
    scalar = HD_EXACT.level_qoe(HD_UTIL, 3, 1, 0.5)
    assert scalar == 3.0
    assert isinstance(scalar, np.floating)
    # Levels [sessions, chunks] against one previous level per session, one rebuffer per chunk.
    levels = np.array([[0, 5], [4, 4]])
    previous = np.array([[2], [5]])
    rebuffer_s = np.array([0.0, 0.125])
    expected = [
        [1.0 - 0.0 - 0.5 * 2.0, 20.0 - 1.0 - 0.5 * 17.0],  # [0, 10.5]
        [15.0 - 0.0 - 0.5 * 5.0, 15.0 - 1.0 - 0.5 * 5.0],  # [12.5, 11.5]
    ]
    np.testing.assert_array_equal(HD_EXACT.level_qoe(HD_UTIL, levels, previous, rebuffer_s), expected)
    np.testing.assert_array_equal(expected, [[0.0, 10.5], [12.5, 11.5]])


def test_level_qoe_keeps_the_callers_dtypes_and_operation_order() -> None:
    # No cast inside: a float32 rebuffer term is multiplied in float32, as the inline expression does.
    config = QoEConfig()  # lin: penalty 4.3, not exact in binary
    util = config.utilities(ladder_video())
    levels, last = np.array([0, 5, 2]), np.array([1, 1, 5])
    for rebuf in (np.array([0.1, 0.7, 3.3]), np.array([0.1, 0.7, 3.3], dtype=np.float32)):
        inline = (
            util[levels] - config.rebuffer_weight * rebuf - config.smooth_penalty * np.abs(util[levels] - util[last])
        )
        got = config.level_qoe(util, levels, last, rebuf)
        assert got.dtype == inline.dtype == np.float64
        np.testing.assert_array_equal(got, inline)


def test_score_of_summed_terms_is_the_summed_qoe() -> None:
    # A run 3 -> 5 -> 0 after level 1 (what MPC scores from its precomputed sums).
    run, rebuffer_s = [3, 5, 0], [0.25, 0.0, 0.5]
    per_chunk = HD_EXACT.level_qoe(HD_UTIL, np.array(run), np.array([1, 3, 5]), np.array(rebuffer_s))
    np.testing.assert_array_equal(per_chunk, [12.0 - 2.0 - 5.0, 20.0 - 0.0 - 4.0, 1.0 - 4.0 - 9.5])
    total = HD_EXACT.score(12.0 + 20.0 + 1.0, 0.75, 10.0 + 8.0 + 19.0)
    assert total == per_chunk.sum() == 33.0 - 6.0 - 18.5


def test_previous_levels() -> None:
    np.testing.assert_array_equal(previous_levels([3, 0, 4], 1), [1, 3, 0])
    np.testing.assert_array_equal(previous_levels([[3, 0], [5, 5]], 2), [[2, 3], [2, 5]])


def test_qoe_config_is_validated_and_frozen() -> None:
    with pytest.raises(ValidationError):
        QoEConfig(kind="cubic")
    with pytest.raises(ValidationError):
        QoEConfig(rebuffer_penalty=-1.0)
    with pytest.raises(ValidationError):
        QoEConfig(rebuf=1.0)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        QoEConfig().kind = "log"  # type: ignore[misc]


def test_hd_with_a_ladder_of_another_length() -> None:
    video = make_video([[1, 1], [2, 2], [3, 3]])
    with pytest.raises(ValueError, match="'hd' has 6 utilities but the video has 3 levels"):
        QoEConfig(kind="hd").utilities(video)
    custom = QoEConfig(kind="hd", hd_utilities=(1.0, 5.0, 9.0))
    np.testing.assert_array_equal(custom.utilities(video), [1.0, 5.0, 9.0])
    assert custom.chunk_qoe(video, [2], [0], [0.5]) == pytest.approx([9.0 - 8.0 * 0.5 - 8.0])


def test_session_score_excludes_first_chunk_and_needs_two_chunks() -> None:
    assert session_score([100.0, 1.0, 2.0, 3.0]) == pytest.approx(2.0)
    assert session_score([[100.0, 1.0], [-5.0, 4.0]]) == pytest.approx([1.0, 4.0])
    with pytest.raises(ValueError, match="more than 1 chunk"):
        session_score([1.0])


# --------------------------------------------------------------------------------------------------
# LinkConfig


def test_link_evaluation_is_the_reference_semantics() -> None:
    link = LinkConfig.evaluation()
    assert link == LinkConfig()
    assert link.model_dump() == {
        "rtt_ms": 80.0,
        "payload_fraction": 0.95,
        "max_buffer_s": 60.0,
        "drain_step_ms": 500.0,
        "delay_noise_low": 1.0,
        "delay_noise_high": 1.0,
        "start": "first",
        "trace_order": "sequential",
        "prior_window_s": 30.0,
        "prior_noise_sigma": 0.0,
        "prior_missing_fraction": 0.0,
    }
    assert not link.has_noise


def test_link_training_values() -> None:
    link = LinkConfig.training()
    assert (link.delay_noise_low, link.delay_noise_high) == (0.9, 1.1)
    assert (link.start, link.trace_order) == ("random", "random")
    assert (link.rtt_ms, link.payload_fraction, link.max_buffer_s) == (80.0, 0.95, 60.0)
    assert link.has_noise


def test_link_validation() -> None:
    with pytest.raises(ValidationError, match=r"delay_noise_high \(0.9\) must be >= delay_noise_low \(1.1\)"):
        LinkConfig(delay_noise_low=1.1, delay_noise_high=0.9)
    with pytest.raises(ValidationError, match="rtt_ms"):
        LinkConfig(rtt_ms=-1.0)
    with pytest.raises(ValidationError, match="payload_fraction"):
        LinkConfig(payload_fraction=1.5)
    with pytest.raises(ValidationError, match="start"):
        LinkConfig(start="middle")
    with pytest.raises(ValidationError, match="extra"):
        LinkConfig(rtt=10.0)  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="frozen"):
        LinkConfig().rtt_ms = 0.0  # type: ignore[misc]
    assert LinkConfig(delay_noise_low=1.0, delay_noise_high=1.2).has_noise
