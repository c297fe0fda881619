"""``abr simulate`` and ``abr bench sim`` through typer's CliRunner: outputs, files and input errors."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from abr_cli.main import app
from policy.evaluation.loop import RECORD_FIELDS as EVAL_RECORD_FIELDS

runner = CliRunner()

RECORD_FIELDS = set(EVAL_RECORD_FIELDS)


def test_simulate_defaults_prints_a_table() -> None:
    result = runner.invoke(app, ["simulate"])
    assert result.exit_code == 0, result.output
    for text in ("QoE_lin", "bba", "rb", "bola", "robustmpc", "markov:n=100,seed=0", "video builtin"):
        assert text in result.stdout


def test_simulate_log_and_json(tmp_path: Path) -> None:
    log, summary = tmp_path / "out.jsonl", tmp_path / "sub" / "sum.json"
    result = runner.invoke(
        app, ["simulate", "-t", "markov:n=5,seed=1", "-p", "bba", "--log", str(log), "--json", str(summary)]
    )
    assert result.exit_code == 0, result.output
    assert f"per-chunk log: {log} (240 chunks)" in result.stdout

    lines = log.read_text().splitlines()
    assert len(lines) == 5 * 48
    records: list[dict[str, Any]] = [json.loads(line) for line in lines]
    for record in records:
        assert set(record) == RECORD_FIELDS | {"policy", "traces"}
        assert record["policy"] == "bba"
        assert record["traces"] == "markov:n=5,seed=1"
    per_trace: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        per_trace[str(record["trace"])].append(record)
    assert len(per_trace) == 5
    for chunks in per_trace.values():
        assert [r["chunk"] for r in chunks] == list(range(48))
        assert chunks[0]["quality"] == 1  # the first chunk is always at initial_quality

    doc = json.loads(summary.read_text())
    assert doc["qoe_kind"] == "lin"
    assert doc["video"] == "builtin"
    assert len(doc["results"]) == 1
    row = doc["results"][0]
    assert (row["policy"], row["traces"], row["n_traces"]) == ("bba", "markov:n=5,seed=1", 5)
    # Score per session: mean QoE_lin over chunks 1..47 (the first chunk excluded), then over sessions.
    scores = [np.mean([float(r["qoe_lin"]) for r in chunks[1:]]) for chunks in per_trace.values()]
    assert row["qoe"] == pytest.approx(np.mean(scores), rel=1e-12)
    bitrates = [float(r["bitrate_kbps"]) for r in records]
    assert row["bitrate_kbps"] == pytest.approx(np.mean(bitrates), rel=1e-12)
    rebuf = [sum(float(r["rebuf_s"]) for r in chunks) for chunks in per_trace.values()]
    assert row["rebuf_s"] == pytest.approx(np.mean(rebuf), rel=1e-12)


def test_simulate_qoe_variant_and_initial_quality(tmp_path: Path) -> None:
    summary = tmp_path / "sum.json"
    args = ["simulate", "-t", "markov:n=3,seed=2", "-p", "fixed:0", "--qoe", "log", "--initial-quality", "0"]
    result = runner.invoke(app, [*args, "--json", str(summary)])
    assert result.exit_code == 0, result.output
    assert "QoE_log" in result.stdout
    doc = json.loads(summary.read_text())
    assert doc["qoe_kind"] == "log"
    # Always the lowest level from the first chunk on: ln(R/R_min) = 0, no switches; only stalls count.
    row = doc["results"][0]
    assert row["switches"] == 0.0
    assert row["bitrate_kbps"] == 300.0
    assert row["qoe"] <= 0.0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-t", "{tmp}/no-such-traces"], "no-such-traces: no such file or folder"),
        (["-p", "nope"], "unknown policy 'nope'"),
        (["-p", "bba:reservoir=3"], "reservoir: Extra inputs are not permitted"),
        (["-p", "fixed:x"], "fixed:N needs an integer level"),
        (["-p", "fixed:9"], "fixed:9: the video has only 6 levels"),
        (["--qoe", "cubic"], "--qoe must be lin, log or hd, got 'cubic'"),
        (["--video", "{tmp}/no-such-video"], "no-such-video: no such folder"),
        (["--initial-quality", "7"], "initial_quality must be in [0, 6), got 7"),
    ],
)
def test_simulate_bad_input_exits_2_without_writing(tmp_path: Path, args: list[str], message: str) -> None:
    log, summary = tmp_path / "out.jsonl", tmp_path / "sum.json"
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "-t" not in argv:
        argv += ["-t", "markov:n=2,seed=0"]
    result = runner.invoke(app, ["simulate", *argv, "--log", str(log), "--json", str(summary)])
    assert result.exit_code == 2, result.output
    assert "error:" in result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert not log.exists()
    assert not summary.exists()
    assert list(tmp_path.iterdir()) == []


def test_simulate_bad_video_folder_names_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "video"
    folder.mkdir()
    for level in range(6):
        (folder / f"video_size_{level}").write_text("100\n200\n")
    (folder / "video_size_3").write_text("100\nabc\n")
    result = runner.invoke(app, ["simulate", "-t", "markov:n=2,seed=0", "--video", str(folder)])
    assert result.exit_code == 2
    assert f"{folder / 'video_size_3'}:2: not an integer byte count" in result.stderr
    assert "Traceback" not in result.output


def test_simulate_with_a_video_folder(tmp_path: Path) -> None:
    folder = tmp_path / "clip"
    folder.mkdir()
    for level in range(6):
        (folder / f"video_size_{level}").write_text("".join(f"{(level + 1) * 10_000}\n" for _ in range(10)))
    summary = tmp_path / "sum.json"
    args = ["simulate", "-t", "markov:n=2,seed=0", "-p", "fixed:5", "--video", str(folder), "--json", str(summary)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    doc = json.loads(summary.read_text())
    assert doc["video"] == "clip"
    # 10 chunks: the first at level 1 (750 kbps), the other 9 at level 5 (4300 kbps).
    assert doc["results"][0]["bitrate_kbps"] == pytest.approx((750 + 9 * 4300) / 10)


def test_bench_sim_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "b.json"
    result = runner.invoke(app, ["bench", "sim", "--seconds", "0.05", "--batch", "4", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "chunk-steps/s" in result.stdout
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "sim"
    assert doc["mode"] == "training"
    assert doc["traces"] == "markov:n=100,seed=0"
    rows = {(r["implementation"], r["batch_sessions"]): r for r in doc["results"]}
    assert set(rows) == {("scalar", 1), ("vector-numpy", 4)}
    for r in rows.values():
        assert r["chunk_steps"] > 0
        assert r["wall_s"] > 0
        assert r["steps_per_s"] == pytest.approx(r["chunk_steps"] / r["wall_s"])


def test_bench_sim_bad_mode_exits_2(tmp_path: Path) -> None:
    out = tmp_path / "b.json"
    result = runner.invoke(app, ["bench", "sim", "--mode", "fast", "--seconds", "0.01", "--out", str(out)])
    assert result.exit_code == 2
    assert "--mode must be training or evaluation, got 'fast'" in result.stderr
    assert not out.exists()


def test_help_texts() -> None:
    result = runner.invoke(app, ["traces", "--help"])
    assert result.exit_code == 0, result.output
    for command in ("describe", "generate", "convert"):
        assert command in result.stdout
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    for command in ("simulate", "traces", "bench"):
        assert command in result.stdout
    result = runner.invoke(app, ["simulate", "--help"])
    assert result.exit_code == 0
    assert "--policy" in result.stdout


@pytest.mark.parametrize("option", ["--log", "--json"])
@pytest.mark.parametrize("where", ["under-a-file", "a-directory"])
def test_simulate_unwritable_output_path_exits_2(tmp_path: Path, option: str, where: str) -> None:
    (tmp_path / "afile").write_text("")
    (tmp_path / "adir").mkdir()
    target = tmp_path / "afile" / "out.json" if where == "under-a-file" else tmp_path / "adir"
    result = runner.invoke(app, ["simulate", "-t", "markov:n=2,seed=0", "-p", "bba", option, str(target)])
    assert result.exit_code == 2, repr(result.exception)
    assert "error:" in result.stderr
    assert "Traceback" not in result.output


def test_bench_out_in_a_missing_folder(tmp_path: Path) -> None:
    out = tmp_path / "new" / "b.json"
    result = runner.invoke(app, ["bench", "sim", "--seconds", "0.01", "--batch", "2", "--out", str(out)])
    if result.exit_code == 0:
        assert json.loads(out.read_text())["benchmark"] == "sim"
    else:
        assert result.exit_code == 2
        assert f"{out}:" in result.stderr or f"'{out}'" in result.stderr
