"""Default locations of the project's data."""

from __future__ import annotations

from pathlib import Path

#: The trace root (real trace sets and the test video), relative to the project root: where the CLI, the
#: benchmarks and ``{traces}`` in plasticity schedules look unless told otherwise.
DEFAULT_TRACE_ROOT = Path("../shared/traces")
