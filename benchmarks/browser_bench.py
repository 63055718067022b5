"""Launch-to-review time in a real browser: median and p95.

Usage: ``python benchmarks/browser_bench.py [--runs 10] [--observations 10000]``

Starts the sandbox EHR (127.0.0.1) and the app (``smart-app serve`` behind HAProxy, public URL on
localhost, so the app is another site than the EHR that frames it) as processes (``launch/stack.py``),
with the sandbox's patients plus one patient of ``--observations`` realistic Observations
(``benchmarks/records.py``). Each run opens the EHR's launch page in a fresh Chromium context (Debian's
``/usr/bin/chromium``) and stops the clock when the review page's headline is visible in the iframe: EHR
launch, authorize, token, FHIR reads, assessment, drafting and rendering are all inside the figure.
Prints one line per patient.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.records import big_patient, realistic  # noqa: E402
from launch.data import DATA_DIR  # noqa: E402
from launch.stack import (  # noqa: E402
    Pair,
    Redis,
    SandboxProcess,
    Services,
    free_port,
    registered_scopes,
    sandbox_settings,
    write_registration,
)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
CLIENT_ID = "back-mice-browser-bench"
BIG = "bench-big"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--observations", type=int, default=10000)
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp_name, Services() as services:
        workdir = Path(tmp_name)
        data = workdir / "data"
        shutil.copytree(DATA_DIR, data, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
        (data / f"patient-{BIG}.json").write_bytes(
            orjson.dumps(big_patient(BIG, args.observations, realistic))
        )
        redis = services.add(Redis(workdir))
        port = free_port()
        app_url = f"http://localhost:{port}"
        settings = sandbox_settings(workdir, app_url=app_url, client_id=CLIENT_ID, DATA_DIR=str(data))
        sandbox = services.add(SandboxProcess("sandbox", workdir, settings))
        registrations = workdir / "registrations"
        write_registration(
            registrations,
            ident="browser-bench",
            fhir_base=sandbox.fhir_base,
            client_id=CLIENT_ID,
            scopes=registered_scopes(),
            frame_ancestor=sandbox.url,
        )
        Pair(
            services,
            workdir,
            registrations_dir=registrations,
            redis_url=redis.url,
            port=port,
            instances=1,
            workers=2,
            public_host="localhost",
            # In the EHR's iframe: a cross-site cookie (Chromium counts http://localhost as secure).
            settings={"SESSION_COOKIE_SAMESITE": "None", "SESSION_COOKIE_SECURE": True},
        )
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            for patient, label in (
                ("jkowalski", "normal (jkowalski)"),
                (BIG, f"{args.observations} Observations"),
            ):
                times: list[float] = []
                for run in range(args.runs + 1):
                    context = browser.new_context(viewport={"width": 1024, "height": 800})
                    page = context.new_page()
                    start = time.perf_counter()
                    page.goto(f"{sandbox.url}/ehr/launch?patient={patient}")
                    page.frame_locator("iframe").locator("h1#headline").wait_for(timeout=120000)
                    elapsed = time.perf_counter() - start
                    context.close()
                    if run:  # the first run warms caches (discovery, templates)
                        times.append(elapsed)
                print(
                    f"{label:28s} runs={len(times)} median={statistics.median(times) * 1000:7.0f} ms "
                    f"p95={percentile(times, 0.95) * 1000:7.0f} ms max={max(times) * 1000:7.0f} ms"
                )
            browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
