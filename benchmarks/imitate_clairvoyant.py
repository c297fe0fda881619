"""Experiment: can a causal policy learn the fcc target (1.15) by imitating the clairvoyant planner?

DAgger: each round plays every training trace once (random start points, no delay noise) with the
student (round 0 with the teacher), labels every decision with the level the clairvoyant planner
(`policy.clairvoyant`, which knows the next ``--horizon`` chunks of throughput) would fetch from that
exact simulator state, adds the pairs to the data set and trains the actor on all of it by cross-entropy.
The student starts from the shipped default model. After each round it prints one JSON line with its
greedy QoE_lin on the three test sets.

    PYTHONPATH=. python benchmarks/imitate_clairvoyant.py --rounds 12 --horizon 4
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from abr_common.paths import DEFAULT_TRACE_ROOT
from policy.clairvoyant import ClairvoyantConfig, clairvoyant_levels
from policy.evaluation.loop import run_policy
from policy.learned import DEFAULT_MODEL_DIR, ModelPolicy
from policy.learning.checkpoint import load_checkpoint
from policy.learning.network import ActorCritic
from simulator.batch import BatchSimulator
from simulator.link import LinkConfig
from simulator.observation import ObservationBuilder, ObservationSpec
from simulator.video import Video
from traces.sources import resolve
from traces.trace import Trace

TEST_SETS = ("fcc-test", "norway-test", "puffer-2110-test")


def scores(model: ActorCritic, video: Video, spec: ObservationSpec, tests: dict[str, list[Trace]]) -> dict[str, float]:
    model.eval()
    out = {
        name: float(run_policy(ModelPolicy(model, spec), traces, video).scores().mean())
        for name, traces in tests.items()
    }
    model.train()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--horizon", type=int, default=4, help="The teacher's look-ahead in chunks.")
    parser.add_argument("--traces", default=f"{DEFAULT_TRACE_ROOT}/fcc-train,{DEFAULT_TRACE_ROOT}/norway-train")
    parser.add_argument("--video", default=f"{DEFAULT_TRACE_ROOT}/video-sizes")
    parser.add_argument("--epochs", type=int, default=4, help="Passes over the aggregated data per round.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    video = Video.from_size_files(args.video)
    spec = ObservationSpec()
    traces = [t for source in args.traces.split(",") for t in resolve(source)]
    tests = {name: resolve(f"{DEFAULT_TRACE_ROOT}/{name}") for name in TEST_SETS}
    model = load_checkpoint(DEFAULT_MODEL_DIR, video).model
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-4)
    link = LinkConfig(start="random")  # the teacher needs exact delays: no noise
    teacher = ClairvoyantConfig(horizon=args.horizon)
    states: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    started = time.perf_counter()
    print(json.dumps({"round": "start", **scores(model, video, spec, tests)}), flush=True)
    for r in range(args.rounds):
        b = len(traces)
        sim = BatchSimulator(traces, video, link, n_sessions=b, seed=args.seed * 1000 + r)
        sim.reset(trace_index=np.arange(b), seed=args.seed * 1000 + r)
        builder = ObservationBuilder(b, video, spec)
        levels = np.full(b, 1, dtype=np.int64)
        for chunk in range(video.n_chunks):
            builder.update(sim.step(levels))
            if chunk + 1 == video.n_chunks:
                break
            state = builder.observation().to_state(video, spec)
            label = clairvoyant_levels(traces, video, link, sim.state(), levels, teacher)
            states.append(state)
            labels.append(label)
            if r == 0:
                levels = label
            else:
                with torch.no_grad():
                    levels = model.act_greedy(torch.as_tensor(state)).numpy().astype(np.int64)
        x, y = torch.as_tensor(np.concatenate(states)), torch.as_tensor(np.concatenate(labels))
        for _ in range(args.epochs):
            order = torch.randperm(len(x))
            for first in range(0, len(x), 512):
                rows = order[first : first + 512]
                loss = torch.nn.functional.cross_entropy(model.logits(x[rows]), y[rows])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        with torch.no_grad():
            accuracy = float((model.logits(x).argmax(dim=1) == y).float().mean())
        line = {
            "round": r,
            "pairs": len(x),
            "accuracy": round(accuracy, 3),
            "wall_s": round(time.perf_counter() - started),
        }
        print(json.dumps({**line, **scores(model, video, spec, tests)}), flush=True)


if __name__ == "__main__":
    main()
