"""QoE over time across repeated network shifts: frozen model vs the retraining loop, with and without ReSiN.

A live server starts from the shipped model (registry version v0001). Time runs in epochs; in each, a
fleet of fresh sessions on the epoch's network (new traces every epoch) streams through the server,
and their mean QoE_lin (as the players measured it) is the epoch's score. With the loop on, a retraining
round then runs on that epoch's telemetry (`retrain_once`: held-out newest quarter, gate, publish), and
the server picks up what it publishes before the next epoch. The network alternates between a 3G-like
regime and a much faster one, so both directions of shift happen and the model is fine-tuned many times.

    PYTHONPATH=. python benchmarks/retrain_timeline.py \\
        --arms frozen,none,resin,none+replay,resin+replay,none+replay+reference,resin+replay+reference \\
        --seeds 1,2,3,4,5 --workers 2 --out runs/retrain-timeline

Writes ``results.json``, ``timeline.png`` and prints a Markdown table (mean over seeds per epoch).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from abr_common.files import write_atomic
from abr_server.lab.fleet_client import served_model_version, stream_through_server, wait_for_model_version
from abr_server.lab.launcher import local_server
from abr_server.retrain.loop import RetrainConfig, retrain_once
from plasticity.config import parse_plasticity
from policy.learned import DEFAULT_MODEL_DIR
from policy.learning.config import PPOConfig
from simulator.video import Video
from traces.generate import generate_from_spec

VIDEO = Video.builtin()
#: The two regimes (generator specs without n and seed) and the default timeline of epochs.
REGIMES = {"3g": "markov:low_mbps=0.3,high_mbps=2", "fast": "markov:low_mbps=4,high_mbps=9"}
TIMELINE = ("3g", "3g", "fast", "fast", "fast", "fast", "3g", "3g", "3g", "fast", "fast", "fast")
SESSIONS_PER_EPOCH = 24


def spec(regime: str, seed: int, n: int) -> str:
    return f"{REGIMES[regime].replace(':', f':n={n},seed={seed},', 1)}"


def run_arm(arm: str, seed: int, timeline: tuple[str, ...], updates: int) -> list[dict[str, Any]]:
    """One arm (frozen, or the loop with a plasticity method) through the timeline; one row per epoch."""
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        models, db = tmp / "models", tmp / "telemetry.sqlite"
        shutil.copytree(DEFAULT_MODEL_DIR, models / "v0001")
        env = {"ABR_MODELS_DIR": str(models), "ABR_TELEMETRY_DB": str(db), "ABR_WATCH_INTERVAL_S": "0.2"}
        with local_server(env) as (url, _proc):
            for epoch, regime in enumerate(timeline):
                started = time.time()
                # Traces depend on the epoch only, so every arm and seed sees the same sessions.
                traces = generate_from_spec(spec(regime, 1000 + epoch, SESSIONS_PER_EPOCH))
                fleet = stream_through_server(url, traces, VIDEO)
                row: dict[str, Any] = {"epoch": epoch, "regime": regime, "served": served_model_version(url),
                                       "qoe": float(np.nanmean(fleet.player_scores()))}  # fmt: skip
                if arm != "frozen":
                    method, *extras = arm.split("+")
                    config = RetrainConfig(
                        window_s=time.time() - started + 1e-3, min_traces=8, updates=updates, checkpoint_every=10,
                        pool_size=64, margin=0.02, plasticity=parse_plasticity({"method": method}),
                        replay="telemetry" if "replay" in extras else None,
                        reference="telemetry" if "reference" in extras else None,
                        ppo=PPOConfig(num_envs=32, num_steps=64, learning_rate=3e-4, anneal_lr=False,
                                      ent_coef_start=0.01, ent_coef_end=0.01, torch_threads=1, seed=seed * 100 + epoch),
                    )  # fmt: skip
                    result = retrain_once(db, models, tmp / "work", VIDEO, config)
                    if result.version:
                        wait_for_model_version(url, result.version)
                    hold = result.scores.get("holdout", {})
                    row |= {"round": result.status, "published": result.version, "gain": (hold.get("candidate", 0.0)
                            - hold.get("deployed", 0.0)) if hold else None, "round_s": result.wall_s}  # fmt: skip
                rows.append(row)
                print(json.dumps({"arm": arm, "seed": seed, **row}), flush=True)
    return rows


def plot(results: dict[str, Any], timeline: tuple[str, ...], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    epochs = np.arange(len(timeline))
    for k, regime in enumerate(timeline):
        if regime == "fast":
            ax.axvspan(k - 0.5, k + 0.5, color="0.92", lw=0)
    for arm, runs in results["arms"].items():
        qoe = np.array([[r["qoe"] for r in run] for run in runs.values()])
        ax.errorbar(epochs, qoe.mean(0), yerr=qoe.std(0) if len(qoe) > 1 else None, marker="o", capsize=3,
                    label="frozen model" if arm == "frozen" else f"loop, {arm.replace('+', ' + ')}")  # fmt: skip
    ax.set_xticks(epochs, [f"{k}\n{r}" for k, r in enumerate(timeline)])
    ax.set_xlabel("epoch (shaded: fast network)")
    ax.set_ylabel("players' mean QoE_lin")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--arms",
        default="frozen,none,resin,none+replay,resin+replay",
        help="frozen and/or plasticity methods; +replay: older telemetry replayed (a quarter); +reference: the "
        "gate also checks older telemetry (arms without them run with replay and reference off)",
    )
    parser.add_argument("--seeds", default="1")
    parser.add_argument("--updates", type=int, default=30, help="PPO updates per round")
    parser.add_argument("--out", type=Path, default=Path("runs/retrain-timeline"))
    parser.add_argument("--workers", type=int, default=1, help="(arm, seed) runs in parallel processes")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    results: dict[str, Any] = {"timeline": TIMELINE, "regimes": REGIMES, "sessions_per_epoch": SESSIONS_PER_EPOCH,
                               "updates": args.updates, "arms": {}}  # fmt: skip
    jobs = [(arm, seed) for arm in args.arms.split(",") for seed in (seeds if arm != "frozen" else seeds[:1])]
    for arm, _ in jobs:
        results["arms"].setdefault(arm, {})
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(run_arm, arm, seed, TIMELINE, args.updates): (arm, seed) for arm, seed in jobs}
        for future in as_completed(futures):
            arm, seed = futures[future]
            results["arms"][arm][str(seed)] = future.result()
            write_atomic(args.out / "results.json", json.dumps(results, indent=1).encode())
    plot(results, TIMELINE, args.out / "timeline.png")
    arms = list(results["arms"])
    print("| epoch | network | " + " | ".join(arms) + " |")
    print("|---:|---|" + "---:|" * len(arms))
    for k, regime in enumerate(TIMELINE):
        cells = [np.mean([run[k]["qoe"] for run in results["arms"][a].values()]) for a in arms]
        print(f"| {k} | {regime} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    # Per run: mean over epochs 2.. (after the first shift); then mean and spread over seeds.
    summary = []
    for a in arms:
        per_seed = np.array([np.mean([r["qoe"] for r in run[2:]]) for run in results["arms"][a].values()])
        worst = min(r["qoe"] for run in results["arms"][a].values() for r in run)
        summary.append(f"{per_seed.mean():.3f} +- {per_seed.std(ddof=1) if len(per_seed) > 1 else 0.0:.3f}"
                       f" (worst epoch {worst:.2f})")  # fmt: skip
    print("| mean epochs 2.. (sd over seeds) | | " + " | ".join(summary) + " |")


if __name__ == "__main__":
    main()
