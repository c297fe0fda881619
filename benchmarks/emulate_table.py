"""Markdown tables for BENCHMARKS.md from an `abr emulate` output folder (per-session result.json files).

python benchmarks/emulate_table.py runs/emulate-bench
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def main(folder: Path) -> None:
    results = [json.loads(p.read_text()) for p in sorted((folder / "sessions").glob("*/result.json"))]
    policies = list(dict.fromkeys(r["policy"] for r in results))
    print(
        "| trace | policy | player score | sim score | player kbit/s | sim kbit/s | stalls (s) | sim rebuffer (s) "
        "| startup (s) | switches | server / sync / fallback |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in sorted(results, key=lambda r: (r["trace"], policies.index(r["policy"]))):
        p, s, c = r["player"], r["simulated"], r["counts"]
        sim = (f"{s['score']:.3f}", f"{s['mean_bitrate_kbps']:.0f}", f"{s['rebuffer_s']:.2f}") if s else ("-",) * 3
        sources = "-"
        if r["policy"] != "dashjs":
            sources = f"{c.get('server', 0)} / {c.get('server-sync', 0)} / {c.get('fallback', 0)}"
        cells = [r["trace"][:40], r["policy"], f"{p['score']:.3f}", sim[0], f"{p['mean_bitrate_kbps']:.0f}", sim[1],
                 f"{p['stall_s']:.2f} ({p['stall_count']})", sim[2], f"{p['startup_s']:.2f}", str(p["switches"]),
                 sources]  # fmt: skip
        print("| " + " | ".join(cells) + " |")
    print()
    print(
        "| policy | sessions | player score (mean) | sim score (mean) | mean abs(player - sim) | player kbit/s "
        "| sim kbit/s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for policy in policies:
        rows = [r for r in results if r["policy"] == policy]
        player = np.array([r["player"]["score"] for r in rows])
        kbps = np.array([r["player"]["mean_bitrate_kbps"] for r in rows])
        if rows[0]["simulated"]:
            sim = np.array([r["simulated"]["score"] for r in rows])
            skbps = np.array([r["simulated"]["mean_bitrate_kbps"] for r in rows])
            extra = f"{sim.mean():.3f} | {np.abs(player - sim).mean():.3f} | {kbps.mean():.0f} | {skbps.mean():.0f}"
        else:
            extra = f"- | - | {kbps.mean():.0f} | -"
        print(f"| {policy} | {len(rows)} | {player.mean():.3f} | {extra} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
