"""What a deployment timeline is made of (`abr adapt`): phases of networks and the arms that serve them.

Importable without torch, so the command line can show the defaults in its help and check its input.

- A *phase* is ``NAME=SOURCE:EPOCHS``: a network (a trace folder of the trace root, with an optional
  ``@fold=``/``@except=``/``@scale=`` suffix, or a generator spec such as ``markov:n=60,seed=11@scale=8``)
  that players meet for EPOCHS epochs. A phase whose source an earlier phase had is a *return*.
- An *arm* is what serves the players: ``frozen`` (the starting model, never retrained), ``robustmpc``
  (the classic rule, the yardstick), or the retraining loop
  ``METHOD[+replay][+reference][+continual][+revert]`` with a plasticity method (``none``, ``resin``,
  ...), older telemetry replayed in every round's training pool (``+replay``) and/or checked by the
  gate (``+reference``), one long-lived trainer whose model, optimizer and plasticity state carry over
  from round to round (``+continual``) instead of a fresh fine-tune of the served version each round,
  a gate that also scores earlier versions and publishes the best again when it leads both the
  served version and the candidate (``+revert``), a gate that holds every version to the starting
  one on the anchor sets (``+anchor``: train folds of the real families), and a quarter of every
  round's pool drawn from those anchor sets (``+rehearse``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePath

from pydantic import BaseModel, ConfigDict, Field

from plasticity.names import METHODS
from traces.sources import is_generator_spec

#: Arms that never retrain: the starting model as it is, and the classic rule served the same sessions.
FROZEN, ROBUSTMPC = "frozen", "robustmpc"
#: What a loop arm may add to its method: older telemetry replayed, older telemetry as the gate's reference,
#: one trainer that carries on across rounds, earlier versions the gate may publish again, the starting
#: model's networks as an anchor no version may fall behind it on, those networks rehearsed in every pool.
REPLAY, REFERENCE, CONTINUAL, REVERT, ANCHOR, REHEARSE = (
    "replay", "reference", "continual", "revert", "anchor", "rehearse",
)  # fmt: skip
EXTRAS = (REPLAY, REFERENCE, CONTINUAL, REVERT, ANCHOR, REHEARSE)
#: The default arms: the frozen model, the loop with and without ReSiN, each with and without replay, robustMPC.
DEFAULT_ARMS = (FROZEN, "none", "resin", f"none+{REPLAY}", f"resin+{REPLAY}", ROBUSTMPC)
#: The default timeline: real families of the trace root's test folds, a generated fast family, and a return
#: to the first network (8 epochs each: 40 epochs, 39 retraining rounds).
DEFAULT_PHASES = (
    "norway=norway-test:8",
    "fcc=fcc-test:8",
    "puffer=puffer-2110-test:8",
    "fast=markov:n=160,seed=11@scale=8:8",
    "norway=norway-test:8",
)
#: How a phase is written on the command line.
PHASE_FORMAT = "NAME=SOURCE:EPOCHS (e.g. fcc=fcc-test:8 or fast=markov:n=60,seed=11@scale=8:4)"


class Phase(BaseModel):
    """One network of the timeline and how many epochs players spend on it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    source: str = Field(min_length=1, description="A folder of the trace root (optional @ suffix) or a generator spec.")
    epochs: int = Field(ge=1)


def parse_phase(text: str) -> Phase:
    """``NAME=SOURCE:EPOCHS``; a one-line `ValueError` naming the problem otherwise."""
    name, equals, rest = text.partition("=")
    source, colon, epochs = rest.rpartition(":")
    name, source, epochs = name.strip(), source.strip(), epochs.strip()
    if not equals or not name or not colon or not source:
        raise ValueError(f"--phase {text!r}: expected {PHASE_FORMAT}")
    if not epochs.isdigit() or int(epochs) < 1:
        raise ValueError(f"--phase {text!r}: EPOCHS {epochs!r} must be a whole number >= 1; expected {PHASE_FORMAT}")
    if not is_generator_spec(source):
        folder = PurePath(source.split("@", 1)[0])
        if folder.is_absolute() or ".." in folder.parts:
            raise ValueError(
                f"--phase {text!r}: SOURCE must be a folder of the trace root (--trace-root) or a generator spec "
                "(markov:..., regime:...)"
            )
    return Phase(name=name, source=source, epochs=int(epochs))


@dataclass(frozen=True)
class Arm:
    """One arm: a policy that never retrains (``method`` None), or the loop with ``method`` and its extras."""

    name: str
    method: str | None = None
    replay: bool = False
    reference: bool = False
    continual: bool = False
    revert: bool = False
    anchor: bool = False
    rehearse: bool = False

    @property
    def learns(self) -> bool:
        """Whether a retraining round runs after each epoch."""
        return self.method is not None


def parse_arm(name: str) -> Arm:
    """``frozen``, ``robustmpc`` or ``METHOD[+EXTRA]...`` (each of `EXTRAS` once); a one-line `ValueError` otherwise."""
    if name in (FROZEN, ROBUSTMPC):
        return Arm(name)
    method, *extras = name.split("+")
    written = "".join(f"[+{e}]" for e in EXTRAS)
    if method not in METHODS:
        raise ValueError(
            f"--arms: unknown arm {name!r}; use {FROZEN}, {ROBUSTMPC} or METHOD{written} with "
            f"METHOD one of {', '.join(METHODS)}"
        )
    unknown = [e for e in extras if e not in EXTRAS]
    if unknown or len(set(extras)) != len(extras):
        raise ValueError(f"--arms: arm {name!r}: after METHOD only {', '.join('+' + e for e in EXTRAS)} may follow, "
                         "once each")  # fmt: skip
    return Arm(name, method, REPLAY in extras, REFERENCE in extras, CONTINUAL in extras, REVERT in extras,
               ANCHOR in extras, REHEARSE in extras)  # fmt: skip


def parse_arms(text: str) -> list[str]:
    """A comma list of arms (each checked by `parse_arm`), none twice."""
    names = [a.strip() for a in text.split(",") if a.strip()]
    if not names:
        raise ValueError("--arms: no arm given")
    repeated = sorted({a for a in names if names.count(a) > 1})
    if repeated:
        raise ValueError(f"--arms: {', '.join(repeated)} given twice")
    for name in names:
        parse_arm(name)
    return names


def parse_seeds(text: str) -> list[int]:
    """A comma list of distinct whole numbers >= 0."""
    parts = [s.strip() for s in text.split(",") if s.strip()]
    if not parts or not all(p.isdigit() for p in parts):
        raise ValueError(f"--seeds {text!r}: expected a comma list of whole numbers >= 0, e.g. 1,2,3")
    seeds = [int(p) for p in parts]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds {text!r}: a seed is given twice")
    return seeds
