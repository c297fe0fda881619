"""Gymnasium environments: a scalar `ABREnv` and a native vectorised `ABRVectorEnv` on the batch core.

An episode is one video: `reset` fetches chunk 0 at ``initial_quality`` (the reference convention) and
returns the observation after it; each `step(level)` fetches the next chunk and returns its QoE as the
reward; the episode terminates after the last chunk. Both envs take trace choice, start point and delay
noise from the same counter-based stream (a key drawn from the env's ``np_random`` when seeded, then
one counter per episode; see `simulator.batch`), so ``ABRVectorEnv(n, seed=s)`` equals
``SyncVectorEnv([ABREnv] * n)`` reset with seed s (sub-env i uses seed s + i).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import numpy.typing as npt
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from simulator.batch import (
    NOISE_DRAW0,
    START_DRAW,
    TRACE_DRAW,
    BatchSimulator,
    ChunkResult,
    TraceTable,
    episode_uniforms,
    noise_factors,
    session_key,
    start_prior_mbps,
    uniform_index,
)
from simulator.link import LinkConfig
from simulator.observation import HistoryPadding, Observation, ObservationBuilder, ObservationSpec
from simulator.qoe import QoEConfig
from simulator.reference import DEFAULT_INITIAL_QUALITY, ChunkOutcome, ScalarSession
from simulator.video import Video
from traces.trace import Trace

ENV_ID = "resin-abr/ABR-v0"
#: Keys of the per-step info dict (all scalars), shared by both envs.
INFO_KEYS = (
    "chunk_index",
    "quality",
    "bitrate_kbps",
    "chunk_bytes",
    "delay_ms",
    "sleep_ms",
    "buffer_s",
    "rebuf_s",
)

StateArray = npt.NDArray[np.float32]


def _configure(
    env: ABREnv | ABRVectorEnv,
    traces: Sequence[Trace] | None,
    video: Video | None,
    link: LinkConfig | None,
    qoe: QoEConfig | None,
    spec: ObservationSpec | None,
    initial_quality: int,
) -> None:
    """The settings both envs share, with their defaults (generated traces, built-in video, training link)."""
    if traces is None:
        from traces.sources import default_traces

        traces = default_traces()
    env.traces = list(traces)
    env.video = video if video is not None else Video.builtin()
    env.link = link if link is not None else LinkConfig.training()
    env.qoe = qoe if qoe is not None else QoEConfig()
    env.obs_spec = spec if spec is not None else ObservationSpec()
    if not 0 <= initial_quality < env.video.n_levels:
        raise ValueError(f"initial_quality must be in [0, {env.video.n_levels}), got {initial_quality}")
    env.initial_quality = initial_quality


#: Upper bound of every observation entry. Finite so the space can be sampled; no real value comes close
#: (the largest entry, throughput in kB/ms, would need 8 Tbit/s).
OBS_HIGH = 1e6


def _observation_space(video: Video, spec: ObservationSpec) -> spaces.Box:
    return spaces.Box(low=0.0, high=OBS_HIGH, shape=(6, spec.width(video)), dtype=np.float32)


class ABREnv(gym.Env[StateArray, np.int64]):
    """One streaming session per episode over a trace set (scalar reference semantics).

    Args:
        traces: trace set (default: the embedded generated traces).
        video: the video (default: the built-in synthetic video).
        link: link parameters (default: `LinkConfig.training()`: noise, random traces and starts).
        qoe: the reward's QoE variant (default QoE_lin).
        spec: observation shape/normalisation.
        initial_quality: level of chunk 0, fetched by `reset`.
    """

    metadata: dict[str, Any] = {"render_modes": []}
    traces: list[Trace]
    video: Video
    link: LinkConfig
    qoe: QoEConfig
    obs_spec: ObservationSpec
    initial_quality: int

    def __init__(
        self,
        traces: Sequence[Trace] | None = None,
        video: Video | None = None,
        link: LinkConfig | None = None,
        qoe: QoEConfig | None = None,
        spec: ObservationSpec | None = None,
        initial_quality: int = DEFAULT_INITIAL_QUALITY,
    ) -> None:
        _configure(self, traces, video, link, qoe, spec, initial_quality)
        self.observation_space: spaces.Box = _observation_space(self.video, self.obs_spec)  # type: ignore[assignment]
        self.action_space = spaces.Discrete(self.video.n_levels)
        self._utilities = self.qoe.utilities(self.video)
        self._builder = ObservationBuilder(1, self.video, self.obs_spec)
        self._table = TraceTable(self.traces, self.link)  # for the sessions' throughput priors
        self._session: ScalarSession | None = None
        self._next_trace = 0
        self._key: int | None = None
        self._episode = 0
        self._last_quality = initial_quality

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[StateArray, dict[str, Any]]:
        super().reset(seed=seed)
        if seed is not None or self._key is None:
            # The session's random stream: a key drawn from np_random, then one counter per episode.
            self._key, self._episode = session_key(self.np_random), 0
        key, episode = self._key, self._episode
        self._episode += 1
        n_traces = len(self.traces)
        if self.link.trace_order == "random":
            t = int(uniform_index(episode_uniforms(key, episode, TRACE_DRAW), n_traces))
        else:
            t = self._next_trace % n_traces
            self._next_trace += 1
        trace = self.traces[t]
        start = 0
        if self.link.start == "random":
            start = int(uniform_index(episode_uniforms(key, episode, START_DRAW), len(trace) - 1))
        noise = None
        if self.link.has_noise:
            draws = NOISE_DRAW0 + np.arange(self.video.n_chunks)
            noise = noise_factors(self.link, episode_uniforms(key, episode, draws)).tolist()
        self._session = ScalarSession(
            trace,
            self.video,
            self.link,
            start_index=start,
            noise_factors=noise,
        )
        self._trace_index = t
        self._builder.reset()
        prior = start_prior_mbps(
            self.link,
            self._table,
            np.array([t]),
            np.array([trace.times_s[start]]),
            np.array([key], dtype=np.uint64),
            np.array([episode], dtype=np.uint64),
        )
        self._builder.set_prior(slice(None), prior)
        outcome = self._session.download(self.initial_quality)
        self._last_quality = self.initial_quality
        self._push(outcome)
        return self._builder.state()[0], self._info(outcome)

    def step(self, action: Any) -> tuple[StateArray, float, bool, bool, dict[str, Any]]:
        if self._session is None:
            raise RuntimeError("call reset() before step()")
        level = int(action)
        if not self.action_space.contains(level):
            raise ValueError(f"action must be a level in [0, {self.video.n_levels}), got {action!r}")
        outcome = self._session.download(level)
        reward = float(self.qoe.level_qoe(self._utilities, level, self._last_quality, outcome.rebuf_s))
        self._last_quality = level
        self._push(outcome)
        return self._builder.state()[0], reward, outcome.end_of_video, False, self._info(outcome)

    def _push(self, o: ChunkOutcome) -> None:
        self._builder.push(
            slice(None),
            quality=[o.quality],
            buffer_s=[o.buffer_s],
            chunk_bytes=[o.chunk_bytes],
            delay_ms=[o.delay_ms],
            chunk_index=[o.chunk_index],
            chunks_remaining=[o.chunks_remaining],
            next_chunk_bytes=[o.next_chunk_bytes],
        )

    def _info(self, o: ChunkOutcome) -> dict[str, Any]:
        return {
            "trace_index": self._trace_index,
            "chunk_index": o.chunk_index,
            "quality": o.quality,
            "bitrate_kbps": self.video.bitrates_kbps[o.quality],
            "chunk_bytes": o.chunk_bytes,
            "delay_ms": o.delay_ms,
            "sleep_ms": o.sleep_ms,
            "buffer_s": o.buffer_s,
            "rebuf_s": o.rebuf_s,
        }


class ABRVectorEnv(VectorEnv[StateArray, npt.NDArray[np.int64], npt.NDArray[np.float64]]):
    """``num_envs`` sessions on the vectorised batch core; finished sessions reset in the same step.

    Infos hold per-session arrays of `INFO_KEYS` and ``trace_index`` (with Gymnasium's ``_key`` masks);
    when sessions finish, ``final_obs`` / ``final_info`` carry their last observation and info.
    ``prior``: whether sessions draw a throughput prior (`Observation.prior_mbps`); by default when the
    spec pads the history with it, so a run whose state ignores it does not pay for the draws.
    """

    metadata: dict[str, Any] = {"render_modes": [], "autoreset_mode": AutoresetMode.SAME_STEP}
    traces: list[Trace]
    video: Video
    link: LinkConfig
    qoe: QoEConfig
    obs_spec: ObservationSpec
    initial_quality: int

    def __init__(
        self,
        num_envs: int,
        traces: Sequence[Trace] | None = None,
        video: Video | None = None,
        link: LinkConfig | None = None,
        qoe: QoEConfig | None = None,
        spec: ObservationSpec | None = None,
        initial_quality: int = DEFAULT_INITIAL_QUALITY,
        device: Any = None,
        prior: bool | None = None,
    ) -> None:
        _configure(self, traces, video, link, qoe, spec, initial_quality)
        if prior is None:  # drawn when the state holds it; a caller whose rule reads it asks for it
            prior = self.obs_spec.history_padding is HistoryPadding.prior
        self.num_envs = num_envs
        self.single_observation_space = _observation_space(self.video, self.obs_spec)
        self.single_action_space = spaces.Discrete(self.video.n_levels)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.sim = BatchSimulator(self.traces, self.video, self.link, n_sessions=num_envs, device=device, prior=prior)
        self._builder = ObservationBuilder(num_envs, self.video, self.obs_spec)
        self._utilities = self.qoe.utilities(self.video)
        self._last_quality = np.full(num_envs, initial_quality, dtype=np.int64)
        self._kbps = np.asarray(self.video.bitrates_kbps, dtype=np.int64)

    def reset(
        self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[StateArray, dict[str, Any]]:
        if isinstance(seed, list):
            raise ValueError("ABRVectorEnv takes one integer seed (sub-env i uses seed + i)")
        self.sim.reset(seed=seed)
        self._builder.reset()
        result = self._first_chunks(np.ones(self.num_envs, dtype=bool))
        return self._builder.state(), self._infos(result, np.ones(self.num_envs, dtype=bool))

    def observation(self) -> Observation:
        """The sessions' current history as an `Observation` (what a classic rule reads; same step as the state)."""
        return self._builder.observation()

    def _first_chunks(self, mask: npt.NDArray[np.bool_]) -> ChunkResult:
        levels = np.full(self.num_envs, self.initial_quality, dtype=np.int64)
        result = self.sim.step(levels, active=None if mask.all() else mask)
        self._builder.update(result)
        self._last_quality[mask] = self.initial_quality
        return result

    def step(  # type: ignore[override]  # Gymnasium annotates terminations as float arrays
        self, actions: npt.ArrayLike
    ) -> tuple[StateArray, npt.NDArray[np.float64], npt.NDArray[np.bool_], npt.NDArray[np.bool_], dict[str, Any]]:
        levels = np.asarray(actions, dtype=np.int64).reshape(self.num_envs)
        result = self.sim.step(levels)
        rewards = self.qoe.level_qoe(self._utilities, levels, self._last_quality, _np(result.rebuf_s))
        self._last_quality = levels.copy()
        self._builder.update(result)
        terminated = _np(result.end_of_video).astype(bool)
        truncated = np.zeros(self.num_envs, dtype=bool)
        all_rows = np.ones(self.num_envs, dtype=bool)
        infos = self._infos(result, all_rows)
        obs = self._builder.state()
        if terminated.any():
            final_obs = np.full(self.num_envs, None, dtype=object)
            for i in np.flatnonzero(terminated):
                final_obs[i] = obs[i]
            final_info = self._infos(result, terminated)
            self.sim.reset(terminated)
            self._builder.reset(terminated)
            first = self._first_chunks(terminated)
            obs = self._builder.state()
            # The reset sessions report their new chunk 0, as SyncVectorEnv reports the reset's info.
            fresh = self._infos(first, terminated)
            for key, value in fresh.items():
                if not key.startswith("_"):
                    infos[key][terminated] = value[terminated]
            infos["final_obs"] = final_obs
            infos["_final_obs"] = terminated.copy()
            infos["final_info"] = final_info
            infos["_final_info"] = terminated.copy()
        return obs, rewards, terminated, truncated, infos

    def _infos(self, result: ChunkResult, rows: npt.NDArray[np.bool_]) -> dict[str, Any]:
        quality = _np(result.quality)
        values: dict[str, npt.NDArray[Any]] = {
            "trace_index": _np(result.trace_index),
            "chunk_index": _np(result.chunk_index),
            "quality": quality,
            "bitrate_kbps": self._kbps[quality],
            "chunk_bytes": _np(result.chunk_bytes),
            "delay_ms": _np(result.delay_ms),
            "sleep_ms": _np(result.sleep_ms),
            "buffer_s": _np(result.buffer_s),
            "rebuf_s": _np(result.rebuf_s),
        }
        infos: dict[str, Any] = {}
        for key, value in values.items():
            infos[key] = np.where(rows, value, np.zeros_like(value))
            infos[f"_{key}"] = rows.copy()
        return infos


def _np(x: Any) -> npt.NDArray[Any]:
    return x if isinstance(x, np.ndarray) else x.detach().cpu().numpy()


def register_envs() -> None:
    """Register `ENV_ID` with its scalar entry point and the native vector entry point (idempotent)."""
    if ENV_ID in gym.registry:
        return
    gym.register(
        id=ENV_ID,
        entry_point="simulator.envs:ABREnv",
        vector_entry_point="simulator.envs:ABRVectorEnv",
        disable_env_checker=False,
    )
