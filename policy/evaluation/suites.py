"""Named evaluation suites: the trace sets and policies an `abr eval --suite NAME` run compares.

``generalisation`` asks whether a policy holds up on every network rather than on average: the real test
sets of the trace root (FCC broadband, Norway 3G, Puffer) and one generated family at five bandwidth
scales (`traces.sources`' ``@scale=X``), the learned default against robustMPC (the report adds the
offline optimum and the terms of each score). The generated family is the training generator's
(``markov`` with its default 0.2-6 Mbit/s states) on seeds no shipped recipe trains on, so its 1x set
is in-distribution and the others are the same network shapes at other bandwidths.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: The real test sets a trace root holds (`../shared/traces`'s layout).
REAL_TEST_SETS = ("fcc-test", "norway-test", "puffer-2110-test")
#: The generated family of the generalisation suite, before scaling.
GENERATED_FAMILY = "markov:n=60,seed=401"
#: Bandwidth scales of the generated family.
BANDWIDTH_SCALES = (0.5, 1.0, 2.0, 4.0, 8.0)


@dataclass(frozen=True)
class Suite:
    """What a suite evaluates: trace sources (relative to a trace root where they are folders) and policies."""

    name: str
    description: str
    real_sets: tuple[str, ...]
    generated: tuple[str, ...]
    policies: tuple[str, ...]

    def sources(self, trace_root: Path) -> list[str]:
        """The suite's trace sources with ``trace_root`` filled in; a missing real set is an error."""
        missing = [name for name in self.real_sets if not (trace_root / name).is_dir()]
        if missing:
            raise ValueError(f"suite {self.name}: {trace_root} has no {', '.join(missing)} (set --trace-root)")
        return [str(trace_root / name) for name in self.real_sets] + list(self.generated)


SUITES: dict[str, Suite] = {
    "generalisation": Suite(
        name="generalisation",
        description="real test sets and a generated family at 0.5x-8x bandwidth: the default vs robustMPC",
        real_sets=REAL_TEST_SETS,
        generated=tuple(f"{GENERATED_FAMILY}@scale={scale:g}" for scale in BANDWIDTH_SCALES),
        policies=("default", "robustmpc"),
    ),
}


def suite(name: str) -> Suite:
    """The suite called ``name`` (a clear error listing the others)."""
    try:
        return SUITES[name]
    except KeyError:
        raise ValueError(f"--suite must be one of {', '.join(SUITES)}, got {name!r}") from None
