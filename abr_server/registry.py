"""The model registry: a folder of versioned checkpoints, one of them active.

``DIR/<version>/`` holds a checkpoint (``model.safetensors`` + ``meta.json``); ``DIR/ACTIVE`` names the
active version (written atomically). Versions sort by name, so ``v0001``, ``v0002``... or timestamps
work. Without a registry the shipped default model is served as version ``default``.

A version is served only once it has passed every check: those of `policy.learning.checkpoint.load_checkpoint`
(metadata, network sizes, tensors, finite weights, a probe forward pass), the observation spec the server
builds, and a probe through the path that serves it (the folded actor, CUDA graphs on a GPU). Anything
else that goes wrong while loading is a refusal too, never an exception out of `ModelRegistry.load`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from abr_common.files import write_atomic
from abr_server.inference import LoadedModel, NoModel, check_served
from policy.learned import DEFAULT_MODEL_DIR
from policy.learning.checkpoint import META_FILE, MODEL_FILE, CheckpointError, load_checkpoint, probe_states
from simulator.observation import ObservationSpec
from simulator.video import Video

log = logging.getLogger("abr_server")

ACTIVE_FILE = "ACTIVE"
DEFAULT_VERSION = "default"


class RegistryError(ValueError):
    """An unknown version or a checkpoint that cannot be served (the current model stays)."""


class UnknownVersion(RegistryError):
    """No such version in the registry."""


class RegistryWriteError(RegistryError):
    """The registry's ACTIVE file cannot be written (disk full, read-only): nothing was changed."""


class RefusedVersion(RegistryError):
    """A version that exists but failed validation; the message is one line naming it and the problem."""

    def __init__(self, version: str, problem: str) -> None:
        super().__init__(f"model version {version!r} refused: {problem}")
        self.version = version


class ModelRegistry:
    """Lists, validates and loads versions; records the active one."""

    def __init__(
        self,
        root: Path | None,
        video: Video,
        device: torch.device,
        max_batch: int = 0,
        cuda_graphs: bool = True,
        spec: ObservationSpec | None = None,
    ) -> None:
        """``max_batch`` > 0: `LoadedModel.prepare` every loaded version for batches up to it (graph capture).

        ``spec`` is the observation spec the server keeps session histories with (default: `ObservationSpec()`,
        as `abr_server.service.DecisionService` does); a version trained on another history length is refused.
        A version's states are built with its own spec (its normalisation and padding of the same history).
        """
        self.root, self.video, self.device = root, video, device
        self.max_batch, self.cuda_graphs = max_batch, cuda_graphs
        self.spec = spec if spec is not None else ObservationSpec()
        self._known: set[str] = set()

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
        try:
            name = marker.read_text().strip() if marker.is_file() else None
        except (OSError, UnicodeDecodeError) as err:
            log.warning("%s cannot be read (%s); the newest version counts as active", marker, err)
            name = None
        if name is not None and name in self.versions():
            return name
        versions = self.versions()
        return versions[-1] if versions else None

    def load(self, version: str) -> LoadedModel:
        """Load and validate ``version`` against the served video.

        `UnknownVersion` if there is no such version, `RefusedVersion` (one line) if it cannot be served.
        """
        folder = DEFAULT_MODEL_DIR if self.root is None else self.root / version
        if self.root is None and version != DEFAULT_VERSION:
            raise UnknownVersion(f"model version {version!r} not found (no registry: only {DEFAULT_VERSION!r})")
        if self.root is not None and ("/" in version or version.startswith(".") or version not in self.versions()):
            raise UnknownVersion(f"model version {version!r} not found in {self.root}")
        try:
            ckpt = load_checkpoint(folder, self.video, self.device)
            if ckpt.spec.history_len != self.spec.history_len:
                raise CheckpointError(
                    f"{folder}: trained on a history of {ckpt.spec.history_len} chunks, the server keeps "
                    f"{self.spec.history_len}"
                )
            loaded = LoadedModel(ckpt.model.eval(), version, self.device, cuda_graphs=self.cuda_graphs, spec=ckpt.spec)
            if self.max_batch > 0:
                loaded.prepare(self.max_batch)
            problem = check_served(loaded, probe_states(self.video, ckpt.spec))
            if problem is not None:
                raise CheckpointError(f"{folder}: {problem}")
        except CheckpointError as err:
            raise RefusedVersion(version, str(err)) from None
        except Exception as err:  # out of memory, a CUDA error, a torch error in folding or capture...
            detail = " ".join(str(err).split())
            raise RefusedVersion(version, f"{folder}: {type(err).__name__} while loading: {detail}") from None
        return loaded

    def load_servable(self) -> LoadedModel:
        """The active version, or if that cannot be served, the newest version that can (refusals logged).

        `RegistryError` naming every refused version if none can; `load_at_start` never raises.
        """
        loaded, refused = self._first_servable()
        if loaded is None:
            raise RegistryError(f"no servable model in {self.root}: " + ("; ".join(refused) or "no versions"))
        for line in refused:
            log.warning("%s", line)
        return loaded

    def load_at_start(self) -> tuple[LoadedModel | NoModel, list[str]]:
        """What a server starts serving, and the refusals met on the way (one log line each).

        The active version, else the newest version that validates, else `NoModel` (every learned decision
        then comes from the fallback rule, until a good version is activated or published). The last
        refusal's line says what serves instead.
        """
        try:
            loaded, refused = self._first_servable()
        except OSError as err:  # the registry folder cannot be read at all
            log.error("model registry %s cannot be read (%s); the fallback rule answers every decision", self.root,
                      " ".join(str(err).split()))  # fmt: skip
            return NoModel(self.device), []
        if loaded is None:
            outcome = "no version can be served, the fallback rule answers every decision"
        else:
            outcome = f"serving version {loaded.version!r} instead"
        for line in refused[:-1]:
            log.warning("%s", line)
        if refused:
            log.log(logging.ERROR if loaded is None else logging.WARNING, "%s; %s", refused[-1], outcome)
        elif loaded is None:
            log.error("no model version in %s; the fallback rule answers every decision", self.root)
        return (NoModel(self.device) if loaded is None else loaded), refused

    def _first_servable(self) -> tuple[LoadedModel | None, list[str]]:
        versions = self.versions()
        self._known.update(versions)
        active = self.active_version()
        candidates = ([active] if active else []) + [v for v in reversed(versions) if v != active]
        refused: list[str] = []
        for version in candidates:
            try:
                return self.load(version), refused
            except RegistryError as err:
                refused.append(str(err))
        return None, refused

    def new_versions(self) -> list[str]:
        """Versions that appeared since the last look (this call, `load_at_start`...), newest first.

        Each version is reported once, so a refused one is tried (and logged) once by the watcher; an
        operator can still activate it by name once it is fixed.
        """
        versions = self.versions()
        new = [v for v in reversed(versions) if v not in self._known]
        self._known.update(versions)
        return new

    def mark_active(self, version: str) -> None:
        """Record ``version`` as active (survives restarts); `RegistryWriteError` if it cannot be."""
        if self.root is not None:
            try:
                write_atomic(self.root / ACTIVE_FILE, f"{version}\n".encode())
            except OSError as err:
                raise RegistryWriteError(
                    f"cannot record model version {version!r} as active in {self.root / ACTIVE_FILE} ({err}); "
                    "nothing changed"
                ) from None
