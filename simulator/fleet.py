"""Fleet simulation (simpy): many players sharing trace-driven bottleneck links, arriving and leaving.

The chunk simulator gives each session a link of its own. Here players are attached to shared links:
concurrent downloads on a link split its capacity equally (the max-min fair share when every flow can
use any rate), recomputed whenever a download starts or finishes; the trace's rate changes are handled
exactly by integrating its capacity (`simulator.capacity.TraceCapacity`). Each player follows the chunk
simulator's rules: a download costs the round trip plus the transfer; ``rebuffer = max(delay - buffer,
0)``; ``buffer = max(buffer - delay, 0) + chunk duration``; above the buffer cap it sleeps in multiples of
the drain step; the first chunk is fetched at the initial level, the next levels come from the policy.

Link clock. The reference simulator does not advance the trace while a request's round trip elapses
(the RTT is added to the delay, not to the trace position). With ``clock="reference"`` (the default)
a link's trace clock likewise stands still while no transfer is running on it and every player on it
is waiting for its round trip, so one player per link reproduces the chunk simulator exactly (tested
to 1e-6). ``clock="wall"`` lets every link's trace run with simulated time, always.

Decisions come from a `Decider`, made per simulation by the `DeciderFactory` the caller passes: the
simulator knows nothing of policies. `policy.evaluation.fleet` turns a policy spec into one (decisions in
process, batched per instant); `abr_server.lab.fleet_client` asks a running decision server instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt
import simpy
import simpy.rt
from pydantic import BaseModel, ConfigDict, Field

from abr_common.units import MS_PER_S
from simulator.batch import TraceTable, start_prior_mbps
from simulator.capacity import TraceCapacity
from simulator.link import LinkConfig
from simulator.observation import Observation, ObservationBuilder, ObservationSpec
from simulator.qoe import QoEConfig, session_qoe
from simulator.reference import DEFAULT_INITIAL_QUALITY
from simulator.video import Video
from traces.trace import Trace

FloatArray = npt.NDArray[np.float64]
#: A flow is complete when fewer than this many bytes are left (float rounding of the capacity integral).
DONE_BYTES = 1e-6
#: Utilisation is sampled per link in bins of this length.
UTILISATION_BIN_S = 10.0


class FleetConfig(BaseModel):
    """The population and its links."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    n_links: int = Field(1, ge=1, description="Bottleneck links; link i plays trace i mod the number of traces.")
    players_per_link: int = Field(1, ge=0, description="Players on every link at time 0.")
    arrivals_per_s: float = Field(0.0, ge=0, description="Poisson arrivals of new players per link per second.")
    watch_s: float | None = Field(
        None, gt=0, description="Mean watch time of arriving players (exponential); None: the whole video."
    )
    duration_s: float = Field(600.0, gt=0, description="Arrivals stop here; players still watching finish.")
    clock: Literal["reference", "wall"] = Field("reference", description="Link trace clock (module docstring).")
    link: LinkConfig = Field(default_factory=LinkConfig.evaluation)
    initial_quality: int = Field(DEFAULT_INITIAL_QUALITY, ge=0)
    seed: int = 0


@dataclass
class _Flow:
    remaining: float
    done: simpy.Event


class SharedLink:
    """A trace-driven link whose capacity is split equally among its running transfers."""

    def __init__(self, env: simpy.Environment, capacity: TraceCapacity, clock: Literal["reference", "wall"]) -> None:
        self.env, self.capacity, self.clock = env, capacity, clock
        self.flows: list[_Flow] = []
        self.trace_s = 0.0  # trace time elapsed (equals simulated time with clock="wall")
        self.delivered_bytes = 0.0
        self.capacity_in_use_bytes = 0.0  # capacity while at least one player was on the link
        self.members = 0  # players attached and not finished
        self.in_rtt = 0  # of which waiting for their request's round trip
        self._updated_at = env.now
        self._generation = 0
        self.paused = False
        self.busy_bins: dict[int, float] = {}  # utilisation bin -> delivered bytes

    # -- clock ------------------------------------------------------------------------------------
    def _advance(self) -> None:
        """Bring the trace clock and every running transfer up to the current simulated time."""
        elapsed = self.env.now - self._updated_at
        self._updated_at = self.env.now
        if elapsed <= 0 or self.paused:
            return
        start = self.trace_s
        self.trace_s += elapsed
        if self.members > 0:
            self.capacity_in_use_bytes += self.capacity.bytes_by(self.trace_s) - self.capacity.bytes_by(start)
        if self.flows:
            delivered = self.capacity.bytes_by(self.trace_s) - self.capacity.bytes_by(start)
            share = delivered / len(self.flows)
            for flow in self.flows:
                flow.remaining -= share
            self.delivered_bytes += delivered
            self._bin(self.env.now - elapsed, self.env.now, delivered)

    def _bin(self, t0: float, t1: float, delivered: float) -> None:
        first, last = int(t0 // UTILISATION_BIN_S), int(t1 // UTILISATION_BIN_S)
        if first == last or t1 <= t0:
            self.busy_bins[first] = self.busy_bins.get(first, 0.0) + delivered
            return
        for b in range(first, last + 1):  # split by time (the rate's shape inside is a detail here)
            lo, hi = max(t0, b * UTILISATION_BIN_S), min(t1, (b + 1) * UTILISATION_BIN_S)
            if hi > lo:
                self.busy_bins[b] = self.busy_bins.get(b, 0.0) + delivered * (hi - lo) / (t1 - t0)

    def _reschedule(self) -> None:
        """Decide whether the clock runs, and wake up at the next transfer completion."""
        self._generation += 1
        self.paused = self.clock == "reference" and not self.flows and self.members > 0 and self.in_rtt == self.members
        if not self.flows:
            return
        smallest = min(flow.remaining for flow in self.flows)
        target = self.capacity.bytes_by(self.trace_s) + max(smallest, 0.0) * len(self.flows)
        wait_s = max(self.capacity.time_for(target) - self.trace_s, 0.0)
        generation = self._generation
        self.env.timeout(wait_s).callbacks.append(lambda _event: self._wake(generation))

    def _wake(self, generation: int) -> None:
        if generation != self._generation:
            return  # something changed since this wake-up was planned
        self._advance()
        smallest = min(flow.remaining for flow in self.flows)
        finished = [f for f in self.flows if f.remaining - smallest <= DONE_BYTES or f.remaining <= DONE_BYTES]
        self.flows = [f for f in self.flows if f not in finished]
        for flow in finished:
            flow.done.succeed()
        self._reschedule()

    # -- what players do --------------------------------------------------------------------------
    def transfer(self, n_bytes: float) -> simpy.Event:
        """Start a transfer of ``n_bytes`` payload bytes; the event fires when the last one arrived."""
        self._advance()
        done = self.env.event()
        self.flows.append(_Flow(float(n_bytes), done))
        self._reschedule()
        return done

    def change(self, *, members: int = 0, in_rtt: int = 0) -> None:
        """A player joined/left (``members``) or started/ended a round trip (``in_rtt``)."""
        self._advance()
        self.members += members
        self.in_rtt += in_rtt
        self._reschedule()


class Decider(Protocol):
    """Where players' decisions come from: a policy in process, or a remote server.

    ``calls`` counts the times it decided (one call may decide for several players), ``decisions`` the
    levels it handed out.
    """

    calls: int
    decisions: int

    def decide(self, player: int, obs: Observation, log: PlayerLog) -> simpy.Event:
        """An event whose value is the level ``player`` fetches next (``log``: its session so far)."""
        ...

    def finish(self, player: int, log: PlayerLog) -> None:
        """The player left (after its last chunk, or earlier)."""
        ...


#: Makes the `Decider` of one simulation, on its simpy environment (called once per `simulate_fleet`).
DeciderFactory = Callable[[simpy.Environment], Decider]


def stack_observations(observations: Sequence[Observation]) -> Observation:
    """One batch from several observations (their sessions in order)."""
    if len(observations) == 1:
        return observations[0]
    fields = Observation.__dataclass_fields__
    return Observation(**{name: np.concatenate([getattr(o, name) for o in observations]) for name in fields})


@dataclass
class PlayerLog:
    """One player's session."""

    player: int
    link: int
    start_s: float
    end_s: float = math.nan
    quality: list[int] = field(default_factory=list)
    request_s: list[float] = field(default_factory=list)  # when each chunk was requested (simulated time)
    delay_ms: list[float] = field(default_factory=list)
    sleep_ms: list[float] = field(default_factory=list)
    buffer_s: list[float] = field(default_factory=list)
    rebuf_s: list[float] = field(default_factory=list)
    chunk_bytes: list[int] = field(default_factory=list)


@dataclass
class FleetResult:
    """Every player's log and every link's delivered bytes and capacity."""

    config: FleetConfig
    policy: str
    video: Video
    players: list[PlayerLog]
    link_traces: list[str]
    link_delivered_bytes: list[float]
    link_capacity_bytes: list[float]  # the link's capacity while players were on it
    link_busy_bins: list[dict[int, float]]
    end_s: float
    decider_calls: int

    def player_scores(self, qoe: QoEConfig | None = None) -> FloatArray:
        """Mean per-chunk QoE of each player over chunks 2..N it watched (NaN if it watched < 2)."""
        qoe = qoe or QoEConfig()
        scores = np.full(len(self.players), np.nan)
        for i, p in enumerate(self.players):
            if len(p.quality) >= 2:
                per_chunk = session_qoe(qoe, self.video, p.quality, p.rebuf_s, self.config.initial_quality)
                scores[i] = float(np.mean(per_chunk[1:]))
        return scores

    def summary(self, qoe: QoEConfig | None = None) -> dict[str, Any]:
        """Population metrics (JSON-ready)."""
        scores = self.player_scores(qoe)
        valid = scores[~np.isnan(scores)]
        watch_h = sum(max(p.end_s - p.start_s, 0.0) for p in self.players if not math.isnan(p.end_s)) / 3600.0
        stalls = sum(sum(1 for r in p.rebuf_s[1:] if r > 0) for p in self.players)
        fairness = [j for j in self.jain_per_link() if not math.isnan(j)]
        capacity = sum(self.link_capacity_bytes)
        return {
            "policy": self.policy, "players": len(self.players), "links": self.config.n_links,
            "qoe_mean": float(valid.mean()) if valid.size else None,
            "qoe_p5": float(np.percentile(valid, 5)) if valid.size else None,
            "mean_bitrate_kbps": float(np.mean([np.mean(np.asarray(self.video.bitrates_kbps)[p.quality])
                                                for p in self.players if p.quality])) if self.players else None,
            "stalls_per_hour": stalls / watch_h if watch_h > 0 else None,
            "rebuffer_ratio": sum(sum(p.rebuf_s[1:]) for p in self.players) / (watch_h * 3600) if watch_h else None,
            "jain_fairness_mean": float(np.mean(fairness)) if fairness else None,
            # Delivered bytes over the capacity the links had while players were on them (sleeping included).
            "link_utilisation": sum(self.link_delivered_bytes) / capacity if capacity > 0 else None,
            "player_hours": watch_h, "simulated_s": self.end_s, "decider_calls": self.decider_calls,
        }  # fmt: skip

    def jain_per_link(self) -> list[float]:
        """Jain's fairness index of players' mean bitrates on each link (NaN with fewer than 2 players)."""
        ladder = np.asarray(self.video.bitrates_kbps, dtype=np.float64)
        out = []
        for link in range(self.config.n_links):
            rates = np.array([ladder[p.quality].mean() for p in self.players if p.link == link and p.quality])
            out.append(float(rates.sum() ** 2 / (rates.size * (rates**2).sum())) if rates.size >= 2 else math.nan)
        return out


def simulate_fleet(
    traces: Sequence[Trace],
    video: Video,
    deciders: DeciderFactory,
    config: FleetConfig | None = None,
    *,
    policy: str,
    spec: ObservationSpec | None = None,
    on_progress: Callable[[float], None] | None = None,
    realtime_factor: float | None = None,
) -> FleetResult:
    """Run the fleet until every player has finished (arrivals stop at ``config.duration_s``).

    Players decide through ``deciders(env)`` (e.g. `policy.evaluation.fleet.policy_deciders`, or a client
    of a running decision server, `abr_server.lab.fleet_client`); ``policy`` names them in the result.
    ``realtime_factor`` paces the simulation by the wall clock (seconds of wall time per simulated
    second: 1 is real time, 0.1 ten times faster), so a remote server sees requests at the rate real
    players would send them; the simulated outcome is the same as without pacing.
    """
    config = config or FleetConfig()
    if not traces:
        raise ValueError("no traces: a fleet needs at least one link trace")
    if not 0 <= config.initial_quality < video.n_levels:
        raise ValueError(f"initial_quality must be in [0, {video.n_levels}), got {config.initial_quality}")
    spec = spec or ObservationSpec()
    if realtime_factor is not None and realtime_factor <= 0:
        raise ValueError(f"realtime_factor must be > 0, got {realtime_factor}")
    env = (
        simpy.rt.RealtimeEnvironment(factor=realtime_factor, strict=False)
        if realtime_factor is not None
        else simpy.Environment()
    )
    rng = np.random.default_rng(config.seed)
    link_cfg = config.link
    if link_cfg.has_noise or link_cfg.start != "first":
        raise ValueError("fleet links use evaluation semantics: no delay noise, traces from their first sample")
    chosen = [traces[i % len(traces)] for i in range(config.n_links)]
    links = [SharedLink(env, TraceCapacity(t, link_cfg.payload_fraction), config.clock) for t in chosen]
    table = TraceTable(chosen, link_cfg)  # for the players' throughput priors
    decider = deciders(env)
    logs: list[PlayerLog] = []
    chunk_ms = video.chunk_duration_s * MS_PER_S
    all_done = env.event()  # every player has finished and no more will arrive
    watching = 0
    arriving = config.n_links if config.arrivals_per_s > 0 else 0

    def maybe_done() -> None:
        if watching == 0 and arriving == 0 and not all_done.triggered:
            all_done.succeed()

    max_buffer_ms = link_cfg.max_buffer_s * MS_PER_S

    def player(pid: int, link_index: int, n_chunks: int) -> Any:
        nonlocal watching
        watching += 1
        link = links[link_index]
        log = PlayerLog(pid, link_index, env.now)
        logs.append(log)
        builder = ObservationBuilder(1, video, spec)
        # What the player knew before it started: its link's throughput over the last prior_window_s.
        clock_s = np.array([chosen[link_index].times_s[0] + link.trace_s])
        key, episode = np.array([pid], dtype=np.uint64), np.zeros(1, dtype=np.uint64)
        builder.set_prior(slice(None), start_prior_mbps(link_cfg, table, np.array([link_index]), clock_s, key, episode))
        buffer_ms = 0.0
        level = config.initial_quality
        link.change(members=+1)
        for chunk in range(n_chunks):
            size = int(video.chunk_bytes[level, chunk])
            started = env.now
            link.change(in_rtt=+1)
            yield env.timeout(link_cfg.rtt_ms / MS_PER_S)
            link.change(in_rtt=-1)
            yield link.transfer(size)
            delay_ms = (env.now - started) * MS_PER_S
            rebuf_ms = max(delay_ms - buffer_ms, 0.0)
            buffer_ms = max(buffer_ms - delay_ms, 0.0) + chunk_ms
            sleep_ms = 0.0
            if buffer_ms > max_buffer_ms:
                sleep_ms = math.ceil((buffer_ms - max_buffer_ms) / link_cfg.drain_step_ms) * link_cfg.drain_step_ms
                buffer_ms -= sleep_ms
            next_index = chunk + 1
            remaining = video.n_chunks - next_index
            next_bytes = video.chunk_bytes[:, next_index] if next_index < video.n_chunks else np.zeros(video.n_levels)
            builder.push(slice(None), quality=np.array([level]), buffer_s=np.array([buffer_ms / MS_PER_S]),
                         chunk_bytes=np.array([float(size)]), delay_ms=np.array([delay_ms]),
                         chunk_index=np.array([chunk]), chunks_remaining=np.array([remaining]),
                         next_chunk_bytes=np.asarray(next_bytes, dtype=np.int64)[None, :])  # fmt: skip
            log.quality.append(level)
            log.request_s.append(started)
            log.chunk_bytes.append(size)
            log.delay_ms.append(delay_ms)
            log.sleep_ms.append(sleep_ms)
            log.buffer_s.append(buffer_ms / MS_PER_S)
            log.rebuf_s.append(rebuf_ms / MS_PER_S)
            if sleep_ms > 0:
                yield env.timeout(sleep_ms / MS_PER_S)
            if next_index < n_chunks:
                level = yield decider.decide(pid, builder.observation(), log)
        log.end_s = env.now
        link.change(members=-1)
        decider.finish(pid, log)
        watching -= 1
        maybe_done()

    next_pid = 0

    def watch_chunks() -> int:
        if config.watch_s is None:
            return video.n_chunks
        seconds = rng.exponential(config.watch_s)
        return int(min(max(math.ceil(seconds / video.chunk_duration_s), 1), video.n_chunks))

    for link_index in range(config.n_links):
        for _ in range(config.players_per_link):
            env.process(player(next_pid, link_index, video.n_chunks if config.watch_s is None else watch_chunks()))
            next_pid += 1
    if config.players_per_link == 0 and arriving == 0:
        all_done.succeed()

    def arrivals(link_index: int) -> Any:
        nonlocal next_pid, arriving
        while True:
            yield env.timeout(rng.exponential(1.0 / config.arrivals_per_s))
            if env.now >= config.duration_s:
                arriving -= 1
                maybe_done()
                return
            env.process(player(next_pid, link_index, watch_chunks()))
            next_pid += 1

    if config.arrivals_per_s > 0:
        for link_index in range(config.n_links):
            env.process(arrivals(link_index))
    if on_progress is not None:

        def progress() -> Any:
            while True:
                yield env.timeout(10.0)
                on_progress(env.now)

        env.process(progress())
    env.run(until=all_done)
    end_s = max((p.end_s for p in logs), default=0.0)
    for link in links:
        link._advance()
    capacity = [link.capacity_in_use_bytes for link in links]
    return FleetResult(
        config=config, policy=policy, video=video, players=logs, link_traces=[t.name for t in chosen],
        link_delivered_bytes=[link.delivered_bytes for link in links], link_capacity_bytes=capacity,
        link_busy_bins=[dict(link.busy_bins) for link in links], end_s=end_s, decider_calls=decider.calls,
    )  # fmt: skip
