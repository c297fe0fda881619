"""`abr train`: PPO training of the actor-critic, with metrics, periodic evaluation and checkpoints."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import typer

from abr_cli.common import console, err_console, output_dir, progress, user_errors
from plasticity.continual import train_schedule
from plasticity.methods import METHODS, Plasticity, PlasticityConfig
from plasticity.schedules import Schedule, load_schedule
from policy.evaluation.loop import run_policy
from policy.learned import DEFAULT_MODEL_DIR, ModelPolicy
from policy.learning.checkpoint import (
    META_FILE,
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    load_optimizer_state,
    save_checkpoint,
)
from policy.learning.network import NetworkConfig
from policy.learning.ppo import PPOConfig, TrainState, new_state, resolve_device, train
from simulator.observation import ObservationSpec
from simulator.video import Video, load_video
from traces.io import write_atomic
from traces.sources import DEFAULT_TRACE_SPEC, label, resolve, split_sources
from traces.trace import Trace

#: Network presets: Pensieve's size, and a smaller one that trains several times faster on a CPU.
NETWORKS = {"pensieve": NetworkConfig(), "small": NetworkConfig(hidden=64, filters=32)}


def _split(values: list[str] | None, default: str) -> list[str]:
    out = [source for value in (values or [default]) for source in split_sources(value)]
    if not out:
        raise ValueError("no trace source given")
    return out


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
    network: Annotated[str, typer.Option(help="Network preset: pensieve or small.")] = "small",
    num_envs: Annotated[int, typer.Option(min=1, help="Sessions simulated in parallel.")] = 128,
    seed: Annotated[int, typer.Option(help="Seed (runs on the CPU are reproducible).")] = 1,
    config: Annotated[Path | None, typer.Option(help="JSON file with PPOConfig fields (overrides the above).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in OUT from its last checkpoint.")] = False,
    init: Annotated[
        str | None,
        typer.Option(
            help="Fine-tune: start from a trained model's weights ('default' or a checkpoint folder) with a fresh "
            "optimizer and schedule; the network shape is the checkpoint's."
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
    trace_root: Annotated[Path, typer.Option(help="With --schedule: what {traces} means.")] = Path("../shared/traces"),
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
        if plasticity not in METHODS:
            raise ValueError(f"--plasticity must be one of {', '.join(METHODS)}, got {plasticity!r}")
        if network not in NETWORKS:
            raise ValueError(f"--network must be one of {', '.join(NETWORKS)}, got {network!r}")
        output_dir(out, "--out")
        the_video = load_video(video)
        start = _initial_model(init, the_video) if init is not None else None
        fields: dict[str, Any] = {
            "total_steps": steps,
            "num_envs": num_envs,
            "seed": seed,
            "network": start.network if start is not None else NETWORKS[network],
        }
        if config is not None:
            try:
                fields.update(json.loads(config.read_text()))
            except (OSError, json.JSONDecodeError) as err:
                raise ValueError(f"--config {config}: {err}") from None
        if critic_future:
            net = NetworkConfig.model_validate(fields["network"])
            fields["network"] = NetworkConfig(**{**net.model_dump(), "critic_future": True})
        ppo = PPOConfig(**fields)
        if start is not None and ppo.network.model_copy(update={"critic_future": start.network.critic_future}) != (
            start.network
        ):
            raise ValueError(f"--init {init}: the checkpoint's network {start.network} differs from --config's")
        plasticity_config = PlasticityConfig(method=plasticity, seed=seed)
        if schedule is not None:
            if resume or init is not None:
                raise ValueError("--resume and --init are not supported with --schedule")
            the_schedule = load_schedule(schedule)
            if ray is not None:
                from policy.cluster import connect

                connect(ray)
            _train_schedule(the_schedule, plasticity_config, ppo, the_video, video, out, scale,
                            trace_root, resolve_device(device), ray_workers if ray is not None else 0)  # fmt: skip
            return
        sources = _split(traces, DEFAULT_TRACE_SPEC)
        train_set: list[Trace] = [t for s in sources for t in resolve(s)]
        eval_sets = [(label(s), resolve(s)) for s in (eval_traces or [])]
        dev = resolve_device(device)
        spec = ObservationSpec()
        state = new_state(ppo, the_video, spec, dev)
        if start is not None:
            if start.spec != spec:
                raise ValueError(f"--init {init}: the checkpoint observes {start.spec}, training uses {spec}")
            weights = start.model.state_dict()
            if ppo.network.critic_future != start.network.critic_future:
                # The policy and the critic's trunk carry over; the value head (its input changes) starts fresh.
                weights = {k: v for k, v in weights.items() if not k.startswith(("critic_head.", "critic_future."))}
            state.model.load_state_dict(weights, strict=ppo.network.critic_future == start.network.critic_future)
        last_dir, best_dir = out / "last", out / "best"
        best_score = -np.inf
        if resume:
            if not (last_dir / META_FILE).is_file():
                raise ValueError(f"--resume: {last_dir} has no checkpoint to resume from")
            ckpt = load_checkpoint(last_dir, the_video, dev)
            if PPOConfig.model_validate(ckpt.meta["train_config"]) != ppo:  # fields added since default alike
                raise ValueError(f"--resume: the options differ from the run in {out} (see {last_dir / META_FILE})")
            state.model.load_state_dict(ckpt.model.state_dict())
            state.model.train()
            load_optimizer_state(last_dir, state.model, state.optimizer)
            state.update = int(ckpt.meta["progress"]["update"])
            state.global_step = int(ckpt.meta["progress"]["global_step"])
            best_score = float(ckpt.meta["progress"].get("best_score") or -np.inf)
        elif (last_dir / META_FILE).exists():
            raise ValueError(f"--out {out} already holds a run; use --resume to continue it or another folder")

        rows: list[dict[str, float]] = []
        metrics_path = out / "metrics.csv"
        if resume and metrics_path.is_file():
            with metrics_path.open() as f:
                rows = [{k: float(v) for k, v in r.items() if v} for r in csv.DictReader(f)]
        started = time.perf_counter()
        console.print(
            f"training on {len(train_set)} traces ({', '.join(label(s) for s in sources)}), "
            f"{ppo.num_updates} updates of {ppo.batch_size} steps, device {dev}"
        )

        def evaluate(st: TrainState) -> dict[str, float]:
            scores = {}
            for name, trace_set in eval_sets:
                logs = run_policy(ModelPolicy(st.model, spec), trace_set, the_video)
                scores[f"eval/{name}"] = float(logs.scores().mean())
            return scores

        def checkpoint(st: TrainState, folder: Path, scores: dict[str, float], best: float) -> None:
            save_checkpoint(
                folder, st.model, the_video, spec, qoe_kind=ppo.qoe, train_config=json.loads(ppo.model_dump_json()),
                progress={"update": st.update, "global_step": st.global_step,
                          "best_score": best if np.isfinite(best) else None,
                          "wall_s": time.perf_counter() - started},
                scores=scores, optimizer=st.optimizer,
                data={"train_traces": sources, "eval_traces": [name for name, _ in eval_sets], "video": video,
                      "init": init},
            )  # fmt: skip

        def on_update(st: TrainState, metrics: dict[str, float]) -> None:
            nonlocal best_score
            if st.update % eval_every == 0 or st.update == ppo.num_updates:
                scores = evaluate(st)
                metrics.update(scores)
                if scores:
                    mean = float(np.mean(list(scores.values())))
                    if mean > best_score:
                        best_score = mean
                        checkpoint(st, best_dir, scores, best_score)
                checkpoint(st, last_dir, scores, best_score)
                shown = " ".join(f"{k.split('/', 1)[1]}={v:.3f}" for k, v in scores.items())
                err_console.print(
                    f"update {st.update}/{ppo.num_updates} step {st.global_step:,} "
                    f"qoe/chunk {metrics['charts/qoe']:.3f} {metrics['charts/steps_per_s']:,.0f} steps/s {shown}"
                )
            rows.append(metrics)
            _write_csv(metrics_path, rows)

        with progress() as bar:
            task = bar.add_task("training", total=ppo.num_updates, completed=state.update)

            def on_update_with_bar(st: TrainState, metrics: dict[str, float]) -> None:
                on_update(st, metrics)
                bar.update(task, completed=st.update)

            if ray is not None:
                from policy.cluster import connect
                from policy.learning.distributed import train_on_ray

                connect(ray)
                train_on_ray(ppo, train_set, the_video, workers=ray_workers, state=state, device=dev, spec=spec,
                             on_update=on_update_with_bar, plasticity=Plasticity(plasticity_config))  # fmt: skip
            else:
                train(ppo, train_set, the_video, state=state, device=dev, spec=spec, on_update=on_update_with_bar,
                      plasticity=Plasticity(plasticity_config))  # fmt: skip
        if not eval_sets:
            checkpoint(state, best_dir, {}, best_score)
        console.print(f"done in {time.perf_counter() - started:.0f} s: {out / 'best'} (best), {last_dir} (last)")


def _initial_model(init: str, video: Video) -> Checkpoint:
    """The checkpoint ``--init`` names (``default``: the shipped model), validated against ``video``."""
    folder = DEFAULT_MODEL_DIR if init == "default" else Path(init)
    try:
        return load_checkpoint(folder, video)
    except CheckpointError as err:
        raise ValueError(f"--init {init}: {err}") from None


def _train_schedule(
    schedule: Schedule, plasticity: PlasticityConfig, ppo: PPOConfig, video: Video, video_spec: str, out: Path,
    scale: float, trace_root: Path, device: torch.device, ray_workers: int = 0,
) -> None:  # fmt: skip
    """Continual training through ``schedule``: ``out/run.json`` (evaluations, diagnostics) and ``out/last``."""
    if (out / "last" / META_FILE).exists():
        raise ValueError(f"--out {out} already holds a run; choose another folder")
    console.print(f"continual training through {schedule.name} ({len(schedule.phases)} phases) "
                  f"with plasticity {plasticity.method}, scale {scale}, device {device}")  # fmt: skip
    with progress() as bar:
        task = bar.add_task(schedule.name, total=None)

        def on_progress(update: int, total: int) -> None:
            bar.update(task, completed=update, total=total)

        record, state = train_schedule(schedule, plasticity, ppo, video, scale=scale, trace_root=trace_root,
                                       device=device, on_progress=on_progress, ray_workers=ray_workers)  # fmt: skip
    write_atomic(out / "run.json", json.dumps(record).encode())
    save_checkpoint(
        out / "last", state.model, video, ObservationSpec(), qoe_kind=ppo.qoe,
        train_config=record["ppo"], progress={"update": state.update, "global_step": state.global_step},
        scores={}, optimizer=state.optimizer,
        data={"schedule": schedule.name, "plasticity": plasticity.method, "video": video_spec},
    )  # fmt: skip
    for e in record["evals"]:
        if e["steps_into_phase"] == max(x["steps_into_phase"] for x in record["evals"] if x["phase"] == e["phase"]):
            shown = " ".join(f"{f}={s['qoe']:.3f}" for f, s in e["scores"].items())
            console.print(f"end of phase {e['phase']} ({e['family']}), step {e['step']:,}: {shown}")
    console.print(f"done: {out / 'run.json'}, {out / 'last'}")


def _write_csv(path: Path, rows: list[dict[str, float]]) -> None:
    keys: list[str] = []
    for row in rows:
        keys.extend(k for k in row if k not in keys)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, buffer.getvalue().encode())
