"""Resolve a user's trace argument: a file, a folder, or a generator spec, optionally one fold of it, scaled.

A source may end in ``@fold=K/N`` (the traces whose position in the sorted set is K modulo N) or
``@except=K/N`` (all the others), so one folder gives a training and a validation split with no copy:
``--traces fcc-train@except=0/5 --eval-traces fcc-train@fold=0/5``. A final ``@scale=X`` multiplies
every throughput sample by X (``fcc-test@scale=4``, ``markov:n=50,seed=1@scale=0.5``): the same
network shapes at another bandwidth, for testing how a policy generalises across bandwidth scales.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from traces.trace import Trace, TraceError

#: The embedded default trace set: generated, so every command runs with no data on the machine.
DEFAULT_TRACE_SPEC = "markov:n=100,seed=0"
#: Spec prefixes understood as generators rather than paths.
GENERATOR_PREFIXES = ("markov", "regime")


_FOLD = re.compile(r"^(?P<base>.+)@(?P<mode>fold|except)=(?P<k>\d+)/(?P<n>\d+)$")
_SCALE = re.compile(r"^(?P<base>.+)@scale=(?P<factor>[^@/]+)$")


def _split_scale(source: str) -> tuple[str, float | None]:
    match = _SCALE.match(source)
    if match is None or Path(source).exists():
        return source, None
    try:
        factor = float(match["factor"])
    except ValueError:
        raise TraceError(f"scale {match['factor']!r}: expected a positive number", path=source) from None
    if not (math.isfinite(factor) and factor > 0):
        raise TraceError(f"scale {match['factor']!r}: expected a positive number", path=source)
    return match["base"], factor


def scaled(trace: Trace, factor: float) -> Trace:
    """``trace`` with every throughput sample multiplied by ``factor`` (named ``NAME@scale=FACTOR``)."""
    return Trace(f"{trace.name}@scale={factor:g}", trace.times_s, trace.throughput_mbps * factor,
                 source=f"{trace.source or trace.name}@scale={factor:g}")  # fmt: skip


def _split_fold(source: str) -> tuple[str, tuple[str, int, int] | None]:
    match = _FOLD.match(source)
    if match is None or Path(source).exists():
        return source, None
    k, n = int(match["k"]), int(match["n"])
    if n < 2 or k >= n:
        raise TraceError(f"fold {k}/{n}: needs 0 <= K < N and N >= 2", path=source)
    return match["base"], (match["mode"], k, n)


def is_generator_spec(source: str) -> bool:
    """Whether ``source`` names a generator (``markov:...``/``regime:...``) rather than a path."""
    head = source.split(":", 1)[0]
    return head in GENERATOR_PREFIXES and not Path(source).exists()


def resolve(source: str, *, skip_bad: bool = False) -> list[Trace]:
    """Load ``source``: an existing file or folder, or a generator spec such as ``markov:n=50,seed=1``."""
    from traces.generate import generate_from_spec
    from traces.io import load

    unscaled, factor = _split_scale(source)
    if factor is not None:
        return [scaled(t, factor) for t in resolve(unscaled, skip_bad=skip_bad)]
    base, fold = _split_fold(source)
    if is_generator_spec(base):
        traces = generate_from_spec(base)
    else:
        path = Path(base)
        if not path.exists():
            kinds = ", ".join(p + ":..." for p in GENERATOR_PREFIXES)
            raise TraceError(f"no such file or folder, and not a generator spec ({kinds})", path=base)
        traces = load(path, skip_bad=skip_bad)
    if fold is None:
        return traces
    mode, k, n = fold
    chosen = [t for i, t in enumerate(traces) if (i % n == k) == (mode == "fold")]
    if not chosen:
        raise TraceError(f"{mode}={k}/{n} leaves no trace of {len(traces)}", path=source)
    return chosen


def label(source: str) -> str:
    """A short name for a trace source in tables: the folder/file name, or the generator spec."""
    unscaled, factor = _split_scale(source)
    if factor is not None:
        return f"{label(unscaled)}@scale={factor:g}"
    base, fold = _split_fold(source)
    name = base if is_generator_spec(base) else (Path(base).resolve().name or base)
    return name if fold is None else f"{name}@{fold[0]}={fold[1]}/{fold[2]}"


def default_traces() -> list[Trace]:
    """The embedded default trace set (`DEFAULT_TRACE_SPEC`)."""
    return resolve(DEFAULT_TRACE_SPEC)


def split_sources(value: str) -> list[str]:
    """``PATH[,PATH...]`` into sources; a generator spec (which has commas of its own) stays whole."""
    value = value.strip()
    if is_generator_spec(_split_fold(_split_scale(value)[0])[0]) or Path(value).exists():
        return [value]
    return [part.strip() for part in value.split(",") if part.strip()]
