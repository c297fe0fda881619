"""The actor-critic's forward (rollout) and forward+backward (minibatch) time, this checkout's network
against another commit's ``policy/learning/network.py`` in the same process (``small`` preset, one torch
thread, best of 7 interleaved repeats).

    git show REV:policy/learning/network.py > /tmp/network_before.py
    PYTHONPATH=. python benchmarks/network_speed.py /tmp/network_before.py
"""

from __future__ import annotations

import importlib.util
import sys
import time
from typing import Any

import torch

import policy.learning.network as current
from policy.learning.config import NETWORK_PRESETS


def timed_ms(net: Any, obs: torch.Tensor, n: int, train: bool) -> float:
    """Mean milliseconds of ``n`` calls of get_action_and_value (with a backward pass if ``train``)."""
    start = time.perf_counter()
    for _ in range(n):
        if train:
            _, logprob, _, value = net.get_action_and_value(obs)
            (logprob.sum() + value.sum()).backward()
        else:
            with torch.no_grad():
                net.get_action_and_value(obs)
    return (time.perf_counter() - start) / n * 1e3


def main() -> None:
    torch.set_num_threads(1)
    spec = importlib.util.spec_from_file_location("network_before", sys.argv[1])
    assert spec is not None
    assert spec.loader is not None
    before = importlib.util.module_from_spec(spec)
    sys.modules["network_before"] = before
    spec.loader.exec_module(before)
    config = NETWORK_PRESETS["small"]
    nets = {"before": before.ActorCritic(8, 6, config), "after": current.ActorCritic(8, 6, config)}
    cases = (("rollout step, 128 sessions, no grad", torch.rand(128, 6, 8), 400, False),
             ("minibatch of 1024, forward + backward", torch.rand(1024, 6, 8), 100, True))  # fmt: skip
    for label, obs, n, train in cases:
        times: dict[str, list[float]] = {name: [] for name in nets}
        for _ in range(7):  # interleaved, so both see the same background load
            for name, net in nets.items():
                times[name].append(timed_ms(net, obs, n, train))
        best = {name: min(values) for name, values in times.items()}
        print(f"{label}: before {best['before']:.3f} ms, after {best['after']:.3f} ms, "
              f"after/before {best['after'] / best['before']:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
