"""Sandbox store as a stand-in for a fast EHR: reference indexes that answer like a full scan, search
snapshots behind next-link cursors, and reads that do not wait for each other."""

from __future__ import annotations

import random
import threading
from urllib.parse import parse_qs, urlsplit

import pytest

from launch.sandbox.locks import ReadWriteLock
from launch.sandbox.paging import Snapshots
from launch.sandbox.store import Store, _matches_param
from tests.sandbox_fixtures import SandboxActions, make_sandbox

LOINC = "http://loinc.org"


def _observation(rid: str, subject: str | None, code: str, *, patient_element: str | None = None) -> dict:
    resource: dict = {
        "resourceType": "Observation",
        "id": rid,
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": code}]},
    }
    if subject:
        resource["subject"] = {"reference": subject}
    if patient_element:
        resource["patient"] = {"reference": patient_element}
    return resource


def _scan(store: Store, rtype: str, filters: list[tuple[str, str]], compartment: str | None = None):
    """What a search must answer: every current resource checked against every filter."""
    found = [r for r in store.all_of_type(rtype) if all(_matches_param(r, n, v) for n, v in filters)]
    if compartment is not None:
        from launch.sandbox.store import patient_references

        found = [
            r for r in found if not patient_references(r) or f"Patient/{compartment}" in patient_references(r)
        ]
    return [r["id"] for r in found]


def test_indexed_search_answers_as_a_full_scan_through_updates_and_rollbacks():
    rng = random.Random(7)
    store = Store()
    subjects = ["Patient/a", "Patient/b", "http://other.example/fhir/Patient/a", "Group/g", None]
    for number in range(300):
        store.put_version(_observation(f"o{number}", rng.choice(subjects), rng.choice(["1", "2"])))
    # Updates that move resources between patients (and to none), then a rolled-back update.
    for number in rng.sample(range(300), 60):
        store.put_version(_observation(f"o{number}", rng.choice(subjects), rng.choice(["1", "2"])))
    store.put_version(_observation("o5", "Patient/b", "1"))
    store.drop_version("Observation", "o5")
    store.put_version(_observation("late", "Patient/a", "1", patient_element="Patient/b"))
    queries = [
        [("patient", "a")],
        [("patient", "Patient/b")],
        [("patient", "a,b")],
        [("patient", "a"), ("code", "2")],
        [("code", "1"), ("subject", "Patient/a")],
        [("subject", "a")],  # a bare subject id: not from the index
        [("subject", "Group/g")],
        [("patient", "nobody")],
    ]
    for filters in queries:
        assert [r["id"] for r in store.search("Observation", filters)] == _scan(store, "Observation", filters)
        for compartment in ("a", "b"):
            expected = _scan(store, "Observation", filters, compartment)
            found = store.search("Observation", filters, compartment=compartment)
            assert [r["id"] for r in found] == expected, (filters, compartment)


def test_search_results_keep_creation_order_after_a_resource_moves_to_a_patient():
    store = Store()
    for rid, subject in [("x1", "Patient/a"), ("x2", "Patient/b"), ("x3", "Patient/a")]:
        store.put_version(_observation(rid, subject, "1"))
    store.put_version(_observation("x2", "Patient/a", "1"))
    assert [r["id"] for r in store.search("Observation", [("patient", "a")])] == ["x1", "x2", "x3"]


def _next(bundle: dict) -> str | None:
    links = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
    if not links:
        return None
    parts = urlsplit(links[0])
    return parts.path.removeprefix("/fhir") + "?" + parts.query


def test_next_links_page_through_a_snapshot_of_the_first_search(actions: SandboxActions, sandbox_app):
    token = actions.access_token("launch patient/*.cruds")
    first = actions.fhir("GET", "/Observation?patient=p1&_count=5", token).json
    url = _next(first)
    assert url and parse_qs(urlsplit(url).query)["_cursor"]
    # A new Observation and a changed one after the first page: the later pages are the snapshot's.
    created = {"resourceType": "Observation", "status": "final", "code": {"text": "new"}}
    created["subject"] = {"reference": "Patient/p1"}
    assert actions.fhir("POST", "/Observation", token, json=created).status_code == 201
    o7 = actions.fhir("GET", "/Observation/o7", token).json
    assert actions.fhir("PUT", "/Observation/o7", token, json={**o7, "status": "amended"}).status_code == 200
    seen = [e["resource"] for e in first["entry"]]
    while url:
        page = actions.fhir("GET", url, token).json
        assert page["total"] == 12
        seen += [e["resource"] for e in page.get("entry", [])]
        url = _next(page)
    assert [r["id"] for r in seen] == [f"o{i}" for i in range(1, 13)]
    assert next(r for r in seen if r["id"] == "o7")["status"] == "final"
    assert actions.fhir("GET", "/Observation?patient=p1", token).json["total"] == 13


def test_a_cursor_shows_nothing_beyond_the_request_own_query(actions: SandboxActions):
    p1_token = actions.access_token("launch patient/*.rs", patient="p1")
    p2_token = actions.access_token("launch patient/*.rs", patient="p2")
    url = _next(actions.fhir("GET", "/Observation?patient=p1&_count=5", p1_token).json)
    assert url is not None
    borrowed = actions.fhir("GET", url, p2_token).json
    assert borrowed["total"] == 0 and "entry" not in borrowed
    other_query = url.replace("patient=p1", "patient=p2")
    assert actions.fhir("GET", other_query, p1_token).json["total"] == 0


def test_an_expired_cursor_runs_the_search_again(data_dir, signing_key_path, client_key):
    app = make_sandbox(data_dir, signing_key_path, client_key, SEARCH_SNAPSHOT_TTL=-1)
    acts = SandboxActions(app.test_client(), client_key)
    token = acts.access_token("launch patient/*.rs")
    url = _next(acts.fhir("GET", "/Observation?patient=p1&_count=5", token).json)
    assert url is not None
    page = acts.fhir("GET", url, token).json
    assert [e["resource"]["id"] for e in page["entry"]] == ["o6", "o7", "o8", "o9", "o10"]


def test_snapshots_are_bounded_and_bound_to_their_query():
    now = [0.0]
    snapshots = Snapshots(ttl=10, max_entries=2, clock=lambda: now[0])
    first = snapshots.put("q1", [{"id": "a"}])
    second = snapshots.put("q2", [])
    assert snapshots.get(first, "q1") == [{"id": "a"}] and snapshots.get(first, "q2") is None
    snapshots.put("q3", [])
    assert snapshots.get(second, "q2") is None and len(snapshots) == 2  # least recently used went
    now[0] = 11
    assert snapshots.get(first, "q1") is None and snapshots.get("unknown", "q1") is None


def test_searches_run_while_another_search_holds_the_store():
    store = Store()
    store.put_version(_observation("o1", "Patient/a", "1"))
    holding, release = threading.Event(), threading.Event()

    def long_search() -> None:
        with store.lock.read():
            holding.set()
            release.wait(10)

    reader = threading.Thread(target=long_search)
    reader.start()
    assert holding.wait(10)
    finished = threading.Event()
    results: list[list[dict]] = []

    def search() -> None:
        results.append(store.search("Observation", [("patient", "a")]))
        finished.set()

    threading.Thread(target=search).start()
    assert finished.wait(5), "a search waited for another search"
    assert [r["id"] for r in results[0]] == ["o1"]
    written = threading.Event()

    def write() -> None:
        store.put_version(_observation("o2", "Patient/a", "1"))
        written.set()

    threading.Thread(target=write).start()
    assert not written.wait(0.2), "a write ran while a search held the store"
    release.set()
    reader.join()
    assert written.wait(5)


def test_read_write_lock_is_reentrant_for_the_writer_and_refuses_foreign_release():
    lock = ReadWriteLock()
    with lock, lock, lock.read():
        pass
    with pytest.raises(RuntimeError):
        lock.release()
