"""Shared fixtures for the auditor tests: the sandbox EHR as a real HTTP server on a free loopback port,
a bearer token from its token store, and write-backs made the way the app makes them."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from werkzeug.serving import make_server

from launch.sandbox import create_app as create_sandbox
from launch.sandbox.oauth import Grant
from launch.sandbox.state import SandboxState

AUTHOR = "Practitioner/audit-doc"
#: A fixed evaluation time, so the tests do not depend on when they run.
AS_OF = datetime(2026, 11, 24, 10, 0, 0, tzinfo=UTC)


@dataclass
class Sandbox:
    base: str
    state: SandboxState
    token: str
    written: dict[str, dict[str, Any]] = field(default_factory=dict)

    def client(self, token: str | None = None) -> Any:
        from smart_app.fhir.client import FhirClient

        return FhirClient(self.base, token=token or self.token, max_retries=0)

    def new_token(self, scopes: tuple[str, ...] = ("user/*.cruds",), patient: str | None = None) -> str:
        return self.state.auth.add_access(
            Grant(
                client_id="audit-tests",
                scopes=scopes,
                user=AUTHOR,
                patient=patient,
                encounter=None,
                expires_at=time.time() + 3600,
            )
        )

    def write_for(
        self,
        patient_id: str,
        as_of: datetime = AS_OF,
        assessment_as: str = "ClinicalImpression",
        readable: Callable[[str], bool] | None = None,
    ) -> dict[str, Any]:
        """Read, assess, draft and write for one patient through the app's own pipeline. ``readable``
        narrows what is read (a type it refuses is recorded as not read: scope not granted)."""
        from smart_app import pipeline
        from smart_app.smart.scopes import ScopeSet
        from smart_app.writeback import write_drafts

        client = self.client()
        review = pipeline.review_patient(
            client,
            patient_id,
            ScopeSet.parse("user/*.cruds"),
            author=AUTHOR,
            encounter=None,
            as_of=as_of,
            assessment_as=assessment_as,
            readable=readable,
        )
        assert review.drafts is not None, f"no drafts for {patient_id}"
        outcome = write_drafts(client, review.drafts, "transaction")
        assert outcome.ok, outcome.to_json()
        refs = [f"{w.resource_type}/{w.id}" for w in outcome.written]
        info = {
            "patient": f"Patient/{patient_id}",
            "assessment_json": review.assessment,
            "refs": refs,
            "assessment": next(
                r for r in refs if r.startswith(("ClinicalImpression/", "DocumentReference/"))
            ),
            "provenance": next(r for r in refs if r.startswith("Provenance/")),
        }
        self.written[patient_id] = info
        return info

    def exam_for(
        self, patient_id: str, answers: Any, performer: str = "Practitioner/dr-ada", when: datetime = AS_OF
    ) -> dict[str, Any]:
        """Record a focused exam for one patient as the app's exam form does (``answers``: an
        ``ExamAnswers``), with the newest criteria release's terms."""
        from smart_app.clinical.criteria import default_registry
        from smart_app.clinical.recording import exam_terms
        from smart_app.drafts.exam import build_exam_transaction
        from smart_app.writeback import write_drafts

        bundle = build_exam_transaction(
            exam_terms(default_registry().get()),
            answers,
            patient=f"Patient/{patient_id}",
            performer=performer,
            encounter=None,
            recorded=when,
        )
        outcome = write_drafts(self.client(), bundle, "transaction")
        assert outcome.ok, outcome.to_json()
        refs = [f"{w.resource_type}/{w.id}" for w in outcome.written]
        return {
            "bundle": bundle,
            "observations": [r for r in refs if r.startswith("Observation/")],
            "provenance": next(r for r in refs if r.startswith("Provenance/")),
        }


@contextmanager
def http_sandbox(tmp_path: Path, **config: Any) -> Iterator[Sandbox]:
    """The sandbox EHR as a real HTTP server on a free loopback port, with the records' stored dates and
    any other sandbox ``config``."""
    app = create_sandbox(
        {
            "TESTING": True,
            "SIGNING_KEY_PATH": str(tmp_path / "sandbox-key.pem"),
            "DATES": "stored",  # the records as written, evaluated at AS_OF
            **config,
        }
    )
    server = make_server("127.0.0.1", 0, app, threaded=True)
    port = server.server_port
    app.config["PUBLIC_URL"] = f"http://127.0.0.1:{port}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state = app.extensions["sandbox"]
    box = Sandbox(base=f"http://127.0.0.1:{port}/fhir", state=state, token="")
    box.token = box.new_token()
    try:
        yield box
    finally:
        server.shutdown()
        thread.join(timeout=5)
        server.server_close()
