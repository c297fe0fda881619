"""Kernel shaping for emulation: ``tc tbf`` on the loopback of a private network namespace.

The application-level link (`abr_server.shaping`) paces response bodies, but TCP never sees a
bottleneck. Here the kernel's token bucket filter limits the loopback device instead, so real TCP
(slow start, congestion window, queueing in the bucket) carries the segments; its rate follows the
trace, changed at every sample with ``tc qdisc change``. This needs a network namespace of its own
(``unshare -n``: root, or unprivileged user namespaces), where the loopback is the only device and
shaping it touches nothing else; the loopback MTU is set to 1500 so packets are the size they are on
real networks. The fixed delay stays with the segment server (this kernel may lack ``netem``).

The tbf rate counts whole packets, headers included, so it is the trace's throughput itself (the
simulator's payload fraction is what TCP/IP headers leave on a 1500-byte MTU). tbf cannot be set to
zero: intervals with no throughput get `MIN_RATE_KBIT`.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from abr_common.units import KBIT_PER_MBIT
from traces.trace import Trace

MIN_RATE_KBIT = 8
BURST_BYTES = 16 * 1024
QUEUE_LATENCY_MS = 400
LOOPBACK_MTU = 1500


class KernelShapingError(RuntimeError):
    """tc or ip is missing, the namespace is not private, or the kernel refused a command."""


def private_netns() -> bool:
    """Whether this process's network namespace has only the loopback device (a fresh ``unshare -n``)."""
    try:
        lines = Path("/proc/net/dev").read_text().splitlines()[2:]
    except OSError:
        return False
    devices = {line.split(":", 1)[0].strip() for line in lines if ":" in line}
    return devices == {"lo"}


def rate_schedule(trace: Trace) -> list[tuple[float, int]]:
    """(elapsed seconds, tbf rate in kbit/s) for one pass: interval k's rate from the time it starts.

    The first pass starts at the trace's first sample; later passes repeat with the trace's period
    from clock 0, as in the simulator (`simulator.capacity.TraceCapacity`).
    """
    times = trace.times_s
    rates = [max(round(float(r) * KBIT_PER_MBIT), MIN_RATE_KBIT) for r in trace.throughput_mbps[1:]]
    return [(float(times[k] - times[0]), rates[k]) for k in range(len(rates))]


class KernelShaper:
    """Drive ``tc tbf`` on ``lo`` along a trace, from `start` until `stop` (looping the trace)."""

    def __init__(self, trace: Trace, *, run: Callable[[list[str]], None] | None = None) -> None:
        self.trace = trace
        self.schedule = rate_schedule(trace)
        self.period_s = float(trace.times_s[-1])
        self.first_pass_s = float(trace.times_s[-1] - trace.times_s[0])
        self._run = run or _run
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.changes = 0

    def _tbf(self, verb: str, rate_kbit: int) -> list[str]:
        burst = max(BURST_BYTES, rate_kbit * 1000 // 8 // 100)  # at least 10 ms of the rate
        return ["tc", "qdisc", verb, "dev", "lo", "root", "handle", "1:", "tbf", "rate", f"{rate_kbit}kbit",
                "burst", str(burst), "latency", f"{QUEUE_LATENCY_MS}ms"]  # fmt: skip

    def setup(self) -> None:
        """Bring ``lo`` up at MTU 1500 with the trace's first rate (only inside a private namespace)."""
        for tool in ("tc", "ip"):
            if shutil.which(tool) is None:
                raise KernelShapingError(f"{tool} not found (Debian: apt-get install iproute2)")
        if not private_netns():
            raise KernelShapingError("refusing to shape: this is not a private network namespace (use unshare -n)")
        self._run(["ip", "link", "set", "lo", "up"])
        self._run(["ip", "link", "set", "lo", "mtu", str(LOOPBACK_MTU)])
        self._run(self._tbf("replace", self.schedule[0][1]))

    def start(self) -> None:
        """Follow the trace from now on, in a background thread."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._follow, name="abr-tc-shaper", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        started = time.monotonic()
        offset_s = 0.0  # elapsed time at which the current pass began
        first = True
        while not self._stop.is_set():
            if first:
                steps = self.schedule
                span = self.first_pass_s
            else:  # later passes start at clock 0: interval 0 then lasts times_s[1] seconds
                ends = [float(t) for t in self.trace.times_s[1:]]
                steps = [(0.0 if k == 0 else ends[k - 1], rate) for k, (_, rate) in enumerate(self.schedule)]
                span = self.period_s
            for at_s, rate in steps:
                wait = started + offset_s + at_s - time.monotonic()
                if wait > 0 and self._stop.wait(wait):
                    return
                self._run(self._tbf("change", rate))
                self.changes += 1
            offset_s += span
            first = False

    def stop(self) -> None:
        """Stop following the trace and remove the shaping."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with contextlib.suppress(KernelShapingError):
            self._run(["tc", "qdisc", "del", "dev", "lo", "root"])


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise KernelShapingError(f"{' '.join(cmd)}: {done.stderr.strip() or done.returncode}")
