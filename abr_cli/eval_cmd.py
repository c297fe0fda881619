"""`abr eval`: compare policies over trace sets and write a report (results.json, report.md, plots)."""

from __future__ import annotations

import math
import shlex
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from abr_cli.common import console, output_dir, planning_progress, progress, user_errors
from abr_cli.simulate_cmd import summary_table
from abr_common.paths import DEFAULT_TRACE_ROOT
from policy import available_policies, make_policy
from policy.base import Policy
from policy.evaluation.loop import DEFAULT_BATCH_SESSIONS, DEFAULT_POLICIES, run_policy
from policy.evaluation.report import (
    OPTIMAL_NAME,
    QOE_KINDS,
    Evaluation,
    RunInfo,
    SessionTimeline,
    build_report_files,
    hd_applies,
    write_report_files,
)
from policy.evaluation.suites import SUITES
from policy.evaluation.suites import suite as named_suite
from simulator.link import LinkConfig
from simulator.qoe import QoEKind
from simulator.reference import DEFAULT_INITIAL_QUALITY
from simulator.video import Video, load_video
from traces.sources import DEFAULT_TRACE_SPEC, label, resolve
from traces.trace import Trace

#: Policies `abr eval` compares when none is named (those registered; `optimal` is added on top).


def evaluate(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for results.json, report.md and the plots.")],
    policy: Annotated[
        list[str] | None,
        typer.Option(
            "--policy",
            "-p",
            help=f"Policy spec (repeatable); default: those of {', '.join(DEFAULT_POLICIES)} that are registered.",
        ),
    ] = None,
    traces: Annotated[
        list[str] | None,
        typer.Option(
            "--traces", "-t", help=f"Trace file, folder or generator spec (repeatable; default {DEFAULT_TRACE_SPEC})."
        ),
    ] = None,
    video: Annotated[str, typer.Option(help="'builtin' or a folder of video_size_N files.")] = "builtin",
    qoe_table: Annotated[str, typer.Option(help="QoE variant of the main table and the CDFs: lin, log or hd.")] = "lin",
    timeline_trace: Annotated[
        str | None,
        typer.Option(help="Trace (by name) of the timeline plot; default: the first trace of the first set."),
    ] = None,
    no_optimal: Annotated[
        bool, typer.Option("--no-optimal", help="Do not add the offline optimum (the upper bound) to the policies.")
    ] = False,
    initial_quality: Annotated[int, typer.Option(help="Level of the first chunk.")] = DEFAULT_INITIAL_QUALITY,
    batch_sessions: Annotated[int, typer.Option(help="Sessions simulated together.")] = DEFAULT_BATCH_SESSIONS,
    ray: Annotated[
        str | None,
        typer.Option(help="Run on Ray: 'local' or a cluster address; one task per batch of --batch-sessions traces."),
    ] = None,
    suite: Annotated[
        str | None,
        typer.Option(help=f"A named suite instead of --traces: {', '.join(SUITES)} (its policies unless -p is given)."),
    ] = None,
    trace_root: Annotated[
        Path, typer.Option(help="With --suite: the folder holding the real test sets.")
    ] = DEFAULT_TRACE_ROOT,
    prior_noise_sigma: Annotated[
        float,
        typer.Option(help="Log-normal noise on the sessions' throughput priors (0: the exact mean of the last 30 s)."),
    ] = 0.0,
    prior_missing_fraction: Annotated[
        float, typer.Option(help="Share of sessions whose player knows no throughput prior (1: none has one).")
    ] = 0.0,
) -> None:
    """Play every trace once per policy and write a report: QoE table with the gap to optimal, CDFs, a timeline."""
    with user_errors():
        # Everything that can be wrong with the input is checked before the first session runs.
        if qoe_table not in QOE_KINDS:
            raise ValueError(f"--qoe-table must be lin, log or hd, got {qoe_table!r}")
        kind: QoEKind = qoe_table
        if batch_sessions < 1:
            raise ValueError(f"--batch-sessions must be >= 1, got {batch_sessions}")
        output_dir(out, "--out")
        if suite is not None:
            if traces:
                raise ValueError("--suite and --traces are alternatives: give one")
            chosen = named_suite(suite)
            traces, policy = chosen.sources(trace_root), policy or list(chosen.policies)
        sources = traces or [DEFAULT_TRACE_SPEC]
        trace_sets = [(label(s), resolve(s)) for s in sources]
        _check_unique([name for name, _ in trace_sets], "trace set")
        the_video = load_video(video)
        if kind == "hd" and not hd_applies(the_video.n_levels):
            raise ValueError(f"--qoe-table hd needs a 6-level ladder; video {the_video.name} has {the_video.n_levels}")
        if not 0 <= initial_quality < the_video.n_levels:
            raise ValueError(f"initial_quality must be in [0, {the_video.n_levels}), got {initial_quality}")
        policies, optimal, optimal_note = _policies(policy, no_optimal)
        timeline_set, timeline_index = _timeline_position(trace_sets, timeline_trace)

        kinds: list[QoEKind] = ["lin", "log", "hd"] if hd_applies(the_video.n_levels) else ["lin", "log"]
        evaluation = Evaluation(
            video=the_video.name,
            ladder_kbps=the_video.bitrates_kbps,
            optimal=optimal,
            optimal_note=optimal_note,
            timeline_trace=trace_sets[timeline_set][1][timeline_index],
            timeline_traces=trace_sets[timeline_set][0],
        )
        link = LinkConfig.evaluation().model_copy(update=_prior_settings(prior_noise_sigma, prior_missing_fraction))
        total = sum(len(ts) for _, ts in trace_sets) * len(policies)
        if ray is not None:
            _evaluate_on_ray(ray, evaluation, trace_sets, policies, the_video, link, kinds, initial_quality,
                             batch_sessions, timeline_set, timeline_index)  # fmt: skip
        else:
            with progress() as bar:
                task = bar.add_task("evaluating", total=total)
                for set_index, (set_label, trace_set) in enumerate(trace_sets):
                    for pol in policies:
                        bar.update(task, description=f"{pol.label} on {set_label}")
                        started = time.perf_counter()
                        with planning_progress(bar, pol, len(trace_set)) as on_planned:
                            logs = run_policy(
                                pol, trace_set, the_video, link, initial_quality=initial_quality,
                                batch_sessions=batch_sessions, on_batch=lambda n: bar.advance(task, n),
                                on_planned=on_planned,
                            )  # fmt: skip
                        evaluation.add(logs, pol.label, set_label, time.perf_counter() - started, kinds)
                        if set_index == timeline_set:
                            evaluation.timeline.append(SessionTimeline.from_logs(logs, timeline_index, pol.label))

        info = RunInfo(
            date=datetime.now(UTC).isoformat(timespec="seconds"),
            command=_command_line(
                policy, traces, video, out, qoe_table, timeline_trace, no_optimal, initial_quality, batch_sessions
            ),
            arguments={
                "policy": [p.label for p in policies],
                "traces": sources,
                "video": video,
                "out": str(out),
                "qoe_table": qoe_table,
                "timeline_trace": evaluation.timeline_trace.name if evaluation.timeline_trace else None,
                "no_optimal": no_optimal,
                "initial_quality": initial_quality,
                "batch_sessions": batch_sessions,
            },
            machine=_machine(),
        )
        # All rendering happens in memory first: a failure anywhere above leaves the folder untouched.
        files = build_report_files(evaluation, info, qoe_table=kind)
        write_report_files(out, files)
        console.print(summary_table([r.to_summary(kind) for r in evaluation.results], qoe_table, the_video.name))
        console.print(f"report: {out / 'report.md'} ({len(files) - 2} plots, results in {out / 'results.json'})")


def _evaluate_on_ray(
    address: str, evaluation: Evaluation, trace_sets: list[tuple[str, list[Trace]]], policies: list[Policy],
    video: Video, link: LinkConfig, kinds: list[QoEKind], initial_quality: int, batch_sessions: int,
    timeline_set: int, timeline_index: int,
) -> None:  # fmt: skip
    """Every (policy, trace set, batch) as one Ray task; results added in the local loop's order."""
    from policy.cluster import connect
    from policy.evaluation.distributed import run_policies_ray

    connect(address)
    jobs = [(pol, trace_set) for _, trace_set in trace_sets for pol in policies]
    with progress() as bar:
        task = bar.add_task("evaluating on Ray", total=sum(len(t) for _, t in jobs))

        def advance(n: int) -> None:
            bar.advance(task, n)

        outcomes = iter(run_policies_ray(jobs, video, link, initial_quality=initial_quality,
                                         batch_sessions=batch_sessions, on_batch=advance))  # fmt: skip
    for set_index, (set_label, _) in enumerate(trace_sets):
        for pol in policies:
            logs, seconds = next(outcomes)
            evaluation.add(logs, pol.label, set_label, seconds, kinds)
            if set_index == timeline_set:
                evaluation.timeline.append(SessionTimeline.from_logs(logs, timeline_index, pol.label))


def _prior_settings(noise_sigma: float, missing_fraction: float) -> dict[str, float]:
    """The link's prior fields, checked (a bad value names its option)."""
    if not (noise_sigma >= 0 and math.isfinite(noise_sigma)):
        raise ValueError(f"--prior-noise-sigma must be a finite number >= 0, got {noise_sigma}")
    if not 0 <= missing_fraction <= 1:
        raise ValueError(f"--prior-missing-fraction must be in [0, 1], got {missing_fraction}")
    return {"prior_noise_sigma": noise_sigma, "prior_missing_fraction": missing_fraction}


def _check_unique(labels: list[str], what: str) -> None:
    seen: set[str] = set()
    for name in labels:
        if name in seen:
            raise ValueError(f"{what} {name!r} is given twice")
        seen.add(name)


def _policies(specs: list[str] | None, no_optimal: bool) -> tuple[list[Policy], str | None, str | None]:
    """The policies to run, the label of the upper bound among them, and why there is none if so."""
    registered = set(available_policies())
    if specs:
        chosen = list(specs)
    else:
        chosen = [p for p in DEFAULT_POLICIES if p in registered]
        if not chosen:
            raise ValueError(f"none of the default policies ({', '.join(DEFAULT_POLICIES)}) is registered; use -p")
    policies = [make_policy(s) for s in chosen]
    _check_unique([p.label for p in policies], "policy")
    optimal = next((p.label for p in policies if p.name == OPTIMAL_NAME), None)
    note = None
    if optimal is None:
        if no_optimal:
            note = "The offline optimum was not run (--no-optimal), so there is no upper bound to compare with."
        elif OPTIMAL_NAME not in registered:
            note = "No `optimal` policy is registered, so there is no upper bound to compare with."
        else:
            bound = make_policy(OPTIMAL_NAME)
            policies.append(bound)
            optimal = bound.label
    return policies, optimal, note


def _timeline_position(trace_sets: list[tuple[str, list[Trace]]], name: str | None) -> tuple[int, int]:
    """(set index, trace index) of the timeline trace: the first trace named ``name``, or the very first trace."""
    if name is None:
        return 0, 0
    for set_index, (_, trace_set) in enumerate(trace_sets):
        for trace_index, trace in enumerate(trace_set):
            if trace.name == name:
                return set_index, trace_index
    examples = ", ".join(t.name for t in trace_sets[0][1][:3])
    sets = ", ".join(s for s, _ in trace_sets)
    raise ValueError(f"--timeline-trace {name!r}: no trace of that name in {sets} (names look like {examples}, ...)")


def _command_line(
    policy: list[str] | None,
    traces: list[str] | None,
    video: str,
    out: Path,
    qoe_table: str,
    timeline_trace: str | None,
    no_optimal: bool,
    initial_quality: int,
    batch_sessions: int,
) -> str:
    """The `abr eval` invocation as typed (options left at their defaults are left out)."""
    argv = ["abr", "eval"]
    for p in policy or []:
        argv += ["-p", p]
    for t in traces or []:
        argv += ["-t", t]
    options: list[tuple[str, Any, Any]] = [
        ("--video", video, "builtin"),
        ("--qoe-table", qoe_table, "lin"),
        ("--timeline-trace", timeline_trace, None),
        ("--initial-quality", initial_quality, DEFAULT_INITIAL_QUALITY),
        ("--batch-sessions", batch_sessions, DEFAULT_BATCH_SESSIONS),
    ]
    argv += [item for opt, value, default in options if value != default for item in (opt, str(value))]
    if no_optimal:
        argv.append("--no-optimal")
    argv += ["--out", str(out)]
    return shlex.join(argv)


def _machine() -> str:
    # Imported here: simulator.benchmark pulls in the scalar reference, which only this needs.
    from simulator.benchmark import machine_description

    return machine_description()


__all__ = ["evaluate"]
