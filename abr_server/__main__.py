"""``python -m abr_server``: the decision service, configured by ``ABR_*`` environment variables.

The same server as ``abr serve`` without the CLI's options (every setting is an environment variable,
`abr_server.settings.Settings`); `abr_server.lab.launcher` starts it this way.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from abr_common.errors import problems
from abr_server.run import preflight, run_server
from abr_server.settings import Settings


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the listening options, validate the settings of the environment, then serve; the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m abr_server", description="The decision service (settings: ABR_* variables)."
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    parser.add_argument("--port", type=int, default=8333, help="TCP port")
    parser.add_argument("--workers", type=int, default=1, help="server processes (each with its own sessions)")
    parser.add_argument("--log-level", default="warning", help="uvicorn log level")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    try:
        settings = Settings()  # fail here, once, rather than in every worker
    except ValidationError as err:
        print(f"abr_server: invalid ABR_* settings: {problems(err)}", file=sys.stderr)
        return 2
    try:
        preflight(settings, args.host, args.port)
    except ValueError as err:
        print(f"abr_server: {err}", file=sys.stderr)
        return 2
    run_server(host=args.host, port=args.port, workers=args.workers, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
