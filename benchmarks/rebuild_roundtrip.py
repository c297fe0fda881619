"""Check: sessions rebuilt from their chunk reports replay to the same QoE in the simulator.

Each policy plays a trace set; every session's chunks become reports as a player sends them (request
start, end, delay; the clock runs on through buffer-full sleeps), the reports become a trace
(`abr_server.retrain.rebuild.session_trace`), and the same policy replays the rebuilt traces. A faithful
rebuild gives back the sessions' QoE.

    PYTHONPATH=. python benchmarks/rebuild_roundtrip.py --traces "markov:n=16,seed=11@scale=8"
"""

from __future__ import annotations

import argparse

import numpy as np

from abr_server.retrain.rebuild import RebuildConfig, session_trace
from policy.base import make_policy
from policy.evaluation.loop import run_policy
from simulator.video import load_video
from traces.sources import resolve
from traces.trace import Trace


def rebuilt(delay_ms: np.ndarray, sleep_ms: np.ndarray, chunk_bytes: np.ndarray, name: str) -> Trace | None:
    """One session's reports (a chunk's request starts after the previous one's end and sleep) as a trace."""
    starts = np.concatenate([[0.0], np.cumsum(delay_ms + sleep_ms)[:-1]])
    piece = [(0.0, float(k), float(chunk_bytes[k]), float(starts[k]), float(starts[k] + delay_ms[k]),
              float(delay_ms[k])) for k in range(len(delay_ms))]  # fmt: skip
    return session_trace(name, piece, RebuildConfig())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--traces", default="markov:n=16,seed=11@scale=8")
    parser.add_argument("--policies", default="robustmpc,default,fixed:level=5")
    parser.add_argument("--video", default="builtin")
    args = parser.parse_args()
    video, traces = load_video(args.video), resolve(args.traces)
    print("| policy | QoE_lin of the sessions | replayed on their rebuilt traces | sleep s per session |")
    print("|---|---:|---:|---:|")
    for spec in args.policies.split(","):
        logs = run_policy(make_policy(spec), traces, video)
        sessions = [rebuilt(np.asarray(logs.delay_ms[i], float), np.asarray(logs.sleep_ms[i], float),
                            np.asarray(logs.chunk_bytes[i], float), f"r{i}") for i in range(len(traces))]  # fmt: skip
        kept = [t for t in sessions if t is not None]
        again = run_policy(make_policy(spec), kept, video)
        sleep_s = float(np.asarray(logs.sleep_ms).sum(axis=1).mean()) / 1000
        print(f"| {spec} | {logs.scores().mean():.3f} | {again.scores().mean():.3f} | {sleep_s:.1f} |")


if __name__ == "__main__":
    main()
