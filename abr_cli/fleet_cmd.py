"""``abr fleet``: many players sharing bottleneck links (simpy), with population metrics and plots."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
import typer
from rich.table import Table

from abr_cli.common import console, output_dir, progress, user_errors
from abr_common.files import figure_png, write_atomic
from abr_common.units import BITS_PER_BYTE, BITS_PER_MBIT

if TYPE_CHECKING:
    import simpy

    from simulator.fleet import DeciderFactory, FleetResult

_ARRIVALS = re.compile(r"poisson:([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)")


def parse_arrivals(spec: str) -> float:
    """``none`` or ``poisson:RATE`` (new players per link per second) -> the rate."""
    if spec == "none":
        return 0.0
    match = _ARRIVALS.fullmatch(spec.strip())
    if not match:
        raise ValueError(f"--arrivals {spec!r}: expected 'none' or 'poisson:RATE' (players per link per second)")
    return float(match.group(1))


def fleet(
    links: Annotated[int, typer.Option(min=1, help="Bottleneck links (link i plays trace i mod #traces).")] = 10,
    players_per_link: Annotated[int, typer.Option(min=0, help="Players on every link at time 0.")] = 2,
    arrivals: Annotated[str, typer.Option(help="'none' or poisson:RATE (new players per link per second).")] = "none",
    watch_s: Annotated[
        float | None, typer.Option(min=1, help="Mean watch time of arriving players (exponential) [whole video].")
    ] = None,
    traces: Annotated[str, typer.Option(help="Trace folder, file or generator spec.")] = "markov:n=20,seed=1",
    video: Annotated[str, typer.Option(help="'builtin' or a folder of video_size_N files.")] = "builtin",
    policy: Annotated[
        str, typer.Option(help="Policy spec (bba, robustmpc, default, ...) or server:URL (a running abr serve).")
    ] = "bba",
    duration: Annotated[float, typer.Option(min=1, help="Seconds during which players arrive.")] = 600.0,
    clock: Annotated[str, typer.Option(help="Link trace clock: reference (as the simulator) or wall.")] = "reference",
    seed: Annotated[int, typer.Option(help="Seed of arrivals and watch times.")] = 0,
    realtime: Annotated[
        float | None,
        typer.Option(min=1e-6, help="Pace by the wall clock: wall seconds per simulated second (1: real time)."),
    ] = None,
    out: Annotated[Path, typer.Option(help="Output folder (summary.json, players.jsonl, fleet.png).")] = Path(
        "runs/fleet"
    ),
) -> None:
    """Simulate many players sharing links: per-player QoE, stalls, fairness and link utilisation."""

    from simulator.fleet import FleetConfig, simulate_fleet
    from simulator.video import load_video
    from traces.sources import resolve

    with user_errors():
        output_dir(out, "--out")
        if clock not in ("reference", "wall"):
            raise ValueError(f"--clock {clock!r}: expected 'reference' or 'wall'")
        config = FleetConfig(n_links=links, players_per_link=players_per_link, arrivals_per_s=parse_arrivals(arrivals),
                             watch_s=watch_s, duration_s=duration, clock=clock, seed=seed)  # fmt: skip
        trace_set = resolve(traces)
        the_video = load_video(video)
        horizon_s = max(duration if config.arrivals_per_s > 0 else 0.0, the_video.duration_s)
        remote = None
        factory: DeciderFactory
        if policy.startswith("server:"):
            from abr_server.lab.fleet_client import RemoteDecider

            url = policy.removeprefix("server:")

            def factory(env: simpy.Environment) -> RemoteDecider:
                nonlocal remote
                remote = RemoteDecider(env, url, the_video)
                return remote
        else:
            from policy.evaluation.fleet import policy_deciders

            factory = policy_deciders(policy, the_video)

        started = time.perf_counter()
        with progress() as bar:
            task = bar.add_task("simulated seconds", total=int(horizon_s))

            def tick(now_s: float) -> None:
                bar.update(task, completed=min(now_s, horizon_s))

            try:
                result = simulate_fleet(trace_set, the_video, factory, config, policy=policy, on_progress=tick,
                                        realtime_factor=realtime)  # fmt: skip
            finally:
                if remote is not None:
                    remote.close()
        wall_s = time.perf_counter() - started
        summary = result.summary() | {"wall_s": round(wall_s, 2), "traces": traces, "video": video,
                                      "player_hours_per_wall_s": result.summary()["player_hours"] / wall_s}  # fmt: skip
        if remote is not None:
            summary["server"] = remote.stats()
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / "summary.json", (json.dumps(summary, indent=1) + "\n").encode())
        write_atomic(out / "players.jsonl", _players_jsonl(result).encode())
        _plot(result, out / "fleet.png")
    console.print(_table(summary))
    if "server" in summary:
        console.print(f"server: {summary['server']}")
    console.print(f"wrote {out / 'summary.json'}, {out / 'players.jsonl'} and {out / 'fleet.png'}")


def _players_jsonl(result: FleetResult) -> str:
    scores = result.player_scores()
    ladder = np.asarray(result.video.bitrates_kbps, dtype=np.float64)
    lines = []
    for player, score in zip(result.players, scores, strict=True):
        lines.append(json.dumps({
            "player": player.player, "link": player.link, "start_s": round(player.start_s, 3),
            "end_s": round(player.end_s, 3), "chunks": len(player.quality),
            "qoe": None if np.isnan(score) else round(float(score), 6),
            "mean_bitrate_kbps": round(float(ladder[player.quality].mean()), 1) if player.quality else None,
            "rebuffer_s": round(sum(player.rebuf_s[1:]), 3),
        }))  # fmt: skip
    return "\n".join(lines) + "\n"


def _table(summary: dict[str, object]) -> Table:
    table = Table(title=f"Fleet: {summary['policy']}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("players", "links", "qoe_mean", "qoe_p5", "mean_bitrate_kbps", "stalls_per_hour", "rebuffer_ratio",
                "jain_fairness_mean", "link_utilisation", "player_hours", "simulated_s", "wall_s",
                "player_hours_per_wall_s"):  # fmt: skip
        value = summary.get(key)
        table.add_row(key, "-" if value is None else f"{value:,.3f}" if isinstance(value, float) else str(value))
    return table


def _plot(result: FleetResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from simulator.fleet import UTILISATION_BIN_S

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    scores = result.player_scores()
    scores = scores[~np.isnan(scores)]
    if scores.size:
        left.hist(scores, bins=40, color="#1f77b4")
    left.set_xlabel("per-player QoE_lin (chunks 2..N)")
    left.set_ylabel("players")
    left.set_title(f"{result.policy}: QoE distribution ({len(result.players)} players)", fontsize=9)
    bins = sorted({b for link in result.link_busy_bins for b in link})
    if bins:
        n_links = len(result.link_busy_bins)
        mbps = [sum(link.get(b, 0.0) for link in result.link_busy_bins) * BITS_PER_BYTE / BITS_PER_MBIT
                / UTILISATION_BIN_S / n_links for b in bins]  # fmt: skip
        right.step([b * UTILISATION_BIN_S for b in bins], mbps, where="post")
    summary = result.summary()
    right.set_title(f"delivered per link (utilisation {summary['link_utilisation'] or 0:.0%})", fontsize=9)
    right.set_xlabel("time (s)")
    right.set_ylabel("Mbit/s per link")
    fig.tight_layout()
    png = figure_png(fig)
    plt.close(fig)
    write_atomic(path, png)
