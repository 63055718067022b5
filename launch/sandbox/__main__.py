"""``python -m launch.sandbox [--host 127.0.0.1] [--port 8001]``: run the sandbox EHR (threaded
werkzeug server; a test fixture, not a production server). The same as ``back-mice-sandbox serve``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from launch.cli import add_serve_arguments


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.sandbox", description=__doc__)
    add_serve_arguments(parser)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
