"""`abr train`: PPO training of the actor-critic, with metrics, periodic evaluation and checkpoints.

A thin shell over `policy.learning.run.TrainingRun` (plain runs) and `plasticity.continual` (schedules);
the heavy imports happen when the command runs, so that ``--help`` prints at once.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from abr_cli.common import console, err_console, output_dir, progress, user_errors
from abr_common.errors import problems
from abr_common.paths import DEFAULT_TRACE_ROOT
from plasticity.names import METHODS
from policy.learning.config import NETWORK_PRESETS
from simulator.observation import HistoryPadding, ObservationSpec

if TYPE_CHECKING:
    from policy.learning.ppo import TrainState


def train_command(
    traces: Annotated[
        list[str] | None,
        typer.Option("--traces", "-t", help="Training traces: paths or generator specs, comma-separated or repeated."),
    ] = None,
    steps: Annotated[
        int, typer.Option(min=1, help="Environment steps (chunks over all sessions) to train for.")
    ] = 2_000_000,
    out: Annotated[Path, typer.Option(help="Run folder: metrics.csv, last/ and best/ checkpoints.")] = Path(
        "runs/train"
    ),
    video: Annotated[str, typer.Option(help="'builtin' or a folder of video_size_N files.")] = "builtin",
    eval_traces: Annotated[
        list[str] | None, typer.Option("--eval-traces", help="Test traces for periodic evaluation (repeatable).")
    ] = None,
    eval_every: Annotated[int, typer.Option(min=1, help="Evaluate and checkpoint every this many updates.")] = 20,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda: where learning runs.")] = "auto",
    network: Annotated[str, typer.Option(help=f"Network preset: {' or '.join(NETWORK_PRESETS)}.")] = "small",
    num_envs: Annotated[int, typer.Option(min=1, help="Sessions simulated in parallel.")] = 128,
    seed: Annotated[int, typer.Option(help="Seed (runs on the CPU are reproducible).")] = 1,
    config: Annotated[Path | None, typer.Option(help="JSON file with PPOConfig fields (overrides the above).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in OUT from its last checkpoint.")] = False,
    history_padding: Annotated[
        HistoryPadding | None,
        typer.Option(
            help="Observation columns before a session's first chunk: zeros (Pensieve's, the default) or oldest "
            "(copies of the first chunk seen); recorded in the checkpoint."
        ),
    ] = None,
    init: Annotated[
        str | None,
        typer.Option(
            help="Fine-tune: start from a trained model's weights (a shipped model's name such as 'default', or a "
            "checkpoint folder) with a fresh optimizer and schedule; the network shape is the checkpoint's."
        ),
    ] = None,
    plasticity: Annotated[
        str, typer.Option(help=f"Plasticity method: {', '.join(METHODS)} (plasticity/* is logged with any).")
    ] = "none",
    schedule: Annotated[
        str | None,
        typer.Option(help="Train continually through a schedule (shipped name or JSON file) instead of --traces."),
    ] = None,
    scale: Annotated[float, typer.Option(min=1e-6, help="With --schedule: multiplies every phase's steps.")] = 1.0,
    trace_root: Annotated[Path, typer.Option(help="With --schedule: what {traces} means.")] = DEFAULT_TRACE_ROOT,
    ray: Annotated[
        str | None, typer.Option(help="Collect rollouts on Ray actors: 'local' or a cluster address.")
    ] = None,
    ray_workers: Annotated[
        int, typer.Option(min=1, help="With --ray: rollout actors (sessions split among them).")
    ] = 2,
    critic_future: Annotated[
        bool,
        typer.Option(
            "--critic-future",
            help="The critic (never the policy) also sees the network's next 32 s: an input-dependent baseline.",
        ),
    ] = False,
) -> None:
    """Train the actor-critic with PPO in the simulator (delay noise and random start points on)."""
    with user_errors():
        from pydantic import ValidationError

        from plasticity.config import network_for
        from plasticity.methods import Plasticity, parse_plasticity
        from policy.learning.ppo import resolve_device
        from policy.learning.run import BEST_DIR, LAST_DIR, TrainingRun, load_init, merged_config
        from simulator.video import load_video
        from traces.sources import DEFAULT_TRACE_SPEC, label, resolve, split_sources

        if plasticity not in METHODS:
            raise ValueError(f"--plasticity must be one of {', '.join(METHODS)}, got {plasticity!r}")
        if network not in NETWORK_PRESETS:
            raise ValueError(f"--network must be one of {', '.join(NETWORK_PRESETS)}, got {network!r}")
        output_dir(out, "--out")
        the_video = load_video(video)
        start = None
        if init is not None:
            try:
                start = load_init(init, the_video)
            except ValueError as err:
                raise ValueError(f"--init {err}") from None
        fields: dict[str, Any] = {"total_steps": steps, "num_envs": num_envs, "seed": seed}
        if start is None:
            fields["network"] = NETWORK_PRESETS[network]
        if config is not None:
            try:
                fields.update(json.loads(config.read_text()))
            except (OSError, json.JSONDecodeError) as err:
                raise ValueError(f"--config {config}: {err}") from None
        try:
            ppo = merged_config(fields, init=start, critic_future=critic_future)
        except ValidationError as err:  # a field's value: from the options or --config
            raise ValueError(f"training options: {problems(err)}") from None
        except ValueError as err:  # the fine-tune's network shape
            raise ValueError(f"--init {init}: {err}") from None
        plasticity_config = parse_plasticity({"method": plasticity, "seed": seed})
        if start is None:  # a run that builds its network builds the one its method needs (ln-wd: LayerNorm)
            ppo = ppo.model_copy(update={"network": network_for(plasticity_config, ppo.network)})
        dev = resolve_device(device)
        if ray is not None:
            from policy.cluster import connect

            connect(ray)
        workers = ray_workers if ray is not None else 0
        if schedule is not None:
            if resume or init is not None:
                raise ValueError("--resume and --init are not supported with --schedule")
            _train_schedule(schedule, plasticity_config, ppo, video, out, scale, trace_root, dev, workers)
            return
        sources = [source for value in (traces or [DEFAULT_TRACE_SPEC]) for source in split_sources(value)]
        if not sources:
            raise ValueError("no trace source given")
        train_set = [t for s in sources for t in resolve(s)]
        eval_sets = {label(s): resolve(s) for s in (eval_traces or [])}
        options: dict[str, Any] = {"device": dev, "plasticity": Plasticity(plasticity_config), "ray_workers": workers}
        if history_padding is not None:
            if resume:
                raise ValueError("--history-padding: a resumed run keeps the observations of its checkpoint")
            options["spec"] = ObservationSpec(history_padding=history_padding)
        try:
            run = TrainingRun.open(out, ppo, the_video, resume=resume, init=start, **options)
        except FileExistsError:
            raise ValueError(
                f"--out {out} already holds a run; use --resume to continue it or another folder"
            ) from None
        except ValueError as err:
            raise ValueError(f"--resume: {err}" if resume else str(err)) from None
        console.print(
            f"training on {len(train_set)} traces ({', '.join(label(s) for s in sources)}), "
            f"{ppo.num_updates} updates of {ppo.batch_size} steps, device {dev}"
        )

        def evaluated(state: TrainState, metrics: dict[str, float]) -> None:
            shown = " ".join(f"{k.split('/', 1)[1]}={v:.3f}" for k, v in metrics.items() if k.startswith("eval/"))
            err_console.print(
                f"update {state.update}/{ppo.num_updates} step {state.global_step:,} "
                f"qoe/chunk {metrics['charts/qoe']:.3f} {metrics['charts/steps_per_s']:,.0f} steps/s {shown}"
            )

        with progress() as bar:
            task = bar.add_task("training", total=ppo.num_updates, completed=run.state.update)
            data = {"train_traces": sources, "eval_traces": list(eval_sets), "video": video, "init": init}
            run.fit(train_set, out, eval_sets=eval_sets, eval_every=eval_every, data=data, on_evaluated=evaluated,
                    on_update=lambda state, _: bar.update(task, completed=state.update))  # fmt: skip
        console.print(
            f"done in {time.perf_counter() - run.started_s:.0f} s: {out / BEST_DIR} (best), {out / LAST_DIR} (last)"
        )


def _train_schedule(
    schedule_name: str, plasticity: Any, ppo: Any, video_spec: str, out: Path, scale: float, trace_root: Path,
    device: Any, ray_workers: int,
) -> None:  # fmt: skip
    """Continual training through a schedule: ``out/run.json`` (evaluations, diagnostics) and ``out/last``."""
    from plasticity.continual import save_schedule_run, train_schedule
    from plasticity.schedules import load_schedule
    from policy.learning.checkpoint import META_FILE
    from policy.learning.run import LAST_DIR
    from simulator.video import load_video

    the_schedule = load_schedule(schedule_name)
    if (out / LAST_DIR / META_FILE).exists():
        raise ValueError(f"--out {out} already holds a run; choose another folder")
    console.print(f"continual training through {the_schedule.name} ({len(the_schedule.phases)} phases) "
                  f"with plasticity {plasticity.method}, scale {scale}, device {device}")  # fmt: skip
    with progress() as bar:
        task = bar.add_task(the_schedule.name, total=None)

        def on_progress(update: int, total: int) -> None:
            bar.update(task, completed=update, total=total)

        record, run = train_schedule(the_schedule, plasticity, ppo, load_video(video_spec), scale=scale,
                                     trace_root=trace_root, device=device, on_progress=on_progress,
                                     ray_workers=ray_workers)  # fmt: skip
    save_schedule_run(out, record, run, {"schedule": the_schedule.name, "plasticity": plasticity.method,
                                         "video": video_spec})  # fmt: skip
    for e in record["evals"]:
        if e["steps_into_phase"] == max(x["steps_into_phase"] for x in record["evals"] if x["phase"] == e["phase"]):
            shown = " ".join(f"{f}={s['qoe']:.3f}" for f, s in e["scores"].items())
            console.print(f"end of phase {e['phase']} ({e['family']}), step {e['step']:,}: {shown}")
    console.print(f"done: {out / 'run.json'}, {out / LAST_DIR}")
