"""Write-back after launches that carry an encounter, end to end over HTTP: the sandbox EHR sends the
encounter as SMART launchers do (a bare id), as ``Encounter/<id>``, as an absolute URL, or only in
``fhirContext``; the write succeeds and every draft references ``Encounter/<id>``."""

from __future__ import annotations

import html
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from smart_app.drafts.profiles import load_checker
from tests.servers import SCOPES, Stack, start_stack

pytestmark = pytest.mark.e2e

#: Probable back mouse with a WARN flag: ClinicalImpression, ServiceRequest, DetectedIssue, Provenance.
PATIENT = "jkowalski"
TIMEOUT = 30


@pytest.fixture(params=["id", "reference", "absolute"])
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    running = start_stack(
        tmp_path,
        scopes=SCOPES,
        sandbox_config={"EHR_LAUNCH_ENCOUNTER": "latest", "EHR_LAUNCH_ENCOUNTER_FORMAT": request.param},
    )
    yield running
    running.stop()


def chart_token(stack: Stack) -> str:
    from launch.sandbox.oauth import Grant

    return str(
        stack.sandbox_app.extensions["sandbox"].auth.add_access(
            Grant(
                client_id="e2e-readback",
                scopes=("user/*.cruds",),
                user="Practitioner/dr-ada",
                patient=None,
                encounter=None,
                expires_at=time.time() + 3600,
            )
        )
    )


def read(stack: Stack, reference: str) -> dict[str, Any]:
    response = requests.get(
        f"{stack.fhir_base}/{reference}",
        headers={"Authorization": f"Bearer {chart_token(stack)}", "Accept": "application/fhir+json"},
        timeout=TIMEOUT,
    )
    assert response.status_code == 200, response.text[:500]
    return dict(response.json())


def launch_and_write(stack: Stack, made: dict[str, Any]) -> tuple[str, list[str]]:
    """Open the launch URL the EHR made, press "Write draft to chart"; the result page and the written
    references."""
    with requests.Session() as browser:
        page = browser.get(made["url"], timeout=TIMEOUT)
        assert page.status_code == 200 and page.url.startswith(f"{stack.app_url}/review"), page.text[:2000]
        form = re.search(r'<form[^>]*class="write-form".*?</form>', page.text, re.S)
        assert form, "the review offers the write"
        fields = dict(re.findall(r'<input type="hidden" name="([a-z_]+)" value="([^"]*)"', form.group(0)))
        result = browser.post(
            f"{stack.app_url}/writeback",
            data={k: html.unescape(v) for k, v in fields.items()},
            timeout=TIMEOUT,
        )
    assert result.status_code == 200, result.text[:3000]
    assert "Draft written to the chart" in result.text
    rows = re.findall(r"<tr>\s*<td>([A-Za-z]+)</td>\s*<td><a href=\"[^\"]*\">([^<]+)</a>", result.text)
    return result.text, [f"{rtype}/{rid}" for rtype, rid in rows]


def assert_drafts_reference(stack: Stack, written: list[str], encounter: str) -> None:
    expected = {"reference": f"Encounter/{encounter}"}
    checker = load_checker()
    seen = set()
    for ref in written:
        resource = read(stack, ref)
        assert checker.check(resource) == [], ref
        rtype = resource["resourceType"]
        seen.add(rtype)
        if rtype in ("ClinicalImpression", "ServiceRequest"):
            assert resource["encounter"] == expected, (ref, resource.get("encounter"))
        elif rtype == "DocumentReference":
            assert resource["context"]["encounter"] == [expected]
    assert {"ClinicalImpression", "ServiceRequest", "Provenance"} <= seen


def test_write_back_after_a_launch_with_an_encounter(stack: Stack) -> None:
    made = requests.get(f"{stack.sandbox.url}/ehr/launch-url", params={"patient": PATIENT}, timeout=TIMEOUT)
    made.raise_for_status()
    launch = made.json()
    assert launch["encounter"], "the sandbox launches within the patient's latest visit"
    _, written = launch_and_write(stack, launch)
    assert_drafts_reference(stack, written, launch["encounter"])
    log = (Path(stack.app.instance_path) / "audit.jsonl").read_text()
    assert f'"encounter":"Encounter/{launch["encounter"]}"' in log


@pytest.mark.parametrize("stack", ["id"], indirect=True)
def test_write_back_with_the_encounter_only_in_fhir_context(stack: Stack) -> None:
    latest = requests.get(f"{stack.sandbox.url}/ehr/launch-url", params={"patient": PATIENT}, timeout=TIMEOUT)
    encounter = latest.json()["encounter"]
    made = requests.post(
        f"{stack.sandbox.url}/ehr/launches",
        json={
            "patient": PATIENT,
            "encounter": "",
            "fhirContext": [{"reference": f"{stack.fhir_base}/Encounter/{encounter}"}],
        },
        timeout=TIMEOUT,
    )
    assert made.status_code in (200, 201), made.text
    assert made.json()["encounter"] is None
    _, written = launch_and_write(stack, made.json())
    assert_drafts_reference(stack, written, encounter)


@pytest.mark.parametrize("mode", ["transaction", "sequential"])
def test_write_back_behind_a_proxy_with_opaque_versions(tmp_path: Path, mode: str) -> None:
    """As EHRs behind a reverse proxy answer: Location headers and transaction locations name another base,
    version ids are UUIDs; the launch carries a bare encounter id."""
    running = start_stack(
        tmp_path,
        scopes=SCOPES,
        writeback={"mode": mode, "assessment_as": "ClinicalImpression"},
        sandbox_config={
            "EHR_LAUNCH_ENCOUNTER": "latest",
            "LOCATION_BASE": "http://internal.example:8080/fhir",
            "VERSION_IDS": "opaque",
        },
    )
    try:
        made = requests.get(
            f"{running.sandbox.url}/ehr/launch-url", params={"patient": PATIENT}, timeout=TIMEOUT
        )
        launch = made.json()
        page, written = launch_and_write(running, launch)
        assert "internal.example" not in page
        assert_drafts_reference(running, written, launch["encounter"])
        # the version of each linked row (the app's Device is listed without a link to its own view)
        rows = re.findall(r"<tr>\s*<td>[A-Za-z]+</td>\s*<td><a [^>]*>[^<]+</a></td>\s*<td>([^<]*)</td>", page)
        versions = [v for v in rows if re.fullmatch(r"[0-9a-f]{8}-[0-9a-f-]{27}", v)]
        assert len(versions) == len(written), page[:3000]
    finally:
        running.stop()
