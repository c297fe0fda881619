"""``abr traces``: describe, generate and convert throughput traces (a thin shell over `traces`).

Malformed input (any `TraceError`) is reported as one red line per problem on stderr with exit code 2,
never as a Python traceback.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from traces import generate as gen
from traces import io as trace_io
from traces.sources import is_generator_spec
from traces.stats import describe as describe_traces
from traces.stats import plot_histogram
from traces.trace import Trace, TraceError

app = typer.Typer(
    name="traces",
    help="Load, describe, generate and convert throughput traces.",
    no_args_is_help=True,
    add_completion=False,
)


class InputFormat(StrEnum):
    """Trace file formats accepted on input."""

    auto = "auto"
    cooked = "cooked"
    mahimahi = "mahimahi"
    json = "json"


class OutputFormat(StrEnum):
    """Trace file formats written on output."""

    cooked = "cooked"
    json = "json"


class Generator(StrEnum):
    """Synthetic trace generators."""

    markov = "markov"
    regime = "regime"


PathArgument = Annotated[
    Path, typer.Argument(help="A trace file, a folder of trace files, or a generator spec (markov:..., regime:...).")
]
FromOption = Annotated[InputFormat, typer.Option("--from", help="Input format; auto detects each file's format.")]
WindowOption = Annotated[
    float,
    typer.Option("--mahimahi-window-ms", help="Window over which Mahimahi packet counts are averaged."),
]
SkipBadOption = Annotated[
    bool, typer.Option("--skip-bad", help="Warn about and skip malformed files instead of failing.")
]


@contextmanager
def _reported_errors() -> Iterator[None]:
    """Turn trace and file errors into a red message and exit code 2; show skipped files in yellow."""
    errors = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", trace_io.TraceWarning)
            try:
                yield
            finally:
                for warning in caught:
                    if issubclass(warning.category, trace_io.TraceWarning):
                        errors.print(f"warning: {warning.message}", style="yellow", markup=False)
    except (TraceError, OSError) as error:
        # OSError: an output folder or plot file that cannot be written is a user error, not a crash.
        errors.print(f"error: {error}", style="bold red", markup=False)
        raise typer.Exit(code=2) from None


def _load(path: Path, input_format: InputFormat, mahimahi_window_ms: float, skip_bad: bool) -> list[Trace]:
    if not mahimahi_window_ms > 0:
        raise TraceError(f"--mahimahi-window-ms must be > 0, got {mahimahi_window_ms}")
    if is_generator_spec(str(path)):
        return gen.generate_from_spec(str(path))
    return trace_io.load(path, format=input_format.value, mahimahi_window_ms=mahimahi_window_ms, skip_bad=skip_bad)


@app.command()
def describe(
    path: PathArgument,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Also write a throughput histogram to this PNG file.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the statistics as JSON.")] = False,
    input_format: FromOption = InputFormat.auto,
    mahimahi_window_ms: WindowOption = trace_io.DEFAULT_MAHIMAHI_WINDOW_MS,
    skip_bad: SkipBadOption = False,
) -> None:
    """Print statistics of the traces at PATH (throughputs time-weighted over all intervals)."""
    with _reported_errors():
        loaded = _load(path, input_format, mahimahi_window_ms, skip_bad)
        stats = describe_traces(loaded)
        if plot is not None:
            plot_histogram(loaded, plot)
    if as_json:
        typer.echo(stats.model_dump_json(indent=2))
    else:
        table = Table(title=Text(str(path)), show_header=True)  # Text: no markup in paths
        table.add_column("statistic")
        table.add_column("value", justify="right")
        table.add_row("traces", str(stats.count))
        table.add_row("total duration (s)", f"{stats.total_duration_s:.1f}")
        table.add_row("mean duration (s)", f"{stats.mean_duration_s:.1f}")
        table.add_row("mean throughput (Mbit/s)", f"{stats.mean_throughput_mbps:.3f}")
        table.add_row("p10 throughput (Mbit/s)", f"{stats.p10_throughput_mbps:.3f}")
        table.add_row("p50 throughput (Mbit/s)", f"{stats.p50_throughput_mbps:.3f}")
        table.add_row("p90 throughput (Mbit/s)", f"{stats.p90_throughput_mbps:.3f}")
        table.add_row("min throughput (Mbit/s)", f"{stats.min_throughput_mbps:.3f}")
        table.add_row("max throughput (Mbit/s)", f"{stats.max_throughput_mbps:.3f}")
        Console().print(table)
    if plot is not None and not as_json:
        typer.echo(f"wrote {plot}")


@app.command()
def generate(
    out: Annotated[Path, typer.Option("--out", help="Folder to write the traces to (created if needed).")],
    kind: Annotated[Generator | None, typer.Argument(help="Generator (or give --spec).")] = None,
    spec: Annotated[
        str | None,
        typer.Option("--spec", help='A full spec such as "regime:low_mbps=5,high_mbps=20,n=50,seed=2".'),
    ] = None,
    n: Annotated[int | None, typer.Option("--n", help=f"Number of traces (default {gen.DEFAULT_N_TRACES}).")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed (default 0).")] = None,
    duration_s: Annotated[float | None, typer.Option("--duration-s", help="Trace length in seconds.")] = None,
    step_s: Annotated[float | None, typer.Option("--step-s", help="Time between samples in seconds.")] = None,
    low_mbps: Annotated[float | None, typer.Option("--low-mbps", help="Lowest mean throughput.")] = None,
    high_mbps: Annotated[float | None, typer.Option("--high-mbps", help="Highest mean throughput.")] = None,
    out_format: Annotated[OutputFormat, typer.Option("--format", help="Output format.")] = OutputFormat.cooked,
) -> None:
    """Generate seeded synthetic traces (markov or regime) into the folder --out."""
    settings = {
        "n": n,
        "seed": seed,
        "duration_s": duration_s,
        "step_s": step_s,
        "low_mbps": low_mbps,
        "high_mbps": high_mbps,
    }
    given = {key: value for key, value in settings.items() if value is not None}
    with _reported_errors():
        if spec is not None:
            if kind is not None or given:
                clashes = (["KIND"] if kind is not None else []) + [f"--{key.replace('_', '-')}" for key in given]
                raise TraceError(
                    f"--spec sets the generator and all its settings; do not also give {', '.join(clashes)}"
                )
            parsed = gen.parse_spec(spec)
        elif kind is None:
            raise TraceError("give a generator (markov or regime) or --spec")
        else:
            parsed = gen.build_spec(kind.value, given)
        made = parsed.generate()
        written = trace_io.save_many(made, out, format=out_format.value)
    typer.echo(f"wrote {len(written)} {parsed.kind} traces ({out_format.value}) to {out}")


@app.command()
def convert(
    source: Annotated[Path, typer.Argument(help="A trace file or a folder of trace files.")],
    to: Annotated[OutputFormat, typer.Option("--to", help="Output format.")],
    out: Annotated[Path, typer.Option("--out", help="Folder to write the traces to (created if needed).")],
    input_format: FromOption = InputFormat.auto,
    mahimahi_window_ms: WindowOption = trace_io.DEFAULT_MAHIMAHI_WINDOW_MS,
    skip_bad: SkipBadOption = False,
) -> None:
    """Convert traces (e.g. a Mahimahi folder) to cooked or JSON files in the folder --out."""
    with _reported_errors():
        loaded = _load(source, input_format, mahimahi_window_ms, skip_bad)
        written = trace_io.save_many(loaded, out, format=to.value)
    typer.echo(f"wrote {len(written)} traces ({to.value}) to {out}")
