"""Trace-driven chunk-level ABR simulator.

Unit convention (everywhere in this package): names carry their unit. Times are seconds (``_s``)
unless named ``_ms``; sizes are bytes (``_bytes``); bitrates are kbit/s (``_kbps``) or Mbit/s
(``_mbps``); throughput in traces is Mbit/s. A "level" or "quality" is an index into the ladder,
0 = lowest.
"""

from simulator.batch import BatchSimulator, ChunkResult, TraceTable
from simulator.envs import ENV_ID, ABREnv, ABRVectorEnv, register_envs
from simulator.link import LinkConfig
from simulator.observation import Observation, ObservationBuilder, ObservationSpec
from simulator.qoe import QoEConfig, session_qoe, session_score
from simulator.reference import ChunkOutcome, ScalarSession
from simulator.video import Video, VideoError

register_envs()

__all__ = [
    "ENV_ID",
    "ABREnv",
    "ABRVectorEnv",
    "BatchSimulator",
    "ChunkOutcome",
    "ChunkResult",
    "LinkConfig",
    "Observation",
    "ObservationBuilder",
    "ObservationSpec",
    "QoEConfig",
    "ScalarSession",
    "TraceTable",
    "Video",
    "VideoError",
    "register_envs",
    "session_qoe",
    "session_score",
]
