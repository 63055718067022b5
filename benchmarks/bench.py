"""``make bench``: the app's speed and scale in one table, each figure beside a floor or baseline measured
in the same run and beside its target. The benchmark reports; it never fails on a target.

What runs (``launch/stack.py``), all on loopback, every server a process of its own:

- two app instances (``smart-app serve``, gunicorn, ``--workers`` each) behind HAProxy (round robin, no
  stickiness), sharing one Redis for sessions and launches; the app's public URL is the proxy's;
- the sandbox EHR, with the sandbox's patients and two patients of ``--observations`` Observations
  (compact ~0.6 KB and realistic ~1.3 KB records, ``benchmarks/records.py``);
- a *fast EHR*: the same sandbox replaying the answers it recorded on a first launch, so a launch against
  it is the app's own share (the floor of a launch);
- the independent FHIR server (``tests/fhir-server``, Medplum) seeded with the same patients, behind an
  HAProxy front whose ``/fhir`` goes to it and whose SMART authorization server is a sandbox.

Figures: launch (EHR launch URL → review page) p50/p95 per EHR and patient; FHIR round trips per launch
(after the token); app CPU per launch (the instances' processes, ``/proc``); session bytes per launch (the
Redis keys a launch adds); the CLI ``assess`` on a small bundle; the load test (4 / 16 / 32 concurrent
launches: throughput, p95, errors, resident memory per worker).

Usage: ``python benchmarks/bench.py [--runs 10] [--normal-runs 20] [--observations 10000] [--quick]``
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.records import KINDS, big_patient  # noqa: E402
from launch.data import DATA_DIR  # noqa: E402
from launch.sandbox import date_shift, read_json  # noqa: E402
from launch.sandbox.config import DEFAULTS as SANDBOX_DEFAULTS  # noqa: E402
from launch.sandbox.dates import shift_dates  # noqa: E402
from launch.stack import (  # noqa: E402
    FhirServer,
    HAProxy,
    Pair,
    Redis,
    SandboxProcess,
    Services,
    StackError,
    batch_of_puts,
    ehr_front_config,
    free_port,
    registered_scopes,
    sandbox_settings,
    stored_bytes,
    write_registration,
)

FHIR_SERVER_SOURCE = ROOT / "tests" / "fhir-server"
CLIENT_ID = "back-mice-bench"
READER_ID, READER_SECRET = "back-mice-bench-reader", "bench-only-reader-secret"
NORMAL_PATIENTS = ["apatel", "evance", "jkowalski", "lchen", "rsantos", "tokafor"]
PAGE_SIZE = 1000
TIMEOUT = 300
LOAD_LEVELS = (4, 16, 32)
CORES = os.cpu_count() or 1


# --- figures -------------------------------------------------------------------------------------------
def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


@dataclass
class Row:
    figure: str
    measured: str
    baseline: str = ""
    ratio: str = ""
    target: str = ""


@dataclass
class Table:
    rows: list[Row] = field(default_factory=list)

    def add(self, figure: str, measured: str, baseline: str = "", ratio: str = "", target: str = "") -> None:
        self.rows.append(Row(figure, measured, baseline, ratio, target))
        print(f"  {figure}: {measured}  [{baseline}]", file=sys.stderr, flush=True)

    def section(self, title: str) -> None:
        self.rows.append(Row(f"-- {title}", ""))

    def render(self) -> str:
        header = Row("figure", "measured", "floor or baseline (same run)", "ratio", "target")
        widths = [
            max(len(getattr(r, name)) for r in [header, *self.rows] if not r.figure.startswith("--"))
            for name in ("figure", "measured", "baseline", "ratio", "target")
        ]
        lines = []
        for row in [header, *self.rows]:
            if row.figure.startswith("--"):
                lines.append(row.figure)
                continue
            cells = [row.figure, row.measured, row.baseline, row.ratio, row.target]
            lines.append(
                "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()
            )
        return "\n".join(lines)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def ratio(measured: float, baseline: float) -> str:
    return f"{measured / baseline:.1f}x" if baseline > 0 else "-"


def _timed(action: Callable[..., object], *args: Any, collect: bool = True) -> float:
    """Seconds ``action(*args)`` takes after a full collection; with ``collect=False`` the garbage
    collector is paused meanwhile (a floor: no collection of this process's other objects counted)."""
    gc.collect()
    if not collect:
        gc.disable()
    try:
        started = time.perf_counter()
        action(*args)
        return time.perf_counter() - started
    finally:
        gc.enable()


# --- the data ------------------------------------------------------------------------------------------
def write_data(workdir: Path, observations: int) -> tuple[Path, dict[str, str]]:
    """The sandbox's patients plus one big patient per record kind; returns the data directory and the
    big patients' ids by kind."""
    data = workdir / "data"
    shutil.copytree(DATA_DIR, data, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    big = {kind: f"bench-{kind}" for kind in KINDS}
    for kind, patient in big.items():
        (data / f"patient-{patient}.json").write_bytes(
            orjson.dumps(big_patient(patient, observations, KINDS[kind]))
        )
    return data, big


def fhir_server_seeds(workdir: Path, data: Path) -> list[Path]:
    """The data directory's Bundles as batches of PUTs, dates moved as the sandbox moves them."""
    days = date_shift(SANDBOX_DEFAULTS)
    seeds = []
    for number, path in enumerate(sorted(data.rglob("*.json"))):
        seed = workdir / f"seed-{number}.json"
        seed.write_bytes(orjson.dumps(batch_of_puts(shift_dates(read_json(path), days))))
        seeds.append(seed)
    return seeds


def record_counts(data: Path, patient: str) -> dict[str, int]:
    bundle = read_json(data / f"patient-{patient}.json")
    counts: dict[str, int] = {}
    for entry in bundle["entry"]:
        counts[entry["resource"]["resourceType"]] = counts.get(entry["resource"]["resourceType"], 0) + 1
    return counts


def least_round_trips(counts: dict[str, int]) -> int:
    """The Patient read and the Observation and Condition searches with their pages (FHIR R4 search.html
    paging at ``_count`` 1000): what the criteria need for a patient not on the treatment ladder."""
    return 1 + sum(max(1, math.ceil(counts.get(t, 0) / PAGE_SIZE)) for t in ("Observation", "Condition"))


# --- the EHRs ------------------------------------------------------------------------------------------
@dataclass
class Ehr:
    """One EHR the app is registered with: where launches come from and how its FHIR reads are counted."""

    name: str
    launcher: SandboxProcess
    fhir_base: str
    fhir_reads: Callable[[], int]
    #: A user-level read token of the EHR's authorization server (set once it runs).
    reader: str = ""

    def token_bytes(self) -> int:
        """The size of the last token response the EHR's authorization server gave."""
        return self.launcher.counts()["token_bytes"]


def sandbox_reads(sandbox: SandboxProcess) -> Callable[[], int]:
    return lambda: sandbox.counts()["fhir"]


def front_reads(front: HAProxy) -> Callable[[], int]:
    """FHIR reads through ``front``: GETs, and Bundles posted to the base (a launch writes nothing, so
    each is its batch read)."""

    def is_read(method: str, path: str) -> bool:
        return method == "GET" or (method == "POST" and path.rstrip("/") == "/fhir")

    return lambda: sum(
        1 for method, path, _, server in front.requests() if server == "fhir" and is_read(method, path)
    )


def reader_token(sandbox: SandboxProcess) -> str:
    """A user-level read token (client_credentials of the bench's reader client)."""
    answer = requests.post(
        f"{sandbox.url}/auth/token",
        data={"grant_type": "client_credentials", "scope": "user/*.rs"},
        auth=(READER_ID, READER_SECRET),
        timeout=30,
    )
    answer.raise_for_status()
    return str(answer.json()["access_token"])


def ehr_alone(
    fhir_base: str, token: str, patient: str, runs: int, budget: float, by: str = "patient"
) -> tuple[float, float, list[bytes]]:
    """The EHR serving the reads the criteria need (Patient, Observation and Condition with their pages,
    in parallel, as one client would), without the app: median and p95 seconds over ``runs`` (fewer once
    ``budget`` seconds have gone), and the bodies. ``by`` is the search parameter naming the patient:
    ``patient`` or ``subject`` (``Patient/<id>``), which R4 defines alike for both types and servers
    may answer at very different speeds."""
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"}

    def search(url: str, params: dict[str, str] | None) -> list[bytes]:
        bodies = []
        with requests.Session() as http:
            next_url: str | None = url
            while next_url:
                answer = http.get(next_url, params=params, headers=headers, timeout=TIMEOUT)
                answer.raise_for_status()
                bodies.append(answer.content)
                next_url = next_link(answer.content)
                params = None
        return bodies

    timings: list[float] = []
    bodies: list[bytes] = []
    query = {by: patient if by == "patient" else f"Patient/{patient}", "_count": str(PAGE_SIZE)}
    for _ in range(runs):
        if timings and sum(timings) > budget:
            break
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=3) as pool:
            futures = [
                pool.submit(search, f"{fhir_base}/Patient/{patient}", None),
                pool.submit(search, f"{fhir_base}/Observation", query),
                pool.submit(search, f"{fhir_base}/Condition", query),
            ]
            bodies = [body for future in futures for body in future.result()]
        timings.append(time.perf_counter() - started)
    return statistics.median(timings), percentile(timings, 0.95), bodies


def read_peak_bytes(ehr: Ehr, patient: str) -> int:
    """The largest Python memory (``tracemalloc``) one launch's read and assessment of ``patient`` holds at
    once, run in this process over HTTP against ``ehr`` (``pipeline.read_and_assess``, as a launch reads)."""
    import tracemalloc
    from datetime import UTC, datetime

    from smart_app import pipeline
    from smart_app.fhir.client import FhirClient

    with FhirClient(ehr.fhir_base, token=ehr.reader) as client:
        # a first read loads the criteria release and its terminology, which a worker keeps
        pipeline.read_and_assess(
            client, patient, lambda _type: True, as_of=datetime.now(UTC), batch_reads=True
        )
        gc.collect()
        tracemalloc.start()
        try:
            pipeline.read_and_assess(
                client, patient, lambda _type: True, as_of=datetime.now(UTC), batch_reads=True
            )
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()


NEXT_LINK = re.compile(rb'"relation"\s*:\s*"next"\s*,\s*"url"\s*:\s*"([^"]+)"')


def next_link(body: bytes) -> str | None:
    """The ``next`` link of a searchset page, found without decoding the page (the EHR alone should
    cost the EHR's time, not a client's decoding); a page whose links are written otherwise is decoded,
    the collector paused."""
    found = NEXT_LINK.search(body)
    if found:
        return found.group(1).decode()
    gc.disable()
    try:
        links = orjson.loads(body).get("link") or []
    finally:
        gc.enable()
    return next((link["url"] for link in links if link.get("relation") == "next"), None)


def decode_seconds(bodies: list[bytes], runs: int = 5) -> float:
    """Median seconds to ``orjson.loads`` every body, the collector paused: the floor of reading them."""
    return statistics.median(_timed(_decode_all, bodies, collect=False) for _ in range(runs))


def _decode_all(bodies: list[bytes]) -> None:
    for body in bodies:
        orjson.loads(body)


# --- launches ------------------------------------------------------------------------------------------
@dataclass
class Launches:
    seconds: list[float] = field(default_factory=list)
    round_trips: list[int] = field(default_factory=list)
    session_bytes: list[int] = field(default_factory=list)
    cpu_seconds: float = 0.0
    errors: int = 0

    @property
    def count(self) -> int:
        return len(self.seconds)


def launch_once(ehr: Ehr, pair: Pair, patient: str) -> tuple[float, bool]:
    """One EHR launch in a fresh browser: seconds from the app's launch URL to the review page."""
    url = ehr.launcher.launch_url(patient)
    with requests.Session() as browser:
        started = time.perf_counter()
        try:
            page = browser.get(url, timeout=TIMEOUT)
        except requests.RequestException:
            return time.perf_counter() - started, False
        elapsed = time.perf_counter() - started
    return elapsed, page.status_code == 200 and page.url.startswith(f"{pair.url}/review")


def measure_one(ehr: Ehr, pair: Pair, redis: Any, patient: str, into: Launches) -> float:
    """One launch into ``into`` with its round trips, app CPU and the bytes of the Redis keys it added."""
    keys_before = set(stored_bytes(redis))
    reads_before = ehr.fhir_reads()
    cpu_before = pair.cpu_seconds()
    elapsed, ok = launch_once(ehr, pair, patient)
    into.cpu_seconds += pair.cpu_seconds() - cpu_before
    if not ok:
        into.errors += 1
        return elapsed
    into.seconds.append(elapsed)
    into.round_trips.append(ehr.fhir_reads() - reads_before)
    added = {key: size for key, size in stored_bytes(redis).items() if key not in keys_before}
    into.session_bytes.append(sum(added.values()))
    return elapsed


def measure_launches(
    ehr: Ehr, floor: Ehr, pair: Pair, redis: Any, patients: Sequence[str], runs: int, budget: float
) -> tuple[Launches, Launches]:
    """``runs`` launches against ``ehr`` one after another, each paired with one against ``floor`` (so the
    machine's other work falls on both alike), the pair's order alternating (so each EHR's launches start
    on every app instance alike); fewer once ``budget`` seconds have gone, at least 2."""
    measured, floor_launches = Launches(), Launches()
    spent = 0.0
    for number in range(runs):
        if number >= 2 and spent > budget:
            break
        patient = patients[number % len(patients)]
        if number % 2:
            spent += measure_one(ehr, pair, redis, patient, measured)
            measure_one(floor, pair, redis, patient, floor_launches)
        else:
            measure_one(floor, pair, redis, patient, floor_launches)
            spent += measure_one(ehr, pair, redis, patient, measured)
    return measured, floor_launches


def bare_request_cpu(pair: Pair, requests_count: int = 40) -> float:
    """App CPU seconds of one bare request through the proxy (the JWK set): the cost of a hop."""
    with requests.Session() as http:
        http.get(f"{pair.url}/.well-known/jwks.json", timeout=30)
        before = pair.cpu_seconds()
        for _ in range(requests_count):
            http.get(f"{pair.url}/.well-known/jwks.json", timeout=30)
        return (pair.cpu_seconds() - before) / requests_count


def launch_section(
    table: Table,
    ehr: Ehr,
    fast: Ehr,
    pair: Pair,
    redis: Any,
    label: str,
    patients: Sequence[str],
    counts: dict[str, int],
    runs: int,
    budget: float,
    hop_cpu: float,
) -> Launches:
    """The rows of one EHR and patient: latency beside the fast EHR's and the EHR's own; round trips,
    CPU and session bytes beside their floors."""
    for patient in patients:  # the fast EHR records the answers it will replay; each EHR's first
        launch_once(fast, pair, patient)  # launches on each instance (its discovery, CapabilityStatement
        launch_once(ehr, pair, patient)  # and JWK set) are start-up, not the launch measured
    measured, floor = measure_launches(ehr, fast, pair, redis, patients, runs, budget)
    alone_p50, alone_p95, bodies = ehr_alone(ehr.fhir_base, ehr.reader, patients[0], 3, budget / 4)
    subject_p50, subject_p95, _ = ehr_alone(ehr.fhir_base, ehr.reader, patients[0], 3, budget / 4, "subject")
    where = f"{label}, {ehr.name}"
    if not measured.seconds:
        table.add(f"launch, {where}", f"all {measured.errors} launches failed")
        return measured
    p50, p95 = statistics.median(measured.seconds), percentile(measured.seconds, 0.95)
    floor_p50 = statistics.median(floor.seconds) if floor.seconds else 0.0
    floor_p95 = percentile(floor.seconds, 0.95) if floor.seconds else 0.0
    big = counts.get("Observation", 0) >= 1000
    n = f"n={measured.count}" + (f", {measured.errors} failed" if measured.errors else "")
    table.add(
        f"launch p50, {where} ({n})",
        ms(p50),
        f"{ms(floor_p50)} fast EHR (app's share); EHR alone {ms(alone_p50)} by patient=, "
        f"{ms(subject_p50)} by subject=",
        ratio(p50, floor_p50),
    )
    table.add(
        f"launch p95, {where}",
        ms(p95),
        f"{ms(floor_p95)} fast EHR (app's share); EHR alone {ms(alone_p95)} by patient=, "
        f"{ms(subject_p95)} by subject=",
        ratio(p95, floor_p95),
        "<= 1000 ms" if big else "",
    )
    least = least_round_trips(counts)
    fewest, most = min(measured.round_trips), max(measured.round_trips)
    table.add(
        f"FHIR round trips per launch, {where}",
        f"{fewest}" + (f"; {most} for a patient on the treatment ladder" if most != fewest else ""),
        f"{least}: Patient + Observation + Condition, {PAGE_SIZE} a page",
        ratio(fewest, least),
        f"<= 3 plus paging ({least}) off the ladder",
    )
    cpu = measured.cpu_seconds / max(1, measured.count + measured.errors)
    decode = decode_seconds(bodies)
    cpu_floor = 3 * hop_cpu + decode
    table.add(
        f"app CPU per launch, {where}",
        ms(cpu),
        f"{ms(cpu_floor)}: 3 bare requests ({ms(hop_cpu)} each) + orjson decode of the pages ({ms(decode)})",
        ratio(cpu, cpu_floor),
        "" if big else "<= 20 ms",
    )
    if big:
        peak, largest = read_peak_bytes(ehr, patients[0]), max(len(body) for body in bodies)
        table.add(
            f"read memory peak, {where}",
            f"{peak / 2**20:.1f} MB",
            f"{largest / 2**20:.1f} MB: the largest page (tracemalloc, one read and assessment)",
            ratio(peak, largest),
            "< 3x the largest page",
        )
    session = statistics.median(measured.session_bytes)
    token = ehr.token_bytes()
    table.add(
        f"session bytes per launch, {where}",
        f"{session / 1024:.1f} KB",
        f"{token / 1024:.1f} KB: the EHR's token response (tokens + launch context)",
        ratio(session, token),
        "<= 4 KB",
    )
    return measured


# --- bytes to assessment -------------------------------------------------------------------------------
def assessment_section(table: Table, observations: int, runs: int = 3) -> None:
    """The clinical core alone on each big record: Bundle bytes → Assessment (``assess_bundle``, streamed)
    beside ``orjson.loads`` of the same bytes."""
    from datetime import UTC, datetime

    from smart_app.clinical import assess_bundle

    as_of = datetime.now(UTC)
    for kind, make in KINDS.items():
        data = orjson.dumps(big_patient(f"bench-{kind}", observations, make))
        assess_bundle(data, as_of)  # criteria and terminology load once per process
        assess_s = statistics.median(_timed(assess_bundle, data, as_of) for _ in range(runs))
        decode_s = statistics.median(_timed(orjson.loads, data, collect=False) for _ in range(runs))
        table.add(
            f"bytes -> assessment, {observations} {kind} Observations ({len(data) / 2**20:.1f} MB)",
            ms(assess_s),
            f"{ms(decode_s)} orjson.loads of the same bytes, the collector paused",
            ratio(assess_s, decode_s),
        )


# --- the command line ----------------------------------------------------------------------------------
def run_seconds(argv: Sequence[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)
    elapsed = time.perf_counter() - started
    if done.returncode not in (0, 1):  # 1: the assessment has findings
        raise RuntimeError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.decode()[-500:]}")
    return elapsed


def cli_section(table: Table, runs: int) -> None:
    """``smart-app assess`` on a small bundle beside ``python -c "import orjson"`` and ``python -c pass``,
    run in turns so that the machine's load falls on each alike. The app's modules are compiled to
    bytecode first, as ``pip install`` does: a run with ``PYTHONDONTWRITEBYTECODE`` set and no bytecode
    would compile every module each time (the installed packages were compiled by pip)."""
    import compileall

    import smart_app

    compileall.compile_dir(Path(smart_app.__file__).parent, quiet=1)
    bundle = DATA_DIR / "patient-jkowalski.json"
    script = Path(sys.executable).parent / "smart-app"
    assess = [str(script)] if script.exists() else [sys.executable, "-m", "smart_app.cli"]
    commands = {
        "assess": [*assess, "assess", "--bundle", str(bundle), "--json"],
        "orjson": [sys.executable, "-c", "import orjson"],
        "pass": [sys.executable, "-c", "pass"],
    }
    timings: dict[str, list[float]] = {name: [] for name in commands}
    for argv in commands.values():
        run_seconds(argv)  # warm the page cache
    for _ in range(runs):
        for name, argv in commands.items():
            timings[name].append(run_seconds(argv))
    assess_s, orjson_s, pass_s = (statistics.median(timings[name]) for name in commands)
    table.add(
        f"CLI assess, small bundle (median of {runs}, bytecode compiled)",
        ms(assess_s),
        f"{ms(orjson_s)} python -c 'import orjson'; {ms(pass_s)} python -c pass ({ratio(assess_s, pass_s)})",
        ratio(assess_s, orjson_s),
        "<= 2x import orjson",
    )


# --- the load test -------------------------------------------------------------------------------------
def stack_cpu_seconds(services: Services) -> float:
    """CPU time so far of every server of the stack and of this process (the browsers)."""
    own = os.times()
    return sum(service.cpu_seconds() for service in services) + own.user + own.system


def load_section(
    table: Table,
    services: Services,
    ehr: Ehr,
    pair: Pair,
    concurrency: int,
    launches: int,
    sequential_p95: float,
    rss_at_start: int,
    rss_before_load: int,
) -> None:
    """``launches`` launches of the normal patients by ``concurrency`` browsers at once. The throughput's
    baseline is the machine's ceiling: its cores divided by the CPU one launch costs the whole stack."""
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()

    def one(number: int) -> None:
        nonlocal errors
        try:
            elapsed, ok = launch_once(ehr, pair, NORMAL_PATIENTS[number % len(NORMAL_PATIENTS)])
        except requests.RequestException:
            elapsed, ok = 0.0, False
        with lock:
            if ok:
                latencies.append(elapsed)
            else:
                errors += 1

    cpu_before, stack_before = pair.cpu_seconds(), stack_cpu_seconds(services)
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(one, range(launches)))
    wall = time.perf_counter() - started
    cpu = (pair.cpu_seconds() - cpu_before) / launches
    stack = (stack_cpu_seconds(services) - stack_before) / launches
    rss = max(pair.worker_rss() or [0])
    throughput = len(latencies) / wall
    where = f"{concurrency} concurrent launches, {launches} in all"
    table.add(
        f"throughput, {where}",
        f"{throughput:.1f} launches/s",
        f"{CORES / stack:.1f}/s: {CORES} cores / CPU per launch of the whole stack ({ms(stack)}, "
        f"of it the app {ms(cpu)})"
        if stack
        else "",
        ratio(throughput, CORES / stack) if stack else "",
    )
    p95 = percentile(latencies, 0.95) if latencies else 0.0
    table.add(
        f"launch p95, {where}",
        ms(p95),
        f"{ms(sequential_p95)} one launch at a time",
        ratio(p95, sequential_p95),
        "<= 500 ms" if concurrency == 16 else "",
    )
    table.add(f"errors, {where}", str(errors), "0", "", "0")
    table.add(
        f"RSS per worker (largest), {where}",
        f"{rss / 2**20:.0f} MB",
        f"{rss_before_load / 2**20:.0f} MB before the load test ({rss_at_start / 2**20:.0f} MB at start)",
        ratio(rss, rss_before_load),
    )


# --- main ---------------------------------------------------------------------------------------------
READER = {
    "client_id": READER_ID,
    "client_type": "confidential-symmetric",
    "client_secret": READER_SECRET,
    "grant_types": ["client_credentials"],
    "scopes": ["user/*.rs"],
}


@dataclass
class Running:
    pair: Pair
    redis: Redis
    data: Path
    big: dict[str, str]
    sandbox: Ehr
    fast: Ehr
    #: The FHIR server for each group of patients ("normal" and each record kind).
    fhir_servers: dict[str, Ehr]


def start(services: Services, workdir: Path, args: argparse.Namespace) -> Running:
    """Redis; the sandbox and the fast EHR over every patient; per group of patients (the normal ones,
    each big one) a FHIR server behind its own front, so that no group's searches pay for another's
    resources; the app pair. Every EHR is registered with the app (one registration file each)."""
    say("starting: data, Redis, sandboxes, FHIR servers, app instances, HAProxy")
    data, big = write_data(workdir, args.observations)
    redis = services.add(Redis(workdir))
    app_port = free_port()
    app_url = f"http://127.0.0.1:{app_port}"

    def settings(data_dir: Path, **extra: Any) -> dict[str, Any]:
        chosen = sandbox_settings(
            workdir, app_url=app_url, client_id=CLIENT_ID, DATA_DIR=str(data_dir), **extra
        )
        chosen["CLIENTS"].append(READER)
        return chosen

    sandbox = services.add(SandboxProcess("sandbox", workdir, settings(data)))
    fast = services.add(SandboxProcess("fast-ehr", workdir, settings(data), replay=True))
    ehrs = {
        "sandbox": Ehr("sandbox", sandbox, sandbox.fhir_base, sandbox_reads(sandbox)),
        "fast": Ehr("fast EHR", fast, fast.fhir_base, sandbox_reads(fast)),
    }
    groups = {
        "normal": [f"patient-{p}.json" for p in NORMAL_PATIENTS],
        **{k: [f"patient-{p}.json"] for k, p in big.items()},
    }
    for group, files in groups.items():
        say(f"starting: FHIR server for the {group} patients")
        group_data = workdir / f"data-{group}"
        group_data.mkdir()
        for name in files:
            shutil.copy2(data / name, group_data / name)
        front_port = free_port()
        front_url = f"http://127.0.0.1:{front_port}"
        auth = services.add(
            SandboxProcess(f"auth-{group}", workdir, settings(group_data, PUBLIC_URL=front_url))
        )
        server = services.add(
            FhirServer(
                workdir,
                FHIR_SERVER_SOURCE,
                fhir_server_seeds(workdir, group_data),
                base_url=f"{front_url}/fhir",
            )
        )
        front = services.add(
            HAProxy(
                f"haproxy-{group}", workdir, front_port, ehr_front_config(front_port, server.port, auth.port)
            )
        )
        ehrs[f"fhir-server-{group}"] = Ehr(
            "FHIR server (Medplum)", auth, f"{front_url}/fhir", front_reads(front)
        )
    registrations = workdir / "registrations"
    for ident, ehr in ehrs.items():
        write_registration(
            registrations,
            ident=f"bench-{ident}",
            fhir_base=ehr.fhir_base,
            client_id=CLIENT_ID,
            scopes=registered_scopes(),
            frame_ancestor=ehr.launcher.url,
        )
    pair = Pair(
        services,
        workdir,
        registrations_dir=registrations,
        redis_url=redis.url,
        port=app_port,
        workers=args.workers,
    )
    for ehr in ehrs.values():
        ehr.reader = reader_token(ehr.launcher)
        for _ in pair.instances:  # each instance discovers each EHR once, before anything is timed
            requests.get(
                f"{pair.url}/launch", params={"iss": ehr.fhir_base}, allow_redirects=False, timeout=60
            )
    servers = {group: ehrs[f"fhir-server-{group}"] for group in groups}
    return Running(pair, redis, data, big, ehrs["sandbox"], ehrs["fast"], servers)


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="launches per big patient and EHR")
    parser.add_argument("--normal-runs", type=int, default=30, help="launches of the normal patients per EHR")
    parser.add_argument("--observations", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=1, help="gunicorn workers per app instance")
    parser.add_argument("--budget", type=float, default=120.0, help="seconds per row before fewer launches")
    parser.add_argument("--cli-runs", type=int, default=10)
    parser.add_argument("--load-launches", type=int, default=96, help="launches per load level")
    parser.add_argument("--quick", action="store_true", help="few launches of each kind (a smoke run)")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.normal_runs, args.cli_runs, args.load_launches, args.budget = 2, 4, 3, 32, 30.0
    table = Table()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp, Services() as services:
        try:
            run = start(services, Path(tmp), args)
        except StackError as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return 1
        pair, redis = run.pair, run.redis.client()
        hop_cpu = bare_request_cpu(pair)
        rss_at_start = max(pair.worker_rss())
        normal_counts = record_counts(run.data, "jkowalski")
        sequential_p95 = 0.0
        for ehr_name, normal_ehr in (
            ("sandbox", run.sandbox),
            ("FHIR server (Medplum)", run.fhir_servers["normal"]),
        ):
            table.section(f"launch to review page against the {ehr_name}")
            measured = launch_section(
                table,
                normal_ehr,
                run.fast,
                pair,
                redis,
                "normal patients",
                NORMAL_PATIENTS,
                normal_counts,
                args.normal_runs,
                args.budget,
                hop_cpu,
            )
            if normal_ehr is run.sandbox and measured.seconds:
                sequential_p95 = percentile(measured.seconds, 0.95)
            for kind, patient in run.big.items():
                big_ehr = run.sandbox if normal_ehr is run.sandbox else run.fhir_servers[kind]
                launch_section(
                    table,
                    big_ehr,
                    run.fast,
                    pair,
                    redis,
                    f"{args.observations} {kind} Observations",
                    [patient],
                    record_counts(run.data, patient),
                    args.runs,
                    args.budget,
                    hop_cpu,
                )
        table.section("the clinical core and the command line")
        assessment_section(table, args.observations)
        cli_section(table, args.cli_runs)
        table.section(
            f"load: {len(pair.instances)} app instances x {args.workers} worker(s) x 4 threads behind "
            "HAProxy, one Redis, the sandbox EHR, normal patients"
        )
        rss_before_load = max(pair.worker_rss())
        for level in LOAD_LEVELS:
            load_section(
                table,
                services,
                run.sandbox,
                pair,
                level,
                max(args.load_launches, 2 * level),
                sequential_p95,
                rss_at_start,
                rss_before_load,
            )
    load = os.getloadavg()
    print()
    print(
        f"make bench: {time.monotonic() - started:.0f} s on {CORES} cores; load average "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the end. Targets are reported, never enforced."
    )
    print(table.render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
