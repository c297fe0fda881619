"""Greedy decisions on a CUDA device through captured CUDA graphs.

An eager forward pass of the folded actor launches six kernels (three matrix products, two ReLUs, the
argmax) plus two copies, and at serving batch sizes a GPU spends almost all of that time in launch
overhead on the host. A CUDA graph replays the same kernels with one launch. Graphs have static shapes,
so one is captured per *bucket* (powers of two up to the largest batch), a batch of B states runs in
the smallest bucket that holds it, and the rows past B are ignored. Inputs go through a pinned host
buffer and one asynchronous copy; the levels come back the same way, and the only synchronisation is
the wait for that copy.

Capture uses ``thread_local`` error mode, so a model can be prepared on one thread (a hot swap) while
another thread keeps serving the previous model's graphs.
"""

from __future__ import annotations

import threading

import numpy as np
import numpy.typing as npt
import torch

from policy.learning.dense import DenseActor

WARMUP_RUNS = 3  # eager runs on a side stream before a capture (cuBLAS picks its kernels there)
MAX_GRAPH_BATCH = 1 << 16  # the largest bucket; bigger batches run in slices of it


def bucket(n: int) -> int:
    """The bucket a batch of ``n`` states runs in: the next power of two, at most `MAX_GRAPH_BATCH`."""
    if n < 1:
        raise ValueError(f"a batch holds at least 1 state, got {n}")
    return min(1 << (n - 1).bit_length(), MAX_GRAPH_BATCH)


def bucket_sizes(max_batch: int) -> list[int]:
    """Every bucket a batch of at most ``max_batch`` states can run in."""
    return [1 << k for k in range(bucket(max_batch).bit_length())]


class GraphedActor:
    """`DenseActor` greedy levels through CUDA graphs, one per bucket, captured on first use.

    Not for concurrent calls from several threads at once (a lock serialises them): the server runs all
    forward passes of a model on one inference thread.
    """

    def __init__(self, actor: DenseActor, width: int) -> None:
        device = actor.a_weight.device
        if device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, the actor is on {device}")
        self.actor, self.width, self.device = actor, width, device
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        self._capacity = 0
        self._host_in = torch.empty(0)
        self._host_out = torch.empty(0, dtype=torch.int64)
        self._lock = threading.Lock()

    @property
    def captured(self) -> list[int]:
        """Bucket sizes captured so far."""
        return sorted(self._graphs)

    def prepare(self, max_batch: int) -> None:
        """Capture every bucket up to ``max_batch`` now (at load time), not on the first request of each."""
        with self._lock:
            for size in bucket_sizes(max_batch):
                self._graph(size)

    def __call__(self, states: npt.NDArray[np.float32]) -> npt.NDArray[np.int64]:
        """Greedy levels of ``states [B, 6, W]``; batches above the largest bucket run in slices."""
        n = states.shape[0]
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        if n > MAX_GRAPH_BATCH:
            return np.concatenate([self(states[i : i + MAX_GRAPH_BATCH]) for i in range(0, n, MAX_GRAPH_BATCH)])
        with self._lock:
            size = bucket(n)
            graph, static_in, static_out = self._graph(size)
            self._reserve(size)
            host_in, host_out = self._host_in[:n], self._host_out[:n]
            host_in.numpy()[:] = states
            stream = torch.cuda.current_stream(self.device)
            static_in[:n].copy_(host_in, non_blocking=True)
            graph.replay()
            host_out.copy_(static_out[:n], non_blocking=True)
            stream.synchronize()
            return host_out.numpy().copy()

    def _reserve(self, size: int) -> None:
        if size > self._capacity:
            self._host_in = torch.empty((size, 6, self.width), dtype=torch.float32).pin_memory()
            self._host_out = torch.empty(size, dtype=torch.int64).pin_memory()
            self._capacity = size

    def _graph(self, size: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]:
        if size in self._graphs:
            return self._graphs[size]
        static_in = torch.zeros((size, 6, self.width), dtype=torch.float32, device=self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.inference_mode(), torch.cuda.stream(side):
            for _ in range(WARMUP_RUNS):
                self.actor(static_in).argmax(dim=-1)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph, capture_error_mode="thread_local"):
            static_out = self.actor(static_in).argmax(dim=-1)
        torch.cuda.current_stream(self.device).synchronize()
        self._graphs[size] = (graph, static_in, static_out)
        return self._graphs[size]
