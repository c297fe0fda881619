"""Micro-batched model inference: concurrent decisions share one forward pass.

Requests queue their state; a single batching task takes the first waiting request, gathers more until
``max_batch`` or ``max_wait_s``, and runs one forward pass, either on a dedicated thread (the event loop
keeps accepting requests and a late model is cut off by the caller's timeout: the choice for a GPU) or
inline in the event loop (no thread hand-off: the choice for the folded actor on a CPU, where a forward
pass takes 0.05-0.5 ms and waking a thread under the GIL measured several ms of latency at moderate
load, see BENCHMARKS.md). The model lives in a `ModelSlot` whose swap is one reference assignment: a batch
runs entirely on the model it started with, and no request is dropped by a swap.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import torch

from abr_server.cuda_graphs import GraphedActor
from policy.learning.dense import DenseActor
from policy.learning.network import ActorCritic


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to serve, with the version it was loaded as.

    ``actor`` is the model's actor folded into three dense layers (`policy.learning.dense.DenseActor`): the
    same function, several times faster at serving batch sizes. Decisions come from it.
    """

    model: ActorCritic
    version: str
    device: torch.device
    cuda_graphs: bool = True
    actor: DenseActor = field(init=False, repr=False, compare=False)
    graphs: GraphedActor | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "actor", DenseActor(self.model).to(self.device).eval())
        use_graphs = self.cuda_graphs and self.device.type == "cuda"
        object.__setattr__(self, "graphs", GraphedActor(self.actor, self.model.width) if use_graphs else None)

    def prepare(self, max_batch: int) -> None:
        """Do the one-time work of serving batches up to ``max_batch`` now (CUDA graph capture), not on a request."""
        if self.graphs is not None:
            self.graphs.prepare(max_batch)


class ModelSlot:
    """The model currently served; `swap` replaces it atomically."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.current = loaded
        self.previous: LoadedModel | None = None

    def swap(self, loaded: LoadedModel) -> None:
        """Serve ``loaded`` from the next batch on; the old model stays for rollback."""
        self.previous, self.current = self.current, loaded


def forward_levels(loaded: LoadedModel, states: npt.NDArray[np.float32]) -> npt.NDArray[np.int64]:
    """Greedy levels for a batch of states ``[B, 6, W]`` (through CUDA graphs where the model has them)."""
    if loaded.graphs is not None:
        return loaded.graphs(states)
    with torch.inference_mode():
        logits = loaded.actor(torch.from_numpy(states).to(loaded.device, non_blocking=True))
        return logits.argmax(dim=-1).cpu().numpy().astype(np.int64)


@dataclass
class _Pending:
    state: npt.NDArray[np.float32]
    future: asyncio.Future[tuple[int, str]]


class MicroBatcher:
    """Batches concurrent `decide` calls into forward passes of at most ``max_batch`` states."""

    def __init__(
        self,
        slot: ModelSlot,
        max_batch: int,
        max_wait_s: float,
        on_batch: Callable[[int], None] | None = None,
        forward: Callable[[LoadedModel, npt.NDArray[np.float32]], npt.NDArray[np.int64]] = forward_levels,
        inline: bool = False,
    ) -> None:
        self.slot, self.max_batch, self.max_wait_s = slot, max_batch, max_wait_s
        self.inline = inline
        self.on_batch, self.forward = on_batch, forward
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="abr-inference")
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start the batching task (in the running loop)."""
        self._task = asyncio.create_task(self._run(), name="abr-micro-batcher")

    async def stop(self) -> None:
        """Stop batching; waiting requests get an error (their callers fall back)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while not self._queue.empty():
            pending = self._queue.get_nowait()
            if not pending.future.done():
                pending.future.set_exception(RuntimeError("inference stopped"))
        self._executor.shutdown(wait=False)

    def submit(self, state: npt.NDArray[np.float32]) -> asyncio.Future[tuple[int, str]]:
        """Queue one state ``[6, W]``; the future gets the model's level and the version that chose it.

        Cancelling the future (a caller that gave up) takes the state out of its batch.
        """
        future: asyncio.Future[tuple[int, str]] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(state, future))
        return future

    async def decide(self, state: npt.NDArray[np.float32]) -> tuple[int, str]:
        """The model's level for one state ``[6, W]``, and the model version that chose it."""
        return await self.submit(state)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.max_wait_s
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
            live = [p for p in batch if not p.future.done()]  # callers that timed out are gone
            if not live:
                continue
            loaded = self.slot.current
            states = np.stack([p.state for p in live])
            try:
                if self.inline:
                    levels = self.forward(loaded, states)
                else:
                    levels = await loop.run_in_executor(self._executor, self.forward, loaded, states)
            except Exception as err:  # a failing model must not stop the batcher: callers fall back
                for p in live:
                    if not p.future.done():
                        p.future.set_exception(err)
                continue
            if self.on_batch is not None:
                self.on_batch(len(live))
            for p, level in zip(live, levels, strict=True):
                if not p.future.done():
                    p.future.set_result((int(level), loaded.version))
