"""``smart-app serve``: the production WSGI server (gunicorn), configured from the environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests

from launch.stack import serve_argv
from tests.servers import free_port, wait_until_answering

pytestmark = pytest.mark.e2e


def serve(tmp_path: Path, **env: str) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``smart-app serve`` with ``env`` added; returns the process and its base URL."""
    port = free_port()
    environment = {key: value for key, value in os.environ.items() if not key.startswith("SMART_APP_")}
    environment.update({"SMART_APP_INSTANCE_PATH": str(tmp_path), **env})
    process = subprocess.Popen(
        serve_argv(port, workers=2),
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    return process, f"http://127.0.0.1:{port}"


def wait_for(url: str, process: subprocess.Popen[bytes]) -> requests.Response:
    """The first answer from ``url`` once gunicorn's workers accept (ServerNotReady if it exits)."""
    return wait_until_answering(
        url, seconds=90, process=process, output=lambda: process.communicate()[0].decode()
    )


def test_serve_runs_the_app_under_gunicorn_with_settings_from_the_environment(tmp_path: Path) -> None:
    registrations = Path(__file__).resolve().parent.parent / "launch" / "registrations"
    process, url = serve(
        tmp_path,
        SMART_APP_SECRET_KEY="a-long-random-production-secret-for-this-test",
        SMART_APP_REGISTRATIONS_DIR=str(registrations),
    )
    try:
        chooser = wait_for(f"{url}/launch", process)
        assert chooser.status_code == 200
        assert "Local sandbox EHR" in chooser.text  # a registration from the deployment's directory
        assert chooser.headers["Cache-Control"] == "no-store"
        jwks = requests.get(f"{url}/.well-known/jwks.json", timeout=5).json()
        assert jwks["keys"] and all("d" not in key for key in jwks["keys"])  # public halves only
        refused = requests.get(f"{url}/launch", params={"iss": "https://unknown.example/fhir"}, timeout=5)
        assert refused.status_code == 400
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0].decode()
    assert "Booting worker" in output
    assert '"GET /launch"' in output and "unknown.example" not in output  # access log: paths only


def test_serve_refuses_the_development_secret(tmp_path: Path) -> None:
    process, _ = serve(tmp_path)
    output = process.communicate(timeout=60)[0].decode()
    assert process.returncode != 0
    assert "SMART_APP_SECRET_KEY" in output


def test_each_worker_freezes_its_heap_once_the_app_is_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    """What lives as long as the worker (the app, criteria, terminology) is kept out of collections."""
    import gc

    from smart_app.serve import gunicorn_app, settle_heap

    monkeypatch.setattr(sys, "argv", ["smart-app"])  # gunicorn reads the command line
    assert gunicorn_app("127.0.0.1", 8000, 2).cfg.post_worker_init is settle_heap
    before = gc.get_freeze_count()
    try:
        settle_heap()
        assert gc.get_freeze_count() > before
    finally:
        gc.unfreeze()


def test_each_worker_compiles_the_page_templates_before_its_first_request(tmp_path: Path) -> None:
    import gc
    from types import SimpleNamespace

    from smart_app import create_app
    from smart_app.serve import settle_heap

    app = create_app({"TESTING": True, "INSTANCE_PATH": str(tmp_path / "instance")})
    loaded: list[str] = []
    load = app.jinja_env.loader.load  # type: ignore[union-attr]

    def recording(environment: Any, name: str, globals: Any = None) -> Any:
        loaded.append(name)
        return load(environment, name, globals)

    app.jinja_env.loader.load = recording  # type: ignore[union-attr,method-assign]
    try:
        settle_heap(SimpleNamespace(wsgi=app))
    finally:
        gc.unfreeze()
    assert {"review.html", "base.html", "_macros.html", "error.html"} <= set(loaded)
    loaded.clear()
    app.jinja_env.get_template("review.html")
    assert loaded == []  # compiled once, kept
