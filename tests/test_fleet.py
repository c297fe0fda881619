"""Fleet simulation: equivalence with the chunk simulator, fair sharing, conservation, arrivals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import simpy
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from abr_cli.fleet_cmd import parse_arrivals
from abr_cli.main import app
from policy.base import make_policy
from policy.evaluation.fleet import simulate_policy_fleet
from policy.evaluation.loop import run_policy
from simulator.capacity import TraceCapacity
from simulator.fleet import FleetConfig, SharedLink, simulate_fleet, stack_observations
from simulator.observation import ObservationBuilder
from simulator.video import Video
from traces.generate import generate_from_spec
from traces.trace import Trace

VIDEO = Video.builtin()
FIELDS = ("quality", "delay_ms", "sleep_ms", "buffer_s", "rebuf_s")


def constant(mbps: float, seconds: float = 1000.0) -> Trace:
    return Trace("const", np.array([0.0, seconds]), np.array([mbps, mbps]))


@pytest.mark.parametrize("policy", ["bba", "robustmpc", "robustmpc:prior=true", "default"])
def test_one_player_per_link_reproduces_the_chunk_simulator(policy: str) -> None:
    traces = generate_from_spec("markov:n=4,seed=11")
    fleet = simulate_policy_fleet(traces, VIDEO, policy, FleetConfig(n_links=4, players_per_link=1))
    logs = run_policy(make_policy(policy), traces, VIDEO)
    assert len(fleet.players) == 4
    for player in fleet.players:
        for name in FIELDS:
            np.testing.assert_allclose(getattr(player, name), getattr(logs, name)[player.link], rtol=0, atol=1e-6)


def test_two_identical_players_on_a_constant_link_get_half_each() -> None:
    # 8 Mbit/s * 0.95 payload, fixed level 5: both transfers always overlap exactly, so each chunk takes
    # twice as long as alone: bytes / (rate / 2) + RTT.
    fleet = simulate_policy_fleet([constant(8.0)], VIDEO, "fixed:5", FleetConfig(players_per_link=2, initial_quality=5))
    rate_bytes_per_s = 8e6 / 8 * 0.95
    a, b = fleet.players
    for chunk in range(VIDEO.n_chunks):
        expected_ms = VIDEO.chunk_bytes[5, chunk] / (rate_bytes_per_s / 2) * 1000 + 80.0
        assert a.delay_ms[chunk] == pytest.approx(expected_ms, rel=1e-9)
        assert b.delay_ms[chunk] == pytest.approx(expected_ms, rel=1e-9)
    assert fleet.jain_per_link() == [pytest.approx(1.0)]


def test_shared_link_splits_capacity_and_conserves_bytes() -> None:
    env = simpy.Environment()
    link = SharedLink(env, TraceCapacity(constant(8.0), 1.0), "wall")  # 1e6 bytes/s
    done: dict[str, float] = {}

    def flow(name: str, start_s: float, n_bytes: float) -> object:
        yield env.timeout(start_s)
        yield link.transfer(n_bytes)
        done[name] = env.now

    env.process(flow("a", 0.0, 1_000_000))  # alone for 0.5 s (500 kB), then shares: 500 kB at 0.5 MB/s
    env.process(flow("b", 0.5, 250_000))  # 250 kB at 0.5 MB/s: done at 1.0
    env.run()
    assert done["b"] == pytest.approx(1.0)
    assert done["a"] == pytest.approx(1.25)  # 250 kB left at 1.0, alone again at 1 MB/s
    assert link.delivered_bytes == pytest.approx(1_250_000)


@settings(max_examples=25, deadline=None)
@given(players=st.integers(1, 4), rate=st.sampled_from([0.6, 2.0, 9.0]), policy=st.sampled_from(["bba", "rb"]))
def test_a_link_never_delivers_more_than_its_capacity(players: int, rate: float, policy: str) -> None:
    trace = Trace("steps", np.arange(0.0, 60.0, 3.0), np.tile([rate, rate / 3], 10))
    fleet = simulate_policy_fleet([trace], VIDEO, policy, FleetConfig(players_per_link=players, clock="wall"))
    fetched = sum(sum(p.chunk_bytes) for p in fleet.players)
    assert fleet.link_delivered_bytes[0] == pytest.approx(fetched, rel=1e-9)  # every byte fetched crossed it
    assert fleet.link_delivered_bytes[0] <= fleet.link_capacity_bytes[0] * (1 + 1e-9)


def test_arrivals_and_watch_times() -> None:
    config = FleetConfig(n_links=2, players_per_link=0, arrivals_per_s=0.05, watch_s=60.0, duration_s=300.0, seed=4)
    fleet = simulate_policy_fleet([constant(3.0)], VIDEO, "bba", config)
    assert len(fleet.players) > 10  # about 0.05 * 300 * 2 = 30
    assert all(0 <= p.start_s < 300.0 for p in fleet.players)
    assert all(p.end_s >= p.start_s for p in fleet.players)
    assert {p.link for p in fleet.players} == {0, 1}
    assert any(len(p.quality) < VIDEO.n_chunks for p in fleet.players)  # some left early
    summary = fleet.summary()
    assert summary["players"] == len(fleet.players)
    assert 0 < summary["link_utilisation"] <= 1


def test_same_seed_same_fleet() -> None:
    config = FleetConfig(n_links=2, players_per_link=1, arrivals_per_s=0.02, duration_s=200.0, seed=9)
    one = simulate_policy_fleet([constant(2.0)], VIDEO, "rb", config)
    two = simulate_policy_fleet([constant(2.0)], VIDEO, "rb", config)
    assert [p.quality for p in one.players] == [p.quality for p in two.players]
    assert [p.start_s for p in one.players] == [p.start_s for p in two.players]


def test_learned_decisions_at_the_same_instant_share_one_batch() -> None:
    # Identical players on identical links decide at identical instants: one call per instant.
    fleet = simulate_policy_fleet([constant(4.0)], VIDEO, "default", FleetConfig(n_links=3, players_per_link=1))
    assert fleet.decider_calls == VIDEO.n_chunks - 1
    assert fleet.players[0].quality == fleet.players[2].quality


def test_the_fleet_simulator_imports_no_policy() -> None:
    code = "import sys, simulator.fleet; print(sorted(m for m in sys.modules if m.split('.')[0] == 'policy'))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


def test_stack_observations_keeps_every_session() -> None:
    builders = [ObservationBuilder(1, VIDEO) for _ in range(3)]
    obs = stack_observations([b.observation() for b in builders])
    assert obs.n_sessions == 3


def test_bad_fleets_are_refused() -> None:
    with pytest.raises(ValueError, match="no traces"):
        simulate_policy_fleet([], VIDEO, "bba")
    with pytest.raises(ValueError, match="offline"):
        simulate_policy_fleet([constant(1.0)], VIDEO, "optimal")
    with pytest.raises(ValueError, match="n_links"):
        FleetConfig(n_links=0)


def test_parse_arrivals() -> None:
    assert parse_arrivals("none") == 0.0
    assert parse_arrivals("poisson:0.25") == 0.25
    assert parse_arrivals("poisson:2e-2") == 0.02
    for bad in ("poisson:", "poisson:-1", "uniform:3", "3"):
        with pytest.raises(ValueError, match="poisson:RATE"):
            parse_arrivals(bad)


def test_fleet_command_writes_its_outputs(tmp_path: Path) -> None:
    out = tmp_path / "fleet"
    result = CliRunner().invoke(app, ["fleet", "--links", "3", "--players-per-link", "2", "--traces",
                                      "markov:n=3,seed=1", "--policy", "bba", "--out", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["players"] == 6
    assert summary["links"] == 3
    lines = (out / "players.jsonl").read_text().splitlines()
    assert len(lines) == 6
    assert json.loads(lines[0])["chunks"] == VIDEO.n_chunks
    assert (out / "fleet.png").stat().st_size > 0


def test_fleet_command_rejects_bad_input(tmp_path: Path) -> None:
    for args, message in (
        (["--arrivals", "sometimes"], "poisson:RATE"),
        (["--clock", "sundial"], "--clock"),
        (["--policy", "nope"], "unknown policy"),
        (["--traces", str(tmp_path / "missing")], "no such file"),
    ):
        result = CliRunner().invoke(app, ["fleet", "--links", "1", "--out", str(tmp_path / "o"), *args])
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output, (args, result.output)
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_a_fleet_through_a_running_server_plays_exactly_like_in_process(tmp_path: Path) -> None:
    from abr_server.lab.fleet_client import RemoteDecider
    from abr_server.lab.launcher import local_server
    from abr_server.telemetry import read_rows

    traces = generate_from_spec("markov:n=2,seed=5")
    config = FleetConfig(n_links=2, players_per_link=2)
    db = tmp_path / "telemetry.sqlite"
    local = simulate_policy_fleet(traces, VIDEO, "bba", config)
    clients: list[RemoteDecider] = []

    def factory(env: simpy.Environment) -> RemoteDecider:
        clients.append(RemoteDecider(env, url, VIDEO))
        return clients[-1]

    with local_server({"ABR_POLICY": "bba", "ABR_TELEMETRY_DB": str(db)}) as (url, _proc):
        remote = simulate_fleet(traces, VIDEO, factory, config, policy="server")
        clients[0].close()
        stats = clients[0].stats()
    for a, b in zip(local.players, remote.players, strict=True):
        assert a.quality == b.quality
        np.testing.assert_allclose(a.delay_ms, b.delay_ms)
    assert stats["errors"] == 0
    assert stats["policies"] == {"bba": 4 * VIDEO.n_chunks}  # every chunk reported, the last ones too
    rows = read_rows(db)
    assert len(rows) == 4 * VIDEO.n_chunks
    first = sorted((r for r in rows if r["chunk_index"] == 1), key=lambda r: r["session_id"])[0]
    assert first["delay_ms"] == pytest.approx(remote.players[0].delay_ms[1], abs=1e-3)


def test_remote_decider_refuses_a_server_with_another_video() -> None:
    from abr_server.lab.fleet_client import RemoteDecider
    from abr_server.lab.launcher import local_server

    with local_server({"ABR_TELEMETRY_DB": ""}) as (url, _proc):
        other = Video((300, 750, 1200, 1850, 2850, 4300), 4.0, VIDEO.chunk_bytes[:, :10])
        with pytest.raises(ValueError, match=r"serves 48 chunks, the fleet.s video has 10"):
            RemoteDecider(simpy.Environment(), url, other)
    with pytest.raises(ValueError, match="http://host:port"):
        RemoteDecider(simpy.Environment(), "ftp://x", VIDEO)


def test_a_realtime_fleet_has_the_same_outcome() -> None:
    traces = generate_from_spec("markov:n=2,seed=8")
    config = FleetConfig(n_links=2, players_per_link=2)
    plain = simulate_policy_fleet(traces, VIDEO, "bba", config)
    paced = simulate_policy_fleet(traces, VIDEO, "bba", config, realtime_factor=1e-4)  # 10,000x faster than real time
    assert [p.quality for p in paced.players] == [p.quality for p in plain.players]
    np.testing.assert_allclose([p.delay_ms for p in paced.players], [p.delay_ms for p in plain.players])
    with pytest.raises(ValueError, match="realtime_factor"):
        simulate_policy_fleet(traces, VIDEO, "bba", config, realtime_factor=0.0)
