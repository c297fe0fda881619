"""One retraining round across a network shift, through a live server, per plasticity method and seed.

The scenario of `tests/test_retrain_e2e.py` (`abr_server.lab.scenarios.SHIFT_3G_TO_FAST`; shipped model
as v0001; 4 sessions on a 3G-like network; 24 on a 4-9 Mbit/s network; 8 test sessions on unseen traces
of the new network before and after the round), repeated for each method and PPO seed. Prints a
Markdown table.

    PYTHONPATH=. python benchmarks/retrain_shift.py --methods none,resin --seeds 1,2
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from abr_server.lab.fleet_client import stream_through_server, wait_for_model_version
from abr_server.lab.launcher import local_server
from abr_server.lab.scenarios import SHIFT_3G_TO_FAST
from abr_server.retrain.loop import RetrainConfig, retrain_once
from plasticity.config import parse_plasticity
from policy.learned import DEFAULT_MODEL_DIR
from policy.learning.config import PPOConfig
from simulator.fleet import FleetResult
from simulator.video import Video
from traces.generate import generate_from_spec

VIDEO = Video.builtin()
SHIFT = SHIFT_3G_TO_FAST


def through_server(url: str, spec: str) -> FleetResult:
    return stream_through_server(url, generate_from_spec(spec), VIDEO)


def one(method: str, seed: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        models, db = tmp / "models", tmp / "telemetry.sqlite"
        shutil.copytree(DEFAULT_MODEL_DIR, models / "v0001")
        env = {"ABR_MODELS_DIR": str(models), "ABR_TELEMETRY_DB": str(db), "ABR_WATCH_INTERVAL_S": "0.2"}
        with local_server(env) as (url, _proc):
            through_server(url, SHIFT.before)
            shift_at = time.time()
            through_server(url, SHIFT.after_train)
            until = time.time()
            frozen = through_server(url, SHIFT.after_test)
            config = RetrainConfig(
                window_s=until - shift_at, min_traces=8, updates=30, checkpoint_every=10, pool_size=64, margin=0.02,
                plasticity=parse_plasticity({"method": method}),
                ppo=PPOConfig(num_envs=32, num_steps=64, learning_rate=3e-4, anneal_lr=False, ent_coef_start=0.01,
                              ent_coef_end=0.01, torch_threads=1, seed=seed),
            )  # fmt: skip
            result = retrain_once(db, models, tmp / "work", VIDEO, config, now_s=until)
            if result.version:
                wait_for_model_version(url, result.version)
            adapted = through_server(url, SHIFT.after_test)
        hold = result.scores.get("holdout", {})
        return {"method": method, "seed": seed, "status": result.status, "deployed": hold.get("deployed"),
                "candidate": hold.get("candidate"), "frozen": float(np.nanmean(frozen.player_scores())),
                "after": float(np.nanmean(adapted.player_scores())), "wall_s": result.wall_s}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--methods", default="none,resin")
    parser.add_argument("--seeds", default="1,2")
    args = parser.parse_args()
    print("| method | PPO seed | holdout: deployed | holdout: candidate | round | test: frozen | test: after |")
    print("|---|---:|---:|---:|---|---:|---:|")
    for method in args.methods.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            r = one(method, seed)
            print(f"| {r['method']} | {r['seed']} | {r['deployed']:.3f} | {r['candidate']:.3f} | {r['status']} "
                  f"| {r['frozen']:.3f} | {r['after']:.3f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
