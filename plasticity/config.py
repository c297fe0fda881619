"""Plasticity settings: one small config per method, told apart by ``method`` (plain pydantic, no torch).

`PlasticityConfig` is the union of them, discriminated on ``method``; `parse_plasticity` builds one from a
mapping (a JSON record, a command line's options). Every config shares the fields of `MethodConfig`
(seed, diagnostics cadence and thresholds); the rest of a method's knobs live with it.

Records and configs written before the split hold one flat object with every method's fields.
`upgrade_flat` reads them: a field of another method is dropped when it holds the value that flat object
defaulted to (it did nothing), and refused with a one-line error otherwise (it was set on purpose, so
the settings cannot be read as the method ran them).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from abr_common.errors import problems
from plasticity.names import METHODS
from policy.learning.config import NetworkConfig

SilentRule = Literal["both", "either", "forward", "backward"]

#: Updates between checks for silent neurons, per method. ReSiN checks twice as often as ReDo: a policy's
#: gradient collapses within a few updates of a network shift, and every update it keeps training silent
#: neurons delays recovery (on the jittered schedules 5 scored at least as well as 10 on every schedule;
#: BENCHMARKS.md). ReDo's forward-only score does not see that collapse at any cadence.
CHECK_EVERY_UPDATES: dict[str, int] = {"resin": 5}
DEFAULT_CHECK_EVERY_UPDATES = 10


class MethodConfig(BaseModel):
    """What every method shares: its seed, and the ``plasticity/*`` diagnostics' cadence and thresholds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: str = Field(description="Which method runs (each config fixes its own name).")
    seed: int = Field(0, description="Seeds re-initialisations and the diagnostic batch.")
    diagnose_every_updates: int = Field(10, ge=0, description="Log plasticity/* every this many updates (0: never).")
    batch_size: int = Field(1024, ge=2, description="Recent transitions the scores are computed on.")
    tau_forward: float = Field(
        0.025, ge=0,
        description="Dormant when the normalised activation score <= this (diagnostics; ReDo's and ReSiN's resets).",
    )  # fmt: skip
    tau_backward: float = Field(
        0.025, ge=0,
        description="Gradient-silent when the normalised gradient score <= this (diagnostics; ReSiN's and "
        "ReGraMa's resets).",
    )  # fmt: skip


class NoneConfig(MethodConfig):
    """Plain continual training (the diagnostics still run)."""

    method: Literal["none"] = "none"


class PeriodicConfig(MethodConfig):
    """What the periodic methods (reset, shrink-and-perturb) share: their period."""

    reset_every_updates: int = Field(100, ge=1, description="Period in updates.")


class ResetConfig(PeriodicConfig):
    """Periodic re-initialisation of the whole network or of its last layers."""

    method: Literal["reset"] = "reset"
    reset_scope: Literal["all", "last"] = Field("last", description="The whole network or its last layers.")


class ShrinkPerturbConfig(PeriodicConfig):
    """Shrink-and-perturb (Ash & Adams 2020) every ``reset_every_updates``."""

    method: Literal["shrink-perturb"] = "shrink-perturb"
    shrink: float = Field(0.8, ge=0, le=1, description="theta <- shrink * theta + ...")
    perturb: float = Field(0.1, ge=0, description="... + perturb * (a freshly initialised theta).")


class CbpConfig(MethodConfig):
    """Continual backprop (Dohare et al. 2024)."""

    method: Literal["cbp"] = "cbp"
    cbp_replacement_rate: float = Field(1e-3, ge=0, description="Fraction of mature units replaced per update.")
    cbp_maturity_updates: int = Field(50, ge=0, description="Units younger than this are never replaced.")
    cbp_decay: float = Field(0.99, ge=0, lt=1, description="Running-average decay of the utility.")


class FreshConfig(MethodConfig):
    """A fresh network at every phase start (the reference for an unburdened network)."""

    method: Literal["fresh"] = "fresh"


class ResetterConfig(MethodConfig):
    """What the neuron resetters (ReDo, ReSiN, ReGraMa) share: check cadence, grace period, backoff."""

    every_updates: int | None = Field(
        None, ge=1,
        description="Check for (and reset) silent neurons every this many updates (None: the method's own "
        "cadence, `CHECK_EVERY_UPDATES`).",
    )  # fmt: skip
    grace_updates: int = Field(20, ge=0, description="Neurons reset less than this many updates ago are exempt.")
    futile_backoff: int = Field(
        6, ge=0,
        description="A neuron still silent in the forward pass after its reset waits twice as long before the next "
        "(grace x 2^k, k <= this; 0: off). Units that cannot fire (a branch whose input is never positive) are "
        "then not re-drawn at every check.",
    )  # fmt: skip

    @property
    def check_every_updates(self) -> int:
        """How often the method checks for silent neurons: ``every_updates``, else the method's cadence."""
        if self.every_updates is not None:
            return self.every_updates
        return CHECK_EVERY_UPDATES.get(self.method, DEFAULT_CHECK_EVERY_UPDATES)


class RedoConfig(ResetterConfig):
    """ReDo (Sokar et al. 2023): reset neurons whose normalised activation is <= ``tau_forward``."""

    method: Literal["redo"] = "redo"


class ResinConfig(ResetterConfig):
    """ReSiN: reset neurons silent forward and/or backward; a collapsed top layer is reset whole."""

    method: Literal["resin"] = "resin"
    rule: SilentRule = Field("either", description="Silent when dormant and/or gradient-silent.")
    backward_reference: Literal["layer", "history"] = Field(
        "history",
        description="Normalise gradient scores by the layer's current mean (layer) or by the larger of that and "
        "its running mean over past checks (history), so a collapse of the whole layer's gradient counts.",
    )
    history_decay: float = Field(0.9, ge=0, lt=1, description="Per-check decay of the running layer mean.")
    collapse_ratio: float = Field(
        0.2, ge=0, lt=1,
        description="With history: a layer whose mean gradient fell to <= this fraction of its running mean "
        "receives no gradient as a whole, and all its neurons count as gradient-silent (0: off).",
    )  # fmt: skip
    collapse_scope: Literal["all", "top"] = Field(
        "top",
        description="Which layers can collapse as a whole: all, or only each trunk's top layer (the lower "
        "layers' gradient flows through it, so their silence is its consequence; their silent neurons are still "
        "reset one by one).",
    )
    shift_ratio: float = Field(
        3.0, ge=0,
        description="A layer's collapse counts only while its trunk's inputs have shifted, i.e. some layer's mean "
        "activity is >= this factor above or below its running mean (0: off). A policy converging in a "
        "stationary phase also loses gradient; that is not plasticity loss.",
    )  # fmt: skip
    neuron_reference: Literal["layer", "history"] = Field(
        "layer",
        description="With history: normalise each neuron's gradient by max(layer mean, running mean) (history) or "
        "by the layer's current mean only (layer; whole-layer loss of gradient is then left to the collapse "
        "rule).",
    )
    shift_window_updates: int = Field(
        100, ge=1,
        description="How long after an input shift its trunk's collapse still counts (unless its top layer was "
        "reset for it first): a policy's gradient takes a few checks to collapse after the shift.",
    )  # fmt: skip


class RegramaConfig(ResetterConfig):
    """ReGraMa (Liu et al. 2025): reset neurons whose normalised gradient magnitude is <= ``tau_backward``."""

    method: Literal["regrama"] = "regrama"


class L2InitConfig(MethodConfig):
    """L2 Init (Kumar et al. 2023): every minibatch's loss gains ``coef * sum((theta - theta_0) ** 2)``."""

    method: Literal["l2-init"] = "l2-init"
    coef: float = Field(1e-4, ge=0, description="Weight of the squared distance to the initial parameters.")


class LnWdConfig(MethodConfig):
    """LayerNorm and weight decay (Lyle et al. 2024), or Normalize-and-Project with ``project``."""

    method: Literal["ln-wd"] = "ln-wd"
    weight_decay: float = Field(
        0.01, ge=0,
        description="Decoupled weight decay after every optimizer step: w <- w - lr * weight_decay * w, on every "
        "linear layer's weights (biases and LayerNorm's gains and offsets are kept).",
    )  # fmt: skip
    layer_norm: bool = Field(
        True,
        description="Train a network with LayerNorm before its merged layers' ReLU (NetworkConfig.layer_norm) wherever "
        "the run builds its network (schedules, the benchmark, `abr train` from scratch); a fine-tune keeps its "
        "checkpoint's network.",
    )
    project: bool = Field(
        False,
        description="Normalize-and-Project instead of decay: after every step each hidden layer's weight matrix "
        "is rescaled to the norm it had at the start of the run.",
    )


class CChainConfig(MethodConfig):
    """C-CHAIN (Tang et al. 2025): penalise the change of the outputs on a reference batch off the minibatch."""

    method: Literal["c-chain"] = "c-chain"
    policy_coef: float = Field(
        1.0, ge=0, description="Weight of the policy's churn, KL(pi_previous || pi), on the reference batch."
    )
    value_coef: float = Field(
        0.5, ge=0, description="Weight of the value's churn, (V - V_previous)^2, on the reference batch."
    )
    reference_size: int = Field(
        256, ge=1, description="Transitions in each step's reference batch, drawn from the rollout off the minibatch."
    )
    target_relative_scale: float | None = Field(
        None, gt=0,
        description="Automatic policy coefficient: keep the policy-churn term at this fraction of the mean |policy "
        "loss| (over auto_window_updates updates, after auto_warmup_updates); None: policy_coef stays fixed.",
    )  # fmt: skip
    auto_window_updates: int = Field(100, ge=1, description="Updates the automatic coefficient averages over.")
    auto_warmup_updates: int = Field(20, ge=1, description="Updates before the automatic coefficient first moves.")


class InjectionConfig(MethodConfig):
    """Plasticity injection (Nikishin et al. 2023): fresh heads on the encoders, the function unchanged."""

    method: Literal["injection"] = "injection"
    at_update: int = Field(100, ge=1, description="Inject after this update.")
    every_updates: int | None = Field(
        None, ge=1, description="Then inject again every this many updates (None: once, at at_update)."
    )
    max_injections: int = Field(
        1, ge=1, le=64,
        description="At most this many injected heads in the network (a fine-tuned network counts those it came "
        "with, so retraining rounds do not grow it without bound).",
    )  # fmt: skip

    def due(self, update: int) -> bool:
        """Whether the schedule injects after update ``update``."""
        if update == self.at_update:
            return True
        return (
            self.every_updates is not None
            and update > self.at_update
            and ((update - self.at_update) % self.every_updates == 0)
        )


class TracConfig(MethodConfig):
    """TRAC (Muppidi et al. 2024): the parameters are a reference plus a tuned scale times the base optimizer's path."""

    method: Literal["trac"] = "trac"
    betas: tuple[float, ...] = Field(
        (0.9, 0.99, 0.999, 0.9999, 0.99999, 0.999999), min_length=1,
        description="Discount factors of the one-dimensional scale tuners (their scales are summed).",
    )  # fmt: skip
    scale_init: float = Field(1e-8, gt=0, description="The tuners' initial wealth: how small the first scale is.")
    eps: float = Field(1e-8, gt=0, description="Added to the tuners' denominators.")

    @field_validator("betas")
    @classmethod
    def _discounts(cls, betas: tuple[float, ...]) -> tuple[float, ...]:
        if not all(0 < b <= 1 for b in betas):
            raise ValueError(f"betas must lie in (0, 1], got {list(betas)}")
        return betas


#: Every method's config class, by name.
CONFIG_CLASSES: dict[str, type[MethodConfig]] = {
    "none": NoneConfig,
    "reset": ResetConfig,
    "redo": RedoConfig,
    "shrink-perturb": ShrinkPerturbConfig,
    "cbp": CbpConfig,
    "resin": ResinConfig,
    "regrama": RegramaConfig,
    "l2-init": L2InitConfig,
    "ln-wd": LnWdConfig,
    "injection": InjectionConfig,
    "c-chain": CChainConfig,
    "trac": TracConfig,
    "fresh": FreshConfig,
}

#: The flat config every record held before the per-method split: each field with its default there.
FLAT_DEFAULTS: dict[str, object] = {
    "every_updates": None, "diagnose_every_updates": 10, "batch_size": 1024, "tau_forward": 0.025,
    "tau_backward": 0.025, "rule": "either", "backward_reference": "history", "history_decay": 0.9,
    "collapse_ratio": 0.2, "collapse_scope": "top", "shift_ratio": 3.0, "neuron_reference": "layer",
    "shift_window_updates": 100, "grace_updates": 20, "futile_backoff": 6, "reset_every_updates": 100,
    "reset_scope": "last", "shrink": 0.8, "perturb": 0.1, "cbp_replacement_rate": 1e-3, "cbp_maturity_updates": 50,
    "cbp_decay": 0.99, "seed": 0,
}  # fmt: skip


def config_class(method: object) -> type[MethodConfig]:
    """The config class of ``method``; a clear error for a name that is not a method."""
    if not isinstance(method, str) or method not in CONFIG_CLASSES:
        raise ValueError(f"unknown plasticity method {method!r} (choose from {', '.join(METHODS)})")
    return CONFIG_CLASSES[method]


def method_fields(method: str) -> set[str]:
    """The fields ``method``'s config accepts (``method`` itself included)."""
    return set(config_class(method).model_fields)


def upgrade_flat(fields: Mapping[str, Any]) -> dict[str, Any]:
    """``fields`` with the fields of other methods dropped where they hold the flat config's default.

    Refused (`ValueError`, one line naming the field): a method that does not exist, a field no method
    has, and a field of another method set to anything but that default.
    """
    if "method" not in fields:
        raise ValueError(f"a 'method' is needed (one of {', '.join(METHODS)})")
    method = fields["method"]
    own = set(config_class(method).model_fields)
    out: dict[str, Any] = {}
    for name, value in fields.items():
        if name in own:
            out[name] = value
        elif name in FLAT_DEFAULTS:
            if value != FLAT_DEFAULTS[name]:
                users = ", ".join(m for m in METHODS if name in method_fields(m))
                raise ValueError(f"field {name}={value!r} does not apply to method {method!r} (used by: {users})")
        else:
            raise ValueError(
                f"unknown field {name!r} for method {method!r} (its fields: {', '.join(sorted(own - {'method'}))})"
            )
    return out


def _upgrade(value: Any) -> Any:
    return upgrade_flat(value) if isinstance(value, Mapping) else value


#: The settings of one plasticity method: which one runs (``method``) and its knobs (recorded with every run).
PlasticityConfig = Annotated[
    Union[  # noqa: UP007
        NoneConfig,
        ResetConfig,
        RedoConfig,
        ShrinkPerturbConfig,
        CbpConfig,
        ResinConfig,
        RegramaConfig,
        L2InitConfig,
        LnWdConfig,
        InjectionConfig,
        CChainConfig,
        TracConfig,
        FreshConfig,
    ],
    Field(discriminator="method"),
    BeforeValidator(_upgrade),
]
_ADAPTER: TypeAdapter[PlasticityConfig] = TypeAdapter(PlasticityConfig)


def parse_plasticity(fields: Mapping[str, Any] | MethodConfig) -> PlasticityConfig:
    """The config ``fields`` describe (a mapping with ``method``, current or flat); one-line `ValueError` if bad."""
    try:
        return _ADAPTER.validate_python(fields)
    except ValidationError as err:
        raise ValueError(f"plasticity settings: {problems(err).removeprefix(': ')}") from None


def network_for(plasticity: MethodConfig, network: NetworkConfig) -> NetworkConfig:
    """The network a run that builds its own trains with ``plasticity``: LayerNorm on for ln-wd."""
    if isinstance(plasticity, LnWdConfig) and plasticity.layer_norm and not network.layer_norm:
        return network.model_copy(update={"layer_norm": True})
    return network


def with_updates(config: MethodConfig, **changes: Any) -> PlasticityConfig:
    """``config`` with ``changes`` applied and validated (``method`` may change; fields must fit the method)."""
    return parse_plasticity({**config.model_dump(), **changes})
