"""The `abr` command: a thin shell over the libraries."""

from __future__ import annotations

import typer

from abr_cli import adapt_cmd, bench_cmd, eval_cmd, media_cmd, retrain_cmd, traces_cmd
from abr_cli.emulate_cmd import emulate
from abr_cli.fleet_cmd import fleet
from abr_cli.plasticity_cmd import plasticity_bench
from abr_cli.serve_cmd import serve
from abr_cli.simulate_cmd import simulate
from abr_cli.train_cmd import train_command

app = typer.Typer(
    name="abr",
    help="resin-abr: trace-driven ABR simulation, learned and classic bitrate policies, plasticity, serving.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("simulate")(simulate)
app.command("eval")(eval_cmd.evaluate)
app.command("train")(train_command)
app.command("plasticity-bench")(plasticity_bench)
app.command("serve")(serve)
app.command("emulate")(emulate)
app.command("fleet")(fleet)
app.add_typer(traces_cmd.app, name="traces")
app.add_typer(bench_cmd.app, name="bench")
app.add_typer(media_cmd.app, name="media")
app.add_typer(retrain_cmd.app, name="retrain")
app.command("adapt")(adapt_cmd.adapt)


if __name__ == "__main__":
    app()
