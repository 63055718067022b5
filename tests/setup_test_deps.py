"""Install what the test suite drives and does not get from pip, then the test FHIR server's npm packages.

Run by ``make test`` before pytest. The programs come from Debian's packages: ``chromium`` (browser
tests), ``redis-server`` (shared sessions), ``haproxy`` (two-host tests), ``nodejs`` and ``npm`` (the
independent FHIR server of ``tests/fhir-server``). Missing ones are installed with apt-get when run as
root; when another program holds the apt/dpkg lock, this waits for it (up to ten minutes, saying who
holds it). Then ``npm ci`` installs ``tests/fhir-server`` into a cache keyed by its lock file
(``~/.cache/smart-app/fhir-server-<hash>``, or under ``$SMART_APP_CACHE``).

Every failure is one line on stderr and exit status 1: not root, no apt-get, a package that does not
install, npm failing. Nothing is skipped quietly, since a test without its program fails.

The npm install is also used by ``tests/medplum_server.py`` (``install_fhir_server``); this module
needs only the standard library, so it runs before the virtual environment has anything else.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

FHIR_SERVER_SOURCE = Path(__file__).resolve().parent / "fhir-server"
#: Debian package for each program the tests start (the program name as found on PATH).
PROGRAMS = {
    "chromium": "chromium",
    "redis-server": "redis-server",
    "haproxy": "haproxy",
    "node": "nodejs",
    "npm": "npm",
}
#: apt and dpkg take these with fcntl locks (apt-get(8), dpkg(1) "--force-lock").
APT_LOCKS = (
    Path("/var/lib/dpkg/lock-frontend"),
    Path("/var/lib/dpkg/lock"),
    Path("/var/lib/apt/lists/lock"),
    Path("/var/cache/apt/archives/lock"),
)
LOCK_WAIT_SECONDS = 600.0
APT_UPDATE_SECONDS = 900
APT_INSTALL_SECONDS = 1800
NPM_CI_SECONDS = 900
#: A finished install has this file; a half-finished one (killed npm) does not.
INSTALLED_MARKER = ".installed"


class SetupError(Exception):
    """A dependency that could not be installed; the message is the one line to print."""


def cache_root() -> Path:
    return Path(os.environ.get("SMART_APP_CACHE") or Path.home() / ".cache" / "smart-app")


# --- Debian programs -------------------------------------------------------------------------------
def missing_programs() -> list[str]:
    """The programs of PROGRAMS not on PATH (nor in /usr/sbin, which a non-root PATH may lack)."""
    return [
        program
        for program in PROGRAMS
        if shutil.which(program) is None and shutil.which(program, path="/usr/sbin:/sbin") is None
    ]


def lock_holder(locks: Sequence[Path] = APT_LOCKS) -> tuple[Path, int, str] | None:
    """The first of ``locks`` that another process holds, with its pid and command line, read from
    ``/proc/locks`` (proc(5): ``1: POSIX ADVISORY WRITE <pid> <major>:<minor>:<inode> 0 EOF``)."""
    try:
        table = Path("/proc/locks").read_text(encoding="utf-8")
    except OSError:
        return None
    holders: dict[str, int] = {}
    for line in table.splitlines():
        fields = line.split()
        if len(fields) > 5 and fields[4].isdigit():  # waiters ("1: -> POSIX ...") shift the fields
            holders[fields[5]] = int(fields[4])
    for path in locks:
        try:
            stat = path.stat()
        except OSError:
            continue
        key = f"{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}:{stat.st_ino}"
        pid = holders.get(key)
        if pid is not None and pid != os.getpid():
            return path, pid, _process_name(pid)
    return None


def _process_name(pid: int) -> str:
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return "an unknown program"
    return " ".join(command.replace("\0", " ").split())[:80] or "an unknown program"


def wait_for_apt_locks(until: float, locks: Sequence[Path] = APT_LOCKS, poll: float = 2.0) -> None:
    """Block until no program holds ``locks``, saying every 30 s who holds one; SetupError once
    ``until`` (a ``time.monotonic()`` value) has passed."""
    said: float | None = None
    while (holder := lock_holder(locks)) is not None:
        path, pid, name = holder
        now = time.monotonic()
        if now >= until:
            raise SetupError(f"{path} is still held by {name} (pid {pid}); gave up waiting for it")
        if said is None or now - said >= 30:
            print(f"setup: waiting for {path}, held by {name} (pid {pid})", file=sys.stderr, flush=True)
            said = now
        time.sleep(poll)


def run_apt(arguments: list[str], timeout: int, until: float) -> None:
    """Run apt-get, waiting for the locks first and again when apt-get still finds one taken."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    while True:
        wait_for_apt_locks(until)
        remaining = max(0, int(until - time.monotonic()))
        command = ["apt-get", "-o", f"DPkg::Lock::Timeout={remaining}", *arguments]
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise SetupError(f"apt-get {arguments[0]} did not finish within {timeout} s") from None
        if done.returncode == 0:
            return
        errors = [line for line in done.stderr.splitlines() if line.startswith("E:")] or [
            line for line in (done.stderr + done.stdout).splitlines() if line.strip()
        ][-1:]
        if any("lock" in line.lower() for line in errors) and time.monotonic() < until:
            time.sleep(2)  # taken between our check and apt-get's own: wait again
            continue
        raise SetupError(f"apt-get {' '.join(arguments)} failed: {errors[0] if errors else done.returncode}")


def install_programs(programs: list[str]) -> None:
    packages = sorted({PROGRAMS[program] for program in programs})
    if not shutil.which("apt-get"):
        raise SetupError(
            f"missing {', '.join(programs)} and there is no apt-get to install them; install "
            f"the packages {' '.join(packages)} and run again"
        )
    if os.geteuid() != 0:
        raise SetupError(
            f"missing {', '.join(programs)}; run as root (or: sudo apt-get install -y "
            f"{' '.join(packages)}) and run again"
        )
    print(f"setup: installing {' '.join(packages)} with apt-get", file=sys.stderr, flush=True)
    until = time.monotonic() + LOCK_WAIT_SECONDS
    run_apt(["update", "-qq"], APT_UPDATE_SECONDS, until)
    run_apt(["install", "-y", "-qq", "--no-install-recommends", *packages], APT_INSTALL_SECONDS, until)
    still = missing_programs()
    if still:
        raise SetupError(
            f"apt-get installed {' '.join(packages)} but {', '.join(still)} is still not on PATH"
        )


# --- the test FHIR server's npm packages -----------------------------------------------------------
def fhir_server_key(source: Path = FHIR_SERVER_SOURCE) -> str:
    lock = source / "package-lock.json"
    if not lock.is_file():
        raise SetupError(f"{lock} is missing")
    return hashlib.sha256(lock.read_bytes()).hexdigest()[:16]


def install_fhir_server(source: Path = FHIR_SERVER_SOURCE) -> Path:
    """The directory holding ``node_modules`` for ``source``'s package-lock.json, running ``npm ci``
    into the cache when it is not there yet. SetupError when npm is missing or fails."""
    target = cache_root() / f"fhir-server-{fhir_server_key(source)}"
    if (target / INSTALLED_MARKER).is_file():
        return target
    npm = shutil.which("npm")
    if npm is None:
        raise SetupError(
            "npm is not installed, so the test FHIR server (tests/fhir-server) cannot be "
            "installed: run `make test` as root or apt-get install nodejs npm"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(
        prefix=".fhir-server-", dir=target.parent, ignore_cleanup_errors=True
    ) as name:
        scratch = Path(name)
        for file in ("package.json", "package-lock.json"):
            shutil.copy2(source / file, scratch / file)
        try:
            done = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=scratch,
                capture_output=True,
                text=True,
                timeout=NPM_CI_SECONDS,
            )
        except subprocess.TimeoutExpired:
            raise SetupError(
                f"npm ci for tests/fhir-server did not finish within {NPM_CI_SECONDS} s"
            ) from None
        if done.returncode != 0:
            lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
            raise SetupError(
                f"npm ci for tests/fhir-server failed: {lines[-1] if lines else done.returncode}"
            )
        (scratch / INSTALLED_MARKER).write_text("npm ci\n", encoding="utf-8")
        if (target / INSTALLED_MARKER).is_file():  # a concurrent run finished first
            return target
        shutil.rmtree(target, ignore_errors=True)  # an unfinished install in the way
        scratch.rename(target)
    return target


def node_for(install: Path) -> str:
    """Node 22 from the npm ``node`` package of the install, else the ``node`` on PATH."""
    bundled = install / "node_modules" / ".bin" / "node"
    if bundled.exists():
        return str(bundled)
    node = shutil.which("node")
    if node is None:
        raise SetupError("node is not installed and the test FHIR server's install has no bundled node")
    return node


def main() -> int:
    try:
        missing = missing_programs()
        if missing:
            install_programs(missing)
        node_for(install_fhir_server())
    except SetupError as exc:
        print(f"setup_test_deps: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("setup_test_deps: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # never a traceback: one line that says what failed
        print(f"setup_test_deps: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
