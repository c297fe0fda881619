"""Non-stationary training schedules: a list of phases, each a trace family trained on for some steps.

A schedule is a JSON file validated by `Schedule`. Trace sources are paths or generator specs; ``{traces}``
in a source stands for the trace root (``--trace-root``, by default ``../shared/traces``). Phases of the
same ``family`` share a test set, which is how forgetting is measured. Shipped schedules live next to this
module (``plasticity/schedules/*.json``) and are named without the extension.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from abr_common.errors import problems

SCHEDULE_DIR = Path(__file__).parent / "schedules"


class ScheduleError(ValueError):
    """A schedule that does not exist or does not validate."""


class Phase(BaseModel):
    """One stretch of training on one trace family."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    family: str = Field(min_length=1, description="Name of the network family (phases may repeat one).")
    train: list[str] = Field(min_length=1, description="Training trace sources (paths or generator specs).")
    test: list[str] = Field(min_length=1, description="Test trace sources of this family.")
    steps: int = Field(ge=1, description="Environment steps of this phase at scale 1.")


class Schedule(BaseModel):
    """A named sequence of phases."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    description: str = ""
    evals_per_phase: int = Field(4, ge=1, description="Continual evaluations inside each phase (the last at its end).")
    phases: list[Phase] = Field(min_length=1)
    phase_jitter: float = Field(
        0.0, ge=0, lt=1,
        description="The benchmark draws each phase's length per seed from steps x U(1 - j, 1 + j): shifts come "
        "at times no fixed period can match, as in real networks (0: the lengths as written).",
    )  # fmt: skip

    def families(self) -> list[str]:
        """Family names in order of first appearance."""
        seen: list[str] = []
        for phase in self.phases:
            if phase.family not in seen:
                seen.append(phase.family)
        return seen

    def test_sources(self, family: str, trace_root: Path) -> list[str]:
        """The test sources of ``family`` (from its first phase), with ``{traces}`` filled in."""
        phase = next(p for p in self.phases if p.family == family)
        return expand(phase.test, trace_root)


def expand(sources: list[str], trace_root: Path) -> list[str]:
    """Fill ``{traces}`` in each source."""
    return [s.replace("{traces}", str(trace_root)) for s in sources]


def available_schedules() -> list[str]:
    """Names of the shipped schedules."""
    return sorted(p.stem for p in SCHEDULE_DIR.glob("*.json"))


def load_schedule(name_or_path: str | Path) -> Schedule:
    """A shipped schedule by name, or a schedule JSON file by path."""
    path = Path(name_or_path)
    if not path.suffix and (SCHEDULE_DIR / f"{name_or_path}.json").is_file():
        path = SCHEDULE_DIR / f"{name_or_path}.json"
    if not path.is_file():
        raise ScheduleError(
            f"schedule {str(name_or_path)!r}: no such file, and not a shipped schedule "
            f"({', '.join(available_schedules())})"
        )
    try:
        return Schedule.model_validate(json.loads(path.read_text()))
    except json.JSONDecodeError as err:
        raise ScheduleError(f"{path}: not JSON ({err.msg} at line {err.lineno})") from None
    except ValidationError as err:
        raise ScheduleError(f"{path}: invalid schedule ({problems(err)})") from None
