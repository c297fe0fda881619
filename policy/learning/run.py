"""A training run: one model with its optimizer and progress, trained by the PPO loop, evaluated, checkpointed.

Every job that trains goes through it: `abr train`, continual training through a schedule
(`plasticity.continual`) and retraining rounds (`abr_server.retrain`).

- `TrainingRun.create`: a fresh model, or a fine-tune (``init``: a checkpoint's weights and shape with a
  fresh optimizer and schedule).
- `TrainingRun.resume`: continue exactly from a checkpoint the run saved (model, optimizer, progress).
- `TrainingRun.open`: the folder convention of `abr train` (``last/``, ``best/``, ``metrics.csv``): create
  in an empty folder, resume from its ``last/``, refuse to overwrite a run.
- `TrainingRun.train`: PPO updates on a trace set, in this process or on Ray actors.
- `TrainingRun.evaluate`: the greedy policy's score on named trace sets.
- `TrainingRun.save`: a checkpoint with the optimizer state and progress.
- `TrainingRun.fit`: train to the end of the schedule, evaluating every few updates, keeping the best
  and the last checkpoints and the metrics of every update in the run's folder.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from abr_common.files import write_atomic
from policy.learned import ModelPolicy, model_folder
from policy.learning.checkpoint import (
    META_FILE,
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    load_optimizer_state,
    save_checkpoint,
)
from policy.learning.config import NetworkConfig, PPOConfig
from policy.learning.ppo import MetricsCallback, PlasticityHook, TrainState, new_state, train
from simulator.link import LinkConfig
from simulator.observation import ObservationSpec
from simulator.video import Video
from traces.trace import Trace

#: The sub-folders and file of a run folder (`TrainingRun.open`, `TrainingRun.fit`).
LAST_DIR, BEST_DIR, METRICS_FILE = "last", "best", "metrics.csv"
#: Prefix of the evaluation scores among an update's metrics.
EVAL_PREFIX = "eval/"
#: One update's metrics, as in ``metrics.csv``.
MetricsRow = dict[str, float]


def load_init(init: str, video: Video) -> Checkpoint:
    """The checkpoint a fine-tune starts from: a shipped model's name (``default``, ...) or a checkpoint folder."""
    try:
        return load_checkpoint(model_folder(init), video)
    except CheckpointError as err:
        raise ValueError(f"{init}: {err}") from None


def merged_config(
    fields: Mapping[str, Any], *, init: Checkpoint | None = None, critic_future: bool = False
) -> PPOConfig:
    """`PPOConfig` from ``fields``; the network is ``init``'s unless ``fields`` names one, and sees the future if asked.

    A fine-tune keeps its checkpoint's network shape: ``fields`` naming another shape is refused.
    """
    fields = dict(fields)
    if init is not None:
        fields.setdefault("network", init.network)
    if critic_future:
        net = NetworkConfig.model_validate(fields.get("network", NetworkConfig()))
        fields["network"] = NetworkConfig(**{**net.model_dump(), "critic_future": True})
    config = PPOConfig(**fields)
    if init is not None and config.network.model_copy(update={"critic_future": init.network.critic_future}) != (
        init.network
    ):
        raise ValueError(f"the checkpoint's network {init.network} differs from the configured {config.network}")
    return config


@dataclass
class TrainingRun:
    """One model being trained with ``config`` on ``video``'s sessions (see the module docstring)."""

    config: PPOConfig
    video: Video
    state: TrainState
    spec: ObservationSpec = field(default_factory=ObservationSpec)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    link: LinkConfig | None = None
    plasticity: PlasticityHook | None = None
    ray_workers: int = 0
    best_score: float = -np.inf
    started_s: float = field(default_factory=time.perf_counter)

    @classmethod
    def create(
        cls, config: PPOConfig, video: Video, *, init: Checkpoint | None = None, spec: ObservationSpec | None = None,
        device: torch.device | None = None, **options: Any,
    ) -> TrainingRun:  # fmt: skip
        """A freshly initialised (seeded) model, or ``init``'s weights with a fresh optimizer and schedule.

        A fine-tune that adds or drops the future-seeing critic keeps the policy and the critic's trunk;
        the value head (whose input changes) starts fresh. ``options``: the other fields (link,
        plasticity, ray_workers).
        """
        spec = spec or ObservationSpec()
        device = device or torch.device("cpu")
        state = new_state(config, video, spec, device)
        if init is not None:
            if init.spec != spec:
                raise ValueError(f"the checkpoint observes {init.spec}, training uses {spec}")
            same_critic = config.network.critic_future == init.network.critic_future
            weights = init.model.state_dict()
            if not same_critic:
                weights = {k: v for k, v in weights.items() if not k.startswith(("critic_head.", "critic_future."))}
            state.model.load_state_dict(weights, strict=same_critic)
        return cls(config, video, state, spec, device, **options)

    @classmethod
    def resume(
        cls, checkpoint_dir: Path, config: PPOConfig, video: Video, *, spec: ObservationSpec | None = None,
        device: torch.device | None = None, **options: Any,
    ) -> TrainingRun:  # fmt: skip
        """Continue the run saved in ``checkpoint_dir`` (by `save`), which must have been trained with ``config``."""
        if not (checkpoint_dir / META_FILE).is_file():
            raise ValueError(f"{checkpoint_dir} has no checkpoint to resume from")
        run = cls.create(config, video, spec=spec, device=device, **options)
        ckpt = load_checkpoint(checkpoint_dir, video, run.device)
        if PPOConfig.model_validate(ckpt.meta["train_config"]) != config:  # fields added since default alike
            raise ValueError(f"the options differ from the run in {checkpoint_dir} (see {checkpoint_dir / META_FILE})")
        # Heads injected during the run (plasticity injection) are rebuilt, then take the checkpoint's weights.
        for _ in range(ckpt.network.injected_heads - run.state.model.config.injected_heads):
            run.state.optimizer.add_param_group({"params": run.state.model.inject(seed=0)})
        run.state.model.load_state_dict(ckpt.model.state_dict())
        run.state.model.train()
        load_optimizer_state(checkpoint_dir, run.state.model, run.state.optimizer)
        progress = ckpt.meta["progress"]
        run.state.update, run.state.global_step = int(progress["update"]), int(progress["global_step"])
        run.best_score = float(progress.get("best_score") or -np.inf)
        return run

    @classmethod
    def open(
        cls, folder: Path, config: PPOConfig, video: Video, *, resume: bool = False, init: Checkpoint | None = None,
        **options: Any,
    ) -> TrainingRun:  # fmt: skip
        """The run in ``folder``: resumed from its ``last/`` if ``resume``, else new (refused if one is there)."""
        if resume:
            return cls.resume(folder / LAST_DIR, config, video, **options)
        if (folder / LAST_DIR / META_FILE).exists():
            raise FileExistsError(f"{folder} already holds a run; resume it or choose another folder")
        return cls.create(config, video, init=init, **options)

    def train(
        self, traces: Sequence[Trace], *, updates: int | None = None, on_update: MetricsCallback | None = None
    ) -> TrainState:
        """``updates`` PPO updates on ``traces`` (None: to the end of the schedule); metrics go to ``on_update``."""
        return train(self.config, traces, self.video, state=self.state, device=self.device, link=self.link,
                     spec=self.spec, on_update=on_update, stop_after_updates=updates, plasticity=self.plasticity,
                     ray_workers=self.ray_workers)  # fmt: skip

    def evaluate(self, sets: Mapping[str, Sequence[Trace]]) -> dict[str, dict[str, float]]:
        """The greedy policy's mean QoE_lin score (``qoe``) and mean bitrate after the first chunk, per set."""
        from policy.evaluation.loop import run_policy

        policy = ModelPolicy(self.state.model, self.spec)
        out = {}
        for name, traces in sets.items():
            logs = run_policy(policy, traces, self.video)
            out[name] = {"qoe": float(logs.scores().mean()), "bitrate_kbps": float(logs.bitrate_kbps()[:, 1:].mean())}
        return out

    def save(
        self, folder: Path, *, scores: Mapping[str, Any] | None = None, data: Mapping[str, Any] | None = None,
        train_config: Mapping[str, Any] | None = None, progress: Mapping[str, Any] | None = None,
        optimizer: bool = True,
    ) -> Path:  # fmt: skip
        """A checkpoint of the model (with the optimizer state unless not ``optimizer``) that `resume` continues.

        ``progress`` adds to the update and step counts; ``train_config`` replaces the PPO config recorded.
        """
        recorded = dict(train_config) if train_config is not None else json.loads(self.config.model_dump_json())
        return save_checkpoint(
            folder, self.state.model, self.video, self.spec, qoe_kind=self.config.qoe, train_config=recorded,
            progress={"update": self.state.update, "global_step": self.state.global_step, **(progress or {})},
            scores=dict(scores or {}), optimizer=self.state.optimizer if optimizer else None, data=dict(data or {}),
        )  # fmt: skip

    def fit(
        self, traces: Sequence[Trace], folder: Path, *, eval_sets: Mapping[str, Sequence[Trace]] | None = None,
        eval_every: int = 20, data: Mapping[str, Any] | None = None, on_update: MetricsCallback | None = None,
        on_evaluated: MetricsCallback | None = None,
    ) -> TrainState:  # fmt: skip
        """Train to the end of the schedule; every ``eval_every`` updates and at the end, evaluate and checkpoint.

        ``folder/last`` is the newest checkpoint, ``folder/best`` the one with the best mean score over
        ``eval_sets`` (without evaluation sets: the final model); ``folder/metrics.csv`` has every update's
        metrics, with ``eval/NAME`` scores where evaluated. ``data`` is recorded in every checkpoint;
        ``on_evaluated`` sees the metrics of updates that were evaluated.
        """
        eval_sets = eval_sets or {}
        metrics_path = folder / METRICS_FILE
        rows = read_metrics(metrics_path) if self.state.update > 0 and metrics_path.is_file() else []

        def checkpoint(sub: str, scores: dict[str, float]) -> None:
            best = self.best_score if np.isfinite(self.best_score) else None
            self.save(folder / sub, scores=scores, data=data,
                      progress={"best_score": best, "wall_s": time.perf_counter() - self.started_s})  # fmt: skip

        def after_update(state: TrainState, metrics: dict[str, float]) -> None:
            if state.update % eval_every == 0 or state.update == self.config.num_updates:
                evaluated = self.evaluate(eval_sets)
                scores = {f"{EVAL_PREFIX}{name}": s["qoe"] for name, s in evaluated.items()}
                metrics.update(scores)
                if scores:
                    mean = float(np.mean(list(scores.values())))
                    if mean > self.best_score:
                        self.best_score = mean
                        checkpoint(BEST_DIR, scores)
                checkpoint(LAST_DIR, scores)
                if on_evaluated is not None:
                    on_evaluated(state, metrics)
            rows.append(metrics)
            write_metrics(metrics_path, rows)
            if on_update is not None:
                on_update(state, metrics)

        self.train(traces, on_update=after_update)
        if not eval_sets:
            checkpoint(BEST_DIR, {})
        return self.state


def read_metrics(path: Path) -> list[MetricsRow]:
    """The rows of a ``metrics.csv`` (empty cells left out)."""
    with path.open() as f:
        return [{k: float(v) for k, v in row.items() if v} for row in csv.DictReader(f)]


def write_metrics(path: Path, rows: Sequence[MetricsRow]) -> None:
    """``rows`` as CSV, atomically; the columns are every key in order of first appearance."""
    keys: list[str] = []
    for row in rows:
        keys.extend(k for k in row if k not in keys)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, buffer.getvalue().encode())
