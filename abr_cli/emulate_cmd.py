"""``abr emulate``: real web players (dash.js, hls.js, Shaka) in headless Chromium over shaped links, per policy."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from abr_cli.common import console, output_dir, user_errors
from abr_common.files import figure_png, write_atomic

if TYPE_CHECKING:
    from abr_server.lab.emulate import EmulationResult

DEFAULT_POLICIES = ["learned", "robustmpc", "bba", "dashjs"]


class Player(StrEnum):
    """The web player that streams the asset."""

    dashjs = "dashjs"
    hlsjs = "hlsjs"
    shaka = "shaka"


class Shaping(StrEnum):
    """How the link follows the trace."""

    app = "app"
    kernel = "kernel"


def emulate(
    asset: Annotated[Path, typer.Option(help="DASH asset folder from `abr media make`.")],
    trace: Annotated[list[Path], typer.Option(help="Throughput trace file (repeat for several).")],
    policy: Annotated[
        list[str] | None,
        typer.Option(
            help="learned, a classic spec (bba, robustmpc, ...) or dashjs (repeat) "
            "[default: learned, robustmpc, bba, and dashjs with --player dashjs]."
        ),
    ] = None,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("runs/emulate"),
    delay_ms: Annotated[float, typer.Option(min=0, help="Delay added to every segment request.")] = 80.0,
    chromium: Annotated[str, typer.Option(help="Chromium executable (never downloaded).")] = "/usr/bin/chromium",
    shaping: Annotated[
        Shaping, typer.Option(help="app: the segment server paces responses; kernel: tc tbf in a network namespace.")
    ] = Shaping.app,
    player: Annotated[
        Player, typer.Option(help="dashjs, hlsjs (the asset's HLS playlists) or shaka; each asks the server.")
    ] = Player.dashjs,
) -> None:
    """Play the asset in Chromium with each policy over each trace; player QoE vs the server's log vs the simulator."""
    from abr_server.lab.emulate import DASHJS, PLAYER_MANIFESTS, EmulationError
    from abr_server.lab.emulate import emulate as run_emulation
    from abr_server.lab.netns import private_netns

    if shaping is Shaping.kernel and not private_netns():
        # Run this same command again in a network namespace of its own, where shaping lo is harmless.
        if shutil.which("unshare") is None:
            raise typer.BadParameter("kernel shaping needs unshare (util-linux)", param_hint="--shaping")
        args = ["unshare", "-n", "--", sys.executable, "-m", "abr_cli.main", *sys.argv[1:]]
        raise typer.Exit(subprocess.call(args))

    policies = policy or [p for p in DEFAULT_POLICIES if player is Player.dashjs or p != DASHJS]
    with user_errors():
        for path in trace:
            if not path.is_file():
                raise ValueError(f"--trace {path}: no such file")
        manifest = PLAYER_MANIFESTS[player.value]
        if not (asset / manifest).is_file():
            raise ValueError(f"--asset {asset}: no {manifest} there for {player.value} (see `abr media make`)")
        output_dir(out, "--out")
        try:
            results = run_emulation(asset, trace, policies, out, delay_ms=delay_ms, chromium=chromium,
                                    shaping=shaping.value, player=player.value, on_result=_print_one)  # fmt: skip
        except EmulationError as err:
            raise ValueError(str(err)) from None
    (out / "results.json").write_text(json.dumps([r.to_json() for r in results], indent=1) + "\n")
    console.print(_table(results))
    _plot(results, out / "emulate.png")
    console.print(f"wrote {out / 'results.json'}, {out / 'emulate.png'} and sessions/ (player, server log, result)")


def _print_one(result: EmulationResult) -> None:
    p = result.player
    console.print(f"{result.trace} {result.policy}: score {p.score:.3f}, {p.mean_bitrate_kbps:.0f} kbit/s, "
                  f"stalls {p.stall_count} ({p.stall_s:.1f} s), server decisions {p.server_share:.0%} "
                  f"({result.wall_s:.0f} s)")  # fmt: skip


def _table(results: list[EmulationResult]) -> Table:
    table = Table(title="Player-side QoE (QoE_lin, segments 2..N) vs the simulator's prediction")
    for name in ("trace", "policy", "player score", "sim score", "kbit/s", "sim kbit/s", "stall s", "sim rebuf s",
                 "switches", "startup s", "server %", "log agrees"):  # fmt: skip
        table.add_column(name, justify="left" if name in ("trace", "policy") else "right")
    for r in results:
        p, s, v = r.player, r.simulated, r.server
        agrees = "-" if v is None else f"{min(v.levels_agree, v.decisions_followed):.0%}"
        table.add_row(r.trace[:32], r.policy, f"{p.score:.3f}", "-" if s is None else f"{s.score:.3f}",
                      f"{p.mean_bitrate_kbps:.0f}", "-" if s is None else f"{s.mean_bitrate_kbps:.0f}",
                      f"{p.stall_s:.2f}", "-" if s is None else f"{s.rebuffer_s:.2f}", str(p.switches),
                      f"{p.startup_s:.2f}", "-" if r.server is None else f"{p.server_share:.0%}", agrees)  # fmt: skip
    return table


def _plot(results: list[EmulationResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    traces = list(dict.fromkeys(r.trace for r in results))
    fig, axes = plt.subplots(len(traces), 1, figsize=(10, 2.8 * len(traces)), squeeze=False)
    for ax, name in zip(axes[:, 0], traces, strict=True):
        for r in (r for r in results if r.trace == name):
            kbps = [int(b) for b in r.player.levels]
            ax.step(range(len(kbps)), kbps, where="post", label=f"{r.policy} ({r.player.score:.2f})")
        ax.set_title(name, fontsize=9)
        ax.set_ylabel("level")
        ax.legend(fontsize=7, loc="upper left")
    axes[-1, 0].set_xlabel("segment")
    fig.tight_layout()
    png = figure_png(fig)
    plt.close(fig)
    write_atomic(path, png)
