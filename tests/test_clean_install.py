"""The product as a user installs it: a wheel and an sdist built from the repository, the wheel installed
into a fresh virtual environment, and the commands run from a directory with no source tree in sight."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.servers import free_port, wait_until_answering

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "launch" / "data" / "patient-jkowalski.json"


def run(*argv: str | Path, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    result = subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{argv}: {result.stdout}\n{result.stderr}"
    return result.stdout


def clean_env() -> dict[str, str]:
    """The environment without anything that points back into the repository."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SMART_APP_", "PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p)
    return env


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "build", "--wheel", "--sdist", "--outdir", dist, ROOT, cwd=ROOT, timeout=600)
    return dist


@pytest.fixture(scope="module")
def installed(built: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """(the fresh venv's bin directory, a working directory holding only a copied sample bundle)."""
    home = tmp_path_factory.mktemp("user")
    venv.create(home / "venv", with_pip=True)
    bin_dir = home / "venv" / "bin"
    wheel = next(built.glob("*.whl"))
    run(bin_dir / "python", "-m", "pip", "install", "--quiet", wheel, cwd=home, env=clean_env(), timeout=900)
    work = home / "work"
    work.mkdir()
    shutil.copy(SAMPLE, work / "patient.json")
    yield bin_dir, work


def test_the_wheel_carries_the_data_and_not_the_sandbox(built: Path) -> None:
    names = zipfile.ZipFile(next(built.glob("*.whl"))).namelist()
    assert not any(n.split("/")[0] == "launch" for n in names)
    assert any(n.startswith("smart_app/data/criteria/") and n.endswith("/release.json") for n in names)
    assert "smart_app/data/profiles/package.json" in names
    assert any(n.startswith("smart_app/web/templates/") for n in names)
    with tarfile.open(next(built.glob("*.tar.gz"))) as sdist:
        assert any(n.endswith("/smart_app/data/profiles/.index.json") for n in sdist.getnames())


def test_assess_and_draft_from_the_installed_wheel(installed: tuple[Path, Path]) -> None:
    bin_dir, work = installed
    env = clean_env()
    assessment = json.loads(
        run(bin_dir / "smart-app", "assess", "--bundle", "patient.json", "--json", cwd=work, env=env)
    )
    assert assessment["classification"] and assessment["criteria"]["version"]
    bundle = json.loads(run(bin_dir / "smart-app", "draft", "--bundle", "patient.json", cwd=work, env=env))
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "transaction"
    check = run(
        bin_dir / "python", "-c", "import smart_app, sys; print(smart_app.__file__)", cwd=work, env=env
    )
    assert str(ROOT) not in check and "site-packages" in check


def test_readiness_check_from_the_installed_wheel(installed: tuple[Path, Path]) -> None:
    """`smart-app check` runs without the source tree and reports an unreachable EHR as not ready."""
    bin_dir, work = installed
    closed = f"http://127.0.0.1:{free_port()}/fhir"
    result = subprocess.run(
        [bin_dir / "smart-app", "check", closed, "--json"],
        cwd=work,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    report = json.loads(result.stdout)
    assert result.returncode != 0 and report["status"] == "not-ready"
    assert {c["id"]: c["status"] for c in report["checks"]}["smart-configuration"] == "fail"


def test_serve_from_the_installed_wheel(installed: tuple[Path, Path]) -> None:
    bin_dir, work = installed
    port = free_port()
    env = {
        **clean_env(),
        "SMART_APP_SECRET_KEY": "a-long-random-secret-for-the-clean-install-test",
        "SMART_APP_INSTANCE_PATH": str(work / "instance"),
    }
    process = subprocess.Popen(
        [bin_dir / "smart-app", "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}/.well-known/jwks.json"
        wait_until_answering(url, process=process, seconds=60)
        keys = requests.get(url, timeout=5).json()["keys"]
        assert keys and all("d" not in key for key in keys)
    finally:
        process.terminate()
        process.communicate(timeout=30)
