"""Compare two `fingerprint.sh` folders: JSON and CSV values (timings, dates and paths aside), weights byte for byte.

Prints each file that differs (and, for JSON, the fields that do) and exits 1 if any does.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path
from typing import Any

#: Fields that differ between two runs of the same code: timings, dates, the command line and its paths.
UNSTABLE = {"wall_s", "charts/steps_per_s", "steps_per_s", "date", "command", "arguments"}


def differing_fields(a: Any, b: Any, path: str = "") -> set[str]:
    """The JSON paths (list indices folded to ``[]``) where ``a`` and ``b`` differ, unstable fields aside."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: set[str] = set()
        for key in a.keys() | b.keys():
            if key not in UNSTABLE:
                out |= differing_fields(a.get(key), b.get(key), f"{path}/{key}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return set().union(*(differing_fields(x, y, f"{path}[]") for x, y in zip(a, b, strict=True)))
    same = a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))
    return set() if same else {path or "/"}


def csv_rows(path: Path) -> list[dict[str, str]]:
    """A CSV's rows without the unstable columns."""
    with path.open() as f:
        return [{k: v for k, v in row.items() if k not in UNSTABLE} for row in csv.DictReader(f)]


def main(before: Path, after: Path) -> int:
    """Print what differs between the two folders; 1 if anything does."""
    bad = 0
    for fa in sorted(p for p in before.rglob("*") if p.is_file() and p.suffix in {".json", ".csv", ".safetensors"}):
        rel = fa.relative_to(before)
        fb = after / rel
        if not fb.is_file():
            print(f"missing: {rel}")
            bad += 1
        elif fa.suffix == ".json":
            fields = differing_fields(json.loads(fa.read_text()), json.loads(fb.read_text()))
            if fields:
                print(f"differs: {rel}: {', '.join(sorted(fields))}")
                bad += 1
        elif (fa.suffix == ".csv" and csv_rows(fa) != csv_rows(fb)) or (
            fa.suffix == ".safetensors" and fa.read_bytes() != fb.read_bytes()
        ):
            print(f"differs: {rel}")
            bad += 1
    print(f"{bad} files differ")
    return 1 if bad else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: fingerprint_compare.py BEFORE AFTER")
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
