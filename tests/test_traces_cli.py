"""``abr traces`` commands (through typer's CliRunner) and the statistics behind ``describe``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from abr_cli.traces_cmd import app
from traces.generate import MarkovConfig, RegimeConfig, markov, regime
from traces.io import load, save_many
from traces.stats import describe, weighted_quantiles
from traces.trace import Trace

SHARED_TRACES = Path(__file__).resolve().parents[1].parent / "shared" / "traces"

runner = CliRunner()


def _hand_traces() -> list[Trace]:
    # Intervals: 1 Mbit/s for 3 s (trace a), 10 Mbit/s for 1 s (trace b); first samples are unused.
    return [
        Trace(name="a", times_s=np.array([0.0, 3.0]), throughput_mbps=np.array([99.0, 1.0])),
        Trace(name="b", times_s=np.array([5.0, 6.0]), throughput_mbps=np.array([0.0, 10.0])),
    ]


# --------------------------------------------------------------------------------------------------
# Statistics


def test_describe_is_time_weighted() -> None:
    stats = describe(_hand_traces())
    assert stats.count == 2
    assert stats.total_duration_s == 4.0
    assert stats.mean_duration_s == 2.0
    assert stats.mean_throughput_mbps == pytest.approx(13.0 / 4.0)
    assert (stats.p10_throughput_mbps, stats.p50_throughput_mbps, stats.p90_throughput_mbps) == (
        1.0,
        1.0,
        10.0,
    )
    assert (stats.min_throughput_mbps, stats.max_throughput_mbps) == (1.0, 10.0)


def test_weighted_quantiles_equal_weights() -> None:
    values = np.array([4.0, 1.0, 3.0, 2.0])
    got = weighted_quantiles(values, np.ones(4), (0.1, 0.25, 0.5, 0.9, 1.0))
    np.testing.assert_array_equal(got, [1.0, 1.0, 2.0, 4.0, 4.0])


def test_describe_needs_traces() -> None:
    with pytest.raises(ValueError, match="no traces"):
        describe([])


# --------------------------------------------------------------------------------------------------
# describe


def test_describe_json(tmp_path: Path) -> None:
    save_many(_hand_traces(), tmp_path / "set")
    result = runner.invoke(app, ["describe", str(tmp_path / "set"), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["count"] == 2
    assert data["mean_throughput_mbps"] == pytest.approx(3.25)
    assert data["p90_throughput_mbps"] == 10.0


def test_describe_table_and_plot(tmp_path: Path) -> None:
    save_many(_hand_traces(), tmp_path / "set")
    plot = tmp_path / "hist.png"
    result = runner.invoke(app, ["describe", str(tmp_path / "set"), "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    assert "mean throughput (Mbit/s)" in result.stdout
    assert "3.250" in result.stdout
    assert plot.read_bytes().startswith(b"\x89PNG")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hist.png", "set"]


def test_describe_reports_bad_files_without_traceback(tmp_path: Path) -> None:
    (tmp_path / "good").write_text("0 1\n1 2\n")
    (tmp_path / "bad1").write_text("0 1\n1 2\n1 3\n")
    (tmp_path / "bad2").write_text("0 1\n1 zz\n")
    result = runner.invoke(app, ["describe", str(tmp_path)])
    assert result.exit_code == 2
    assert f"{tmp_path / 'bad1'}:3:" in result.stderr
    assert f"{tmp_path / 'bad2'}:2:" in result.stderr
    assert "Traceback" not in result.output


def test_describe_skip_bad_warns(tmp_path: Path) -> None:
    (tmp_path / "good").write_text("0 1\n1 2\n")
    (tmp_path / "bad").write_text("0 1\n1 zz\n")
    result = runner.invoke(app, ["describe", str(tmp_path), "--skip-bad", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["count"] == 1
    assert "warning: skipped" in result.stderr
    assert f"{tmp_path / 'bad'}:2:" in result.stderr


def test_describe_unwritable_plot(tmp_path: Path) -> None:
    save_many(_hand_traces(), tmp_path / "set")
    (tmp_path / "afile").write_text("")
    result = runner.invoke(app, ["describe", str(tmp_path / "set"), "--plot", str(tmp_path / "afile" / "h.png")])
    assert result.exit_code == 2
    assert "afile" in result.stderr
    assert "error:" in result.stderr
    assert "Traceback" not in result.output


def test_describe_missing_path(tmp_path: Path) -> None:
    result = runner.invoke(app, ["describe", str(tmp_path / "absent")])
    assert result.exit_code == 2
    assert "no such file or folder" in result.stderr


# --------------------------------------------------------------------------------------------------
# generate


def test_generate_markov(tmp_path: Path) -> None:
    out = tmp_path / "gen"
    result = runner.invoke(
        app, ["generate", "markov", "--n", "3", "--seed", "1", "--duration-s", "30", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    loaded = load(out)
    expected = markov(MarkovConfig(duration_s=30), 3, 1)
    assert [t.name for t in loaded] == ["markov_0000", "markov_0001", "markov_0002"]
    for got, want in zip(loaded, expected, strict=True):
        assert np.array_equal(got.times_s, want.times_s)
        assert np.array_equal(got.throughput_mbps, want.throughput_mbps)


def test_generate_regime_from_spec_as_json(tmp_path: Path) -> None:
    out = tmp_path / "gen"
    spec = "regime:low_mbps=5,high_mbps=20,n=2,seed=2,duration_s=40"
    result = runner.invoke(app, ["generate", "--spec", spec, "--out", str(out), "--format", "json"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["regime_0000.json", "regime_0001.json"]
    expected = regime(RegimeConfig(low_mbps=5, high_mbps=20, duration_s=40), 2, 2)
    for got, want in zip(load(out), expected, strict=True):
        assert np.array_equal(got.throughput_mbps, want.throughput_mbps)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ([], "give a generator (markov or regime) or --spec"),
        (["--spec", "markov:n=1", "--n", "2"], "do not also give --n"),
        (["markov", "--spec", "markov:n=1"], "do not also give KIND"),
        (["--spec", "markov:colour=red"], "unknown key 'colour'"),
        (["regime", "--low-mbps", "4", "--high-mbps", "2"], "high_mbps (2.0) must be >= low_mbps (4.0)"),
    ],
)
def test_generate_errors(tmp_path: Path, args: list[str], needle: str) -> None:
    result = runner.invoke(app, ["generate", *args, "--out", str(tmp_path / "gen")])
    assert result.exit_code == 2
    assert needle in result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "gen").exists()


# --------------------------------------------------------------------------------------------------
# convert


def test_convert_mahimahi_to_cooked(tmp_path: Path) -> None:
    source = tmp_path / "mm"
    source.mkdir()
    (source / "link").write_text("0\n100\n499\n500\n1200\n")
    result = runner.invoke(
        app,
        [
            "convert",
            str(source),
            "--to",
            "cooked",
            "--out",
            str(tmp_path / "out"),
            "--mahimahi-window-ms",
            "1000",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "link").read_text() == "0.0\t0.048\n1.0\t0.048\n2.0\t0.012\n"


def test_convert_bad_input_exits_2(tmp_path: Path) -> None:
    (tmp_path / "broken.json").write_text('{"times_s": [0, 1]}')
    result = runner.invoke(app, ["convert", str(tmp_path / "broken.json"), "--to", "cooked", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert f"{tmp_path / 'broken.json'}:1: missing throughput key" in result.stderr


# --------------------------------------------------------------------------------------------------
# Real data (skipped where ../shared/traces is absent)


@pytest.mark.shared_traces
def test_describe_real_fcc_test_set() -> None:
    folder = SHARED_TRACES / "fcc-test"
    if not folder.is_dir():
        pytest.skip("../shared/traces not found: real traces are not available here")
    result = runner.invoke(app, ["describe", str(folder), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["count"] == 290
    assert 0.5 < data["mean_throughput_mbps"] < 5.0


def test_fold_suffix_splits_a_source_without_copies(tmp_path: Path) -> None:
    from traces.sources import label, resolve, split_sources
    from traces.trace import TraceError

    every = resolve("markov:n=7,seed=2")
    val = resolve("markov:n=7,seed=2@fold=1/3")
    rest = resolve("markov:n=7,seed=2@except=1/3")
    assert [t.name for t in val] == [every[i].name for i in (1, 4)]
    assert sorted(t.name for t in val + rest) == sorted(t.name for t in every)
    assert label("markov:n=7,seed=2@fold=1/3") == "markov:n=7,seed=2@fold=1/3"
    assert split_sources("markov:n=7,seed=2@except=1/3") == ["markov:n=7,seed=2@except=1/3"]
    save_many(_hand_traces(), tmp_path / "set")
    assert len(resolve(f"{tmp_path / 'set'}@fold=0/2")) == len(resolve(str(tmp_path / "set"))[::2])
    assert label(f"{tmp_path / 'set'}@except=0/2") == "set@except=0/2"
    with pytest.raises(TraceError, match="0 <= K < N"):
        resolve("markov:n=3,seed=1@fold=3/3")
    with pytest.raises(TraceError, match="leaves no trace"):
        resolve("markov:n=1,seed=1@except=0/2")


def test_scale_suffix_multiplies_every_sample_after_the_fold(tmp_path: Path) -> None:
    from traces.sources import label, resolve, split_sources
    from traces.trace import TraceError

    every = resolve("markov:n=4,seed=2@fold=0/2")
    doubled = resolve("markov:n=4,seed=2@fold=0/2@scale=2")
    assert [t.name for t in doubled] == [f"{t.name}@scale=2" for t in every]
    for base, big in zip(every, doubled, strict=True):
        np.testing.assert_array_equal(big.times_s, base.times_s)
        np.testing.assert_array_equal(big.throughput_mbps, base.throughput_mbps * 2.0)
    assert label("markov:n=4,seed=2@fold=0/2@scale=0.5") == "markov:n=4,seed=2@fold=0/2@scale=0.5"
    assert split_sources("markov:n=4,seed=2@scale=8") == ["markov:n=4,seed=2@scale=8"]
    save_many(_hand_traces(), tmp_path / "set")
    assert label(f"{tmp_path / 'set'}@scale=4") == "set@scale=4"
    halved = resolve(f"{tmp_path / 'set'}@scale=0.5")
    assert [t.mean_throughput_mbps() for t in halved] == pytest.approx(
        [t.mean_throughput_mbps() / 2 for t in resolve(str(tmp_path / "set"))]
    )
    for bad in ("0", "-1", "inf", "fast"):
        with pytest.raises(TraceError, match="expected a positive number"):
            resolve(f"markov:n=2,seed=1@scale={bad}")
