"""The review page in a real browser: Debian's Chromium,
driven by Playwright, opens the sandbox EHR on 127.0.0.1, which launches the app from localhost in a
cross-site iframe. Each test saves a full-page screenshot of the EHR under test-output/browser/, and the
app's own pages (every classification, the exam confirmation, the result page, the app's view of what it
wrote, the audit page in the frame and in a new tab) as ``app-*.png`` beside it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.browser import (
    OUTPUT_DIR,
    SCOPES,
    Servers,
    app_document,
    app_frame,
    save_app_screenshot,
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
    """EHR patient list → "Open chart and launch app" → the app's review page in the iframe, with the
    part loaded after it ("already in the chart?") in place."""
    page.goto(f"{live.ehr_url}/ehr")
    page.locator(f"button[name=patient][value='{patient_id}']").click()
    frame = app_frame(page)
    frame.locator("h1#headline").wait_for()
    settle(page, live)
    return frame


def settle(page: Any, live: Servers) -> None:
    """Wait until the app's document has loaded (stylesheets applied) and its late parts are in."""
    document = app_document(page, live.app_url)
    document.wait_for_load_state("load")
    if document.locator("[data-src]").count():
        document.wait_for_selector("[data-src][data-loaded]")


def app_frame_handle(page: Any, live: Servers) -> Any:
    return app_document(page, live.app_url)


@pytest.mark.parametrize("patient_id", sorted(PATIENTS))
def test_review_for_each_classification(page: Any, live: Servers, patient_id: str) -> None:
    frame = open_chart(page, live, patient_id)
    assert PATIENTS[patient_id] in frame.locator(".headline .badge-class").inner_text()
    assert frame.locator("h1").count() == 1
    assert frame.locator("#criteria-title").is_visible()
    assert "not in the chart yet" in frame.locator("#write-status").inner_text()
    # the app really runs cross-site: iframe from localhost inside the 127.0.0.1 EHR page
    src = page.locator("iframe").get_attribute("src")
    assert src.startswith(live.app_url)
    text = frame.locator("main").inner_text()
    assert "read," not in text and " used, " not in text  # no "4 read, 5 used"
    assert not re.search(r"Not met\W+No ", text)  # no double negative
    if patient_id == "evance":
        flag = frame.locator(".flag-block")
        assert flag.first.is_visible()
        assert "Procedure suggestion withheld" in flag.first.inner_text()
    if patient_id == "tokafor":
        urgent = frame.locator("#urgent-finding")
        said = urgent.inner_text()
        assert "Prompt work-up" in said and "Objective neurological deficit" in said
        assert "Prompt work-up for the cause" in frame.locator("#next-step").inner_text()
    save_app_screenshot(page, live.app_url, f"review-{patient_id}")


@pytest.mark.parametrize("patient_id", sorted(PATIENTS))
def test_headline_and_next_step_are_seen_without_scrolling_in_a_1024x700_frame(
    page: Any, live: Servers, patient_id: str
) -> None:
    page.set_viewport_size({"width": 1200, "height": 1000})
    open_chart(page, live, patient_id)
    page.locator("iframe").evaluate("f => { f.style.width = '1024px'; f.style.height = '700px'; }")
    document = app_document(page, live.app_url)
    page.wait_for_timeout(100)
    seen = document.evaluate(
        """(() => {
          const bottom = sel => document.querySelector(sel).getBoundingClientRect().bottom;
          const urgent = document.querySelector('.urgent .flag-title');
          return {width: window.innerWidth, height: window.innerHeight, scrolled: window.scrollY,
                  headline: bottom('#headline'), next: bottom('#next-step'),
                  urgent: urgent ? urgent.getBoundingClientRect().bottom : 0};
        })()"""
    )
    assert (seen["width"], seen["height"], seen["scrolled"]) == (1024, 700, 0), seen
    assert seen["headline"] <= 700 and seen["next"] <= 700, seen
    assert seen["urgent"] <= 700, seen  # a red flag or an urgent finding is in the first screen too


def test_write_draft_then_result_then_the_chart_in_the_apps_own_view(page: Any, live: Servers) -> None:
    frame = open_chart(page, live, "jkowalski")
    assert frame.locator(".flag-warn").count() >= 1  # WARN shown above the suggestion
    frame.get_by_role("button", name="Write draft to chart").click()
    frame.locator("h1#result-title").wait_for()
    assert frame.locator("h1#result-title").inner_text() == "Draft written to the chart"
    assert "James Kowalski" in frame.locator(".patient-banner").inner_text()  # the banner stays
    table = frame.locator("table.written").inner_text()
    for rtype in ("ClinicalImpression", "ServiceRequest", "DetectedIssue", "Provenance"):
        assert rtype in table
    save_app_screenshot(page, live.app_url, "result")

    # a written resource opens in the app's own view, inside the frame, never as raw FHIR
    frame.locator("table.written a[href^='/chart/ServiceRequest/']").click()
    frame.locator("h1#resource-title").wait_for()
    assert frame.locator("h1#resource-title").inner_text() == "Procedure suggestion (draft)"
    assert "draft awaiting clinician review" in frame.locator("main").inner_text()
    assert not frame.locator("pre.json").is_visible()  # the FHIR JSON only behind its toggle
    save_app_screenshot(page, live.app_url, "chart-servicerequest")

    # back on the review: the draft is already in the chart, written by you, with links to it
    frame.get_by_role("link", name="Back to the review").click()
    frame.locator("h1#headline").wait_for()
    settle(page, live)
    status = frame.locator("#already-written")
    assert "already in the chart" in status.inner_text() and "by you" in status.inner_text()
    assert status.locator("a[href^='/chart/ClinicalImpression/']").count() == 1
    # writing again from a fresh review creates nothing new
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


def test_exam_is_confirmed_in_words_then_recorded_and_reassessed(page: Any, live: Servers) -> None:
    frame = open_chart(page, live, "dnguyen")
    assert "Insufficient data" in frame.locator(".badge-class").inner_text()
    frame.get_by_role("link", name="Record the focused exam").click()
    nodule = frame.locator("#q-NODULE")
    nodule.get_by_role("radio", name="Yes").check()
    frame.get_by_label("Site in your words").fill("posterior iliac crest")
    frame.get_by_label("Side").select_option("left")
    frame.locator("#q-PAIN_REPRODUCED").get_by_role("radio", name="Yes").check()
    frame.locator("#q-NEURO_DEFICIT").get_by_role("radio", name="None found").check()
    frame.get_by_role("button", name="Check the exam before recording it").click()

    frame.locator("h1#confirm-title").wait_for()
    findings = frame.locator("#exam-findings").inner_text()
    assert "Subcutaneous nodule: Present, left posterior iliac crest" in findings
    assert "Muscle weakness: Absent" in findings and "SNOMED 95325000" in findings
    assert "David Nguyen" in frame.locator(".patient-banner").inner_text()
    settle(page, live)
    save_app_screenshot(page, live.app_url, "exam-confirmation")

    frame.get_by_role("button", name="Record in the chart").click()
    frame.locator(".flash-success").wait_for()
    assert "Exam recorded in the chart: 5 findings" in frame.locator(".flash-success").inner_text()
    assert "Probable back mice" in frame.locator(".badge-class").inner_text()
    settle(page, live)
    criteria = frame.locator(".criteria")
    criteria.locator("#criterion-NODULE > details > summary").click()
    assert "entered through this app" in criteria.inner_text()


def test_an_empty_exam_keeps_its_warning_in_view(page: Any, live: Servers) -> None:
    frame = open_chart(page, live, "dnguyen")
    frame.get_by_role("button", name="Check the exam before recording it").click()
    frame.locator("#exam-message").wait_for()
    settle(page, live)
    document = app_document(page, live.app_url)
    box = document.evaluate(
        "(() => { const r = document.querySelector('#exam-message').getBoundingClientRect();"
        " return {top: r.top, bottom: r.bottom, height: window.innerHeight}; })()"
    )
    assert 0 <= box["top"] and box["bottom"] <= box["height"], box
    assert "Nothing to record" in frame.locator("#exam-message").inner_text()
    assert frame.locator(".flashes").count() == 0  # not at the top of the page, out of view


def test_write_history_in_the_frame_and_in_a_new_tab(page: Any, live: Servers) -> None:
    frame = open_chart(page, live, "apatel")
    frame.get_by_role("button", name="Write draft to chart").click()
    frame.locator("h1#result-title").wait_for()
    frame.get_by_role("link", name="Write history for this patient").click()
    frame.locator("h1#audit-title").wait_for()
    assert "Aisha Patel" in frame.locator("h1#audit-title").inner_text()
    assert "Possible back mice" in frame.locator("main").inner_text()
    assert "Reproduces" in frame.locator("main").inner_text()
    save_app_screenshot(page, live.app_url, "audit")

    new_tab = frame.get_by_role("link", name="Open the write history in a new tab")
    ticket_url = f"{live.app_url}{new_tab.get_attribute('href')}"
    with page.context.expect_page() as opened:
        new_tab.click()
    tab = opened.value
    tab.locator("h1#audit-title").wait_for()
    assert "ticket" not in tab.url and tab.url.startswith(f"{live.app_url}/audit")
    assert "Possible back mice" in tab.locator("main").inner_text()
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    tab.screenshot(path=str(OUTPUT_DIR / "app-audit-new-tab.png"), full_page=True)
    assert tab.goto(f"{live.app_url}/review").status == 401  # the tab may audit, not review or write
    # the ticket worked once: the same link again opens nothing
    again = page.context.new_page()
    assert again.goto(ticket_url).status == 410
    tab.close()
    again.close()


def _active_id(frame_handle: Any) -> str:
    return str(frame_handle.evaluate("document.activeElement ? document.activeElement.id : ''"))


def test_keyboard_only_write_back(page: Any, live: Servers) -> None:
    open_chart(page, live, "apatel")
    frame_handle = app_frame_handle(page, live)
    page.locator("iframe").focus()
    for _ in range(400):
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


def test_axe_write_back_result_page_and_the_apps_view(page: Any, live: Servers) -> None:
    frame = open_chart(page, live, "rsantos")
    frame.get_by_role("button", name="Write draft to chart").click()
    frame.locator("h1#result-title").wait_for()
    assert frame.locator("table.written").is_visible()
    violations = axe_violations(app_frame_handle(page, live))
    assert not violations, f"axe found on the write-back result page:\n{explain(violations)}"
    frame.locator("table.written a[href^='/chart/Provenance/']").click()
    frame.locator("h1#resource-title").wait_for()
    violations = axe_violations(app_frame_handle(page, live))
    assert not violations, f"axe found on the app's view of a written resource:\n{explain(violations)}"


def test_axe_exam_confirmation_and_audit_pages(page: Any, live: Servers) -> None:
    frame = open_chart(page, live, "apatel")
    frame.locator("#q-PAIN_REPRODUCED").get_by_role("radio", name="Yes").check()
    frame.get_by_role("button", name="Check the exam before recording it").click()
    frame.locator("h1#confirm-title").wait_for()
    settle(page, live)
    violations = axe_violations(app_frame_handle(page, live))
    assert not violations, f"axe found on the exam confirmation page:\n{explain(violations)}"
    frame.get_by_role("link", name="Change the answers").click()
    frame.locator("h1#headline").wait_for()
    frame.get_by_role("link", name="Write history for this patient").click()
    frame.locator("h1#audit-title").wait_for()
    settle(page, live)
    violations = axe_violations(app_frame_handle(page, live))
    assert not violations, f"axe found on the audit page:\n{explain(violations)}"


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
