"""The policy interface shared by classic rules and learned models, and the name -> class registry.

A policy is batched: it gets an `Observation` of B sessions and returns B levels. It is told the
video once (`begin`), so it never re-declares a ladder. Policies are built from a spec string,
``name`` or ``name:key=value,key=value`` (or ``fixed:N``), whose values are validated by the policy's
pydantic config, so a typo names the key that is wrong.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypeVar

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, ValidationError

from abr_common.errors import problems
from policy.names import BUILTIN_POLICIES
from simulator.link import LinkConfig
from simulator.observation import Observation
from simulator.video import Video
from traces.trace import Trace

IntArray = npt.NDArray[np.int64]


class PolicySpecError(ValueError):
    """A policy spec string names an unknown policy or gives it invalid parameters."""


class PolicyConfig(BaseModel):
    """Base of every policy's typed parameters."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Policy(ABC):
    """Chooses the next chunk's level for B sessions at once."""

    #: Registry name.
    name: ClassVar[str] = ""
    #: The config model of this policy's parameters.
    config_type: ClassVar[type[PolicyConfig]] = PolicyConfig
    #: Offline policies see the whole trace in advance (`plan_sessions`); they cannot serve live players.
    offline: ClassVar[bool] = False
    #: Stateful policies keep per-session state between calls (so a session must keep its batch row);
    #: stateless ones decide from the observation alone and can batch any sessions together.
    stateful: ClassVar[bool] = False

    def __init__(self, config: PolicyConfig | None = None) -> None:
        self.config = config if config is not None else self.config_type()
        self.video: Video | None = None

    @property
    def label(self) -> str:
        """How the policy appears in tables (its name plus non-default parameters)."""
        changed = {k: v for k, v in self.config.model_dump().items() if v != self.config_type.model_fields[k].default}
        if not changed:
            return self.name
        return f"{self.name}:" + ",".join(f"{k}={v}" for k, v in changed.items())

    @property
    def reads_prior(self) -> bool:
        """Whether `select` reads the sessions' throughput prior (`Observation.prior_mbps`); a learned policy
        knows once begun. A simulator that feeds only this policy draws priors only then."""
        return False

    @classmethod
    def parse_shorthand(cls, text: str) -> dict[str, Any]:
        """Parameters from a spec's positional shorthand (``fixed:3``); most policies have none."""
        raise PolicySpecError(f"policy {cls.name!r} takes key=value parameters, got {text!r}")

    def plan_sessions(
        self,
        traces: Sequence[Trace],
        video: Video,
        link: LinkConfig,
        initial_quality: int,
        *,
        on_trace: Callable[[int], None] | None = None,
    ) -> object:
        """Offline policies only: plan one session per trace before they start (the evaluation loop calls it).

        ``on_trace(done)``, if given, is called with the number of traces planned so far (for progress bars).
        """
        raise NotImplementedError(f"policy {self.name!r} is online: it has no plan_sessions()")

    def begin(self, n_sessions: int, video: Video) -> None:
        """Called before B new sessions start streaming ``video``; resets any per-session state."""
        self.video = video

    def restart(self, rows: npt.NDArray[np.bool_]) -> None:
        """The sessions in ``rows`` ended and new ones began in their places: forget those rows' state.

        Stateless policies keep none; a stateful policy that can run beside a vector environment (which
        restarts finished sessions in place) overrides this.
        """
        if self.stateful:
            raise NotImplementedError(f"policy {self.name!r} keeps per-session state and cannot restart rows")

    @abstractmethod
    def select(self, obs: Observation) -> IntArray:
        """The level of the next chunk for every session in ``obs`` (int64 array of length B)."""

    def _video(self) -> Video:
        if self.video is None:
            raise RuntimeError(f"policy {self.name!r}: begin() must be called before select()")
        return self.video


class PlannedPolicy(Policy):
    """An offline policy that plans every session's levels in `plan_sessions` and replays them in `select`.

    Subclasses implement `plan_sessions` and store the plan with `_remember` (levels ``[sessions, chunks]``).
    """

    offline = True

    def _remember(self, levels: npt.ArrayLike) -> None:
        self._levels = np.asarray(levels, dtype=np.int64)

    def select(self, obs: Observation) -> IntArray:
        if not hasattr(self, "_levels"):
            raise RuntimeError(f"{self.name} is an offline policy: plan_sessions() must run first (abr eval does this)")
        if self._levels.shape[0] != obs.n_sessions:
            raise RuntimeError(f"{self.name}: observation batch does not match the planned sessions")
        return np.asarray(self._levels[np.arange(obs.n_sessions), obs.chunk_index], dtype=np.int64)


_REGISTRY: dict[str, type[Policy]] = {}
P = TypeVar("P", bound=type[Policy])


def register(name: str) -> Callable[[P], P]:
    """Class decorator adding a policy to the registry under ``name``."""

    def wrap(cls: P) -> P:
        # A built-in name belongs to its module even before that module is imported.
        if name in _REGISTRY or BUILTIN_POLICIES.get(name, cls.__module__) != cls.__module__:
            raise ValueError(f"policy name {name!r} is registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def available_policies() -> list[str]:
    """Registered policy names (the built-in ones, whether their modules are imported yet or not), sorted."""
    return sorted(_REGISTRY.keys() | BUILTIN_POLICIES.keys())


def _import_builtin(name: str) -> None:
    """Import the module of the built-in policy ``name`` (it registers itself there); nothing for other names."""
    module = BUILTIN_POLICIES.get(name)
    if module is not None and name not in _REGISTRY:
        importlib.import_module(module)


def parse_params(text: str, what: str) -> dict[str, Any]:
    """Parse ``key=value,key=value`` into a dict of strings (validated later by a config model)."""
    params: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise PolicySpecError(f"{what}: expected key=value, got {item!r}")
        if key.strip() in params:
            raise PolicySpecError(f"{what}: parameter {key.strip()!r} given twice")
        params[key.strip()] = value.strip()
    return params


def make_policy(spec: str) -> Policy:
    """Build a policy from ``name``, ``name:key=value,...`` or the shorthand ``fixed:N``."""
    name, _, rest = spec.strip().partition(":")
    _import_builtin(name)
    cls = _REGISTRY.get(name)
    if cls is None:
        raise PolicySpecError(f"unknown policy {name!r} in {spec!r}; available: {', '.join(available_policies())}")
    params = cls.parse_shorthand(rest) if rest and "=" not in rest else parse_params(rest, f"policy {spec!r}")
    try:
        config = cls.config_type(**params)
    except ValidationError as err:
        raise PolicySpecError(f"policy {spec!r}: {problems(err)}") from None
    return cls(config)
