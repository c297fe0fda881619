"""Learned policies behind the common `Policy` interface: ``checkpoint:PATH``, ``model:NAME`` and ``default``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field

from policy.base import IntArray, Policy, PolicyConfig, PolicySpecError, register
from policy.learning.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from policy.learning.network import ActorCritic
from simulator.observation import HistoryPadding, Observation, ObservationSpec
from simulator.video import Video

#: The models shipped in the package, one checkpoint folder each (produced by `abr train`, see BENCHMARKS.md).
SHIPPED_MODELS_DIR = Path(__file__).resolve().parent / "models"
#: The shipped model used where none is named.
DEFAULT_MODEL = "default"
DEFAULT_MODEL_DIR = SHIPPED_MODELS_DIR / DEFAULT_MODEL


def shipped_models() -> list[str]:
    """Names of the models shipped in the package."""
    return sorted(p.name for p in SHIPPED_MODELS_DIR.iterdir() if (p / "meta.json").is_file())


def model_folder(model: str) -> Path:
    """A shipped model's folder by name (``default``, ...), else ``model`` itself as a checkpoint folder."""
    return SHIPPED_MODELS_DIR / model if model in shipped_models() else Path(model)


class LearnedConfig(PolicyConfig):
    """Where the model is and how it acts."""

    path: str = Field("", description="Checkpoint folder.")
    sample: bool = Field(False, description="Sample from the policy instead of taking the most likely level.")
    seed: int = Field(0, description="Seed of the sampling generator.")
    device: str = Field("cpu", description="Inference device.")


class ModelPolicy(Policy):
    """An in-memory actor-critic as a policy (used for evaluation during training)."""

    name = "model"

    def __init__(self, model: ActorCritic, spec: ObservationSpec, *, sample: bool = False, seed: int = 0) -> None:
        super().__init__()
        self.model, self.spec, self.sample = model, spec, sample
        self._device = next(model.parameters()).device
        self._generator = torch.Generator(device=self._device).manual_seed(seed)

    @property
    def reads_prior(self) -> bool:
        return self.spec.history_padding is HistoryPadding.prior

    @torch.no_grad()
    def select(self, obs: Observation) -> IntArray:
        return act(self.model, obs.to_state(self._video(), self.spec), self.sample, self._generator)


def act(model: ActorCritic, state: np.ndarray, sample: bool, generator: torch.Generator) -> IntArray:
    """Levels for a batch of Pensieve states: the most likely, or sampled from the policy."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = model.logits(torch.as_tensor(state, device=device))
        if sample:
            levels = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator).squeeze(-1)
        else:
            levels = logits.argmax(dim=-1)
    model.train(was_training)
    return np.asarray(levels.cpu().numpy(), dtype=np.int64)


@register("checkpoint")
class LearnedPolicy(Policy):
    """An actor-critic checkpoint (``checkpoint:PATH``); greedy by default, ``sample=true`` samples."""

    config: LearnedConfig
    config_type = LearnedConfig

    @classmethod
    def parse_shorthand(cls, text: str) -> dict[str, Any]:
        return {"path": text}

    @property
    def label(self) -> str:
        return f"checkpoint:{self.config.path}" + (":sample" if self.config.sample else "")

    @property
    def reads_prior(self) -> bool:
        checkpoint: Checkpoint | None = getattr(self, "checkpoint", None)
        return checkpoint is not None and checkpoint.spec.history_padding is HistoryPadding.prior

    def begin(self, n_sessions: int, video: Video) -> None:
        try:
            self.checkpoint: Checkpoint = load_checkpoint(self._path(), video, self.config.device)
        except CheckpointError as err:
            raise PolicySpecError(str(err)) from None
        self._generator = torch.Generator(device=self.config.device).manual_seed(self.config.seed)
        super().begin(n_sessions, video)

    def _path(self) -> Path:
        if not self.config.path:
            raise PolicySpecError("checkpoint:PATH needs a checkpoint folder")
        return Path(self.config.path)

    def select(self, obs: Observation) -> IntArray:
        state = obs.to_state(self._video(), self.checkpoint.spec)
        return act(self.checkpoint.model, state, self.config.sample, self._generator)


@register("model")
class ShippedPolicy(LearnedPolicy):
    """A model shipped in the package, by name (``model:NAME``)."""

    @property
    def label(self) -> str:
        return f"model:{self.config.path}" + (":sample" if self.config.sample else "")

    def _path(self) -> Path:
        if self.config.path not in shipped_models():
            raise PolicySpecError(
                f"model:{self.config.path}: no shipped model of that name (shipped: {', '.join(shipped_models())})"
            )
        return SHIPPED_MODELS_DIR / self.config.path


@register("default")
class DefaultPolicy(LearnedPolicy):
    """The learned model shipped with the package."""

    @classmethod
    def parse_shorthand(cls, text: str) -> dict[str, Any]:
        raise PolicySpecError(f"'default' takes key=value parameters (e.g. default:sample=true), got {text!r}")

    @property
    def label(self) -> str:
        return "default" + (":sample" if self.config.sample else "")

    def _path(self) -> Path:
        return Path(self.config.path) if self.config.path else DEFAULT_MODEL_DIR
