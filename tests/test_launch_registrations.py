"""Several registrations per EHR, the EHR's own reasons on error pages, and trusted authorization
endpoints (smart_app.web.launch with smart_app.smart.registrations and discovery), against a fake EHR
mocked with ``responses``."""

from __future__ import annotations

import base64
import logging
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import responses
from flask.testing import FlaskClient
from launch_support import launch_of
from smart_support import (
    AUTHORIZE,
    ISS,
    SECRET,
    SECRET_ENV,
    TOKEN,
    WELL_KNOWN,
    ehr_jwks,
    id_token,
    make_app,
    mock_discovery,
    smart_configuration,
    token_response,
    write_registration,
)

from smart_app.smart import wire


@pytest.fixture()
def three(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FlaskClient:
    """An app with a public, a symmetric and an asymmetric registration for the same iss."""
    monkeypatch.setenv(SECRET_ENV, SECRET)
    regs = tmp_path / "registrations"
    write_registration(regs, "ehr-public", id=None, client_id="pub")
    write_registration(
        regs,
        "ehr-symmetric",
        id=None,
        client_id="sym",
        client_type="confidential-symmetric",
        client_secret_env=SECRET_ENV,
    )
    write_registration(
        regs, "ehr-asymmetric", id=None, client_id="asym", client_type="confidential-asymmetric"
    )
    return make_app(tmp_path).test_client()


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def complete(client: FlaskClient, rsps: responses.RequestsMock, authorize_url: str, **token: Any) -> Any:
    q = query(authorize_url)
    body = token_response(**token)
    body.setdefault("id_token", id_token(q["nonce"], aud=q["client_id"]))
    rsps.add(responses.POST, TOKEN, json=body)
    return client.get("/callback", query_string={"code": "CODE-1", "state": q["state"]})


@pytest.mark.parametrize("registration", ["ehr-public", "ehr-symmetric", "ehr-asymmetric"])
def test_launch_url_chooses_the_registration_and_the_callback_authenticates_as_it(three, rsps, registration):
    mock_discovery(rsps)
    started = three.get(f"/launch/{registration}", query_string={"iss": ISS, "launch": "L-1"})
    assert started.status_code == 302 and started.location.startswith(AUTHORIZE)
    client_id = {"ehr-public": "pub", "ehr-symmetric": "sym", "ehr-asymmetric": "asym"}[registration]
    assert query(started.location)["client_id"] == client_id
    done = complete(three, rsps, started.location)
    assert done.status_code == 302, done.data
    sent = [c for c in rsps.calls if c.request.method == "POST"][-1].request
    form = parse_qs(sent.body if isinstance(sent.body, str) else sent.body.decode())
    if registration == "ehr-public":
        assert form["client_id"] == ["pub"] and "Authorization" not in sent.headers
    elif registration == "ehr-symmetric":
        user, _, secret = base64.b64decode(sent.headers["Authorization"][6:]).decode().partition(":")
        assert (user, unquote(secret)) == ("sym", SECRET)
    else:
        assert "client_assertion" in form and "Authorization" not in sent.headers
    launch = launch_of(three.application, three)
    assert launch is not None and launch.registration_id == registration


def test_client_id_on_the_launch_url_chooses_among_registrations(three, rsps):
    mock_discovery(rsps)
    started = three.get("/launch", query_string={"iss": ISS, "launch": "L-1", "client_id": "sym"})
    assert started.status_code == 302 and query(started.location)["client_id"] == "sym"


def test_ehr_launch_naming_no_registration_of_several_is_refused_with_the_fix(three, rsps):
    page = three.get("/launch", query_string={"iss": ISS, "launch": "L-1"})
    assert page.status_code == 400
    html = page.get_data(as_text=True)
    assert "ehr-asymmetric, ehr-public, ehr-symmetric" in html and "/launch/&lt;registration&gt;" in html
    assert "ambiguous_registration" in html
    assert len(rsps.calls) == 0


def test_standalone_launch_with_several_registrations_offers_a_choice(three, rsps):
    page = three.get("/launch", query_string={"iss": ISS})
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    for reg in ("ehr-public", "ehr-symmetric", "ehr-asymmetric"):
        assert f'href="/launch/{reg}"' in html
    assert len(rsps.calls) == 0
    mock_discovery(rsps)
    started = three.get("/launch/ehr-symmetric")  # the chooser's link: a standalone launch
    assert started.status_code == 302 and "launch" not in query(started.location)


@pytest.mark.parametrize(
    ("path", "args", "needle"),
    [
        ("/launch/ehr-public", {"iss": "https://evil.test/fhir", "launch": "L"}, b"another FHIR server"),
        ("/launch/unknown", {"iss": ISS, "launch": "L"}, b"names no registration"),
        ("/launch/ehr-public", {"launch": "L"}, b"no iss"),
        ("/launch/ehr-public", {"iss": ISS, "launch": "L" * 3000}, b"too long"),
    ],
)
def test_launch_url_mismatches_are_refused_without_any_request(three, rsps, path, args, needle):
    page = three.get(path, query_string=args)
    assert page.status_code == 400 and needle in page.data
    assert len(rsps.calls) == 0


# --- the EHR's reasons -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("said", "shown"),
    [
        ("client assertion signature not valid", "The EHR said: client assertion signature not valid"),
        ("client assertion aud must be the token endpoint", "aud must be the token endpoint"),
        ("<b>registration expired</b>", "The EHR said: &lt;b&gt;registration expired&lt;/b&gt;"),
        ("x" * 2000, "x" * 299 + "…"),
    ],
)
def test_token_refusal_shows_and_logs_the_ehrs_reason(tmp_path, rsps, caplog, said, shown):
    client = make_app(tmp_path).test_client()
    mock_discovery(rsps)
    q = query(client.get("/launch", query_string={"iss": ISS, "launch": "L"}).location)
    rsps.add(responses.POST, TOKEN, status=401, json={"error": "invalid_client", "error_description": said})
    caplog.set_level(logging.INFO)
    page = client.get("/callback", query_string={"code": "CODE-1", "state": q["state"]})
    html = page.get_data(as_text=True)
    assert page.status_code == 502
    assert "refused the request (HTTP 401, invalid_client)" in html and shown in html
    assert "EHR error invalid_client" in html
    logged = [r.getMessage() for r in caplog.records if "refused: HTTP 401" in r.getMessage()]
    assert len(logged) == 1 and logged[0].endswith(f"invalid_client: {wire.ehr_text(said)}")


def test_the_ehrs_reason_never_echoes_what_the_request_carried(tmp_path, rsps, caplog):
    client = make_app(tmp_path).test_client()
    mock_discovery(rsps)
    q = query(client.get("/launch", query_string={"iss": ISS, "launch": "L"}).location)
    rsps.add(
        responses.POST,
        TOKEN,
        status=400,
        json={"error": "invalid_grant", "error_description": "code CODE-secret-77 already used"},
    )
    caplog.set_level(logging.DEBUG)
    page = client.get("/callback", query_string={"code": "CODE-secret-77", "state": q["state"]})
    assert b"code [redacted] already used" in page.data
    assert "CODE-secret-77" not in caplog.text and "code [redacted] already used" in caplog.text


def test_authorization_error_reason_is_logged_cleaned(tmp_path, rsps, caplog):
    client = make_app(tmp_path).test_client()
    mock_discovery(rsps)
    q = query(client.get("/launch", query_string={"iss": ISS, "launch": "L"}).location)
    caplog.set_level(logging.INFO)
    page = client.get(
        "/callback",
        query_string={
            "error": "invalid_scope",
            "error_description": "scope\u202e patient/x.rs\nunknown",
            "state": q["state"],
        },
    )
    assert page.status_code == 400 and b"The EHR said: scope patient/x.rs unknown" in page.data
    assert "Authorization error from Test EHR: invalid_scope: scope patient/x.rs unknown" in caplog.text


# --- trusted endpoints ---------------------------------------------------------------------------------

FOREIGN = {"token_endpoint": "https://tokens.evil.test/token"}


def test_endpoints_on_another_origin_are_logged(tmp_path, rsps, caplog):
    rsps.add(responses.GET, WELL_KNOWN, json=smart_configuration(**FOREIGN))
    caplog.set_level(logging.INFO)
    started = make_app(tmp_path).test_client().get("/launch", query_string={"iss": ISS, "launch": "L"})
    assert started.status_code == 302
    assert "names endpoints on another origin than its FHIR base" in caplog.text
    assert "token endpoint at https://tokens.evil.test:443" in caplog.text


def test_endpoints_on_another_origin_are_refused_with_the_setting(tmp_path, rsps):
    rsps.add(responses.GET, WELL_KNOWN, json=smart_configuration(**FOREIGN))
    client = make_app(tmp_path, config={"FOREIGN_AUTH_ENDPOINTS": "refuse"}).test_client()
    page = client.get("/launch", query_string={"iss": ISS, "launch": "L"})
    assert page.status_code == 502 and b"untrusted_endpoint" in page.data
    assert b"token endpoint at https://tokens.evil.test:443" in page.data
    assert [c.request.url for c in rsps.calls] == [WELL_KNOWN]


def test_auth_origins_trust_a_separate_authorization_host(tmp_path, rsps, caplog):
    write_registration(tmp_path / "registrations", auth_origins=["https://tokens.evil.test"])
    rsps.add(responses.GET, WELL_KNOWN, json=smart_configuration(**FOREIGN))
    caplog.set_level(logging.INFO)
    client = make_app(tmp_path, config={"FOREIGN_AUTH_ENDPOINTS": "refuse"}).test_client()
    assert client.get("/launch", query_string={"iss": ISS, "launch": "L"}).status_code == 302
    assert "another origin" not in caplog.text


def test_a_pinned_token_endpoint_must_be_the_one_discovered(tmp_path, rsps):
    write_registration(tmp_path / "registrations", token_endpoint=TOKEN)
    rsps.add(
        responses.GET, WELL_KNOWN, json=smart_configuration(token_endpoint="https://ehr.test/auth/other")
    )
    client = make_app(tmp_path).test_client()
    page = client.get("/launch", query_string={"iss": ISS, "launch": "L"})
    assert page.status_code == 502 and b"other than the one registered" in page.data
    rsps.replace(responses.GET, WELL_KNOWN, json=smart_configuration())
    rsps.add(responses.GET, "https://ehr.test/auth/jwks.json", json=ehr_jwks())
    client.application.extensions["smart_app.smart"]["discovery"].forget(ISS)
    assert client.get("/launch", query_string={"iss": ISS, "launch": "L"}).status_code == 302
