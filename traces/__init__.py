"""Throughput traces: the `Trace` type, loaders (cooked, Mahimahi, JSON), generators and statistics."""

from traces.trace import Trace, TraceError

__all__ = ["Trace", "TraceError"]
