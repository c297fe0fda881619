"""Trace loading and saving: exact hand-computed cases, every error with its file and line, folders."""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from traces.io import (
    TraceLoadError,
    TraceWarning,
    detect_format,
    load,
    load_file,
    mahimahi_to_throughput,
    save,
    save_many,
    trace_files,
)
from traces.trace import Trace, TraceError

SHARED_TRACES = Path(__file__).resolve().parents[1].parent / "shared" / "traces"


def _shared(folder: str) -> Path:
    path = SHARED_TRACES / folder
    if not path.is_dir():
        pytest.skip("../shared/traces not found: real traces are not available here")
    return path


def _write(folder: Path, name: str, text: str | bytes) -> Path:
    path = folder / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------------
# Formats, exact values


def test_cooked_exact(tmp_path: Path) -> None:
    path = _write(tmp_path, "trace_a", "0 1.5\n1.0\t2.5\n\n  2.5   0.5  \n")
    trace = load_file(path)
    np.testing.assert_array_equal(trace.times_s, [0.0, 1.0, 2.5])
    np.testing.assert_array_equal(trace.throughput_mbps, [1.5, 2.5, 0.5])
    assert trace.name == "trace_a"
    assert trace.source == str(path)


def test_cooked_crlf_and_bom(tmp_path: Path) -> None:
    path = _write(tmp_path, "t", b"\xef\xbb\xbf0\t1\r\n1\t2\r\n")
    trace = load_file(path)
    np.testing.assert_array_equal(trace.times_s, [0.0, 1.0])
    np.testing.assert_array_equal(trace.throughput_mbps, [1.0, 2.0])


def test_mahimahi_windows_exact(tmp_path: Path) -> None:
    # 500 ms windows; last = 1200 -> K = ceil(2.4) = 3 windows: [0,500) holds 0,100,499; [500,1000)
    # holds 500; [1000,1500) holds 1200. One packet per 0.5 s = 12000 bit / 0.5 s = 0.024 Mbit/s.
    path = _write(tmp_path, "mm", "0\n100\n499\n500\n1200\n")
    trace = load_file(path)
    np.testing.assert_allclose(trace.times_s, [0.0, 0.5, 1.0, 1.5], rtol=0, atol=1e-12)
    np.testing.assert_allclose(trace.throughput_mbps, [0.072, 0.072, 0.024, 0.024], rtol=1e-12)
    assert trace.name == "mm"


def test_mahimahi_window_width(tmp_path: Path) -> None:
    # 1000 ms windows: [0,1000) holds 4 packets, [1000,2000) holds 1; 12000 bit/s = 0.012 Mbit/s each.
    path = _write(tmp_path, "mm", "0\n100\n499\n500\n1200\n")
    trace = load_file(path, mahimahi_window_ms=1000.0)
    np.testing.assert_allclose(trace.times_s, [0.0, 1.0, 2.0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(trace.throughput_mbps, [0.048, 0.048, 0.012], rtol=1e-12)


def test_mahimahi_wraparound_packet_counts_in_first_window() -> None:
    # last = 1000 = 2 windows exactly: the packet at 1000 ms is time 0 of the next loop.
    times_s, tput = mahimahi_to_throughput([0, 250, 1000], window_ms=500.0)
    np.testing.assert_allclose(times_s, [0.0, 0.5, 1.0])
    np.testing.assert_allclose(tput, [0.072, 0.072, 0.0])


def test_mahimahi_short_file_has_one_window() -> None:
    times_s, tput = mahimahi_to_throughput([3, 3, 7], window_ms=500.0)
    np.testing.assert_allclose(times_s, [0.0, 0.5])
    np.testing.assert_allclose(tput, [0.072, 0.072])


def test_mahimahi_window_must_be_positive(tmp_path: Path) -> None:
    path = _write(tmp_path, "mm", "0\n10\n")
    with pytest.raises(ValueError, match="window_ms"):
        load_file(path, mahimahi_window_ms=0.0)


def test_json_units_converted(tmp_path: Path) -> None:
    document = {"name": "walk", "times_ms": [0, 500, 1500], "throughput_kbps": [800, 1200, 400]}
    path = _write(tmp_path, "walk_file.json", json.dumps(document))
    trace = load_file(path)
    np.testing.assert_allclose(trace.times_s, [0.0, 0.5, 1.5])
    np.testing.assert_allclose(trace.throughput_mbps, [0.8, 1.2, 0.4])
    assert trace.name == "walk"


def test_json_bps_and_default_name(tmp_path: Path) -> None:
    path = _write(tmp_path, "car.json", '{"times_s": [0, 1], "throughput_bps": [2e6, 3e6]}')
    trace = load_file(path)
    np.testing.assert_allclose(trace.throughput_mbps, [2.0, 3.0])
    assert trace.name == "car"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0 1\n1 2\n", "cooked"),
        ("  \n0\t1\n", "cooked"),
        ("0\n5\n9\n", "mahimahi"),
        ("\n 12\n", "mahimahi"),
        (' {"times_s": []}', "json"),
        ("[1, 2]", "json"),
    ],
)
def test_detect_format(text: str, expected: str) -> None:
    assert detect_format(text) == expected


def test_explicit_format_overrides_detection(tmp_path: Path) -> None:
    path = _write(tmp_path, "mm", "0\n10\n")
    with pytest.raises(TraceError, match="expected 2 columns"):
        load_file(path, format="cooked")


def test_unknown_format_is_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path, "t", "0 1\n1 1\n")
    with pytest.raises(ValueError, match="unknown trace format"):
        load_file(path, format="csv")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# Errors: every one names the file and (where there is one) the line

ERROR_CASES = [
    # (file name, content, line or None, text the message must contain)
    ("empty", "", None, "file is empty"),
    ("blank", "\n  \n\t\n", None, "file is empty"),
    ("word", "0 1\n1 abc\n", 2, "'abc'"),
    ("word_time", "0 1\nx1 2\n", 2, "time_s is not a number: 'x1'"),
    ("three_cols", "0 1\n1 2 3\n", 2, "expected 2 columns (time_s throughput_mbps), got 3"),
    ("one_col", "0 1\n5\n", 2, "got 1"),
    ("not_increasing", "0 1\n1 2\n1 3\n", 3, "is not greater than the previous time 1.0"),
    ("blank_lines_counted", "0 1\n\n1 2\n\n0.5 3\n", 5, "time_s '0.5' is not greater"),
    ("negative_tput", "0 1\n1 -2\n", 2, "throughput_mbps '-2' is negative"),
    ("nan_tput", "0 1\n1 nan\n", 2, "throughput_mbps 'nan' is not finite"),
    ("inf_tput", "0 1\n1 2\n2 inf\n", 3, "throughput_mbps 'inf' is not finite"),
    ("nan_time", "0 1\nnan 2\n", 2, "time_s 'nan' is not finite"),
    ("negative_start", "-1 1\n1 2\n", 1, "time_s '-1' must be >= 0"),
    ("one_sample", "0 1\n", 1, "at least 2 samples, got 1"),
    ("all_zero", "0 0\n1 0\n2 0\n", None, "throughput is 0 on every interval"),
    ("mm_decreasing", "0\n5\n3\n", 3, "timestamp 3 ms is less than the previous 5 ms"),
    ("mm_float", "0\n5\n7.5\n", 3, "not an integer number of milliseconds: '7.5'"),
    ("mm_negative", "-5\n0\n", 1, "timestamp -5 ms is negative"),
    ("mm_two_fields", "0\n5\n6 7\n", 3, "got 2 fields: '6 7'"),
    ("mm_zero_length", "0\n0\n", 2, "must last a nonzero time"),
    ("bad.json", '{\n "times_s": [0, 1],\n "throughput_mbps": [1, 2\n}\n', 4, "invalid JSON"),
    ("list.json", "\n[1, 2]", 2, "expected one JSON object"),
    ("missing.json", '{"times_s": [0, 1]}', 1, "missing throughput key"),
    (
        "dup.json",
        '{\n"times_s": [0, 1],\n"throughput_mbps": [1, 2],\n"times_s": [0, 2]\n}',
        4,
        "duplicate key",
    ),
    (
        "two_time_keys.json",
        '{\n"times_s": [0, 1],\n"times_ms": [0, 1000],\n"throughput_mbps": [1, 2]\n}',
        3,
        "several time keys (times_s, times_ms)",
    ),
    (
        "unknown.json",
        '{"times_s": [0, 1],\n"speed": 3,\n"throughput_mbps": [1, 2]}',
        2,
        "unknown key 'speed'",
    ),
    (
        "word.json",
        '{"times_s": [0, 1],\n"throughput_mbps": [1, "x"]}',
        2,
        'throughput_mbps[1] is not a number: "x"',
    ),
    (
        "bool.json",
        '{"times_s": [0, true],\n"throughput_mbps": [1, 2]}',
        1,
        "times_s[1] is not a number: true",
    ),
    ("lengths.json", '{"times_s": [0, 1, 2],\n"throughput_mbps": [1, 2]}', 2, "times_s has 3 entries"),
    (
        "ms_order.json",
        '{"throughput_mbps": [1, 2, 3],\n"times_ms": [0, 1000, 1000]}',
        2,
        "times_ms[2] = 1000.0 is not greater",
    ),
    (
        "neg.json",
        '{"times_s": [0, 1],\n\n"throughput_kbps": [1, -2]}',
        3,
        "throughput_kbps[1] = -2.0 is negative",
    ),
    (
        "nan.json",
        '{"times_s": [0, 1],\n"throughput_mbps": [NaN, 2]}',
        2,
        "throughput_mbps[0] = nan is not finite",
    ),
    ("short.json", '{"times_s": [0],\n"throughput_mbps": [1]}', 1, "at least 2 samples, got 1"),
    ("not_list.json", '{"times_s": 5,\n"throughput_mbps": [1]}', 1, "times_s must be a list of numbers"),
    ("binary", b"0 1\n\xff\xfe 2\n", 2, "not a UTF-8 text file"),
]


@pytest.mark.parametrize(("name", "content", "line", "needle"), ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_errors_name_file_and_line(
    tmp_path: Path, name: str, content: str | bytes, line: int | None, needle: str
) -> None:
    path = _write(tmp_path, name, content)
    with pytest.raises(TraceError) as caught:
        load_file(path)
    error = caught.value
    assert error.path == str(path)
    assert error.line == line
    where = str(path) if line is None else f"{path}:{line}"
    assert str(error).startswith(f"{where}: ")
    assert needle in str(error)


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="no such file or folder") as caught:
        load(tmp_path / "nope")
    assert caught.value.path == str(tmp_path / "nope")
    with pytest.raises(TraceError, match="no such file"):
        load_file(tmp_path / "nope")


# --------------------------------------------------------------------------------------------------
# Folders


def _mixed_folder(root: Path) -> Path:
    folder = root / "set"
    folder.mkdir()
    _write(folder, "b_good", "0 1\n1 2\n")
    _write(folder, "a_good", "0 3\n2 4\n")
    _write(folder, "c_bad", "0 1\n1 x\n")
    _write(folder, "d_bad", "0\n9\n4\n")
    _write(folder, "README.md", "# notes\n")
    _write(folder, "README", "about\n")
    _write(folder, "notes.MD", "x\n")
    _write(folder, ".hidden", "junk\n")
    (folder / "sub").mkdir()
    _write(folder / "sub", "deeper", "junk\n")
    return folder


def test_folder_lists_only_trace_files(tmp_path: Path) -> None:
    folder = _mixed_folder(tmp_path)
    assert [p.name for p in trace_files(folder)] == ["a_good", "b_good", "c_bad", "d_bad"]


def test_folder_reports_every_bad_file(tmp_path: Path) -> None:
    folder = _mixed_folder(tmp_path)
    with pytest.raises(TraceLoadError) as caught:
        load(folder)
    error = caught.value
    assert isinstance(error, TraceError)
    assert [(Path(e.path or "").name, e.line) for e in error.errors] == [("c_bad", 2), ("d_bad", 3)]
    message = str(error)
    assert "2 of 4 trace files could not be loaded" in message
    assert f"{folder / 'c_bad'}:2: throughput_mbps is not a number: 'x'" in message
    assert f"{folder / 'd_bad'}:3: timestamp 4 ms" in message


def test_folder_skip_bad_warns_and_returns_good(tmp_path: Path) -> None:
    folder = _mixed_folder(tmp_path)
    with pytest.warns(TraceWarning) as record:
        loaded = load(folder, skip_bad=True)
    assert [t.name for t in loaded] == ["a_good", "b_good"]
    messages = [str(w.message) for w in record if issubclass(w.category, TraceWarning)]
    assert len(messages) == 2
    assert "c_bad:2" in messages[0]
    assert "d_bad:3" in messages[1]


def test_folder_skip_bad_with_nothing_good_still_raises(tmp_path: Path) -> None:
    _write(tmp_path, "bad", "0 1\n1 y\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(TraceLoadError, match="1 of 1"):
            load(tmp_path, skip_bad=True)


def test_empty_folder_is_an_error(tmp_path: Path) -> None:
    _write(tmp_path, "README.md", "# nothing here\n")
    with pytest.raises(TraceError, match="folder holds no trace files"):
        load(tmp_path)


def test_single_file_load_returns_one_trace(tmp_path: Path) -> None:
    path = _write(tmp_path, "t", "0 1\n1 2\n")
    assert load(path) == [load_file(path)]


# --------------------------------------------------------------------------------------------------
# Saving


def _trace(name: str = "t", times: list[float] | None = None, tput: list[float] | None = None) -> Trace:
    return Trace(
        name=name,
        times_s=np.array(times or [0.0, 1.0, 2.5]),
        throughput_mbps=np.array(tput or [1.0, 2.0, 0.1]),
    )


@st.composite
def traces(draw: st.DrawFn) -> Trace:
    times = draw(
        st.lists(
            st.floats(min_value=0.0, max_value=1e7, allow_nan=False, allow_infinity=False),
            min_size=2,
            max_size=40,
            unique=True,
        ).map(sorted)
    )
    positive = st.floats(min_value=0.0, max_value=1e5, allow_nan=False, allow_infinity=False)
    tput = draw(st.lists(positive, min_size=len(times), max_size=len(times)))
    tput[-1] = draw(st.floats(min_value=1e-300, max_value=1e5))  # some interval must carry data
    return Trace(name="hyp", times_s=np.array(times), throughput_mbps=np.array(tput))


@settings(max_examples=60, deadline=None)
@given(trace=traces(), fmt=st.sampled_from(["cooked", "json"]))
def test_save_load_round_trip_is_exact(trace: Trace, fmt: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "hyp"
        save(trace, path, format=fmt)  # type: ignore[arg-type]
        back = load_file(path)
    assert back.name == trace.name
    assert np.array_equal(back.times_s, trace.times_s)
    assert np.array_equal(back.throughput_mbps, trace.throughput_mbps)


def test_cooked_save_text(tmp_path: Path) -> None:
    path = save(_trace(times=[0.0, 0.1, 2.0], tput=[1.0, 1 / 3, 7.25]), tmp_path / "out")
    assert path.read_text() == "0.0\t1.0\n0.1\t0.3333333333333333\n2.0\t7.25\n"


def test_save_replaces_atomically_and_leaves_no_temporaries(tmp_path: Path) -> None:
    target = tmp_path / "t"
    target.write_text("old contents\n")
    save(_trace(), target, format="json")
    assert json.loads(target.read_text())["name"] == "t"
    assert [p.name for p in tmp_path.iterdir()] == ["t"]


def test_save_many_names_and_round_trip(tmp_path: Path) -> None:
    originals = [_trace("x"), _trace("y", tput=[0.0, 5.0, 6.0])]
    paths = save_many(originals, tmp_path / "new" / "dir", format="json")
    assert [p.name for p in paths] == ["x.json", "y.json"]
    loaded = load(tmp_path / "new" / "dir")
    assert [t.name for t in loaded] == ["x", "y"]
    for original, back in zip(originals, loaded, strict=True):
        assert np.array_equal(original.throughput_mbps, back.throughput_mbps)


@pytest.mark.parametrize("names", [["a", "a"], ["a/b"], [".hidden"]])
def test_save_many_rejects_clashing_or_unsafe_names(tmp_path: Path, names: list[str]) -> None:
    with pytest.raises(TraceError, match="name"):
        save_many([_trace(name) for name in names], tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------------
# Real data (skipped where ../shared/traces is absent)


@pytest.mark.shared_traces
def test_real_fcc_test_set() -> None:
    loaded = load(_shared("fcc-test"))
    assert len(loaded) == 290
    assert all(trace.duration_s > 200 for trace in loaded)
    assert len({trace.name for trace in loaded}) == 290


@pytest.mark.shared_traces
def test_real_mahimahi_set_is_detected_and_converted() -> None:
    folder = _shared("mahimahi")
    files = trace_files(folder)
    assert len(files) == 8
    assert {detect_format(path.read_text()) for path in files} == {"mahimahi"}
    loaded = load(folder)
    assert len(loaded) == 8
    for trace in loaded:
        np.testing.assert_allclose(np.diff(trace.times_s), 0.5)
        assert 0.05 < trace.mean_throughput_mbps() < 50
