"""Shared fixtures: the real-trace folder (optional) and small hand-made inputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from simulator.video import Video

# Tests run in parallel processes (pytest -n 2): one torch thread each avoids oversubscribing the cores,
# which makes small-tensor work many times slower.
torch.set_num_threads(1)

#: ../shared/traces relative to the project root (present in CI, maybe absent elsewhere).
SHARED_TRACES = Path(__file__).resolve().parents[1].parent / "shared" / "traces"


def shared_traces_path(*parts: str) -> Path:
    """A path under ../shared/traces, or skip the test with a clear reason when it is absent."""
    path = SHARED_TRACES.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not found: the real traces in ../shared/traces are not available here")
    return path


@pytest.fixture
def envivio_video() -> Video:
    """The Envivio-Dash3 test video from ../shared/traces/video-sizes (skips where absent)."""
    return Video.from_size_files(shared_traces_path("video-sizes"))
