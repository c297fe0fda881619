"""Micro-batched model inference: concurrent decisions share one forward pass.

Requests queue their state; a single batching task takes the first waiting request, gathers more until
``max_batch`` or ``max_wait_s``, and runs one forward pass, either on a dedicated thread (the event loop
keeps accepting requests and a late model is cut off by the caller's timeout: the choice for a GPU) or
inline in the event loop (no thread hand-off: the choice for the folded actor on a CPU, where a forward
pass takes 0.05-0.5 ms and waking a thread under the GIL measured several ms of latency at moderate
load, see BENCHMARKS.md). The model lives in a `ModelSlot` whose swap is one reference assignment: a batch
runs entirely on the model it started with, and no request is dropped by a swap.

A state whose logits are not all finite (NaN or inf, on any path: eager, folded, CUDA graphs) gets no
level: its caller gets `NonFiniteOutput` and answers with the fallback rule, the other states of the
batch are answered as usual. With `NoModel` in the slot (no version could be served) every caller gets
`NoModelServed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from abr_server.cuda_graphs import GraphedActor
from policy.learning.dense import DenseActor
from policy.learning.network import ActorCritic
from simulator.observation import ObservationSpec

log = logging.getLogger("abr_server")

#: The level `forward_levels` gives a state whose logits are not all finite.
NONFINITE = -1


class ModelUnavailable(RuntimeError):
    """The model gives no level for a state; the caller answers with the fallback rule (``reason``: metrics)."""

    reason = "model_error"


class NonFiniteOutput(ModelUnavailable):
    """The model's logits for this state are NaN or infinite."""

    reason = "nonfinite_output"


class NoModelServed(ModelUnavailable):
    """No model version is served (none could be validated)."""

    reason = "no_model"


def flag_nonfinite(logits: torch.Tensor) -> torch.Tensor:
    """``[B, L]`` logits plus one column that wins the argmax exactly in the rows that are not all finite.

    An argmax of ``L`` then means "no level": a check that fits inside a captured CUDA graph (no host
    synchronisation, no new shapes). In a finite row the extra column is below the row's maximum (or ties
    with it, for huge logits, and an argmax returns the first maximum); elsewhere the row is zeros and the
    extra column is 1.
    """
    finite = torch.isfinite(logits).all(dim=-1, keepdim=True)
    guarded = torch.where(finite, logits, torch.zeros_like(logits))
    top = guarded.amax(dim=-1, keepdim=True)
    return torch.cat([guarded, torch.where(finite, top - 1, top + 1)], dim=-1)


class FlaggedActor(DenseActor):
    """A `DenseActor` whose output is `flag_nonfinite` of its logits (what the CUDA graphs capture)."""

    def __init__(self, actor: DenseActor) -> None:
        nn.Module.__init__(self)  # shares the folded actor's buffers rather than folding the model again
        for name, buffer in actor.named_buffers():
            self.register_buffer(name, buffer)
        self.groups = actor.groups

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """Flagged logits ``[B, n_levels + 1]``."""
        return flag_nonfinite(super().forward(obs))


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to serve, with the version it was loaded as.

    ``actor`` is the model's actor folded into three dense layers (`policy.learning.dense.DenseActor`): the
    same function, several times faster at serving batch sizes. Decisions come from it. ``spec``: the
    observations the model was trained on; the server builds its states with it.
    """

    model: ActorCritic
    version: str
    device: torch.device
    cuda_graphs: bool = True
    spec: ObservationSpec = field(default_factory=ObservationSpec)
    actor: DenseActor = field(init=False, repr=False, compare=False)
    graphs: GraphedActor | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "actor", DenseActor(self.model).to(self.device).eval())
        use_graphs = self.cuda_graphs and self.device.type == "cuda"
        graphs = GraphedActor(FlaggedActor(self.actor), self.model.width) if use_graphs else None
        object.__setattr__(self, "graphs", graphs)

    def prepare(self, max_batch: int) -> None:
        """Do the one-time work of serving batches up to ``max_batch`` now (CUDA graph capture), not on a request."""
        if self.graphs is not None:
            self.graphs.prepare(max_batch)


@dataclass(frozen=True)
class NoModel:
    """What the slot holds when no version could be served: learned decisions come from the fallback rule."""

    device: torch.device
    version: None = None


class ModelSlot:
    """The model currently served; `swap` replaces it atomically."""

    def __init__(self, loaded: LoadedModel | NoModel) -> None:
        self.current: LoadedModel | NoModel = loaded
        self.previous: LoadedModel | None = None

    def swap(self, loaded: LoadedModel) -> None:
        """Serve ``loaded`` from the next batch on; the old model (if there was one) stays for rollback."""
        if isinstance(self.current, LoadedModel):
            self.previous = self.current
        self.current = loaded


def forward_levels(loaded: LoadedModel, states: npt.NDArray[np.float32]) -> npt.NDArray[np.int64]:
    """Greedy levels for a batch of states ``[B, 6, W]`` (through CUDA graphs where the model has them).

    A state whose logits are not all finite gets `NONFINITE`.
    """
    if loaded.graphs is not None:
        levels = loaded.graphs(states)
        levels[levels >= loaded.model.n_levels] = NONFINITE  # the flag column of `flag_nonfinite` won
        return levels
    with torch.inference_mode():
        logits = loaded.actor(torch.from_numpy(states).to(loaded.device, non_blocking=True)).cpu().numpy()
    levels = logits.argmax(axis=-1).astype(np.int64)
    finite = np.isfinite(logits).all(axis=-1)
    if not finite.all():
        levels[~finite] = NONFINITE
    return levels


def check_served(loaded: LoadedModel, states: npt.NDArray[np.float32]) -> str | None:
    """None if the serving path gives every one of ``states`` a level, else what goes wrong (one line)."""
    levels = forward_levels(loaded, states)
    bad = int((levels == NONFINITE).sum())
    if bad:
        path = "CUDA graphs" if loaded.graphs is not None else "folded actor"
        return f"non-finite logits on {bad} of {len(states)} probe observations through the served {path}"
    n_levels = loaded.model.n_levels
    if levels.shape != (len(states),) or not ((levels >= 0) & (levels < n_levels)).all():
        return f"the served path gives levels {levels.tolist()} for {len(states)} probe observations"
    return None


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
        on_nonfinite: Callable[[int], None] | None = None,
    ) -> None:
        """``on_batch(n)`` after each forward pass of ``n`` states; ``on_nonfinite(n)`` when ``n`` of them had
        non-finite logits (each version's first such batch is also logged)."""
        self.slot, self.max_batch, self.max_wait_s = slot, max_batch, max_wait_s
        self.inline = inline
        self.on_batch, self.forward, self.on_nonfinite = on_batch, forward, on_nonfinite
        self._nonfinite_logged: set[str] = set()
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
            if isinstance(loaded, NoModel):
                for p in live:
                    p.future.set_exception(NoModelServed("no model version is served"))
                continue
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
            self._deliver(live, levels, loaded.version)

    def _deliver(self, live: list[_Pending], levels: npt.NDArray[np.int64], version: str) -> None:
        nonfinite = 0
        for p, level in zip(live, levels, strict=True):
            if level < 0:
                nonfinite += 1
                if not p.future.done():
                    p.future.set_exception(NonFiniteOutput(f"model version {version!r}: non-finite logits"))
            elif not p.future.done():
                p.future.set_result((int(level), version))
        if nonfinite:
            if self.on_nonfinite is not None:
                self.on_nonfinite(nonfinite)
            if version not in self._nonfinite_logged:
                self._nonfinite_logged.add(version)
                log.warning(
                    "model version %s gave non-finite logits for %d of %d states; those decisions come from the "
                    "fallback rule (logged once per version)", version, nonfinite, len(live),
                )  # fmt: skip
