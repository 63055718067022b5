"""Browser-test fixtures: the sandbox EHR and the app as real HTTP servers, and Debian's Chromium.

The servers come from ``tests/servers.py`` (the lead's harness): the sandbox listens on ``127.0.0.1``
and the app on ``localhost`` (two host names, so the app really runs
in a cross-site iframe, as inside an EHR). Chromium counts ``http://localhost`` as a secure context, so the
app's ``SameSite=None; Secure`` session cookie is sent from inside the iframe.

Import ``live_fixture``, ``chromium_fixture`` and ``page_fixture`` into a test module (registered as
``live``, ``chromium`` and ``page``); they need
``playwright`` (a test dependency in pyproject.toml) and ``/usr/bin/chromium`` (installed by
``tests/setup_test_deps.py``), and fail with the reason when Chromium is missing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
OUTPUT_DIR = Path(__file__).resolve().parent.parent / "test-output" / "browser"

#: Everything the review and write-back need (SMART App Launch 2.x v2 syntax). Written types also get
#: ``rs``: the sandbox checks read/search permission when a conditional create (``ifNoneExist``)
#: matches a resource that already exists, i.e. on every repeated write.
SCOPES = (
    "launch openid fhirUser "
    "patient/Patient.rs patient/Condition.rs patient/Procedure.rs "
    "patient/MedicationStatement.rs patient/MedicationRequest.rs patient/Observation.crs "
    "patient/ClinicalImpression.crs patient/ServiceRequest.crs patient/DetectedIssue.crs "
    "patient/Provenance.crs patient/Device.crs patient/DocumentReference.crs"
).split()


@dataclass
class Servers:
    """The running pair: the sandbox EHR (``ehr_url``) and the app (``app_url``)."""

    ehr_url: str
    app_url: str
    iss: str
    sandbox: Any
    app: Any
    stack: Any


def partitioned_cookies(app: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``Partitioned`` (CHIPS) to a ``SameSite=None`` cookie when the app did not.

    Chromium blocks unpartitioned third-party cookies in Playwright's (incognito) contexts, so a
    ``SameSite=None; Secure`` cookie alone is dropped inside the EHR iframe. flask-session 0.8 ignores
    ``SESSION_COOKIE_PARTITIONED``; until the app sets the attribute itself, this middleware does, and
    once it does, this is a no-op.
    """

    def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        def patched(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            def needs(k: str, v: str) -> bool:
                low = v.lower()
                return k.lower() == "set-cookie" and "samesite=none" in low and "partitioned" not in low

            fixed = [(k, f"{v}; Partitioned") if needs(k, v) else (k, v) for k, v in headers]
            return start_response(status, fixed, exc_info)

        return app(environ, patched)

    return wsgi


def start_servers(tmp: Path, *, scopes: list[str] | None = None, sandbox_config: dict[str, Any] | None = None,
                  app_config: dict[str, Any] | None = None) -> Servers:
    """Start both servers with the lead's harness (``tests/servers.py``), configured for a browser: the
    session cookie is ``SameSite=None; Secure`` (Chromium treats ``http://localhost`` as secure)."""
    from tests.servers import start_stack

    stack = start_stack(
        tmp,
        scopes=scopes or SCOPES,
        sandbox_config=sandbox_config,
        app_config={"SESSION_COOKIE_SAMESITE": "None", "SESSION_COOKIE_SECURE": True, **(app_config or {})},
    )
    stack.app_server.lazy.app = partitioned_cookies(stack.app)
    return Servers(ehr_url=stack.sandbox.url, app_url=stack.app_url, iss=stack.fhir_base,
                   sandbox=stack.sandbox_app, app=stack.app, stack=stack)


def stop_servers(servers: Servers) -> None:
    servers.stack.stop()


def app_frame(pg: Any) -> Any:
    """The app's iframe inside the sandbox EHR page."""
    return pg.frame_locator("iframe")


def app_document(page: Any, app_url: str) -> Any:
    """The app's document (a Playwright ``Frame``) inside the EHR page."""
    return next(f for f in page.frames if f.url.startswith(app_url))


def save_app_screenshot(page: Any, app_url: str, name: str) -> Path:
    """A screenshot of the whole app page inside the EHR frame, under test-output/browser/app-<name>.png:
    for the capture the iframe is made as tall as the app's page (and the window tall enough to paint
    it), then both are restored."""
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    frame = app_document(page, app_url)
    height = int(frame.evaluate("document.documentElement.scrollHeight"))
    iframe = page.locator("iframe")
    viewport = page.viewport_size
    before = iframe.evaluate("f => f.style.height")
    top = int(iframe.evaluate("f => f.getBoundingClientRect().top + window.scrollY"))
    page.set_viewport_size({"width": viewport["width"], "height": top + height + 40})
    iframe.evaluate(f"f => {{ f.style.height = '{height + 4}px'; }}")
    page.wait_for_timeout(200)
    path = OUTPUT_DIR / f"app-{name}.png"
    try:
        iframe.screenshot(path=str(path))
    finally:
        iframe.evaluate(f"f => {{ f.style.height = {before!r}; }}")
        page.set_viewport_size(viewport)
    return path
