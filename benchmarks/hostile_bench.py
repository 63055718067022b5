"""The fault catalogue at production settings: what the clinician sees, how long it takes, and the app
process's peak memory, against the misbehaving EHR of ``tests/hostile_ehr.py`` over loopback HTTP.

The app runs in its own process (one werkzeug server, threaded: the worker) with the default settings
(20 s read budget, 64 MB per FHIR answer, 64 KB and 3 s for the style, FHIR read timeout 30 s). Per
fault it prints the page's status and headline, what it says was not read or written, and the seconds
from the click to the page; for the memory faults, the process's peak resident memory (``VmHWM``) after a
normal launch and after the fault, in a fresh process each. ``--before REF`` runs the memory and 429
faults against the app as it was at git ``REF`` too (the baseline, in the same run), with a 120 s patience
for a page that never comes.

    python benchmarks/hostile_bench.py [--before REF] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import html
import json
import logging
import os
import re
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from launch.stack import write_registration  # noqa: E402
from tests.hostile_ehr import PATIENT, HostileEhr, Recorder, write_form  # noqa: E402
from tests.servers import SCOPES, bind, wait_until_answering  # noqa: E402

MB = 1024 * 1024
PATIENCE = 120.0
SERVE_APP = """
import json, sys
from werkzeug.serving import make_server
import smart_app
from smart_app import create_app
print(smart_app.__file__, flush=True)
app = create_app(json.loads(sys.argv[1]))
make_server("localhost", int(sys.argv[2]), app, threaded=True).serve_forever()
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def peak_mib(pid: int) -> tuple[float, float]:
    """(VmHWM, VmRSS) of a process, in MiB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    return int(fields["VmHWM"].split()[0]) / 1024, int(fields["VmRSS"].split()[0]) / 1024


class Bench:
    """The hostile EHR in this process, the app in a child process."""

    def __init__(self, tmp: Path, *, source: Path | None, app_config: dict[str, Any], mode: str) -> None:
        from launch.sandbox import create_app as create_sandbox

        self.ehr_server, self.other_server = bind("127.0.0.1"), bind("127.0.0.1")
        port = free_port()
        self.app_url = f"http://localhost:{port}"
        sandbox = create_sandbox(
            {
                "TESTING": True,
                "PUBLIC_URL": self.ehr_server.url,
                "APP_LAUNCH_URL": f"{self.app_url}/launch",
                "CLIENTS": [
                    {
                        "client_id": "back-mice-bench",
                        "client_type": "public",
                        "redirect_uris": [f"{self.app_url}/callback"],
                    }
                ],
                "SIGNING_KEY_PATH": str(tmp / "sandbox-key.pem"),
                # Launches without an encounter, as the sandbox made them before: the app before these
                # changes could not write drafts with one (an unrelated bug), which would hide the faults.
                "EHR_LAUNCH_ENCOUNTER": "named",
            }
        )
        registrations = tmp / "registrations"
        write_registration(
            registrations,
            ident="bench",
            name="Hostile EHR (bench)",
            fhir_base=f"{self.ehr_server.url}/fhir",
            client_id="back-mice-bench",
            scopes=SCOPES,
            frame_ancestor=self.ehr_server.url,
            writeback={"mode": mode, "assessment_as": "ClinicalImpression"},
        )
        self.hostile, self.other = HostileEhr(sandbox), Recorder()
        self.ehr_server.start(self.hostile)
        self.other_server.start(self.other)
        config = {
            "TESTING": True,
            "SECRET_KEY": "bench-secret-not-for-production",
            "PUBLIC_URL": self.app_url,
            "REGISTRATIONS_DIRS": [str(registrations)],
            "SESSION_COOKIE_SAMESITE": "Lax",
            "SESSION_COOKIE_SECURE": False,
            "INSTANCE_PATH": str(tmp / "app-instance"),
            **app_config,
        }
        env = {**os.environ, "PYTHONPATH": str(source) if source else str(ROOT)}
        self.process = subprocess.Popen(
            [sys.executable, "-c", SERVE_APP, json.dumps(config), str(port)],
            env=env,
            cwd=tmp,  # not the checkout: its smart_app would shadow PYTHONPATH
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.process.stdout is not None
        self.code = self.process.stdout.readline().strip()
        wait_until_answering(f"{self.app_url}/", process=self.process)

    def stop(self) -> None:
        self.hostile.stop.set()
        self.process.terminate()
        self.process.wait(timeout=10)
        self.ehr_server.stop()
        self.other_server.stop()

    def launch(self, browser: requests.Session) -> requests.Response:
        made = requests.get(f"{self.ehr_server.url}/ehr/launch-url", params={"patient": PATIENT}, timeout=10)
        return browser.get(made.json()["url"], timeout=PATIENCE)

    def write(self, browser: requests.Session, page: str) -> requests.Response:
        form = write_form(page)
        assert form is not None, "the review offers the write"
        return browser.post(f"{self.app_url}/writeback", data=form, allow_redirects=False, timeout=PATIENCE)


def what_it_says(page: requests.Response) -> str:
    """The headline and what the page says was not read, written or fetched, in one line."""
    text = page.text
    heading = re.search(r"<h1[^>]*>(.*?)</h1>", text, re.S)
    parts = [re.sub(r"<[^>]+>", "", heading.group(1)).strip() if heading else ""]
    summary = re.search(r'<p id="write-summary">(.*?)</p>', text, re.S)
    if summary:
        parts.append(summary.group(1))
    for line in re.findall(r'<p id="cut-short">.*?<ul>(.*?)</ul>', text, re.S):
        parts += [
            re.sub(r"<[^>]+>", "", item).split(": ", 1)[-1].strip()
            for item in re.findall(r"<li>(.*?)</li>", line, re.S)
        ]
    failures = re.search(r"these reads failed:</p>(.*?)</ul>", text, re.S)
    if failures:
        parts.append(
            "failed: " + re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", failures.group(1))).strip()[:100]
        )
    if "Nothing was written" in text:
        parts.append("Nothing was written")
    ids = re.findall(r'<table class="written">.*?</table>', text, re.S)
    if ids and re.search(r"<td>(<a [^>]*>)?(</a>)?</td>", ids[0]):
        parts.append("blank ids in the table")
    name = re.search(r'<span class="pb-name">(.*?)</span>', text, re.S)
    if name and any(c in text for c in "\u202e\u2067\x00"):
        parts.append(
            f"banner name holds bidi/NUL controls ({len(re.sub(r'<[^>]+>', '', name.group(1)))} chars)"
        )
    elif name and "ehr-cut" in name.group(1):
        parts.append("banner name cleaned, cut at 120 characters (whole in its title)")
    return html.unescape(" · ".join(p for p in parts if p))[:300]


@dataclass
class Fault:
    name: str
    shows: str  # what the fault does, for the table
    setup: Callable[[Bench], None]
    write: bool = False
    mode: str = "transaction"


def style_body(size: int) -> Callable[[], Any]:
    def body() -> Any:
        yield b'{"color_text": "#111111",'
        block = b" " * MB
        for _ in range(size // MB):
            yield block
        yield b'"dim_font_size": "15px"}'

    return body


def token_with_style(url: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda token: {**token, "smart_style_url": url}


def spoof_name(patient: dict[str, Any]) -> dict[str, Any]:
    patient["name"] = [
        {"use": "official", "given": ["Ja\u202emes\u0000"], "family": "\u2067Kowalski" + "K" * 500}
    ]
    return patient


FAULTS = [
    Fault("normal", "no fault", lambda b: None),
    Fault(
        "drip",
        "Observation body, 1 byte every 10 s",
        lambda b: b.hostile.set("Observation", kind="drip", interval=10),
    ),
    Fault(
        "429-storm",
        "Observation: 429, Retry-After 10, every time",
        lambda b: b.hostile.set("Observation", kind="status", status=429, retry_after=10),
    ),
    Fault(
        "gzip-bomb",
        "Observation: 205 KB gzip, 200 MB unpacked",
        lambda b: b.hostile.set("Observation", kind="gzip_bomb", unpacked=200 * MB),
    ),
    Fault(
        "50mb-page",
        "Observation: one 50 MB page",
        lambda b: b.hostile.set("Observation", kind="huge_page", bytes=50 * MB),
    ),
    Fault(
        "style-300mb",
        "smart_style_url answers 300 MB",
        lambda b: b.hostile.set("style", kind="body", body=style_body(300 * MB)),
    ),
    Fault(
        "style-redirect",
        "smart_style_url redirects to another host",
        lambda b: b.hostile.set("style", kind="redirect", location=f"{b.other_server.url}/style.json"),
    ),
    Fault(
        "style-port",
        "smart_style_url on another port of the issuer's host",
        lambda b: b.hostile.set(
            "token", kind="rewrite", fn=token_with_style(f"{b.other_server.url}/style.json")
        ),
    ),
    Fault(
        "style-drip",
        "smart_style_url, 1 byte every 1 s",
        lambda b: b.hostile.set("style", kind="drip", interval=1),
    ),
    Fault(
        "bidi-name",
        "Patient name with RLO, NUL, isolates, 500 more letters",
        lambda b: b.hostile.set("Patient", kind="rewrite", fn=spoof_name),
    ),
    Fault(
        "partial-transaction",
        "transaction: 3 of 5 entries stored, then 500",
        lambda b: b.hostile.set("transaction", kind="partial", keep=3, times=1),
        write=True,
    ),
    Fault(
        "commit-then-timeout",
        "transaction stored, answer held 35 s (read timeout 30 s)",
        lambda b: b.hostile.set("transaction", kind="hold", delay=35, times=1),
        write=True,
    ),
    Fault(
        "201-no-location",
        "transaction entries with a bare 201",
        lambda b: b.hostile.set("transaction", kind="no_location"),
        write=True,
    ),
    Fault(
        "201-no-location-seq",
        "sequential creates: 201 without Location or body",
        lambda b: b.hostile.set("create", kind="no_location"),
        write=True,
        mode="sequential",
    ),
    Fault(
        "refused-write",
        "transaction refused 422",
        lambda b: b.hostile.set("transaction", kind="status", status=422, times=1),
        write=True,
    ),
]
MEMORY_FAULTS = ("normal", "gzip-bomb", "50mb-page")
#: The defaults, but for the style cache: each run's warm-up launch must not leave the style cached.
NOW = {"STYLE_CACHE_SECONDS": 0}
BEFORE_FAULTS = (
    "normal",
    "drip",
    "429-storm",
    "gzip-bomb",
    "50mb-page",
    "bidi-name",
    "partial-transaction",
    "commit-then-timeout",
    "201-no-location",
    "201-no-location-seq",
)


def run(fault: Fault, *, source: Path | None, app_config: dict[str, Any]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(Path(tmp), source=source, app_config=app_config, mode=fault.mode)
        try:
            with requests.Session() as browser:
                warm = bench.launch(browser)  # a normal launch first: the baseline of this process
                base_peak, _ = peak_mib(bench.process.pid)
                fault.setup(bench)
                started = time.monotonic()
                try:
                    page = bench.write(browser, warm.text) if fault.write else bench.launch(browser)
                    seconds, status, says = time.monotonic() - started, page.status_code, what_it_says(page)
                except requests.Timeout:
                    seconds, status, says = (
                        time.monotonic() - started,
                        None,
                        f"no page within {PATIENCE:.0f} s",
                    )
                peak, rss = peak_mib(bench.process.pid)
                if fault.name.startswith("style"):
                    css = browser.get(f"{bench.app_url}/theme.css", timeout=10).text
                    says += " · theme: " + ("EHR style applied" if "--" in css else "the app's own look")
                    says += f" · other host asked {len(bench.other.requests)} times"
            return {
                "fault": fault.name,
                "what": fault.shows,
                "status": status,
                "seconds": seconds,
                "says": says,
                "base_mib": base_peak,
                "peak_mib": peak,
                "rss_mib": rss,
                "code": bench.code,
            }
        finally:
            bench.stop()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--before", metavar="REF", help="also run the memory and 429 faults against git REF")
    parser.add_argument("--only", nargs="*", help="fault names to run")
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    chosen = [f for f in FAULTS if not args.only or f.name in args.only]
    print(f"load average before: {os.getloadavg()[0]:.2f}; cores: {os.cpu_count()}")
    print("\n| fault | what the EHR does | status | seconds | what the page says |")
    print("|---|---|---|---|---|")
    results = []
    for fault in chosen:
        result = run(fault, source=None, app_config=NOW)
        results.append(result)
        cells = [fault.name, fault.shows, result["status"], f"{result['seconds']:.1f}", result["says"]]
        print("| " + " | ".join(str(c) for c in cells) + " |", flush=True)
    capped = (
        run(
            next(f for f in FAULTS if f.name == "50mb-page"),
            source=None,
            app_config={**NOW, "FHIR_MAX_RESPONSE_BYTES": 16 * MB},
        )
        if not args.only or "50mb-page" in args.only
        else None
    )
    rows = [("now", r) for r in results if r["fault"] in MEMORY_FAULTS]
    if capped:
        rows.append(("now, cap 16 MB", capped))
    if args.before:
        with tempfile.TemporaryDirectory() as old:
            archive = subprocess.run(
                ["git", "-C", str(ROOT), "archive", args.before, "smart_app"], check=True, capture_output=True
            ).stdout
            with tarfile.open(fileobj=__import__("io").BytesIO(archive)) as tar:
                tar.extractall(old, filter="data")
            print(f"\nBaseline: the app at {args.before} (same run, same faults)\n")
            print("| fault | status | seconds | what the page says |")
            print("|---|---|---|---|")
            for fault in chosen:
                if fault.name not in BEFORE_FAULTS:
                    continue
                result = run(fault, source=Path(old), app_config={})
                assert result["code"].startswith(old), result["code"]
                rows.append((f"before ({args.before})", result))
                cells = [fault.name, result["status"], f"{result['seconds']:.1f}", result["says"][:160]]
                print("| " + " | ".join(str(c) for c in cells) + " |", flush=True)
    print("\nPeak resident memory of the app process (VmHWM), MiB, a fresh process per row\n")
    print("| app | fault | after a normal launch | after the fault | growth |")
    print("|---|---|---|---|---|")
    for label, result in rows:
        if result["fault"] in MEMORY_FAULTS:
            growth = result["peak_mib"] - result["base_mib"]
            cells = [
                label,
                result["fault"],
                f"{result['base_mib']:.0f}",
                f"{result['peak_mib']:.0f}",
                f"+{growth:.0f}",
            ]
            print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
