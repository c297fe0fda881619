"""The Pensieve project's own dash.js client page, unmodified, against `abr serve` started with defaults.

The page (``video_server/myindex_RL.html`` of github.com/hongzimao/pensieve, with its modified
``dash.all.min.js``, manifest and Envivio segments) is served on 127.0.0.1:8080 and posts each report to
``http://localhost:8333``, where `abr serve --port 8333` runs with default settings (telemetry to OUT).
Two pages play at once in one headless Chromium, so both players share one address; playback runs at
4x. It waits until each page has reloaded on REFRESH, then prints per session the chunks recorded.

    python benchmarks/pensieve_client.py PENSIEVE/video_server runs/pensieve-client
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from abr_server.lab.emulate import CHROMIUM_ARGS, DEFAULT_CHROMIUM

PAGE = "http://127.0.0.1:8080/myindex_RL.html"
PLAYBACK_RATE = 4
PAGES = 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("site", type=Path, help="the Pensieve repository's video_server folder")
    parser.add_argument("out", type=Path, help="folder for the telemetry database and result.json")
    parser.add_argument("--timeout-s", type=float, default=400.0)
    args = parser.parse_args()
    if not (args.site / "myindex_RL.html").is_file():
        sys.exit(f"error: {args.site}: no myindex_RL.html (give the Pensieve repository's video_server folder)")
    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    db = args.out / "telemetry.sqlite"
    env = {**os.environ, "ABR_TELEMETRY_DB": str(db)}
    server = subprocess.Popen([sys.executable, "-m", "abr_cli.main", "serve", "--port", "8333"], env=env)
    static = subprocess.Popen(
        [sys.executable, "-m", "http.server", "8080", "--bind", "127.0.0.1", "--directory", str(args.site)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(6)
    started = time.monotonic()
    loads: dict[int, int] = {}
    answers: dict[int, list[str]] = {}
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=DEFAULT_CHROMIUM, headless=True, args=list(CHROMIUM_ARGS))
            pages = []
            for n in range(PAGES):
                page = browser.new_page()
                loads[n], answers[n] = 0, []
                page.on("console", lambda msg, n=n: answers[n].append(msg.text) if "GOT RESPONSE" in msg.text else None)
                page.on("framenavigated", lambda _frame, n=n: loads.__setitem__(n, loads[n] + 1))
                page.goto(PAGE)
                pages.append(page)
            deadline = started + args.timeout_s
            while time.monotonic() < deadline and min(loads.values()) < 2:  # loaded, then reloaded on REFRESH
                for page in pages:
                    with contextlib.suppress(Exception):
                        page.evaluate(f"() => {{ const v = document.querySelector('video'); "
                                      f"if (v) v.playbackRate = {PLAYBACK_RATE}; }}")  # fmt: skip
                time.sleep(2)
            browser.close()
    finally:
        static.terminate()
        server.terminate()
        server.wait(30)
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT session_id, chunk_index, quality FROM chunks ORDER BY id").fetchall()
    sessions: dict[str, list[int]] = {}
    for session_id, index, _ in rows:
        sessions.setdefault(session_id, []).append(index)
    result = {
        "seconds": round(time.monotonic() - started, 1),
        "reloaded_on_refresh": {n: loads[n] >= 2 for n in loads},
        "refresh_answered": {n: any("REFRESH" in a for a in answers[n]) for n in answers},
        "sessions": {
            sid: {"chunks": len(ix), "indices_0_to_n": ix == list(range(len(ix)))} for sid, ix in sessions.items()
        },
    }  # fmt: skip
    print(json.dumps(result, indent=1))
    (args.out / "result.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
