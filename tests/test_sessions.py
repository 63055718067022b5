"""Server-side sessions (docs/architecture.md#launch-and-tokens) and the security headers every page
carries."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import session

from smart_app import create_app
from tests.servers import bind, start_stack


@pytest.mark.redis
@pytest.mark.e2e
def test_two_app_processes_share_sessions_through_redis(tmp_path: Path, redis_url: str) -> None:
    """A launch completed on one app instance is usable on another behind the same load balancer."""
    stack = start_stack(tmp_path, app_config={"SESSION_REDIS_URL": redis_url})
    second = bind("localhost")
    try:
        second.start(
            create_app(
                {
                    **{
                        key: stack.app.config[key]
                        for key in ("SECRET_KEY", "PUBLIC_URL", "REGISTRATIONS_DIRS")
                    },
                    "TESTING": True,
                    "SESSION_REDIS_URL": redis_url,
                    "SESSION_COOKIE_SAMESITE": "Lax",
                    "SESSION_COOKIE_SECURE": False,
                    "INSTANCE_PATH": str(tmp_path / "second-instance"),
                }
            )
        )
        with requests.Session() as browser:
            made = requests.get(
                f"{stack.sandbox.url}/ehr/launch-url", params={"patient": "apatel"}, timeout=10
            )
            assert browser.get(made.json()["url"], timeout=30).url.endswith("/review")
            cookie = browser.cookies.get("back_mice_session")
            assert cookie
            other = requests.get(f"{second.url}/review", cookies={"back_mice_session": cookie}, timeout=30)
        assert other.status_code == 200
        assert "badge-class" in other.text
    finally:
        second.stop()
        stack.stop()


def test_session_cookie_is_httponly_secure_and_partitioned_for_the_iframe(tmp_path: Path) -> None:
    app = create_app({"TESTING": True, "INSTANCE_PATH": str(tmp_path)})

    def touch() -> str:
        session["seen"] = True
        return "ok"

    app.add_url_rule("/_touch", view_func=touch)
    response = app.test_client().get("/_touch")
    session_cookie = next(
        value
        for key, value in response.headers.items()
        if key == "Set-Cookie" and "back_mice_session=" in value
    )
    for attribute in ("HttpOnly", "Secure", "SameSite=None", "Partitioned"):
        assert attribute in session_cookie
    session_id = session_cookie.split(";")[0].split("=", 1)[1]
    assert "seen" not in session_id and len(session_id) >= 32  # an opaque id; the data stays server-side


def test_every_page_has_csp_without_inline_script_and_frame_ancestors(tmp_path: Path) -> None:
    sandbox_registrations = Path(__file__).resolve().parent.parent / "launch" / "registrations"
    app = create_app(
        {"TESTING": True, "INSTANCE_PATH": str(tmp_path), "REGISTRATIONS_DIRS": [str(sandbox_registrations)]}
    )
    response = app.test_client().get("/launch")
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "frame-ancestors http://127.0.0.1:8001" in csp  # the sandbox registration's EHR origin
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_sessions_are_stored_on_disk_by_default_not_in_the_cookie(tmp_path: Path) -> None:
    app = create_app({"TESTING": True, "INSTANCE_PATH": str(tmp_path)})
    assert app.config["SESSION_TYPE"] == "cachelib"
    assert (tmp_path / "sessions").is_dir()


# --- lean sessions: ids and small state only, kept as long as their launch, cleaned off the request path --
SESSION_LIMIT = 4096


def stored_sizes(instance: Path) -> dict[str, int]:
    return {
        str(p): p.stat().st_size
        for d in ("sessions", "launches")
        if (instance / d).is_dir()
        for p in (instance / d).iterdir()
        if p.is_file() and not p.name.startswith(".")
    }


@pytest.mark.e2e
def test_a_launch_keeps_at_most_4_kb_on_the_server_and_no_patient_data(tmp_path: Path) -> None:
    """Session bytes per launch (the session file and the launch file a launch adds), for sandbox
    patients and a patient of 10,000 Observations, after the review, the exam's confirmation step and
    the write: each at most 4 KB, holding no name, identifier or finding of the patient."""
    import json
    import re

    from benchmarks.records import big_patient, realistic
    from launch.data import DATA_DIR

    data = tmp_path / "data"
    data.mkdir()
    for path in DATA_DIR.glob("patient-*.json"):
        shutil.copy(path, data / path.name)
    (data / "patient-big.json").write_text(json.dumps(big_patient("big", 10_000, realistic)))
    stack = start_stack(tmp_path, sandbox_config={"DATA_DIR": str(data)})
    instance = tmp_path / "app-instance"
    try:
        for patient in ("jkowalski", "dnguyen", "big"):
            before = stored_sizes(instance)
            with requests.Session() as browser:
                made = requests.get(
                    f"{stack.sandbox.url}/ehr/launch-url", params={"patient": patient}, timeout=30
                )
                review = browser.get(made.json()["url"], timeout=120)
                assert review.status_code == 200 and review.url.endswith("/review")
                csrf = re.search(r'name="csrf_token" value="([^"]+)"', review.text)
                token = csrf.group(1) if csrf else ""
                if patient == "dnguyen":  # an exam waiting for confirmation is kept as answers
                    exam = {"csrf_token": token, "q-NODULE": "present", "site_text": "posterior iliac crest"}
                    assert browser.post(f"{stack.app_url}/exam", data=exam, timeout=30).status_code == 200
                digest = re.search(r'name="draft_digest" value="([0-9a-f]+)"', review.text)
                assert digest
                written = browser.post(
                    f"{stack.app_url}/writeback",
                    data={"csrf_token": token, "draft_digest": digest.group(1)},
                    timeout=120,
                )
                assert written.status_code == 200, written.text[:2000]
            added = {k: v for k, v in stored_sizes(instance).items() if before.get(k) != v}
            assert added and sum(added.values()) <= SESSION_LIMIT, (patient, added)
            for path in added:
                raw = Path(path).read_bytes()
                for patient_data in (b"MRN-", b"resourceType", b"95325000", b"Kowalski", b"Nguyen"):
                    assert patient_data not in raw, (patient, path, patient_data)
    finally:
        stack.stop()


def test_no_directory_is_scanned_on_the_request_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """However many session files a host holds, a request reads and writes its own only: cachelib's
    size threshold (which counts and prunes the directory on every write) is off."""
    app = create_app({"TESTING": True, "INSTANCE_PATH": str(tmp_path)})
    for n in range(300):  # other browsers' sessions
        (tmp_path / "sessions" / f"{n:032x}").write_bytes(b"\x00\x00\x00\x00")

    def touch() -> str:
        session["seen"] = session.get("seen", 0) + 1
        return str(session["seen"])

    app.add_url_rule("/_touch", view_func=touch)
    client = app.test_client()
    import os

    def no_scan(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a directory was scanned on the request path")

    monkeypatch.setattr(os, "listdir", no_scan)
    monkeypatch.setattr(os, "scandir", no_scan)
    assert client.get("/_touch").get_data(as_text=True) == "1"
    assert client.get("/_touch").get_data(as_text=True) == "2"


def test_expired_sessions_launches_and_tickets_are_swept_and_live_ones_kept(tmp_path: Path) -> None:
    import time as clock

    from launch_support import start_launch

    from smart_app.web.handoff import ticket_store
    from smart_app.web.storage import sweep

    app = create_app(
        {
            "TESTING": True,
            "INSTANCE_PATH": str(tmp_path),
            "SESSION_LIFETIME_SECONDS": 3600,
            "SESSION_SWEEP_SECONDS": 0,
        }
    )
    now = clock.time()
    short = app.test_client()  # a launch without a refresh token, its access token valid 60 s more
    start_launch(app, short, expires_at=now + 60, refresh_token=None)
    long = app.test_client()  # a launch that can be renewed: kept the configured maximum
    start_launch(app, long, expires_at=now + 60, refresh_token="r")
    with app.test_request_context():
        ticket_store().put("a-ticket", {"launch": "x"}, 120)
    sessions = sorted((tmp_path / "sessions").iterdir())
    launches = sorted((tmp_path / "launches").glob("*.json"))
    assert len(sessions) == 2 and len(launches) == 2

    assert sweep(app, now) == {"sessions": 0, "launches": 0, "tickets": 0}
    assert sweep(app, now + 60 + 300 + 1) == {"sessions": 0, "launches": 1, "tickets": 1}
    assert len(list((tmp_path / "launches").glob("*.json"))) == 1
    assert sweep(app, now + 3601) == {"sessions": 2, "launches": 1, "tickets": 0}
    assert not any((tmp_path / "sessions").iterdir()) and not list((tmp_path / "launches").glob("*.json"))


def test_the_sweeper_runs_on_its_schedule(tmp_path: Path) -> None:
    import struct
    import time as clock

    app = create_app({"TESTING": True, "INSTANCE_PATH": str(tmp_path), "SESSION_SWEEP_SECONDS": 0.2})
    expired = tmp_path / "sessions" / ("e" * 32)
    expired.write_bytes(struct.pack("I", int(clock.time()) - 10) + b"x")
    live = tmp_path / "sessions" / ("f" * 32)
    live.write_bytes(struct.pack("I", int(clock.time()) + 3600) + b"x")
    deadline = clock.monotonic() + 10
    while expired.exists() and clock.monotonic() < deadline:
        clock.sleep(0.05)
    assert not expired.exists() and live.exists()
    assert app.config["SESSION_SWEEP_SECONDS"] == 0.2


@pytest.mark.redis
def test_redis_keys_expire_with_the_launch(tmp_path: Path, redis_url: str) -> None:
    """A session and its launch expire together: when the access token ends (and a short grace) for a
    launch without a refresh token, after SESSION_LIFETIME_SECONDS for one that can be renewed; an
    authorization request in flight after LAUNCH_PENDING_TTL_SECONDS."""
    import time as clock

    import redis
    from launch_support import start_launch

    app = create_app(
        {
            "TESTING": True,
            "INSTANCE_PATH": str(tmp_path),
            "SESSION_REDIS_URL": redis_url,
            "SESSION_LIFETIME_SECONDS": 7200,
        }
    )
    store = redis.Redis.from_url(redis_url)

    def touch() -> str:
        from smart_app.web.session import current_launch

        session["seen"] = True
        current_launch()
        return "ok"

    app.add_url_rule("/_touch", view_func=touch)

    def ttls(prefix: str) -> list[int]:
        return sorted(int(store.ttl(k)) for k in store.scan_iter(f"back-mice:{prefix}*"))

    short = app.test_client()
    start_launch(app, short, expires_at=clock.time() + 100, refresh_token=None)
    short.get("/_touch")
    assert all(395 <= t <= 400 for t in ttls("launch:")), ttls("launch:")
    sessions = [t for t in ttls("") if t not in ttls("launch:")]
    assert sessions and all(395 <= t <= 400 for t in sessions), sessions
    store.flushdb()

    renewable = app.test_client()
    start_launch(app, renewable, expires_at=clock.time() + 100, refresh_token="r")
    renewable.get("/_touch")
    assert all(7195 <= t <= 7200 for t in ttls("")), ttls("")
    store.flushdb()

    pending = app.test_client()
    with pending.session_transaction() as sess:
        sess["pending"] = {"state": {"created": clock.time()}}
    assert all(595 <= t <= 600 for t in ttls("")), ttls("")


@pytest.mark.redis
def test_a_hand_off_ticket_in_redis_opens_once_and_expires(redis_url: str) -> None:
    import hashlib

    import redis

    from smart_app.web.handoff import TicketStore

    client = redis.Redis.from_url(redis_url)
    tickets = TicketStore(client)
    tickets.put("one-ticket", {"launch": "l1", "opens": "audit"}, 60)
    (key,) = list(client.scan_iter("back-mice:handoff:*"))
    assert key.decode().endswith(hashlib.sha256(b"one-ticket").hexdigest())  # only its digest is kept
    assert 55 <= int(client.ttl(key)) <= 60
    taken = tickets.take("one-ticket")
    assert taken is not None and (taken["launch"], taken["opens"]) == ("l1", "audit")
    assert tickets.take("one-ticket") is None  # used once
    assert tickets.take("never-made") is None
    assert not list(client.scan_iter("back-mice:handoff:*"))
