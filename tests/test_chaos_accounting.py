"""The chaos benchmark's accounting, on hand-made requests (the benchmark itself runs in `abr bench chaos`)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from abr_server.lab.chaos import BAD_VERSIONS, GOOD_VERSIONS, ChaosConfig, Request, Timeline, _account, build_registry
from abr_server.registry import ModelRegistry, RegistryError
from simulator.video import Video

CONFIG = ChaosConfig(seconds=100.0)


def test_failures_by_cause_and_the_telemetry_account(tmp_path: Path) -> None:
    timeline = Timeline(fill_s=50.0, free_s=65.0, kill_s=75.0, ready_again_s=80.0)
    requests = [
        Request(1.0, 0.010, 200, "report", ("a", 0, 0.0)),  # steady, stored once
        Request(2.0, 0.020, 200, "report", ("a", 1, 900.0)),  # steady, never stored: missing
        Request(30.0, 0.030, 200, "report", ("b", 0, 0.0)),  # swaps, stored twice: duplicated
        Request(55.0, 0.001, 200, "report", ("c", 0, 0.0)),  # disk full, stored (spilled, drained)
        Request(56.0, 0.001, 200, "report", ("c", 1, 800.0)),  # disk full, lost
        Request(76.0, 0.0, 0, "report", ("d", 0, 0.0)),  # no answer in the kill window, but stored
        Request(90.0, 0.0, 0, "report", ("d", 1, 700.0)),  # no answer after the restart: a failure
        Request(91.0, 0.002, 422, "fuzz"),  # a hostile body refused: fine
        Request(92.0, 0.002, 500, "fuzz"),  # a 5xx
        Request(93.0, 0.002, 200, "fuzz"),  # a hostile body accepted
        Request(94.0, 0.002, 422, "report", ("e", 0, 0.0)),  # a good report refused
    ]
    stored = Counter({("a", 0, 0.0): 1, ("b", 0, 0.0): 2, ("c", 0, 0.0): 1, ("d", 0, 0.0): 1})
    result = _account(CONFIG, requests, timeline, stored, tmp_path)
    assert result["failures"] == {"kill window (expected)": 1, "connection": 1, "5xx": 1,
                                  "fuzz answered 200": 1, "report answered 422": 1}  # fmt: skip
    assert result["unexpected_failures"] == 4
    assert result["telemetry"] == {
        "acknowledged_while_writable": 3, "missing": 1, "duplicated": 1, "acknowledged_while_disk_full": 2,
        "stored_of_those": 1, "stored_not_acknowledged": 1,
    }  # fmt: skip
    assert result["p99_ms"]["steady"] is not None
    assert result["p99_ms"]["after_kill"] is None  # no report answered 200 then


def test_the_registry_has_two_good_and_three_bad_versions(tmp_path: Path) -> None:
    root = build_registry(tmp_path)
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == [
        "bad-kernel", "bad-nan", "bad-truncated", "good-a", "good-b"
    ]  # fmt: skip
    assert (root / "ACTIVE").read_text().strip() == "good-a"
    registry = ModelRegistry(root, Video.builtin(), torch.device("cpu"))
    for version in GOOD_VERSIONS:
        assert registry.load(version).version == version
    for version in BAD_VERSIONS:
        with pytest.raises(RegistryError, match=f"model version '{version}' refused"):
            registry.load(version)
