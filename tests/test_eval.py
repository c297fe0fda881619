"""``abr eval`` end to end (CliRunner) and the pure report builders of `policy.evaluation.report`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from abr_cli import eval_cmd
from abr_cli.main import app
from policy import available_policies, make_policy
from policy.base import Policy
from policy.evaluation.loop import run_policy, summarize
from policy.evaluation.report import (
    Evaluation,
    PolicyResult,
    RunInfo,
    SessionTimeline,
    details_table_markdown,
    file_stem,
    gap_percent,
    qoe_table_markdown,
    render_markdown,
    terms_table_markdown,
    trace_steps,
)
from simulator.observation import Observation
from simulator.qoe import QoEConfig
from simulator.video import Video
from tests.conftest import shared_traces_path
from traces.sources import resolve
from traces.trace import Trace

runner = CliRunner()

SPEC = "markov:n=6,seed=1"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RESULT_FIELDS = {
    "qoe_lin_utility",
    "qoe_lin_rebuffer",
    "qoe_lin_smoothness",
    "policy",
    "traces",
    "n_traces",
    "qoe_lin",
    "qoe_lin_ci95",
    "qoe_log",
    "qoe_log_ci95",
    "qoe_hd",
    "qoe_hd_ci95",
    "bitrate_kbps",
    "rebuf_s",
    "switches",
    "wall_s",
}


def _is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG_SIGNATURE


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One `abr eval` run shared by the tests that only read its output."""
    out = tmp_path_factory.mktemp("eval") / "report"
    result = runner.invoke(app, ["eval", "-t", SPEC, "-p", "bba", "-p", "fixed:0", "--no-optimal", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, result.stdout


def test_eval_results_json_matches_run_policy(report_dir: tuple[Path, str]) -> None:
    out, _ = report_dir
    doc: dict[str, Any] = json.loads((out / "results.json").read_text())
    assert doc["video"] == "builtin"
    assert doc["qoe_table"] == "lin"
    assert doc["optimal"] is None
    assert "--no-optimal" in doc["optimal_note"]
    assert doc["date"][:2] == "20"
    assert doc["command"] == f"abr eval -p bba -p fixed:0 -t {SPEC} --no-optimal --out {out}"
    assert doc["arguments"]["policy"] == ["bba", "fixed:0"]
    assert doc["arguments"]["traces"] == [SPEC]
    assert "logical cores" in doc["machine"]
    assert doc["timeline"] == {"trace": "markov_0000", "traces": SPEC}

    traces = resolve(SPEC)
    video = Video.builtin()
    assert [r["policy"] for r in doc["results"]] == ["bba", "fixed:0"]
    for row in doc["results"]:
        assert set(row) == RESULT_FIELDS
        assert (row["traces"], row["n_traces"]) == (SPEC, 6)
        per_trace = doc["per_trace"][row["policy"]][SPEC]
        assert list(per_trace) == [t.name for t in traces]
        assert row["qoe_lin"] == pytest.approx(np.mean(list(per_trace.values())), rel=1e-12)

        logs = run_policy(make_policy(row["policy"]), traces, video)
        for kind in ("lin", "log", "hd"):
            direct = summarize(logs, row["policy"], SPEC, 0.0, QoEConfig(kind=kind))
            assert row[f"qoe_{kind}"] == pytest.approx(direct.qoe, rel=1e-12)
            assert row[f"qoe_{kind}_ci95"] == pytest.approx(direct.qoe_ci95, rel=1e-12)
        assert row["bitrate_kbps"] == pytest.approx(direct.bitrate_kbps, rel=1e-12)
        assert row["rebuf_s"] == pytest.approx(direct.rebuf_s, rel=1e-12)
        assert row["switches"] == pytest.approx(direct.switches, rel=1e-12)
        terms = row["qoe_lin_utility"] - row["qoe_lin_rebuffer"] - row["qoe_lin_smoothness"]
        assert terms == pytest.approx(row["qoe_lin"], rel=1e-9)
        assert row["wall_s"] >= 0
        assert list(per_trace.values()) == pytest.approx(logs.scores().tolist(), rel=1e-12)

    fixed = doc["results"][1]
    assert fixed["bitrate_kbps"] == pytest.approx((750 + 47 * 300) / 48)  # first chunk at initial_quality 1
    assert fixed["switches"] == 1.0


def test_eval_report_md_table_and_plots(report_dir: tuple[Path, str]) -> None:
    out, stdout = report_dir
    doc = json.loads((out / "results.json").read_text())
    best = max(doc["results"], key=lambda r: r["qoe_lin"])
    worst = min(doc["results"], key=lambda r: r["qoe_lin"])
    report = (out / "report.md").read_text()

    assert f"| policy | {SPEC} (n=6): QoE_lin ± 95% |" in report
    assert f"| {best['policy']} | **{best['qoe_lin']:.3f} ± {best['qoe_lin_ci95']:.3f}** |" in report
    assert f"| {worst['policy']} | {worst['qoe_lin']:.3f} ± {worst['qoe_lin_ci95']:.3f} |" in report
    assert "gap to optimal" not in report
    assert "--no-optimal" in report  # the report says why there is no upper bound
    assert "| trace set | policy | n | bitrate (kbps) | rebuffering (s/session) | switches/session |" in report

    cdf, timeline = out / "cdf_markov_n_6_seed_1.png", out / "timeline_markov_0000.png"
    assert _is_png(cdf)
    assert _is_png(timeline)
    assert "(cdf_markov_n_6_seed_1.png)" in report  # relative links
    assert "(timeline_markov_0000.png)" in report
    assert sorted(p.name for p in out.iterdir()) == sorted([*doc["files"]])  # no temporary files left

    assert "QoE_lin per chunk" in stdout
    assert f"report: {out / 'report.md'}" in stdout


def test_eval_named_timeline_trace_and_two_trace_sets(tmp_path: Path) -> None:
    out = tmp_path / "r"
    args = ["eval", "-t", "markov:n=3,seed=1", "-t", "markov:n=4,seed=2", "-p", "bba", "--no-optimal"]
    result = runner.invoke(app, [*args, "--timeline-trace", "markov_0003", "--qoe-table", "log", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "QoE_log" in result.stdout
    doc = json.loads((out / "results.json").read_text())
    assert doc["timeline"] == {"trace": "markov_0003", "traces": "markov:n=4,seed=2"}  # only the 2nd set has it
    assert [(r["traces"], r["n_traces"]) for r in doc["results"]] == [
        ("markov:n=3,seed=1", 3),
        ("markov:n=4,seed=2", 4),
    ]
    assert set(doc["per_trace"]["bba"]) == {"markov:n=3,seed=1", "markov:n=4,seed=2"}
    assert _is_png(out / "timeline_markov_0003.png")
    assert not (out / "timeline_markov_0000.png").exists()
    assert _is_png(out / "cdf_markov_n_3_seed_1.png")
    assert _is_png(out / "cdf_markov_n_4_seed_2.png")
    report = (out / "report.md").read_text()
    assert "QoE_log ± 95%" in report
    assert f"**{doc['results'][0]['qoe_log']:.3f}" in report  # a lone policy is the best of its set


def test_eval_adds_the_optimal_upper_bound(tmp_path: Path) -> None:
    if "optimal" not in available_policies():
        pytest.skip("no 'optimal' policy registered yet")
    out = tmp_path / "r"
    result = runner.invoke(app, ["eval", "-t", "markov:n=3,seed=1", "-p", "fixed:0", "--out", str(out)])
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "results.json").read_text())
    assert [r["policy"] for r in doc["results"]] == ["fixed:0", "optimal"]
    assert doc["optimal"] == "optimal"
    fixed, optimal = (doc["per_trace"][p]["markov:n=3,seed=1"] for p in ("fixed:0", "optimal"))
    assert all(optimal[t] >= fixed[t] - 1e-9 for t in fixed)
    gap = gap_percent(doc["results"][0]["qoe_lin"], doc["results"][1]["qoe_lin"])
    assert gap is not None
    assert f"| {gap:.1f}% |" in (out / "report.md").read_text()


@pytest.mark.shared_traces
def test_eval_real_traces_folder_label(tmp_path: Path) -> None:
    folder = shared_traces_path("norway-test")
    out = tmp_path / "r"
    result = runner.invoke(app, ["eval", "-t", str(folder), "-p", "fixed:0", "--no-optimal", "--out", str(out)])
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "results.json").read_text())
    assert doc["results"][0]["traces"] == "norway-test"
    assert _is_png(out / "cdf_norway-test.png")


# --------------------------------------------------------------------------------------------------
# Bad input: exit 2, a clear message, nothing simulated, nothing written


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-p", "nope"], "unknown policy 'nope'"),
        (["--out", "{file}"], "is a file, expected a folder"),
        (["--out", "{file}/sub"], "is a file, not a folder"),
        (["--timeline-trace", "nope"], "--timeline-trace 'nope': no trace of that name in markov:n=2,seed=0"),
        (["--qoe-table", "cubic"], "--qoe-table must be lin, log or hd, got 'cubic'"),
        (["--initial-quality", "7"], "initial_quality must be in [0, 6), got 7"),
        (["-p", "bba", "-p", "bba"], "policy 'bba' is given twice"),
        (["--batch-sessions", "0"], "--batch-sessions must be >= 1"),
        (["-t", "{tmp}/no-such-traces"], "no-such-traces: no such file or folder"),
        (["--video", "{tmp}/no-such-video"], "no-such-video: no such folder"),
        (["--prior-noise-sigma", "-1"], "--prior-noise-sigma must be a finite number >= 0, got -1.0"),
        (["--prior-missing-fraction", "1.5"], "--prior-missing-fraction must be in [0, 1], got 1.5"),
    ],
)
def test_eval_bad_input_exits_2_before_simulating(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(eval_cmd, "run_policy", lambda policy, *a, **k: calls.append(policy.label))
    existing = tmp_path / "a-file"
    existing.write_text("keep me")
    argv = [a.replace("{file}", str(existing)).replace("{tmp}", str(tmp_path)) for a in args]
    if "-t" not in argv:
        argv += ["-t", "markov:n=2,seed=0"]
    if "-p" not in argv:
        argv += ["-p", "bba"]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    result = runner.invoke(app, ["eval", *argv, "--no-optimal"])
    assert result.exit_code == 2, result.output
    assert "error:" in result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert calls == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]
    assert existing.read_text() == "keep me"


def test_eval_policy_failure_leaves_the_folder_untouched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.md").write_text("old report")
    real_run = eval_cmd.run_policy

    def failing(policy: Policy, *args: Any, **kwargs: Any) -> Any:
        if policy.label == "fixed:0":
            raise ValueError("policy 'fixed:0' broke")
        return real_run(policy, *args, **kwargs)

    monkeypatch.setattr(eval_cmd, "run_policy", failing)
    result = runner.invoke(app, ["eval", "-t", "markov:n=2,seed=0", "-p", "bba", "-p", "fixed:0", "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "policy 'fixed:0' broke" in result.stderr
    assert [p.name for p in out.iterdir()] == ["report.md"]
    assert (out / "report.md").read_text() == "old report"


class _FakeOptimal(Policy):
    """Stands in for the registry's `optimal` (which may not exist yet)."""

    name = "optimal"

    def select(self, obs: Observation) -> Any:
        return np.zeros(obs.n_sessions, dtype=np.int64)


def test_default_policies_are_the_registered_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(eval_cmd, "available_policies", lambda: ["bba", "fixed"])
    policies, optimal, note = eval_cmd._policies(None, no_optimal=False)
    assert [p.label for p in policies] == ["bba"]
    assert optimal is None
    assert note is not None
    assert "No `optimal` policy is registered" in note

    monkeypatch.setattr(eval_cmd, "available_policies", lambda: ["bba", "fixed", "optimal"])
    monkeypatch.setattr(
        eval_cmd, "make_policy", lambda spec: _FakeOptimal() if spec == "optimal" else make_policy(spec)
    )
    policies, optimal, note = eval_cmd._policies(["fixed:0"], no_optimal=False)
    assert [p.label for p in policies] == ["fixed:0", "optimal"]
    assert (optimal, note) == ("optimal", None)
    policies, optimal, note = eval_cmd._policies(["fixed:0"], no_optimal=True)
    assert [p.label for p in policies] == ["fixed:0"]
    assert optimal is None
    assert note is not None
    assert "--no-optimal" in note


def test_importing_the_cli_does_not_import_matplotlib() -> None:
    code = "import sys, abr_cli.main, policy.evaluation.report; print('matplotlib' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


# --------------------------------------------------------------------------------------------------
# Pure builders with hand-made numbers


def _result(policy: str, traces: str, qoe: float, ci: float | None = 0.1, hd: float | None = None) -> PolicyResult:
    return PolicyResult(
        policy=policy,
        traces=traces,
        n_traces=10,
        qoe_lin=qoe,
        qoe_lin_ci95=ci,
        qoe_log=qoe / 2,
        qoe_log_ci95=ci,
        qoe_hd=hd,
        qoe_hd_ci95=None if hd is None else ci,
        bitrate_kbps=1234.4,
        rebuf_s=2.345,
        switches=3.25,
        wall_s=0.5,
    )


HAND_MADE = [
    _result("bba", "A", 0.8),
    _result("rb", "A", 0.9),
    _result("optimal", "A", 1.0),
    _result("bba", "B", 1.5),
    _result("rb", "B", 1.0),
    _result("optimal", "B", 2.0),
]


def test_qoe_table_bold_best_and_gap_to_optimal() -> None:
    table = qoe_table_markdown(HAND_MADE, kind="lin", optimal="optimal").splitlines()
    assert table[0] == (
        "| policy | A (n=10): QoE_lin ± 95% | A: gap to optimal | B (n=10): QoE_lin ± 95% | B: gap to optimal |"
    )
    assert table[1] == "|:---|---:|---:|---:|---:|"
    # gap = (optimal - x) / |optimal| * 100: A: (1.0 - 0.8) / 1.0 = 20%, B: (2.0 - 1.5) / 2.0 = 25%
    assert table[2] == "| bba | 0.800 ± 0.100 | 20.0% | **1.500 ± 0.100** | 25.0% |"
    assert table[3] == "| rb | **0.900 ± 0.100** | 10.0% | 1.000 ± 0.100 | 50.0% |"
    # The upper bound comes last and is not ranked (it would always win).
    assert table[4] == "| optimal *(offline upper bound)* | 1.000 ± 0.100 | – | 2.000 ± 0.100 | – |"
    assert len(table) == 5


def test_qoe_table_without_optimal_ties_and_missing_values() -> None:
    rows = [_result("bba", "A", 0.5, ci=None), _result("fixed:0", "A", 0.5), _result("rb", "A", 0.25)]
    table = qoe_table_markdown(rows, kind="lin", optimal="optimal")
    assert "gap" not in table
    assert "| bba | **0.500** |" in table  # no interval with one trace; ties are all bold
    assert "| fixed:0 | **0.500 ± 0.100** |" in table
    assert "| rb | 0.250 ± 0.100 |" in table
    hd = qoe_table_markdown(rows, kind="hd", optimal=None)
    assert "| bba | n/a |" in hd
    assert "**" not in hd


def test_gap_percent_by_hand() -> None:
    assert gap_percent(0.8, 1.0) == pytest.approx(20.0)
    assert gap_percent(-1.5, -1.0) == pytest.approx(50.0)  # |optimal| keeps the sign meaning "below"
    assert gap_percent(1.0, 1.0) == 0.0
    assert gap_percent(0.3, 0.0) is None


def test_details_table_and_render_markdown() -> None:
    details = details_table_markdown(HAND_MADE)
    assert "| A | bba | 10 | 1234 | 2.35 | 3.2 | 0.50 |" in details
    evaluation = Evaluation(video="builtin", ladder_kbps=(300, 750), results=HAND_MADE[:2])
    evaluation.optimal_note = "No `optimal` policy is registered, so there is no upper bound to compare with."
    info = RunInfo(date="2026-01-01T00:00:00+00:00", command="abr eval --out x", arguments={}, machine="test box")
    text = render_markdown(evaluation, info)
    assert text.startswith("# ABR evaluation: video builtin\n")
    assert evaluation.optimal_note in text
    assert "QoE_hd is not reported" in text  # two levels, not six
    assert "```\nabr eval --out x\n```" in text


def test_trace_steps_wrap_to_the_second_sample() -> None:
    trace = Trace(name="t", times_s=np.array([1.0, 2.0, 4.0]), throughput_mbps=np.array([9.0, 1.0, 3.0]))
    edges, values, wraps = trace_steps(trace, until_s=10.0)
    # First pass from the first sample; then every pass runs from clock 0 to 2 s at 1 Mbit/s, 2..4 s at 3.
    assert edges.tolist() == [0.0, 1.0, 3.0, 5.0, 7.0, 9.0, 11.0]
    assert values.tolist() == [1.0, 3.0, 1.0, 3.0, 1.0, 3.0]
    assert wraps == [3.0, 7.0]


def test_session_timeline_times_buffer_and_stalls() -> None:
    traces = resolve("markov:n=2,seed=3")
    logs = run_policy(make_policy("fixed:3"), traces, Video.builtin())
    timeline = SessionTimeline.from_logs(logs, 1, "fixed:3")
    spent = (logs.delay_ms[1] + logs.sleep_ms[1]) / 1000.0
    assert timeline.start_s[0] == 0.0
    assert timeline.start_s[1:] == pytest.approx(np.cumsum(spent)[:-1])
    assert timeline.end_s == pytest.approx(spent.sum())
    t_s, b_s = timeline.buffer_curve()
    assert np.all(np.diff(t_s) >= 0)
    assert b_s.min() >= 0
    assert b_s[-1] == pytest.approx(logs.buffer_s[1, -1])
    assert sum(hi - lo for lo, hi in timeline.stalls_s()) == pytest.approx(logs.rebuf_s[1].sum())
    expected = logs.chunk_bytes[1] * 8 / logs.delay_ms[1] / 1000
    assert timeline.measured_mbps == pytest.approx(expected)


def test_file_stem() -> None:
    assert file_stem("markov:n=6,seed=1") == "markov_n_6_seed_1"
    assert file_stem("fcc-test") == "fcc-test"
    assert file_stem("::") == "unnamed"


def test_terms_table_signs_differences_so_that_positive_is_better() -> None:
    from dataclasses import replace

    ref = replace(_result("robustmpc", "A", 1.0), qoe_lin_utility=2.0, qoe_lin_rebuffer=0.6, qoe_lin_smoothness=0.4)
    ours = replace(_result("default", "A", 1.05), qoe_lin_utility=1.8, qoe_lin_rebuffer=0.3, qoe_lin_smoothness=0.45)
    alone = replace(_result("bba", "B", 0.5), qoe_lin_utility=1.0, qoe_lin_rebuffer=0.2, qoe_lin_smoothness=0.3)
    table = terms_table_markdown([ref, ours, alone])
    rows = {line.split(" | ")[0].strip("| ") + "/" + line.split(" | ")[1]: line for line in table.splitlines()[2:]}
    assert rows["A/default"].endswith("| -0.200 | +0.300 | -0.050 |")  # less bitrate, fewer stalls, bumpier
    assert rows["A/robustmpc"].endswith("|  |  |  |")
    assert rows["B/bba"].endswith("|  |  |  |")  # no robustMPC on B
    assert "| 1.050 | 1.800 | 0.300 | 0.450 |" in rows["A/default"]


def test_suites_name_their_sources_under_the_trace_root(tmp_path: Path) -> None:
    from policy.evaluation.suites import BANDWIDTH_SCALES, REAL_TEST_SETS, suite

    generalisation = suite("generalisation")
    with pytest.raises(ValueError, match="has no fcc-test, norway-test, puffer-2110-test"):
        generalisation.sources(tmp_path)
    for name in REAL_TEST_SETS:
        (tmp_path / name).mkdir()
    sources = generalisation.sources(tmp_path)
    assert sources[:3] == [str(tmp_path / name) for name in REAL_TEST_SETS]
    assert [s.rsplit("@scale=", 1)[1] for s in sources[3:]] == [f"{k:g}" for k in BANDWIDTH_SCALES]
    assert [len(resolve(s)) for s in sources[3:4]] == [60]
    with pytest.raises(ValueError, match="--suite must be one of generalisation"):
        suite("nope")


def test_eval_suite_runs_its_sets_and_policies_and_reports_the_terms(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from policy.evaluation import suites

    tiny = suites.Suite("tiny", "two scales", (), ("markov:n=3,seed=5@scale=1", "markov:n=3,seed=5@scale=4"),
                        ("bba", "robustmpc"))  # fmt: skip
    monkeypatch.setitem(suites.SUITES, "tiny", tiny)
    result = runner.invoke(app, ["eval", "--suite", "tiny", "--no-optimal", "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "r" / "results.json").read_text())
    assert {(r["policy"], r["traces"]) for r in doc["results"]} == {
        (p, t) for p in ("bba", "robustmpc") for t in ("markov:n=3,seed=5@scale=1", "markov:n=3,seed=5@scale=4")
    }
    for r in doc["results"]:
        assert r["qoe_lin_utility"] - r["qoe_lin_rebuffer"] - r["qoe_lin_smoothness"] == pytest.approx(r["qoe_lin"])
    fast = {r["policy"]: r for r in doc["results"] if r["traces"].endswith("@scale=4")}
    slow = {r["policy"]: r for r in doc["results"] if r["traces"].endswith("@scale=1")}
    assert fast["robustmpc"]["bitrate_kbps"] > slow["robustmpc"]["bitrate_kbps"]  # more bandwidth, more bitrate
    assert "## Where QoE_lin is won or lost" in (tmp_path / "r" / "report.md").read_text()
    both = runner.invoke(app, ["eval", "--suite", "tiny", "-t", "markov:n=2,seed=1", "--out", str(tmp_path / "x")])
    assert both.exit_code == 2
    assert "--suite and --traces" in both.stderr
