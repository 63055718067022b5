"""``SMART_APP_FAIL_ON_SKIP=1`` (set by ``make test``): a run with a skipped test or module fails and
lists what was skipped; xfails and runs without the variable are left alone."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

POLICY = Path(__file__).with_name("skip_policy.py")
TESTS = """
import pytest

def test_passes():
    pass

def test_skips():
    pytest.skip("chromium is missing")

@pytest.mark.xfail(reason="known", strict=True)
def test_expected_failure():
    assert False
"""


def run_pytest(directory: Path, fail_on_skip: str | None) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "SMART_APP_FAIL_ON_SKIP"}
    if fail_on_skip is not None:
        env["SMART_APP_FAIL_ON_SKIP"] = fail_on_skip
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(directory)],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def suite(tmp_path: Path) -> Path:
    shutil.copy(POLICY, tmp_path / "conftest.py")
    (tmp_path / "test_sample.py").write_text(TESTS)
    return tmp_path


def test_a_skip_fails_the_run_and_is_listed(suite: Path) -> None:
    done = run_pytest(suite, "1")
    assert done.returncode == pytest.ExitCode.TESTS_FAILED, done.stdout
    assert "1 skipped, so the run fails" in done.stdout
    assert "test_sample.py::test_skips" in done.stdout and "chromium is missing" in done.stdout


def test_a_skipped_module_fails_the_run(suite: Path) -> None:
    (suite / "test_sample.py").write_text('import pytest\npytest.skip("no redis", allow_module_level=True)\n')
    done = run_pytest(suite, "1")
    assert done.returncode == pytest.ExitCode.TESTS_FAILED, done.stdout
    assert "no redis" in done.stdout


@pytest.mark.parametrize("fail_on_skip", [None, "0"])
def test_without_the_variable_a_skip_is_only_reported(suite: Path, fail_on_skip: str | None) -> None:
    done = run_pytest(suite, fail_on_skip)
    assert done.returncode == pytest.ExitCode.OK, done.stdout
    assert "1 passed, 1 skipped, 1 xfailed" in done.stdout


def test_xfail_alone_does_not_fail_the_run(suite: Path) -> None:
    (suite / "test_sample.py").write_text(TESTS.replace('pytest.skip("chromium is missing")', "pass"))
    done = run_pytest(suite, "1")
    assert done.returncode == pytest.ExitCode.OK, done.stdout
