"""Real-player emulation: dash.js, hls.js or Shaka Player in headless Chromium, over a trace-shaped link,
deciding with abr_server.

For every (trace, policy) pair `emulate` starts a fresh decision server (``abr serve``) that also serves
the asset at ``/media`` through the trace, opens ``/player?player=NAME`` in Chromium (Playwright, the
system browser, never a downloaded one), plays the whole asset (dash.js and Shaka from its DASH
manifest, hls.js from its HLS playlists), and then compares three views of the session:

- the player's own record (`PlayerOutcome`): level, timing and buffer per segment, stalls measured on
  the video element, the source of every decision;
- the server's telemetry of the same session: what the player reported and what the server decided;
- the simulator's prediction for the same policy, trace, video and delay (`run_policy`).

``dashjs`` as a policy plays with dash.js's own ABR rules (the baseline); other names are served by
the server (``learned``: the active model; any classic spec: ``bba``, ``robustmpc``, ...).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from abr_common.files import write_atomic
from abr_common.units import MS_PER_S
from abr_server.lab.asset import HLS_MASTER, MANIFEST
from abr_server.lab.launcher import ServerStartError, local_server
from abr_server.lab.netns import KernelShaper, private_netns
from abr_server.telemetry import ingest_pending
from policy.base import make_policy
from policy.evaluation.loop import run_policy
from simulator.link import LinkConfig
from simulator.qoe import QoEConfig, session_qoe, session_score
from simulator.reference import DEFAULT_INITIAL_QUALITY
from simulator.video import Video, load_video
from traces.io import load_file

#: The page's own ABR (no server decisions): dash.js 5's default rules.
DASHJS = "dashjs"
#: The server's learned policy; in the simulator the same model is the ``default`` policy.
LEARNED = "learned"
#: The web players the /player page drives (its ``player`` parameter), each with the manifest of an
#: `abr media make` asset it plays.
PLAYER_MANIFESTS: dict[str, str] = {"dashjs": MANIFEST, "hlsjs": HLS_MASTER, "shaka": MANIFEST}
DEFAULT_PLAYER = "dashjs"
DEFAULT_CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = (
    "--autoplay-policy=no-user-gesture-required",
    "--no-sandbox",  # CI containers run as root
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
    "--mute-audio",
)


class EmulationError(RuntimeError):
    """The browser, the server or the playback failed; the message says which and where."""


@dataclass(frozen=True)
class PlayerOutcome:
    """What the player saw, per segment (index order) and in total."""

    levels: list[int]
    sources: list[str]
    rebuffer_s: list[float]  # stall time attributed to each segment (between the previous and its arrival)
    delay_ms: list[float]
    buffer_s: list[float]
    startup_s: float
    stall_count: int
    stall_s: float
    score: float  # the simulator's standard score (mean QoE_lin over segments 2..N)
    mean_bitrate_kbps: float
    switches: int
    server_share: float  # share of segments after the first whose level came from the server

    @classmethod
    def from_state(cls, state: dict[str, Any], video: Video, qoe: QoEConfig | None = None) -> PlayerOutcome:
        """Reduce the page's ``resinSession`` record; raises `EmulationError` if segments are missing."""
        by_index: dict[int, dict[str, Any]] = {}
        for record in state.get("segments", []):
            by_index[int(record["index"])] = record  # a re-downloaded segment: the last download counts
        missing = [i for i in range(video.n_chunks) if i not in by_index]
        if missing:
            raise EmulationError(f"the player never downloaded segments {missing[:10]} (of {video.n_chunks})")
        segments = [by_index[i] for i in range(video.n_chunks)]
        ends = np.array([float(s["end_ms"]) for s in segments])
        rebuffer = np.zeros(video.n_chunks)
        stalls = [(float(s["start_ms"]), float(s["end_ms"])) for s in state.get("stalls", [])]
        for start, end in stalls:
            lows = np.concatenate([[-np.inf], ends[:-1]])
            highs = np.concatenate([ends[:-1], [np.inf]])
            overlap = np.clip(np.minimum(highs, end) - np.maximum(lows, start), 0.0, None)
            rebuffer += overlap / MS_PER_S
        startup_s = (float(state["firstPlayingMs"]) - float(state["attachedMs"])) / MS_PER_S
        rebuffer[0] += startup_s  # as in the simulator, the first chunk's wait is its rebuffer (not scored)
        levels = np.array([int(s["level"]) for s in segments])
        qoe = qoe or QoEConfig()
        score = float(session_score(session_qoe(qoe, video, levels, rebuffer, DEFAULT_INITIAL_QUALITY)))
        sources = [str(s["source"]) for s in segments]
        from_server = sum(src in ("server", "server-sync") for src in sources[1:])
        return cls(
            levels=levels.tolist(), sources=sources, rebuffer_s=rebuffer.round(4).tolist(),
            delay_ms=[float(s["end_ms"]) - float(s["request_start_ms"]) for s in segments],
            buffer_s=[float(s["buffer_s"]) for s in segments], startup_s=round(startup_s, 3),
            stall_count=len(stalls), stall_s=round(sum(e - s for s, e in stalls) / MS_PER_S, 3), score=score,
            mean_bitrate_kbps=float(np.mean(np.asarray(video.bitrates_kbps)[levels])),
            switches=int(np.sum(levels[1:] != levels[:-1])),
            server_share=from_server / max(video.n_chunks - 1, 1),
        )  # fmt: skip


@dataclass(frozen=True)
class ServerView:
    """The server's telemetry of one session, and how it agrees with the player."""

    rows: int
    levels_agree: float  # share of logged chunks whose reported level is the player's level
    decisions_followed: float  # share of server decisions for segments 1..N-1 the player then fetched
    rebuffer_ms_logged: float  # the last report's cumulative stall time
    rebuffer_ms_player: float  # the player's stall time up to that report


def server_view(db: Path, session_id: str, outcome: PlayerOutcome, state: dict[str, Any]) -> ServerView:
    """Read ``session_id``'s rows from the telemetry ``db`` and compare them with the player's record."""
    ingest_pending(db)  # rows a server that did not stop cleanly left journaled
    with contextlib.closing(sqlite3.connect(db)) as con:
        rows = con.execute(
            "SELECT chunk_index, quality, decided_quality, rebuffer_ms, end_ms FROM chunks "
            "WHERE session_id = ? ORDER BY id",
            (session_id,),
        ).fetchall()
    if not rows:
        return ServerView(0, 0.0, 0.0, 0.0, 0.0)
    n = len(outcome.levels)
    agree = sum(1 for index, quality, *_ in rows if 0 <= index < n and outcome.levels[index] == quality)
    decided = [(index + 1, d) for index, _, d, *_ in rows if d is not None and 0 <= index + 1 < n]
    followed = sum(1 for index, d in decided if outcome.levels[index] == d)
    *_, last_rebuffer, last_end = rows[-1]
    stalls = [(float(s["start_ms"]), float(s["end_ms"])) for s in state.get("stalls", [])]
    player_ms = sum(max(0.0, min(e, float(last_end)) - s) for s, e in stalls)
    return ServerView(
        rows=len(rows), levels_agree=agree / len(rows), decisions_followed=followed / max(len(decided), 1),
        rebuffer_ms_logged=float(last_rebuffer), rebuffer_ms_player=round(player_ms, 1),
    )  # fmt: skip


@dataclass(frozen=True)
class SimulatedView:
    """The chunk simulator's prediction for the same session."""

    score: float
    mean_bitrate_kbps: float
    rebuffer_s: float
    levels: list[int]


def simulate_session(policy: str, trace_path: Path, video: Video, delay_ms: float) -> SimulatedView | None:
    """Play ``policy`` on the trace in the simulator (None for ``dashjs``, which has no simulator twin)."""
    if policy == DASHJS:
        return None
    spec = "default" if policy == LEARNED else policy
    link = LinkConfig.evaluation().model_copy(update={"rtt_ms": delay_ms})
    logs = run_policy(make_policy(spec), [load_file(trace_path)], video, link)
    levels = logs.quality[0]
    kbps = float(np.mean(np.asarray(video.bitrates_kbps)[levels]))
    return SimulatedView(score=float(logs.scores()[0]), mean_bitrate_kbps=kbps,
                         rebuffer_s=float(logs.rebuf_s[0, 1:].sum()), levels=levels.tolist())  # fmt: skip


@dataclass(frozen=True)
class EmulationResult:
    """One (trace, policy) session: player, server and simulator views."""

    trace: str
    policy: str
    session_id: str
    wall_s: float
    player: PlayerOutcome
    server: ServerView | None
    simulated: SimulatedView | None
    counts: dict[str, int] = field(default_factory=dict)
    player_name: str = DEFAULT_PLAYER  # the web player that played it (a key of PLAYER_MANIFESTS)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return asdict(self)


@contextlib.contextmanager
def running_server(
    asset: Path,
    trace: Path | None,
    policy: str,
    *,
    delay_ms: float,
    telemetry_db: Path,
    log_path: Path,
    timeout_s: float = 60,
) -> Iterator[str]:
    """A decision server for one session, serving ``asset`` at /media; yields its base URL; stopped on exit.

    With ``trace`` the server paces /media itself; without, /media is unpaced (kernel shaping).
    """
    server_policy = "bba" if policy == DASHJS else policy  # the dash.js baseline ignores the server's answers
    settings: dict[str, object] = {
        "media_dir": asset, "video": asset, "link_delay_ms": delay_ms, "policy": server_policy,
        "telemetry_db": telemetry_db, "watch_interval_s": 0,
    }  # fmt: skip
    if trace is not None:
        settings["link_trace"] = trace
    try:
        with local_server(settings=settings, log_path=log_path, startup_s=timeout_s) as server:
            yield server.url
    except ServerStartError as err:
        raise EmulationError(str(err)) from None


def play(
    url: str,
    *,
    timeout_s: float,
    chromium: str = DEFAULT_CHROMIUM,
    headless: bool = True,
    on_start: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Open ``url`` (a /player page) in Chromium and return ``window.resinSession`` once playback ended.

    ``on_start`` runs just before the page is opened (the kernel shaper starts its trace there).
    """
    try:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise EmulationError("playwright is not installed: pip install 'resin-abr[dev]' (or playwright)") from None
    if not Path(chromium).exists():
        raise EmulationError(f"{chromium}: no Chromium there (Debian: apt-get install chromium)")
    console: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=headless, args=list(CHROMIUM_ARGS))
        try:
            page = browser.new_page()
            page.on("pageerror", lambda err: console.append(f"pageerror: {err}"))
            page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}") if msg.type == "error" else None)
            if on_start is not None:
                on_start()
            page.goto(url)
            try:
                done = "() => window.resinSession && (window.resinSession.ended || window.resinSession.error)"
                page.wait_for_function(done, timeout=timeout_s * MS_PER_S, polling=500)
            except PlaywrightError as err:
                count = page.evaluate("() => window.resinSession ? window.resinSession.segments.length : -1")
                raise EmulationError(f"playback did not end in {timeout_s:.0f} s ({count} segments; "
                                     f"{err.__class__.__name__}); page errors: {console[-5:]}") from None  # fmt: skip
            state: dict[str, Any] = json.loads(page.evaluate("() => JSON.stringify(window.resinSession)"))
        finally:
            browser.close()
    if state.get("error"):
        raise EmulationError(f"the player failed: {state['error']}; page errors: {console[-5:]}")
    return state


def emulate(
    asset: Path,
    traces: Sequence[Path],
    policies: Sequence[str],
    out_dir: Path,
    *,
    delay_ms: float = LinkConfig().rtt_ms,
    chromium: str = DEFAULT_CHROMIUM,
    shaping: Literal["app", "kernel"] = "app",
    player: str = DEFAULT_PLAYER,
    on_result: Callable[[EmulationResult], None] | None = None,
) -> list[EmulationResult]:
    """Play every trace with every policy; per-session JSON under ``out_dir``; the results in order.

    ``shaping``: ``app`` paces responses in the segment server (`abr_server.shaping`); ``kernel`` shapes
    the loopback with ``tc tbf`` (`abr_server.lab.netns`; the process must be in a private network namespace).
    ``player``: the web player (``dashjs``, ``hlsjs`` or ``shaka``); the ``dashjs`` policy needs dash.js.
    """
    if shaping == "kernel" and not private_netns():
        raise EmulationError("kernel shaping needs a private network namespace: run under `unshare -n`")
    manifest = PLAYER_MANIFESTS.get(player)
    if manifest is None:
        raise EmulationError(f"unknown player {player!r}: one of {', '.join(PLAYER_MANIFESTS)}")
    if not (asset / manifest).is_file():
        raise EmulationError(f"{asset}: no {manifest} for {player} (make the asset with `abr media make`)")
    if DASHJS in policies and player != DASHJS:
        raise EmulationError(f"the {DASHJS} policy is dash.js's own ABR: it plays only with player {DASHJS}")
    video = load_video(str(asset))
    timeout_s = video.duration_s * 4 + 120
    results: list[EmulationResult] = []
    for policy in policies:
        make_policy("default" if policy in (LEARNED, DASHJS) else policy)  # a bad spec fails before playing
    for trace in traces:
        for policy in policies:
            played_by = "" if player == DEFAULT_PLAYER else f"{player}."
            run_dir = out_dir / "sessions" / f"{trace.name}.{played_by}{policy.replace(':', '_')}"
            run_dir.mkdir(parents=True, exist_ok=True)
            session_id = f"emu-{len(results)}-{int(time.time())}"
            db = run_dir / "telemetry.sqlite"
            for stale in run_dir.glob("telemetry.sqlite*"):  # the database, its WAL files and its journal folder
                if stale.is_dir():
                    shutil.rmtree(stale)
                else:
                    stale.unlink()
            started = time.monotonic()
            shaper = KernelShaper(load_file(trace)) if shaping == "kernel" else None
            if shaper is not None:
                shaper.setup()
            try:
                with running_server(asset, None if shaper else trace, policy, delay_ms=delay_ms, telemetry_db=db,
                                    log_path=run_dir / "server.log") as url:  # fmt: skip
                    mode = "native" if policy == DASHJS else "server"
                    page = f"{url}/player?player={player}&src=/media/{manifest}&abr={mode}&sid={session_id}"
                    state = play(page, timeout_s=timeout_s, chromium=chromium,
                                 on_start=shaper.start if shaper else None)  # fmt: skip
            finally:
                if shaper is not None:
                    shaper.stop()
            wall_s = time.monotonic() - started
            outcome = PlayerOutcome.from_state(state, video)
            server = server_view(db, session_id, outcome, state) if policy != DASHJS else None
            result = EmulationResult(
                trace=trace.name, policy=policy, session_id=session_id, wall_s=round(wall_s, 1), player=outcome,
                server=server, simulated=simulate_session(policy, trace, video, delay_ms),
                counts={k: int(v) for k, v in state.get("counts", {}).items() if v}, player_name=player,
            )  # fmt: skip
            write_atomic(run_dir / "player.json", json.dumps(state, indent=1).encode())
            write_atomic(run_dir / "result.json", json.dumps(result.to_json(), indent=1).encode())
            results.append(result)
            if on_result is not None:
                on_result(result)
    return results
