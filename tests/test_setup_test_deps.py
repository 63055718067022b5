"""``tests/setup_test_deps.py``: waits for a held apt/dpkg lock (bounded, naming the holder) and reports
every failure as one line on stderr with a non-zero exit, never a traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import setup_test_deps
from tests.setup_test_deps import SetupError, lock_holder, wait_for_apt_locks

HOLD = """
import fcntl, sys, time
lock = open(sys.argv[1], "w")
fcntl.lockf(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what apt and dpkg take (F_SETLK)
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


@pytest.fixture
def held_lock(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    """A lock file held by another process for up to 30 s (released when the test ends)."""
    path = tmp_path / "lock-frontend"
    path.touch()
    with subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path), "30"], stdout=subprocess.PIPE, text=True
    ) as holder:
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
            yield path, holder
        finally:
            holder.kill()


def test_lock_holder_names_the_process_that_holds_the_lock(
    held_lock: tuple[Path, subprocess.Popen[str]],
) -> None:
    path, holder = held_lock
    found = lock_holder([Path("/nonexistent/lock"), path])
    assert found is not None
    assert found[:2] == (path, holder.pid) and "fcntl" in found[2]


def test_lock_holder_is_none_for_a_free_lock(tmp_path: Path) -> None:
    free = tmp_path / "lock"
    free.touch()
    assert lock_holder([free]) is None


def test_waiting_gives_up_at_the_deadline_naming_the_holder(
    held_lock: tuple[Path, subprocess.Popen[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, holder = held_lock
    started = time.monotonic()
    with pytest.raises(SetupError, match=rf"{path} is still held by .* \(pid {holder.pid}\)"):
        wait_for_apt_locks(started + 0.5, locks=[path], poll=0.1)
    assert 0.5 <= time.monotonic() - started < 5
    assert f"waiting for {path}" in capsys.readouterr().err


def test_waiting_ends_when_the_lock_is_released(
    held_lock: tuple[Path, subprocess.Popen[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, holder = held_lock
    release = threading.Timer(0.5, holder.kill)
    release.start()
    try:
        wait_for_apt_locks(time.monotonic() + 20, locks=[path], poll=0.1)
    finally:
        release.join()
    assert holder.wait(timeout=10) != 0 and lock_holder([path]) is None
    assert f"waiting for {path}" in capsys.readouterr().err


def test_missing_programs_without_root_fail_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(setup_test_deps.PROGRAMS, "no-such-program-for-tests", "no-such-package")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert setup_test_deps.main() == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no-such-program-for-tests" in err and "root" in err
    assert "Traceback" not in err


def test_npm_missing_fails_in_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SMART_APP_CACHE", str(tmp_path))  # nothing installed there
    monkeypatch.setattr(setup_test_deps, "missing_programs", lambda: [])
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name: None if name == "npm" else real_which(name))
    assert setup_test_deps.main() == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("setup_test_deps: npm is not installed")


def test_the_script_reports_an_unexpected_error_without_a_traceback(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.write_text("a file where the cache directory should be")
    done = subprocess.run(
        [sys.executable, str(Path(setup_test_deps.__file__))],
        env={**os.environ, "SMART_APP_CACHE": str(cache)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("setup_test_deps: ")
    assert "Traceback" not in done.stderr
