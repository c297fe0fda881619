"""One retraining round: telemetry -> traces -> fine-tuned candidate -> gate -> published version.

1. Traces are rebuilt from the telemetry of the last ``window_s`` (`abr_server.retrain.rebuild`). A
   ``holdout_fraction`` of the sessions is held out for the gate, drawn at random (``holdout``
   ``random``, the default) or the newest (``newest``: the sessions that ended last, which are also
   the longest-running, the ones that stalled most, when sessions start together); the rest form the
   training pool, weighted by recency, plus a ``replay_share`` of older traces (``replay``) against
   forgetting.
2. The deployed version (the registry's active one) is fine-tuned in the simulator with PPO for
   ``updates`` updates, with a plasticity method (ReSiN by default) keeping it able to learn. The
   trainer checkpoints itself in ``work_dir`` every ``checkpoint_every`` updates; a round that was
   interrupted resumes from there if it is the same round (same parent version and data). With
   ``continual`` the trainer is one long-lived learner instead: its model, optimizer state and
   plasticity state carry over from round to round in ``work_dir`` (a refused candidate's training is
   kept, not thrown away), and it starts again from the registry only when the active version is not
   the one it left active (an operator's rollback or activation, a crash between publishing and
   recording it). A ``rehearsal`` share of the pool comes from fixed trace sets (the networks the
   starting model was trained for), so that fine-tuning on the network of the moment keeps them.
3. The gate scores the candidate, the deployed model and robustMPC on the held-out traces: the
   candidate is published only if it beats the deployed model by ``margin`` (QoE_lin) and, when a
   ``reference`` trace set is given, is not worse there than the deployed model by more than
   ``tolerance``; with an ``anchor`` (trace sets of the networks the starting model serves), it must
   also not be worse there than the registry's first version by more than ``anchor_tolerance``, so
   no sequence of rounds trades away what the starting model could do. With ``revert_versions`` the
   gate also scores that many earlier versions (the first one, the model the registry started from,
   and the newest others); when the best of them beats both the deployed model and the candidate by
   ``margin`` (by more than 0 when the margin is negative) and passes the same checks, its weights are
   published again as a new version instead (``reverted``), and a continual trainer starts again from
   it. A network that returns finds the version that served it well, instead of waiting for the
   learner to climb back.
4. Publishing writes the candidate into the registry under a new version name, in a hidden folder
   first and renamed into place when complete, so a server watching the registry only ever sees whole
   versions. Its ``meta.json`` carries the lineage: parent version, data window, trace counts, scores.
   Servers pick it up by polling (``ABR_WATCH_INTERVAL_S``) or through the admin API; rolling back is
   the admin API's rollback or activating the parent.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from abr_common.files import write_atomic
from abr_server.registry import ModelRegistry
from abr_server.retrain.rebuild import RebuildConfig, rebuild_traces, weighted_sample
from plasticity.methods import Plasticity, PlasticityConfig, ResinConfig
from policy.base import make_policy
from policy.evaluation.loop import run_policy
from policy.learned import ModelPolicy
from policy.learning.checkpoint import (
    META_FILE,
    MODEL_FILE,
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from policy.learning.config import PPOConfig
from policy.learning.network import ActorCritic
from policy.learning.ppo import TrainState
from policy.learning.run import TrainingRun
from simulator.observation import ObservationSpec
from simulator.video import Video
from traces.sources import resolve
from traces.trace import Trace

log = logging.getLogger("abr_retrain")
STATE_DIR = "trainer"
ROUND_FILE = "round.json"
#: The plasticity method's state, kept with the trainer (resume) and with each published version (next round).
PLASTICITY_FILE = "plasticity.json"
#: Prefix of the trainer's plasticity metrics; an update whose metrics hold DIAGNOSED_KEY ran the silent-neuron
#: diagnostics (`plasticity.diagnostics.summarise`), and a round's result keeps the last such update's.
DIAGNOSTICS_PREFIX = "plasticity/"
DIAGNOSED_KEY = "plasticity/silent_ratio"
#: Neurons a method re-initialised in an update (ReSiN, ReDo, ...), summed over the round.
NEURONS_RESET_KEY = "plasticity/neurons_reset"
#: The replay / reference source that means "older sessions from the telemetry store itself".
TELEMETRY = "telemetry"
#: A continual trainer's schedule length in updates: never reached, so its (constant) schedule never ends.
CONTINUAL_UPDATES = 10**9


class RetrainConfig(BaseModel):
    """A retraining round's data, training and gate settings."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    window_s: float = Field(24 * 3600.0, gt=0, description="Telemetry received in the last window_s is used.")
    half_life_s: float = Field(6 * 3600.0, gt=0, description="Recency weighting of the training pool.")
    min_traces: int = Field(8, ge=2, description="Fewer rebuilt traces than this: no round.")
    holdout_fraction: float = Field(0.25, gt=0, lt=1, description="Share of the sessions held out for the gate.")
    holdout: Literal["random", "newest"] = Field(
        "random",
        description="Which sessions are held out: drawn at random (seeded by the data), or the ones that ended "
        "last (biased towards the sessions that stalled most when sessions start together).",
    )
    pool_size: int = Field(256, ge=1, description="Training traces drawn from the recency-weighted pool.")
    replay: str | None = Field(
        TELEMETRY,
        description="Older traces replayed against forgetting: a folder, a generator spec, 'telemetry' (sessions "
        "the store received before the window, back to history_s; none yet: no replay), or None.",
    )
    replay_share: float = Field(0.25, ge=0, lt=1, description="Share of the training set taken from replay.")
    reference: str | None = Field(
        TELEMETRY,
        description="Older reference traces the candidate must not regress on: a folder, a generator spec, "
        "'telemetry' (as for replay), or None.",
    )
    history_s: float = Field(
        7 * 24 * 3600.0, gt=0, description="How far back 'telemetry' replay and reference reach (from now)."
    )
    reference_size: int = Field(
        256, ge=1, description="At most this many reference traces are scored, drawn at random (seeded by the data)."
    )
    anchor: list[str] = Field(
        default_factory=list,
        description="Trace sources (folders, generator specs) of the networks the starting model serves: a "
        "version is published (or published again) only if it is not worse there than the registry's first "
        "version by more than anchor_tolerance. Empty: no anchor.",
    )
    anchor_tolerance: float = Field(0.05, description="QoE_lin a version may lose to the first one on the anchor.")
    rehearsal: list[str] = Field(
        default_factory=list,
        description="Trace sources (folders, generator specs) rehearsed in every round's training pool, such as "
        "the networks the starting model was trained for, so that fine-tuning keeps them. Empty: none.",
    )
    rehearsal_share: float = Field(0.25, ge=0, lt=1, description="Share of the training pool taken from rehearsal.")
    updates: int = Field(50, ge=1, description="PPO updates per round.")
    checkpoint_every: int = Field(10, ge=1, description="Trainer state saved every this many updates.")
    margin: float = Field(0.02, description="QoE_lin the candidate must gain on the held-out traces (< 0: may lose).")
    tolerance: float = Field(0.05, description="QoE_lin the candidate may lose on the reference traces.")
    ppo: PPOConfig = Field(
        default_factory=lambda: PPOConfig(
            num_envs=32, num_steps=64, learning_rate=2e-4, anneal_lr=False, ent_coef_start=0.01, ent_coef_end=0.01
        )
    )
    plasticity: PlasticityConfig = Field(default_factory=ResinConfig)
    rebuild: RebuildConfig = Field(default_factory=RebuildConfig)
    continual: bool = Field(
        False,
        description="One long-lived trainer across rounds (model, optimizer and plasticity state kept in the "
        "work folder) instead of a fresh fine-tune of the deployed version each round.",
    )
    revert_versions: int = Field(
        0,
        ge=0,
        description="Earlier versions the gate also scores on the held-out traces (the first and the newest "
        "others; 0: none); the best is published again when it beats the deployed version and the candidate "
        "by margin.",
    )

    @model_validator(mode="after")
    def _shares(self) -> RetrainConfig:
        if self.rehearsal and self.replay_share + self.rehearsal_share >= 1:
            raise ValueError(
                f"replay_share ({self.replay_share}) + rehearsal_share ({self.rehearsal_share}) must stay below 1: "
                "some of the pool must be recent sessions"
            )
        return self

    @model_validator(mode="after")
    def _continual_schedule(self) -> RetrainConfig:
        if self.continual:
            ppo = self.ppo
            if ppo.anneal_lr or ppo.ent_coef_start != ppo.ent_coef_end or ppo.expert is not None:
                raise ValueError(
                    "continual retraining never ends its schedule: it needs ppo.anneal_lr false, "
                    "ppo.ent_coef_start equal to ppo.ent_coef_end and no ppo.expert"
                )
        return self


class RoundResult(BaseModel):
    """What a round did."""

    status: str  # no-data | rejected | published | reverted
    reason: str
    parent: str | None = None
    version: str | None = None
    traces: dict[str, int] = Field(default_factory=dict)
    skipped: dict[str, int] = Field(default_factory=dict)
    scores: dict[str, dict[str, float]] = Field(default_factory=dict)
    resumed_from_update: int = 0
    trainer: str = "local"
    wall_s: float = 0.0
    diagnostics: dict[str, float] = Field(
        default_factory=dict,
        description="The plasticity/* metrics of the round's last diagnosed update (those the method's "
        "diagnose_every_updates divides: the candidate's own when it divides ``updates``).",
    )
    diagnosed_update: int | None = None
    neurons_reset: float = Field(0.0, description="Neurons the plasticity method re-initialised in the round.")
    trainer_update: int = Field(
        0, description="The trainer's updates in all at the round's end (continual: across rounds; else the round's)."
    )
    resynced: bool = Field(
        False,
        description="Continual: the trainer started again from the active version (it had none, or the "
        "registry's active version was not the one it left active).",
    )
    reverted_to: str | None = Field(None, description="The earlier version a reverted round published again.")


def retrain_once(
    telemetry: Path, models: Path, work_dir: Path, video: Video, config: RetrainConfig | None = None,
    *, now_s: float | None = None, ray_workers: int = 0, device: torch.device | None = None,
    candidate_dir: Path | None = None,
) -> RoundResult:  # fmt: skip
    """Run one round (see the module docstring); never leaves a partial version in ``models``.

    ``device``: where the fine-tuning learns (CPU or CUDA; the gate always scores on the CPU).
    ``candidate_dir``: the round's candidate is also written there (replacing what was there) whatever
    the gate decides, so a refused one can be examined later.

    With ``ray_workers`` > 0 the fine-tuning collects its rollouts from that many Ray actors
    (`policy.learning.rollouts.RayRollouts`) and the gate's evaluations run as Ray tasks (identical scores);
    the caller connects to Ray first (`policy.cluster.connect`).
    """
    config = config or RetrainConfig()
    started = time.perf_counter()
    now_s = time.time() if now_s is None else now_s
    registry = ModelRegistry(models, video, torch.device("cpu"))
    parent = registry.active_version()
    if parent is None:
        raise ValueError(f"model registry {models}: no version to fine-tune (put a checkpoint in {models}/v0001)")
    pool = rebuild_traces(telemetry, config.rebuild, since_s=now_s - config.window_s, until_s=now_s)
    counts = {"rebuilt": len(pool.traces), "rows": pool.rows_read}
    if len(pool.traces) < config.min_traces:
        return RoundResult(status="no-data", reason=f"{len(pool.traces)} traces rebuilt, need {config.min_traces}",
                           parent=parent, traces=counts, skipped=dict(pool.skipped))  # fmt: skip
    order = np.argsort(pool.ended_at_s, kind="stable")
    if config.holdout == "random":  # the same draw for the same pool, so an interrupted round resumes
        order = order[np.random.default_rng([config.ppo.seed, len(order), pool.rows_read]).permutation(len(order))]
    n_hold = max(1, round(len(order) * config.holdout_fraction))
    train_idx, hold_idx = order[:-n_hold], order[-n_hold:]
    holdout = [pool.traces[i] for i in hold_idx]
    recent = [pool.traces[i] for i in train_idx]
    weights = pool.weights(now_s, config.half_life_s)[train_idx]
    older_telemetry: list[Trace] | None = None
    if TELEMETRY in (config.replay, config.reference):
        older_telemetry = rebuild_traces(telemetry, config.rebuild, since_s=now_s - config.history_s,
                                         until_s=now_s - config.window_s).traces  # fmt: skip
    replay = _older(config.replay, older_telemetry)
    n_replay = round(config.pool_size * config.replay_share) if replay else 0
    # Fixed trace sets are read before any training, so a bad source fails the round before it costs anything.
    rehearsal = [trace for source in config.rehearsal for trace in resolve(source)]
    anchor = [trace for source in config.anchor for trace in resolve(source)]
    n_rehearsal = round(config.pool_size * config.rehearsal_share) if rehearsal else 0
    training = weighted_sample(recent, weights, config.pool_size - n_replay - n_rehearsal)
    rng = np.random.default_rng(len(pool.traces))
    if n_replay:
        training += [replay[i] for i in rng.integers(0, len(replay), n_replay)]
    if n_rehearsal:
        training += [rehearsal[i] for i in rng.integers(0, len(rehearsal), n_rehearsal)]
    counts |= {"train_recent": len(recent), "train_pool": len(training), "replay": n_replay, "holdout": len(holdout)}
    if n_rehearsal:
        counts["rehearsal"] = n_rehearsal
    if older_telemetry is not None:
        counts["older_telemetry"] = len(older_telemetry)
    data_key = _data_key(parent, training, holdout, config)

    hook = Plasticity(config.plasticity.model_copy(update={"seed": config.plasticity.seed or config.ppo.seed}))
    opener = _continual_trainer if config.continual else _round_trainer
    options: dict[str, Any] = {"plasticity": hook, "ray_workers": ray_workers, "device": device}
    trainer = opener(work_dir, models / parent, parent, video, config, data_key, options)
    run = trainer.run
    # The trainer's own plasticity state when it continues; a fresh trainer starts from what the parent's
    # training learned about the network (ReSiN's running gradient and activity levels).
    _restore_plasticity(hook, work_dir / STATE_DIR if trainer.own_state else models / parent,
                        same_run=trainer.own_state)  # fmt: skip
    diagnosed: dict[str, Any] = {"reset": 0.0}

    def keep_diagnostics(state: TrainState, metrics: dict[str, float]) -> None:
        diagnosed["reset"] += float(metrics.get(NEURONS_RESET_KEY, 0.0))
        if DIAGNOSED_KEY in metrics:
            found = {k: float(v) for k, v in metrics.items() if k.startswith(DIAGNOSTICS_PREFIX)}
            diagnosed.update(metrics=found, update=state.update)

    marker = {"data_key": data_key, "parent": parent, "round_start_update": trainer.round_start, "finished": False}
    end = trainer.round_start + config.updates
    while run.state.update < end:
        run.train(training, updates=min(config.checkpoint_every, end - run.state.update),
                  on_update=keep_diagnostics)  # fmt: skip
        _save_trainer(work_dir, run, marker, hook)
    state = run.state

    state.model.eval()
    candidate = state.model if run.device.type == "cpu" else copy.deepcopy(state.model).cpu()
    parent_ckpt = load_checkpoint(models / parent, video)
    spec, deployed = parent_ckpt.spec, parent_ckpt.model
    on_ray = ray_workers > 0
    scores = {"holdout": _scores(holdout, video, {"candidate": ModelPolicy(candidate, spec),
                                                   "deployed": ModelPolicy(deployed, spec),
                                                   "robustmpc": make_policy("robustmpc")}, on_ray)}  # fmt: skip
    reference = _older(config.reference, older_telemetry)
    if len(reference) > config.reference_size:  # the same draw for the same data, so a resumed round agrees
        pick = np.random.default_rng([config.ppo.seed, len(reference), pool.rows_read]).choice(
            len(reference), size=config.reference_size, replace=False
        )
        reference = [reference[i] for i in np.sort(pick)]
    guards = [_Guard("reference", reference, "deployed", config.tolerance)] if reference else []
    baselines = {"deployed": ModelPolicy(deployed, spec)}
    if anchor:
        guards.append(_Guard("anchor", anchor, "first", config.anchor_tolerance))
        first = registry.versions()[0]
        baselines["first"] = baselines["deployed"] if first == parent else _policy(models / first, video)
    for guard in guards:
        counts[guard.name] = len(guard.traces)
        scores[guard.name] = _scores(guard.traces, video, {"candidate": ModelPolicy(candidate, spec),
                                                           guard.baseline: baselines[guard.baseline]},
                                     on_ray)  # fmt: skip
    earlier = {
        v: load_checkpoint(models / v, video) for v in _earlier_versions(registry, parent, config.revert_versions)
    }
    if earlier:
        scores["earlier"] = _scores(holdout, video, {v: ModelPolicy(c.model, c.spec) for v, c in earlier.items()},
                                    on_ray)  # fmt: skip
    revert = _revert_choice(scores, config, guards, earlier, video, on_ray)
    gain = scores["holdout"]["candidate"] - scores["holdout"]["deployed"]
    if candidate_dir is not None:
        _write_candidate(candidate_dir, candidate, video, spec, config)
    result = RoundResult(status="rejected", reason="", parent=parent, traces=counts, skipped=dict(pool.skipped),
                         scores=scores, resumed_from_update=trainer.resumed_updates,
                         trainer=f"ray x{ray_workers}" if on_ray else "local",
                         trainer_update=state.update, resynced=trainer.resynced,
                         diagnostics=diagnosed.get("metrics", {}), diagnosed_update=diagnosed.get("update"),
                         neurons_reset=diagnosed["reset"])  # fmt: skip
    lineage = {"parent": parent, "window_s": [now_s - config.window_s, now_s], "traces": counts,
               "scores": scores, "plasticity": config.plasticity.method, "updates": config.updates}  # fmt: skip
    if revert is not None:
        best, reason = revert
        version = _next_version(registry.versions())
        publish_again(models, version, models / best, lineage | {"reverted_to": best})
        result.status, result.version, result.reverted_to, result.reason = "reverted", version, best, reason
    elif gain < config.margin:
        result.reason = f"holdout gain {gain:+.3f} < margin {config.margin}"
    elif (failed := _failed_guard(scores, guards, "candidate")) is not None:
        result.reason = failed
    else:
        version = _next_version(registry.versions())
        publish(models, version, state, video, spec, config, lineage, hook)
        result.status, result.version = "published", version
        result.reason = f"holdout gain {gain:+.3f} >= margin {config.margin}"
    if config.continual and result.status != "reverted":  # carries on if the registry keeps what it left active
        marker |= {"finished": True, "left_active": result.version or parent}
        write_atomic(work_dir / STATE_DIR / ROUND_FILE, json.dumps(marker).encode())
    else:  # the round is over (or its trainer's line lost to an earlier version): next time starts afresh
        shutil.rmtree(work_dir / STATE_DIR, ignore_errors=True)
    result.wall_s = time.perf_counter() - started
    return result


def _earlier_versions(registry: ModelRegistry, parent: str, count: int) -> list[str]:
    """Up to ``count`` versions other than ``parent`` worth reverting to: the first, then the newest.

    Versions that are themselves reverts are left out (the version they copy stands for them).
    """
    if count == 0:
        return []
    others = [v for v in registry.versions() if v != parent and not _is_revert(registry.root, v)]
    if len(others) <= count:
        return others
    return [others[0], *others[len(others) - count + 1 :]]


def _is_revert(root: Path | None, version: str) -> bool:
    if root is None:
        return False
    try:
        meta = json.loads((root / version / META_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return True  # unreadable: not a version to go back to
    lineage = meta.get("data", {}).get("lineage", {}) if isinstance(meta, dict) else {}
    return isinstance(lineage, dict) and "reverted_to" in lineage


@dataclass(frozen=True)
class _Guard:
    """A check a version must pass to be published: not worse than ``baseline`` on ``traces`` by > ``tolerance``."""

    name: str  # reference | anchor: its scores' key
    traces: list[Trace]
    baseline: str  # deployed | first
    tolerance: float


def _policy(folder: Path, video: Video) -> ModelPolicy:
    """The checkpoint in ``folder`` as a policy."""
    checkpoint = load_checkpoint(folder, video)
    return ModelPolicy(checkpoint.model, checkpoint.spec)


def _failed_guard(scores: dict[str, dict[str, float]], guards: list[_Guard], version: str) -> str | None:
    """Why ``version`` (its key in the guards' scores) fails a guard, or None when it passes them all."""
    for guard in guards:
        loss = scores[guard.name][guard.baseline] - scores[guard.name][version]
        if loss > guard.tolerance:
            return f"{guard.name} loss {loss:.3f} > tolerance {guard.tolerance}"
    return None


def _revert_choice(
    scores: dict[str, dict[str, float]], config: RetrainConfig, guards: list[_Guard],
    earlier: dict[str, Checkpoint], video: Video, on_ray: bool,
) -> tuple[str, str] | None:  # fmt: skip
    """The earlier version to publish again and why, or None (see the module docstring, step 3)."""
    if not earlier:
        return None
    hold = scores["holdout"]
    best = max(scores["earlier"], key=lambda v: (scores["earlier"][v], v))
    lead = scores["earlier"][best] - max(hold["candidate"], hold["deployed"])
    if lead <= 0 or lead < config.margin:  # a margin below 0 lets candidates lose, never an earlier version
        return None
    checkpoint = earlier[best]
    for guard in guards:
        scores[guard.name] |= _scores(guard.traces, video, {best: ModelPolicy(checkpoint.model, checkpoint.spec)},
                                      on_ray)  # fmt: skip
    if _failed_guard(scores, guards, best) is not None:
        return None
    return best, f"earlier version {best} leads the deployed version and the candidate by {lead:+.3f} >= margin"


def publish(
    models: Path, version: str, state: TrainState, video: Video, spec: ObservationSpec, config: RetrainConfig,
    lineage: dict[str, Any], hook: Plasticity | None = None,
) -> Path:  # fmt: skip
    """Write ``version`` into the registry: a hidden folder first, renamed into place when complete."""
    staging, final = _staging(models, version)
    save_checkpoint(staging, state.model, video, spec, qoe_kind=config.ppo.qoe,
                    train_config={"retrain": config.model_dump(mode="json")},
                    progress={"update": state.update, "global_step": state.global_step},
                    scores=lineage["scores"], data={"lineage": lineage})  # fmt: skip
    if hook is not None:
        write_atomic(staging / PLASTICITY_FILE, json.dumps(hook.state_dict()).encode())
    staging.rename(final)
    return final


def _staging(models: Path, version: str) -> tuple[Path, Path]:
    """The hidden folder ``version`` is written in (emptied) and the name it is renamed to when complete."""
    final = models / version
    if final.exists():
        raise ValueError(f"model version {version} already exists in {models}")
    staging = models / f".incoming-{version}"
    shutil.rmtree(staging, ignore_errors=True)
    return staging, final


def publish_again(models: Path, version: str, earlier: Path, lineage: dict[str, Any]) -> Path:
    """Publish ``earlier``'s weights (and plasticity state) as ``version``, with ``lineage``; staged like `publish`."""
    staging, final = _staging(models, version)
    staging.mkdir(parents=True)
    for name in (MODEL_FILE, PLASTICITY_FILE):
        if (earlier / name).is_file():
            shutil.copyfile(earlier / name, staging / name)
    meta = json.loads((earlier / META_FILE).read_text())
    meta["data"] = {"lineage": lineage}
    meta["scores"] = lineage["scores"]
    write_atomic(staging / META_FILE, json.dumps(meta, indent=2, sort_keys=True).encode())
    staging.rename(final)
    return final


def _write_candidate(folder: Path, model: ActorCritic, video: Video, spec: ObservationSpec,
                     config: RetrainConfig) -> None:  # fmt: skip
    """The candidate as a checkpoint in ``folder``: written beside it, then swapped in."""
    staging = folder.with_name(f".{folder.name}-incoming")
    shutil.rmtree(staging, ignore_errors=True)
    save_checkpoint(staging, model, video, spec, qoe_kind=config.ppo.qoe, train_config={}, progress={})
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)


def _older(source: str | None, older_telemetry: list[Trace] | None) -> list[Trace]:
    """The traces of a replay or reference ``source`` (none when it is 'telemetry' and the store has none)."""
    if source is None:
        return []
    if source == TELEMETRY:
        return older_telemetry or []
    return resolve(source)


def _scores(traces: list[Trace], video: Video, policies: dict[str, Any], on_ray: bool = False) -> dict[str, float]:
    """Mean QoE_lin of each policy on ``traces`` (through Ray tasks if ``on_ray``: the same numbers)."""
    if on_ray:
        from policy.evaluation.distributed import run_policies_ray

        outcomes = run_policies_ray([(policy, traces) for policy in policies.values()], video)
        return {name: float(logs.scores().mean()) for name, (logs, _) in zip(policies, outcomes, strict=True)}
    return {name: float(run_policy(policy, traces, video).scores().mean()) for name, policy in policies.items()}


def _data_key(parent: str, training: list[Trace], holdout: list[Trace], config: RetrainConfig) -> str:
    digest = hashlib.sha256(parent.encode())
    for trace in (*training, *holdout):
        digest.update(trace.name.encode())
        digest.update(trace.throughput_mbps.tobytes())
    digest.update(config.model_dump_json().encode())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class _Trainer:
    """A round's trainer: the run, the update its round began at, and where it came from."""

    run: TrainingRun
    round_start: int
    #: Updates of this round done before an interruption (0: the round starts now).
    resumed_updates: int = 0
    #: Whether the run continues the work folder's trainer (then its plasticity state is the folder's).
    own_state: bool = False
    resynced: bool = False


def _round_trainer(
    work_dir: Path, parent_dir: Path, parent: str, video: Video, config: RetrainConfig, data_key: str,
    run_options: dict[str, Any],
) -> _Trainer:  # fmt: skip
    """Resume this round's training from ``work_dir`` if it was interrupted, else fine-tune the parent afresh."""
    del parent
    checkpoint = load_checkpoint(parent_dir, video)
    # The round fine-tunes the parent's network, whatever shape ``config.ppo`` names.
    ppo = config.ppo.model_copy(update={"total_steps": config.updates * config.ppo.batch_size,
                                        "network": checkpoint.network})  # fmt: skip
    options: dict[str, Any] = {"spec": checkpoint.spec, **run_options}
    folder = work_dir / STATE_DIR
    marker = _read_marker(folder)
    if marker is not None and marker.get("data_key") == data_key:
        try:
            run = TrainingRun.resume(folder, ppo, video, **options)
            log.info("resuming round %s at update %d", data_key, run.state.update)
            return _Trainer(run, 0, resumed_updates=run.state.update, own_state=True)
        except (CheckpointError, OSError, ValueError, KeyError) as err:
            log.warning("trainer state in %s unusable (%s); starting the round afresh", folder, err)
    shutil.rmtree(folder, ignore_errors=True)
    return _Trainer(TrainingRun.create(ppo, video, init=checkpoint, **options), 0)


def _continual_trainer(
    work_dir: Path, parent_dir: Path, parent: str, video: Video, config: RetrainConfig, data_key: str,
    run_options: dict[str, Any],
) -> _Trainer:  # fmt: skip
    """The long-lived trainer in ``work_dir``, continued; or a new one from the active version ``parent``.

    It continues when its last round was interrupted on the same data, or when the version it left (or
    was training from) is still the active one; otherwise, or when its settings changed, it starts again.
    """
    checkpoint = load_checkpoint(parent_dir, video)
    ppo = config.ppo.model_copy(update={"total_steps": CONTINUAL_UPDATES * config.ppo.batch_size,
                                        "network": checkpoint.network})  # fmt: skip
    options: dict[str, Any] = {"spec": checkpoint.spec, **run_options}
    folder = work_dir / STATE_DIR
    marker = _read_marker(folder)
    if marker is not None:
        interrupted = not marker.get("finished") and marker.get("data_key") == data_key
        left = marker.get("left_active") if marker.get("finished") else marker.get("parent")
        if interrupted or left == parent:
            try:
                # Each round may seed its sampling differently; the trainer keeps the seed it began with.
                recorded = PPOConfig.model_validate(load_checkpoint(folder, video).meta["train_config"])
                if recorded.model_copy(update={"seed": ppo.seed}) != ppo:
                    raise ValueError("the round's training settings changed")
                run = TrainingRun.resume(folder, recorded, video, **options)
                start = int(marker["round_start_update"]) if interrupted else run.state.update
                log.info("continuing the trainer at update %d", run.state.update)
                return _Trainer(run, start, resumed_updates=run.state.update - start, own_state=True)
            except (CheckpointError, OSError, ValueError, KeyError, TypeError) as err:
                log.warning("trainer state in %s not continued (%s); starting again from %s", folder, err, parent)
        else:
            log.info("the active version is %s, not %s which the trainer left: starting again from it", parent, left)
    shutil.rmtree(folder, ignore_errors=True)
    return _Trainer(TrainingRun.create(ppo, video, init=checkpoint, **options), 0, resynced=True)


def _read_marker(folder: Path) -> dict[str, Any] | None:
    """The trainer folder's round record (None: none, or unreadable)."""
    try:
        marker = json.loads((folder / ROUND_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return marker if isinstance(marker, dict) else None


def _restore_plasticity(hook: Plasticity, folder: Path, *, same_run: bool) -> None:
    """Load ``folder``'s plasticity state into ``hook`` if it has one for the same method (else start afresh)."""
    path = folder / PLASTICITY_FILE
    if not path.is_file():
        return
    try:
        hook.load_state_dict(json.loads(path.read_text()), same_run=same_run)
    except (OSError, ValueError, TypeError, AttributeError) as err:
        log.warning("plasticity state %s not used (%s)", path, err)


def _save_trainer(work_dir: Path, run: TrainingRun, marker: dict[str, Any], hook: Plasticity) -> None:
    """The training so far (model, optimizer, progress, plasticity state) and the round's record ``marker``.

    The record goes last: a trainer folder whose record names this round holds this round's training.
    """
    folder = work_dir / STATE_DIR
    run.save(folder, data={"parent": marker["parent"]})
    write_atomic(folder / PLASTICITY_FILE, json.dumps(hook.state_dict()).encode())
    write_atomic(folder / ROUND_FILE, json.dumps({**marker, "update": run.state.update,
                                                  "global_step": run.state.global_step}).encode())  # fmt: skip


def _next_version(versions: list[str]) -> str:
    numbers = [int(v[1:]) for v in versions if v.startswith("v") and v[1:].isdigit()]
    return f"v{(max(numbers) + 1 if numbers else 1):04d}"
