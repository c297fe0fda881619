"""`abr plasticity-bench`: every plasticity method x seeds through a non-stationary schedule."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from abr_cli.common import console, output_dir, read_json_object, runs_progress, user_errors
from abr_common.paths import DEFAULT_TRACE_ROOT
from plasticity.names import METHODS
from plasticity.schedules import available_schedules
from policy.learning.config import NETWORK_PRESETS

#: PPO settings of the benchmark unless --ppo-config overrides them: a smaller batch per update than
#: offline training (more updates per environment step, as an online learner makes).
BENCH_PPO: dict[str, Any] = {"num_envs": 64, "num_steps": 48, "ent_coef_start": 0.01}


def plasticity_bench(
    schedule: Annotated[
        str, typer.Option(help=f"Shipped schedule ({', '.join(available_schedules())}) or a schedule JSON file.")
    ] = "synthetic-shift",
    methods: Annotated[str, typer.Option(help=f"Comma-separated methods from: {', '.join(METHODS)}.")] = (
        "none,reset,redo,shrink-perturb,cbp,resin"
    ),
    seeds: Annotated[int, typer.Option(min=1, help="Seeds per method.")] = 5,
    scale: Annotated[float, typer.Option(min=1e-6, help="Multiplies every phase's environment steps.")] = 1.0,
    workers: Annotated[int, typer.Option(min=1, help="Runs in parallel (one process, one torch thread each).")] = 2,
    phase_jitter: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=0.99,
            help="Phase lengths x U(1-j, 1+j) per seed (same for all methods): shifts at times no fixed period "
            "matches; 0 runs the lengths as written [default: the schedule's phase_jitter].",
        ),
    ] = None,
    ray: Annotated[
        str | None, typer.Option(help="Run every (method, seed) as a Ray task: 'local' or a cluster address.")
    ] = None,
    out: Annotated[Path, typer.Option(help="Output folder (runs/, results.json, report.md, plots).")] = Path(
        "runs/plasticity-bench"
    ),
    video: Annotated[str, typer.Option(help="'builtin' or a folder of video_size_N files.")] = "builtin",
    trace_root: Annotated[Path, typer.Option(help="What {traces} means in schedules.")] = DEFAULT_TRACE_ROOT,
    network: Annotated[str, typer.Option(help=f"Network preset: {' or '.join(NETWORK_PRESETS)}.")] = "small",
    ppo_config: Annotated[Path | None, typer.Option(help="JSON with PPOConfig fields for every run.")] = None,
    plasticity_config: Annotated[
        Path | None,
        typer.Option(
            help='JSON: plasticity fields for every method that has them, and {"overrides": {method: {...}}}.'
        ),
    ] = None,
) -> None:
    """Train one network per (method, seed) through SCHEDULE; report QoE per phase, recovery, silent ratios."""
    from plasticity.bench import BenchConfig, aggregate, run_bench, write_report
    from plasticity.schedules import load_schedule
    from policy.learning.config import PPOConfig
    from simulator.video import load_video

    with user_errors():
        the_schedule = load_schedule(schedule)
        chosen = [m.strip() for m in methods.split(",") if m.strip()]
        unknown = [m for m in chosen if m not in METHODS]
        if unknown or not chosen:
            raise ValueError(
                f"--methods: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(METHODS)}"
            )
        if network not in NETWORK_PRESETS:
            raise ValueError(f"--network must be one of {', '.join(NETWORK_PRESETS)}, got {network!r}")
        output_dir(out, "--out")
        ppo_fields = {**BENCH_PPO, "network": NETWORK_PRESETS[network], **read_json_object(ppo_config, "--ppo-config")}
        plast = read_json_object(plasticity_config, "--plasticity-config")
        overrides = plast.pop("overrides", {})
        config = BenchConfig(
            methods=chosen, seeds=seeds, scale=scale, workers=workers, trace_root=str(trace_root),
            ppo=PPOConfig(**ppo_fields), plasticity=plast, method_overrides=overrides,
            phase_jitter=phase_jitter,
        )  # fmt: skip
        for method in chosen:  # validate every method's settings before any run starts
            config.method_config(method, 1)
        the_video = load_video(video)
        total = len(chosen) * seeds
        console.print(
            f"{the_schedule.name}: {len(the_schedule.phases)} phases, {len(chosen)} methods x {seeds} seeds "
            f"= {total} runs at scale {scale}, {min(workers, total)} in parallel"
        )
        with runs_progress(total) as done:
            records = run_bench(the_schedule, config, the_video, out, on_done=done, ray=ray)
        command = "abr " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        report = write_report(aggregate(records), config, the_schedule, out, command)
        console.print(report.read_text())
