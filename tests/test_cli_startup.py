"""`abr --help` and every subcommand's help build the app from light modules only (no torch, plots or server).

Each help runs in a fresh interpreter, so what one command imports cannot hide what another needs. The
timings live in BENCHMARKS.md; these tests check only which modules are loaded, which is deterministic.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
import typer

from abr_cli.main import app

#: Packages that take seconds to import, or pull in a plotting or serving stack: only commands load them.
HEAVY = ("torch", "matplotlib", "fastapi", "uvicorn", "ray", "simpy", "scipy")

_PROBE = """
import json, sys
from typer.testing import CliRunner
from abr_cli.main import app
result = CliRunner().invoke(app, [*sys.argv[1:], "--help"])
print(json.dumps({"exit_code": result.exit_code, "output": result.output,
                  "loaded": sorted(m for m in HEAVY if m in sys.modules)}))
"""


def _command_paths(command: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and group of the app, as the words that name it (the root is ``()``)."""
    paths = [path]
    subcommands = getattr(command, "commands", {})  # a group (typer ships its own click, so no isinstance)
    for name in sorted(subcommands):
        paths += _command_paths(subcommands[name], (*path, name))
    return paths


COMMANDS = _command_paths(typer.main.get_command(app))


def test_every_command_is_probed() -> None:
    names = {path[0] for path in COMMANDS if path}
    assert {"eval", "simulate", "train", "plasticity-bench", "serve", "traces", "bench", "media", "retrain"} <= names
    assert ("bench", "optimal") in COMMANDS


@pytest.mark.parametrize("path", COMMANDS, ids=lambda path: " ".join(("abr", *path, "--help")))
def test_help_imports_no_heavy_module(path: tuple[str, ...]) -> None:
    probe = f"HEAVY = {HEAVY!r}\n{_PROBE}"
    done = subprocess.run([sys.executable, "-c", probe, *path], capture_output=True, text=True, check=True, timeout=120)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["exit_code"] == 0, report["output"]
    assert "Usage" in report["output"]
    assert report["loaded"] == []


def test_input_errors_are_value_errors() -> None:
    """`abr_cli.common.user_errors` catches ValueError instead of importing these error types."""
    from policy.base import PolicySpecError
    from simulator.video import VideoError
    from traces.trace import TraceError

    assert all(issubclass(err, ValueError) for err in (PolicySpecError, VideoError, TraceError))
