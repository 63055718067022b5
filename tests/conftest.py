"""Suite-wide fixtures and hooks.

- ``app``, ``client``, ``ehr``, ``launch_actions``: the app under the Flask test client, with a fake EHR
  (``responses``) and helpers that start a launch as the callback would.
- ``sandbox``: the sandbox EHR as a real HTTP server on loopback.
- ``live``, ``chromium``, ``page``: the sandbox and the app as two sites, and Debian's Chromium.
- ``medplum_pool``, ``medplum``: the independent FHIR server of ``tests/fhir-server``.
- ``hostile``: the misbehaving EHR of ``tests/hostile_ehr.py`` and the app over HTTP (one per module,
  its faults cleared before each test); ``fresh_hostile``, ``fresh_hostile_sequential``: one per test,
  with an empty chart, writing by transaction or one conditional create at a time.
The sandbox's own tests (``tests/sandbox/``) have their in-process fixtures in ``tests/sandbox/conftest.py``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import responses
from flask import Flask
from flask.testing import FlaskClient

from launch.stack import Redis, StackError
from smart_app.smart.launch import Launch
from tests import skip_policy
from tests.audit_fixtures import Sandbox, http_sandbox
from tests.browser import CHROMIUM, CHROMIUM_ARGS, OUTPUT_DIR, Servers, start_servers, stop_servers
from tests.hostile_ehr import HostileStack, start_hostile
from tests.launch_support import launch_of, start_launch
from tests.medplum_server import MedplumPool, MedplumServer, run_directory
from tests.setup_test_deps import SetupError, install_fhir_server, node_for
from tests.views_fixtures import ALL_SCOPES, FHIR_BASE, FakeEhr


def pytest_configure(config: pytest.Config) -> None:
    skip_policy.pytest_configure(config)


# -- the app under the Flask test client ------------------------------------------------------------
@pytest.fixture
def app(tmp_path: Path) -> Flask:
    """The app with one registered EHR (``views_fixtures.FHIR_BASE``), CSRF off, plain-http cookies."""
    from smart_app import create_app

    regs = tmp_path / "registrations"
    regs.mkdir()
    registration = {
        "id": "view-test",
        "name": "Test EHR",
        "iss": FHIR_BASE,
        "client_id": "view-test",
        "client_type": "public",
        "scopes": ALL_SCOPES,
        "frame_ancestors": ["https://ehr.test"],
    }
    (regs / "view-test.json").write_text(json.dumps(registration))
    return create_app(
        {
            "TESTING": True,
            "WTF_CSRF_ENABLED": False,
            "SESSION_COOKIE_SAMESITE": "Lax",
            "SESSION_COOKIE_SECURE": False,
            "REGISTRATIONS_DIRS": [str(regs)],
            "FHIR_MAX_RETRIES": 0,
            "INSTANCE_PATH": str(tmp_path / "instance"),
        }
    )


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    """Outbound HTTP faked with ``responses``: a request nothing is registered for fails."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


@pytest.fixture
def ehr() -> Iterator[FakeEhr]:
    """The EHR's FHIR API faked with ``responses``; it records what is written."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield FakeEhr(rsps)


class LaunchActions:
    """Start a launch in the client's session as the callback does, and read it back."""

    def __init__(self, app: Flask, client: FlaskClient) -> None:
        self.app = app
        self.client = client

    def start(self, **fields: Any) -> Launch:
        return start_launch(self.app, self.client, **fields)

    def current(self) -> Launch | None:
        return launch_of(self.app, self.client)


@pytest.fixture
def launch_actions(app: Flask, client: FlaskClient) -> LaunchActions:
    return LaunchActions(app, client)


# -- Redis, as the shared launch and session store -------------------------------------------------------
@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Redis]:
    """A ``redis-server`` of the test's own, in memory only, started as the benchmark stack starts one."""
    try:
        server = Redis(tmp_path)
    except StackError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: Redis) -> str:
    return redis_server.url


# -- the sandbox EHR over HTTP --------------------------------------------------------------------------
@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    with http_sandbox(tmp_path) as box:
        yield box


# -- a browser on the sandbox and the app ----------------------------------------------------------------
@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """The sandbox EHR and the app, running for the test module."""
    pair = start_servers(tmp_path_factory.mktemp("live"))
    try:
        yield pair
    finally:
        stop_servers(pair)


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    """Debian's Chromium driven by Playwright (never downloaded: ``executable_path``)."""
    from playwright.sync_api import sync_playwright

    if not os.path.exists(CHROMIUM):
        pytest.fail(
            f"{CHROMIUM} is missing: run tests/setup_test_deps.py as root (apt-get install chromium)",
            pytrace=False,
        )
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(chromium: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh browser context at the EHR's iframe size; a screenshot is saved after each test."""
    context = chromium.new_context(viewport={"width": 1024, "height": 800})
    context.set_default_timeout(15000)
    pg = context.new_page()
    try:
        yield pg
    finally:
        OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
        name = request.node.name.replace("/", "_").replace("[", "-").replace("]", "")
        try:
            pg.wait_for_timeout(250)  # let the cross-origin iframe paint before the capture
            pg.screenshot(path=str(OUTPUT_DIR / f"{name}.png"), full_page=True)
        finally:
            context.close()


# -- the independent FHIR server ------------------------------------------------------------------------
@pytest.fixture(scope="session")
def medplum_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MedplumPool]:
    """Servers for the session; the tests fail with the reason when npm or node is missing."""
    try:
        install = install_fhir_server()
        node = node_for(install)
    except SetupError as exc:
        pytest.fail(f"the test FHIR server is not available: {exc}", pytrace=False)
    pool = MedplumPool(run_directory(install, tmp_path_factory.mktemp("fhir-server")), node)
    try:
        pool.get()
        yield pool
    finally:
        pool.stop()


@pytest.fixture
def medplum(medplum_pool: MedplumPool) -> MedplumServer:
    """A running FHIR server (shared by up to ``MedplumPool.uses`` tests)."""
    return medplum_pool.get()


# -- the misbehaving EHR ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hostile_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostileStack]:
    running = start_hostile(tmp_path_factory.mktemp("hostile"))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def hostile(hostile_stack: HostileStack) -> HostileStack:
    """The hostile EHR and the app, with no fault switched on and the default budgets."""
    hostile_stack.reset()
    return hostile_stack


@pytest.fixture
def fresh_hostile(tmp_path: Path) -> Iterator[HostileStack]:
    """A hostile EHR of its own, whose chart holds nothing the app wrote (for write tests)."""
    running = start_hostile(tmp_path)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def fresh_hostile_sequential(tmp_path: Path) -> Iterator[HostileStack]:
    """As ``fresh_hostile``, for a registration that writes one conditional create at a time."""
    running = start_hostile(tmp_path, writeback={"mode": "sequential", "assessment_as": "ClinicalImpression"})
    try:
        yield running
    finally:
        running.stop()
