"""`abr adapt` in miniature: a tiny fleet through a live server across a shift; the gate; the statistics; the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from abr_cli.main import app
from abr_server.lab import adapt
from abr_server.lab.adapt import AdaptConfig, SessionDraws, run_adapt, run_arm, summarise, tiny_retrain, write_outputs
from abr_server.lab.timeline import Arm, parse_arm, parse_arms, parse_phase, parse_seeds
from abr_server.retrain.loop import DIAGNOSED_KEY

SLOW = "slow=markov:n=12,seed=1:1"
FAST = "fast=markov:n=12,seed=2@scale=8:2"
runner = CliRunner()


def tiny(phases: list[str], arms: list[str], **retrain: Any) -> AdaptConfig:
    return AdaptConfig(phases=[parse_phase(p) for p in phases], arms=arms, seeds=[1], sessions_per_epoch=4,
                       retrain=tiny_retrain().model_copy(update=retrain))  # fmt: skip


def test_phases_arms_and_seeds_parse_or_name_the_problem() -> None:
    phase = parse_phase("fast=markov:n=60,seed=11@scale=8:4")
    assert (phase.name, phase.source, phase.epochs) == ("fast", "markov:n=60,seed=11@scale=8", 4)
    assert parse_phase("fcc=fcc-test@fold=0/5:2").source == "fcc-test@fold=0/5"
    for bad in ("fcc-test:3", "fcc=fcc-test", "fcc=fcc-test:0", "x=/etc:2", "x=../elsewhere:2"):
        with pytest.raises(ValueError, match="--phase"):
            parse_phase(bad)
    assert parse_arm("resin+replay+reference") == Arm("resin+replay+reference", "resin", True, True)
    assert not parse_arm("robustmpc").learns
    assert parse_arm("none+continual") == Arm("none+continual", "none", continual=True)
    assert parse_arm("resin+continual+revert") == Arm("resin+continual+revert", "resin", continual=True, revert=True)
    for bad in ("magic", "resin+extra", "none+replay+replay", "frozen,frozen"):
        with pytest.raises(ValueError, match="--arms"):
            parse_arms(bad)
    assert parse_seeds("3, 1") == [3, 1]
    with pytest.raises(ValueError, match="--seeds"):
        parse_seeds("1,x")


def test_sessions_are_unseen_within_a_run_and_the_same_for_every_arm() -> None:
    source = "markov:n=10,seed=5"
    draws = SessionDraws(Path("unused"))
    names = [[t.name for t in draws.draw(source, 4, 7, epoch)[0]] for epoch in range(2)]
    assert not set(names[0]) & set(names[1])
    _, cycled = draws.draw(source, 4, 7, 2)  # 2 unseen left: all 10 are eligible again
    assert cycled
    again = SessionDraws(Path("unused"))
    assert [t.name for t in again.draw(source, 4, 7, 0)[0]] == names[0]
    assert [t.name for t in SessionDraws(Path("unused")).draw(source, 4, 8, 0)[0]] != names[0]


@pytest.mark.slow
def test_the_loop_publishes_after_a_shift_and_the_outputs_are_written(tmp_path: Path) -> None:
    config = tiny([SLOW, FAST], ["none", "robustmpc"], margin=-100.0)  # every candidate passes: the plumbing
    records = run_adapt(config, tmp_path)
    loop, rule = records
    assert [r["served"] for r in loop["epochs"]] == ["v0001", "v0002", "v0003"]  # the server serves each publication
    after_shift = loop["epochs"][1]
    assert after_shift["name"] == "fast"
    assert after_shift["round"]["status"] == "published"
    assert after_shift["round"]["diagnosed_update"] == config.retrain.updates  # the candidate's own diagnostics
    assert 0 <= after_shift["round"]["diagnostics"][DIAGNOSED_KEY] <= 1
    assert "round" not in loop["epochs"][-1]  # nothing after the last epoch
    assert [r["sessions"] for r in rule["epochs"]] == [r["sessions"] for r in loop["epochs"]]
    assert [r["served"] for r in rule["epochs"]] == ["robustmpc"] * 3

    summary, report = write_outputs(records, config, tmp_path, "abr adapt --tiny")
    assert summary["arms"]["none"]["published"]["mean"] == 2
    assert [t["name"] for t in summary["arms"]["none"]["time_to_adapt"]] == ["fast"]
    results = json.loads((tmp_path / adapt.RESULTS_FILE).read_text())
    assert results["summary"]["epochs"][1]["name"] == "fast"
    assert "Time to adapt" in report.read_text()
    assert (tmp_path / adapt.QOE_PLOT).stat().st_size > 0
    assert (tmp_path / adapt.SILENT_PLOT).stat().st_size > 0

    kept: list[str] = []
    assert run_adapt(config, tmp_path, on_done=kept.append) == records  # a rerun runs nothing
    assert kept == ["none-seed1.json (kept)", "robustmpc-seed1.json (kept)"]


@pytest.mark.slow
def test_a_regressing_candidate_is_not_published() -> None:
    # A huge entropy bonus at a high learning rate pushes the policy towards picking levels at random.
    ppo = tiny_retrain().ppo.model_copy(update={"learning_rate": 0.05, "ent_coef_start": 10.0, "ent_coef_end": 10.0})
    record = run_arm(tiny([FAST], ["none"], ppo=ppo, margin=0.0), "none", 1)
    round_ = record["epochs"][0]["round"]
    assert round_["status"] == "rejected", round_
    assert round_["scores"]["holdout"]["candidate"] < round_["scores"]["holdout"]["deployed"]
    assert [r["served"] for r in record["epochs"]] == ["v0001", "v0001"]


@pytest.mark.slow
def test_a_continual_arm_keeps_one_trainer_across_rounds() -> None:
    config = tiny([SLOW, FAST], ["resin+continual"], margin=100.0)  # every candidate refused
    assert adapt.round_config(config, parse_arm("resin+continual"), 1, 0, 1.0).continual
    record = run_arm(config, "resin+continual", 1)
    rounds = [e["round"] for e in record["epochs"] if "round" in e]
    updates = config.retrain.updates
    assert [r["status"] for r in rounds] == ["rejected", "rejected"]
    # The refused first round's training goes on in the second (a fresh fine-tune would restart at 0).
    assert [(r["trainer_update"], r["resynced"]) for r in rounds] == [(updates, True), (2 * updates, False)]
    # Every refusal is checked on the next epoch's sessions: the candidate against what stayed deployed.
    checks = [e.get("refused_check") for e in record["epochs"]]
    assert checks[0] is None
    assert all(set(c) == {"candidate", "deployed"} for c in checks[1:])
    gains = [c["candidate"] - c["deployed"] for c in checks[1:]]
    summary = summarise([record], config)
    checked = summary["arms"]["resin+continual"]["refusals_checked"]
    assert (checked["checked"], checked["false"]) == (2, sum(g > 0 for g in gains))
    assert checked["gain"]["mean"] == pytest.approx(sum(gains) / 2)
    assert "| resin+continual | 2 |" in adapt._report(summary, config, "abr adapt")


def test_a_revert_arms_gate_scores_earlier_versions_and_older_records_are_kept(tmp_path: Path) -> None:
    config = tiny([SLOW, FAST], ["resin+continual", "resin+continual+revert"])
    assert adapt.round_config(config, parse_arm("resin+continual"), 1, 0, 1.0).revert_versions == 0
    revert = adapt.round_config(config, parse_arm("resin+continual+revert"), 1, 0, 1.0)
    assert revert.revert_versions == adapt.REVERT_VERSIONS
    assert revert.anchor == []
    anchored = adapt.round_config(config, parse_arm("resin+anchor"), 1, 0, 1.0)
    assert anchored.anchor == [str(Path(config.trace_root) / f) for f in adapt.ANCHOR_FOLDERS]
    assert "anchor" in config.run_settings(parse_arm("resin+anchor"), 1)  # another anchor: another run
    assert "anchor" not in config.run_settings(parse_arm("resin"), 1)
    rehearsing = adapt.round_config(config, parse_arm("resin+rehearse"), 1, 0, 1.0)
    assert (rehearsing.rehearsal, rehearsing.anchor) == (anchored.anchor, [])
    # A record written before a retrain setting existed is kept: the setting takes its default.
    settings = json.loads(json.dumps(config.run_settings(parse_arm("resin+continual"), 1)))
    del settings["retrain"]["revert_versions"]
    path = tmp_path / "record.json"
    path.write_text(json.dumps({"settings": settings, "epochs": [{"qoe": 1.0}]}))
    now = json.loads(json.dumps(config.run_settings(parse_arm("resin+continual"), 1)))
    assert adapt._kept(path, now)
    settings["retrain"]["margin"] = 0.5  # a setting that differs: run again
    path.write_text(json.dumps({"settings": settings, "epochs": [{"qoe": 1.0}]}))
    assert not adapt._kept(path, now)
    settings["retrain"]["margin"] = "wide"  # unreadable: run again
    path.write_text(json.dumps({"settings": settings, "epochs": [{"qoe": 1.0}]}))
    assert not adapt._kept(path, now)


def _record(arm: str, qoe: list[float], seconds_per_epoch: float = 10.0) -> dict[str, Any]:
    return {"arm": arm, "seed": 1, "epochs": [{"qoe": q, "started_s": k * seconds_per_epoch, "stream_s": 1.0}
                                              for k, q in enumerate(qoe)]}  # fmt: skip


def test_time_to_adapt_and_recovery_by_hand() -> None:
    config = tiny(["a=markov:n=12,seed=1:2", "b=markov:n=12,seed=2:3", "a=markov:n=12,seed=1:3"], ["none"])
    rule = _record("robustmpc", [1.0, 1.0, 2.0, 2.0, 2.0, 1.0, 1.0, 1.0])
    loop = _record("none", [1.5, 1.2, 0.5, 1.9, 2.5, 0.2, 0.9, 1.3])
    arms = summarise([loop, rule], config)["arms"]
    to_b, back_to_a = arms["none"]["time_to_adapt"]
    assert (to_b["epoch"], to_b["adapted"], to_b["rounds"]["mean"], to_b["wall_s"]["mean"]) == (2, 1, 2.0, 20.0)
    assert (back_to_a["adapted"], back_to_a["rounds"]["mean"]) == (1, 2.0)  # 0.2, 0.9 <= 1.0; 1.3 > 1.0
    (recovery,) = arms["none"]["recovery"]
    # Against robustMPC: +0.2 in the last half of the previous visit to a (epoch 1); back within 0.1 of it at
    # epoch 7 (+0.3; epochs 5 and 6 at -0.8 and -0.1).
    assert recovery["relative_to"] == "robustmpc"
    assert recovery["target"]["mean"] == pytest.approx(0.1)
    assert (recovery["recovered"], recovery["rounds"]["mean"]) == (1, 2.0)
    # Without robustMPC, QoE itself: 1.2 then; 0.2, 0.9 and 1.3 now, so again at epoch 7.
    (alone,) = summarise([loop], config)["arms"]["none"]["recovery"]
    assert alone["relative_to"] is None
    assert alone["target"]["mean"] == pytest.approx(1.1)
    assert (alone["recovered"], alone["rounds"]["mean"]) == (1, 2.0)
    assert arms["none"]["worst_epoch_qoe"] == 0.2
    assert arms["robustmpc"]["time_to_adapt"] == []
    assert arms["robustmpc"]["recovery"] == []


def test_cli_input_errors_are_one_line_and_write_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    cases = [
        (["--phase", "fcc-test:3"], "NAME=SOURCE:EPOCHS"),
        (["--arms", "frozen,magic"], "unknown arm 'magic'"),
        (["--seeds", "1,one"], "--seeds"),
        (["--trace-root", str(tmp_path / "no-traces")], f"trace root {tmp_path / 'no-traces'} not found"),
        (["--phase", "x=markov:n=2,seed=1:1"], "fewer than the 4 sessions"),
        (["--phase", SLOW, "--model", str(tmp_path)], f"--model {tmp_path}: not a checkpoint"),
        (["--phase", SLOW, "--arms", "none+anchor", "--anchor", "no-such-folder"], "--anchor 'no-such-folder'"),
    ]
    for options, message in cases:
        result = runner.invoke(app, ["adapt", "--tiny", "--out", str(out), *options])
        assert result.exit_code == 2, (options, result.output)
        assert result.output.startswith("error:"), result.output
        assert message in result.output, (options, result.output)
        assert len(result.output.strip().splitlines()) == 1, result.output
        assert not out.exists()
