"""Install the system programs the test suite drives, when missing: Debian's Chromium and Redis.

Run by ``make test`` before pytest. Needs root and apt-get to install; elsewhere it only reports,
and the tests that need a missing program are skipped with that reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

NEEDED = {"chromium": "/usr/bin/chromium", "redis-server": "redis-server"}


def missing() -> list[str]:
    return [package for package, program in NEEDED.items() if not shutil.which(program)]


def main() -> int:
    packages = missing()
    if not packages:
        return 0
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        print(
            f"note: not installed: {', '.join(packages)} (tests that need them are skipped)", file=sys.stderr
        )
        return 0
    print(f"installing {', '.join(packages)} with apt-get", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages], check=True, env=env
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
