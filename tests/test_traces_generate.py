"""Synthetic trace generators: determinism, validity, the models' shape, and spec parsing."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from traces.generate import (
    DEFAULT_N_TRACES,
    MarkovConfig,
    RegimeConfig,
    SpecError,
    build_spec,
    generate_from_spec,
    markov,
    markov_trace,
    parse_spec,
    regime,
    regime_trace,
    to_spec,
)
from traces.trace import Trace, TraceError


def _arrays_equal(a: list[Trace], b: list[Trace]) -> bool:
    return len(a) == len(b) and all(
        np.array_equal(x.times_s, y.times_s) and np.array_equal(x.throughput_mbps, y.throughput_mbps)
        for x, y in zip(a, b, strict=True)
    )


def _make(kind: str, n_traces: int, seed: int) -> list[Trace]:
    if kind == "markov":
        return markov(MarkovConfig(), n_traces, seed)
    return regime(RegimeConfig(), n_traces, seed)


@pytest.mark.parametrize("kind", ["markov", "regime"])
def test_same_seed_same_traces(kind: str) -> None:
    first = _make(kind, 4, 11)
    assert first == _make(kind, 4, 11)
    assert not _arrays_equal(first, _make(kind, 4, 12))
    # Trace i has its own spawned stream: it does not depend on how many traces are made.
    assert _arrays_equal(first[:2], _make(kind, 2, 11))
    assert [t.name for t in first] == [f"{kind}_{i:04d}" for i in range(4)]


def test_trace_functions_draw_only_from_the_given_generator() -> None:
    one = markov_trace(MarkovConfig(), np.random.default_rng(5), name="a")
    two = markov_trace(MarkovConfig(), np.random.default_rng(5), name="a")
    assert one == two
    three = regime_trace(RegimeConfig(), np.random.default_rng(5), name="b")
    assert three == regime_trace(RegimeConfig(), np.random.default_rng(5), name="b")


@settings(max_examples=40, deadline=None)
@given(
    duration_s=st.floats(min_value=0.5, max_value=400),
    step_s=st.floats(min_value=0.1, max_value=5),
    low_mbps=st.floats(min_value=0.05, max_value=10),
    ratio=st.floats(min_value=1, max_value=50),
    n_states=st.integers(min_value=1, max_value=12),
    switch_prob=st.floats(min_value=0, max_value=1),
    noise_frac=st.floats(min_value=0, max_value=2),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_markov_traces_are_valid(
    duration_s: float,
    step_s: float,
    low_mbps: float,
    ratio: float,
    n_states: int,
    switch_prob: float,
    noise_frac: float,
    seed: int,
) -> None:
    config = MarkovConfig(
        duration_s=duration_s,
        step_s=step_s,
        low_mbps=low_mbps,
        high_mbps=low_mbps * ratio,
        n_states=n_states,
        switch_prob=switch_prob,
        noise_frac=noise_frac,
    )
    (trace,) = markov(config, 1, seed)
    assert trace.times_s[0] == 0.0
    assert trace.times_s[-1] >= duration_s - 1e-6
    assert trace.times_s[-1] < duration_s + step_s
    np.testing.assert_allclose(np.diff(trace.times_s), step_s)
    assert np.all(trace.throughput_mbps >= config.floor_mbps)


@settings(max_examples=40, deadline=None)
@given(
    low_mbps=st.floats(min_value=0.05, max_value=10),
    ratio=st.floats(min_value=1, max_value=50),
    change_interval_s=st.floats(min_value=0.01, max_value=1000),
    variability=st.floats(min_value=0, max_value=3),
    correlation=st.floats(min_value=0, max_value=0.99),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_regime_traces_are_valid(
    low_mbps: float, ratio: float, change_interval_s: float, variability: float, correlation: float, seed: int
) -> None:
    config = RegimeConfig(
        duration_s=60,
        low_mbps=low_mbps,
        high_mbps=low_mbps * ratio,
        change_interval_s=change_interval_s,
        variability=variability,
        correlation=correlation,
    )
    (trace,) = regime(config, 1, seed)
    assert len(trace) == 61
    assert np.all(trace.throughput_mbps >= config.floor_mbps)


def test_time_grid_rounding() -> None:
    assert MarkovConfig(duration_s=0.3, step_s=0.1).n_steps == 3
    np.testing.assert_array_equal(MarkovConfig(duration_s=10, step_s=3).times_s(), [0, 3, 6, 9, 12])


def test_markov_without_noise_stays_on_state_means() -> None:
    config = MarkovConfig(noise_frac=0.0, n_states=5, low_mbps=0.5, high_mbps=8.0, switch_prob=0.3)
    means = config.state_means_mbps()
    np.testing.assert_allclose(means, [0.5, 1.0, 2.0, 4.0, 8.0])
    for trace in markov(config, 5, 3):
        assert np.all(np.isin(trace.throughput_mbps, means))


def test_markov_never_switches_to_the_same_state() -> None:
    config = MarkovConfig(noise_frac=0.0, n_states=4, switch_prob=1.0)
    for trace in markov(config, 5, 8):
        assert np.all(np.diff(trace.throughput_mbps) != 0)


def test_markov_switches_prefer_neighbouring_states() -> None:
    config = MarkovConfig(noise_frac=0.0, n_states=8, switch_prob=0.5, neighbour_decay=0.05)
    means = config.state_means_mbps()
    jumps = []
    for trace in markov(config, 20, 1):
        states = np.searchsorted(means, trace.throughput_mbps)
        steps = np.abs(np.diff(states))
        jumps.extend(steps[steps > 0].tolist())
    assert len(jumps) > 500
    assert np.mean(np.array(jumps) == 1) > 0.85


def test_markov_without_switching_is_one_state() -> None:
    config = MarkovConfig(noise_frac=0.0, switch_prob=0.0)
    for trace in markov(config, 5, 2):
        assert np.unique(trace.throughput_mbps).size == 1


@pytest.mark.parametrize(("low_mbps", "high_mbps"), [(0.2, 3.0), (5.0, 20.0)])
def test_regime_family_means_lie_in_range(low_mbps: float, high_mbps: float) -> None:
    config = RegimeConfig(low_mbps=low_mbps, high_mbps=high_mbps)
    means = np.array([t.mean_throughput_mbps() for t in regime(config, 100, 4)])
    # Each regime's mean is in [low, high] and the noise has mean 1, so trace means stay in range up to
    # the noise averaged over ~320 s (a loose margin keeps this a property, not a snapshot).
    assert np.all(means > 0.8 * low_mbps)
    assert np.all(means < 1.2 * high_mbps)
    assert low_mbps < np.mean(means) < high_mbps


def test_regime_without_variability_stays_in_range() -> None:
    config = RegimeConfig(low_mbps=1.0, high_mbps=4.0, variability=0.0, change_interval_s=5.0)
    for trace in regime(config, 10, 6):
        assert np.all((trace.throughput_mbps >= 1.0) & (trace.throughput_mbps <= 4.0 + 1e-12))
        assert np.unique(trace.throughput_mbps).size > 1  # regimes do change


def test_configs_validate_and_are_frozen() -> None:
    with pytest.raises(ValidationError, match="high_mbps"):
        RegimeConfig(low_mbps=5, high_mbps=1)
    with pytest.raises(ValidationError):
        MarkovConfig(switch_prob=1.5)
    with pytest.raises(ValidationError):
        MarkovConfig(unknown=1)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        MarkovConfig(duration_s=float("nan"))
    config = MarkovConfig()
    with pytest.raises(ValidationError):
        config.n_states = 3


@pytest.mark.parametrize("config_type", [MarkovConfig, RegimeConfig])
def test_every_config_field_is_documented(config_type: type[MarkovConfig] | type[RegimeConfig]) -> None:
    for name, field in config_type.model_fields.items():
        assert field.description, name


def test_invalid_counts() -> None:
    with pytest.raises(ValueError, match="n_traces"):
        markov(MarkovConfig(), -1, 0)
    with pytest.raises(ValueError, match="seed"):
        markov(MarkovConfig(), 1, -1)
    assert markov(MarkovConfig(), 0, 0) == []


# --------------------------------------------------------------------------------------------------
# Specs


def test_parse_spec_markov() -> None:
    spec = parse_spec(" markov:n=3, seed=1, duration_s=20 ")
    assert spec.kind == "markov"
    assert spec.n_traces == 3
    assert spec.seed == 1
    assert spec.config == MarkovConfig(duration_s=20)
    made = spec.generate()
    assert [t.name for t in made] == ["markov_0000", "markov_0001", "markov_0002"]
    assert {t.source for t in made} == {"markov:n=3, seed=1, duration_s=20"}
    assert _arrays_equal(made, markov(MarkovConfig(duration_s=20), 3, 1))


def test_generate_from_spec_regime() -> None:
    made = generate_from_spec("regime:low_mbps=5,high_mbps=20,n=4,seed=2")
    assert [t.name for t in made] == [f"regime_{i:04d}" for i in range(4)]
    assert _arrays_equal(made, regime(RegimeConfig(low_mbps=5, high_mbps=20), 4, 2))


def test_spec_defaults() -> None:
    spec = parse_spec("regime")
    assert (spec.n_traces, spec.seed, spec.config) == (DEFAULT_N_TRACES, 0, RegimeConfig())


def test_to_spec_round_trips() -> None:
    config = RegimeConfig(low_mbps=0.3, high_mbps=2.5, variability=0.1)
    text = to_spec("regime", config, 7, 9)
    spec = parse_spec(text)
    assert (spec.kind, spec.config, spec.n_traces, spec.seed) == ("regime", config, 7, 9)
    # Traces made by the function record the full spec, so they can be remade from their source.
    made = regime(config, 2, 9)
    assert _arrays_equal(generate_from_spec(made[0].source)[:2], made)


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("markov:foo=1", "unknown key 'foo' for markov"),
        ("markov:n=x", "n='x' must be a non-negative integer"),
        ("markov:n=-2", "n='-2' must be a non-negative integer"),
        ("regime:seed=1.5", "seed='1.5'"),
        ("markov:duration_s=abc", "duration_s='abc': Input should be a valid number"),
        ("markov:switch_prob=2", "switch_prob='2'"),
        ("markov:n_states=2.5", "n_states='2.5'"),
        ("regime:low_mbps=5,high_mbps=1", "high_mbps (1.0) must be >= low_mbps (5.0)"),
        ("foo:n=1", "unknown generator 'foo'"),
        ("markov:n=1,n=2", "key 'n' is given twice"),
        ("markov:n", "expected key=value, got 'n'"),
        ("markov:n=1,,seed=2", "expected key=value"),
        ("markov:step_s=-1", "step_s='-1': Input should be greater than 0"),
    ],
)
def test_bad_specs_name_the_key(spec: str, needle: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(spec)
    assert isinstance(caught.value, TraceError)
    assert needle in str(caught.value)
    assert str(caught.value).startswith(f"spec {spec!r}")


def test_build_spec_from_options() -> None:
    spec = build_spec("markov", {"n": 2, "seed": 4, "low_mbps": 1.0, "high_mbps": 3.0})
    assert spec.config == MarkovConfig(low_mbps=1.0, high_mbps=3.0)
    assert parse_spec(spec.text).config == spec.config
    with pytest.raises(SpecError, match="markov settings: low_mbps=-1"):
        build_spec("markov", {"low_mbps": -1})
