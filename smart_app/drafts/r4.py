"""Base FHIR R4 validity of what the app sends, checked with the fhir.resources 6.4 models before any
write or CDS suggestion leaves the app (:func:`smart_app.writeback.validate_drafts`,
:func:`smart_app.cds.actions.suggestion_actions`); the app's own profiles are checked beside it by
:mod:`smart_app.drafts.profiles`.

The drafts are built as plain JSON and shown as built: the review page, which only shows them, does not
pay for the models. ``tests/test_drafting_corpus.py`` holds every draft the engine can produce to the
models, and checks that the models serialise each one unchanged but for writing a UTC instant's ``Z`` as
``+00:00`` (so what is shown is what is sent).

fhir.resources 6.4.x is pinned because it is the last line generated from FHIR 4.0.1
(``fhir.resources.__fhir_version__ == "4.0.1"``); 6.5 moved to R4B (4.3.0) and 7.x to R5, neither of which
is R4 on the wire. The models are imported on first use: they take longer to import than the rest of the
app's drafting.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

R4_VERSION = "4.0.1"


def problems(bundle: Mapping[str, Any]) -> list[str]:
    """What the R4 models refuse in ``bundle`` (one line each: element path and reason); empty when it
    is valid R4."""
    import fhir.resources
    from fhir.resources.bundle import Bundle
    from pydantic import ValidationError

    if fhir.resources.__fhir_version__ != R4_VERSION:  # pragma: no cover - guarded by the pin in pyproject
        raise ImportError(f"fhir.resources models are FHIR {fhir.resources.__fhir_version__}, R4 needed")
    try:
        Bundle.parse_obj(bundle)
    except ValidationError as exc:
        return [f"{_path(error['loc'])}: {error['msg']}" for error in exc.errors()]
    return []


def _path(location: tuple[int | str, ...]) -> str:
    """A pydantic error location as a FHIR path: ``("entry", 0)`` is ``Bundle.entry[0]``."""
    return "Bundle" + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in location)
