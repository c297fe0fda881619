"""Continual training through a schedule: one network, phase after phase, with continual evaluation.

The PPO trainer runs unchanged; the learning rate and the entropy bonus are held constant (an online
learner has no end of training to anneal towards). At ``evals_per_phase`` points in every phase (the last
at its end) the greedy policy is evaluated on the test set of the current family and of every family seen
before (forgetting). Every update's training QoE and bitrate, and the ``plasticity/*`` diagnostics, are
kept for the recovery and silent-neuron analyses.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from abr_common.files import write_atomic
from abr_common.paths import DEFAULT_TRACE_ROOT
from plasticity.config import network_for
from plasticity.methods import Plasticity, PlasticityConfig
from plasticity.schedules import Schedule, expand
from policy.learning.config import PPOConfig
from policy.learning.run import LAST_DIR, TrainingRun
from simulator.video import Video
from traces.sources import resolve

ProgressFn = Callable[[int, int], None]

#: Per-update metrics kept in a run's record (diagnostics are added when present).
KEPT_METRICS = ("global_step", "charts/qoe", "charts/bitrate_kbps")


def phase_updates(schedule: Schedule, config: PPOConfig, scale: float) -> list[int]:
    """Updates per phase at ``scale`` (at least one each)."""
    return [max(1, round(phase.steps * scale / config.batch_size)) for phase in schedule.phases]


def continual_config(config: PPOConfig, total_updates: int) -> PPOConfig:
    """``config`` for online training: constant learning rate and entropy bonus over ``total_updates``."""
    return config.model_copy(
        update={
            "anneal_lr": False,
            "ent_coef_end": config.ent_coef_start,
            "total_steps": total_updates * config.batch_size,
        }
    )


def run_schedule(
    schedule: Schedule,
    plasticity: PlasticityConfig,
    config: PPOConfig,
    video: Video,
    *,
    scale: float = 1.0,
    trace_root: Path = DEFAULT_TRACE_ROOT,
    device: torch.device | None = None,
    on_progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Train one network through ``schedule`` with ``plasticity``; return a JSON-ready record of the run."""
    record, _ = train_schedule(schedule, plasticity, config, video, scale=scale, trace_root=trace_root,
                               device=device, on_progress=on_progress)  # fmt: skip
    return record


def train_schedule(
    schedule: Schedule,
    plasticity: PlasticityConfig,
    config: PPOConfig,
    video: Video,
    *,
    scale: float = 1.0,
    trace_root: Path = DEFAULT_TRACE_ROOT,
    device: torch.device | None = None,
    on_progress: ProgressFn | None = None,
    ray_workers: int = 0,
) -> tuple[dict[str, Any], TrainingRun]:
    """As `run_schedule`, also returning the training run (model, optimizer, progress).

    With ``ray_workers`` > 0 rollouts come from that many Ray actors (the caller connects to Ray first);
    the plasticity method and the evaluations run here as usual.
    """
    updates = phase_updates(schedule, config, scale)
    ppo = continual_config(config, sum(updates))
    ppo = ppo.model_copy(update={"network": network_for(plasticity, ppo.network)})
    train_sets = [[t for s in expand(p.train, trace_root) for t in resolve(s)] for p in schedule.phases]
    test_sets = {f: [t for s in schedule.test_sources(f, trace_root) for t in resolve(s)] for f in schedule.families()}
    hook = Plasticity(plasticity.model_copy(update={"seed": plasticity.seed or config.seed}))
    run = TrainingRun.create(ppo, video, device=device, plasticity=hook, ray_workers=ray_workers)
    state = run.state
    evals: list[dict[str, Any]] = []
    started = time.perf_counter()
    seen: list[str] = []
    boundaries: list[int] = []
    for index, (phase, n_updates) in enumerate(zip(schedule.phases, updates, strict=True)):
        if phase.family not in seen:
            seen.append(phase.family)
        boundaries.append(state.global_step)
        phase_metrics = hook.begin_phase(state.model, state.optimizer, index)
        if phase_metrics:
            state.metrics.append({"global_step": float(state.global_step), **phase_metrics})
        points = sorted(
            {max(1, round(n_updates * (k + 1) / schedule.evals_per_phase)) for k in range(schedule.evals_per_phase)}
        )
        done = 0
        for point in points:
            run.train(train_sets[index], updates=point - done)
            done = point
            scores = run.evaluate({f: test_sets[f] for f in seen})
            evals.append({
                "phase": index, "family": phase.family, "update": state.update, "step": state.global_step,
                "steps_into_phase": state.global_step - boundaries[-1], "scores": scores,
            })  # fmt: skip
            if on_progress is not None:
                on_progress(state.update, sum(updates))
    kept = [{k: v for k, v in m.items() if k in KEPT_METRICS or k.startswith("plasticity/")} for m in state.metrics]
    record = {
        "schedule": schedule.model_dump(),
        "scale": scale,
        "plasticity": plasticity.model_dump(),
        "ppo": ppo.model_dump(),
        "phase_updates": updates,
        "phase_start_steps": boundaries,
        "total_steps": state.global_step,
        "wall_s": time.perf_counter() - started,
        "evals": evals,
        "updates": kept,
        "resets": hook.method.resets,
    }
    return record, run


def save_schedule_run(folder: Path, record: dict[str, Any], run: TrainingRun, data: dict[str, Any]) -> None:
    """``folder/run.json`` (the record) and ``folder/last`` (the final model with its optimizer state)."""
    write_atomic(folder / "run.json", json.dumps(record).encode())
    run.save(folder / LAST_DIR, train_config=record["ppo"], data=data)


def recovery_steps(
    steps: np.ndarray, qoe: np.ndarray, fraction: float = 0.9, window: int = 5, level: float | None = None
) -> float:
    """Steps into a phase until the smoothed training QoE first reaches ``fraction`` of its eventual level.

    The eventual level is the mean over the last fifth of the phase, unless ``level`` is given (e.g. the
    best method's, so that a method stuck at a poor level does not count as recovered); "reaching 90%"
    of a level ``L`` means
    reaching ``L - (1 - fraction) * |L|`` (also meaningful when ``L`` is negative). ``steps`` counts from
    the start of the phase. Returns ``inf`` if never reached (it always is by the end unless noise).
    """
    if len(qoe) == 0:
        return float("nan")
    window = max(1, min(window, len(qoe)))
    smooth = np.convolve(qoe, np.ones(window) / window, mode="valid")
    smooth_steps = steps[window - 1 :]
    if level is None:
        level = eventual_level(qoe)
    target = level - (1.0 - fraction) * abs(level)
    hit = np.nonzero(smooth >= target)[0]
    return float(smooth_steps[hit[0]]) if hit.size else float("inf")


def eventual_level(qoe: np.ndarray) -> float:
    """Mean training QoE over the last fifth of a phase."""
    return float(np.mean(qoe[-max(1, len(qoe) // 5) :]))
