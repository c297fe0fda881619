"""Reading and writing throughput traces: cooked text, Mahimahi link files and JSON.

Formats (see ``../shared/traces/README.md`` for the data sets):

* **cooked** - one sample per line, ``time_s throughput_mbps`` separated by spaces or tabs, time strictly
  increasing; blank lines are ignored. This is the Pensieve simulator's format.
* **mahimahi** - one integer per line: the millisecond at which one 1500-byte packet may be delivered;
  timestamps never decrease and the file loops with a period equal to its last timestamp. It is turned
  into a cooked trace by counting packets in fixed windows (see `mahimahi_to_throughput`).
* **json** - one object per file with one time key (``times_s`` or ``times_ms``), one throughput key
  (``throughput_mbps``, ``throughput_kbps`` or ``throughput_bps``) and an optional ``name``.

Every malformed input raises `TraceError` naming the file and, where it can be known, the 1-based line.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import numpy.typing as npt

from abr_common.files import write_atomic
from abr_common.units import BITS_PER_BYTE, KBIT_PER_MBIT, MS_PER_S
from traces.trace import FloatArray, Trace, TraceError

TraceFormat = Literal["auto", "cooked", "mahimahi", "json"]
"""Input format names accepted by `load`; ``auto`` detects each file's format with `detect_format`."""

SaveFormat = Literal["cooked", "json"]
"""Output format names accepted by `save` and `save_many`."""

MAHIMAHI_PACKET_BYTES = 1500
"""Bytes delivered per Mahimahi delivery opportunity (one line of a Mahimahi link file)."""

DEFAULT_MAHIMAHI_WINDOW_MS = 500.0
"""Default width of the windows Mahimahi packet counts are averaged over."""

_TIME_KEYS = {"times_s": 1.0, "times_ms": 1e-3}
_THROUGHPUT_KEYS = {"throughput_mbps": 1.0, "throughput_kbps": 1e-3, "throughput_bps": 1e-6}
_OPTIONAL_JSON_KEYS = ("name",)
_SEVERAL_FIELDS = re.compile(r"\S[^\S\n]+\S")


class TraceLoadError(TraceError):
    """One or more files of a folder could not be loaded; `errors` holds each file's `TraceError`."""

    def __init__(self, errors: Sequence[TraceError], *, path: str | Path, n_files: int) -> None:
        self.errors: list[TraceError] = list(errors)
        listing = "\n".join(f"  {error}" for error in self.errors)
        super().__init__(
            f"{len(self.errors)} of {n_files} trace files could not be loaded (nothing was loaded):\n{listing}",
            path=path,
        )


class TraceWarning(UserWarning):
    """A trace file was skipped because it is malformed (``load(..., skip_bad=True)``)."""


# --------------------------------------------------------------------------------------------------
# Loading


def load(
    path: str | os.PathLike[str],
    *,
    format: TraceFormat = "auto",
    mahimahi_window_ms: float = DEFAULT_MAHIMAHI_WINDOW_MS,
    skip_bad: bool = False,
) -> list[Trace]:
    """Load the trace in a file, or every trace file of a folder.

    A folder is read one level deep: its regular files, sorted by name, except hidden files and
    ``README*`` / ``*.md`` documentation. Every file is parsed before anything is returned, so a folder
    with bad files raises one `TraceLoadError` that lists all of them. With ``skip_bad=True`` each bad
    file instead gives a `TraceWarning` and the good traces are returned (a folder where no file loads
    still raises).

    Args:
        path: a trace file or a folder of trace files.
        format: the files' format, or ``"auto"`` to detect each file's format (`detect_format`).
        mahimahi_window_ms: window over which Mahimahi packet counts are averaged.
        skip_bad: warn about and skip malformed files of a folder instead of raising.

    Raises:
        TraceError: the path does not exist, is an empty folder, or (single file) is malformed.
        TraceLoadError: some files of the folder are malformed (and ``skip_bad`` is false).
    """
    _check_format(format, get_args(TraceFormat))
    root = Path(path)
    if root.is_file():
        return [load_file(root, format=format, mahimahi_window_ms=mahimahi_window_ms)]
    if not root.exists():
        raise TraceError("no such file or folder", path=root)
    if not root.is_dir():
        raise TraceError("not a regular file or a folder", path=root)

    files = trace_files(root)
    if not files:
        raise TraceError("folder holds no trace files (hidden files, README* and *.md are not read)", path=root)
    loaded: list[Trace] = []
    errors: list[TraceError] = []
    for file in files:
        try:
            loaded.append(load_file(file, format=format, mahimahi_window_ms=mahimahi_window_ms))
        except TraceError as error:
            errors.append(error)
    if errors and (not skip_bad or not loaded):
        raise TraceLoadError(errors, path=root, n_files=len(files))
    for skipped in errors:
        warnings.warn(f"skipped {skipped}", TraceWarning, stacklevel=2)
    return loaded


def trace_files(folder: str | os.PathLike[str]) -> list[Path]:
    """The files `load` reads from a folder: regular files sorted by name, without docs and hidden files."""
    found = []
    for entry in Path(folder).iterdir():
        name = entry.name
        if name.startswith(".") or name.upper().startswith("README") or name.lower().endswith(".md"):
            continue
        if entry.is_file():
            found.append(entry)
    return sorted(found, key=lambda p: p.name)


def load_file(
    path: str | os.PathLike[str],
    *,
    format: TraceFormat = "auto",
    mahimahi_window_ms: float = DEFAULT_MAHIMAHI_WINDOW_MS,
) -> Trace:
    """Load one trace file (see the module docstring for the formats).

    The trace is named after the file (a JSON file's ``name`` key wins; a ``.json`` suffix is dropped)
    and its ``source`` is the path.

    Raises:
        TraceError: the file is missing, unreadable or malformed; the message names file and line.
    """
    _check_format(format, get_args(TraceFormat))
    file = Path(path)
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise TraceError("no such file", path=file) from None
    except OSError as error:
        raise TraceError(f"cannot read: {error.strerror or error}", path=file) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise TraceError("not a UTF-8 text file", path=file, line=line) from None
    return parse_text(text, path=file, format=format, mahimahi_window_ms=mahimahi_window_ms)


def detect_format(text: str) -> Literal["cooked", "mahimahi", "json"]:
    """Guess a trace file's format from its text.

    JSON if the first non-blank character is ``{`` or ``[``; otherwise Mahimahi if the first non-blank
    line holds a single field, else cooked. Deciding on the first line (rather than on every line)
    agrees with "every line one integer" for any valid file, and lets a Mahimahi file with one bad line
    get a Mahimahi error for that line rather than a confusing cooked one.
    """
    stripped = text.lstrip()
    if stripped[:1] in ("{", "["):
        return "json"
    first_line = stripped.split("\n", 1)[0]
    return "mahimahi" if len(first_line.split()) == 1 else "cooked"


def parse_text(
    text: str,
    *,
    path: str | os.PathLike[str],
    format: TraceFormat = "auto",
    mahimahi_window_ms: float = DEFAULT_MAHIMAHI_WINDOW_MS,
) -> Trace:
    """Parse a trace from text already read from ``path`` (used for messages, name and source)."""
    _check_format(format, get_args(TraceFormat))
    where = Path(path)
    if not text.strip():
        raise TraceError("file is empty", path=where)
    kind = detect_format(text) if format == "auto" else format
    if kind == "json":
        return parse_json(text, path=where)
    if kind == "mahimahi":
        return parse_mahimahi(text, path=where, window_ms=mahimahi_window_ms)
    return parse_cooked(text, path=where)


# --------------------------------------------------------------------------------------------------
# Cooked text


def parse_cooked(text: str, *, path: str | os.PathLike[str], name: str | None = None) -> Trace:
    """Parse cooked text: lines of ``time_s throughput_mbps``; blank lines are ignored."""
    where = Path(path)
    rows = [line.split() for line in text.split("\n")]
    widths = list(map(len, rows))
    if not set(widths) <= {0, 2}:
        index = next(i for i, width in enumerate(widths) if width not in (0, 2))
        raise TraceError(
            f"expected 2 columns (time_s throughput_mbps), got {widths[index]}: {_quote(rows[index])}",
            path=where,
            line=index + 1,
        )
    # Fast path: str.split over the whole text yields the same tokens as the rows, and numpy parses them
    # (correctly rounded, like float()) far faster than a per-line loop.
    tokens = text.split()
    if not tokens:
        raise TraceError("file is empty", path=where)
    try:
        values = np.array(tokens, dtype=np.float64)
    except ValueError:
        values = _parse_floats_slowly(rows, where)
    samples = values.reshape(-1, 2)
    times, throughput = samples[:, 0], samples[:, 1]

    sample_lines: list[int] | None = None

    def line_of(sample: int) -> int:
        nonlocal sample_lines
        if sample_lines is None:
            sample_lines = [i + 1 for i, width in enumerate(widths) if width]
        return sample_lines[sample]

    columns = ("time_s", "throughput_mbps")
    problem = _first_problem(times, throughput)
    if problem is not None:
        line = line_of(problem.sample)
        token = rows[line - 1][problem.column]
        raise TraceError(f"{columns[problem.column]} {token!r} {problem.reason}", path=where, line=line)
    _check_count_and_activity(times, throughput, where, last_line=lambda: line_of(len(times) - 1))
    return Trace(name=name or where.name, times_s=times, throughput_mbps=throughput, source=str(where))


def _parse_floats_slowly(rows: list[list[str]], where: Path) -> FloatArray:
    """Parse row tokens one by one, to name the line of the first one that is not a number."""
    columns = ("time_s", "throughput_mbps")
    values: list[float] = []
    for index, row in enumerate(rows):
        for column, token in enumerate(row):
            try:
                values.append(float(token))
            except ValueError:
                raise TraceError(f"{columns[column]} is not a number: {token!r}", path=where, line=index + 1) from None
    return np.array(values, dtype=np.float64)


# --------------------------------------------------------------------------------------------------
# Mahimahi


def parse_mahimahi(
    text: str,
    *,
    path: str | os.PathLike[str],
    window_ms: float = DEFAULT_MAHIMAHI_WINDOW_MS,
    name: str | None = None,
) -> Trace:
    """Parse a Mahimahi link file and convert it to a throughput trace (`mahimahi_to_throughput`)."""
    where = Path(path)
    _check_window(window_ms)
    # Two fields on one line means non-blank, blank(s), non-blank without a newline between; a regex
    # finds that at C speed, which matters for files of 10^5 lines.
    several = _SEVERAL_FIELDS.search(text)
    if several is not None:
        index = text.count("\n", 0, several.start())
        row = text.split("\n")[index].split()
        raise TraceError(
            f"expected one integer millisecond timestamp per line (Mahimahi format), "
            f"got {len(row)} fields: {_quote(row)}",
            path=where,
            line=index + 1,
        )
    tokens = text.split()
    if not tokens:
        raise TraceError("file is empty", path=where)
    try:
        stamps = np.array(tokens, dtype=np.int64)
    except (ValueError, OverflowError):
        stamps = _parse_ints_slowly([line.split() for line in text.split("\n")], where)

    def line_of(sample: int) -> int:
        return [i + 1 for i, line in enumerate(text.split("\n")) if line.strip()][sample]

    if np.any(stamps < 0):
        bad = int(np.argmax(stamps < 0))
        raise TraceError(f"timestamp {int(stamps[bad])} ms is negative", path=where, line=line_of(bad))
    steps = np.diff(stamps)
    if np.any(steps < 0):
        bad = int(np.argmax(steps < 0)) + 1
        raise TraceError(
            f"timestamp {int(stamps[bad])} ms is less than the previous {int(stamps[bad - 1])} ms "
            "(Mahimahi timestamps never decrease)",
            path=where,
            line=line_of(bad),
        )
    if stamps[-1] == 0:
        raise TraceError(
            "the last timestamp is 0 ms: a Mahimahi trace must last a nonzero time",
            path=where,
            line=line_of(-1),
        )
    times, throughput = mahimahi_to_throughput(stamps, window_ms=window_ms)
    return Trace(name=name or where.name, times_s=times, throughput_mbps=throughput, source=str(where))


def _parse_ints_slowly(rows: list[list[str]], where: Path) -> npt.NDArray[np.int64]:
    """Parse row tokens one by one, to name the line of the first one that is not an integer."""
    values: list[int] = []
    for index, row in enumerate(rows):
        for token in row:
            try:
                value = int(token)
            except ValueError:
                raise TraceError(
                    f"timestamp is not an integer number of milliseconds: {token!r}",
                    path=where,
                    line=index + 1,
                ) from None
            if abs(value) >= 2**62:
                raise TraceError(f"timestamp is out of range: {token!r}", path=where, line=index + 1)
            values.append(value)
    return np.array(values, dtype=np.int64)


def mahimahi_to_throughput(
    timestamps_ms: npt.ArrayLike, *, window_ms: float = DEFAULT_MAHIMAHI_WINDOW_MS
) -> tuple[FloatArray, FloatArray]:
    """Average Mahimahi delivery opportunities over fixed windows into ``(times_s, throughput_mbps)``.

    With ``w = window_ms`` and ``last`` the last timestamp, there are ``K = max(1, ceil(last / w))``
    windows; window ``k`` covers ``[k*w, (k+1)*w)`` ms and its throughput is
    ``packets_in_window * 1500 * 8 / (w / 1000) / 1e6`` Mbit/s. The output has ``K + 1`` samples: one at
    time 0 (it repeats window 0's value; `Trace` never uses the first sample's throughput) and one at
    each window's end ``(k+1)*w / 1000`` s, carrying that window's throughput, so sample ``i`` describes
    the interval ending at ``times_s[i]`` as `Trace` requires.

    The file loops with period ``last``, so a packet at exactly ``last`` that is also a window boundary
    (``last == K*w``) is the same instant as time 0 of the next loop and counts in window 0. When
    ``last`` is not a multiple of ``w`` the final window extends past the loop period and holds only
    that window's packets of the first loop (its throughput is correspondingly lower).

    Args:
        timestamps_ms: non-decreasing non-negative integer timestamps, the last one positive.
        window_ms: window width in milliseconds, positive.
    """
    _check_window(window_ms)
    stamps = np.asarray(timestamps_ms, dtype=np.int64)
    if stamps.ndim != 1 or stamps.size == 0:
        raise TraceError("Mahimahi timestamps must be a non-empty 1-D sequence")
    if np.any(stamps < 0) or np.any(np.diff(stamps) < 0) or stamps[-1] <= 0:
        raise TraceError("Mahimahi timestamps must be non-negative, non-decreasing and end above 0 ms")
    last_ms = int(stamps[-1])
    n_windows = max(1, math.ceil(last_ms / window_ms))
    window_index = np.floor(stamps / window_ms).astype(np.int64)
    window_index[window_index >= n_windows] = 0  # only the wrap-around instant ``last == K*w``
    packets = np.bincount(window_index, minlength=n_windows).astype(np.float64)
    # bits per window / window length in ms = kbit/s
    window_mbps = packets * (MAHIMAHI_PACKET_BYTES * BITS_PER_BYTE) / (window_ms * KBIT_PER_MBIT)
    times_s = np.arange(n_windows + 1, dtype=np.float64) * (window_ms / MS_PER_S)
    throughput_mbps = np.concatenate([window_mbps[:1], window_mbps])
    return times_s, throughput_mbps


# --------------------------------------------------------------------------------------------------
# JSON


class _JsonObject:
    """A JSON object kept as its key/value pairs, so duplicate keys can be reported."""

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        self.pairs = pairs


def parse_json(text: str, *, path: str | os.PathLike[str]) -> Trace:
    """Parse a JSON trace: one object with a time key, a throughput key and an optional ``name``.

    Time keys: ``times_s`` or ``times_ms``; throughput keys: ``throughput_mbps``, ``throughput_kbps``
    or ``throughput_bps``; exactly one of each. Errors inside an array name the element's index and the
    line of the array's key.
    """
    where = Path(path)
    try:
        document = json.loads(text, object_pairs_hook=_JsonObject)
    except json.JSONDecodeError as error:
        raise TraceError(f"invalid JSON: {error.msg} (column {error.colno})", path=where, line=error.lineno) from None
    first_line = text[: len(text) - len(text.lstrip())].count("\n") + 1
    if not isinstance(document, _JsonObject):
        kind = "a list" if isinstance(document, list) else f"a {type(document).__name__}"
        raise TraceError(
            f"expected one JSON object (one trace per file) with a time key and a throughput key, got {kind}",
            path=where,
            line=first_line,
        )

    allowed = (*_TIME_KEYS, *_THROUGHPUT_KEYS, *_OPTIONAL_JSON_KEYS)
    fields: dict[str, Any] = {}
    for key, value in document.pairs:
        if key in fields:
            raise TraceError(f"duplicate key {key!r}", path=where, line=_json_key_line(text, key, occurrence=2))
        if key not in allowed:
            raise TraceError(
                f"unknown key {key!r} (allowed: {', '.join(allowed)})",
                path=where,
                line=_json_key_line(text, key),
            )
        fields[key] = value

    time_key = _one_key(fields, tuple(_TIME_KEYS), "time", text, where, first_line)
    tput_key = _one_key(fields, tuple(_THROUGHPUT_KEYS), "throughput", text, where, first_line)
    raw_times = _json_numbers(fields[time_key], time_key, text, where)
    raw_tput = _json_numbers(fields[tput_key], tput_key, text, where)
    if raw_times.size != raw_tput.size:
        raise TraceError(
            f"{time_key} has {raw_times.size} entries but {tput_key} has {raw_tput.size}",
            path=where,
            line=_json_key_line(text, tput_key),
        )
    times = raw_times * _TIME_KEYS[time_key]
    throughput = raw_tput * _THROUGHPUT_KEYS[tput_key]
    problem = _first_problem(times, throughput)
    if problem is not None:
        key, raw = (time_key, raw_times) if problem.column == 0 else (tput_key, raw_tput)
        value = float(raw[problem.sample])
        raise TraceError(
            f"{key}[{problem.sample}] = {value!r} {problem.reason}",
            path=where,
            line=_json_key_line(text, key),
        )
    _check_count_and_activity(times, throughput, where, last_line=lambda: _json_key_line(text, time_key))

    name = fields.get("name")
    if name is not None and (not isinstance(name, str) or not name):
        raise TraceError("'name' must be a non-empty string", path=where, line=_json_key_line(text, "name"))
    default_name = where.stem if where.suffix.lower() == ".json" else where.name
    return Trace(name=name or default_name, times_s=times, throughput_mbps=throughput, source=str(where))


def _one_key(fields: dict[str, Any], keys: tuple[str, ...], what: str, text: str, where: Path, first_line: int) -> str:
    """The single key of ``keys`` present in ``fields``; a clear error when there are none or several."""
    present = [key for key in keys if key in fields]
    if len(present) == 1:
        return present[0]
    if not present:
        raise TraceError(f"missing {what} key: expected one of {', '.join(keys)}", path=where, line=first_line)
    raise TraceError(
        f"several {what} keys ({', '.join(present)}): give exactly one",
        path=where,
        line=_json_key_line(text, present[1]),
    )


def _json_numbers(value: Any, key: str, text: str, where: Path) -> FloatArray:
    """A JSON array of numbers as floats; booleans, strings and nested values are rejected."""
    if not isinstance(value, list):
        kind = "an object" if isinstance(value, _JsonObject) else type(value).__name__
        raise TraceError(f"{key} must be a list of numbers, got {kind}", path=where, line=_json_key_line(text, key))
    for index, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, int | float):
            shown = "an object" if isinstance(item, _JsonObject) else json.dumps(item)
            raise TraceError(f"{key}[{index}] is not a number: {shown}", path=where, line=_json_key_line(text, key))
    try:
        return np.array(value, dtype=np.float64)
    except OverflowError:
        raise TraceError(
            f"{key} holds a number too large for a float", path=where, line=_json_key_line(text, key)
        ) from None


def _json_key_line(text: str, key: str, occurrence: int = 1) -> int | None:
    """1-based line of the ``occurrence``-th ``"key":`` in the text (None if it cannot be found)."""
    needle = json.dumps(key)
    start = 0
    for _ in range(occurrence):
        found = text.find(needle, start)
        while found != -1 and not text[found + len(needle) :].lstrip().startswith(":"):
            found = text.find(needle, found + 1)
        if found == -1:
            return None
        position, start = found, found + 1
    return text.count("\n", 0, position) + 1


# --------------------------------------------------------------------------------------------------
# Sample checks shared by the parsers


@dataclass(frozen=True)
class _Problem:
    """The first invalid sample: its index, column (0 = time, 1 = throughput) and what is wrong."""

    sample: int
    column: int
    reason: str


def _first_problem(times: FloatArray, throughput: FloatArray) -> _Problem | None:
    """The first sample (in file order) breaking the `Trace` invariants, or None."""
    candidates: list[_Problem] = []
    finite_t = np.isfinite(times)
    if not finite_t.all():
        candidates.append(_Problem(int(np.argmin(finite_t)), 0, "is not finite"))
    if times[0] < 0:
        candidates.append(_Problem(0, 0, "must be >= 0"))
    with np.errstate(invalid="ignore"):
        steps = np.diff(times)
        not_increasing = ~(steps > 0) & finite_t[1:] & finite_t[:-1]
    if not_increasing.any():
        bad = int(np.argmax(not_increasing)) + 1
        candidates.append(_Problem(bad, 0, f"is not greater than the previous time {float(times[bad - 1])!r}"))
    finite_b = np.isfinite(throughput)
    if not finite_b.all():
        candidates.append(_Problem(int(np.argmin(finite_b)), 1, "is not finite"))
    with np.errstate(invalid="ignore"):
        negative = throughput < 0
    if negative.any():
        candidates.append(_Problem(int(np.argmax(negative)), 1, "is negative"))
    if not candidates:
        return None
    return min(candidates, key=lambda p: (p.sample, p.column))


def _check_count_and_activity(
    times: FloatArray, throughput: FloatArray, where: Path, *, last_line: Callable[[], int | None]
) -> None:
    """Reject traces with fewer than 2 samples or no throughput after the first sample."""
    if times.size < 2:
        raise TraceError(f"a trace needs at least 2 samples, got {times.size}", path=where, line=last_line())
    if not np.any(throughput[1:] > 0):
        raise TraceError(
            "throughput is 0 on every interval after the first sample: nothing could ever be delivered",
            path=where,
        )


def _quote(row: list[str]) -> str:
    shown = " ".join(row)
    return repr(shown if len(shown) <= 80 else shown[:77] + "...")


def _check_window(window_ms: float) -> None:
    if not (math.isfinite(window_ms) and window_ms > 0):
        raise ValueError(f"mahimahi window_ms must be finite and > 0, got {window_ms}")


def _check_format(format: str, allowed: tuple[str, ...]) -> None:
    if format not in allowed:
        raise ValueError(f"unknown trace format {format!r} (expected one of {', '.join(allowed)})")


# --------------------------------------------------------------------------------------------------
# Saving


def save(trace: Trace, path: str | os.PathLike[str], *, format: SaveFormat = "cooked") -> Path:
    """Write one trace to ``path`` atomically; returns the path.

    ``cooked`` writes ``time_s<TAB>throughput_mbps`` lines; ``json`` writes ``name``, ``times_s`` and
    ``throughput_mbps``. Floats are written at repr precision, so `load_file` reads back exactly the
    same arrays. The file appears complete or not at all: it is written to a hidden temporary file in
    the same folder and renamed over ``path``.
    """
    _check_format(format, get_args(SaveFormat))
    target = Path(path)
    if format == "json":
        document = {
            "name": trace.name,
            "times_s": trace.times_s.tolist(),
            "throughput_mbps": trace.throughput_mbps.tolist(),
        }
        text = json.dumps(document) + "\n"
    else:
        # tolist() gives Python floats, whose repr is the shortest exact round-trip form.
        text = "".join(
            f"{t!r}\t{b!r}\n" for t, b in zip(trace.times_s.tolist(), trace.throughput_mbps.tolist(), strict=True)
        )
    write_atomic(target, text.encode("utf-8"))
    return target


def save_many(traces: Iterable[Trace], folder: str | os.PathLike[str], *, format: SaveFormat = "cooked") -> list[Path]:
    """Write each trace to ``folder/<name>`` (``<name>.json`` for JSON), creating the folder.

    Names must be usable as file names (no path separators, not hidden) and unique, so that no trace
    silently overwrites another; this is checked before anything is written.

    Returns:
        the written paths, in the order of ``traces``.
    """
    _check_format(format, get_args(SaveFormat))
    out = Path(folder)
    items = list(traces)
    suffix = ".json" if format == "json" else ""
    seen: set[str] = set()
    for trace in items:
        name = trace.name
        if not name or name.startswith(".") or "/" in name or "\\" in name or "\0" in name:
            raise TraceError(f"trace name {name!r} cannot be used as a file name", path=out)
        if name in seen:
            raise TraceError(f"two traces are named {name!r}: one would overwrite the other", path=out)
        seen.add(name)
    out.mkdir(parents=True, exist_ok=True)
    return [save(trace, out / f"{trace.name}{suffix}", format=format) for trace in items]
