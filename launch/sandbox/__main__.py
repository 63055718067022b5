"""``python -m launch.sandbox [--host 127.0.0.1] [--port 8001]``: run the sandbox EHR (threaded
werkzeug server; a test fixture, not a production server)."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence

from werkzeug.serving import run_simple

from . import create_app


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m launch.sandbox", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--public-url", help="origin the sandbox is reached at (default http://HOST:PORT)")
    parser.add_argument(
        "--app-launch-url", help="the app's launch URL (default http://localhost:8000/launch)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides: dict[str, str] = {}
    if args.public_url:
        overrides["PUBLIC_URL"] = args.public_url
    elif "SANDBOX_PUBLIC_URL" not in os.environ:
        overrides["PUBLIC_URL"] = f"http://{args.host}:{args.port}"
    if args.app_launch_url:
        overrides["APP_LAUNCH_URL"] = args.app_launch_url
    app = create_app(overrides)
    print(
        f"Sandbox EHR: {app.config['PUBLIC_URL']}/ehr   FHIR base: {app.config['PUBLIC_URL']}/fhir",
        flush=True,
    )
    run_simple(args.host, args.port, app, threaded=True)


if __name__ == "__main__":
    main()
