"""The decision service: sessions, policy choice (learned, classic, A/B), fallback, telemetry, model swaps."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from abr_common.units import MS_PER_S
from abr_server.catalogue import Catalogue
from abr_server.inference import LoadedModel, MicroBatcher, ModelSlot, ModelUnavailable
from abr_server.metrics import Metrics
from abr_server.players import AnonymousPlayers
from abr_server.registry import ModelRegistry, RefusedVersion, RegistryError
from abr_server.schemas import ChunkReport, Decision
from abr_server.sessions import Session, SessionStore, check_report, sweep_interval_s
from abr_server.settings import DEFAULT_VIDEO, Settings
from abr_server.telemetry import TelemetryStore
from policy.base import Policy, make_policy
from simulator.observation import ObservationSpec
from simulator.video import Video

log = logging.getLogger("abr_server")


def _lowest_priority() -> None:
    """Make the calling thread the last to get a CPU (Linux: a thread's niceness is its own)."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


LEARNED = "learned"


class DecisionService:
    """Everything a decision needs, built once per app in its lifespan."""

    def __init__(
        self, settings: Settings, video: Video, registry: ModelRegistry, metrics: Metrics,
        catalogue: Catalogue | None = None,
    ) -> None:  # fmt: skip
        self.settings, self.video, self.registry, self.metrics = settings, video, registry, metrics
        self.catalogue = catalogue if catalogue is not None else Catalogue({DEFAULT_VIDEO: video})
        self.spec = ObservationSpec()
        self.store = SessionStore(video, self.spec, settings.max_sessions, settings.session_ttl_s)
        self.players = AnonymousPlayers("pensieve", max_addresses=settings.max_sessions)
        served, refused = registry.load_at_start()  # never raises: without a servable version, the fallback rule
        self.metrics.registry_refused.inc(len(refused))
        self.slot = ModelSlot(served)
        on_thread = settings.inference_thread
        if on_thread is None:
            on_thread = self.slot.current.device.type != "cpu"
        self.batcher = MicroBatcher(self.slot, settings.max_batch, settings.max_wait_ms / MS_PER_S,
                                    on_batch=metrics.batch_size.observe, inline=not on_thread,
                                    on_nonfinite=metrics.nonfinite_outputs.inc)  # fmt: skip
        self.fallback = self._classic(settings.fallback_policy)
        for spec in {settings.policy, settings.ab_policy, settings.ladder_fallback_policy} - {None, LEARNED}:
            assert spec is not None
            self._classic(spec)  # fail at start-up, not on the first request, if a spec is wrong
        self.telemetry = (
            TelemetryStore(settings.telemetry_db, settings.telemetry_flush_interval_s)
            if settings.telemetry_db
            else None
        )
        self._watcher: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._swap_lock = asyncio.Lock()
        # Models load on a thread of their own at the lowest CPU priority: answers go first while one loads.
        self._loader = ThreadPoolExecutor(1, thread_name_prefix="abr-model-load", initializer=_lowest_priority)

    def _classic(self, spec: str, video: Video | None = None) -> Policy:
        policy = make_policy(spec)
        policy.begin(1, self.video if video is None else video)
        return policy

    def telemetry_state(self) -> str:
        """``off`` (no database), ``ok``, ``spilling`` (the journal cannot be written; rows wait in memory),
        ``dropping`` (and the spill is full) or ``not_moving`` (journaled rows cannot reach the database)."""
        store = self.telemetry
        if store is None:
            return "off"
        if not store.journal_ok:
            return "dropping" if store.spilled >= store.spill_max_rows else "spilling"
        return "not_moving" if store.failed else "ok"

    def observe_gauges(self) -> None:
        """Bring the gauges up to date (before /metrics answers)."""
        self.metrics.sessions.set(len(self.store))
        store = self.telemetry
        if store is not None:
            self.metrics.telemetry_spilled.set(store.spilled)
            self.metrics.telemetry_dropped.set(store.dropped)
            self.metrics.telemetry_outages.set(store.outages)
            self.metrics.telemetry_unmoved.set(store.failed)

    async def _sweep_sessions(self) -> None:
        interval_s = sweep_interval_s(self.store.ttl_s)
        while True:
            await asyncio.sleep(interval_s)
            if self.store.sweep():
                self.metrics.sessions.set(len(self.store))

    async def start(self) -> None:
        """Start background tasks (micro-batcher, registry watcher, session sweep)."""
        await self.batcher.start()
        self._sweeper = asyncio.create_task(self._sweep_sessions(), name="abr-session-sweep")
        if self.settings.watch_interval_s > 0 and self.registry.root is not None:
            self._watcher = asyncio.create_task(self._watch(), name="abr-registry-watcher")

    async def stop(self) -> None:
        """Stop background tasks and commit queued telemetry."""
        for task in (self._watcher, self._sweeper):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    try:
                        await task
                    except Exception:  # a task that died must not fail the shutdown
                        log.exception("background task %s had failed", task.get_name())
        await self.batcher.stop()
        self._loader.shutdown(wait=False, cancel_futures=True)
        if self.telemetry is not None:
            await asyncio.to_thread(self.telemetry.close)

    # ------------------------------------------------------------------ decisions

    def assign(self, session_id: str) -> str:
        """The policy of a new session: the A/B share (stable hash of the id) or the main policy."""
        ab = self.settings.ab_policy
        if ab and self.settings.ab_percent > 0:
            bucket = int.from_bytes(hashlib.sha256(session_id.encode()).digest()[:4], "big") % 10_000
            if bucket < self.settings.ab_percent * 100:
                return ab
        return self.settings.policy

    async def decide(self, session_id: str, report: ChunkReport, api: str) -> Decision:
        """Record ``report`` in the session and choose the next chunk's level."""
        started = time.perf_counter()
        named = self.catalogue.get(report.video)
        check_report(report, named[1])  # before the session exists: a refused report creates none
        session = self.store.get(session_id, self.assign(session_id), video=named)
        self.metrics.sessions.set(len(self.store))
        async with session.lock:  # one request at a time per session
            if session.last_decision is not None and report == session.last_report:
                # A retry of the same report (a player's timeout, the dash.js rule's synchronous re-ask): the
                # same answer, and the chunk is neither pushed into the history twice nor logged twice.
                self.metrics.repeats.inc()
                return session.last_decision
            session.push(report)
            decision = await self._choose(session, report)
            session.last_report, session.last_decision = report, decision
            if self.telemetry is not None:
                try:  # journaled (durable now) or, while the journal cannot be written, spilled or dropped
                    if self.telemetry.append(self._row(session_id, report, decision)):
                        self.metrics.telemetry_rows.inc()
                except ValueError as err:  # a row the journal refuses: the player still gets its answer
                    self.metrics.errors.labels("telemetry").inc()
                    log.error("telemetry row of session %r refused: %s", session_id, err)
        if decision.end_of_video:
            self.store.drop(session_id)
        self.metrics.decisions.labels(decision.policy).inc()
        self.metrics.video_decisions.labels(session.video_name).inc()
        self.metrics.latency.labels(api).observe(time.perf_counter() - started)
        return decision

    async def _choose(self, session: Session, report: ChunkReport) -> Decision:
        next_index = report.index + 1
        if next_index >= session.video.n_chunks:
            return self._decision(session, report.quality, next_index, session.policy, None, end=True)
        obs = session.observation()
        if session.policy != LEARNED or not self.catalogue.learned_fits(session.video_name):
            rule, named = session.policy, session.policy
            if rule == LEARNED:  # a ladder the model was not trained for: never its levels
                rule = self.settings.ladder_fallback_policy
                named = f"fallback:{rule}"
                self.metrics.fallbacks.labels("ladder").inc()
            if session.classic is None:
                session.classic = self._classic(rule, session.video)
            return self._decision(session, int(session.classic.select(obs)[0]), next_index, named, None)
        served = self.slot.current
        # States in the served model's own terms (a swap between here and the batch pairs a few early-session
        # states built for the previous version with the new one: both specs keep the same history).
        state = obs.to_state(session.video, served.spec if isinstance(served, LoadedModel) else self.spec)[0]
        reason = None
        try:
            # A future, not a coroutine: wait_for then needs no task per decision.
            level, version = await asyncio.wait_for(
                self.batcher.submit(state), self.settings.inference_timeout_ms / MS_PER_S
            )
            return self._decision(session, level, next_index, LEARNED, version)
        except TimeoutError:
            reason = "timeout"
        except ModelUnavailable as err:  # non-finite logits, or no model served: counted, logged once by the batcher
            reason = err.reason
        except Exception:
            reason = "model_error"
            log.exception("model inference failed; answering with the fallback")
        self.metrics.fallbacks.labels(reason).inc()
        level = int(self.fallback.select(obs)[0])
        return self._decision(session, level, next_index, f"fallback:{self.settings.fallback_policy}", None)

    def _decision(
        self, session: Session, level: int, for_index: int, policy: str, version: str | None, end: bool = False
    ) -> Decision:
        video = session.video
        level = int(np.clip(level, 0, video.n_levels - 1))
        return Decision(quality=level, bitrate_kbps=int(video.bitrates_kbps[level]), for_index=for_index,
                        policy=policy, model_version=version, end_of_video=end, video=session.video_name)  # fmt: skip

    def _row(self, session_id: str, r: ChunkReport, d: Decision) -> tuple[object, ...]:
        return (time.time(), session_id, r.index, r.quality, r.bytes, r.request_start_ms, r.first_byte_ms, r.end_ms,
                r.delay_ms, r.buffer_level_s, r.rebuffer_ms, None if d.end_of_video else d.quality, d.policy,
                d.model_version, d.video)  # fmt: skip

    # ------------------------------------------------------------------ models

    async def activate(self, version: str) -> LoadedModel:
        """Load, validate and serve ``version``; on any problem the current model stays."""
        async with self._swap_lock:
            try:
                loaded = await asyncio.get_running_loop().run_in_executor(self._loader, self.registry.load, version)
            except RefusedVersion:
                self.metrics.registry_refused.inc()
                raise
            # First: if it cannot be recorded, nothing changes. On a thread: the write is fsynced, and the
            # event loop answers players meanwhile.
            await asyncio.to_thread(self.registry.mark_active, version)
            self.slot.swap(loaded)
            self.metrics.model_swaps.inc()
            log.info("serving model version %s", version)
            return loaded

    async def rollback(self) -> LoadedModel:
        """Serve the previous model again."""
        async with self._swap_lock:
            previous = self.slot.previous
            if previous is None:
                raise RegistryError("no previous model to roll back to")
            await asyncio.to_thread(self.registry.mark_active, previous.version)
            self.slot.swap(previous)
            self.metrics.model_swaps.inc()
            return previous

    async def poll_registry(self) -> str | None:
        """One look at the registry: serve the newest version that appeared since the last look and validates.

        Returns the version now served, or None. Each new version is tried once: a refused one is logged in
        one line and skipped (an older new version is tried next). Errors other than refusals propagate.
        """
        for version in await asyncio.to_thread(self.registry.new_versions):
            try:
                await self.activate(version)
                return version
            except RegistryError as err:
                self.metrics.errors.labels("model_refused").inc()
                log.warning("%s", err)
        return None

    async def _watch(self) -> None:
        """Serve a version as soon as it appears in the registry; no error stops the watcher."""
        problem = None
        while True:
            await asyncio.sleep(self.settings.watch_interval_s)
            try:
                await self.poll_registry()
                problem = None
            except Exception as err:  # an unreadable folder, a full disk for ACTIVE...: counted, logged once
                self.metrics.registry_watch_errors.inc()
                line = f"registry watch of {self.registry.root} failed ({type(err).__name__}: {err}); still polling"
                if line != problem:
                    log.error("%s", " ".join(line.split()))
                problem = line
