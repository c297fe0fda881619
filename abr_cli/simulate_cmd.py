"""`abr simulate`: run policies over traces in the simulator and print a summary table."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from abr_cli.common import console, output_path, planning_progress, progress, user_errors
from abr_common.files import write_atomic
from policy import make_policy
from policy.evaluation.loop import (
    DEFAULT_POLICIES,
    Summary,
    run_policy,
    summarize,
    write_jsonl,
)
from simulator.link import LinkConfig
from simulator.qoe import QoEConfig, QoEKind
from simulator.reference import DEFAULT_INITIAL_QUALITY
from simulator.video import load_video
from traces.sources import DEFAULT_TRACE_SPEC, label, resolve


def simulate(
    traces: Annotated[
        list[str] | None,
        typer.Option("--traces", "-t", help="Trace file, folder or generator spec (repeatable)."),
    ] = None,
    video: Annotated[str, typer.Option(help="'builtin' or a folder of video_size_N files.")] = "builtin",
    policy: Annotated[
        list[str] | None,
        typer.Option("--policy", "-p", help="Policy spec, e.g. bba or fixed:3 (repeatable)."),
    ] = None,
    log: Annotated[Path | None, typer.Option(help="Write per-chunk records as JSON lines here.")] = None,
    qoe: Annotated[str, typer.Option(help="QoE variant for the table: lin, log or hd.")] = "lin",
    initial_quality: Annotated[int, typer.Option(help="Level of the first chunk.")] = DEFAULT_INITIAL_QUALITY,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the summary as JSON here.")] = None,
) -> None:
    """Play every trace once per policy (reference semantics) and print QoE, bitrate, stalls, switches."""
    with user_errors():
        if qoe not in ("lin", "log", "hd"):
            raise ValueError(f"--qoe must be lin, log or hd, got {qoe!r}")
        kind: QoEKind = qoe  # type: ignore[assignment]
        output_path(log, "--log")
        output_path(json_out, "--json")
        qoe_config = QoEConfig(kind=kind)
        sources = traces or [DEFAULT_TRACE_SPEC]
        trace_sets = [(label(s), resolve(s)) for s in sources]
        the_video = load_video(video)
        policies = [make_policy(p) for p in (policy or DEFAULT_POLICIES)]
        link = LinkConfig.evaluation()
        summaries: list[Summary] = []
        records: list[dict[str, object]] = []
        total = sum(len(ts) for _, ts in trace_sets) * len(policies)
        with progress() as bar:
            task = bar.add_task("simulating", total=total)
            for set_label, trace_set in trace_sets:
                for pol in policies:
                    started = time.perf_counter()
                    with planning_progress(bar, pol, len(trace_set)) as on_planned:
                        logs = run_policy(
                            pol,
                            trace_set,
                            the_video,
                            link,
                            initial_quality=initial_quality,
                            on_batch=lambda n: bar.advance(task, n),
                            on_planned=on_planned,
                        )
                    summaries.append(summarize(logs, pol.label, set_label, time.perf_counter() - started, qoe_config))
                    if log is not None:
                        records.extend({"policy": pol.label, "traces": set_label, **r} for r in logs.records())
        if log is not None:
            write_jsonl(records, log)
        if json_out is not None:
            doc = {"qoe_kind": qoe, "video": the_video.name, "results": [asdict(s) for s in summaries]}
            write_atomic(json_out, json.dumps(doc, indent=2).encode())
        console.print(summary_table(summaries, qoe, the_video.name))
        if log is not None:
            console.print(f"per-chunk log: {log} ({len(records)} chunks)")


def summary_table(summaries: list[Summary], qoe: str, video_name: str) -> Table:
    """The rich table printed by `abr simulate`."""
    table = Table(title=f"QoE_{qoe} per chunk (chunks 2..N), video {video_name}")
    for col, justify in (
        ("policy", "left"),
        ("traces", "left"),
        ("n", "right"),
        (f"QoE_{qoe}", "right"),
        ("±95%", "right"),
        ("bitrate kbps", "right"),
        ("rebuf s/session", "right"),
        ("switches/session", "right"),
        ("wall s", "right"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for s in summaries:
        table.add_row(
            s.policy,
            s.traces,
            str(s.n_traces),
            f"{s.qoe:.3f}",
            f"{s.qoe_ci95:.3f}",
            f"{s.bitrate_kbps:.0f}",
            f"{s.rebuf_s:.2f}",
            f"{s.switches:.1f}",
            f"{s.wall_s:.2f}",
        )
    return table


__all__ = ["simulate"]
