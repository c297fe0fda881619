"""Shared CLI plumbing: the console, error reporting and argument resolution."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from abr_common.errors import problems

if TYPE_CHECKING:
    from policy.base import Policy

#: Tables keep their columns readable when output goes to a file or CI log (rich assumes 80 there).
_MIN_WIDTH = 140
console = Console()
if not console.is_terminal:
    console = Console(width=_MIN_WIDTH)
err_console = Console(stderr=True)

#: Exit code for bad user input (files, specs, options).
EXIT_BAD_INPUT = 2


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the library's input errors into a red one-line message and exit code 2 (no traceback).

    The libraries' input errors (`TraceError`, `VideoError`, `PolicySpecError`) are all `ValueError`s,
    so none of those modules is imported here (``--help`` stays fast).
    """
    try:
        yield
    except (ValueError, OSError) as err:
        # A pydantic validation error (e.g. bad ABR_* settings) in one line, each field named.
        message = problems(err) if isinstance(err, ValidationError) else str(err)
        err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=EXIT_BAD_INPUT) from None


def output_path(path: Path | None, option: str) -> Path | None:
    """Check an output file path before any work is done, so a bad path fails fast and loses nothing."""
    if path is None:
        return None
    if path.is_dir():
        raise ValueError(f"{option} {path}: is a folder, expected a file path")
    _check_parents(path, option)
    return path


def read_json_object(path: Path | None, option: str) -> dict[str, Any]:
    """The JSON object in the file ``path`` given to ``option`` (None: an empty one); a one-line error otherwise."""
    if path is None:
        return {}
    try:
        value = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{option} {path}: {err}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{option} {path}: expected a JSON object")
    return value


def output_dir(path: Path, option: str) -> Path:
    """Check an output folder (it may exist; files in it are replaced) before any work is done."""
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option} {path}: is a file, expected a folder")
    _check_parents(path, option)
    return path


def _check_parents(path: Path, option: str) -> None:
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{option} {path}: {parent} is a file, not a folder")
            break


def progress() -> Progress:
    """A rich progress bar (hidden when output is not a terminal, e.g. in CI logs)."""
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
        disable=not err_console.is_terminal,
    )


@contextmanager
def runs_progress(total: int) -> Iterator[Callable[[str], None]]:
    """A progress bar over ``total`` runs; the callback marks one run done and shows its name."""
    with progress() as bar:
        task = bar.add_task("runs", total=total)
        yield lambda name: bar.update(task, advance=1, description=name)


@contextmanager
def planning_progress(bar: Progress, policy: Policy, n_traces: int) -> Iterator[Callable[[int], None] | None]:
    """A row of ``bar`` for an offline policy's planning (minutes for `optimal`), as `run_policy`'s ``on_planned``.

    Yields None for an online policy (nothing to plan); the row is removed when planning and replay are done.
    """
    if not policy.offline:
        yield None
        return
    row = bar.add_task(f"planning {policy.label}", total=n_traces)
    try:
        yield lambda done: bar.update(row, completed=done)
    finally:
        bar.remove_task(row)
