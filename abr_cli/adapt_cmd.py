"""`abr adapt`: the served policy through a timeline of networks, frozen or retrained online, against robustMPC."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from abr_cli.common import console, output_dir, read_json_object, runs_progress, user_errors
from abr_common.paths import DEFAULT_TRACE_ROOT
from abr_server.lab.timeline import DEFAULT_ARMS, DEFAULT_PHASES, PHASE_FORMAT, parse_arms, parse_phase, parse_seeds

#: Sessions per epoch and PPO updates per round unless given (the full timeline, and ``--tiny``).
SESSIONS, TINY_SESSIONS = 16, 4
UPDATES, TINY_UPDATES = 30, 2


def adapt(
    phase: Annotated[
        list[str] | None,
        typer.Option(
            help=f"A network of the timeline, repeatable, in order: {PHASE_FORMAT}. SOURCE is a folder of "
            "--trace-root (optional @fold=/@except=/@scale= suffix) or a generator spec. "
            f"(default: {' '.join(DEFAULT_PHASES)})",
            show_default=False,
        ),
    ] = None,
    arms: Annotated[
        str,
        typer.Option(
            help="Comma list: frozen, robustmpc (the yardstick: the classic rule on the same sessions), "
            "METHOD[+replay][+reference][+continual][+revert][+anchor][+rehearse] (the retraining loop with a "
            "plasticity method)."
        ),
    ] = ",".join(DEFAULT_ARMS),
    seeds: Annotated[str, typer.Option(help="Comma list of seeds (sessions drawn and PPO seeds per seed).")] = (
        "1,2,3,4,5"
    ),
    sessions: Annotated[
        int | None,
        typer.Option(min=2, help=f"Fresh sessions per epoch (default {SESSIONS}; {TINY_SESSIONS} with --tiny)."),
    ] = None,
    updates: Annotated[
        int | None, typer.Option(min=1, help=f"PPO updates per round (default {UPDATES}; {TINY_UPDATES} with --tiny).")
    ] = None,
    margin: Annotated[float, typer.Option(help="QoE_lin gain on held-out sessions needed to publish.")] = 0.02,
    epochs_scale: Annotated[
        float, typer.Option(min=1e-6, help="Multiplies every phase's epochs (at least 1 each).")
    ] = 1.0,
    tiny: Annotated[
        bool, typer.Option(help="Rounds of 2 updates of 4 x 16 steps and 4 sessions per epoch: a check in seconds.")
    ] = False,
    workers: Annotated[int, typer.Option(min=1, help="(arm, seed) runs in parallel, each with its own server.")] = 2,
    out: Annotated[Path, typer.Option(help="Output folder (runs/, results.json, report.md, plots).")] = Path(
        "runs/adapt"
    ),
    trace_root: Annotated[Path, typer.Option(help="Where phase folders are found.")] = DEFAULT_TRACE_ROOT,
    video: Annotated[str, typer.Option(help="'builtin' or a folder of video_size_N files.")] = "builtin",
    model: Annotated[str, typer.Option(help="Starting model: a shipped model's name, or a checkpoint.")] = "default",
    ppo_config: Annotated[Path | None, typer.Option(help="JSON with PPOConfig fields for every round.")] = None,
    recover_tolerance: Annotated[
        float,
        typer.Option(
            min=0,
            help="After a return: recovered within this QoE_lin of the previous visit's level (minus robustMPC's).",
        ),
    ] = 0.1,
    device: Annotated[str, typer.Option(help="Where every round's fine-tuning learns: cpu, cuda or auto.")] = "cpu",
    ray: Annotated[
        str | None,
        typer.Option(
            help="Rounds collect their rollouts from Ray actors: 'local' or a cluster address (needs resin-abr[ray]).",
            rich_help_panel="Scale-out",
        ),
    ] = None,
    ray_workers: Annotated[
        int, typer.Option(min=1, help="With --ray: rollout actors per round.", rich_help_panel="Scale-out")
    ] = 2,
    anchor: Annotated[
        list[str] | None,
        typer.Option(
            help="Repeatable: a folder of --trace-root or a generator spec that +anchor arms hold every version to "
            "the starting model on (default: the fcc, norway and Puffer train folders' first fifths).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Serve fresh sessions epoch by epoch as the network changes, retraining after each; compare with robustMPC."""
    from abr_server.lab.adapt import (
        AdaptConfig,
        check_sources,
        default_retrain,
        model_dir,
        run_adapt,
        tiny_retrain,
        write_outputs,
    )
    from policy.learning.checkpoint import load_checkpoint
    from policy.learning.config import PPOConfig
    from policy.learning.ppo import resolve_device
    from simulator.video import load_video

    with user_errors():
        phases = [parse_phase(p) for p in (phase or DEFAULT_PHASES)]
        chosen = parse_arms(arms)
        seed_list = parse_seeds(seeds)
        base = tiny_retrain() if tiny else default_retrain()
        ppo = PPOConfig(**{**base.ppo.model_dump(), **read_json_object(ppo_config, "--ppo-config")})
        retrain = base.model_copy(update={"ppo": ppo, "margin": margin,
                                          "updates": updates or (TINY_UPDATES if tiny else UPDATES)})  # fmt: skip
        retrain = retrain.model_copy(update={"checkpoint_every": min(retrain.checkpoint_every, retrain.updates)})
        config = AdaptConfig(
            phases=phases, arms=chosen, seeds=seed_list, sessions_per_epoch=sessions or (TINY_SESSIONS if tiny else
            SESSIONS), epochs_scale=epochs_scale, workers=workers, trace_root=str(trace_root), video=video,
            model=model, retrain=retrain, recover_tolerance=recover_tolerance, device=device, ray=ray,
            ray_workers=ray_workers, **({"anchor": anchor} if anchor else {}),
        )  # fmt: skip
        resolve_device(device)
        check_sources(config)
        if ray is not None and ray != "local":  # an unreachable cluster is named before any run starts
            from policy.cluster import connect

            connect(ray)
        the_video = load_video(video)
        try:
            load_checkpoint(model_dir(model), the_video)
        except ValueError as err:
            raise ValueError(f"--model {err}") from None
        output_dir(out, "--out")
        timeline = config.epochs()
        total = len(chosen) * len(seed_list)
        console.print(
            f"{len(config.phases)} phases, {len(timeline)} epochs of {config.sessions_per_epoch} sessions; "
            f"{len(chosen)} arms x {len(seed_list)} seeds = {total} runs, {min(workers, total)} in parallel"
        )
        with runs_progress(total) as done:
            records = run_adapt(config, out, on_done=done)
        command = "abr " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        _summary, report = write_outputs(records, config, out, command)
    console.print(report.read_text(), markup=False, highlight=False, soft_wrap=True)
