"""The plasticity benchmark: every method x every seed through one schedule, then statistics and plots.

Each (method, seed) run is a separate process (one torch thread each) and writes its record to
``OUT/runs/METHOD-seedS.json`` atomically, so an interrupted benchmark resumes where it stopped (runs whose
settings match are not repeated). `aggregate` turns the records into per-method statistics with 95%
t-intervals over seeds; `write_report` writes ``results.json``, ``report.md`` and the plots.
"""

from __future__ import annotations

import json
import os
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
from plasticity.config import CONFIG_CLASSES, MethodConfig, ResetterConfig, config_class, parse_plasticity
from plasticity.continual import eventual_level, recovery_steps, run_schedule
from plasticity.schedules import Schedule
from policy.learning.config import PPOConfig
from simulator.video import Video

DIAGNOSTICS_PLOTTED = ("plasticity/silent_ratio", "plasticity/dormant_ratio", "plasticity/grad_silent_ratio",
                       "plasticity/effective_rank")  # fmt: skip


class BenchConfig(BaseModel):
    """What one benchmark runs (recorded in its results)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    methods: list[str] = Field(default_factory=lambda: ["none", "reset", "redo", "shrink-perturb", "cbp", "resin"])
    seeds: int = Field(5, ge=1)
    scale: float = Field(1.0, gt=0, description="Multiplies every phase's steps.")
    workers: int = Field(2, ge=1)
    trace_root: str = str(DEFAULT_TRACE_ROOT)
    ppo: PPOConfig = Field(default_factory=PPOConfig)
    plasticity: dict[str, Any] = Field(
        default_factory=dict,
        description="Plasticity fields given to every method whose config has them (e.g. diagnose_every_updates, "
        "batch_size, tau_forward, every_updates); the others ignore them.",
    )
    method_overrides: dict[str, dict[str, Any]] = Field(default_factory=dict, description="Per-method fields.")
    phase_jitter: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="Each phase's steps times a factor drawn from U(1 - j, 1 + j), per seed and the same for every "
        "method at that seed: shifts come at times no fixed period can match (0: the schedule as written; "
        "None: the schedule's own `phase_jitter`).",
    )

    @field_validator("plasticity")
    @classmethod
    def _shared_fields_exist(cls, fields: dict[str, Any]) -> dict[str, Any]:
        # ``method`` is each run's own (results written before the per-method configs held one here).
        fields = {k: v for k, v in fields.items() if k != "method"}
        known = {name for config in CONFIG_CLASSES.values() for name in config.model_fields}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(f"no plasticity method has the field(s) {', '.join(unknown)}")
        return fields

    def jitter(self, schedule: Schedule) -> float:
        """The phase jitter this benchmark applies to ``schedule``."""
        return schedule.phase_jitter if self.phase_jitter is None else self.phase_jitter

    def seed_schedule(self, schedule: Schedule, seed: int) -> Schedule:
        """``schedule`` as run with ``seed``: phase lengths jittered (unchanged at 0); the jitter is applied."""
        jitter = self.jitter(schedule)
        applied = schedule.model_copy(update={"phase_jitter": 0.0})
        if jitter == 0:
            return applied
        rng = np.random.default_rng([seed, seeding.PHASE_JITTER])
        factors = rng.uniform(1 - jitter, 1 + jitter, size=len(schedule.phases))
        phases = [p.model_copy(update={"steps": max(1, round(p.steps * f))})
                  for p, f in zip(schedule.phases, factors, strict=True)]  # fmt: skip
        return applied.model_copy(update={"phases": phases})

    def method_config(self, method: str, seed: int) -> MethodConfig:
        """The plasticity settings of ``method`` in run ``seed``: the shared fields it has, then its overrides."""
        own = config_class(method).model_fields
        shared = {k: v for k, v in self.plasticity.items() if k in own}
        return parse_plasticity({**shared, **self.method_overrides.get(method, {}), "method": method, "seed": seed})


def _job_record(args: tuple[dict[str, Any], dict[str, Any], str, float, str, Video, str]) -> dict[str, Any]:
    """One (method, seed) run (in a worker process or a Ray task); its record."""
    schedule_json, plasticity_json, ppo_json, scale, trace_root, video, _path = args
    import torch

    torch.set_num_threads(1)
    return run_schedule(
        Schedule.model_validate(schedule_json),
        parse_plasticity(plasticity_json),
        PPOConfig.model_validate_json(ppo_json),
        video,
        scale=scale,
        trace_root=Path(trace_root),
    )


def _job(args: tuple[dict[str, Any], dict[str, Any], str, float, str, Video, str]) -> str:
    """One (method, seed) run in a worker process; writes its record, returns its path."""
    write_atomic(Path(args[-1]), json.dumps(_job_record(args)).encode())
    return args[-1]


#: Settings added after records were first written: (the value older records ran with, the methods that use it).
#: A record without the field still matches a run of a method the field does not change.
LATER_SETTINGS: dict[str, tuple[object, frozenset[str]]] = {
    "futile_backoff": (0, frozenset({"redo", "resin"})),
    "collapse_scope": ("all", frozenset({"resin"})),
    "shift_ratio": (0.0, frozenset({"resin"})),
    "neuron_reference": ("history", frozenset({"resin"})),
    "shift_window_updates": (0, frozenset({"resin"})),
}


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` as it ran: its method's fields only, later settings filled in as older records ran them.

    Records written before the per-method configs hold every method's fields; those of other methods never
    changed the run, so they are left out whatever their value (a bench whose shared settings set one still
    resumes). The check cadence is compared as the number it ran with (older records hold the number,
    newer ones may hold None for the method's own).
    """
    try:
        kind = config_class(config.get("method"))
    except ValueError:
        return dict(config)
    out = {k: v for k, v in config.items() if k in kind.model_fields}
    if issubclass(kind, ResetterConfig):
        out["every_updates"] = kind.model_construct(**out).check_every_updates
    for name, (legacy, methods) in LATER_SETTINGS.items():
        if config.get("method") in methods:
            out.setdefault(name, legacy)
        else:
            out.pop(name, None)
    return out


def _matches(path: Path, plasticity: MethodConfig, scale: float, schedule: Schedule) -> bool:
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return bool(
        isinstance(record.get("plasticity"), dict)
        and _comparable(record["plasticity"]) == _comparable(plasticity.model_dump())
        and record.get("scale") == scale
        and _without_zero_jitter(record.get("schedule")) == _without_zero_jitter(schedule.model_dump())
    )


def _without_zero_jitter(schedule: Any) -> Any:
    """A schedule record as compared on resume (records written before schedules had a jitter field match)."""
    if isinstance(schedule, dict) and schedule.get("phase_jitter") == 0:
        return {k: v for k, v in schedule.items() if k != "phase_jitter"}
    return schedule


def run_bench(
    schedule: Schedule,
    config: BenchConfig,
    video: Video,
    out: Path,
    on_done: Callable[[str], None] | None = None,
    *,
    ray: str | None = None,
) -> list[dict[str, Any]]:
    """Run (or resume) every (method, seed) pair; return the records in method, seed order.

    ``ray`` (``local`` or a cluster address) runs each pair as a Ray task instead of a local process;
    records come back to this process, which writes them (nodes need the traces at ``trace_root``).
    """
    runs_dir = out / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    jobs, paths = [], []
    # Seed-major order: a bench stopped part-way has every method at the seeds it finished.
    for seed in range(1, config.seeds + 1):
        seeded = config.seed_schedule(schedule, seed)
        for method in config.methods:
            plasticity = config.method_config(method, seed)
            path = runs_dir / f"{method}-seed{seed}.json"
            paths.append(path)
            if _matches(path, plasticity, config.scale, seeded):
                if on_done is not None:
                    on_done(f"{path.name} (kept)")
                continue
            ppo = config.ppo.model_copy(update={"seed": seed, "torch_threads": 1})
            jobs.append((seeded.model_dump(), plasticity.model_dump(), ppo.model_dump_json(), config.scale,
                         config.trace_root, video, str(path)))  # fmt: skip
    if jobs and ray is not None:
        _run_on_ray(ray, jobs, on_done)
    elif jobs:
        workers = min(config.workers, len(jobs), os.cpu_count() or 1)
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(_job, job) for job in jobs]
            for future in as_completed(futures):
                done = future.result()
                if on_done is not None:
                    on_done(Path(done).name)
    return [json.loads(paths[s * len(config.methods) + m].read_text())
            for m in range(len(config.methods)) for s in range(config.seeds)]  # fmt: skip


def _run_on_ray(address: str, jobs: list[Any], on_done: Callable[[str], None] | None) -> None:
    from policy.cluster import connect, ray_module

    connect(address)
    ray_ = ray_module()
    remote = ray_.remote(num_cpus=1)(_job_record)
    pending = {remote.remote(job): job[-1] for job in jobs}
    while pending:
        done, _ = ray_.wait(list(pending), num_returns=1)
        for ref in done:
            path = pending.pop(ref)
            write_atomic(Path(path), json.dumps(ray_.get(ref)).encode())
            if on_done is not None:
                on_done(Path(path).name)


# --------------------------------------------------------------------------- statistics


def _phase_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Per phase of one run: mean eval QoE/bitrate on its own family, recovery steps, first-eval bitrate."""
    starts = record["phase_start_steps"]
    total = record["total_steps"]
    updates = [u for u in record["updates"] if "charts/qoe" in u]
    steps = np.array([u["global_step"] for u in updates])
    qoe = np.array([u["charts/qoe"] for u in updates])
    rows = []
    for index, phase in enumerate(record["schedule"]["phases"]):
        family = phase["family"]
        evals = [e for e in record["evals"] if e["phase"] == index]
        own = [e["scores"][family] for e in evals]
        end = starts[index + 1] if index + 1 < len(starts) else total
        inside = (steps > starts[index]) & (steps <= end)
        rows.append({
            "phase": index, "family": family,
            "qoe": float(np.mean([s["qoe"] for s in own])),
            "final_qoe": own[-1]["qoe"],
            "bitrate_kbps": float(np.mean([s["bitrate_kbps"] for s in own])),
            "first_bitrate_kbps": own[0]["bitrate_kbps"],
            "recovery_steps": recovery_steps(steps[inside] - starts[index], qoe[inside]),
            "eventual_level": eventual_level(qoe[inside]) if inside.any() else float("nan"),
            "_series": (steps[inside] - starts[index], qoe[inside]),
            "forgetting": {f: s["qoe"] for f, s in evals[-1]["scores"].items() if f != family},
        })  # fmt: skip
    return rows


def aggregate(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-method statistics over seeds: phase QoE, post-shift QoE, recovery, bitrate; mean curves."""
    by_method: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_method.setdefault(record["plasticity"]["method"], []).append(record)
    phases = records[0]["schedule"]["phases"]
    out: dict[str, Any] = {"methods": {}, "phases": [p["family"] for p in phases]}
    all_rows = {method: [_phase_rows(r) for r in runs] for method, runs in by_method.items()}
    # The level a phase can reach: the best method's mean eventual training QoE in it.
    best = [max(float(np.mean([r[i]["eventual_level"] for r in rows])) for rows in all_rows.values())
            for i in range(len(phases))]  # fmt: skip
    out["best_level"] = best
    for rows in all_rows.values():
        for r in rows:
            for i, row in enumerate(r):
                steps_in, qoe_in = row.pop("_series")
                row["recovery_to_best_steps"] = recovery_steps(steps_in, qoe_in, level=best[i])
    for method, runs in by_method.items():
        rows = all_rows[method]
        per_phase = []
        for index in range(len(phases)):
            stats = {}
            for key in ("qoe", "final_qoe", "bitrate_kbps", "first_bitrate_kbps", "recovery_steps",
                        "recovery_to_best_steps"):  # fmt: skip
                mean, half = mean_ci95([r[index][key] for r in rows])
                stats[key] = {"mean": mean, "ci95": half}
            per_phase.append(stats)
        post_shift = (
            [float(np.mean([r[i]["qoe"] for i in range(1, len(phases))])) for r in rows]
            if len(phases) > 1
            else [r[0]["qoe"] for r in rows]
        )
        mean, half = mean_ci95(post_shift)
        curves: dict[str, Any] = {}
        for key in ("charts/qoe", *DIAGNOSTICS_PLOTTED):
            series = [[(u["global_step"], u[key]) for u in r["updates"] if key in u] for r in runs]
            length = min(len(s) for s in series)
            if length:
                curves[key] = {
                    "step": [p[0] for p in series[0][:length]],
                    "mean": np.mean([[p[1] for p in s[:length]] for s in series], axis=0).tolist(),
                }
        out["methods"][method] = {
            "seeds": len(runs),
            "post_shift_qoe": {"mean": mean, "ci95": half, "per_seed": post_shift},
            "phases": per_phase,
            "wall_s": float(np.mean([r["wall_s"] for r in runs])),
            "curves": curves,
            "phase_start_steps": runs[0]["phase_start_steps"],
        }
    return out


def bitrate_ratio(summary: dict[str, Any], method: str = "resin", baseline: str = "none") -> float | None:
    """Mean bitrate ratio ``method / baseline`` in the first high-bandwidth phase after a low one."""
    families = summary["phases"]
    methods = summary["methods"]
    if method not in methods or baseline not in methods:
        return None
    for index in range(1, len(families)):
        if families[index] == "high" and families[index - 1] in ("low", "3g"):
            a = methods[method]["phases"][index]["bitrate_kbps"]["mean"]
            b = methods[baseline]["phases"][index]["bitrate_kbps"]["mean"]
            return float(a / b) if b else None
    return None


def write_report(summary: dict[str, Any], config: BenchConfig, schedule: Schedule, out: Path, command: str) -> Path:
    """results.json, report.md and the plots in ``out``; returns the report's path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    summary = {**summary, "bitrate_ratio_resin_over_none": bitrate_ratio(summary)}
    results = {"schedule": schedule.model_dump(), "config": config.model_dump(), "summary": summary}
    write_atomic(out / "results.json", json.dumps(results, indent=2).encode())
    methods = list(summary["methods"])
    families = summary["phases"]
    headers = [f"phase {i}: {f}" for i, f in enumerate(families)]

    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.8 / max(len(methods), 1)
    for k, method in enumerate(methods):
        phases = summary["methods"][method]["phases"]
        xs = np.arange(len(families)) + k * width
        ax.bar(xs, [p["qoe"]["mean"] for p in phases], width, yerr=[np.nan_to_num(p["qoe"]["ci95"]) for p in phases],
               label=method, capsize=2)  # fmt: skip
    ax.set_xticks(np.arange(len(families)) + 0.4 - width / 2, [f"{i}: {f}" for i, f in enumerate(families)])
    ax.set_ylabel("mean eval QoE_lin in phase (95% CI)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    write_atomic(out / "qoe_per_phase.png", figure_png(fig))
    plt.close(fig)

    for key, name in (("charts/qoe", "training_qoe"), *((k, k.split("/")[1]) for k in DIAGNOSTICS_PLOTTED)):
        fig, ax = plt.subplots(figsize=(10, 3.5))
        for method in methods:
            curve = summary["methods"][method]["curves"].get(key)
            if not curve:
                continue
            y = np.asarray(curve["mean"])
            window = max(1, len(y) // 50) if key == "charts/qoe" else 1
            y = np.convolve(y, np.ones(window) / window, mode="same")
            ax.plot(np.asarray(curve["step"]) / 1e6, y, label=method, lw=1)
        for start in summary["methods"][methods[0]]["phase_start_steps"][1:]:
            ax.axvline(start / 1e6, color="grey", ls=":", lw=0.8)
        ax.set_xlabel("environment steps (M)")
        ax.set_ylabel(key)
        ax.legend(fontsize=7)
        fig.tight_layout()
        write_atomic(out / f"{name}.png", figure_png(fig))
        plt.close(fig)

    lines = [
        f"# Plasticity benchmark: {schedule.name}",
        "",
        f"{schedule.description}",
        "",
        f"Command: `{command}`",
        "",
        f"Seeds: {config.seeds}; scale {config.scale} (phase steps: "
        f"{', '.join(str(round(p.steps * config.scale)) for p in schedule.phases)}"
        + (
            f", each x U({1 - config.jitter(schedule):g}, {1 + config.jitter(schedule):g}) per seed, the same for "
            "every method; plotted phase boundaries are seed 1's"
            if config.jitter(schedule)
            else ""
        )
        + f"); batch {config.ppo.batch_size} steps per update.",
        "",
        "## Mean post-shift QoE (eval QoE_lin on each phase's test family, phases 1..n, 95% t-interval)",
        "",
        "| method | post-shift QoE | " + " | ".join(headers) + " | wall/run |",
        "|---|---:|" + "---:|" * len(families) + "---:|",
    ]
    for method in methods:
        m = summary["methods"][method]
        cells = " | ".join(f"{p['qoe']['mean']:.3f} ± {p['qoe']['ci95']:.3f}" for p in m["phases"])
        lines.append(f"| {method} | {m['post_shift_qoe']['mean']:.3f} ± {m['post_shift_qoe']['ci95']:.3f} | "
                     f"{cells} | {m['wall_s']:.0f} s |")  # fmt: skip
    lines += [
        "",
        "## Recovery: environment steps after a shift until the smoothed training QoE reaches 90% of the best",
        "method's level in that phase (its own level in brackets; inf: never)",
        "",
        "| method | " + " | ".join(f"phase {i}: {f}" for i, f in enumerate(families) if i) + " |",
        "|---|" + "---:|" * (len(families) - 1),
    ]
    for method in methods:
        phases = summary["methods"][method]["phases"]
        lines.append(f"| {method} | " + " | ".join(
            f"{p['recovery_to_best_steps']['mean'] / 1e3:.0f} k ({p['recovery_steps']['mean'] / 1e3:.0f} k)"
            for p in phases[1:]) + " |")  # fmt: skip
    lines += [
        "",
        "## Mean bitrate (kbps) chosen on each phase's test family (first evaluation in the phase / phase mean)",
        "",
        "| method | " + " | ".join(headers) + " |",
        "|---|" + "---:|" * len(families),
    ]
    for method in methods:
        phases = summary["methods"][method]["phases"]
        rates = [f"{p['first_bitrate_kbps']['mean']:.0f} / {p['bitrate_kbps']['mean']:.0f}" for p in phases]
        lines.append(f"| {method} | " + " | ".join(rates) + " |")
    ratio = summary["bitrate_ratio_resin_over_none"]
    if ratio is not None:
        lines += ["", f"Bitrate ratio resin / none in the first high-bandwidth phase after a low one: {ratio:.2f}"]
    lines += ["", "Plots: qoe_per_phase.png, training_qoe.png, silent_ratio.png, dormant_ratio.png, "
              "grad_silent_ratio.png, effective_rank.png", ""]  # fmt: skip
    path = out / "report.md"
    write_atomic(path, "\n".join(lines).encode())
    return path
