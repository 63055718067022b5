"""Running the app as it is deployed, for benchmarks and multi-host tests: every server a process of its
own on loopback, on ports the OS picks, writing into one working directory.

- :class:`Redis` (``redis-server``): the shared session and launch store.
- :class:`AppInstance`: ``smart-app serve`` (gunicorn), configured by ``SMART_APP_*`` variables; its CPU
  time and its workers' resident memory read from ``/proc`` (proc(5)).
- :class:`HAProxy` (Debian's ``haproxy``): a round-robin balancer without stickiness in front of app
  instances (each answer names its server in ``X-Served-By``), or an EHR front that sends ``/fhir/``
  to a FHIR server and the rest to the sandbox's authorization server. It logs method, path (never the
  query, where OAuth codes travel), status and server.
- :class:`SandboxProcess`: the sandbox EHR (``python -m launch.stack sandbox``), counting the requests
  it answers (``GET /_stack/requests``) and, as a *fast EHR*, replaying recorded FHIR answers.
- :class:`FhirServer`: the independent FHIR server of ``tests/fhir-server`` (Medplum), run with
  ``node server.mjs`` from the npm install that ``tests/setup_test_deps.py`` puts in the cache.

Nothing here needs root; each ``stop()`` ends only the process it started.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import requests

#: Seconds a server may take to answer after it was started.
START_SECONDS = 90.0
#: Paths of the request counter that :class:`SandboxProcess` adds in front of the sandbox.
COUNTS_PATH = "/_stack/requests"
_LISTENING = re.compile(rb"listening on (http://[^\s,]+)")
_FHIR_LISTENING = re.compile(rb"listening on (http://[^\s,]+), FHIR base (\S+)")


class StackError(RuntimeError):
    """A server that could not be started; the message says which and why (with the end of its log)."""


def free_port() -> int:
    """A loopback port nobody listens on now, for programs that must be told their port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def program(name: str) -> str:
    """The path of a Debian program (``/usr/sbin`` too, which a user's PATH may lack)."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        raise StackError(f"{name} is not installed: run tests/setup_test_deps.py as root")
    return found


# --- processes ---------------------------------------------------------------------------------------
def _descendants(pid: int) -> list[int]:
    """``pid`` and every live process below it (``/proc/<pid>/task/<tid>/children``, proc(5))."""
    found = [pid]
    index = 0
    while index < len(found):
        current = found[index]
        index += 1
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                found += [int(child) for child in (task / "children").read_text().split()]
            except OSError:
                continue
    return found


def cpu_seconds(pid: int) -> float:
    """User plus system CPU of ``pid`` and its waited-for children (``/proc/<pid>/stat`` fields 14-17)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    ticks = sum(int(value) for value in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` (``VmRSS`` of ``/proc/<pid>/status``), 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Service:
    """A server started as a child process, its output in ``<workdir>/<name>.log``."""

    def __init__(
        self, name: str, argv: Sequence[str], workdir: Path, env: Mapping[str, str] | None = None
    ) -> None:
        self.name = name
        self.workdir = workdir
        self.log_path = workdir / f"{name}.log"
        self._log: IO[bytes] = self.log_path.open("wb")
        self.process = subprocess.Popen(
            list(argv),
            cwd=workdir,
            env=dict(env) if env is not None else None,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def output(self) -> bytes:
        return self.log_path.read_bytes()

    def log_tail(self, chars: int = 3000) -> str:
        return self.output().decode("utf-8", "replace")[-chars:]

    def fail(self, why: str) -> StackError:
        return StackError(f"{self.name}: {why}\n{self.log_tail()}")

    def wait_for_line(self, pattern: re.Pattern[bytes], seconds: float = START_SECONDS) -> re.Match[bytes]:
        """The first match of ``pattern`` in the output; StackError if the process exits first."""
        deadline = time.monotonic() + seconds
        while (match := pattern.search(self.output())) is None:
            if self.process.poll() is not None:
                raise self.fail(f"exited with status {self.process.returncode}")
            if time.monotonic() > deadline:
                raise self.fail(f"said nothing like {pattern.pattern!r} within {seconds:.0f} s")
            time.sleep(0.05)
        return match

    def wait_until_answering(self, url: str, seconds: float = START_SECONDS) -> None:
        """GET ``url`` until any HTTP answer comes."""
        deadline = time.monotonic() + seconds
        while True:
            if self.process.poll() is not None:
                raise self.fail(f"exited with status {self.process.returncode}")
            try:
                requests.get(url, timeout=5).close()
                return
            except requests.RequestException as exc:
                if time.monotonic() > deadline:
                    raise self.fail(f"{url} did not answer within {seconds:.0f} s ({exc!r})") from None
                time.sleep(0.1)

    def pids(self) -> list[int]:
        return _descendants(self.process.pid) if self.process.poll() is None else []

    def cpu_seconds(self) -> float:
        """CPU time of the process and everything below it so far."""
        return sum(cpu_seconds(pid) for pid in self.pids())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._log.close()


class Services:
    """Services started together, stopped in reverse order (``with Services() as started: ...``)."""

    def __init__(self) -> None:
        self.started: list[Service] = []

    def add(self, service: Service) -> Any:
        self.started.append(service)
        return service

    def __iter__(self) -> Iterator[Service]:
        return iter(self.started)

    def stop(self) -> None:
        while self.started:
            self.started.pop().stop()

    def __enter__(self) -> Services:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- Redis ---------------------------------------------------------------------------------------------
class Redis(Service):
    """``redis-server`` on a free loopback port, in memory only (no RDB snapshots, no AOF)."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        super().__init__(
            "redis",
            [
                program("redis-server"),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(workdir),
            ],
            workdir,
        )
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.wait_for_line(re.compile(rb"Ready to accept connections"))

    def client(self) -> Any:
        """A redis-py client of this server (the app's own dependency)."""
        import redis

        return redis.Redis.from_url(self.url)


def stored_bytes(client: Any) -> dict[bytes, int]:
    """Every key of the Redis database and the length of its value (``STRLEN``; other types count 0)."""
    sizes: dict[bytes, int] = {}
    for key in client.scan_iter(count=1000):
        try:
            sizes[key] = int(client.strlen(key))
        except Exception:  # a hash or a set: not what the app stores
            sizes[key] = 0
    return sizes


# --- the app -----------------------------------------------------------------------------------------
def app_environment(
    *,
    public_url: str,
    registrations_dir: Path,
    secret_key: str,
    redis_url: str | None,
    instance_path: Path,
    settings: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """The environment of ``smart-app serve``: this one's ``SMART_APP_*`` variables replace the caller's.
    ``settings`` are more app settings (JSON-encoded unless strings), e.g. ``TOKEN_REFRESH_LEEWAY_SECONDS``.
    Cookies are plain ``SameSite=Lax`` without ``Secure``: the clients here speak plain HTTP."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("SMART_APP_")}
    app_settings: dict[str, Any] = {
        "SECRET_KEY": secret_key,
        "PUBLIC_URL": public_url,
        "INSTANCE_PATH": str(instance_path),
        "SESSION_COOKIE_SAMESITE": "Lax",
        "SESSION_COOKIE_SECURE": False,
        **(settings or {}),
    }
    if redis_url:
        app_settings["SESSION_REDIS_URL"] = redis_url
    for key, value in app_settings.items():
        env[f"SMART_APP_{key}"] = value if isinstance(value, str) else json.dumps(value)
    env["SMART_APP_REGISTRATIONS_DIR"] = str(registrations_dir)
    return env


def serve_argv(port: int, workers: int) -> list[str]:
    """``smart-app serve`` on ``127.0.0.1:port`` with ``workers`` gunicorn workers, run by this Python."""
    return [
        sys.executable,
        "-m",
        "smart_app.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]


class AppInstance(Service):
    """``smart-app serve`` (gunicorn: ``workers`` processes of 4 threads) on a free loopback port."""

    def __init__(self, name: str, workdir: Path, env: Mapping[str, str], workers: int = 1) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(
            name,
            serve_argv(self.port, workers),
            workdir,
            env,
        )
        self.workers = workers
        self.wait_until_answering(f"{self.url}/.well-known/jwks.json")
        deadline = time.monotonic() + START_SECONDS
        while len(self.worker_pids()) < workers:  # gunicorn answers once one worker has booted
            if time.monotonic() > deadline:
                raise self.fail(f"{workers} workers did not boot")
            time.sleep(0.1)

    def worker_pids(self) -> list[int]:
        return self.pids()[1:]

    def worker_rss(self) -> list[int]:
        """Resident bytes of each worker."""
        return [rss_bytes(pid) for pid in self.worker_pids()]


def write_registration(
    directory: Path,
    *,
    ident: str,
    fhir_base: str,
    client_id: str,
    scopes: Sequence[str],
    frame_ancestor: str,
    writeback: Mapping[str, str] | None = None,
    name: str | None = None,
) -> Path:
    """An EHR registration of a public client (``launch/registrations/README.md`` names the fields)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{ident}.json"
    registration = {
        "id": ident,
        "name": name or f"{ident} (generated)",
        "iss": fhir_base,
        "client_id": client_id,
        "client_type": "public",
        "scopes": list(scopes),
        "frame_ancestors": [frame_ancestor],
        "writeback": dict(writeback or {"mode": "transaction", "assessment_as": "ClinicalImpression"}),
    }
    path.write_text(json.dumps(registration, indent=2), encoding="utf-8")
    return path


def registered_scopes() -> list[str]:
    """The scopes of the sandbox's own registration (``launch/registrations/sandbox.json``): reading,
    writing the drafts, ``offline_access`` for refresh."""
    path = Path(__file__).resolve().parent / "registrations" / "sandbox.json"
    return [str(scope) for scope in json.loads(path.read_text(encoding="utf-8"))["scopes"]]


def sandbox_settings(workdir: Path, *, app_url: str, client_id: str, **settings: Any) -> dict[str, Any]:
    """Sandbox settings with one public client whose redirect URI is ``app_url``'s ``/callback``, EHR
    launches opening ``app_url``'s ``/launch``, and its signing key in ``workdir``."""
    return {
        "APP_LAUNCH_URL": f"{app_url}/launch",
        "CLIENTS": [
            {"client_id": client_id, "client_type": "public", "redirect_uris": [f"{app_url}/callback"]}
        ],
        "SIGNING_KEY_PATH": str(workdir / "sandbox-signing-key.pem"),
        **settings,
    }


# --- HAProxy -------------------------------------------------------------------------------------------
_HAPROXY_COMMON = """\
global
    log stdout format raw local0 info
    maxconn 4096

defaults
    mode http
    log global
    # method, path without the query (OAuth codes and state travel there), status, server
    log-format "%HM %HPO %ST %s"
    option http-server-close
    timeout connect 5s
    timeout client 300s
    timeout server 300s
"""


def balancer_config(port: int, servers: Sequence[tuple[str, int]]) -> str:
    """Round robin over ``servers`` (name, loopback port), no stickiness; ``X-Served-By`` names the server."""
    lines = [
        _HAPROXY_COMMON,
        "frontend app",
        f"    bind 127.0.0.1:{port}",
        "    http-response set-header X-Served-By %s",
        "    default_backend instances",
        "",
        "backend instances",
        "    balance roundrobin",
    ]
    lines += [f"    server {name} 127.0.0.1:{server_port}" for name, server_port in servers]
    return "\n".join(lines) + "\n"


def ehr_front_config(port: int, fhir_port: int, auth_port: int) -> str:
    """``/fhir`` and below to the FHIR server (prefix removed), except the SMART configuration
    (``/fhir/.well-known/``); everything else (authorize, token, EHR pages, style) to the sandbox."""
    return (
        "\n".join(
            [
                _HAPROXY_COMMON,
                "frontend ehr",
                f"    bind 127.0.0.1:{port}",
                "    acl fhir path /fhir",
                "    acl fhir path_beg /fhir/",
                "    acl smart path_beg /fhir/.well-known/",
                "    use_backend fhir if fhir !smart",
                "    default_backend auth",
                "",
                "backend fhir",
                "    http-request replace-path ^/fhir/?(.*)$ /\\1",
                f"    server fhir 127.0.0.1:{fhir_port}",
                "",
                "backend auth",
                f"    server auth 127.0.0.1:{auth_port}",
            ]
        )
        + "\n"
    )


class HAProxy(Service):
    """``haproxy`` in the foreground with a configuration written to ``<workdir>/<name>.cfg``."""

    def __init__(self, name: str, workdir: Path, port: int, config: str) -> None:
        path = workdir / f"{name}.cfg"
        path.write_text(config, encoding="utf-8")
        haproxy = program("haproxy")
        checked = subprocess.run([haproxy, "-c", "-q", "-f", str(path)], capture_output=True, text=True)
        if checked.returncode != 0:
            raise StackError(f"{path}: {(checked.stderr or checked.stdout).strip()[-2000:]}")
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        super().__init__(name, [haproxy, "-db", "-f", str(path)], workdir)
        deadline = time.monotonic() + START_SECONDS
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise self.fail(f"not listening on {port}") from None
                time.sleep(0.05)

    def requests(self) -> list[tuple[str, str, str, str]]:
        """(method, path, status, server) of every request logged so far."""
        found = []
        for line in self.output().decode("utf-8", "replace").splitlines():
            parts = line.split()
            if len(parts) == 4 and parts[1].startswith("/"):
                found.append((parts[0], parts[1], parts[2], parts[3]))
        return found


# --- the sandbox EHR in a process of its own -----------------------------------------------------------
class SandboxProcess(Service):
    """The sandbox EHR with ``settings`` (its config keys, e.g. ``CLIENTS``, ``DATA_DIR``); ``replay``
    makes it a fast EHR that answers a FHIR read it has answered before with the recorded bytes."""

    def __init__(
        self, name: str, workdir: Path, settings: Mapping[str, Any], *, replay: bool = False
    ) -> None:
        settings_path = workdir / f"{name}-settings.json"
        settings_path.write_text(json.dumps(dict(settings)), encoding="utf-8")
        argv = [sys.executable, "-m", "launch.stack", "sandbox", "--settings", str(settings_path)]
        super().__init__(name, [*argv, *(["--replay"] if replay else [])], workdir)
        self.url = self.wait_for_line(_LISTENING).group(1).decode()
        self.public_url = str(settings.get("PUBLIC_URL") or self.url)
        self.port = int(self.url.rsplit(":", 1)[1])

    @property
    def fhir_base(self) -> str:
        return f"{self.public_url}/fhir"

    def counts(self) -> Counter[str]:
        """Requests answered so far, by kind (see :func:`request_kind`)."""
        return Counter(requests.get(f"{self.url}{COUNTS_PATH}", timeout=10).json())

    def launch_url(self, patient: str) -> str:
        """The app's launch URL of a new EHR launch for ``patient`` (SMART "EHR Launch")."""
        made = requests.get(f"{self.url}/ehr/launch-url", params={"patient": patient}, timeout=30)
        made.raise_for_status()
        return str(made.json()["url"])


def request_kind(method: str, path: str, bundle_type: str | None = None) -> str:
    """``fhir`` (a FHIR read, a batch Bundle of reads posted to the base included: ``bundle_type``),
    ``fhir-write``, ``discovery``, ``authorize``, ``token``, ``style`` or ``other``."""
    if "/.well-known/" in path:
        return "discovery"
    if path == "/fhir" or path.startswith("/fhir/"):
        return "fhir" if method in ("GET", "HEAD") or bundle_type == "batch" else "fhir-write"
    if path.startswith("/auth/authorize"):
        return "authorize"
    if path == "/auth/token":
        return "token"
    if path == "/smart-style.json":
        return "style"
    return "other"


WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def posted_bundle(environ: dict[str, Any]) -> tuple[bytes, str | None] | None:
    """The body and ``type`` of a Bundle posted to the FHIR base (``None`` for any other request); the
    body is put back for the app behind."""
    if environ.get("REQUEST_METHOD") != "POST" or environ.get("PATH_INFO", "").rstrip("/") != "/fhir":
        return None
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    environ["wsgi.input"] = io.BytesIO(body)
    try:
        kind = json.loads(body).get("type")
    except (ValueError, AttributeError):
        kind = None
    return body, kind if isinstance(kind, str) else None


def _consume(answer: Iterable[bytes]) -> bytes:
    """The whole body of a WSGI answer, closing it as PEP 3333 asks."""
    try:
        return b"".join(answer)
    finally:
        close = getattr(answer, "close", None)
        if close is not None:
            close()


class Counting:
    """Counts requests by :func:`request_kind` and answers ``GET /_stack/requests`` with the counts;
    ``token_bytes`` is the body size of the last token response (the tokens and launch context the EHR
    gave)."""

    def __init__(self, app: WsgiApp) -> None:
        self.app = app
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == COUNTS_PATH:
            with self.lock:
                body = json.dumps(dict(self.counts)).encode()
            start_response("200 OK", [("Content-Type", "application/json")])
            return [body]
        posted = posted_bundle(environ)
        kind = request_kind(environ.get("REQUEST_METHOD", "GET"), path, posted[1] if posted else None)
        with self.lock:
            self.counts[kind] += 1
        if kind != "token":
            return self.app(environ, start_response)
        body = _consume(self.app(environ, start_response))
        with self.lock:
            self.counts["token_bytes"] = len(body)
        return [body]


class Replay:
    """A fast EHR: the first answer to each FHIR read (a GET's path, query and ``Accept-Encoding``; a batch
    Bundle's body) is recorded, later ones replay it without touching the sandbox. Paging links in a
    replayed page name recorded pages, so a whole search replays. Only 200 answers are kept; the token is
    not checked on replay."""

    def __init__(self, app: WsgiApp) -> None:
        self.app = app
        self.recorded: dict[tuple[str, str, str], tuple[str, list[tuple[str, str]], bytes]] = {}
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        posted = posted_bundle(environ)
        if posted is not None and posted[1] == "batch":
            query = posted[0].decode("utf-8", "replace")
        elif environ.get("REQUEST_METHOD") == "GET" and request_kind("GET", path) == "fhir":
            query = environ.get("QUERY_STRING", "")
        else:
            return self.app(environ, start_response)
        key = (path, query, environ.get("HTTP_ACCEPT_ENCODING", ""))
        with self.lock:
            known = self.recorded.get(key)
        if known is not None:
            start_response(known[0], known[1])
            return [known[2]]
        answer: dict[str, Any] = {}

        def recording(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            answer["status"], answer["headers"] = status, list(headers)
            return start_response(status, headers, exc_info)

        body = _consume(self.app(environ, recording))
        if str(answer.get("status", "")).startswith("200"):
            with self.lock:
                self.recorded[key] = (answer["status"], answer["headers"], body)
        return [body]


def serve_sandbox(settings: Mapping[str, Any], *, replay: bool, host: str = "127.0.0.1") -> None:
    """Bind a port, build the sandbox for it (``PUBLIC_URL`` defaults to the bound address), say
    ``listening on URL`` and serve until terminated."""
    from werkzeug.serving import make_server

    from launch.sandbox import create_app
    from launch.sandbox.server import PathOnlyRequestHandler

    holder: dict[str, WsgiApp] = {}

    def late(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        return holder["app"](environ, start_response)

    server = make_server(host, 0, late, threaded=True, request_handler=PathOnlyRequestHandler)
    url = f"http://{host}:{server.server_port}"
    app: WsgiApp = create_app({"PUBLIC_URL": url, **settings})
    holder["app"] = Counting(Replay(app) if replay else app)
    gc.collect()
    gc.freeze()  # the loaded records live as long as the process (as ``back-mice-sandbox serve``)
    print(f"sandbox listening on {url}", flush=True)
    server.serve_forever()


# --- the independent FHIR server ---------------------------------------------------------------------
def cache_root() -> Path:
    """Where ``tests/setup_test_deps.py`` installs the FHIR server's npm packages."""
    return Path(os.environ.get("SMART_APP_CACHE") or Path.home() / ".cache" / "smart-app")


def fhir_server_install(source: Path) -> Path:
    """The finished npm install (``.installed``) in the cache whose ``package-lock.json`` is ``source``'s."""
    lock = (source / "package-lock.json").read_bytes()
    for candidate in sorted(cache_root().glob("fhir-server-*")):
        try:
            if (candidate / ".installed").is_file() and (
                candidate / "package-lock.json"
            ).read_bytes() == lock:
                return candidate
        except OSError:
            continue
    raise StackError(
        f"the FHIR server of {source} is not installed in {cache_root()}: run tests/setup_test_deps.py"
    )


def batch_of_puts(bundle: Mapping[str, Any]) -> dict[str, Any]:
    """A batch Bundle that stores each resource of ``bundle`` under its own id (FHIR R4 http.html#update,
    update as create), so the server keeps the ids the record's references use."""
    entries = [
        {
            "resource": entry["resource"],
            "request": {
                "method": "PUT",
                "url": f"{entry['resource']['resourceType']}/{entry['resource']['id']}",
            },
        }
        for entry in bundle.get("entry") or []
        if isinstance(entry.get("resource"), dict) and entry["resource"].get("id")
    ]
    return {"resourceType": "Bundle", "type": "batch", "entry": entries}


class FhirServer(Service):
    """``node server.mjs`` of ``source`` (``tests/fhir-server``) seeded with ``seeds`` (batch or
    transaction Bundle files); ``base_url`` is the FHIR base it writes into links (its front's)."""

    def __init__(
        self,
        workdir: Path,
        source: Path,
        seeds: Sequence[Path],
        *,
        base_url: str | None = None,
        max_page_size: int = 1000,
    ) -> None:
        install = fhir_server_install(source)
        run = Path(tempfile.mkdtemp(prefix="fhir-server-", dir=workdir))
        for script in source.glob("*.mjs"):
            shutil.copy2(script, run / script.name)
        (run / "node_modules").symlink_to(install / "node_modules", target_is_directory=True)
        bundled = install / "node_modules" / ".bin" / "node"
        node = str(bundled) if bundled.exists() else shutil.which("node")
        if node is None:
            raise StackError("node is not installed: run tests/setup_test_deps.py")
        argv = [
            node,
            str(run / "server.mjs"),
            "--port",
            "0",
            "--host",
            "127.0.0.1",
            "--quiet",
            "--max-page-size",
            str(max_page_size),
        ]
        argv += ["--base-url", base_url] if base_url else []
        for seed in seeds:
            argv += ["--seed", str(seed)]
        super().__init__("fhir-server", argv, workdir)
        match = self.wait_for_line(_FHIR_LISTENING, seconds=600)
        self.url, self.base_url = match.group(1).decode(), match.group(2).decode()
        self.port = int(self.url.rsplit(":", 1)[1])


# --- app instances behind a balancer ---------------------------------------------------------------------
class Pair:
    """App instances sharing Redis behind one HAProxy; ``url`` is the app's public URL (the proxy's)."""

    def __init__(
        self,
        services: Services,
        workdir: Path,
        *,
        registrations_dir: Path,
        redis_url: str,
        port: int,
        instances: int = 2,
        workers: int = 1,
        settings: Mapping[str, Any] | None = None,
        secret_key: str | None = None,
        public_host: str = "127.0.0.1",
    ) -> None:
        """``public_host`` names the proxy in the app's public URL (``localhost`` makes the app another
        site than a sandbox on ``127.0.0.1``, as an EHR and an app are)."""
        import secrets

        self.url = f"http://{public_host}:{port}"
        key = secret_key or secrets.token_urlsafe(48)  # one secret for all: cookies and CSRF tokens
        self.instances: list[AppInstance] = []
        for number in range(1, instances + 1):
            name = f"app{number}"
            env = app_environment(
                public_url=self.url,
                registrations_dir=registrations_dir,
                secret_key=key,
                redis_url=redis_url,
                instance_path=workdir / f"{name}-instance",
                settings=settings,
            )
            self.instances.append(services.add(AppInstance(name, workdir, env, workers=workers)))
        servers = [(instance.name, instance.port) for instance in self.instances]
        self.proxy: HAProxy = services.add(
            HAProxy("haproxy-app", workdir, port, balancer_config(port, servers))
        )

    def cpu_seconds(self) -> float:
        return sum(instance.cpu_seconds() for instance in self.instances)

    def worker_rss(self) -> list[int]:
        return [rss for instance in self.instances for rss in instance.worker_rss()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.stack", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    sandbox = commands.add_parser("sandbox", help="serve the sandbox EHR with request counting")
    sandbox.add_argument("--settings", required=True, help="a JSON file of sandbox settings")
    sandbox.add_argument("--replay", action="store_true", help="replay recorded FHIR answers (a fast EHR)")
    args = parser.parse_args(argv)
    settings = json.loads(Path(args.settings).read_text(encoding="utf-8"))
    serve_sandbox(settings, replay=args.replay)
    return 0


if __name__ == "__main__":
    sys.exit(main())
