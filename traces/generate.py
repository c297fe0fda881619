"""Seeded synthetic throughput traces.

Two generators, each a frozen pydantic config plus a function:

* `markov` - Pensieve-style: a Markov chain over throughput states (log-spaced means); at each step the
  chain keeps its state or, with probability ``switch_prob``, jumps to another state, preferring near
  neighbours; each sample is the state's mean plus Gaussian noise.
* `regime` - piecewise regimes: a mean drawn log-uniformly in ``[low_mbps, high_mbps]`` holds for an
  exponentially distributed time, modulated by mean-one lognormal AR(1) noise. Choosing the range makes
  trace families such as "3G-like" (0.2-3 Mbit/s) or "high" (5-20 Mbit/s).

Randomness: ``markov_trace``/``regime_trace`` draw only from the `numpy.random.Generator` they are given;
``markov``/``regime`` take a seed and give trace ``i`` its own generator spawned from
``SeedSequence(seed)``, so the same seed gives the same traces and trace ``i`` does not depend on how
many traces are made.

Specs: ``"markov:n=100,seed=1,duration_s=320"`` or ``"regime:low_mbps=5,high_mbps=20,n=50,seed=2"``
(`parse_spec`, `generate_from_spec`); ``n`` and ``seed`` default to `DEFAULT_N_TRACES` and 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, Self, TypeAlias

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from traces.trace import FloatArray, Trace, TraceError

DEFAULT_N_TRACES = 10
"""Number of traces a spec or the CLI makes when ``n`` is not given."""

_MAX_SAMPLES = 10_000_000  # per trace; a guard against typos such as step_s=1e-9


class SpecError(TraceError):
    """A generator spec (or generator settings) is malformed; the message names the offending key."""


class _GeneratorConfig(BaseModel):
    """Settings shared by the generators: the time grid and the throughput floor."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False, use_attribute_docstrings=True)

    duration_s: float = Field(default=320.0, gt=0)
    """Trace length; the last sample is at the first multiple of ``step_s`` at or after this time."""

    step_s: float = Field(default=1.0, gt=0)
    """Time between samples."""

    low_mbps: float = Field(default=0.2, gt=0)
    """Lowest mean throughput."""

    high_mbps: float = Field(default=6.0, gt=0)
    """Highest mean throughput."""

    floor_mbps: float = Field(default=0.05, gt=0)
    """Samples are clipped from below to this throughput, so no interval is ever dead."""

    @model_validator(mode="after")
    def _check_ranges(self) -> Self:
        if self.high_mbps < self.low_mbps:
            raise ValueError(f"high_mbps ({self.high_mbps}) must be >= low_mbps ({self.low_mbps})")
        if self.duration_s / self.step_s > _MAX_SAMPLES:
            raise ValueError(f"duration_s / step_s must be at most {_MAX_SAMPLES} samples per trace")
        return self

    @property
    def n_steps(self) -> int:
        """Number of intervals per trace (the trace has one more sample, at time 0)."""
        # The small tolerance keeps e.g. 0.3 / 0.1 = 2.9999999999999996 from becoming 4 steps.
        return max(1, math.ceil(self.duration_s / self.step_s - 1e-9))

    def times_s(self) -> FloatArray:
        """Sample times ``0, step_s, 2*step_s, ...`` covering ``duration_s``."""
        return np.arange(self.n_steps + 1, dtype=np.float64) * self.step_s


class MarkovConfig(_GeneratorConfig):
    """Pensieve-style Markov-chain generator settings (`markov`)."""

    n_states: int = Field(default=8, ge=1, le=10_000)
    """Number of throughput states, with means log-spaced from ``low_mbps`` to ``high_mbps``."""

    switch_prob: float = Field(default=0.05, ge=0, le=1)
    """Probability, per step, of leaving the current state."""

    neighbour_decay: float = Field(default=0.5, gt=0, le=1)
    """On a switch, state ``j`` is chosen with weight ``neighbour_decay ** (|j - i| - 1)`` (1 = uniform)."""

    noise_frac: float = Field(default=0.1, ge=0)
    """Standard deviation of the Gaussian noise around a state's mean, as a fraction of that mean."""

    def state_means_mbps(self) -> FloatArray:
        """The states' mean throughputs, log-spaced from ``low_mbps`` to ``high_mbps``."""
        return np.geomspace(self.low_mbps, self.high_mbps, self.n_states)


class RegimeConfig(_GeneratorConfig):
    """Regime-switching generator settings (`regime`)."""

    low_mbps: float = Field(default=0.5, gt=0)
    """Lowest regime mean; regime means are log-uniform in ``[low_mbps, high_mbps]``."""

    high_mbps: float = Field(default=6.0, gt=0)
    """Highest regime mean."""

    change_interval_s: float = Field(default=30.0, gt=0)
    """Mean regime length; lengths are exponentially distributed."""

    variability: float = Field(default=0.3, ge=0)
    """Coefficient of variation of the throughput within a regime (mean-one lognormal noise)."""

    correlation: float = Field(default=0.8, ge=0, lt=1)
    """AR(1) coefficient of the log-noise from one step to the next (0 = independent samples)."""


GeneratorConfig: TypeAlias = MarkovConfig | RegimeConfig
GeneratorKind = Literal["markov", "regime"]


# --------------------------------------------------------------------------------------------------
# Markov chain


def markov_trace(config: MarkovConfig, rng: np.random.Generator, *, name: str, source: str = "") -> Trace:
    """One Markov-chain trace drawn from ``rng`` (see `MarkovConfig` for the model)."""
    n_steps = config.n_steps
    means = config.state_means_mbps()
    state = int(rng.integers(config.n_states))
    switches = rng.random(n_steps) < config.switch_prob
    picks = rng.random(n_steps)
    noise = rng.standard_normal(n_steps + 1)

    states = np.empty(n_steps + 1, dtype=np.int64)
    states[0] = state
    if config.n_states > 1:
        cumulative = _neighbour_cdf(config.n_states, config.neighbour_decay)
        for step in range(n_steps):
            if switches[step]:
                # side="right" never lands on the zero-weight current state (its cdf step is flat).
                pick = int(np.searchsorted(cumulative[state], picks[step], side="right"))
                state = min(pick, config.n_states - 1)
            states[step + 1] = state
    else:
        states[1:] = state
    state_mean = means[states]
    throughput = np.maximum(state_mean * (1.0 + config.noise_frac * noise), config.floor_mbps)
    return Trace(name=name, times_s=config.times_s(), throughput_mbps=throughput, source=source)


def _neighbour_cdf(n_states: int, decay: float) -> FloatArray:
    """Row ``i``: cumulative switch probabilities to each state ``j != i`` (weight ``decay**(|j-i|-1)``)."""
    distance = np.abs(np.subtract.outer(np.arange(n_states), np.arange(n_states)))
    weights = np.where(distance > 0, decay ** np.maximum(distance - 1, 0).astype(np.float64), 0.0)
    cumulative = np.cumsum(weights, axis=1)
    return cumulative / cumulative[:, -1:]


def markov(config: MarkovConfig, n_traces: int, seed: int, *, source: str | None = None) -> list[Trace]:
    """``n_traces`` Markov-chain traces named ``markov_0000``, ... (trace ``i`` from seed ``(seed, i)``).

    Args:
        config: the generator settings.
        n_traces: number of traces (>= 0).
        seed: non-negative seed; the same seed gives identical traces.
        source: provenance stored in each trace; defaults to the full spec (`to_spec`).
    """
    return _many("markov", config, n_traces, seed, source)


# --------------------------------------------------------------------------------------------------
# Regimes


def regime_trace(config: RegimeConfig, rng: np.random.Generator, *, name: str, source: str = "") -> Trace:
    """One regime-switching trace drawn from ``rng`` (see `RegimeConfig` for the model).

    Sample ``i`` (the interval ending at ``times_s[i]``) takes the mean of the regime in force at the
    interval's start.
    """
    times = config.times_s()
    end_s = float(times[-1])
    boundaries = _regime_boundaries(config.change_interval_s, end_s, rng)
    log_means = rng.uniform(math.log(config.low_mbps), math.log(config.high_mbps), boundaries.size + 1)
    starts = np.concatenate([times[:1], times[:-1]])
    regime_of_sample = np.searchsorted(boundaries, starts, side="right")
    mean_mbps = np.exp(log_means[regime_of_sample])

    shocks = rng.standard_normal(times.size)
    log_noise = np.empty(times.size, dtype=np.float64)
    a = config.correlation
    innovation_scale = math.sqrt(1.0 - a * a)  # keeps the AR(1) process at unit variance
    log_noise[0] = shocks[0]
    for i in range(1, times.size):
        log_noise[i] = a * log_noise[i - 1] + innovation_scale * shocks[i]
    # A lognormal exp(s*x - s^2/2) with x ~ N(0, 1) has mean 1 and coefficient of variation `variability`.
    sigma = math.sqrt(math.log1p(config.variability**2))
    multiplier = np.exp(sigma * log_noise - 0.5 * sigma * sigma)
    throughput = np.maximum(mean_mbps * multiplier, config.floor_mbps)
    return Trace(name=name, times_s=times, throughput_mbps=throughput, source=source)


def _regime_boundaries(mean_interval_s: float, end_s: float, rng: np.random.Generator) -> FloatArray:
    """Regime change times in ``(0, end_s)``: a Poisson process with mean gap ``mean_interval_s``."""
    batch = max(16, 2 * math.ceil(end_s / mean_interval_s))
    times: list[FloatArray] = []
    reached = 0.0
    while reached < end_s:
        chunk = reached + np.cumsum(rng.exponential(mean_interval_s, batch))
        times.append(chunk)
        reached = float(chunk[-1])
    boundaries = np.concatenate(times)
    return boundaries[boundaries < end_s]


def regime(config: RegimeConfig, n_traces: int, seed: int, *, source: str | None = None) -> list[Trace]:
    """``n_traces`` regime-switching traces named ``regime_0000``, ... (trace ``i`` from seed ``(seed, i)``).

    Args:
        config: the generator settings.
        n_traces: number of traces (>= 0).
        seed: non-negative seed; the same seed gives identical traces.
        source: provenance stored in each trace; defaults to the full spec (`to_spec`).
    """
    return _many("regime", config, n_traces, seed, source)


# --------------------------------------------------------------------------------------------------
# Shared driver and specs


def _many(kind: GeneratorKind, config: GeneratorConfig, n_traces: int, seed: int, source: str | None) -> list[Trace]:
    if n_traces < 0:
        raise ValueError(f"n_traces must be >= 0, got {n_traces}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    provenance = to_spec(kind, config, n_traces, seed) if source is None else source
    children = np.random.SeedSequence(seed).spawn(n_traces)
    traces = []
    for index, child in enumerate(children):
        rng = np.random.default_rng(child)
        name = f"{kind}_{index:04d}"
        if isinstance(config, MarkovConfig):
            traces.append(markov_trace(config, rng, name=name, source=provenance))
        else:
            traces.append(regime_trace(config, rng, name=name, source=provenance))
    return traces


_CONFIGS: dict[str, type[MarkovConfig] | type[RegimeConfig]] = {
    "markov": MarkovConfig,
    "regime": RegimeConfig,
}
_GENERATORS: dict[str, Callable[..., list[Trace]]] = {"markov": markov, "regime": regime}


@dataclass(frozen=True)
class GeneratorSpec:
    """A parsed generator spec: which generator, its settings, how many traces and the seed."""

    kind: GeneratorKind
    config: GeneratorConfig
    n_traces: int
    seed: int
    text: str
    """The spec as written; stored as each generated trace's ``source``."""

    def generate(self) -> list[Trace]:
        """Make the traces this spec describes."""
        return _GENERATORS[self.kind](self.config, self.n_traces, self.seed, source=self.text)


def to_spec(kind: GeneratorKind, config: GeneratorConfig, n_traces: int, seed: int) -> str:
    """The full spec string (every setting spelled out) that `parse_spec` turns back into this call."""
    settings = ",".join(f"{key}={value!r}" for key, value in config.model_dump().items())
    return f"{kind}:n={n_traces},seed={seed},{settings}"


def build_spec(kind: str, params: Mapping[str, object], *, text: str | None = None) -> GeneratorSpec:
    """Validate generator settings given as a mapping (values may be strings, as parsed from a spec).

    ``n`` and ``seed`` are taken out of ``params``; the rest must be fields of the generator's config.

    Raises:
        SpecError: unknown generator or key, or an invalid value; the message names the key.
    """
    shown = f"spec {text!r}" if text is not None else f"{kind} settings"
    config_type = _CONFIGS.get(kind)
    if config_type is None:
        raise SpecError(f"{shown}: unknown generator {kind!r} (known: {', '.join(_CONFIGS)})")
    settings = dict(params)
    n_traces = _spec_int(settings.pop("n", DEFAULT_N_TRACES), "n", shown)
    seed = _spec_int(settings.pop("seed", 0), "seed", shown)
    known = list(config_type.model_fields)
    for key in settings:
        if key not in config_type.model_fields:
            raise SpecError(f"{shown}: unknown key {key!r} for {kind} (known: n, seed, {', '.join(known)})")
    try:
        config = config_type.model_validate(settings)
    except ValidationError as error:
        problems = []
        for item in error.errors():
            key = ".".join(str(part) for part in item["loc"])
            message = item["msg"].removeprefix("Value error, ")
            problems.append(f"{key}={settings[key]!r}: {message}" if key in settings else message)
        raise SpecError(f"{shown}: " + "; ".join(problems)) from None
    spec_kind: GeneratorKind = "markov" if kind == "markov" else "regime"
    return GeneratorSpec(
        kind=spec_kind,
        config=config,
        n_traces=n_traces,
        seed=seed,
        text=text if text is not None else to_spec(spec_kind, config, n_traces, seed),
    )


def _spec_int(value: object, key: str, shown: str) -> int:
    """A non-negative integer from a spec value (an int, or a string of digits)."""
    if isinstance(value, bool):
        raise SpecError(f"{shown}: {key}={value!r} must be a non-negative integer")
    if isinstance(value, int):
        number = value
    else:
        try:
            number = int(str(value).strip())
        except ValueError:
            raise SpecError(f"{shown}: {key}={value!r} must be a non-negative integer") from None
    if number < 0:
        raise SpecError(f"{shown}: {key}={value!r} must be a non-negative integer")
    return number


def parse_spec(spec: str) -> GeneratorSpec:
    """Parse ``"kind:key=value,key=value"`` (e.g. ``"markov:n=100,seed=1,duration_s=320"``).

    Keys are ``n`` (number of traces), ``seed`` and the fields of `MarkovConfig` / `RegimeConfig`.

    Raises:
        SpecError: malformed text, unknown generator or key, repeated key, or invalid value.
    """
    text = spec.strip()
    kind, _, rest = text.partition(":")
    kind = kind.strip()
    params: dict[str, str] = {}
    for item in rest.split(",") if rest.strip() else []:
        key, equals, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not equals or not key or not value:
            raise SpecError(f"spec {text!r}: expected key=value, got {item.strip()!r}")
        if key in params:
            raise SpecError(f"spec {text!r}: key {key!r} is given twice")
        params[key] = value
    return build_spec(kind, params, text=text)


def generate_from_spec(spec: str) -> list[Trace]:
    """Make the traces a spec string describes (`parse_spec`); each trace's ``source`` is the spec."""
    return parse_spec(spec).generate()
