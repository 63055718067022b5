"""Sandbox settings and their defaults.

Loaded in order: ``DEFAULTS`` → ``instance/sandbox.py`` (optional) → ``SANDBOX_*`` environment
variables (``SANDBOX_PUBLIC_URL=...``, values parsed as JSON when they are JSON) → ``test_config``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from launch.data import ANCHOR_DATE, DATA_DIR

from .context import ENCOUNTER_FORMATS, FHIR_CONTEXT_FORMS
from .oauth import REFRESH_ROTATIONS
from .store import VERSION_ID_STYLES

PACKAGE_DIR = Path(__file__).resolve().parent

DEFAULTS: dict[str, Any] = {
    # The app's launch URL that the EHR page opens in its iframe (SMART "EHR Launch"): the launch URL of
    # the app's registration for the sandbox's public client (launch/registrations/sandbox.json).
    "APP_LAUNCH_URL": "http://localhost:8000/launch/sandbox",
    # The sandbox's own origin; the FHIR base (and iss) is PUBLIC_URL + "/fhir".
    "PUBLIC_URL": "http://127.0.0.1:8001",
    # Directory of patient Bundles (*.json, in subfolders too; collection or transaction).
    "DATA_DIR": str(DATA_DIR),
    # Dates of the DATA_DIR records: "today" (every date moved by the whole days from DATA_ANCHOR to
    # today, UTC), "stored" (as in the files) or a date "YYYY-MM-DD" (DATA_ANCHOR moved to that day).
    "DATES": "today",
    # The day the DATA_DIR records treat as today (launch/data/__init__.py: ANCHOR_DATE).
    "DATA_ANCHOR": ANCHOR_DATE.isoformat(),
    # Practitioners (the EHR's users) loaded into the store; a Bundle.
    "PRACTITIONERS_FILE": str(PACKAGE_DIR / "practitioners.json"),
    # Registered clients; None means launch/sandbox/clients.json.
    "CLIENTS": None,
    "CLIENTS_FILE": str(PACKAGE_DIR / "clients.json"),
    # id_token signing key (PEM); None means <instance folder>/sandbox-signing-key.pem.
    "SIGNING_KEY_PATH": None,
    # Lifetimes, in seconds.
    "CODE_TTL": 60,
    "ACCESS_TOKEN_TTL": 3600,
    "REFRESH_TOKEN_TTL": 86400,
    # Refresh tokens: "rotate" (a new one per refresh; the used one is refused from then on),
    # "strict" (as rotate, and a used one presented again revokes the whole grant) or "none" (the
    # same refresh token stays valid; refresh responses carry none).
    "REFRESH_TOKEN_ROTATION": "rotate",
    # Refreshes of one grant within this many seconds of the last access token issued for it get
    # that same token (with its own remaining lifetime), as some EHRs answer concurrent refreshes.
    "ACCESS_TOKEN_REUSE_WINDOW": 0,
    "LAUNCH_TTL": 600,
    "PENDING_TTL": 600,
    "ID_TOKEN_TTL": 3600,
    # How long a client's jwks_uri answer is reused.
    "JWKS_CACHE_TTL": 300,
    # Search page size: default and maximum for _count.
    "DEFAULT_COUNT": 50,
    "MAX_COUNT": 1000,
    # A search with more pages keeps its matches this many seconds (its next links carry a cursor);
    # at most this many are kept, least recently used dropped first.
    "SEARCH_SNAPSHOT_TTL": 300,
    "SEARCH_SNAPSHOTS_MAX": 256,
    # meta.versionId style: "integer" (1, 2, ...) or "opaque" (a UUID per version, as e.g. Medplum).
    "VERSION_IDS": "integer",
    # Base of Location headers and of transaction/batch response locations, as a server behind a
    # reverse proxy names itself (e.g. "http://internal.example:8080/fhir"). None: Location headers
    # use the public FHIR base and Bundle response locations are relative.
    "LOCATION_BASE": None,
    # Practitioner signed in for EHR launches when the launch names none.
    "DEFAULT_USER": "Practitioner/dr-ada",
    # Encounter of an EHR launch that names none: "latest" (the patient's latest Encounter, as an EHR
    # opened within a visit) or "named" (only an encounter the launch request names).
    "EHR_LAUNCH_ENCOUNTER": "latest",
    # Form of the token response's "encounter": "id" (bare, as SMART launchers send it), "reference"
    # ("Encounter/<id>") or "absolute" (the FHIR base + "/Encounter/<id>").
    "EHR_LAUNCH_ENCOUNTER_FORMAT": "id",
    # fhirContext items naming the launch's encounter, in these forms (a list): "reference"
    # ({"reference": "Encounter/<id>"}), "absolute" (an absolute URL) and "identifier"
    # ({"type": "Encounter", "identifier": {...}}). Empty: none.
    "EHR_LAUNCH_FHIR_CONTEXT": [],
    # Fault injection for tests only (see faults.py); empty means none.
    "FAULTS": {},
    # Compress responses when the client accepts gzip and the body is at least this long, at this
    # zlib level (1 is the fastest; FHIR pages are repetitive and shrink ~40x even so).
    "GZIP_MIN_BYTES": 1024,
    "GZIP_LEVEL": 1,
}


#: Settings with a fixed set of values, and those values (each list kept by the module that uses it).
CHOICES: dict[str, tuple[str, ...]] = {
    "VERSION_IDS": VERSION_ID_STYLES,
    "REFRESH_TOKEN_ROTATION": REFRESH_ROTATIONS,
    "EHR_LAUNCH_ENCOUNTER": ("named", "latest"),
    "EHR_LAUNCH_ENCOUNTER_FORMAT": ENCOUNTER_FORMATS,
}


def check_settings(config: Mapping[str, Any]) -> None:
    """Refuse a setting outside its values at start-up, naming it (rather than failing per request)."""
    for key, allowed in CHOICES.items():
        if config[key] not in allowed:
            raise ValueError(f"sandbox setting {key} must be one of {list(allowed)}, not {config[key]!r}")
    forms = config["EHR_LAUNCH_FHIR_CONTEXT"]
    if not isinstance(forms, list | tuple) or not set(forms) <= set(FHIR_CONTEXT_FORMS):
        raise ValueError(
            f"sandbox setting EHR_LAUNCH_FHIR_CONTEXT must be a list of {list(FHIR_CONTEXT_FORMS)}"
        )
