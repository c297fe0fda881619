"""The `Trace` type: a piecewise-constant throughput time series.

Semantics (shared with the simulator): sample ``i`` says that the link delivers ``throughput_mbps[i]``
between ``times_s[i-1]`` and ``times_s[i]``. The first sample's throughput is therefore never used by
the reference chunk semantics; its time is where a session starts in evaluation mode.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


class TraceError(ValueError):
    """A trace file or array is malformed. The message names the file and, where known, the line."""

    def __init__(self, message: str, *, path: str | Path | None = None, line: int | None = None) -> None:
        self.path = None if path is None else str(path)
        self.line = line
        where = ""
        if self.path is not None:
            where = self.path if line is None else f"{self.path}:{line}"
            where += ": "
        super().__init__(f"{where}{message}")


def _frozen(array: npt.ArrayLike) -> FloatArray:
    out = np.array(array, dtype=np.float64, copy=True)
    out.setflags(write=False)
    return out


@dataclass(frozen=True, eq=False)
class Trace:
    """A throughput trace: ``times_s`` strictly increasing from >= 0, ``throughput_mbps`` finite, >= 0.

    Attributes:
        name: short identifier (usually the file name).
        times_s: sample times in seconds, strictly increasing, first >= 0.
        throughput_mbps: link throughput in Mbit/s for the interval ending at each sample time.
        source: where it came from (a path, or a generator spec).
    """

    name: str
    times_s: FloatArray
    throughput_mbps: FloatArray
    source: str = field(default="")

    def __post_init__(self) -> None:
        times = _frozen(self.times_s)
        tput = _frozen(self.throughput_mbps)
        object.__setattr__(self, "times_s", times)
        object.__setattr__(self, "throughput_mbps", tput)
        where = self.source or self.name
        if times.ndim != 1 or tput.ndim != 1 or times.shape != tput.shape:
            raise TraceError(
                f"times_s and throughput_mbps must be 1-D of equal length, got {times.shape} and {tput.shape}",
                path=where,
            )
        if times.size < 2:
            raise TraceError(f"a trace needs at least 2 samples, got {times.size}", path=where)
        if not np.all(np.isfinite(times)):
            bad = int(np.argmin(np.isfinite(times)))
            raise TraceError(f"sample {bad}: time is not finite ({times[bad]})", path=where)
        if not np.all(np.isfinite(tput)):
            bad = int(np.argmin(np.isfinite(tput)))
            raise TraceError(f"sample {bad}: throughput is not finite ({tput[bad]})", path=where)
        if times[0] < 0:
            raise TraceError(f"sample 0: time must be >= 0, got {times[0]}", path=where)
        steps = np.diff(times)
        if np.any(steps <= 0):
            bad = int(np.argmax(steps <= 0)) + 1
            raise TraceError(
                f"sample {bad}: time {times[bad]} is not greater than the previous {times[bad - 1]}",
                path=where,
            )
        if np.any(tput < 0):
            bad = int(np.argmax(tput < 0))
            raise TraceError(f"sample {bad}: throughput must be >= 0, got {tput[bad]}", path=where)
        if not np.any(tput[1:] > 0):
            raise TraceError("throughput is zero everywhere: no chunk could ever be delivered", path=where)

    def __len__(self) -> int:
        return int(self.times_s.size)

    @property
    def duration_s(self) -> float:
        """Time from the first to the last sample."""
        return float(self.times_s[-1] - self.times_s[0])

    def mean_throughput_mbps(self) -> float:
        """Time-weighted mean throughput over the trace's intervals."""
        dt = np.diff(self.times_s)
        return float(np.sum(self.throughput_mbps[1:] * dt) / np.sum(dt))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Trace):
            return NotImplemented
        return (
            self.name == other.name
            and self.source == other.source
            and np.array_equal(self.times_s, other.times_s)
            and np.array_equal(self.throughput_mbps, other.throughput_mbps)
        )

    def __hash__(self) -> int:
        return hash((self.name, self.source, self.times_s.tobytes(), self.throughput_mbps.tobytes()))
