"""The README works as written: ``make demo`` from the quick start serves the demo, and every command block of
the "Command line" section runs against it, copied as it stands, from a directory laid out like a clone."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import wait_until_answering

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")

pytestmark = pytest.mark.e2e


def section(title: str) -> str:
    start = README.index(f"## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else None]


def shell_blocks(title: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", section(title), re.S)


def test_the_quick_start_names_the_two_commands() -> None:
    assert shell_blocks("Quick start") == [
        "make demo    # sets up .venv, starts the sandbox EHR and the app, prints the URL to open\n"
        "make test    # sets up .venv, runs linters, type checks and the whole test suite\n"
    ]


@pytest.fixture(scope="module")
def demo() -> Iterator[None]:
    """``make demo``, as the quick start says (the environment already set up by ``make test``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMART_APP_")}
    process = subprocess.Popen(
        ["make", "demo"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_until_answering("http://127.0.0.1:8001/ehr", process=process, seconds=120)
        wait_until_answering("http://localhost:8000/.well-known/jwks.json", process=process, seconds=60)
        yield
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()


@pytest.mark.parametrize("block", shell_blocks("Command line"))
def test_every_command_line_block_runs_as_written(demo: None, block: str, tmp_path: Path) -> None:
    """Each block from a fresh directory that holds what a clone holds (.venv and launch/ by link)."""
    for name in (".venv", "launch"):
        (tmp_path / name).symlink_to(ROOT / name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMART_APP_")}
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = f"--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr}"
    assert result.returncode == 0, f"{block}\n{output}"
