"""The default model shipped in the package loads, fits the standard ladder and plays sessions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from policy import make_policy
from policy.evaluation.loop import run_policy
from policy.learned import DEFAULT_MODEL_DIR
from policy.learning.checkpoint import load_checkpoint
from simulator.video import Video
from traces.generate import generate_from_spec


def test_default_model_is_shipped_and_valid() -> None:
    meta = json.loads((DEFAULT_MODEL_DIR / "meta.json").read_text())
    assert meta["video"]["bitrates_kbps"] == [300, 750, 1200, 1850, 2850, 4300]
    assert meta["progress"]["global_step"] > 0
    checkpoint = load_checkpoint(DEFAULT_MODEL_DIR, Video.builtin())
    assert checkpoint.spec.history_len == 8
    # Weights only: the optimizer state stays with the training run.
    assert not (DEFAULT_MODEL_DIR / "optimizer.safetensors").exists()


def test_default_policy_plays_whole_sessions() -> None:
    traces = generate_from_spec("markov:n=5,seed=4")
    video = Video.builtin()
    logs = run_policy(make_policy("default"), traces, video)
    assert logs.quality.shape == (5, video.n_chunks)
    assert logs.quality.min() >= 0
    assert logs.quality.max() < video.n_levels
    again = run_policy(make_policy("default"), traces, video)
    np.testing.assert_array_equal(logs.quality, again.quality)  # greedy: deterministic


def test_shipped_models_are_named_and_an_unknown_name_is_one_line() -> None:
    from policy.base import PolicySpecError
    from policy.learned import model_folder, shipped_models

    assert "default" in shipped_models()
    assert model_folder("default") == DEFAULT_MODEL_DIR
    assert str(model_folder("runs/x/last")) == "runs/x/last"  # not a shipped name: a folder
    traces = generate_from_spec("markov:n=2,seed=4")
    by_name = run_policy(make_policy("model:default"), traces, Video.builtin())
    np.testing.assert_array_equal(by_name.quality, run_policy(make_policy("default"), traces, Video.builtin()).quality)
    with pytest.raises(PolicySpecError, match=r"model:nope: no shipped model of that name \(shipped: .*default"):
        make_policy("model:nope").begin(1, Video.builtin())
