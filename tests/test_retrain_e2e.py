"""Online retraining end to end at small scale: a fleet streams through a live server, the network shifts,
the loop rebuilds traces from the server's telemetry, fine-tunes with ReSiN, publishes, the server picks
the new version up, and players on the shifted network do better than with the frozen model."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from abr_server.lab.fleet_client import stream_through_server, wait_for_model_version
from abr_server.lab.launcher import local_server
from abr_server.lab.scenarios import SHIFT_3G_TO_FAST
from abr_server.retrain.loop import RetrainConfig, retrain_once
from policy.learned import DEFAULT_MODEL_DIR
from policy.learning.config import PPOConfig
from simulator.fleet import FleetResult
from simulator.video import Video
from traces.generate import generate_from_spec

VIDEO = Video.builtin()


def through_server(url: str, spec: str) -> FleetResult:
    return stream_through_server(url, generate_from_spec(spec), VIDEO)


@pytest.mark.slow
def test_the_loop_adapts_the_served_policy_to_a_network_shift(tmp_path: Path) -> None:
    models, db = tmp_path / "models", tmp_path / "telemetry.sqlite"
    shutil.copytree(DEFAULT_MODEL_DIR, models / "v0001")
    env = {"ABR_MODELS_DIR": str(models), "ABR_TELEMETRY_DB": str(db), "ABR_WATCH_INTERVAL_S": "0.2"}
    config = RetrainConfig(
        window_s=3600.0, replay=None, reference=None, min_traces=8, updates=30, checkpoint_every=10, pool_size=64,
        margin=0.02,
        ppo=PPOConfig(num_envs=32, num_steps=64, learning_rate=3e-4, anneal_lr=False, ent_coef_start=0.01,
                      ent_coef_end=0.01, torch_threads=1),
    )  # fmt: skip
    with local_server(env) as (url, _proc):
        through_server(url, SHIFT_3G_TO_FAST.before)
        shift_at = time.time()
        through_server(url, SHIFT_3G_TO_FAST.after_train)
        shifted_until = time.time()
        frozen = through_server(url, SHIFT_3G_TO_FAST.after_test)  # the shipped model on test traces of the new network
        # The round sees the sessions on the new network before the test sessions, and nothing older (no
        # replay, no reference set: this is the one-round measurement of BENCHMARKS.md).
        config = config.model_copy(update={"window_s": shifted_until - shift_at})
        # As `abr retrain watch` would, try again with another seed if the gate refused the candidate (one
        # round in six was refused in BENCHMARKS.md: PPO from a pretrained policy sometimes collapses).
        for seed in (1, 3):
            ppo = config.ppo.model_copy(update={"seed": seed})
            result = retrain_once(db, models, tmp_path / "work", VIDEO, config.model_copy(update={"ppo": ppo}),
                                  now_s=shifted_until)  # fmt: skip
            assert result.traces["rebuilt"] == 24
            if result.status == "published":
                break
        assert result.status == "published", result.reason
        assert result.version is not None
        assert wait_for_model_version(url, result.version) == result.version  # picked up without a restart
        adapted = through_server(url, SHIFT_3G_TO_FAST.after_test)
    before, after = np.nanmean(frozen.player_scores()), np.nanmean(adapted.player_scores())
    assert after > before, (before, after)
    lineage = json.loads((models / result.version / "meta.json").read_text())["data"]["lineage"]
    assert lineage["parent"] == "v0001"
