"""A retraining round end to end at tiny scale: publish, reject, no data, crash and resume, lineage, continual."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from abr_server.registry import ModelRegistry
from abr_server.retrain import loop
from abr_server.retrain.loop import RetrainConfig, retrain_once
from plasticity.config import ResinConfig
from policy.learned import DEFAULT_MODEL_DIR
from policy.learning.checkpoint import load_checkpoint, load_optimizer_state, save_checkpoint
from policy.learning.config import PPOConfig
from policy.learning.optim import EntryAdam
from simulator.video import Video
from tests.test_retrain import session_rows, write_rows
from traces.trace import Trace

VIDEO = Video.builtin()
NOW_S = 1_000_000.0
TINY = PPOConfig(num_envs=4, num_steps=8, num_minibatches=1, update_epochs=1, anneal_lr=False)


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    models = tmp_path / "models"
    shutil.copytree(DEFAULT_MODEL_DIR, models / "v0001")
    db = tmp_path / "telemetry.sqlite"
    rows = []
    for k in range(10):
        link = Trace(f"l{k}", np.array([0.0, 1000.0]), np.array([2.0 + k, 2.0 + k]))
        rows += session_rows(f"s{k}", link, level=2, received_at_s=NOW_S - 1000 + 50 * k, n=8)
    write_rows(db, rows)
    return db, models, tmp_path / "work"


def config(**changes: object) -> RetrainConfig:
    return RetrainConfig(min_traces=4, pool_size=8, updates=2, checkpoint_every=1, ppo=TINY).model_copy(update=changes)


def test_a_round_publishes_a_version_with_its_lineage(setup: tuple[Path, Path, Path]) -> None:
    db, models, work = setup
    resin = ResinConfig(every_updates=1)
    result = retrain_once(db, models, work, VIDEO, config(margin=-100.0, plasticity=resin), now_s=NOW_S)
    assert result.status == "published"
    assert result.version == "v0002"
    assert result.parent == "v0001"
    assert result.traces["rebuilt"] == 10
    assert result.traces["holdout"] == 2  # the newest quarter
    assert set(result.scores["holdout"]) == {"candidate", "deployed", "robustmpc"}
    registry = ModelRegistry(models, VIDEO, torch.device("cpu"))
    assert registry.versions() == ["v0001", "v0002"]
    registry.load("v0002")  # a whole, servable checkpoint
    meta = json.loads((models / "v0002" / "meta.json").read_text())
    assert meta["data"]["lineage"]["parent"] == "v0001"
    assert meta["data"]["lineage"]["plasticity"] == "resin"
    # ReSiN's running levels travel with the version, for the next round to start from.
    carried = json.loads((models / "v0002" / loop.PLASTICITY_FILE).read_text())
    assert carried["method"] == "resin"
    assert set(carried["gradient_reference"]) >= {"actor.hidden", "critic.hidden"}
    assert not (work / loop.STATE_DIR).exists()  # the round's trainer state is gone


def test_a_candidate_that_does_not_gain_enough_is_not_published(setup: tuple[Path, Path, Path]) -> None:
    db, models, work = setup
    result = retrain_once(db, models, work, VIDEO, config(margin=100.0), now_s=NOW_S)
    assert result.status == "rejected"
    assert "margin" in result.reason
    assert sorted(p.name for p in models.iterdir()) == ["v0001"]


def test_a_candidate_that_regresses_on_the_reference_is_not_published(setup: tuple[Path, Path, Path]) -> None:
    db, models, work = setup
    cfg = config(margin=-100.0, tolerance=-100.0, reference="markov:n=2,seed=3")  # any result is a regression
    result = retrain_once(db, models, work, VIDEO, cfg, now_s=NOW_S)
    assert result.status == "rejected"
    assert "reference" in result.reason
    assert sorted(p.name for p in models.iterdir()) == ["v0001"]


def test_too_little_telemetry_is_no_round(setup: tuple[Path, Path, Path]) -> None:
    db, models, work = setup
    result = retrain_once(db, models, work, VIDEO, config(min_traces=50), now_s=NOW_S)
    assert result.status == "no-data"
    old = retrain_once(db, models, work, VIDEO, config(window_s=10.0), now_s=NOW_S + 10_000)
    assert old.status == "no-data"  # everything is older than the window


def test_older_telemetry_is_replayed_and_is_the_reference(setup: tuple[Path, Path, Path]) -> None:
    db, models, work = setup
    # Sessions s0..s9 arrive 50 s apart from NOW - 1000 (8 chunks, one a second): an 800 s window holds
    # s4..s9 (s4's first chunk arrives exactly at its start); s0..s3 are older.
    cfg = config(margin=-100.0, tolerance=100.0, window_s=800.0, replay="telemetry", reference="telemetry")
    result = retrain_once(db, models, work, VIDEO, cfg, now_s=NOW_S)
    assert result.status == "published"
    assert result.traces["older_telemetry"] == 4
    assert result.traces["replay"] == 2  # a quarter of the pool of 8
    assert set(result.scores["reference"]) == {"candidate", "deployed"}
    assert result.traces["reference"] == 4  # every older session
    capped = retrain_once(db, models, work, VIDEO, cfg.model_copy(update={"reference_size": 2}), now_s=NOW_S)
    assert capped.traces["reference"] == 2  # a seeded draw of them
    fresh = retrain_once(db, models, work, VIDEO, cfg.model_copy(update={"history_s": 800.0}), now_s=NOW_S)
    assert fresh.traces["older_telemetry"] == 0  # nothing older than the window within history_s:
    assert fresh.traces["replay"] == 0  # no replay,
    assert "reference" not in fresh.scores  # no reference check


def test_a_killed_trainer_resumes_its_round(setup: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    db, models, work = setup
    real_save = loop._save_trainer
    calls = {"n": 0}

    def crash_after_first(*args: object, **kwargs: object) -> None:
        real_save(*args, **kwargs)  # type: ignore[arg-type]
        calls["n"] += 1
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(loop, "_save_trainer", crash_after_first)
    with pytest.raises(KeyboardInterrupt):
        retrain_once(db, models, work, VIDEO, config(margin=-100.0), now_s=NOW_S)
    assert sorted(p.name for p in models.iterdir()) == ["v0001"]  # nothing published
    monkeypatch.setattr(loop, "_save_trainer", real_save)
    result = retrain_once(db, models, work, VIDEO, config(margin=-100.0), now_s=NOW_S)
    assert result.resumed_from_update == 1
    assert result.status == "published"


def test_a_publish_killed_midway_leaves_the_registry_valid(
    setup: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    db, models, work = setup

    def rename_fails(self: Path, target: Path) -> Path:
        raise KeyboardInterrupt("killed before the rename")

    monkeypatch.setattr(Path, "rename", rename_fails)
    with pytest.raises(KeyboardInterrupt):
        retrain_once(db, models, work, VIDEO, config(margin=-100.0), now_s=NOW_S)
    monkeypatch.undo()
    assert (models / ".incoming-v0002" / "meta.json").is_file()  # it died after writing, before the rename
    registry = ModelRegistry(models, VIDEO, torch.device("cpu"))
    assert registry.versions() == ["v0001"]  # the half-published folder is hidden
    assert registry.load_servable().version == "v0001"
    result = retrain_once(db, models, work, VIDEO, config(margin=-100.0), now_s=NOW_S)
    assert result.version == "v0002"  # the next publish replaces the leftover


def test_retrain_commands(setup: tuple[Path, Path, Path], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from abr_cli.main import app

    db, models, work = setup
    args = ["--telemetry", str(db), "--models", str(models), "--work", str(work), "--updates", "1",
            "--window-s", "1e10"]  # fmt: skip
    once = CliRunner().invoke(app, ["retrain", "once", *args, "--margin", "100"])
    assert once.exit_code == 0, once.output
    assert json.loads(once.output)["status"] == "rejected"
    # Older telemetry is replayed and is the reference set by default (none is older than this window).
    assert json.loads(once.output)["traces"]["older_telemetry"] == 0
    off = CliRunner().invoke(app, ["retrain", "once", *args, "--margin", "100", "--replay", "none",
                                   "--reference", "none"])  # fmt: skip
    assert off.exit_code == 0, off.output
    assert "older_telemetry" not in json.loads(off.output)["traces"]
    log = tmp_path / "rounds.jsonl"
    watched = CliRunner().invoke(app, ["retrain", "watch", *args, "--margin", "-100", "--rounds", "1",
                                       "--log", str(log)])  # fmt: skip
    assert watched.exit_code == 0, watched.output
    assert json.loads(log.read_text())["status"] == "published"
    bad = CliRunner().invoke(app, ["retrain", "once", *args, "--method", "magic"])
    assert bad.exit_code == 2
    assert "method" in bad.output
    kept = CliRunner().invoke(app, ["retrain", "once", *args, "--margin", "100", "--continual", "--work",
                                    str(tmp_path / "continual")])  # fmt: skip
    assert kept.exit_code == 0, kept.output
    assert (json.loads(kept.output)["resynced"], json.loads(kept.output)["trainer_update"]) == (True, 1)
    assert (tmp_path / "continual" / loop.STATE_DIR / loop.ROUND_FILE).is_file()  # the trainer stays for next time
    no_gpu = CliRunner().invoke(app, ["retrain", "once", *args, "--device", "tpu"])
    assert no_gpu.exit_code == 2
    assert "--device" in no_gpu.output
    guarded = CliRunner().invoke(app, ["retrain", "once", *args, "--margin", "100", "--revert-versions", "2",
                                       "--anchor", "markov:n=2,seed=3", "--rehearse", "markov:n=2,seed=4"])  # fmt: skip
    assert guarded.exit_code == 0, guarded.output
    out = json.loads(guarded.output)
    assert (out["traces"]["anchor"], out["traces"]["rehearsal"]) == (2, 64)  # a quarter of the pool of 256
    assert set(out["scores"]["earlier"]) == {"v0001"}  # v0002 (published by watch) is the deployed one
    fresh_work = tmp_path / "unused-work"
    versions = sorted(p.name for p in models.iterdir())
    missing = CliRunner().invoke(app, ["retrain", "once", *args[:4], "--work", str(fresh_work), *args[6:],
                                       "--anchor", str(tmp_path / "no-such-traces")])  # fmt: skip
    assert missing.exit_code == 2
    assert "no-such-traces" in missing.output
    assert len(missing.output.strip().splitlines()) == 1, missing.output
    assert not fresh_work.exists()  # refused before any training
    assert sorted(p.name for p in models.iterdir()) == versions


# --------------------------------------------------------------------------- the continual trainer


def continual(**changes: object) -> RetrainConfig:
    return config(continual=True, **changes)


def adam_steps(folder: Path) -> float:
    """The largest per-entry Adam step count of the trainer saved in ``folder``."""
    model = load_checkpoint(folder, VIDEO).model
    optimizer = EntryAdam(model.parameters(), lr=1e-3)
    load_optimizer_state(folder, model, optimizer)
    return max(float(s["step"].max()) for s in optimizer.state.values())


def test_a_refused_candidates_training_carries_on(setup: tuple[Path, Path, Path]) -> None:
    db, models, work = setup
    first = retrain_once(db, models, work, VIDEO, continual(margin=100.0), now_s=NOW_S)
    assert first.status == "rejected"
    assert (first.trainer_update, first.resynced) == (2, True)
    trainer = work / loop.STATE_DIR
    steps_after_one = adam_steps(trainer)
    assert steps_after_one == 2  # 2 updates x 1 epoch x 1 minibatch
    second = retrain_once(db, models, work, VIDEO, continual(margin=100.0), now_s=NOW_S + 1)
    assert (second.trainer_update, second.resynced, second.resumed_from_update) == (4, False, 0)
    assert adam_steps(trainer) == 4  # the optimizer's moments went on, not restarted
    assert json.loads((trainer / loop.ROUND_FILE).read_text())["left_active"] == "v0001"


def test_the_trainer_continues_from_what_it_published(setup: tuple[Path, Path, Path]) -> None:
    db, models, work = setup
    resin = ResinConfig(every_updates=1)
    first = retrain_once(db, models, work, VIDEO, continual(margin=-100.0, plasticity=resin), now_s=NOW_S)
    assert first.version == "v0002"
    second = retrain_once(db, models, work, VIDEO, continual(margin=-100.0, plasticity=resin), now_s=NOW_S + 1)
    assert (second.parent, second.version, second.trainer_update, second.resynced) == ("v0002", "v0003", 4, False)
    # The plasticity state is the trainer's own (same run: ReSiN's per-neuron bookkeeping is kept).
    carried = json.loads((work / loop.STATE_DIR / loop.PLASTICITY_FILE).read_text())
    assert carried["method"] == "resin"
    assert "last_reset" in carried


def test_an_operator_activating_another_version_restarts_the_trainer(setup: tuple[Path, Path, Path]) -> None:
    db, models, work = setup
    assert retrain_once(db, models, work, VIDEO, continual(margin=-100.0), now_s=NOW_S).version == "v0002"
    ModelRegistry(models, VIDEO, torch.device("cpu")).mark_active("v0001")  # a rollback
    after = retrain_once(db, models, work, VIDEO, continual(margin=100.0), now_s=NOW_S + 1)
    assert (after.parent, after.trainer_update, after.resynced) == ("v0001", 2, True)
    assert adam_steps(work / loop.STATE_DIR) == 2


def test_an_interrupted_continual_round_resumes_where_it_stopped(
    setup: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    db, models, work = setup
    assert retrain_once(db, models, work, VIDEO, continual(margin=100.0), now_s=NOW_S).trainer_update == 2
    real_save = loop._save_trainer

    def crash(*args: object, **kwargs: object) -> None:
        real_save(*args, **kwargs)  # type: ignore[arg-type]
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(loop, "_save_trainer", crash)
    with pytest.raises(KeyboardInterrupt):
        retrain_once(db, models, work, VIDEO, continual(margin=-100.0), now_s=NOW_S + 1)
    monkeypatch.setattr(loop, "_save_trainer", real_save)
    result = retrain_once(db, models, work, VIDEO, continual(margin=-100.0), now_s=NOW_S + 1)
    assert (result.trainer_update, result.resumed_from_update, result.resynced) == (4, 1, False)
    assert result.version == "v0002"


def test_changed_training_settings_restart_the_trainer(setup: tuple[Path, Path, Path]) -> None:
    db, models, work = setup
    retrain_once(db, models, work, VIDEO, continual(margin=100.0), now_s=NOW_S)
    other = continual(margin=100.0)
    other = other.model_copy(update={"ppo": other.ppo.model_copy(update={"learning_rate": 5e-4})})
    assert retrain_once(db, models, work, VIDEO, other, now_s=NOW_S + 1).resynced


def test_a_continual_trainer_needs_a_schedule_that_never_ends() -> None:
    with pytest.raises(ValueError, match="anneal_lr"):
        RetrainConfig(continual=True, ppo=config().ppo.model_copy(update={"anneal_lr": True}))


def test_the_gate_holds_out_a_random_draw_or_the_newest_sessions(
    setup: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    db, models, work = setup
    seen: list[list[str]] = []
    real_scores = loop._scores

    def scores(traces: list[Trace], *args: object, **kwargs: object) -> dict[str, float]:
        seen.append(sorted(t.name.split("#")[0] for t in traces))
        return real_scores(traces, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(loop, "_scores", scores)
    retrain_once(db, models, work, VIDEO, config(margin=100.0, holdout="newest"), now_s=NOW_S)
    assert seen[-1] == ["s8", "s9"]  # the two sessions that ended last
    for _ in range(2):
        retrain_once(db, models, work, VIDEO, config(margin=100.0), now_s=NOW_S)
    assert seen[-1] == seen[-2]  # the same draw for the same data
    assert len(seen[-1]) == 2
    others = {tuple(seen[-1])}
    for seed in range(2, 8):  # other seeds draw other sessions: not always the newest
        retrain_once(db, models, work, VIDEO, config(margin=100.0, ppo=TINY.model_copy(update={"seed": seed})),
                     now_s=NOW_S)  # fmt: skip
        others.add(tuple(seen[-1]))
    assert len(others) > 1
    assert others != {("s8", "s9")}


def publish_lowest_level_model(models: Path, version: str) -> None:
    """A servable version (the newest: active) that always fetches the lowest level, far below the shipped model."""
    ckpt = load_checkpoint(models / "v0001", VIDEO)
    with torch.no_grad():
        ckpt.model.actor_head.weight.zero_()
        ckpt.model.actor_head.bias.copy_(torch.tensor([50.0, 0.0, 0.0, 0.0, 0.0, 0.0]))
    save_checkpoint(models / version, ckpt.model, VIDEO, ckpt.spec, qoe_kind="lin", train_config={}, progress={})


def test_a_round_reverts_to_an_earlier_version_that_leads_both(setup: tuple[Path, Path, Path]) -> None:
    db, models, work = setup
    publish_lowest_level_model(models, "v0002")
    cfg = continual(margin=0.02, revert_versions=2)
    result = retrain_once(db, models, work, VIDEO, cfg, now_s=NOW_S)
    assert (result.status, result.parent, result.version, result.reverted_to) == ("reverted", "v0002", "v0003", "v0001")
    assert set(result.scores["earlier"]) == {"v0001"}
    hold = result.scores["holdout"]
    assert result.scores["earlier"]["v0001"] >= max(hold["candidate"], hold["deployed"]) + 0.02
    # The new version is the earlier one's weights, published again with the round's lineage.
    weights = [(models / v / "model.safetensors").read_bytes() for v in ("v0001", "v0003")]
    assert weights[0] == weights[1]
    lineage = json.loads((models / "v0003" / "meta.json").read_text())["data"]["lineage"]
    assert (lineage["parent"], lineage["reverted_to"]) == ("v0002", "v0001")
    ModelRegistry(models, VIDEO, torch.device("cpu")).load("v0003")
    # The continual trainer's line lost: the next round starts again from the revert.
    assert not (work / loop.STATE_DIR).exists()
    after = retrain_once(db, models, work, VIDEO, cfg.model_copy(update={"margin": 100.0}), now_s=NOW_S + 1)
    assert (after.parent, after.resynced, after.trainer_update) == ("v0003", True, 2)
    assert set(after.scores["earlier"]) == {"v0001", "v0002"}  # v0003 is deployed; no revert scores itself


def test_a_negative_margin_never_reverts_to_a_version_that_does_not_lead(setup: tuple[Path, Path, Path]) -> None:
    db, models, work = setup
    shutil.copytree(models / "v0001", models / "v0002")  # deployed: the same weights as the earlier version
    result = retrain_once(db, models, work, VIDEO, config(margin=-100.0, revert_versions=2), now_s=NOW_S)
    assert result.scores["earlier"]["v0001"] == result.scores["holdout"]["deployed"]  # a tie: no lead
    assert result.status == "published"
    publish_lowest_level_model(models, "v0004")  # now an earlier version leads: the revert needs no margin
    result = retrain_once(db, models, work, VIDEO, config(margin=-100.0, revert_versions=2), now_s=NOW_S)
    assert (result.status, result.parent) == ("reverted", "v0004")


def test_without_revert_versions_the_gate_scores_no_earlier_version(setup: tuple[Path, Path, Path]) -> None:
    db, models, work = setup
    publish_lowest_level_model(models, "v0002")
    result = retrain_once(db, models, work, VIDEO, config(margin=100.0), now_s=NOW_S)
    assert result.status == "rejected"
    assert "earlier" not in result.scores
    assert ModelRegistry(models, VIDEO, torch.device("cpu")).versions() == ["v0001", "v0002"]


def test_a_revert_must_pass_the_reference_check(setup: tuple[Path, Path, Path]) -> None:
    db, models, work = setup
    publish_lowest_level_model(models, "v0002")
    cfg = config(margin=0.02, tolerance=-100.0, reference="markov:n=2,seed=3", revert_versions=2)
    result = retrain_once(db, models, work, VIDEO, cfg, now_s=NOW_S)
    assert result.status == "rejected"
    assert set(result.scores["reference"]) == {"candidate", "deployed", "v0001"}
    assert ModelRegistry(models, VIDEO, torch.device("cpu")).versions() == ["v0001", "v0002"]


def test_the_anchor_holds_every_version_to_the_first_on_its_traces(setup: tuple[Path, Path, Path]) -> None:
    db, models, work = setup
    anchored = config(margin=-100.0, anchor=["markov:n=3,seed=3"], anchor_tolerance=100.0)
    passed = retrain_once(db, models, work, VIDEO, anchored, now_s=NOW_S)
    assert passed.status == "published"
    assert set(passed.scores["anchor"]) == {"candidate", "first"}
    assert passed.traces["anchor"] == 3
    strict = anchored.model_copy(update={"anchor_tolerance": -100.0})  # any score is a loss beyond it
    refused = retrain_once(db, models, work, VIDEO, strict, now_s=NOW_S)
    assert (refused.status, refused.parent) == ("rejected", "v0002")
    assert refused.reason.startswith("anchor loss")
    publish_lowest_level_model(models, "v0003")  # an earlier version leads on the held-out sessions,
    held = retrain_once(db, models, work, VIDEO, strict.model_copy(update={"revert_versions": 2}), now_s=NOW_S)
    assert held.status == "rejected"  # but fails the anchor as well
    best = max(held.scores["earlier"], key=held.scores["earlier"].__getitem__)
    assert set(held.scores["anchor"]) == {"candidate", "first", best}


def test_rehearsal_traces_take_their_share_of_the_pool(setup: tuple[Path, Path, Path]) -> None:
    db, models, work = setup
    result = retrain_once(db, models, work, VIDEO, config(margin=100.0, rehearsal=["markov:n=3,seed=3"]), now_s=NOW_S)
    assert (result.traces["train_pool"], result.traces["rehearsal"]) == (8, 2)  # a quarter of the pool of 8
    assert "rehearsal" not in retrain_once(db, models, work, VIDEO, config(margin=100.0), now_s=NOW_S).traces
    with pytest.raises(ValueError, match=r"replay_share \(0\.5\) \+ rehearsal_share \(0\.5\) must stay below 1"):
        RetrainConfig(rehearsal=["markov:n=3,seed=3"], replay_share=0.5, rehearsal_share=0.5)


def test_earlier_versions_are_the_first_and_the_newest_but_no_reverts(tmp_path: Path) -> None:
    models = tmp_path / "models"
    for k in range(1, 8):
        shutil.copytree(DEFAULT_MODEL_DIR, models / f"v{k:04d}")
    meta_path = models / "v0005" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps(meta | {"data": {"lineage": {"parent": "v0004", "reverted_to": "v0002"}}}))
    registry = ModelRegistry(models, VIDEO, torch.device("cpu"))
    assert loop._earlier_versions(registry, "v0007", 0) == []
    assert loop._earlier_versions(registry, "v0007", 1) == ["v0001"]
    assert loop._earlier_versions(registry, "v0007", 3) == ["v0001", "v0004", "v0006"]
    assert loop._earlier_versions(registry, "v0003", 9) == ["v0001", "v0002", "v0004", "v0006", "v0007"]
