"""Checkpoints: weights in safetensors (never pickle) plus JSON metadata, written atomically.

A checkpoint is a folder:

- ``model.safetensors``: the actor-critic's tensors;
- ``optimizer.safetensors``: Adam's moments per parameter (for ``--resume``), optional;
- ``meta.json``: format version, observation spec, video ladder, QoE, network and training config,
  training data (trace sources), training progress, evaluation scores, code version.

Each file is written to a temporary name and renamed into place, ``meta.json`` last, so a folder with
a ``meta.json`` is always complete. Loading validates the metadata (against the video being served, when
given), the network's sizes, every tensor and a probe forward pass before it returns a model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from pydantic import ValidationError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from abr_common.errors import problems
from abr_common.files import write_atomic
from abr_common.units import BITS_PER_BYTE, KBIT_PER_MBIT
from policy.learning.config import NetworkConfig
from policy.learning.network import ROW_THROUGHPUT, ActorCritic
from policy.learning.optim import EntryAdam
from simulator.observation import N_STATE_ROWS, ObservationBuilder, ObservationSpec
from simulator.video import DEFAULT_CHUNK_DURATION_S, Video, VideoError

FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
META_FILE = "meta.json"

#: Bounds on what a checkpoint may ask for, checked before anything is allocated.
MAX_LEVELS = 64  # levels of the bitrate ladder
MAX_UNITS = 4096  # network.hidden and network.filters
MAX_PARAMETERS = 20_000_000  # 80 MB of float32 weights; the shipped model has about 0.2 M
MAX_META_BYTES = 16 << 20
PROBE_RTT_MS = 80.0  # the probe sessions' round trip, added to each chunk's transfer time


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or does not fit the video it is used with."""


def code_version() -> str:
    """The installed resin-abr version."""
    try:
        return metadata.version("resin-abr")
    except metadata.PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: the model (in eval mode) and its metadata."""

    model: ActorCritic
    meta: dict[str, Any]
    path: Path

    @property
    def spec(self) -> ObservationSpec:
        """The observation spec the model was trained with."""
        return ObservationSpec(**self.meta["observation"]["spec"])

    @property
    def network(self) -> NetworkConfig:
        """The shape of the model's network."""
        return NetworkConfig(**self.meta["network"])


def save_checkpoint(
    folder: str | Path,
    model: ActorCritic,
    video: Video,
    spec: ObservationSpec,
    *,
    qoe_kind: str,
    train_config: dict[str, Any],
    progress: dict[str, Any],
    scores: dict[str, Any] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    data: dict[str, Any] | None = None,
) -> Path:
    """Write ``folder`` atomically, file by file, metadata last."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    write_atomic(folder / MODEL_FILE, st_save(tensors))
    optimizer_steps: dict[str, int] = {}
    if optimizer is not None:
        names = {id(p): n for n, p in model.named_parameters()}
        moments: dict[str, torch.Tensor] = {}
        for group in optimizer.param_groups:
            for param in group["params"]:
                entry = optimizer.state.get(param)
                if not entry:
                    continue
                name = names[id(param)]
                moments[f"{name}.exp_avg"] = entry["exp_avg"].detach().cpu().contiguous()
                moments[f"{name}.exp_avg_sq"] = entry["exp_avg_sq"].detach().cpu().contiguous()
                step = torch.as_tensor(entry["step"])
                if step.numel() > 1:  # EntryAdam: one step count per entry
                    moments[f"{name}.step"] = step.detach().cpu().contiguous()
                optimizer_steps[name] = int(step.max())
        write_atomic(folder / OPTIMIZER_FILE, st_save(moments))
    meta = {
        "format_version": FORMAT_VERSION,
        "code_version": code_version(),
        "observation": {"spec": spec.model_dump(), "shape": [6, spec.width(video)]},
        "video": video.to_metadata(),
        "qoe": qoe_kind,
        "network": model.config.model_dump(),
        "train_config": train_config,
        "progress": progress,
        "scores": scores or {},
        "data": data or {},
        "optimizer_steps": optimizer_steps,
    }
    write_atomic(folder / META_FILE, json.dumps(meta, indent=2, sort_keys=True).encode())
    return folder


def load_checkpoint(folder: str | Path, video: Video | None = None, device: str | torch.device = "cpu") -> Checkpoint:
    """Load and validate a checkpoint folder; with ``video``, check it fits that video's ladder.

    Nothing is served or trained from a checkpoint that fails any check (`CheckpointError`, one line):
    the metadata's fields and the network's sizes are checked before anything is allocated, then every
    tensor's name, shape and dtype against the network, every weight for NaN and inf, and a forward pass
    on a few representative observations (`probe_states`) for finite logits and values.
    """
    folder = Path(folder)
    meta_path, model_path = folder / META_FILE, folder / MODEL_FILE
    if not meta_path.is_file() or not model_path.is_file():
        raise CheckpointError(f"{folder}: not a checkpoint (needs {META_FILE} and {MODEL_FILE})")
    meta = _read_meta(meta_path)
    where = "observation.spec"
    try:
        spec = ObservationSpec(**meta["observation"]["spec"])
        where = "network"
        network = NetworkConfig(**meta["network"])
        where = "video"
        ladder = tuple(meta["video"]["bitrates_kbps"])
        trained_s = meta["video"].get("chunk_duration_s", DEFAULT_CHUNK_DURATION_S)
        if not all(_is_number(x) for x in (*ladder, trained_s)):
            raise ValueError(f"bitrates_kbps {list(ladder)} and chunk_duration_s {trained_s!r} must be numbers")
    except ValidationError as err:
        raise CheckpointError(f"{meta_path}: malformed metadata ({problems(_Within(where, err))})") from None
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise CheckpointError(f"{meta_path}: malformed metadata ({where}: {_one_line(err)})") from None
    if not 1 <= len(ladder) <= MAX_LEVELS:
        raise CheckpointError(f"{meta_path}: video.bitrates_kbps has {len(ladder)} levels (1..{MAX_LEVELS} allowed)")
    try:
        probe_video = Video.synthetic(ladder, chunk_duration_s=trained_s, name="video")
    except VideoError as err:  # not increasing, not positive (the message starts with "video: ")
        raise CheckpointError(f"{meta_path}: malformed metadata ({_one_line(err)})") from None
    if video is not None:
        if tuple(video.bitrates_kbps) != ladder:
            raise CheckpointError(
                f"{folder}: trained for the ladder {list(ladder)} kbps, but the video has {list(video.bitrates_kbps)}"
            )
        if trained_s != video.chunk_duration_s:
            raise CheckpointError(
                f"{folder}: trained for {trained_s} s chunks, the video has {video.chunk_duration_s} s"
            )
        probe_video = video
    width = spec.width_for(len(ladder))
    shape = meta["observation"].get("shape")
    if shape is not None and shape != [N_STATE_ROWS, width]:
        raise CheckpointError(
            f"{meta_path}: observation.shape {shape} does not match the spec ({N_STATE_ROWS} x {width})"
        )
    skeleton = _network_skeleton(meta_path, width, len(ladder), network)
    tensors = _read_tensors(model_path, {name: (t.shape, t.dtype) for name, t in skeleton.state_dict().items()})
    model = skeleton.to_empty(device="cpu")  # every entry is then loaded: no initialisation to pay for
    try:
        model.load_state_dict(tensors, strict=True)
    except (RuntimeError, ValueError) as err:
        raise CheckpointError(f"{model_path}: mismatched weights ({_one_line(err)})") from None
    _check_finite(model_path, model)
    _probe(model_path, model, probe_states(probe_video, spec))
    model.to(device).eval()
    return Checkpoint(model, meta, folder)


def probe_states(video: Video, spec: ObservationSpec) -> npt.NDArray[np.float32]:
    """Representative observations ``[5, 6, W]`` for checking a model before it serves.

    The zero state, a session's first chunk, a steady session on a middle level, one starving on a slow
    link, and one on a fast link at the top level: built by `ObservationBuilder` like every served state.
    """
    top = video.n_levels - 1
    sessions = [(0, 4.0, 1.0, 1), (top // 2, 12.0, 3.0, spec.history_len),
                (0, 0.5, 0.2, spec.history_len), (top, 30.0, 50.0, spec.history_len)]  # fmt: skip
    builder = ObservationBuilder(len(sessions), video, spec)
    for step in range(spec.history_len):
        live = np.array([step >= spec.history_len - n for *_, n in sessions])
        index = step % video.n_chunks
        level = np.array([s[0] for s in sessions])
        chunk_bytes = video.chunk_bytes[level, index].astype(np.float64)
        throughput_mbps = np.array([s[2] for s in sessions])
        delay_ms = chunk_bytes * BITS_PER_BYTE / (throughput_mbps * KBIT_PER_MBIT) + PROBE_RTT_MS
        following = min(index + 1, video.n_chunks - 1)
        builder.push(live, quality=level, buffer_s=np.array([s[1] for s in sessions]), chunk_bytes=chunk_bytes,
                     delay_ms=delay_ms, chunk_index=np.full(len(sessions), index),
                     chunks_remaining=np.full(len(sessions), video.n_chunks - index - 1),
                     next_chunk_bytes=np.tile(video.chunk_bytes[:, following], (len(sessions), 1)))  # fmt: skip
    states = builder.observation().to_state(video, spec)
    zero = np.zeros((1, *states.shape[1:]), dtype=np.float32)
    return np.concatenate([zero, states])


class _Within:
    """A validation error's problems located inside the metadata section ``where``."""

    def __init__(self, where: str, err: ValidationError) -> None:
        self.where, self.err = where, err

    def errors(self) -> list[dict[str, Any]]:
        return [{**e, "loc": (self.where, *e["loc"])} for e in self.err.errors()]


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _reject_constant(name: str) -> None:
    raise ValueError(f"non-finite number {name}")


def _read_meta(meta_path: Path) -> dict[str, Any]:
    size = meta_path.stat().st_size
    if size > MAX_META_BYTES:
        raise CheckpointError(f"{meta_path}: {size} bytes of metadata (at most {MAX_META_BYTES})")
    try:
        meta = json.loads(meta_path.read_bytes(), parse_constant=_reject_constant)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as err:
        raise CheckpointError(f"{meta_path}: corrupt metadata ({_one_line(err)})") from None
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{meta_path}: unsupported format_version {version!r} (expected {FORMAT_VERSION})")
    return meta


def _network_skeleton(meta_path: Path, width: int, n_levels: int, network: NetworkConfig) -> ActorCritic:
    """The network on the meta device (shapes, no memory), once its sizes are within bounds."""
    for name in ("hidden", "filters"):
        value = getattr(network, name)
        if value > MAX_UNITS:
            raise CheckpointError(f"{meta_path}: network.{name}={value} is out of range (1..{MAX_UNITS})")
    if network.kernel > min(width, n_levels):
        raise CheckpointError(
            f"{meta_path}: network.kernel={network.kernel} is wider than the history ({width} columns) "
            f"or the ladder ({n_levels} levels)"
        )
    with torch.device("meta"):
        skeleton = ActorCritic(width, n_levels, network)
    count = sum(p.numel() for p in skeleton.parameters())
    if count > MAX_PARAMETERS:
        raise CheckpointError(f"{meta_path}: the network has {count} parameters (at most {MAX_PARAMETERS})")
    return skeleton


def _read_tensors(model_path: Path, expected: dict[str, tuple[torch.Size, torch.dtype]]) -> dict[str, torch.Tensor]:
    """The weights file's tensors, checked against ``expected`` by name, shape and dtype."""
    limit = 2 * sum(torch.Size(shape).numel() * dtype.itemsize for shape, dtype in expected.values()) + (1 << 20)
    size = model_path.stat().st_size
    if size > limit:
        raise CheckpointError(f"{model_path}: {size} bytes, far more than the network's weights ({limit} at most)")
    try:
        tensors = st_load(model_path.read_bytes())
    except Exception as err:  # safetensors raises several types for corrupt files
        raise CheckpointError(f"{model_path}: corrupt weights ({_one_line(err)})") from None
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{model_path}: mismatched weights (missing {missing[:3] or 'none'}"
            f"{'...' if len(missing) > 3 else ''}, unexpected {unexpected[:3] or 'none'}"
            f"{'...' if len(unexpected) > 3 else ''})"
        )
    for name, (shape, dtype) in expected.items():
        tensor = tensors[name]
        if tensor.shape != shape:
            raise CheckpointError(
                f"{model_path}: tensor {name} has shape {list(tensor.shape)}, the network needs {list(shape)}"
            )
        if not tensor.dtype.is_floating_point:
            raise CheckpointError(f"{model_path}: tensor {name} has dtype {tensor.dtype}, the network needs {dtype}")
    return tensors


def _check_finite(model_path: Path, model: ActorCritic) -> None:
    """Every weight as the model holds it (after any cast to its dtype) is finite."""
    for name, tensor in model.state_dict().items():
        bad = int((~torch.isfinite(tensor)).sum())
        if bad:
            plural = "s" if bad > 1 else ""
            raise CheckpointError(f"{model_path}: tensor {name} holds {bad} non-finite value{plural} (NaN or inf)")


@torch.no_grad()
def _probe(model_path: Path, model: ActorCritic, states: npt.NDArray[np.float32]) -> None:
    """A forward pass on representative observations gives finite logits and values."""
    obs = torch.from_numpy(states)
    logits = model.eval().logits(obs)
    if model.config.critic_future:  # the future row, here the measured throughput: any plausible value will do
        obs = torch.cat([obs, obs[:, ROW_THROUGHPUT : ROW_THROUGHPUT + 1]], dim=1)
    values = model.get_value(obs)
    for what, out in (("logits", logits), ("values", values)):
        rows = (~torch.isfinite(out.reshape(len(states), -1))).any(dim=1).nonzero().flatten().tolist()
        if rows:
            raise CheckpointError(
                f"{model_path}: non-finite {what} on {len(rows)} of {len(states)} probe observations "
                f"(first: probe {rows[0]})"
            )


def load_optimizer_state(folder: str | Path, model: ActorCritic, optimizer: torch.optim.Optimizer) -> None:
    """Restore Adam's moments and step counts saved by `save_checkpoint` (for ``--resume``)."""
    folder = Path(folder)
    path = folder / OPTIMIZER_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder}: no {OPTIMIZER_FILE}; cannot resume the optimizer")
    meta = json.loads((folder / META_FILE).read_text())
    moments = st_load(path.read_bytes())
    device = next(model.parameters()).device
    for name, param in model.named_parameters():
        if f"{name}.exp_avg" not in moments:
            continue
        step = moments.get(f"{name}.step")
        if step is None:
            step = torch.tensor(float(meta["optimizer_steps"][name]))
        if isinstance(optimizer, EntryAdam):
            step = step.to(device).expand_as(param).clone()
        optimizer.state[param] = {
            "step": step,
            "exp_avg": moments[f"{name}.exp_avg"].to(device),
            "exp_avg_sq": moments[f"{name}.exp_avg_sq"].to(device),
        }
