"""``SMART_APP_FAIL_ON_SKIP=1`` (set by ``make test``): a run in which any test was skipped fails, since
there a skip means that something the suite needs was not installed. ``tests/conftest.py`` applies it."""

from __future__ import annotations

import os

import pytest

#: Set to 1 by ``make test``: a run in which any test was skipped fails, since there a skip means that
#: something the suite needs was not installed.
FAIL_ON_SKIP = "SMART_APP_FAIL_ON_SKIP"


class SkipsFailTheRun:
    """Collects skipped tests and modules (not xfails) and turns a passing run into a failed one."""

    def __init__(self) -> None:
        self.skipped: list[str] = []

    def _note(self, report: pytest.CollectReport | pytest.TestReport) -> None:
        if report.skipped and not hasattr(report, "wasxfail"):
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            self.skipped.append(f"{report.nodeid}: {reason}")

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        self._note(report)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._note(report)

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.skipped and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if self.skipped:
            terminalreporter.section(
                f"{FAIL_ON_SKIP}=1: {len(self.skipped)} skipped, so the run fails", red=True
            )
            for line in self.skipped:
                terminalreporter.line(line)


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get(FAIL_ON_SKIP) == "1":
        config.pluginmanager.register(SkipsFailTheRun(), "smart-app-skips-fail-the-run")
