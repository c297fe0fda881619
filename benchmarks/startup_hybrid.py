"""Experiment: robustMPC decides the first K chunks of every session, a learned checkpoint the rest.

The learned policies trained across bandwidth scales lose to robustMPC at 4x-8x only in the first ten
chunks, where they climb the ladder more slowly (BENCHMARKS.md). This measures how much of that a
hand-over after K chunks recovers, on the generalisation suite's sets, against robustMPC on the same
traces (QoE_lin, chunks 2..N, greedy).

    PYTHONPATH=. python benchmarks/startup_hybrid.py runs/kick-16/last --chunks 0,4,8,12
"""

from __future__ import annotations

import argparse

import numpy as np

from abr_common.paths import DEFAULT_TRACE_ROOT
from policy.base import Policy, make_policy
from policy.evaluation.loop import run_policy, summarize
from simulator.observation import Observation
from simulator.video import Video, load_video
from traces.sources import resolve

EXPERT = "robustmpc"
SCALES = ("0.5", "1", "2", "4", "8")


class StartupHybrid(Policy):
    """``EXPERT`` for the chunks before ``chunks``, then the learned checkpoint (both see every chunk)."""

    name = "startup-hybrid"
    stateful = True

    def __init__(self, checkpoint: str, chunks: int) -> None:
        super().__init__()
        self.chunks = chunks
        self.expert, self.learned = make_policy(EXPERT), make_policy(f"checkpoint:{checkpoint}")

    def begin(self, n_sessions: int, video: Video) -> None:
        self.video = video
        self.expert.begin(n_sessions, video)
        self.learned.begin(n_sessions, video)

    def select(self, obs: Observation) -> np.ndarray:
        early, late = self.expert.select(obs), self.learned.select(obs)
        return np.where(obs.chunk_index < self.chunks, early, late).astype(np.int64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a checkpoint folder (e.g. runs/kick-16/last)")
    parser.add_argument("--chunks", default="0,4,8,12", help="hand-over points K, comma-separated (0: learned only)")
    parser.add_argument("--trace-root", default=str(DEFAULT_TRACE_ROOT))
    args = parser.parse_args()
    video = load_video(f"{args.trace_root}/video-sizes")
    hand_over = [int(k) for k in args.chunks.split(",")]
    sets = [f"{args.trace_root}/{name}" for name in ("fcc-test", "norway-test", "puffer-2110-test")]
    sets += [f"markov:n=60,seed=401@scale={scale}" for scale in SCALES]
    print("| trace set | robustMPC | " + " | ".join(f"K = {k}" for k in hand_over) + " |")
    print("|:---|---:|" + "---:|" * len(hand_over))
    for source in sets:
        traces = resolve(source)
        expert = summarize(run_policy(make_policy(EXPERT), traces, video), EXPERT, source, 0.0).qoe
        cells = []
        for k in hand_over:
            policy = StartupHybrid(args.checkpoint, k) if k else make_policy(f"checkpoint:{args.checkpoint}")
            qoe = summarize(run_policy(policy, traces, video), policy.label, source, 0.0).qoe
            cells.append(f"{qoe:.3f} ({(qoe - expert) / abs(expert) * 100:+.1f}%)")
        print(f"| {source.rsplit('/', 1)[-1]} | {expert:.3f} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
