"""A deployment timeline through a live server: does the served policy keep up as the network changes?

Time runs in epochs over a sequence of networks (`abr_server.lab.timeline`: phases, arms). For every
(arm, seed) a fresh server starts from the starting model (registry version v0001) with a telemetry
store of its own. In each epoch a fleet of players (one per trace) streams through it on sessions drawn
from the epoch's network: ``sessions_per_epoch`` traces of the phase's source, chosen with a per-epoch
seed among those not streamed earlier in the run (all the source's traces again once it has too few
left), so every epoch is scored on sessions the policy has not trained on, and every arm at one seed
sees the same sessions. The epoch's score is their mean QoE_lin as the players measured it.

After every epoch but the last, a loop arm runs one retraining round (`abr_server.retrain.loop.retrain_once`)
on that epoch's telemetry: a quarter held out for the gate (a seeded random draw), PPO fine-tuning of the
deployed version with the arm's plasticity method (``+replay``: a quarter of the pool is older telemetry), the
gate (``+reference``: older telemetry must not regress), publication; the server serves what the round
publishes before the next epoch starts. Each round's candidate's ``plasticity/*`` diagnostics
(silent, dormant and gradient-silent ratios) are recorded with it.

`summarise` turns the runs into per-arm statistics: QoE per epoch (mean and 95% t-interval over seeds),
versions published and gate refusals, the time to adapt after each shift (rounds and wall time until
the served policy beats robustMPC on the new network, on the same sessions) and the rounds to recover
after a return to an earlier network (back within a tolerance of what the arm had at the end of its
previous visit, both measured against robustMPC on the same sessions where it ran). `write_outputs`
writes ``results.json``, ``report.md`` and the plots.

Every (arm, seed) run writes its record to ``OUT/runs/ARM-seedS.json`` atomically; a rerun keeps the
records whose settings match and runs only the rest.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from abr_common import seeding
from abr_common.files import figure_png, write_atomic
from abr_common.paths import DEFAULT_TRACE_ROOT
from abr_common.stats import mean_ci95
from abr_server.lab.fleet_client import served_model_version, stream_through_server, wait_for_model_version
from abr_server.lab.launcher import local_server
from abr_server.lab.timeline import ROBUSTMPC, Arm, Phase, parse_arm, parse_arms
from abr_server.retrain.loop import DIAGNOSED_KEY, TELEMETRY, RetrainConfig, RoundResult, retrain_once
from plasticity.config import parse_plasticity
from policy.base import make_policy
from policy.learned import DEFAULT_MODEL, model_folder
from policy.learning.config import PPOConfig
from simulator.video import Video
from traces.sources import is_generator_spec, resolve
from traces.trace import Trace

#: Sessions streamed per epoch (one player per trace), by default and with ``tiny``.
SESSIONS_PER_EPOCH, TINY_SESSIONS_PER_EPOCH = 16, 4
#: Files and folders of an output folder.
RUNS_DIR, RESULTS_FILE, REPORT_FILE = "runs", "results.json", "report.md"
QOE_PLOT, SILENT_PLOT = "qoe_per_epoch.png", "silent_ratio.png"
#: How often the server polls its registry for a newly published version.
WATCH_INTERVAL_S = 0.2
#: How long a round waits for the epoch's reports to reach the telemetry database, and how often it looks.
TELEMETRY_WAIT_S, TELEMETRY_POLL_S = 30.0, 0.05
#: How long the server may take to serve a version a round published.
SWAP_WAIT_S = 30.0
#: The diagnostics plotted per round, and the starting model's registry version.
SILENT_KEYS = (DIAGNOSED_KEY, "plasticity/dormant_ratio", "plasticity/grad_silent_ratio")
FIRST_VERSION = "v0001"
#: Earlier versions a ``+revert`` arm's gate scores each round (the first and the newest others).
REVERT_VERSIONS = 8
#: The ``+anchor`` arms' anchor: folders of the trace root, held out of every phase of the default timeline.
ANCHOR_FOLDERS = ("fcc-train@fold=0/5", "norway-train@fold=0/5", "puffer-2110-train@fold=0/5")


def default_retrain() -> RetrainConfig:
    """A round's settings in the timeline: 30 PPO updates of 32 sessions x 64 steps at lr 3e-4, gate margin 0.02."""
    return RetrainConfig(
        window_s=1.0, min_traces=8, updates=30, checkpoint_every=10, pool_size=64, margin=0.02,
        ppo=PPOConfig(num_envs=32, num_steps=64, learning_rate=3e-4, anneal_lr=False, ent_coef_start=0.01,
                      ent_coef_end=0.01, torch_threads=1),
    )  # fmt: skip


def tiny_retrain() -> RetrainConfig:
    """Rounds small enough for a test: 2 PPO updates of 4 sessions x 16 steps."""
    return default_retrain().model_copy(update={
        "min_traces": 2, "updates": 2, "checkpoint_every": 2, "pool_size": 8,
        "ppo": default_retrain().ppo.model_copy(update={"num_envs": 4, "num_steps": 16, "num_minibatches": 1,
                                                        "update_epochs": 1}),
    })  # fmt: skip


class AdaptConfig(BaseModel):
    """One deployment timeline: its phases, arms, seeds and the retraining rounds' settings."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    phases: list[Phase] = Field(min_length=1)
    arms: list[str] = Field(min_length=1)
    seeds: list[int] = Field(min_length=1)
    sessions_per_epoch: int = Field(SESSIONS_PER_EPOCH, ge=2, description="Players (one per trace) per epoch.")
    epochs_scale: float = Field(1.0, gt=0, description="Multiplies every phase's epochs (at least 1 each).")
    workers: int = Field(1, ge=1, description="(arm, seed) runs in parallel processes.")
    trace_root: str = str(DEFAULT_TRACE_ROOT)
    video: str = "builtin"
    model: str = Field(DEFAULT_MODEL, description="The starting model: a shipped model's name or a checkpoint folder.")
    retrain: RetrainConfig = Field(default_factory=default_retrain)
    recover_tolerance: float = Field(
        0.1, ge=0, description="QoE_lin (minus robustMPC's) below the previous visit's level still recovered."
    )
    device: str = Field("cpu", description="Where every round's fine-tuning learns: cpu, cuda or auto.")
    ray: str | None = Field(None, description="Rounds collect rollouts from Ray actors: 'local' or a cluster address.")
    ray_workers: int = Field(2, ge=1, description="With ray: rollout actors per round.")
    anchor: list[str] = Field(
        default_factory=lambda: list(ANCHOR_FOLDERS), min_length=1,
        description="Sources (folders of the trace root or generator specs) a +anchor arm's gate holds every "
        "version to the first one on, and a +rehearse arm draws a quarter of every round's pool from.",
    )  # fmt: skip

    @field_validator("arms")
    @classmethod
    def _known_arms(cls, arms: list[str]) -> list[str]:
        return parse_arms(",".join(arms))

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds) or min(seeds) < 0:
            raise ValueError("seeds must be distinct whole numbers >= 0")
        return seeds

    def timeline(self) -> list[Phase]:
        """The phases as run: each one's epochs times ``epochs_scale``, at least 1."""
        return [p.model_copy(update={"epochs": max(1, round(p.epochs * self.epochs_scale))}) for p in self.phases]

    def epochs(self) -> list[tuple[int, Phase]]:
        """(phase index, phase) of every epoch, in order."""
        return [(index, phase) for index, phase in enumerate(self.timeline()) for _ in range(phase.epochs)]

    def run_settings(self, arm: Arm, seed: int) -> dict[str, Any]:
        """What one (arm, seed) run's outcome depends on: a kept record must have the same."""
        return {
            "arm": arm.name, "seed": seed, "phases": [p.model_dump() for p in self.timeline()],
            "sessions_per_epoch": self.sessions_per_epoch, "trace_root": self.trace_root, "video": self.video,
            "model": self.model, "retrain": self.retrain.model_dump(mode="json") if arm.learns else None,
        } | ({"anchor": self.anchor} if arm.anchor or arm.rehearse else {})  # fmt: skip

    def anchor_sources(self) -> list[str]:
        """The anchor as `traces.sources.resolve` reads it (folders under the trace root)."""
        root = Path(self.trace_root)
        return [s if is_generator_spec(s) else str(root / s) for s in self.anchor]


# --------------------------------------------------------------------------- input


def model_dir(model: str) -> Path:
    """The starting checkpoint's folder."""
    return model_folder(model)


def load_source(source: str, trace_root: Path) -> list[Trace]:
    """A phase's traces: a generator spec, or a folder of ``trace_root`` (optionally with an ``@`` suffix)."""
    if is_generator_spec(source):
        return resolve(source)
    if not trace_root.is_dir():
        raise ValueError(
            f"trace root {trace_root} not found: the phase source {source!r} is a folder of it (give --trace-root, "
            "or generator sources such as markov:n=60,seed=11)"
        )
    folder = trace_root / source.split("@", 1)[0]
    if not folder.exists():
        raise ValueError(f"phase source {source!r}: no {folder} in the trace root {trace_root}")
    return resolve(str(trace_root / source))


def check_sources(config: AdaptConfig) -> dict[str, int]:
    """Load every phase's source once; the number of traces of each. ValueError if one cannot fill an epoch."""
    sizes: dict[str, int] = {}
    for phase in config.timeline():
        if phase.source not in sizes:
            sizes[phase.source] = len(load_source(phase.source, Path(config.trace_root)))
        if sizes[phase.source] < config.sessions_per_epoch:
            raise ValueError(f"phase {phase.name}: {phase.source} has {sizes[phase.source]} traces, fewer than the "
                             f"{config.sessions_per_epoch} sessions of an epoch")  # fmt: skip
    if any(parse_arm(a).anchor or parse_arm(a).rehearse for a in config.arms):
        for source in config.anchor:
            try:
                load_source(source, Path(config.trace_root))
            except ValueError as err:
                raise ValueError(f"--anchor {source!r}: {err}") from None
    if config.sessions_per_epoch < config.retrain.min_traces:
        raise ValueError(f"{config.sessions_per_epoch} sessions per epoch: a round needs {config.retrain.min_traces}")
    return sizes


class SessionDraws:
    """Each epoch's sessions: drawn from its phase's source, among the traces this run has not streamed yet."""

    def __init__(self, trace_root: Path) -> None:
        self.trace_root = trace_root
        self.pools: dict[str, list[Trace]] = {}
        self.used: dict[str, set[int]] = {}

    def draw(self, source: str, n: int, seed: int, epoch: int) -> tuple[list[Trace], bool]:
        """``n`` traces of ``source`` for ``epoch``, and whether its unseen traces ran out (then all are eligible)."""
        if source not in self.pools:
            self.pools[source] = load_source(source, self.trace_root)
        pool, used = self.pools[source], self.used.setdefault(source, set())
        fresh = [i for i in range(len(pool)) if i not in used]
        cycled = len(fresh) < n
        if cycled:
            used.clear()
            fresh = list(range(len(pool)))
        rng = np.random.default_rng([seed, seeding.TIMELINE_SESSIONS, epoch])
        chosen = [fresh[int(i)] for i in np.sort(rng.choice(len(fresh), size=n, replace=False))]
        used.update(chosen)
        return [pool[i] for i in chosen], cycled


# --------------------------------------------------------------------------- one (arm, seed) run


def round_config(config: AdaptConfig, arm: Arm, seed: int, epoch: int, window_s: float) -> RetrainConfig:
    """The round after ``epoch``: that epoch's telemetry, the arm's method and extras, a PPO seed per round.

    The method diagnoses every ``updates`` updates, so the diagnostics recorded are the candidate's own.
    """
    base = config.retrain
    plasticity = parse_plasticity({"method": arm.method, "diagnose_every_updates": base.updates})
    return base.model_copy(update={
        "window_s": window_s, "replay": TELEMETRY if arm.replay else None,
        "reference": TELEMETRY if arm.reference else None, "plasticity": plasticity, "continual": arm.continual,
        "revert_versions": REVERT_VERSIONS if arm.revert else 0,
        "anchor": config.anchor_sources() if arm.anchor else [],
        "rehearsal": config.anchor_sources() if arm.rehearse else [],
        "ppo": base.ppo.model_copy(update={"seed": seeding.stream_seed(seeding.TIMELINE_ROUND, seed, epoch)}),
    })  # fmt: skip


def telemetry_rows(db: Path) -> int:
    """Chunk reports in the telemetry database so far (0 before the server has written any)."""
    if not db.is_file():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            return int(con.execute("SELECT COUNT(*) FROM chunks").fetchone()[0])
    except sqlite3.Error:
        return 0


def wait_for_telemetry(db: Path, rows: int, timeout_s: float = TELEMETRY_WAIT_S) -> int:
    """Wait until the server has moved ``rows`` reports into ``db`` (it does so every flush interval)."""
    deadline = time.monotonic() + timeout_s
    found = telemetry_rows(db)
    while found < rows and time.monotonic() < deadline:
        time.sleep(TELEMETRY_POLL_S)
        found = telemetry_rows(db)
    return found


def _round_row(result: RoundResult) -> dict[str, Any]:
    hold = result.scores.get("holdout", {})
    return {
        "status": result.status, "reason": result.reason, "parent": result.parent, "version": result.version,
        "gain": hold["candidate"] - hold["deployed"] if hold else None, "scores": result.scores,
        "traces": result.traces, "wall_s": result.wall_s, "diagnostics": result.diagnostics,
        "diagnosed_update": result.diagnosed_update, "neurons_reset": result.neurons_reset,
        "trainer_update": result.trainer_update, "resynced": result.resynced, "reverted_to": result.reverted_to,
    }  # fmt: skip


def run_arm(
    config: AdaptConfig, arm_name: str, seed: int, on_epoch: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """One arm at one seed through the whole timeline, through its own live server; its record."""
    from policy.learning.ppo import resolve_device
    from simulator.video import load_video

    arm = parse_arm(arm_name)
    video = load_video(config.video)
    learn_on = resolve_device(config.device)
    ray_workers = 0
    if config.ray is not None and arm.learns:
        from policy.cluster import connect

        connect(config.ray)
        ray_workers = config.ray_workers
    draws = SessionDraws(Path(config.trace_root))
    timeline = config.epochs()
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="abr-adapt-") as tmp_name:
        tmp = Path(tmp_name)
        models, db = tmp / "models", tmp / "telemetry.sqlite"
        shutil.copytree(model_dir(config.model), models / FIRST_VERSION)
        settings: dict[str, object] = {"models_dir": str(models), "telemetry_db": str(db), "video": config.video,
                                       "watch_interval_s": WATCH_INTERVAL_S, "torch_threads": 1}  # fmt: skip
        if arm.name == ROBUSTMPC:
            settings["policy"] = ROBUSTMPC
        reported = 0
        refused: Path | None = None
        with local_server(settings=settings, log_path=tmp / "server.log") as (url, _proc):
            for epoch, (index, phase) in enumerate(timeline):
                traces, cycled = draws.draw(phase.source, config.sessions_per_epoch, seed, epoch)
                epoch_started_s, at_s = time.time(), time.perf_counter() - started
                served = ROBUSTMPC if arm.name == ROBUSTMPC else served_model_version(url)
                refused_check = None
                if refused is not None:  # last round's refused candidate against what stayed deployed, here
                    refused_check = _check_refusal(refused, models / str(served), traces, video)
                    refused = None
                fleet = stream_through_server(url, traces, video)
                scores = fleet.player_scores()
                reported += sum(len(p.quality) for p in fleet.players)
                row: dict[str, Any] = {
                    "epoch": epoch, "phase": index, "name": phase.name, "source": phase.source, "served": served,
                    "qoe": float(np.nanmean(scores)), "session_qoe": [float(s) for s in scores],
                    "sessions": [t.name for t in traces], "cycled": cycled, "started_s": at_s,
                    "stream_s": time.perf_counter() - started - at_s,
                }  # fmt: skip
                if refused_check is not None:
                    row["refused_check"] = refused_check
                if arm.learns and epoch < len(timeline) - 1:
                    wait_for_telemetry(db, reported)
                    now_s = time.time()
                    cfg = round_config(config, arm, seed, epoch, max(now_s - epoch_started_s, 1e-3))
                    result = retrain_once(db, models, tmp / "work", video, cfg, now_s=now_s, ray_workers=ray_workers,
                                          device=learn_on, candidate_dir=tmp / "candidate")  # fmt: skip
                    if result.status == "rejected":
                        refused = tmp / "candidate"
                    if result.version is not None:
                        now_serving = wait_for_model_version(url, result.version, SWAP_WAIT_S)
                        if now_serving != result.version:
                            raise RuntimeError(f"the server still serves {now_serving} {SWAP_WAIT_S:.0f} s after "
                                               f"{result.version} was published")  # fmt: skip
                    row["round"] = _round_row(result)
                rows.append(row)
                if on_epoch is not None:
                    on_epoch({"arm": arm.name, "seed": seed, **row})
    return {"arm": arm.name, "seed": seed, "settings": config.run_settings(arm, seed), "epochs": rows,
            "wall_s": time.perf_counter() - started, "device": str(learn_on),
            "trainer": f"ray x{ray_workers}" if ray_workers else "local"}  # fmt: skip


def _check_refusal(candidate: Path, deployed: Path, traces: list[Trace], video: Video) -> dict[str, float]:
    """Mean QoE_lin of a refused candidate and of the deployed version on ``traces``, in the simulator."""
    from policy.evaluation.loop import run_policy

    return {name: float(run_policy(make_policy(f"checkpoint:{folder}"), traces, video).scores().mean())
            for name, folder in (("candidate", candidate), ("deployed", deployed))}  # fmt: skip


def _job(config_json: str, arm: str, seed: int, path: str) -> str:
    """One (arm, seed) run in a worker process; writes its record, returns its path."""
    import torch

    torch.set_num_threads(1)
    record = run_arm(AdaptConfig.model_validate_json(config_json), arm, seed)
    write_atomic(Path(path), json.dumps(record).encode())
    return path


def record_path(out: Path, arm: str, seed: int) -> Path:
    """Where the record of (``arm``, ``seed``) lives in the output folder ``out``."""
    return out / RUNS_DIR / f"{arm}-seed{seed}.json"


def _kept(path: Path, settings: dict[str, Any]) -> bool:
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if not isinstance(record, dict) or not isinstance(record.get("settings"), dict) or not record.get("epochs"):
        return False
    return _as_now(record["settings"]) == settings


def _as_now(settings: dict[str, Any]) -> dict[str, Any] | None:
    """A record's settings as this version writes them: retrain settings it did not have take their defaults."""
    retrain = settings.get("retrain")
    if retrain is None:
        return settings
    try:
        return settings | {"retrain": RetrainConfig.model_validate(retrain).model_dump(mode="json")}
    except ValueError:
        return None


def run_adapt(config: AdaptConfig, out: Path, on_done: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Run (or resume) every (arm, seed); the records in arm, then seed order.

    Records whose settings match are kept. With one worker the runs go in this process, one after another;
    else in that many spawned processes (one torch thread each, each with its own server).
    """
    (out / RUNS_DIR).mkdir(parents=True, exist_ok=True)
    settings_json = json.loads(config.model_dump_json())
    jobs: list[tuple[str, int, Path]] = []
    for seed in config.seeds:  # seed-major: a run stopped part-way has every arm at the seeds it finished
        for arm in config.arms:
            path = record_path(out, arm, seed)
            if _kept(path, json.loads(json.dumps(config.run_settings(parse_arm(arm), seed)))):
                if on_done is not None:
                    on_done(f"{path.name} (kept)")
                continue
            jobs.append((arm, seed, path))
    workers = min(config.workers, len(jobs), os.cpu_count() or 1)
    if workers <= 1:
        for arm, seed, path in jobs:
            write_atomic(path, json.dumps(run_arm(config, arm, seed)).encode())
            if on_done is not None:
                on_done(path.name)
    elif jobs:
        if config.ray == "local":  # one local Ray instance for every worker process, started here
            from policy.cluster import connect, ray_module

            connect("local")
            settings_json["ray"] = ray_module().get_runtime_context().gcs_address
        config_json = json.dumps(settings_json)
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(_job, config_json, arm, seed, str(path)) for arm, seed, path in jobs]
            for future in as_completed(futures):
                done = future.result()
                if on_done is not None:
                    on_done(Path(done).name)
    return [json.loads(record_path(out, arm, seed).read_text()) for arm in config.arms for seed in config.seeds]


# --------------------------------------------------------------------------- statistics


def _stats(values: list[float]) -> dict[str, Any]:
    mean, half = mean_ci95(values) if values else (float("nan"), float("nan"))
    return {"mean": mean, "ci95": half, "n": len(values)}


def _first_above(rows: list[dict[str, Any]], levels: list[float], span: range, *, strict: bool) -> int | None:
    """The first epoch of ``span`` whose QoE is above ``levels[epoch]`` (or equal to it, unless ``strict``)."""
    for epoch in span:
        qoe = rows[epoch]["qoe"]
        if qoe > levels[epoch] or (not strict and qoe >= levels[epoch]):
            return epoch
    return None


def _shift_epochs(phases: list[Phase]) -> list[tuple[int, range]]:
    """(phase index, its epochs) of every phase after the first."""
    spans, start = [], 0
    for index, phase in enumerate(phases):
        if index:
            spans.append((index, range(start, start + phase.epochs)))
        start += phase.epochs
    return spans


def _previous_visit(phases: list[Phase], index: int) -> int | None:
    """The latest earlier phase on the same source as phase ``index`` (None: not a return)."""
    return next((j for j in range(index - 1, -1, -1) if phases[j].source == phases[index].source), None)


def _phase_range(phases: list[Phase], index: int) -> range:
    start = sum(p.epochs for p in phases[:index])
    return range(start, start + phases[index].epochs)


def summarise(records: list[dict[str, Any]], config: AdaptConfig) -> dict[str, Any]:
    """Per arm: QoE per epoch over seeds, versions and refusals, time to adapt after shifts, recovery after returns."""
    phases = config.timeline()
    timeline = config.epochs()
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {}
    for record in records:
        runs.setdefault(record["arm"], {})[record["seed"]] = record["epochs"]
    yardstick = runs.get(ROBUSTMPC, {})
    shifts = _shift_epochs(phases)
    first_shift = shifts[0][1].start if shifts else 0
    out: dict[str, Any] = {
        "epochs": [{"epoch": e, "phase": i, "name": p.name, "source": p.source} for e, (i, p) in enumerate(timeline)],
        "phases": [p.model_dump() for p in phases], "arms": {},
    }  # fmt: skip
    for arm, by_seed in runs.items():
        seeds = sorted(by_seed)
        per_epoch = []
        for e in range(len(timeline)):
            qoe = [by_seed[s][e]["qoe"] for s in seeds]
            rounds = [by_seed[s][e]["round"] for s in seeds if "round" in by_seed[s][e]]
            diag = {k: [r["diagnostics"][k] for r in rounds if k in r["diagnostics"]] for k in SILENT_KEYS}
            per_epoch.append({
                "qoe": {**_stats(qoe), "min": min(qoe), "max": max(qoe), "per_seed": qoe},
                "rounds": len(rounds), "published": sum(r["status"] == "published" for r in rounds),
                "refused": sum(r["status"] == "rejected" for r in rounds),
                "reverted": sum(r["status"] == "reverted" for r in rounds),
                "no_data": sum(r["status"] == "no-data" for r in rounds),
                "round_s": float(np.mean([r["wall_s"] for r in rounds])) if rounds else None,
                "diagnostics": {k: float(np.mean(v)) for k, v in diag.items() if v},
            })  # fmt: skip

        after_first = [float(np.mean([r["qoe"] for r in by_seed[s][first_shift:]])) for s in seeds]
        summary: dict[str, Any] = {
            "seeds": seeds, "epochs": per_epoch, "qoe_after_first_shift": _stats(after_first),
            "worst_epoch_qoe": min(r["qoe"] for s in seeds for r in by_seed[s]),
            "published": _stats([_count(by_seed[s], "published") for s in seeds]),
            "refused": _stats([_count(by_seed[s], "rejected") for s in seeds]),
            "reverted": _stats([_count(by_seed[s], "reverted") for s in seeds]),
            "refusals_checked": _refusal_checks(by_seed, seeds),
            "wall_s": _stats([by_seed[s][-1]["started_s"] + by_seed[s][-1]["stream_s"] for s in seeds]),
            "time_to_adapt": [], "recovery": [],
        }  # fmt: skip
        if arm != ROBUSTMPC and yardstick:
            for index, span in shifts:
                rounds_, wall = [], []
                beaten = [s for s in seeds if s in yardstick]
                for s in beaten:
                    rows = by_seed[s]
                    beats = _first_above(rows, [r["qoe"] for r in yardstick[s]], span, strict=True)
                    if beats is not None:
                        rounds_.append(float(beats - span.start))
                        wall.append(rows[beats]["started_s"] - rows[span.start]["started_s"])
                summary["time_to_adapt"].append({
                    "phase": index, "name": phases[index].name, "epoch": span.start, "seeds": len(beaten),
                    "adapted": len(rounds_), "rounds": _stats(rounds_), "wall_s": _stats(wall),
                })  # fmt: skip
        for index, span in shifts:
            before = _previous_visit(phases, index)
            if before is None or arm == ROBUSTMPC:
                continue
            earlier = _phase_range(phases, before)
            tail = earlier[len(earlier) // 2 :]
            recovered, targets = [], []
            relative = all(s in yardstick for s in seeds)
            for s in seeds:
                # Against robustMPC on the same sessions when it ran: the sessions' own difficulty cancels out.
                level = [r["qoe"] - (yardstick[s][k]["qoe"] if relative else 0.0) for k, r in enumerate(by_seed[s])]
                target = float(np.mean([level[k] for k in tail])) - config.recover_tolerance
                targets.append(target)
                back = _first_above([{"qoe": v} for v in level], [target] * len(level), span, strict=False)
                if back is not None:
                    recovered.append(float(back - span.start))
            summary["recovery"].append({
                "phase": index, "name": phases[index].name, "epoch": span.start, "previous_phase": before,
                "relative_to": ROBUSTMPC if relative else None, "target": _stats(targets), "seeds": len(seeds),
                "recovered": len(recovered), "rounds": _stats(recovered),
            })  # fmt: skip
        out["arms"][arm] = summary
    return out


def _refusal_checks(by_seed: dict[int, list[dict[str, Any]]], seeds: list[int]) -> dict[str, Any]:
    """The gate's refusals checked on the next epoch's sessions: how often the refused candidate was better.

    A false refusal: the refused candidate scores above the version that stayed deployed on the sessions
    of the epoch after the refusal (both in the simulator).
    """
    gains = {s: [r["refused_check"]["candidate"] - r["refused_check"]["deployed"]
                 for r in by_seed[s] if "refused_check" in r] for s in seeds}  # fmt: skip
    checked = [s for s in seeds if gains[s]]
    return {
        "checked": sum(len(g) for g in gains.values()),
        "false": sum(sum(x > 0 for x in g) for g in gains.values()),
        "false_rate": _stats([float(np.mean([x > 0 for x in gains[s]])) for s in checked]),
        "gain": _stats([float(np.mean(gains[s])) for s in checked]),
    }


def _count(rows: list[dict[str, Any]], status: str) -> float:
    """Rounds of one run that ended with ``status``."""
    return float(sum(r.get("round", {}).get("status") == status for r in rows))


# --------------------------------------------------------------------------- outputs


def _events_table(
    title: str, note: str, kind: str, arms: list[str], events: list[dict[str, Any]], cell: Callable[[str, int], str]
) -> list[str]:
    """A report section with one row per event (a shift or a return) and one column per arm."""
    if not events:
        return []
    lines = ["", f"## {title}", "", note, "", f"| {kind} (epoch) | " + " | ".join(arms) + " |",
             "|---|" + "---|" * len(arms)]  # fmt: skip
    for k, event in enumerate(events):
        lines.append(f"| to {event['name']} ({event['epoch']}) | " + " | ".join(cell(arm, k) for arm in arms) + " |")
    return lines


def _cell(stats: dict[str, Any], digits: int = 3) -> str:
    mean, half = stats["mean"], stats["ci95"]
    if not np.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f}" + (f" ± {half:.{digits}f}" if np.isfinite(half) else "")


def _plots(summary: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = summary["epochs"]
    xs = np.arange(len(epochs))
    starts = [e["epoch"] for k, e in enumerate(epochs) if k and e["phase"] != epochs[k - 1]["phase"]]

    def phases_on(ax: Any, *, names: bool = True) -> None:
        ax.set_xlim(-0.5, len(epochs) - 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        for start in starts:
            ax.axvline(start - 0.5, color="grey", ls=":", lw=0.8)
        for phase in sorted({e["phase"] for e in epochs}) if names else ():
            inside = [e["epoch"] for e in epochs if e["phase"] == phase]
            ax.text(np.mean(inside), 1.01, epochs[inside[0]]["name"], transform=ax.get_xaxis_transform(),
                    ha="center", va="bottom", fontsize=8)  # fmt: skip

    fig, ax = plt.subplots(figsize=(11, 4.5))
    for arm, stats in summary["arms"].items():
        mean = np.array([e["qoe"]["mean"] for e in stats["epochs"]])
        lo = np.array([e["qoe"]["min"] for e in stats["epochs"]])
        hi = np.array([e["qoe"]["max"] for e in stats["epochs"]])
        yardstick = arm == ROBUSTMPC
        (line,) = ax.plot(xs, mean, marker="o", ms=3, lw=1.2, label=arm, color="black" if yardstick else None,
                          ls="--" if yardstick else "-")  # fmt: skip
        if len(stats["seeds"]) > 1:
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15, lw=0)
    phases_on(ax)
    ax.set_xlabel("epoch (band: lowest to highest seed)")
    ax.set_ylabel("served QoE_lin, mean over seeds")
    ax.legend(fontsize=7)
    fig.tight_layout()
    write_atomic(out / QOE_PLOT, figure_png(fig))
    plt.close(fig)

    fig, axes = plt.subplots(len(SILENT_KEYS), 1, figsize=(11, 2.4 * len(SILENT_KEYS)), sharex=True)
    for ax, key in zip(axes, SILENT_KEYS, strict=True):
        for arm, stats in summary["arms"].items():
            ys = np.array([e["diagnostics"].get(key, np.nan) for e in stats["epochs"]])
            if np.isfinite(ys).any():
                ax.plot(xs, ys, marker=".", lw=1, label=arm)
        phases_on(ax, names=ax is axes[0])
        ax.set_ylabel(key.removeprefix("plasticity/"), fontsize=8)
    axes[0].legend(fontsize=7)
    axes[-1].set_xlabel("round after epoch (the round's candidate, mean over seeds)")
    fig.tight_layout()
    write_atomic(out / SILENT_PLOT, figure_png(fig))
    plt.close(fig)


def write_outputs(
    records: list[dict[str, Any]], config: AdaptConfig, out: Path, command: str
) -> tuple[dict[str, Any], Path]:
    """``results.json``, ``report.md`` and the two plots in ``out``; the summary and the report's path."""
    summary = summarise(records, config)
    results = {"command": command, "config": json.loads(config.model_dump_json()), "summary": summary,
               "runs": records}  # fmt: skip
    write_atomic(out / RESULTS_FILE, json.dumps(results, indent=1, allow_nan=True).encode())
    _plots(summary, out)
    report = out / REPORT_FILE
    write_atomic(report, _report(summary, config, command).encode())
    return summary, report


def _report(summary: dict[str, Any], config: AdaptConfig, command: str) -> str:
    arms = list(summary["arms"])
    retrain = config.retrain
    lines = [
        "# Deployment timeline: served QoE as the network changes",
        "",
        f"Command: `{command}`",
        "",
        f"Seeds {', '.join(map(str, config.seeds))}; {config.sessions_per_epoch} fresh sessions per epoch (one player "
        f"per trace, the same for every arm at a seed). Loop arms: one round after every epoch but the last, "
        f"{retrain.updates} PPO updates of {retrain.ppo.batch_size} steps at lr {retrain.ppo.learning_rate:g}, "
        f"gate margin {retrain.margin:g} on a quarter of the epoch's sessions held out ({retrain.holdout}).",
        "",
        "| phase | network | epochs |",
        "|---|---|---:|",
        *(f"| {p['name']} | `{p['source']}` | {p['epochs']} |" for p in summary["phases"]),
        "",
        "## Summary per arm",
        "",
        "| arm | mean QoE from the first shift on (±95%) | worst epoch of any seed | versions published per run "
        "| gate refusals per run | reverts per run |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for arm in arms:
        s = summary["arms"][arm]
        lines.append(f"| {arm} | {_cell(s['qoe_after_first_shift'])} | {s['worst_epoch_qoe']:.3f} "
                     f"| {_cell(s['published'], 1)} | {_cell(s['refused'], 1)} "
                     f"| {_cell(s['reverted'], 1)} |")  # fmt: skip
    learned = [a for a in arms if a != ROBUSTMPC]
    if ROBUSTMPC in summary["arms"] and learned:

        def adapted(arm: str, k: int) -> str:
            t = summary["arms"][arm]["time_to_adapt"][k]
            took = f"{_cell(t['rounds'], 1)} rounds, {_cell(t['wall_s'], 0)} s"
            return f"{took} ({t['adapted']}/{t['seeds']})" if t["adapted"] else f"not within the phase (0/{t['seeds']})"

        lines += _events_table(
            "Time to adapt: rounds (and wall time) from a shift until the served policy beats robustMPC",
            "On the same sessions; 0: already at the shift's first epoch; (k/n): seeds that got there within the "
            "phase (mean over those).",
            "shift", learned, summary["arms"][learned[0]]["time_to_adapt"], adapted,
        )  # fmt: skip
    returns = [a for a in arms if summary["arms"][a]["recovery"]]
    if returns:

        def recovered(arm: str, k: int) -> str:
            r = summary["arms"][arm]["recovery"][k]
            return f"{_cell(r['rounds'], 1)} ({r['recovered']}/{r['seeds']})" if r["recovered"] else (
                f"not within the phase (0/{r['seeds']})")  # fmt: skip

        lines += _events_table(
            f"Recovery after a return: rounds until QoE is back within {config.recover_tolerance:g} of the mean "
            "over the last half of the previous visit",
            "QoE minus robustMPC's on the same sessions where robustMPC ran at every seed, else QoE itself; "
            "(k/n): seeds that got there within the phase (mean over those).",
            "return", returns, summary["arms"][returns[0]]["recovery"], recovered,
        )  # fmt: skip
    checked = [a for a in arms if summary["arms"][a].get("refusals_checked", {}).get("checked")]
    if checked:
        lines += ["", "## Gate refusals checked on the next epoch's sessions", "",
                  "Each refused candidate against the version that stayed deployed, on the sessions of the epoch "
                  "after the refusal (in the simulator). A false refusal: the candidate scored higher there. Rates "
                  "and gains: mean over seeds ± 95%.", "",
                  "| arm | refusals checked | false refusals | false-refusal rate | refused candidate minus deployed |",
                  "|---|---:|---:|---:|---:|"]  # fmt: skip
        for arm in checked:
            c = summary["arms"][arm]["refusals_checked"]
            lines.append(
                f"| {arm} | {c['checked']} | {c['false']} | {_cell(c['false_rate'], 2)} | {_cell(c['gain'])} |"
            )
    lines += [
        "",
        "## Served QoE per epoch (mean over seeds ± 95%; * a version was published after it, "
        "r a candidate refused, < an earlier version published again; silent ratio of the round's candidate in "
        "brackets)",
        "",
        "| epoch | phase | " + " | ".join(arms) + " |",
        "|---:|---|" + "---:|" * len(arms),
    ]
    for e, epoch in enumerate(summary["epochs"]):
        cells = []
        for arm in arms:
            row = summary["arms"][arm]["epochs"][e]
            marks = "*" * bool(row["published"]) + "r" * bool(row["refused"]) + "<" * bool(row["reverted"])
            silent = row["diagnostics"].get(DIAGNOSED_KEY)
            cells.append(_cell(row["qoe"]) + marks + (f" [{silent:.2f}]" if silent is not None else ""))
        lines.append(f"| {e} | {epoch['name']} | " + " | ".join(cells) + " |")
    lines += ["", f"![QoE per epoch]({QOE_PLOT})", "", f"![Silent ratios per round]({SILENT_PLOT})", ""]
    return "\n".join(lines)
