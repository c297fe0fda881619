"""Throughput traces: the `Trace` type, loaders (cooked, Mahimahi, JSON), generators and statistics."""

from traces.generate import (
    GeneratorSpec,
    MarkovConfig,
    RegimeConfig,
    SpecError,
    generate_from_spec,
    markov,
    parse_spec,
    regime,
)
from traces.io import TraceLoadError, TraceWarning, load, load_file, save, save_many
from traces.stats import TraceSetStats, describe, plot_histogram
from traces.trace import Trace, TraceError

__all__ = [
    "GeneratorSpec",
    "MarkovConfig",
    "RegimeConfig",
    "SpecError",
    "Trace",
    "TraceError",
    "TraceLoadError",
    "TraceSetStats",
    "TraceWarning",
    "describe",
    "generate_from_spec",
    "load",
    "load_file",
    "markov",
    "parse_spec",
    "plot_histogram",
    "regime",
    "save",
    "save_many",
]
