"""The players' shared core (resin-abr-core.js) run under Node with a fake page: what its reports carry.

Needs ``node``; skipped where it is absent. The browser tests (tests/test_player.py) play real players;
this checks the throughput prior a session reports, which those runs cannot see from outside.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[1] / "abr_server" / "player" / "static" / "resin-abr-core.js"

#: A page with local storage, a recording fetch and a video element that never fires; three sessions:
#: nothing known, then the first session's last throughput, then an explicit prior. Prints the reports.
SCRIPT = r"""
const vm = require("vm");
const fs = require("fs");
const storage = {};
const posted = [];
const localStorage = { getItem: (k) => (k in storage ? storage[k] : null), setItem: (k, v) => { storage[k] = v; } };
const context = {
  window: { localStorage },
  navigator: NAVIGATOR,
  fetch: (url, init) => { posted.push({ url, body: JSON.parse(init.body) }); return new Promise(() => {}); },
  console,
  Date,
};
vm.createContext(context);
vm.runInContext(fs.readFileSync(process.argv[1], "utf8"), context);
const core = context.window.ResinAbrCore;
const config = { bitrates_kbps: [300, 750, 1200, 1850, 2850, 4300], default_quality: 1, n_chunks: 4,
                 fallback_reservoir_s: 5, fallback_cushion_s: 10 };
const video = { addEventListener() {}, ended: false };
function play(sessionId, options) {
  const session = core.createSession(video, { config, mode: "server", sessionId, ...options });
  // 500,000 bytes in 1,000 ms: 4,000 kbit/s; then 250,000 bytes in 1,000 ms: 2,000 kbit/s.
  session.segmentLoaded({ index: 0, level: 1, bytes: 500000, requestStartMs: 1000, endMs: 2000, bufferS: 4 });
  session.segmentLoaded({ index: 1, level: 1, bytes: 250000, requestStartMs: 2000, endMs: 3000, bufferS: 8 });
}
play("first", {});
play("second", {});
play("third", { priorKbps: 1234 });
console.log(JSON.stringify({ posted, storage }));
"""


def run_core(navigator: str = "{}") -> dict[str, object]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node not installed: the player core is checked under Node")
    script = SCRIPT.replace("NAVIGATOR", navigator)
    out = subprocess.run([node, "-e", script, str(CORE)], capture_output=True, text=True, timeout=60, check=True)
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def priors(result: dict[str, object]) -> list[tuple[str, int, float | None]]:
    posted = result["posted"]
    assert isinstance(posted, list)
    return [(p["url"].split("/")[3], p["body"]["index"], p["body"].get("prior_throughput_kbps")) for p in posted]


def test_a_session_reports_the_previous_sessions_throughput_once() -> None:
    result = run_core()
    assert priors(result) == [
        ("first", 0, None), ("first", 1, None),  # nothing known yet
        ("second", 0, 2000), ("second", 1, None),  # the first session's last throughput, in the first report
        ("third", 0, 1234), ("third", 1, None),  # an explicit prior wins
    ]  # fmt: skip
    assert result["storage"] == {"resin-abr:last-throughput-kbps": "2000"}


def test_without_history_the_browsers_estimate_is_the_prior() -> None:
    result = run_core("{ connection: { downlink: 3.5 } }")  # Mbit/s, the Network Information API
    assert priors(result)[:2] == [("first", 0, 3500), ("first", 1, None)]
