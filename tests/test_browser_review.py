"""The review page in a real browser : Debian's Chromium, driven by
Playwright, opens the sandbox EHR on 127.0.0.1, which launches the app from localhost in a cross-site
iframe. Each test saves a full-page screenshot under test-output/browser/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.browser import (
    SCOPES,
    Servers,
    app_frame,
    start_servers,
    stop_servers,
)

pytestmark = pytest.mark.e2e

#: One sandbox patient per classification (tests/cases/9xx-patient-*.json).
PATIENTS = {
    "evance": "Red flags: urgent work-up",
    "tokafor": "Not consistent with back mice",
    "hmueller": "Back mice unlikely",
    "rsantos": "Back mice confirmed by diagnostic injection",
    "jkowalski": "Probable back mice",
    "apatel": "Possible back mice",
    "dnguyen": "Insufficient data",
}


def open_chart(page: Any, live: Servers, patient_id: str) -> Any:
    """EHR patient list → "Open chart and launch app" → the app's review page in the iframe."""
    page.goto(f"{live.ehr_url}/ehr")
    page.locator(f"button[name=patient][value='{patient_id}']").click()
    frame = app_frame(page)
    frame.locator("h1#headline").wait_for()
    for app_document in (f for f in page.frames if f.url.startswith(live.app_url)):
        app_document.wait_for_load_state("load")  # stylesheets applied before colours are measured
    return frame


@pytest.mark.parametrize("patient_id", sorted(PATIENTS))
def test_review_for_each_classification(page: Any, live: Servers, patient_id: str) -> None:
    frame = open_chart(page, live, patient_id)
    assert PATIENTS[patient_id] in frame.locator(".headline .badge-class").inner_text()
    assert frame.locator("h1").count() == 1
    assert frame.locator("#criteria-title").is_visible()
    # the app really runs cross-site: iframe from localhost inside the 127.0.0.1 EHR page
    src = page.locator("iframe").get_attribute("src")
    assert src.startswith(live.app_url)
    if patient_id == "evance":
        flag = frame.locator(".flag-block")
        assert flag.first.is_visible()
        assert "Procedure suggestion withheld" in flag.first.inner_text()


def test_write_draft_then_result(page: Any, live: Servers) -> None:
    frame = open_chart(page, live, "jkowalski")
    assert frame.locator(".flag-warn").count() >= 1  # WARN shown above the suggestion
    frame.get_by_role("button", name="Write draft to chart").click()
    frame.locator("h1#result-title").wait_for()
    assert frame.locator("h1#result-title").inner_text() == "Draft written to the chart"
    table = frame.locator("table.written").inner_text()
    for rtype in ("ClinicalImpression", "ServiceRequest", "DetectedIssue", "Provenance"):
        assert rtype in table
    # writing again from a fresh review creates nothing new
    frame.get_by_role("link", name="Back to the review").click()
    frame.get_by_role("button", name="Write draft to chart").click()
    frame.locator("h1#result-title").wait_for()
    assert "created" not in frame.locator("table.written tbody").inner_text()


def test_red_flag_patient_writes_no_service_request(page: Any, live: Servers) -> None:
    frame = open_chart(page, live, "evance")
    assert "No ServiceRequest is in this draft" in frame.locator("section.draft").inner_text()
    frame.get_by_role("button", name="Write draft to chart").click()
    frame.locator("h1#result-title").wait_for()
    table = frame.locator("table.written").inner_text()
    assert "DetectedIssue" in table
    assert "ServiceRequest" not in table


def test_exam_capture_moves_insufficient_to_probable(page: Any, live: Servers) -> None:
    frame = open_chart(page, live, "dnguyen")
    assert "Insufficient data" in frame.locator(".badge-class").inner_text()
    form = frame.locator("form.exam-form")
    form.get_by_role("radio", name="Present").check()
    form.get_by_label("Site of the nodule").select_option("posterior-iliac-crest")
    form.get_by_label("Side").select_option("left")
    form.get_by_role("checkbox", name="Mobile").check()
    form.locator("input[name=pain_reproduced][value=yes]").check()
    form.locator("input[name=neuro][value=no]").check()
    form.get_by_role("button", name="Record exam and reassess").click()
    frame.locator(".flash-success").wait_for()
    assert "Exam saved to the chart" in frame.locator(".flash-success").inner_text()
    assert "Probable back mice" in frame.locator(".badge-class").inner_text()


def app_frame_handle(page: Any, live: Servers) -> Any:
    return next(f for f in page.frames if f.url.startswith(live.app_url))


def _active_id(frame_handle: Any) -> str:
    return str(frame_handle.evaluate("document.activeElement ? document.activeElement.id : ''"))


def test_keyboard_only_write_back(page: Any, live: Servers) -> None:
    open_chart(page, live, "apatel")
    frame_handle = app_frame_handle(page, live)
    page.locator("iframe").focus()
    for _ in range(300):
        page.keyboard.press("Tab")
        if _active_id(frame_handle) == "write-draft":
            break
    else:
        pytest.fail("the write button is not reachable with Tab")
    outline = frame_handle.evaluate(
        "(() => { const s = getComputedStyle(document.activeElement);"
        " return [s.outlineStyle, s.outlineWidth]; })()"
    )
    assert outline[0] != "none" and outline[1] != "0px", outline
    page.keyboard.press("Enter")
    app_frame(page).locator("h1#result-title").wait_for()
    assert app_frame(page).locator("h1#result-title").inner_text() == "Draft written to the chart"


def test_accessible_structure_and_no_horizontal_scroll_at_800(page: Any, live: Servers) -> None:
    page.set_viewport_size({"width": 800, "height": 600})
    open_chart(page, live, "jkowalski")
    frame_handle = app_frame_handle(page, live)
    report = frame_handle.evaluate(
        """(() => {
          const doc = document.documentElement;
          const unlabelled = [...document.querySelectorAll('input, select, textarea')]
            .filter(el => el.type !== 'hidden' && el.labels.length === 0 && !el.getAttribute('aria-label'))
            .map(el => el.name);
          const levels = [...document.querySelectorAll('h1, h2, h3, h4')].map(h => Number(h.tagName[1]));
          const jumps = levels.filter((l, i) => i > 0 && l > levels[i - 1] + 1);
          return {scroll: doc.scrollWidth - doc.clientWidth, unlabelled, levels, jumps,
                  lang: doc.lang, main: document.querySelectorAll('main').length};
        })()"""
    )
    assert report["scroll"] <= 0, report
    assert report["unlabelled"] == [], report
    assert report["levels"][0] == 1 and report["jumps"] == [], report
    assert report["lang"] == "en" and report["main"] == 1


# --- accessibility: axe-core (axe-playwright-python bundles axe-core; it runs offline) ------------------
#: axe impacts that fail the test; "minor" and "moderate" are reported by axe but not gating here.
AXE_BLOCKING = ("serious", "critical")


def axe_violations(frame_handle: Any) -> list[dict[str, Any]]:
    """Serious and critical axe-core violations in the app's iframe document (WCAG 2.x A/AA rules and
    axe's best practices). Every ``<details>`` is opened first, so the evidence and the raw FHIR JSON
    behind the toggles are checked too (axe skips hidden content)."""
    from axe_playwright_python.sync_playwright import Axe

    frame_handle.evaluate("document.querySelectorAll('details').forEach(d => { d.open = true; })")
    results = Axe().run(frame_handle)
    violations = results.response["violations"]
    return [v for v in violations if v.get("impact") in AXE_BLOCKING]


def explain(violations: list[dict[str, Any]]) -> str:
    lines = []
    for v in violations:
        lines.append(f"{v['id']} ({v['impact']}): {v['help']} [{v.get('helpUrl', '')}]")
        for node in v.get("nodes", [])[:5]:
            summary = " ".join(str(node.get("failureSummary", "")).split())
            lines.append(f"    {node.get('target')}: {summary[:300]}")
    return "\n".join(lines)


def default_style(page: Any) -> None:
    """Serve the app's /theme.css as when the EHR gives no ``smart_style_url``: the app's own palette."""
    page.context.route("**/theme.css", lambda route: route.fulfill(
        status=200, content_type="text/css", body="/* EHR style not provided */\n"))


@pytest.mark.parametrize("style", ["ehr-style", "default-style"])
@pytest.mark.parametrize("patient_id", sorted(PATIENTS))
def test_axe_review_page(page: Any, live: Servers, patient_id: str, style: str) -> None:
    """axe-core on the review page inside the EHR iframe, with the sandbox's smart_style_url colours
    and with the app's default ones. The axe script is injected through the DevTools protocol
    (Playwright ``evaluate``), which the page's CSP (``script-src 'self'``) does not block."""
    if style == "default-style":
        default_style(page)
    frame = open_chart(page, live, patient_id)
    background = frame.locator("body").evaluate("b => getComputedStyle(b).backgroundColor")
    assert (background == "rgb(255, 255, 255)") == (style == "default-style"), background
    violations = axe_violations(app_frame_handle(page, live))
    assert not violations, f"axe found on the review page of {patient_id} ({style}):\n{explain(violations)}"


def test_axe_write_back_result_page(page: Any, live: Servers) -> None:
    frame = open_chart(page, live, "rsantos")
    frame.get_by_role("button", name="Write draft to chart").click()
    frame.locator("h1#result-title").wait_for()
    assert frame.locator("table.written").is_visible()
    violations = axe_violations(app_frame_handle(page, live))
    assert not violations, f"axe found on the write-back result page:\n{explain(violations)}"


def test_axe_failed_write_and_missing_write_scopes(page: Any, tmp_path: Path) -> None:
    """The other outcomes of the write button: the EHR refused the transaction (reasons and a retry),
    and a launch without write scopes (the missing scopes named, the draft as a download)."""
    failing = start_servers(tmp_path / "failing",
                            sandbox_config={"FAULTS": {"transaction": {"status": 500, "times": 1}}})
    try:
        frame = open_chart(page, failing, "jkowalski")
        frame.get_by_role("button", name="Write draft to chart").click()
        frame.locator("h1#result-title").wait_for()
        assert frame.locator("h1#result-title").inner_text() == "The EHR did not accept the draft"
        assert frame.get_by_role("button", name="Retry writing the draft").is_visible()
        violations = axe_violations(app_frame_handle(page, failing))
        assert not violations, f"axe found on the failed write-back page:\n{explain(violations)}"
    finally:
        stop_servers(failing)
    read_only = [s.replace(".crs", ".rs") for s in SCOPES]
    no_write = start_servers(tmp_path / "no-write", scopes=read_only)
    try:
        frame = open_chart(page, no_write, "jkowalski")
        assert "did not grant" in frame.locator("#no-write").inner_text()
        assert frame.get_by_role("button", name="Write draft to chart").count() == 0
        violations = axe_violations(app_frame_handle(page, no_write))
        assert not violations, f"axe found on the review page without write scopes:\n{explain(violations)}"
    finally:
        stop_servers(no_write)
