"""The refresh policy (smart_app.smart.launch.TokenKeeper) with a settable clock, and one refresh and
retry after a 401 (smart_app.smart.bearer), without sockets: short lifetimes, the same token sent again,
never a token past its expiry, one refresh for many requests that got 401, relaunch without a refresh
token."""

from __future__ import annotations

import contextlib
import dataclasses
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import responses
from launch_support import start_launch

from smart_app.fhir.client import FhirClient
from smart_app.smart.bearer import LaunchBearer, RetryOn401Session
from smart_app.smart.errors import RelaunchRequired, TokenError
from smart_app.smart.launch import Launch, TokenKeeper, new_launch_id
from smart_app.smart.scopes import ScopeSet
from smart_app.smart.token import LaunchContext, TokenSet
from tests.views_fixtures import FHIR_BASE, PROBABLE, FakeEhr, fake_launch

BASE = "https://ehr.test/fhir"


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class MemoryStore:
    """A launch store in memory, with a real lock, counting saves."""

    def __init__(self) -> None:
        self.launches: dict[str, Launch] = {}
        self._lock = threading.Lock()
        self.saves = 0
        self.loads = 0

    def load(self, launch_id: str) -> Launch | None:
        self.loads += 1
        return self.launches.get(launch_id)

    def save(self, launch: Launch) -> None:
        self.saves += 1
        self.launches[launch.id] = launch

    def forget(self, launch_id: str) -> None:
        self.launches.pop(launch_id, None)

    @contextlib.contextmanager
    def lock(self, launch_id: str) -> Iterator[None]:
        with self._lock:
            yield


class Ehr:
    """A token endpoint: each refresh issues ``lifetime`` seconds (or the same token again)."""

    def __init__(self, clock: Clock, lifetime: float, *, same_token_within: float = 0.0) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self.same_token_within = same_token_within
        self.refreshes: list[float] = []
        self.last: tuple[str, float, float] | None = None  # token, issued at, expires at
        self.fail: Callable[[], Exception] | None = None

    def __call__(self, launch: Launch) -> TokenSet:
        now = self.clock()
        self.refreshes.append(now)
        if self.fail is not None:
            raise self.fail()
        if self.last and now - self.last[1] < self.same_token_within and self.last[2] > now:
            token, _, expires = self.last
        else:
            token, expires = f"AT-{len(self.refreshes)}", now + self.lifetime
            self.last = (token, now, expires)
        return TokenSet(
            access_token=token,
            token_type="Bearer",
            expires_at=expires,
            scope=ScopeSet(),
            context=LaunchContext(),
            refresh_token=f"RT-{len(self.refreshes)}",
            issued_at=now,
        )


def launched(store: MemoryStore, keeper: TokenKeeper, clock: Clock, lifetime: float, **fields: Any) -> Launch:
    tokens = TokenSet(
        access_token="AT-0",
        token_type="Bearer",
        expires_at=clock() + lifetime,
        scope=ScopeSet(),
        context=LaunchContext(),
        refresh_token="RT-0",
        issued_at=clock(),
    )
    values: dict[str, Any] = {
        "id": new_launch_id(),
        "registration_id": "r",
        "ehr_name": "Test EHR",
        "iss": BASE,
        "patient": "p1",
        "access_token": tokens.access_token,
        "token_endpoint": "https://ehr.test/token",
        "expires_at": tokens.expires_at,
        "refresh_token": tokens.refresh_token,
        "token_issued_at": tokens.issued_at,
        "refresh_due_at": keeper.refresh_due(tokens),
        **fields,
    }
    launch = Launch(**values)
    store.save(launch)
    return launch


def run(
    lifetime: float, seconds: float, step: float = 0.5, leeway: float = 60.0, **ehr: Any
) -> tuple[Ehr, list[tuple[float, str]]]:
    """Requests every ``step`` seconds for ``seconds``: the refresh times and each (time, token) used."""
    clock, store = Clock(), MemoryStore()
    token_ehr = Ehr(clock, lifetime, **ehr)
    keeper = TokenKeeper(store, token_ehr, leeway=leeway, clock=clock)
    launch = launched(store, keeper, clock, lifetime)
    used: list[tuple[float, str]] = []
    start = clock()
    while clock() - start < seconds:
        used.append((clock(), keeper.access_token(launch.id)))
        clock.now += step
    return token_ehr, used


def expiries(ehr: Ehr, lifetime: float, start: float) -> dict[str, float]:
    """Each token's expiry as the EHR issued it."""
    out = {"AT-0": start + lifetime}
    for n, at in enumerate(ehr.refreshes, start=1):
        out.setdefault(f"AT-{n}", at + lifetime)
    return out


@pytest.mark.parametrize("lifetime", [20, 60, 90, 3600])
def test_one_refresh_per_lifetime_and_never_a_token_past_its_expiry(lifetime):
    seconds = max(3 * lifetime, 200)
    ehr, used = run(lifetime, seconds)
    start = used[0][0]
    due_after = min(60.0, lifetime / 2)  # the leeway, or half the lifetime when that is shorter
    assert ehr.refreshes, "a refresh happened"
    assert ehr.refreshes[0] - start == pytest.approx(lifetime - due_after, abs=0.5)
    gaps = [b - a for a, b in zip([start, *ehr.refreshes], ehr.refreshes, strict=False)]
    assert all(gap >= lifetime - due_after - 0.5 for gap in gaps)  # at most one refresh per lifetime
    assert len(ehr.refreshes) <= seconds / (lifetime - due_after) + 1
    ends = expiries(ehr, lifetime, start)
    assert all(at < ends[token] for at, token in used)


def test_the_same_token_sent_again_is_used_until_it_expires_then_replaced():
    lifetime = 20.0
    ehr, used = run(lifetime, 120, step=0.25, same_token_within=30)
    # t=10 refresh -> AT-1 (expires 30); t=20 refresh -> the same AT-1 again (used to its expiry);
    # t=30 AT-1 expired -> a new token.
    assert ehr.refreshes[:3] == pytest.approx(
        [ehr.refreshes[0], ehr.refreshes[0] + 10, ehr.refreshes[0] + 20]
    )
    assert len(ehr.refreshes) <= 120 / 10 + 1
    start = used[0][0]
    ends = {"AT-0": start + lifetime}
    issued: dict[str, float] = {}
    for n, at in enumerate(ehr.refreshes, start=1):
        issued.setdefault(f"AT-{n}", at)
    for token, at in issued.items():
        ends.setdefault(token, at + lifetime)
    assert all(at < ends[token] for at, token in used), "no token used at or past its expiry"


def test_a_lifetime_shorter_than_the_leeway_is_not_refreshed_on_every_request():
    ehr, used = run(20, 60, step=0.1)
    assert len(used) >= 600 and len(ehr.refreshes) in (5, 6)  # every 10 s, not on each of 600 requests
    assert all(b - a >= 9.9 for a, b in zip(ehr.refreshes, ehr.refreshes[1:], strict=False))


def test_a_failed_refresh_keeps_the_token_until_its_expiry_and_then_asks_for_a_relaunch():
    clock, store = Clock(), MemoryStore()
    ehr = Ehr(clock, 20)
    keeper = TokenKeeper(store, ehr, clock=clock)
    launch = launched(store, keeper, clock, 20)
    ehr.fail = lambda: TokenError("refused")
    clock.now += 12
    assert keeper.access_token(launch.id) == "AT-0"
    clock.now += 7.9
    assert keeper.access_token(launch.id) == "AT-0" and len(ehr.refreshes) == 1
    clock.now += 0.1
    with pytest.raises(RelaunchRequired):
        keeper.access_token(launch.id)
    assert store.load(launch.id) is None


def test_many_requests_refused_at_once_share_one_refresh():
    clock, store = Clock(), MemoryStore()
    ehr = Ehr(clock, 3600)
    keeper = TokenKeeper(store, ehr, clock=clock)
    launch = launched(store, keeper, clock, 3600)
    results: list[str] = []
    threads = [
        threading.Thread(target=lambda: results.append(keeper.replace_rejected(launch.id, "AT-0")))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert results == ["AT-1"] * 8 and len(ehr.refreshes) == 1
    assert (store.load(launch.id) or launch).refresh_token == "RT-1"


@pytest.mark.parametrize("why", ["no refresh token", "refresh fails", "same token again"])
def test_a_refused_token_that_cannot_be_replaced_ends_the_launch(why):
    clock, store = Clock(), MemoryStore()
    ehr = Ehr(clock, 3600, same_token_within=3600 if why == "same token again" else 0)
    keeper = TokenKeeper(store, ehr, clock=clock)
    launch = launched(store, keeper, clock, 3600, refresh_token=None if why == "no refresh token" else "RT-0")
    if why == "refresh fails":
        ehr.fail = lambda: TokenError("refused")
    if why == "same token again":
        rejected = keeper.replace_rejected(launch.id, "AT-0")  # first refresh: AT-1
    else:
        rejected = "AT-0"
    with pytest.raises(RelaunchRequired):
        keeper.replace_rejected(launch.id, rejected)
    assert store.load(launch.id) is None


# --- the FHIR client's session: one refresh and one retry of a read ------------------------------------


def keeper_and_client() -> tuple[TokenKeeper, Launch, Ehr, FhirClient]:
    clock, store = Clock(time.time()), MemoryStore()
    ehr = Ehr(clock, 3600)
    keeper = TokenKeeper(store, ehr)
    launch = launched(store, keeper, clock, 3600)
    bearer = LaunchBearer(keeper, launch.id)
    return (
        keeper,
        launch,
        ehr,
        FhirClient(BASE, token=bearer, session=RetryOn401Session(bearer), max_retries=0),
    )


def test_a_bearer_reads_the_launch_once_until_its_refresh_falls_due():
    """One page's reads share the token the keeper lent (smart_app/smart/bearer.py): the store is read
    again only when the refresh falls due, and right after the refresh."""
    clock, store = Clock(), MemoryStore()
    ehr = Ehr(clock, 3600)
    keeper = TokenKeeper(store, ehr, leeway=60, clock=clock)
    launch = launched(store, keeper, clock, 3600)
    bearer = LaunchBearer(keeper, launch.id)
    before = store.loads
    assert [bearer() for _ in range(5)] == ["AT-0"] * 5
    assert store.loads == before + 1
    clock.now += 3600 - 60 - 1
    assert bearer() == "AT-0" and store.loads == before + 1 and not ehr.refreshes
    clock.now += 1  # the refresh falls due
    assert bearer() == "AT-1" and len(ehr.refreshes) == 1
    after_refresh = store.loads
    assert [bearer() for _ in range(3)] == ["AT-1"] * 3
    assert store.loads == after_refresh + 1  # the refreshed launch's due time, read once


def test_a_read_answered_401_is_retried_once_with_a_refreshed_token():
    with responses.RequestsMock() as rsps:
        rsps.add(responses.GET, f"{BASE}/Patient/p1", status=401)
        rsps.add(responses.GET, f"{BASE}/Patient/p1", json={"resourceType": "Patient", "id": "p1"})
        keeper, launch, ehr, client = keeper_and_client()
        assert client.read("Patient", "p1")["id"] == "p1"
        assert [c.request.headers["Authorization"] for c in rsps.calls] == ["Bearer AT-0", "Bearer AT-1"]
        assert len(ehr.refreshes) == 1


def test_a_second_401_after_the_refresh_ends_the_launch():
    with responses.RequestsMock() as rsps:
        rsps.add(responses.GET, f"{BASE}/Patient/p1", status=401)
        keeper, launch, ehr, client = keeper_and_client()
        with pytest.raises(RelaunchRequired):
            client.read("Patient", "p1")
        assert len(rsps.calls) == 2 and keeper.store.load(launch.id) is None


def test_a_write_answered_401_is_not_resent_but_the_next_attempt_has_a_new_token():
    with responses.RequestsMock() as rsps:
        rsps.add(responses.POST, f"{BASE}/Observation", status=401)
        rsps.add(
            responses.POST,
            f"{BASE}/Observation",
            status=201,
            headers={"Location": f"{BASE}/Observation/o1/_history/1"},
        )
        keeper, launch, ehr, client = keeper_and_client()
        with pytest.raises(Exception) as info:
            client.create({"resourceType": "Observation"})
        assert getattr(info.value, "status", None) == 401 and len(rsps.calls) == 1
        assert client.create({"resourceType": "Observation"}).id == "o1"
        assert rsps.calls[1].request.headers["Authorization"] == "Bearer AT-1"


# --- the web layer --------------------------------------------------------------------------------------


def test_review_answered_401_without_refresh_token_asks_for_a_relaunch(client, ehr: FakeEhr):
    ehr.rsps.add(responses.GET, f"{FHIR_BASE}/Patient/p1", status=401)
    ehr.serve(PROBABLE)
    start_launch(client.application, client, **fake_launch(refresh_token=None))
    page = client.get("/review")
    assert page.status_code == 401
    assert b"Relaunch the app from your EHR" in page.data and b"Test EHR" in page.data
    assert client.get("/review").status_code == 401  # the launch is gone


def test_review_answered_401_mid_launch_refreshes_once_and_completes(client, ehr: FakeEhr):
    """The EHR revoked the launch's token: every read sent with it is refused; one refresh, each refused
    read retried once, and the page is complete."""
    served = FakeEhr(responses.RequestsMock(assert_all_requests_are_fired=False), base=FHIR_BASE)
    served.serve(PROBABLE)
    answers = {r.url: r for r in served.rsps.registered()}
    refused: list[str] = []

    def read(request: Any) -> tuple[int, dict[str, str], str]:
        if request.headers["Authorization"] == "Bearer test-access-token":
            refused.append(request.url)
            return 401, {}, ""
        match = next(r for url, r in answers.items() if r.matches(request)[0])
        return 200, {"Content-Type": "application/fhir+json"}, match.body

    ehr.rsps.add_callback(responses.GET, re.compile(re.escape(FHIR_BASE) + "/.*"), callback=read)
    ehr.rsps.add(
        responses.POST,
        "https://ehr.test/auth/token",
        json={
            "access_token": "AT-fresh",
            "token_type": "Bearer",
            "expires_in": 3600,
            "refresh_token": "RT-2",
        },
    )
    start_launch(client.application, client, **fake_launch(refresh_token="RT-1", registration_id="view-test"))
    page = client.get("/review")
    assert page.status_code == 200 and b"Probable back mice" in page.data
    assert b"could not be read" not in page.data and b"read failed" not in page.data
    assert [c.request.url for c in ehr.rsps.calls].count("https://ehr.test/auth/token") == 1
    assert refused, "the revoked token was refused"
    retried = [
        c.request.url for c in ehr.rsps.calls if c.request.headers.get("Authorization") == "Bearer AT-fresh"
    ]
    # Patient, Observation and Condition: a probable patient is not on the treatment ladder
    assert set(refused) <= set(retried) and len(retried) == len(set(retried)) == 3


@pytest.mark.parametrize(("expired_answers", "outcome"), [(1, "AT-2"), (3, "relaunch")])
def test_a_refresh_answered_with_an_already_expired_token_is_never_used(expired_answers, outcome):
    clock, store = Clock(), MemoryStore()
    ehr = Ehr(clock, 20)
    keeper = TokenKeeper(store, ehr, clock=clock)
    launch = launched(store, keeper, clock, 20)
    answers = iter(range(expired_answers))

    def refresher(current: Launch) -> TokenSet:
        tokens = ehr(current)
        if next(answers, None) is not None:  # expires_in 0: already at its expiry
            return dataclasses.replace(tokens, expires_at=clock())
        return tokens

    keeper.refresher = refresher
    clock.now += 20
    if outcome == "relaunch":
        with pytest.raises(RelaunchRequired):
            keeper.access_token(launch.id)
        assert len(ehr.refreshes) == 3 and store.load(launch.id) is None
    else:
        assert keeper.access_token(launch.id) == outcome and len(ehr.refreshes) == 2
