"""Two app instances behind HAProxy, sharing Redis: what a deployment on two hosts does.

Each instance is ``smart-app serve`` (gunicorn) on its own port with its own instance folder; HAProxy
balances round robin without stickiness, so a browser's consecutive requests alternate between them
(each answer names its instance in ``X-Served-By``). The app's public URL is the proxy's. The sandbox
EHR runs in a process of its own, issuing access tokens that need renewing within seconds and refresh
tokens that it revokes, with the whole grant, when one is used twice (``REFRESH_TOKEN_ROTATION =
"strict"``): two instances renewing the same launch at once would end it (SMART App Launch 2.x
"Refresh access token"; RFC 9700 §4.14.2 refresh token rotation).
"""

from __future__ import annotations

import html
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
import requests

from launch.stack import (
    Pair,
    Redis,
    SandboxProcess,
    Services,
    StackError,
    free_port,
    registered_scopes,
    sandbox_settings,
    write_registration,
)

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

CLIENT_ID = "back-mice-two-hosts"
PATIENT = "jkowalski"
#: The sandbox's access tokens live this long, and the app renews this long before expiry: a token
#: needs renewing RENEW_AFTER seconds after it was issued.
ACCESS_TTL = 24
LEEWAY = 60
#: The app renews ``min(leeway, lifetime / 2)`` before expiry (smart_app.smart.launch.TokenKeeper).
RENEW_AFTER = ACCESS_TTL - min(LEEWAY, ACCESS_TTL / 2)
TIMEOUT = 60


@dataclass
class TwoHosts:
    pair: Pair
    sandbox: SandboxProcess
    redis: Redis


@pytest.fixture(scope="module")
def two_hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoHosts]:
    workdir = tmp_path_factory.mktemp("two-hosts")
    with Services() as services:
        try:
            redis = services.add(Redis(workdir))
            port = free_port()
            app_url = f"http://127.0.0.1:{port}"
            settings = sandbox_settings(
                workdir,
                app_url=app_url,
                client_id=CLIENT_ID,
                ACCESS_TOKEN_TTL=ACCESS_TTL,
                REFRESH_TOKEN_ROTATION="strict",
            )
            sandbox = services.add(SandboxProcess("sandbox", workdir, settings))
            registrations = workdir / "registrations"
            write_registration(
                registrations,
                ident="sandbox-two-hosts",
                fhir_base=sandbox.fhir_base,
                client_id=CLIENT_ID,
                scopes=registered_scopes(),
                frame_ancestor=sandbox.url,
            )
            pair = Pair(
                services,
                workdir,
                registrations_dir=registrations,
                redis_url=redis.url,
                port=port,
                settings={"TOKEN_REFRESH_LEEWAY_SECONDS": LEEWAY},
            )
        except StackError as exc:
            pytest.fail(str(exc), pytrace=False)
        yield TwoHosts(pair, sandbox, redis)


def served_by(response: requests.Response) -> str:
    return response.headers.get("X-Served-By", "")


def launch(hosts: TwoHosts, browser: requests.Session) -> requests.Response:
    """The clinician opens the chart: EHR launch → authorize → callback → review page."""
    page = browser.get(hosts.sandbox.launch_url(PATIENT), timeout=TIMEOUT)
    assert page.status_code == 200, page.text[:2000]
    assert page.url.startswith(f"{hosts.pair.url}/review"), page.url
    return page


def hops(page: requests.Response, path: str) -> list[requests.Response]:
    """The answers along ``page``'s redirects (and ``page`` itself) to requests for ``path``."""
    return [r for r in [*page.history, page] if r.url.split("?", 1)[0].endswith(path)]


def write_form(page: str) -> dict[str, str]:
    form = re.search(r'<form[^>]*class="write-form".*?</form>', page, re.S)
    assert form, "the review page offers the write-back"
    fields = dict(re.findall(r'<input type="hidden" name="([a-z_]+)" value="([^"]*)"', form.group(0)))
    assert fields.get("csrf_token"), form.group(0)
    return {key: html.unescape(value) for key, value in fields.items()}


def test_the_callback_lands_on_the_other_instance_and_the_launch_works_on_both(two_hosts: TwoHosts) -> None:
    with requests.Session() as browser:
        review = launch(two_hosts, browser)
        started, called_back = hops(review, "/launch"), hops(review, "/callback")
        assert started and called_back
        assert served_by(started[0]) and served_by(called_back[0])
        # The authorization request's state and PKCE verifier were kept by one instance; the other
        # finished the launch with them.
        assert served_by(started[0]) != served_by(called_back[0])
        assert 'id="headline"' in review.text

        seen = {served_by(review)}
        for _ in range(3):
            again = browser.get(f"{two_hosts.pair.url}/review", timeout=TIMEOUT)
            assert again.status_code == 200 and 'id="headline"' in again.text
            seen.add(served_by(again))
        assert seen == {instance.name for instance in two_hosts.pair.instances}


def test_write_back_posted_to_the_other_instance(two_hosts: TwoHosts) -> None:
    with requests.Session() as browser:
        launch(two_hosts, browser)
        review = browser.get(f"{two_hosts.pair.url}/review", timeout=TIMEOUT)
        writes_before = two_hosts.sandbox.counts()["fhir-write"]
        result = browser.post(
            f"{two_hosts.pair.url}/writeback", data=write_form(review.text), timeout=TIMEOUT
        )
        assert result.status_code == 200, result.text[:3000]
        # The form was made on one instance (its CSRF token bound to the shared session) and taken by
        # the other.
        posted = hops(result, "/writeback")[0]
        assert served_by(posted) and served_by(posted) != served_by(review)
        assert "Draft written to the chart" in result.text
        assert two_hosts.sandbox.counts()["fhir-write"] > writes_before


def test_concurrent_requests_on_both_instances_renew_the_token_once(two_hosts: TwoHosts) -> None:
    with requests.Session() as browser:
        launch(two_hosts, browser)
        time.sleep(RENEW_AFTER + 0.5)  # the access token now needs renewing
        tokens_before = two_hosts.sandbox.counts()["token"]

        def review() -> requests.Response:
            return browser.get(f"{two_hosts.pair.url}/review", timeout=TIMEOUT)

        with ThreadPoolExecutor(max_workers=6) as pool:
            answers = list(pool.map(lambda _: review(), range(6)))
        assert [a.status_code for a in answers] == [200] * 6, [a.text[:500] for a in answers]
        assert all('id="headline"' in a.text for a in answers)
        assert {served_by(a) for a in answers} == {i.name for i in two_hosts.pair.instances}
        renewed = two_hosts.sandbox.counts()["token"] - tokens_before
        # One renewal for the six requests on two instances: a second use of the rotated refresh
        # token would have revoked the grant, and the requests after it would fail.
        assert renewed == 1
        after = review()
        assert after.status_code == 200 and 'id="headline"' in after.text
