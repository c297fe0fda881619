"""``abr retrain once | watch``: telemetry -> fine-tuned, gated, published model versions."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from abr_cli.common import console, err_console, user_errors

if TYPE_CHECKING:
    from abr_server.retrain.loop import RetrainConfig

app = typer.Typer(name="retrain", help="Online retraining from the server's telemetry.", no_args_is_help=True,
                  add_completion=False)  # fmt: skip

Telemetry = Annotated[Path, typer.Option(help="The server's telemetry database (ABR_TELEMETRY_DB).")]
Models = Annotated[Path, typer.Option(help="The server's model registry (abr serve --models).")]
Work = Annotated[Path, typer.Option(help="Trainer state between checkpoints (resumed after a crash).")]
Video = Annotated[str, typer.Option(help="'builtin', a folder of video_size_N files, or an asset folder.")]
Window = Annotated[float, typer.Option(min=1, help="Use telemetry received in the last this many seconds.")]
Updates = Annotated[int, typer.Option(min=1, help="PPO updates per round.")]
Margin = Annotated[float, typer.Option(help="QoE_lin gain on held-out sessions needed to publish.")]
Method = Annotated[str, typer.Option(help="Plasticity method during fine-tuning (resin, redo, none, ...).")]
Replay = Annotated[
    str,
    typer.Option(help="Older traces replayed against forgetting: a folder, a generator spec, 'telemetry' "
                 "(sessions received before the window) or 'none'."),
]  # fmt: skip
Reference = Annotated[
    str,
    typer.Option(help="Reference traces the candidate must not regress on: folder, spec, 'telemetry' or 'none'."),
]
#: What --replay / --reference take to turn them off.
OFF = "none"
Ray = Annotated[
    str | None,
    typer.Option(help="Fine-tune with rollouts from Ray actors and gate through Ray tasks: 'local' or a cluster "
                 "address (needs resin-abr[ray]).", rich_help_panel="Scale-out"),
]  # fmt: skip
Continual = Annotated[
    bool,
    typer.Option(help="One long-lived trainer across rounds: its model, optimizer and plasticity state are kept in "
                 "--work (a refused candidate's training goes on) instead of a fresh fine-tune of the active "
                 "version each round."),
]  # fmt: skip
Device = Annotated[str, typer.Option(help="Where fine-tuning learns: auto, cpu or cuda (the gate scores on the CPU).")]
RayWorkers = Annotated[
    int,
    typer.Option(min=1, help="With --ray: rollout actors (sessions split among them).", rich_help_panel="Scale-out"),
]
Anchor = Annotated[
    list[str] | None,
    typer.Option(help="Repeatable: a trace folder or generator spec of networks the first registry version serves; "
                 "no version is published that scores below it there by more than 0.05.", show_default=False),
]  # fmt: skip
Rehearse = Annotated[
    list[str] | None,
    typer.Option(help="Repeatable: a trace folder or generator spec rehearsed as a quarter of every round's pool "
                 "(the networks the starting model was trained for).", show_default=False),
]  # fmt: skip
Revert = Annotated[
    int,
    typer.Option(min=0, help="Earlier versions the gate also scores (the first and the newest others); the best is "
                 "published again when it beats the active version and the candidate by --margin (0: never)."),
]  # fmt: skip


def _connect(ray: str | None, ray_workers: int) -> int:
    """Join Ray when asked; the number of rollout actors (0: train locally)."""
    if ray is None:
        return 0
    from policy.cluster import connect

    connect(ray)
    return ray_workers


def _config(
    window_s: float, updates: int, margin: float, method: str, replay: str, reference: str, continual: bool,
    revert_versions: int, anchor: list[str] | None, rehearse: list[str] | None,
) -> RetrainConfig:  # fmt: skip
    from abr_server.retrain.loop import RetrainConfig
    from plasticity.config import parse_plasticity

    return RetrainConfig(window_s=window_s, updates=updates, margin=margin,
                         replay=None if replay.lower() == OFF else replay,
                         reference=None if reference.lower() == OFF else reference,
                         plasticity=parse_plasticity({"method": method}), continual=continual,
                         revert_versions=revert_versions, anchor=anchor or [],
                         rehearsal=rehearse or [])  # fmt: skip


@app.command("once")
def once(
    telemetry: Telemetry,
    models: Models,
    work: Work = Path("runs/retrain-work"),
    video: Video = "builtin",
    window_s: Window = 24 * 3600.0,
    updates: Updates = 50,
    margin: Margin = 0.02,
    method: Method = "resin",
    replay: Replay = "telemetry",
    reference: Reference = "telemetry",
    continual: Continual = False,
    revert_versions: Revert = 0,
    anchor: Anchor = None,
    rehearse: Rehearse = None,
    device: Device = "cpu",
    ray: Ray = None,
    ray_workers: RayWorkers = 2,
) -> None:
    """Run one round: rebuild traces, fine-tune the active version, gate it, publish it if it is better."""
    from abr_server.retrain.loop import retrain_once
    from policy.learning.ppo import resolve_device
    from simulator.video import load_video

    with user_errors():
        config = _config(
            window_s, updates, margin, method, replay, reference, continual, revert_versions, anchor, rehearse
        )
        learn_on = resolve_device(device)
        the_video = load_video(video)
        workers = _connect(ray, ray_workers)
        result = retrain_once(telemetry, models, work, the_video, config, ray_workers=workers, device=learn_on)
    console.print_json(result.model_dump_json())


@app.command("watch")
def watch(
    telemetry: Telemetry,
    models: Models,
    interval_s: Annotated[float, typer.Option(min=1, help="Seconds between rounds.")] = 3600.0,
    rounds: Annotated[int, typer.Option(min=0, help="Stop after this many rounds (0: never).")] = 0,
    work: Work = Path("runs/retrain-work"),
    video: Video = "builtin",
    window_s: Window = 24 * 3600.0,
    updates: Updates = 50,
    margin: Margin = 0.02,
    method: Method = "resin",
    replay: Replay = "telemetry",
    reference: Reference = "telemetry",
    log: Annotated[Path | None, typer.Option(help="Append every round's result here (JSON lines).")] = None,
    continual: Continual = False,
    revert_versions: Revert = 0,
    anchor: Anchor = None,
    rehearse: Rehearse = None,
    device: Device = "cpu",
    ray: Ray = None,
    ray_workers: RayWorkers = 2,
) -> None:
    """Run rounds forever (or ``--rounds``), one every ``--interval-s``; a failed round is logged, not fatal."""
    from abr_server.retrain.loop import retrain_once
    from policy.learning.ppo import resolve_device
    from simulator.video import load_video

    with user_errors():
        config = _config(
            window_s, updates, margin, method, replay, reference, continual, revert_versions, anchor, rehearse
        )
        learn_on = resolve_device(device)
        the_video = load_video(video)
        workers = _connect(ray, ray_workers)
    done = 0
    while rounds == 0 or done < rounds:
        started = time.monotonic()
        try:
            line = retrain_once(
                telemetry, models, work, the_video, config, ray_workers=workers, device=learn_on
            ).model_dump(mode="json")
        except Exception as err:  # the loop must survive a bad round (it is logged)
            line = {"status": "failed", "reason": f"{type(err).__name__}: {err}"}
        line["at"] = time.time()
        err_console.print(json.dumps(line), highlight=False, soft_wrap=True)
        if log is not None:
            with log.open("a") as out:
                out.write(json.dumps(line) + "\n")
        done += 1
        if rounds and done >= rounds:
            break
        time.sleep(max(0.0, interval_s - (time.monotonic() - started)))
