"""Schedules, continual training, benchmark statistics and the plasticity CLI, at tiny scale."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from abr_cli.main import app
from plasticity.bench import BenchConfig, _matches, aggregate, bitrate_ratio, run_bench, write_report
from plasticity.config import FLAT_DEFAULTS, FreshConfig, ResetterConfig, ResinConfig, parse_plasticity
from plasticity.continual import recovery_steps, run_schedule
from plasticity.schedules import Schedule, ScheduleError, available_schedules, load_schedule
from policy.learning.config import NetworkConfig, PPOConfig
from simulator.video import Video

runner = CliRunner()
TINY_PPO = PPOConfig(num_envs=8, num_steps=16, num_minibatches=2, update_epochs=1,
                     network=NetworkConfig(hidden=8, filters=4), torch_threads=1)  # fmt: skip
TINY_SCHEDULE = Schedule(
    name="tiny",
    evals_per_phase=2,
    phases=[
        {"family": "low", "train": ["markov:n=3,seed=1,low_mbps=0.3,high_mbps=1"],
         "test": ["markov:n=2,seed=2,low_mbps=0.3,high_mbps=1"], "steps": 512},
        {"family": "high", "train": ["regime:n=3,seed=3,low_mbps=5,high_mbps=9"],
         "test": ["regime:n=2,seed=4,low_mbps=5,high_mbps=9"], "steps": 256},
    ],
)  # fmt: skip


def test_shipped_schedules_validate() -> None:
    names = available_schedules()
    assert {"regime-shift", "low-high", "synthetic-shift", "real-updown", "stationary"} <= set(names)
    for name in names:
        schedule = load_schedule(name)
        if name == "stationary":  # the control: one family all along
            assert [len(p.train) for p in schedule.phases] == [2]
            continue
        assert len(schedule.phases) >= 2
        assert len(set(schedule.families())) >= 2


def test_schedule_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ScheduleError, match="not a shipped schedule"):
        load_schedule("nope")
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": "x", "phases": [{"family": "a", "train": [], "test": ["t"], "steps": 0}]}')
    with pytest.raises(ScheduleError, match=r"phases\.0\.train.*phases\.0\.steps"):
        load_schedule(bad)
    bad.write_text("{nope")
    with pytest.raises(ScheduleError, match="not JSON"):
        load_schedule(bad)


def test_recovery_steps_by_hand() -> None:
    steps = np.arange(1, 11) * 100.0
    qoe = np.array([0.0, 0.2, 0.5, 0.8, 0.95, 1.0, 1.0, 1.0, 1.0, 1.0])
    # Eventual level: mean of the last fifth = 1.0; target 0.9; first unsmoothed hit at step 500.
    assert recovery_steps(steps, qoe, window=1) == 500.0
    # Smoothed over 2: (0.8 + 0.95) / 2 = 0.875 < 0.9, (0.95 + 1.0) / 2 = 0.975 at step 600.
    assert recovery_steps(steps, qoe, window=2) == 600.0
    # A negative level: 90% of -1.0 means reaching -1.1.
    assert recovery_steps(steps, -np.array([3.0, 2.0, 1.05, 1, 1, 1, 1, 1, 1, 1]), window=1) == 300.0


def test_run_schedule_records_continual_evaluation_and_is_reproducible() -> None:
    video = Video.builtin()
    config = ResinConfig(every_updates=1, diagnose_every_updates=1, batch_size=64)
    a = run_schedule(TINY_SCHEDULE, config, TINY_PPO, video)
    b = run_schedule(TINY_SCHEDULE, config, TINY_PPO, video)
    assert a["phase_updates"] == [4, 2]
    assert a["phase_start_steps"] == [0, 512]
    assert a["total_steps"] == 768
    assert [(e["phase"], e["steps_into_phase"]) for e in a["evals"]] == [(0, 256), (0, 512), (1, 128), (1, 256)]
    assert set(a["evals"][0]["scores"]) == {"low"}
    assert set(a["evals"][-1]["scores"]) == {"low", "high"}  # earlier families are re-tested (forgetting)
    assert a["ppo"]["anneal_lr"] is False
    assert a["ppo"]["ent_coef_end"] == a["ppo"]["ent_coef_start"]
    assert any("plasticity/silent_ratio" in u for u in a["updates"])
    assert a["evals"] == b["evals"]
    assert a["updates"] == b["updates"]


def test_fresh_method_restarts_the_network_at_each_shift() -> None:
    video = Video.builtin()
    record = run_schedule(TINY_SCHEDULE, FreshConfig(), TINY_PPO, video)
    assert record["resets"] == 1


def test_bench_runs_resumes_and_reports(tmp_path: Path) -> None:
    shared = {"every_updates": 1, "diagnose_every_updates": 1, "batch_size": 64}
    config = BenchConfig(methods=["none", "resin"], seeds=2, workers=1, ppo=TINY_PPO, plasticity=shared)
    seen: list[str] = []
    records = run_bench(TINY_SCHEDULE, config, Video.builtin(), tmp_path, on_done=seen.append)
    assert sorted(seen) == ["none-seed1.json", "none-seed2.json", "resin-seed1.json", "resin-seed2.json"]
    again: list[str] = []
    assert run_bench(TINY_SCHEDULE, config, Video.builtin(), tmp_path, on_done=again.append) == records
    assert all(name.endswith("(kept)") for name in again)
    summary = aggregate(records)
    assert set(summary["methods"]) == {"none", "resin"}
    none = summary["methods"]["none"]
    assert none["seeds"] == 2
    per_seed = none["post_shift_qoe"]["per_seed"]
    assert none["post_shift_qoe"]["mean"] == pytest.approx(float(np.mean(per_seed)))
    ratio = bitrate_ratio(summary)
    expected = (
        summary["methods"]["resin"]["phases"][1]["bitrate_kbps"]["mean"] / none["phases"][1]["bitrate_kbps"]["mean"]
    )
    assert ratio == pytest.approx(expected)
    report = write_report(summary, config, TINY_SCHEDULE, tmp_path, "abr plasticity-bench ...")
    text = report.read_text()
    assert "| resin |" in text
    assert "post-shift QoE" in text
    for plot in ("qoe_per_phase.png", "training_qoe.png", "silent_ratio.png", "effective_rank.png"):
        assert (tmp_path / plot).stat().st_size > 0
    assert json.loads((tmp_path / "results.json").read_text())["summary"]["methods"]["none"]["seeds"] == 2


def test_phase_jitter_draws_one_schedule_per_seed_for_every_method(tmp_path: Path) -> None:
    plain = BenchConfig(methods=["none", "reset"], seeds=3, workers=1, ppo=TINY_PPO)
    assert plain.seed_schedule(TINY_SCHEDULE, 1) == TINY_SCHEDULE
    jittered = plain.model_copy(update={"phase_jitter": 0.5})
    lengths = {seed: [p.steps for p in jittered.seed_schedule(TINY_SCHEDULE, seed).phases] for seed in (1, 2, 3)}
    assert lengths[1] == [p.steps for p in jittered.seed_schedule(TINY_SCHEDULE, 1).phases]  # reproducible
    assert len({tuple(v) for v in lengths.values()}) == 3  # seeds differ
    for steps in lengths.values():
        for step, phase in zip(steps, TINY_SCHEDULE.phases, strict=True):
            assert 0.5 * phase.steps <= step <= 1.5 * phase.steps
    one_seed = jittered.model_copy(update={"seeds": 1})
    records = run_bench(TINY_SCHEDULE, one_seed, Video.builtin(), tmp_path)
    # Every method of a seed ran the same jittered phases, and its record says which.
    assert [[p["steps"] for p in r["schedule"]["phases"]] for r in records] == [lengths[1], lengths[1]]
    assert records[0]["phase_start_steps"] == records[1]["phase_start_steps"]


def test_a_schedule_carries_its_own_jitter_and_the_bench_can_override_it(tmp_path: Path) -> None:
    uncertain = TINY_SCHEDULE.model_copy(update={"phase_jitter": 0.5})
    by_schedule = BenchConfig(methods=["none"], seeds=1, workers=1, ppo=TINY_PPO)  # phase_jitter None
    explicit = by_schedule.model_copy(update={"phase_jitter": 0.5})
    assert by_schedule.jitter(uncertain) == 0.5
    assert by_schedule.seed_schedule(uncertain, 2) == explicit.seed_schedule(TINY_SCHEDULE, 2)
    assert by_schedule.seed_schedule(uncertain, 2).phase_jitter == 0.0  # what a run records: jitter applied
    as_written = by_schedule.model_copy(update={"phase_jitter": 0.0})
    assert [p.steps for p in as_written.seed_schedule(uncertain, 2).phases] == [p.steps for p in uncertain.phases]
    # A record written before schedules had the field still resumes.
    records = run_bench(TINY_SCHEDULE, by_schedule, Video.builtin(), tmp_path)
    path = tmp_path / "runs" / "none-seed1.json"
    old = json.loads(path.read_text())
    del old["schedule"]["phase_jitter"]
    path.write_text(json.dumps(old))
    kept: list[str] = []
    run_bench(TINY_SCHEDULE, by_schedule, Video.builtin(), tmp_path, on_done=kept.append)
    assert kept == ["none-seed1.json (kept)"]
    assert records[0]["schedule"]["phase_jitter"] == 0.0


@pytest.mark.parametrize(("method", "kept"), [("none", True), ("reset", True), ("redo", False), ("resin", False)])
def test_records_from_before_a_new_setting_are_kept_only_where_it_changes_nothing(
    tmp_path: Path, method: str, kept: bool
) -> None:
    """A record written before ``futile_backoff`` existed ran without backoff: still valid for methods
    that never back off, stale for ReDo and ReSiN (which now back off by default). The record holds the
    flat config of every method's fields that records had then."""
    config = parse_plasticity({"method": method})
    old = {**FLAT_DEFAULTS, "method": method}
    del old["futile_backoff"]
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"plasticity": old, "scale": 0.1, "schedule": TINY_SCHEDULE.model_dump()}))
    assert _matches(path, config, 0.1, TINY_SCHEDULE) is kept
    if isinstance(config, ResetterConfig):
        legacy = config.model_copy(update={"futile_backoff": 0})
        assert _matches(path, legacy, 0.1, TINY_SCHEDULE)  # asking for the old behaviour keeps every record


def test_cli_rejects_bad_methods_and_schedules(tmp_path: Path) -> None:
    result = runner.invoke(app, ["plasticity-bench", "--methods", "none,bogus", "--out", str(tmp_path / "o")])
    assert result.exit_code != 0
    assert "bogus" in result.output
    result = runner.invoke(app, ["plasticity-bench", "--schedule", "nope", "--out", str(tmp_path / "o")])
    assert result.exit_code != 0
    assert "not a shipped schedule" in result.output
    result = runner.invoke(app, ["train", "--plasticity", "magic", "--out", str(tmp_path / "t")])
    assert result.exit_code != 0
    assert "--plasticity" in result.output


def test_cli_train_through_a_schedule(tmp_path: Path) -> None:
    schedule = tmp_path / "tiny.json"
    schedule.write_text(TINY_SCHEDULE.model_dump_json())
    config = tmp_path / "ppo.json"
    config.write_text(json.dumps({k: v for k, v in TINY_PPO.model_dump().items() if k != "total_steps"}))
    out = tmp_path / "run"
    result = runner.invoke(
        app, ["train", "--schedule", str(schedule), "--plasticity", "redo", "--out", str(out), "--config", str(config)]
    )
    assert result.exit_code == 0, result.output
    record = json.loads((out / "run.json").read_text())
    assert record["plasticity"]["method"] == "redo"
    assert (out / "last" / "model.safetensors").is_file()
    assert "end of phase 1 (high)" in result.output


def test_recovery_against_a_given_level_counts_a_stuck_run_as_never() -> None:
    steps = np.arange(1, 11) * 100.0
    stuck = np.full(10, 1.2)
    assert recovery_steps(steps, stuck, window=1) == 100.0  # recovered to its own (poor) level at once
    assert recovery_steps(steps, stuck, window=1, level=4.2) == float("inf")


@pytest.mark.parametrize(
    ("method", "recorded", "kept"),
    [("redo", 10, True), ("none", 10, True), ("resin", 10, False), ("resin", 5, True), ("resin", None, True)],
)
def test_records_match_on_the_check_cadence_they_ran_with(
    tmp_path: Path, method: str, recorded: int | None, kept: bool
) -> None:
    """Records hold the cadence as a number (older ones) or None (the method's own): compared as it ran.
    A method that never checks (none) ignores the field, whatever an old flat record holds there."""
    config = parse_plasticity({"method": method})
    old = {**FLAT_DEFAULTS, "method": method, "every_updates": recorded}
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"plasticity": old, "scale": 0.1, "schedule": TINY_SCHEDULE.model_dump()}))
    assert _matches(path, config, 0.1, TINY_SCHEDULE) is kept
    if isinstance(config, ResetterConfig):
        assert config.check_every_updates == (5 if method == "resin" else 10)
        assert _matches(path, config.model_copy(update={"every_updates": recorded}), 0.1, TINY_SCHEDULE)
