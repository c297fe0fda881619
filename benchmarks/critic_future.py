"""Issue 4 experiment: PPO with an input-dependent baseline (the critic also sees the network's future).

The actor observes only the past, as always. The critic additionally reads the mean deliverable
throughput of the trace over the next 8 x 4 s from the session's current clock (an extra observation
row that the actor's branches never index), so the value baseline explains the part of the return the
network alone decides and the advantages are less noisy (Mao et al., "Variance Reduction for
Reinforcement Learning in Input-Driven Environments", ICLR 2019). The baseline depends on the exogenous
trace, not on the action, so the policy gradient stays unbiased. Run with ``base`` for the same
training with the usual critic. Prints one JSON line per evaluation (greedy QoE_lin on the test sets).

    PYTHONPATH=. python benchmarks/critic_future.py priv --steps 12000000
    PYTHONPATH=. python benchmarks/critic_future.py base --steps 12000000
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from gymnasium import spaces
from gymnasium.vector.utils import batch_space
from safetensors.torch import save_file
from torch import nn

import policy.ppo
from policy.evaluate import run_policy
from policy.learned import ModelPolicy
from policy.network import ActorCritic, NetworkConfig, layer_init
from policy.optim import EntryAdam
from policy.ppo import PPOConfig, TrainState, train
from simulator.batch import BatchSimulator
from simulator.envs import ABRVectorEnv
from simulator.observation import N_STATE_ROWS, ObservationSpec
from simulator.video import Video
from traces.sources import resolve, split_sources

FUTURE_BIN_S = 4.0
FUTURE_BINS = 8
BYTES_PER_MB = 1e6
TEST_SETS = ("fcc-test", "norway-test", "puffer-2110-test")


def future_mbyte_per_s(sim: BatchSimulator) -> npt.NDArray[np.float32]:
    """Mean deliverable throughput (MB/s, the unit of the throughput row) of each session's next bins."""
    state, table = sim.state(), sim.table
    row = state.trace_index
    period = table.period_s[row]
    first = table.offset[row]
    last = first + table.n_intervals[row] - 1

    def delivered_bytes(position_s: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        cycles, x = np.divmod(position_s, period)
        k = np.clip(np.searchsorted(table.time_key, row + x / period, side="right"), first, last)
        within = table.cum_start_bytes[k] + table.rate_bytes_per_s[k] * np.clip(x - table.start_s[k], 0.0, None)
        return cycles * table.cycle_bytes[row] + np.minimum(within, table.cum_end_bytes[k])

    edges = [delivered_bytes(state.clock_s + FUTURE_BIN_S * j) for j in range(FUTURE_BINS + 1)]
    rates = [(edges[j + 1] - edges[j]) / FUTURE_BIN_S / BYTES_PER_MB for j in range(FUTURE_BINS)]
    return np.stack(rates, axis=1).astype(np.float32)


class FutureRowEnv(ABRVectorEnv):
    """The vector env with one more observation row: the network's next 32 s (for the critic only)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        width = self.single_observation_space.shape[1]  # type: ignore[index]
        self.single_observation_space = spaces.Box(-np.inf, np.inf, (N_STATE_ROWS + 1, width), np.float32)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)

    def _with_future(self, obs: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        extra = np.zeros((obs.shape[0], 1, obs.shape[2]), dtype=np.float32)
        extra[:, 0, :FUTURE_BINS] = future_mbyte_per_s(self.sim)
        return np.concatenate([obs, extra], axis=1)

    def reset(self, **kwargs: Any) -> Any:  # type: ignore[override]
        obs, info = super().reset(**kwargs)
        return self._with_future(obs), info

    def step(self, actions: Any) -> Any:  # type: ignore[override]
        obs, reward, terminated, truncated, info = super().step(actions)
        return self._with_future(obs), reward, terminated, truncated, info


class FutureCritic(ActorCritic):
    """The usual actor-critic whose value head also reads a dense branch over the future row."""

    def __init__(self, width: int, n_levels: int, config: NetworkConfig) -> None:
        super().__init__(width, n_levels, config)
        self.future = layer_init(nn.Linear(width, config.hidden))
        self.critic_head = layer_init(nn.Linear(2 * config.hidden, 1), gain=1.0)

    def _critic_features(self, obs: torch.Tensor, actor_features: torch.Tensor | None = None) -> torch.Tensor:
        assert self.critic_trunk is not None
        return torch.cat([self.critic_trunk(obs), torch.relu(self.future(obs[:, N_STATE_ROWS, :]))], dim=1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("critic", choices=("priv", "base"))
    parser.add_argument("--steps", type=int, default=12_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--traces", action="append", help="Training traces, as abr train -t (repeatable).")
    parser.add_argument("--video", default="../shared/traces/video-sizes")
    parser.add_argument("--eval-every", type=int, default=40)
    parser.add_argument("--out", type=Path, help="Keep the weights at every evaluation here (safetensors).")
    args = parser.parse_args()
    if args.critic == "priv":
        policy.ppo.ABRVectorEnv = FutureRowEnv  # type: ignore[misc]  # train() builds its env by this name
    video = Video.from_size_files(args.video)
    spec = ObservationSpec()
    given = args.traces or ["../shared/traces/fcc-train,../shared/traces/norway-train"]
    traces = [t for value in given for source in split_sources(value) for t in resolve(source)]
    tests = {name: resolve(f"../shared/traces/{name}") for name in TEST_SETS}
    # Run A's settings (BENCHMARKS.md), the best fcc result so far.
    config = PPOConfig(total_steps=args.steps, seed=args.seed, torch_threads=1, learning_rate=3e-4, clip_vloss=True,
                       max_grad_norm=0.5, network=NetworkConfig(hidden=64, filters=32))  # fmt: skip
    torch.manual_seed(config.seed)
    model = (FutureCritic if args.critic == "priv" else ActorCritic)(spec.width(video), video.n_levels, config.network)
    state = TrainState(model, EntryAdam(model.parameters(), lr=config.learning_rate, eps=1e-5))
    started = time.perf_counter()

    def on_update(st: TrainState, metrics: dict[str, float]) -> None:
        if st.update % args.eval_every and st.update != config.num_updates:
            return
        st.model.eval()
        scores = {
            n: float(run_policy(ModelPolicy(st.model, spec), ts, video).scores().mean()) for n, ts in tests.items()
        }
        st.model.train()
        line = {"update": st.update, "step": st.global_step, "wall_s": round(time.perf_counter() - started),
                "explained_variance": round(metrics["losses/explained_variance"], 3)}  # fmt: skip
        print(json.dumps({**line, **scores}), flush=True)
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            save_file(
                {k: v.contiguous() for k, v in st.model.state_dict().items()}, args.out / f"{st.update}.safetensors"
            )

    train(config, traces, video, state=state, on_update=on_update)


if __name__ == "__main__":
    main()
