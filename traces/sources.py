"""Resolve a user's trace argument: a file, a folder, or a generator spec."""

from __future__ import annotations

from pathlib import Path

from traces.trace import Trace, TraceError

#: The embedded default trace set: generated, so every command runs with no data on the machine.
DEFAULT_TRACE_SPEC = "markov:n=100,seed=0"
#: Spec prefixes understood as generators rather than paths.
GENERATOR_PREFIXES = ("markov", "regime")


def is_generator_spec(source: str) -> bool:
    """Whether ``source`` names a generator (``markov:...``/``regime:...``) rather than a path."""
    head = source.split(":", 1)[0]
    return head in GENERATOR_PREFIXES and not Path(source).exists()


def resolve(source: str, *, skip_bad: bool = False) -> list[Trace]:
    """Load ``source``: an existing file or folder, or a generator spec such as ``markov:n=50,seed=1``."""
    from traces.generate import generate_from_spec
    from traces.io import load

    if is_generator_spec(source):
        return generate_from_spec(source)
    path = Path(source)
    if not path.exists():
        raise TraceError(
            f"no such file or folder, and not a generator spec ({', '.join(p + ':...' for p in GENERATOR_PREFIXES)})",
            path=source,
        )
    return load(path, skip_bad=skip_bad)


def label(source: str) -> str:
    """A short name for a trace source in tables: the folder/file name, or the generator spec."""
    return source if is_generator_spec(source) else (Path(source).resolve().name or source)


def default_traces() -> list[Trace]:
    """The embedded default trace set (`DEFAULT_TRACE_SPEC`)."""
    return resolve(DEFAULT_TRACE_SPEC)


def split_sources(value: str) -> list[str]:
    """``PATH[,PATH...]`` into sources; a generator spec (which has commas of its own) stays whole."""
    value = value.strip()
    if is_generator_spec(value) or Path(value).exists():
        return [value]
    return [part.strip() for part in value.split(",") if part.strip()]
