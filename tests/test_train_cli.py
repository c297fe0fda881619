"""`abr train` end to end at tiny scale: outputs, evaluation, resume, bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from typer.testing import CliRunner

from abr_cli.main import app

runner = CliRunner()
TINY = {"network": {"hidden": 8, "filters": 4}, "num_steps": 8, "num_minibatches": 2, "update_epochs": 1}
#: The network a checkpoint of TINY records (every field, defaults included).
TINY_NETWORK = {"hidden": 8, "filters": 4, "kernel": 4, "shared_trunk": False, "critic_future": False,
                "layer_norm": False, "injected_heads": 0}  # fmt: skip


def _run(tmp_path: Path, *extra: str) -> object:
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    args = ["train", "-t", "markov:n=4,seed=1", "--steps", "256", "--num-envs", "8", "--out", str(tmp_path / "run")]
    args += ["--config", str(config), "--eval-traces", "markov:n=3,seed=2", "--eval-every", "2", "--device", "cpu"]
    return runner.invoke(app, args + list(extra))


def test_train_writes_metrics_and_checkpoints(tmp_path: Path) -> None:
    result = _run(tmp_path)
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    run = tmp_path / "run"
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert len(rows) == 4  # 256 steps / (8 envs x 8 steps)
    assert {"charts/qoe", "losses/policy", "losses/value", "losses/entropy"} <= set(rows[0])
    assert rows[1]["eval/markov:n=3,seed=2"] != ""
    for sub in ("best", "last"):
        meta = json.loads((run / sub / "meta.json").read_text())
        assert meta["train_config"]["num_envs"] == 8
        assert meta["network"] == TINY_NETWORK
    assert json.loads((run / "last" / "meta.json").read_text())["progress"]["global_step"] == 256
    # The checkpoint serves as a policy.
    result = runner.invoke(app, ["simulate", "-t", "markov:n=2,seed=5", "-p", f"checkpoint:{run / 'best'}"])
    assert result.exit_code == 0, result.output


def test_train_refuses_to_overwrite_and_resumes(tmp_path: Path) -> None:
    assert _run(tmp_path).exit_code == 0  # type: ignore[attr-defined]
    again = _run(tmp_path)
    assert again.exit_code == 2  # type: ignore[attr-defined]
    assert "--resume" in again.stderr  # type: ignore[attr-defined]
    resumed = _run(tmp_path, "--resume")
    assert resumed.exit_code == 0, resumed.output  # type: ignore[attr-defined]
    other = runner.invoke(
        app, ["train", "-t", "markov:n=4,seed=1", "--steps", "512", "--out", str(tmp_path / "run"), "--resume"]
    )
    assert other.exit_code == 2
    assert "differ" in other.stderr


def test_train_bad_input(tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "--network", "huge", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "--network" in result.stderr
    result = runner.invoke(app, ["train", "-t", "nope", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "nope" in result.stderr
    result = runner.invoke(app, ["train", "--resume", "--out", str(tmp_path / "none")])
    assert result.exit_code == 2
    assert "nothing" in result.stderr or "no checkpoint" in result.stderr
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"foo": 1, "gamma": 2.0}))
    result = runner.invoke(app, ["train", "--config", str(bad), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "error: training options: gamma: Input should be less than or equal to 1; foo: Extra inputs are not permitted"
    ]
    assert not (tmp_path / "x").exists()


def test_train_init_fine_tunes_from_a_checkpoint(tmp_path: Path) -> None:
    from policy.learning.checkpoint import load_checkpoint

    assert _run(tmp_path).exit_code == 0  # type: ignore[attr-defined]
    start = tmp_path / "run" / "last"
    # A learning rate of 1e-12 leaves the weights where --init put them: the fine-tuned model is the start model.
    config = tmp_path / "still.json"
    config.write_text(json.dumps({**TINY, "learning_rate": 1e-12}))
    args = ["train", "-t", "markov:n=4,seed=1", "--steps", "64", "--num-envs", "8", "--device", "cpu"]
    tuned = ["--out", str(tmp_path / "tuned"), "--config", str(config), "--init", str(start)]
    result = runner.invoke(app, [*args, *tuned])
    assert result.exit_code == 0, result.output
    before, after = load_checkpoint(start).model.state_dict(), load_checkpoint(tmp_path / "tuned" / "best").model
    for name, tensor in after.state_dict().items():
        assert (tensor - before[name]).abs().max() < 1e-6, name
    meta = json.loads((tmp_path / "tuned" / "best" / "meta.json").read_text())
    assert meta["data"]["init"] == str(start)
    assert meta["network"] == TINY_NETWORK
    # Without --config the network shape comes from the checkpoint; a --config with another shape is refused.
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "shape"), "--init", str(start)])
    assert result.exit_code == 0, result.output
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**TINY, "network": {"hidden": 16, "filters": 4}}))
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "x"), "--config", str(other), "--init", str(start)])
    assert result.exit_code == 2
    assert "--init" in result.stderr
    assert "network" in result.stderr
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "y"), "--init", str(tmp_path / "nowhere")])
    assert result.exit_code == 2
    assert "--init" in result.stderr
    assert "not a checkpoint" in result.stderr
