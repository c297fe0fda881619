"""Checkpoints: weights in safetensors (never pickle) plus JSON metadata, written atomically.

A checkpoint is a folder:

- ``model.safetensors``: the actor-critic's tensors;
- ``optimizer.safetensors``: Adam's moments per parameter (for ``--resume``), optional;
- ``meta.json``: format version, observation spec, video ladder, QoE, network and training config,
  training data (trace sources), training progress, evaluation scores, code version.

Each file is written to a temporary name and renamed into place, ``meta.json`` last, so a folder with
a ``meta.json`` is always complete. Loading validates the metadata against the video being served.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from abr_common.files import write_atomic
from policy.learning.config import NetworkConfig
from policy.learning.network import ActorCritic
from policy.learning.optim import EntryAdam
from simulator.observation import ObservationSpec
from simulator.video import Video

FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
META_FILE = "meta.json"


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
    """Load and validate a checkpoint folder; with ``video``, check it fits that video's ladder."""
    folder = Path(folder)
    meta_path, model_path = folder / META_FILE, folder / MODEL_FILE
    if not meta_path.is_file() or not model_path.is_file():
        raise CheckpointError(f"{folder}: not a checkpoint (needs {META_FILE} and {MODEL_FILE})")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{meta_path}: corrupt metadata ({err})") from None
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{meta_path}: unsupported format_version {version!r} (expected {FORMAT_VERSION})")
    try:
        spec = ObservationSpec(**meta["observation"]["spec"])
        network = NetworkConfig(**meta["network"])
        ladder = tuple(meta["video"]["bitrates_kbps"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{meta_path}: malformed metadata ({err})") from None
    if video is not None:
        if tuple(video.bitrates_kbps) != ladder:
            raise CheckpointError(
                f"{folder}: trained for the ladder {list(ladder)} kbps, but the video has {list(video.bitrates_kbps)}"
            )
        trained_s = meta["video"].get("chunk_duration_s")
        if trained_s != video.chunk_duration_s:
            raise CheckpointError(
                f"{folder}: trained for {trained_s} s chunks, the video has {video.chunk_duration_s} s"
            )
    width = spec.width_for(len(ladder))
    model = ActorCritic(width, len(ladder), network)
    try:
        tensors = st_load(model_path.read_bytes())
        model.load_state_dict(tensors, strict=True)
    except Exception as err:  # safetensors raises several types for corrupt files
        raise CheckpointError(f"{model_path}: corrupt or mismatched weights ({err})") from None
    model.to(device).eval()
    return Checkpoint(model, meta, folder)


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
