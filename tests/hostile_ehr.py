"""A misbehaving EHR for the fault catalogue: the sandbox EHR behind a layer that breaks its answers on
purpose, served over real HTTP on loopback, with the app beside it.

:class:`HostileEhr` is WSGI middleware in front of the sandbox (which keeps the protocol real: SMART
launch and tokens, FHIR search, transactions, conditional creates). A test switches faults on by
target with :meth:`HostileEhr.set`; each one changes what one kind of request gets:

- ``status``: an HTTP error (any status, optional ``Retry-After``, OperationOutcome or any body), after
  ``delay`` seconds if given (nothing reaches the sandbox);
- ``drip``: a 200 whose body arrives one byte per ``interval`` seconds (headers at once);
- ``gzip_bomb``: a valid searchset Bundle of ``unpacked`` bytes, gzip-compressed to about a thousandth;
- ``huge_page``: a valid searchset Bundle of ``bytes`` bytes of Observations;
- ``rewrite``: the sandbox's JSON answer passed through a function (bidi/NUL names, foreign ``next``
  links, a tampered id_token, another ``smart_style_url``);
- ``partial``: a transaction of which only the first ``keep`` entries are stored, then a 500;
- ``hold``: the sandbox answers (a write is stored), and its answer is held back ``delay`` seconds
  (past the app's read timeout: a commit, then a timeout);
- ``no_location``: creates answered ``201`` without ``Location``, ``ETag`` or body; transaction entries
  with a bare status;
- ``redirect``: a redirect to ``location``;
- ``body``: any fixed answer (``status``, ``headers``, ``body``), e.g. a 300 MB style.

Targets: a FHIR resource type (reads and searches of it, one by one), ``batch`` (a batch Bundle posted to
the base: the app's reads where the EHR offers batches), ``transaction``, ``create`` (any type) or
``create:<type>``,
``fhir`` (any FHIR request), ``discovery`` (``.well-known/smart-configuration``), ``metadata`` (the
CapabilityStatement), ``token``, ``style`` (``/smart-style.json``).
:class:`DripServer` is a raw socket server that drips even its status line and headers, which WSGI
cannot. :class:`Recorder` is "another host" that records what reaches it.
"""

from __future__ import annotations

import functools
import io
import json
import re
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from launch.stack import posted_bundle, write_registration
from smart_app.fhir import capability
from tests.servers import SCOPES, Server, bind

PATIENT = "jkowalski"
#: What the sandbox holds for PATIENT, as the app reads it with no fault.
FULL_COUNTS = {"Condition": 2, "Observation": 3}
WRITTEN_TYPES = (
    "ClinicalImpression",
    "DocumentReference",
    "ServiceRequest",
    "DetectedIssue",
    "Provenance",
    "Device",
)
TIMEOUT = 60

Environ = dict[str, Any]
StartResponse = Callable[..., Any]


# -- bodies ---------------------------------------------------------------------------------------------
@functools.cache
def gzip_bomb(unpacked: int) -> bytes:
    """A searchset Bundle of ``unpacked`` bytes (JSON whitespace inside the entry list), gzip-compressed
    (about 1,000 : 1, the most deflate gives)."""
    head, tail = b'{"resourceType":"Bundle","type":"searchset","entry":[', b"]}"
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    out = [packer.compress(head)]
    block = b" " * (1024 * 1024)
    left = unpacked - len(head) - len(tail)
    while left > 0:
        out.append(packer.compress(block[: min(left, len(block))]))
        left -= len(block)
    out += [packer.compress(tail), packer.flush()]
    return b"".join(out)


def huge_page(size: int, patient: str = PATIENT) -> Iterator[bytes]:
    """A valid searchset Bundle of about ``size`` bytes: Observations of ``patient`` with long notes."""
    yield b'{"resourceType":"Bundle","type":"searchset","entry":['
    written, index, note = 0, 0, "x" * 900
    while written < size:
        entry = {
            "resource": {
                "resourceType": "Observation",
                "id": f"huge-{index}",
                "status": "final",
                "code": {"text": "padding"},
                "subject": {"reference": f"Patient/{patient}"},
                "note": [{"text": note}],
            }
        }
        chunk = (b"," if index else b"") + json.dumps(entry, separators=(",", ":")).encode()
        written += len(chunk)
        index += 1
        yield chunk
    yield b"]}"


def outcome(text: str, code: str = "exception") -> bytes:
    return json.dumps(
        {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": code, "diagnostics": text}],
        }
    ).encode()


# -- the middleware -------------------------------------------------------------------------------------
@dataclass
class Seen:
    """One request the hostile layer passed or answered: method, path, whether it carried a token."""

    method: str
    path: str
    bearer: bool


class HostileEhr:
    """WSGI middleware that breaks the sandbox's answers by target (module docstring)."""

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app
        self._faults: dict[str, dict[str, Any]] = {}
        self._hits: dict[str, int] = {}
        self._lock = threading.Lock()
        self.seen: list[Seen] = []
        self.stop = threading.Event()

    def set(self, target: str, **fault: Any) -> None:
        """Switch a fault on for ``target``; ``times=N`` limits it to N requests."""
        with self._lock:
            self._faults[target] = fault
            self._hits[target] = 0

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
            self._hits.clear()
            self.seen.clear()

    def _take(self, targets: Iterable[str]) -> dict[str, Any] | None:
        with self._lock:
            for target in targets:
                fault = self._faults.get(target)
                if fault is None:
                    continue
                times = fault.get("times")
                if isinstance(times, int) and self._hits[target] >= times:
                    continue
                self._hits[target] += 1
                return fault
        return None

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        with self._lock:
            self.seen.append(Seen(method, path, bool(environ.get("HTTP_AUTHORIZATION"))))
        targets = _targets(method, path)
        posted = posted_bundle(environ)
        if posted is not None and posted[1] == "batch":
            targets = ["batch", "fhir"]
        fault = self._take(targets)
        if fault is None:
            return self.app(environ, start_response)
        kind = fault["kind"]
        if kind == "status":
            self.stop.wait(float(fault.get("delay", 0)))
            headers = [("Content-Type", fault.get("content_type", "application/fhir+json"))]
            if fault.get("retry_after") is not None:
                headers.append(("Retry-After", str(fault["retry_after"])))
            body = fault.get("body", outcome(f"injected fault {fault['status']}"))
            start_response(f"{fault['status']} Injected", headers)
            return [body if isinstance(body, bytes) else str(body).encode()]
        if kind == "drip":
            return self._drip(fault, start_response)
        if kind == "gzip_bomb":
            bomb = gzip_bomb(int(fault["unpacked"]))
            start_response(
                "200 OK",
                [
                    ("Content-Type", "application/fhir+json"),
                    ("Content-Encoding", "gzip"),
                    ("Content-Length", str(len(bomb))),
                ],
            )
            return [bomb]
        if kind == "huge_page":
            start_response("200 OK", [("Content-Type", "application/fhir+json")])
            return huge_page(int(fault["bytes"]))
        if kind == "redirect":
            start_response(f"{fault.get('status', 302)} Found", [("Location", fault["location"])])
            return [b""]
        if kind == "body":
            headers = [
                ("Content-Type", fault.get("content_type", "application/json")),
                *fault.get("headers", []),
            ]
            body = fault["body"]
            if not callable(body):
                headers.append(("Content-Length", str(len(body))))
            start_response(f"{fault.get('status', 200)} OK", headers)
            return body() if callable(body) else [body]
        if kind == "partial":
            return self._partial(environ, start_response, int(fault["keep"]))
        status, headers, body = self._inner(environ)
        if kind == "rewrite":
            data = json.loads(body)
            body = json.dumps(fault["fn"](data)).encode()
        elif kind == "hold":
            self.stop.wait(float(fault["delay"]))
        elif kind == "no_location":
            dropped = ("location", "etag", "content-location")
            headers = [(k, v) for k, v in headers if k.lower() not in dropped]
            if path.rstrip("/") == "/fhir":
                data = json.loads(body)
                data["entry"] = [{"response": {"status": e["response"]["status"]}} for e in data["entry"]]
                body = json.dumps(data).encode()
            else:
                body = b""
        else:  # pragma: no cover - a test asked for a fault that does not exist
            raise AssertionError(f"unknown fault {kind!r}")
        headers = [(k, v) for k, v in headers if k.lower() not in ("content-length", "content-encoding")]
        start_response(status, [*headers, ("Content-Length", str(len(body)))])
        return [body]

    def _inner(self, environ: Environ) -> tuple[str, list[tuple[str, str]], bytes]:
        """The sandbox's own answer, uncompressed."""
        environ = {**environ, "HTTP_ACCEPT_ENCODING": "identity"}
        captured: dict[str, Any] = {}

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
            captured["status"], captured["headers"] = status, headers

        chunks = self.app(environ, capture)
        try:
            body = b"".join(chunks)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        return captured["status"], captured["headers"], body

    def _drip(self, fault: dict[str, Any], start_response: StartResponse) -> Iterator[bytes]:
        interval = float(fault["interval"])
        start_response("200 OK", [("Content-Type", "application/fhir+json")])
        body = b'{"resourceType":"Bundle","type":"searchset","entry":[' + b" " * 10_000 + b"]}"
        for index in range(len(body)):
            if index and self.stop.wait(interval):
                return
            yield body[index : index + 1]

    def _partial(self, environ: Environ, start_response: StartResponse, keep: int) -> Iterable[bytes]:
        """Store the first ``keep`` entries of the transaction, then fail as a server that lost the rest."""
        length = int(environ.get("CONTENT_LENGTH") or 0)
        bundle = json.loads(environ["wsgi.input"].read(length))
        bundle["entry"] = bundle["entry"][:keep]
        raw = json.dumps(bundle).encode()
        inner = {**environ, "wsgi.input": io.BytesIO(raw), "CONTENT_LENGTH": str(len(raw))}
        status, _, _ = self._inner(inner)
        assert status.startswith("200"), status
        start_response("500 Internal Server Error", [("Content-Type", "application/fhir+json")])
        return [outcome("storage node lost mid-transaction")]


_TYPE_PATH = re.compile(r"^/fhir/([A-Z][A-Za-z]+)(/[^/]+)?/?$")


def _targets(method: str, path: str) -> list[str]:
    if path == "/fhir/.well-known/smart-configuration":
        return ["discovery"]
    if path == "/fhir/metadata":
        return ["metadata"]
    if path == "/auth/token":
        return ["token"]
    if path == "/smart-style.json":
        return ["style"]
    if path.rstrip("/") == "/fhir":
        return ["transaction", "fhir"] if method == "POST" else ["fhir"]
    match = _TYPE_PATH.match(path)
    if match is None:
        return ["fhir"] if path.startswith("/fhir/") else []
    if method == "POST" and match.group(2) is None:
        return [f"create:{match.group(1)}", "create", "fhir"]
    return [match.group(1), "fhir"] if method == "GET" else ["fhir"]


# -- other servers --------------------------------------------------------------------------------------
class Recorder:
    """Another host: answers 200 ``{}`` to anything and records the paths and Authorization headers."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str | None]] = []

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        self.requests.append((environ.get("PATH_INFO", ""), environ.get("HTTP_AUTHORIZATION")))
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b"{}"]


class DripServer:
    """A raw socket server that sends its whole answer, status line and headers included, one byte per
    ``interval`` seconds: per-read timeouts never fire on it."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.stopped = threading.Event()
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\nX-Padding: " + b"x" * 10_000
        with conn:
            conn.recv(65536)
            for index in range(len(answer)):
                try:
                    conn.sendall(answer[index : index + 1])
                except OSError:
                    return
                if self.stopped.wait(self.interval):
                    return

    def close(self) -> None:
        self.stopped.set()
        self.sock.close()


# -- the stack ------------------------------------------------------------------------------------------
@dataclass
class HostileStack:
    """The hostile EHR (sandbox behind :class:`HostileEhr`) on 127.0.0.1, a :class:`Recorder` as another
    host, and the app on localhost, registered with each other."""

    ehr_server: Server
    app_server: Server
    other_server: Server
    sandbox_app: Any
    app: Any
    hostile: HostileEhr
    other: Recorder
    tmp_path: Path
    servers: list[Server] = field(default_factory=list)

    @property
    def ehr_url(self) -> str:
        return self.ehr_server.url

    @property
    def fhir_base(self) -> str:
        return f"{self.ehr_url}/fhir"

    @property
    def app_url(self) -> str:
        return self.app_server.url

    @property
    def other_url(self) -> str:
        return self.other_server.url

    def stop(self) -> None:
        self.hostile.stop.set()
        stopping = [
            threading.Thread(target=server.stop)
            for server in (self.app_server, self.ehr_server, self.other_server)
        ]
        for thread in stopping:
            thread.start()
        for thread in stopping:
            thread.join()

    # -- what a clinician does
    def launch(self, browser: requests.Session, patient: str = PATIENT) -> requests.Response:
        """The clinician's click in the EHR; the answer is the last page of the redirects."""
        made = requests.get(f"{self.ehr_url}/ehr/launch-url", params={"patient": patient}, timeout=TIMEOUT)
        made.raise_for_status()
        return browser.get(made.json()["url"], timeout=TIMEOUT)

    def write(self, browser: requests.Session, page: str) -> requests.Response:
        form = write_form(page)
        assert form is not None, "the page offers the write"
        return browser.post(f"{self.app_url}/writeback", data=form, allow_redirects=False, timeout=TIMEOUT)

    # -- what the EHR holds and the app logged
    def chart(self) -> Chart:
        return Chart(self)

    def audit_events(self) -> list[dict[str, Any]]:
        """The app's audit log lines written since the last :meth:`reset`."""
        return self._audit_lines()[self.audit_mark :]

    def read_counts(self) -> dict[str, int]:
        """What the last review read, by resource type (its ``read`` audit line)."""
        reads = [e for e in self.audit_events() if e["kind"] == "read"]
        assert reads, "the review logged what it read"
        return dict(reads[-1]["counts"])

    def _audit_lines(self) -> list[dict[str, Any]]:
        path = Path(self.app.instance_path) / "audit.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def reset(self) -> None:
        """No faults, default budgets, nothing recorded, no cached style or discovery: the next test
        starts clean."""
        self.audit_mark = len(self._audit_lines())
        self.hostile.clear()
        self.other.requests.clear()
        self.app.config.update(self.app_defaults)
        self.app.extensions.pop("smart_app.style_cache", None)
        self.app.extensions.get("smart_app.smart", {}).pop("discovery", None)  # discovery asked afresh
        capability.forget()  # and the CapabilityStatement

    app_defaults: dict[str, Any] = field(default_factory=dict)
    audit_mark: int = 0


class Chart:
    """The hostile EHR's FHIR store as another user sees it (a user-level token, no faults: it asks the
    sandbox directly)."""

    def __init__(self, stack: HostileStack) -> None:
        from launch.sandbox.oauth import Grant

        state = stack.sandbox_app.extensions["sandbox"]
        self.token = state.auth.add_access(
            Grant(
                client_id="hostile-chart",
                scopes=("user/*.cruds",),
                user="Practitioner/dr-ada",
                patient=None,
                encounter=None,
                expires_at=time.time() + 3600,
            )
        )
        self.app = stack.sandbox_app

    def search(self, rtype: str, query: str = "_count=1000") -> list[dict[str, Any]]:
        client = self.app.test_client()
        found: list[dict[str, Any]] = []
        url: str | None = f"/fhir/{rtype}?{query}"
        while url:
            resp = client.get(url, headers={"Authorization": f"Bearer {self.token}"})
            assert resp.status_code == 200, resp.get_data(as_text=True)[:500]
            page = resp.get_json()
            found += [e["resource"] for e in page.get("entry") or []]
            links = [link["url"] for link in page.get("link") or [] if link.get("relation") == "next"]
            url = links[0][links[0].index("/fhir/") :] if links else None
        return found

    def counts(self) -> dict[str, int]:
        return {rtype: len(self.search(rtype)) for rtype in WRITTEN_TYPES}


def write_form(page: str) -> dict[str, str] | None:
    """The hidden fields of the page's write (or retry) form, or None when the page offers none."""
    import html

    form = re.search(r'<form[^>]*class="write-form".*?</form>', page, re.S)
    if not form:
        return None
    fields = dict(re.findall(r'<input type="hidden" name="([a-z_]+)" value="([^"]*)"', form.group(0)))
    return {k: html.unescape(v) for k, v in fields.items()}


def start_hostile(
    tmp_path: Path,
    *,
    app_config: dict[str, Any] | None = None,
    sandbox_config: dict[str, Any] | None = None,
    writeback: dict[str, str] | None = None,
) -> HostileStack:
    """Start the hostile EHR (127.0.0.1), another host (127.0.0.1) and the app (localhost) on free ports;
    a public client registered for the EHR's ``iss``."""
    from launch.sandbox import create_app as create_sandbox
    from smart_app import create_app

    ehr_server, other_server, app_server = bind("127.0.0.1"), bind("127.0.0.1"), bind("localhost")
    client_id = "back-mice-hostile"
    sandbox_app = create_sandbox(
        {
            "TESTING": True,
            "PUBLIC_URL": ehr_server.url,
            "APP_LAUNCH_URL": f"{app_server.url}/launch",
            "CLIENTS": [
                {
                    "client_id": client_id,
                    "client_type": "public",
                    "redirect_uris": [f"{app_server.url}/callback"],
                }
            ],
            "SIGNING_KEY_PATH": str(tmp_path / "sandbox-key.pem"),
            **(sandbox_config or {}),
        }
    )
    registrations = tmp_path / "registrations"
    write_registration(
        registrations,
        ident="hostile",
        name="Hostile EHR (test)",
        fhir_base=f"{ehr_server.url}/fhir",
        client_id=client_id,
        scopes=SCOPES,
        frame_ancestor=ehr_server.url,
        writeback=writeback,
    )
    defaults = {
        # The catalogue runs at small scale: budgets of seconds, caps of megabytes; the measurement
        # script (benchmarks/hostile_bench.py) runs the same faults at the production defaults.
        "FHIR_READ_BUDGET_SECONDS": 3.0,
        "FHIR_MAX_RESPONSE_BYTES": 4 * 1024 * 1024,
        "FHIR_TIMEOUT": [2.0, 1.5],
        "FHIR_MAX_RETRIES": 3,
        "STYLE_BUDGET_SECONDS": 1.0,
        # The catalogue's faults on a resource type break its reads one by one, which is also how the
        # app reads whatever a batch did not answer; faults on a batch are entries of their own, with
        # batches on (tests/test_hostile_batch.py).
        "FHIR_BATCH_READS": "never",
    }
    app = create_app(
        {
            "TESTING": True,
            "SECRET_KEY": "test-secret-key-not-for-production",
            "PUBLIC_URL": app_server.url,
            "REGISTRATIONS_DIRS": [str(registrations)],
            "SESSION_COOKIE_SAMESITE": "Lax",
            "SESSION_COOKIE_SECURE": False,
            "INSTANCE_PATH": str(tmp_path / "app-instance"),
            **defaults,
            **(app_config or {}),
        }
    )
    hostile, other = HostileEhr(sandbox_app), Recorder()
    ehr_server.start(hostile)
    other_server.start(other)
    app_server.start(app)
    stack = HostileStack(ehr_server, app_server, other_server, sandbox_app, app, hostile, other, tmp_path)
    stack.app_defaults = {k: app.config.get(k) for k in (*defaults, "FOREIGN_AUTH_ENDPOINTS")}
    return stack
