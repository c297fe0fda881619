"""The model registry: a folder of versioned checkpoints, one of them active.

``DIR/<version>/`` holds a checkpoint (``model.safetensors`` + ``meta.json``); ``DIR/ACTIVE`` names the
active version (written atomically). Versions sort by name, so ``v0001``, ``v0002``... or timestamps
work. Without a registry the shipped default model is served as version ``default``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from abr_common.files import write_atomic
from abr_server.inference import LoadedModel
from policy.learned import DEFAULT_MODEL_DIR
from policy.learning.checkpoint import META_FILE, MODEL_FILE, CheckpointError, load_checkpoint
from simulator.video import Video

ACTIVE_FILE = "ACTIVE"
DEFAULT_VERSION = "default"


class RegistryError(ValueError):
    """An unknown version or a checkpoint that cannot be served (the current model stays)."""


class ModelRegistry:
    """Lists, validates and loads versions; records the active one."""

    def __init__(
        self, root: Path | None, video: Video, device: torch.device, max_batch: int = 0, cuda_graphs: bool = True
    ) -> None:
        """``max_batch`` > 0: `LoadedModel.prepare` every loaded version for batches up to it (graph capture)."""
        self.root, self.video, self.device = root, video, device
        self.max_batch, self.cuda_graphs = max_batch, cuda_graphs

    def versions(self) -> list[str]:
        """Versions present (folders with a checkpoint), oldest first."""
        if self.root is None:
            return [DEFAULT_VERSION]
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if not p.name.startswith(".") and (p / META_FILE).is_file() and (p / MODEL_FILE).is_file()
        )  # hidden folders are versions being written (published by renaming them into place)

    def active_version(self) -> str | None:
        """The version named in ACTIVE, else the newest."""
        if self.root is None:
            return DEFAULT_VERSION
        marker = self.root / ACTIVE_FILE
        if marker.is_file():
            name = marker.read_text().strip()
            if name in self.versions():
                return name
        versions = self.versions()
        return versions[-1] if versions else None

    def load(self, version: str) -> LoadedModel:
        """Load and validate ``version`` against the served video; `RegistryError` if it cannot be served."""
        folder = DEFAULT_MODEL_DIR if self.root is None else self.root / version
        if self.root is not None and (version not in self.versions() or "/" in version or version.startswith(".")):
            raise RegistryError(f"model version {version!r} not found in {self.root}")
        try:
            ckpt = load_checkpoint(folder, self.video, self.device)
        except CheckpointError as err:
            raise RegistryError(f"model version {version!r} refused: {err}") from None
        ckpt.model.eval()
        loaded = LoadedModel(ckpt.model, version, self.device, cuda_graphs=self.cuda_graphs)
        if self.max_batch > 0:
            loaded.prepare(self.max_batch)
        return loaded

    def load_servable(self) -> LoadedModel:
        """The active version, or if that cannot be served, the newest version that can (start-up)."""
        active = self.active_version()
        candidates = ([active] if active else []) + [v for v in reversed(self.versions()) if v != active]
        problems = []
        for version in candidates:
            try:
                return self.load(version)
            except RegistryError as err:
                problems.append(str(err))
        raise RegistryError(f"no servable model in {self.root}: " + ("; ".join(problems) or "no versions"))

    def mark_active(self, version: str) -> None:
        """Record ``version`` as active (survives restarts)."""
        if self.root is not None:
            write_atomic(self.root / ACTIVE_FILE, f"{version}\n".encode())
