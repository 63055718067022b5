"""Refresh under load, end to end: ``smart-app serve`` with 2 gunicorn workers, one launch, 4 concurrent
page loads of it at a time, against the sandbox EHR issuing short access tokens (20, 60 and 90 s, with
the refresh leeway at its 60 s default), the same access token again for refreshes close together, and
strict refresh-token rotation (a refresh token presented twice revokes the whole grant). Launches are
kept in Redis or in files. Midway the EHR revokes the access token (a 401 mid-launch).

Every page must be complete, each access token refreshed at most once in its lifetime (plus the one
refresh the revocation forces), no refresh token presented twice, and no FHIR request refused except
those sent with the revoked token: the app never uses a token past its expiry.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from launch.sandbox.server import BackgroundServer
from launch.stack import serve_argv
from tests.servers import SCOPES, wait_until_answering

pytestmark = pytest.mark.e2e

PATIENT = "jkowalski"
CLIENT_ID = "back-mice-refresh-test"
LEEWAY = 60.0  # the app's default TOKEN_REFRESH_LEEWAY_SECONDS
CONCURRENT = 4


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Seen:
    """What the sandbox saw: refreshes (time, refresh token presented, accepted), access tokens issued
    (token, time, expiry), FHIR requests (time, token, status) and the tokens it revoked."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    refreshes: list[tuple[float, str, bool]] = field(default_factory=list)
    issued: dict[str, tuple[float, float]] = field(default_factory=dict)
    fhir: list[tuple[float, str, int]] = field(default_factory=list)
    revoked: set[str] = field(default_factory=set)
    revoked_at: float | None = None


def instrument(box: BackgroundServer, seen: Seen) -> None:
    """Record the sandbox's token endpoint and FHIR answers (its own state, in this process)."""
    auth = box.app.extensions["sandbox"].auth
    use_refresh, issue_access = auth.use_refresh, auth.issue_access

    def recording_use_refresh(token: str, *args: Any, **kwargs: Any) -> Any:
        at = time.time()
        try:
            grant = use_refresh(token, *args, **kwargs)
        except Exception:
            with seen.lock:
                seen.refreshes.append((at, token, False))
            raise
        with seen.lock:
            seen.refreshes.append((at, token, True))
        return grant

    def recording_issue_access(grant: Any, ttl: float, **kwargs: Any) -> Any:
        token, access = issue_access(grant, ttl, **kwargs)
        with seen.lock:
            seen.issued.setdefault(token, (time.time(), access.expires_at))
        return token, access

    auth.use_refresh = recording_use_refresh
    auth.issue_access = recording_issue_access
    wsgi = box.app.wsgi_app

    def recording_wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        token = environ.get("HTTP_AUTHORIZATION", "").removeprefix("Bearer ")

        def start(status: str, headers: Any, *rest: Any) -> Any:
            path = environ.get("PATH_INFO", "")
            if (path == "/fhir" or path.startswith("/fhir/")) and ".well-known" not in path:  # a batch too
                with seen.lock:
                    seen.fhir.append((time.time(), token, int(status.split()[0])))
            return start_response(status, headers, *rest)

        return wsgi(environ, start)

    box.app.wsgi_app = recording_wsgi  # type: ignore[method-assign]


def revoke_access(box: BackgroundServer, seen: Seen) -> None:
    """The EHR revokes every access token of the app's grant (its refresh token stays valid)."""
    auth = box.app.extensions["sandbox"].auth
    with auth.lock:
        tokens = [t for t, g in auth.access.items() if g.client_id == CLIENT_ID]
        for token in tokens:
            del auth.access[token]
    with seen.lock:
        seen.revoked.update(tokens)
        seen.revoked_at = time.time()


def serve(
    tmp_path: Path, app_port: int, fhir_base: str, sandbox_url: str, **env: str
) -> subprocess.Popen[bytes]:
    """``smart-app serve --workers 2`` registered with the sandbox."""
    registrations = tmp_path / "registrations"
    registrations.mkdir()
    (registrations / "sandbox-refresh.json").write_text(
        json.dumps(
            {
                "id": "sandbox-refresh",
                "name": "Sandbox EHR (refresh test)",
                "iss": fhir_base,
                "client_id": CLIENT_ID,
                "client_type": "public",
                "scopes": SCOPES,
                "frame_ancestors": [sandbox_url],
            }
        )
    )
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SMART_APP_")}
    environment.update(
        {
            "SMART_APP_SECRET_KEY": "a-long-random-secret-for-the-refresh-test",
            "SMART_APP_PUBLIC_URL": f"http://127.0.0.1:{app_port}",
            "SMART_APP_INSTANCE_PATH": str(tmp_path / "instance"),
            "SMART_APP_REGISTRATIONS_DIR": str(registrations),
            "SMART_APP_SESSION_COOKIE_SAMESITE": "Lax",
            "SMART_APP_SESSION_COOKIE_SECURE": "false",
            **env,
        }
    )
    return subprocess.Popen(
        serve_argv(app_port, workers=2), env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


def worker_pids_talking_to(port: int) -> set[int]:
    """Processes with a connection open to ``port`` (``ss``): which gunicorn workers read from the EHR."""
    out = subprocess.run(["ss", "-tnpH", "state", "established"], capture_output=True, text=True).stdout
    return {
        int(pid)
        for line in out.splitlines()
        if re.search(rf"\s127\.0\.0\.1:{port}\s", line)
        for pid in re.findall(r"pid=(\d+)", line)
    } - {os.getpid()}


def page_complete(response: requests.Response) -> bool:
    text = response.text
    return (
        response.status_code == 200
        and "badge-class" in text
        and "these reads failed" not in text
        and "Relaunch" not in text
    )


@pytest.mark.parametrize(
    ("lifetime", "reuse_window", "store", "seconds"),
    [
        (20, 8, "redis", 45),
        (20, 8, "files", 45),
        (60, 5, "files", 68),
        (60, 5, "redis", 68),
        (90, 5, "redis", 98),
        (90, 5, "files", 98),
    ],
)
def test_refresh_holds_under_load(
    request: pytest.FixtureRequest, tmp_path: Path, lifetime: int, reuse_window: int, store: str, seconds: int
) -> None:
    env = {"SMART_APP_SESSION_REDIS_URL": request.getfixturevalue("redis_url")} if store == "redis" else {}
    app_port = free_port()
    app_url = f"http://127.0.0.1:{app_port}"
    box = BackgroundServer(
        {
            "TESTING": True,
            "APP_LAUNCH_URL": f"{app_url}/launch",
            "CLIENTS": [
                {"client_id": CLIENT_ID, "client_type": "public", "redirect_uris": [f"{app_url}/callback"]}
            ],
            "SIGNING_KEY_PATH": str(tmp_path / "sandbox-key.pem"),
            "ACCESS_TOKEN_TTL": lifetime,
            "ACCESS_TOKEN_REUSE_WINDOW": reuse_window,
            "REFRESH_TOKEN_ROTATION": "strict",
        }
    )
    seen = Seen()
    instrument(box, seen)
    box.start()
    sandbox_port = int(box.url.rsplit(":", 1)[1])
    process = serve(tmp_path, app_port, box.fhir_base, box.url, **env)
    pages: list[tuple[float, bool, int]] = []
    workers: set[int] = set()
    try:
        wait_until_answering(
            f"{app_url}/launch", seconds=90, process=process, output=lambda: process.communicate()[0].decode()
        )
        with requests.Session() as browser:
            made = requests.get(f"{box.url}/ehr/launch-url", params={"patient": PATIENT}, timeout=10).json()
            first = browser.get(made["url"], timeout=30)
            assert page_complete(first), first.text[:2000]
            cookies = browser.cookies.get_dict()
        started = time.time()
        revoke_at = started + lifetime * 0.7  # mid-lifetime, away from the scheduled refreshes

        def load() -> tuple[float, bool, int]:
            response = requests.get(f"{app_url}/review", cookies=cookies, timeout=60)
            return time.time(), page_complete(response), response.status_code

        done = threading.Event()

        def sample_workers() -> None:  # the FHIR connections of a page load live as long as the load
            while not done.wait(0.05):
                workers.update(worker_pids_talking_to(sandbox_port))

        sampler = threading.Thread(target=sample_workers, daemon=True)
        sampler.start()
        with ThreadPoolExecutor(CONCURRENT) as pool:
            while time.time() - started < seconds:
                if seen.revoked_at is None and time.time() >= revoke_at:
                    revoke_access(box, seen)
                pages += pool.map(lambda _: load(), range(CONCURRENT))
                time.sleep(0.5)
        done.set()
        sampler.join(5)
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0].decode()
        box.stop()

    assert output.count("Booting worker") == 2, output[-3000:]
    failed = [p for p in pages if not p[1]]
    assert pages and not failed, f"{len(failed)} of {len(pages)} pages incomplete: {failed[:5]}"
    assert len(workers) == 2, f"the page loads were served by workers {workers}"

    # No refresh token presented twice, none refused (strict rotation would have revoked the grant).
    presented = [token for _, token, _ in seen.refreshes]
    assert len(presented) == len(set(presented)), "a refresh token was reused"
    assert all(accepted for _, _, accepted in seen.refreshes), seen.refreshes

    # At most one refresh per lifetime: refreshes come about half a lifetime apart (the leeway, or half
    # the lifetime when that is shorter), besides the one the revocation forced.
    assert seen.revoked_at is not None
    due_after = lifetime - min(LEEWAY, lifetime / 2)
    times = [at for at, _, _ in seen.refreshes]
    forced = [at for at in times if seen.revoked_at <= at <= seen.revoked_at + 5]
    scheduled = [at for at in times if at not in forced]
    assert len(forced) == 1, (times, seen.revoked_at)
    assert 1 <= len(scheduled) <= int(seconds / due_after) + 1, (times, seconds)
    gaps = [b - a for a, b in zip([started - 1, *scheduled], scheduled, strict=False)][1:]
    assert all(gap >= due_after - 3 for gap in gaps), gaps

    # No token used past its expiry: the only refused FHIR requests carried the revoked token.
    refused = [(at, token) for at, token, status in seen.fhir if status == 401]
    assert refused, "the revocation was noticed"
    assert all(token in seen.revoked for _, token in refused), refused[:3]
    for at, token, status in seen.fhir:
        if token in seen.issued and status == 200:
            assert at < seen.issued[token][1], "a token was used after its expiry"
