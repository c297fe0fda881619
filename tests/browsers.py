"""What the browser tests need: ffmpeg, the system Chromium, the npm player libraries and Playwright."""

from __future__ import annotations

import shutil
from pathlib import Path

from abr_server.api.routes.player import PLAYER_DIR, VENDOR_FILES
from abr_server.lab.emulate import DEFAULT_CHROMIUM


def browser_missing() -> str | None:
    """Why the browser tests cannot run here (a reason to skip with), or None."""
    if shutil.which("ffmpeg") is None:
        return "ffmpeg not installed (apt-get install ffmpeg)"
    if not Path(DEFAULT_CHROMIUM).exists():
        return "Chromium not installed (apt-get install chromium)"
    missing = [name for name, inside in VENDOR_FILES.items() if not (PLAYER_DIR / "node_modules" / inside).is_file()]
    if missing:
        return f"player libraries not installed: {', '.join(missing)} (npm ci --prefix abr_server/player)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "playwright not installed"
    return None
