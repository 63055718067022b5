"""Shared inputs for the drafting, profile and write-back tests.

- hand-written assessments (``tests/golden/assessments/*.json``) that follow the Assessment's
  ``Assessment.to_json()`` shape exactly, so drafting is tested independently of the engine;
- the corpus: every sandbox patient (``launch/data``) and every clinical case (``tests/cases``) run
  through ``load_bundle`` + ``assess``, for "every draft the engine can produce".
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
ASSESSMENT_DIR = GOLDEN_DIR / "assessments"
DATA_DIR = ROOT / "launch" / "data"
CASES_DIR = Path(__file__).resolve().parent / "cases"
#: Fixed Provenance.recorded for reproducible drafts.
RECORDED = datetime(2026, 11, 24, 12, 30, tzinfo=UTC)
#: Evaluation time of a sandbox patient whose Bundle has no timestamp.
DEFAULT_AS_OF = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
AUTHOR = "Practitioner/dr-demo"


def parse_instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def hand_assessment(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((ASSESSMENT_DIR / f"{name}.json").read_text(encoding="utf-8"))
    return data


def hand_assessment_names() -> list[str]:
    return sorted(p.stem for p in ASSESSMENT_DIR.glob("*.json"))


def patient_files() -> list[Path]:
    return sorted(DATA_DIR.glob("*.json"))


def case_files() -> list[Path]:
    return sorted(CASES_DIR.glob("*.json"))


def patient_input(path: Path) -> tuple[bytes, datetime]:
    """The Bundle bytes of a sandbox patient and its evaluation time (the Bundle timestamp)."""
    data = path.read_bytes()
    stamp = json.loads(data).get("timestamp")
    return data, parse_instant(stamp) if isinstance(stamp, str) else DEFAULT_AS_OF


def case_input(path: Path) -> tuple[bytes, datetime]:
    """A case as a collection Bundle (its Patient first) and its evaluation time."""
    case = json.loads(path.read_text(encoding="utf-8"))
    entries = [{"resource": case["patient"]}] + [{"resource": r} for r in case["resources"]]
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": entries}
    return json.dumps(bundle).encode("utf-8"), parse_instant(case["as_of"])


@cache
def corpus_assessment(kind: str, name: str) -> dict[str, Any]:
    """``assess(...).to_json()`` for a sandbox patient (kind ``patient``) or a case (kind ``case``). A
    case's ``unavailable`` (resource types not read) goes into the record, as the case suite does, so
    the drafts of those cases carry the unavailable-data extension."""
    import dataclasses

    from smart_app.clinical import assess, load_bundle

    path = (DATA_DIR if kind == "patient" else CASES_DIR) / name
    data, as_of = patient_input(path) if kind == "patient" else case_input(path)
    record = load_bundle(data)
    if kind == "case":
        unavailable = json.loads(path.read_text(encoding="utf-8")).get("unavailable")
        if unavailable:
            record = dataclasses.replace(record, unavailable=dict(unavailable))
    result: dict[str, Any] = assess(record, as_of).to_json()
    return result


def corpus_names() -> Iterator[tuple[str, str]]:
    for path in patient_files():
        yield "patient", path.name
    for path in case_files():
        yield "case", path.name


def seed_resources(kind: str, name: str) -> list[dict[str, Any]]:
    """The Patient and resources of a corpus item, for seeding a server."""
    path = (DATA_DIR if kind == "patient" else CASES_DIR) / name
    data = json.loads(path.read_text(encoding="utf-8"))
    if kind == "case":
        return [data["patient"], *data["resources"]]
    return [e["resource"] for e in data.get("entry", []) if isinstance(e, dict) and "resource" in e]
