"""Experiment: PPO with an input-dependent baseline (`abr train --critic-future`) against the same run
with the usual critic, evaluated on the three test sets (greedy QoE_lin), one JSON line per evaluation.

The critic also reads the mean throughput of the trace over the next 8 x 4 s (`policy.learning.network`'s
``critic_future``); the policy sees only the past, as always (Mao et al., "Variance Reduction for
Reinforcement Learning in Input-Driven Environments", ICLR 2019). Settings are run A's (BENCHMARKS.md).

    PYTHONPATH=. python benchmarks/critic_future.py priv --steps 12000000
    PYTHONPATH=. python benchmarks/critic_future.py base --steps 12000000
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from safetensors.torch import save_file

from abr_common.paths import DEFAULT_TRACE_ROOT
from policy.learning.config import NetworkConfig, PPOConfig
from policy.learning.ppo import TrainState
from policy.learning.run import TrainingRun
from simulator.observation import ObservationSpec
from simulator.video import Video
from traces.sources import resolve, split_sources

TEST_SETS = ("fcc-test", "norway-test", "puffer-2110-test")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("critic", choices=("priv", "base"), help="priv: the critic sees the future; base: it does not.")
    parser.add_argument("--steps", type=int, default=12_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--traces", action="append", help="Training traces, as abr train -t (repeatable).")
    parser.add_argument("--video", default=f"{DEFAULT_TRACE_ROOT}/video-sizes")
    parser.add_argument("--eval-every", type=int, default=40)
    parser.add_argument("--out", type=Path, help="Keep the weights at every evaluation here (safetensors).")
    args = parser.parse_args()
    video = Video.from_size_files(args.video)
    spec = ObservationSpec()
    given = args.traces or [f"{DEFAULT_TRACE_ROOT}/fcc-train,{DEFAULT_TRACE_ROOT}/norway-train"]
    traces = [t for value in given for source in split_sources(value) for t in resolve(source)]
    tests = {name: resolve(f"{DEFAULT_TRACE_ROOT}/{name}") for name in TEST_SETS}
    network = NetworkConfig(hidden=64, filters=32, critic_future=args.critic == "priv")
    config = PPOConfig(total_steps=args.steps, seed=args.seed, torch_threads=1, learning_rate=3e-4, clip_vloss=True,
                       max_grad_norm=0.5, network=network)  # fmt: skip
    run = TrainingRun.create(config, video, spec=spec)
    started = time.perf_counter()

    def on_update(st: TrainState, metrics: dict[str, float]) -> None:
        if st.update % args.eval_every and st.update != config.num_updates:
            return
        scores = {name: score["qoe"] for name, score in run.evaluate(tests).items()}
        line = {"update": st.update, "step": st.global_step, "wall_s": round(time.perf_counter() - started),
                "explained_variance": round(metrics["losses/explained_variance"], 3)}  # fmt: skip
        print(json.dumps({**line, **scores}), flush=True)
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            weights = {k: v.contiguous() for k, v in st.model.state_dict().items()}
            save_file(weights, args.out / f"{st.update}.safetensors")

    run.train(traces, on_update=on_update)


if __name__ == "__main__":
    main()
