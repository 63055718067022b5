"""EHR registrations: one JSON file per EHR the app is registered with.

A registration records what the EHR's authorization server knows about the app (SMART App Launch
2.x, "Registering a SMART App with an EHR"): the FHIR base URL (``iss``), the ``client_id``, how the
client authenticates ("Client Authentication": public, confidential symmetric, confidential
asymmetric), the scopes to ask for, the EHR origins that may frame the app, and write-back options.
Fields are documented in ``launch/registrations/README.md``. Client secrets are never stored in the
file: ``client_secret_env`` names the environment variable read when the secret is used.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import urlsplit

from smart_app.smart.errors import RegistrationError
from smart_app.smart.scopes import ScopeSyntax, check_scope, scope_words

ClientType = Literal["public", "confidential-symmetric", "confidential-asymmetric"]
CLIENT_TYPES: tuple[str, ...] = ("public", "confidential-symmetric", "confidential-asymmetric")
SIGNING_ALGORITHMS: tuple[str, ...] = ("RS384", "ES384")
WRITEBACK_MODES: tuple[str, ...] = ("transaction", "sequential")
ASSESSMENT_RESOURCES: tuple[str, ...] = ("ClinicalImpression", "DocumentReference")
#: ``"kind"`` of a registration file that registers a CDS Hooks client, not an EHR (docs/cds-hooks.md).
CDS_CLIENT_KIND = "cds-client"

_FIELDS = frozenset(
    {
        "id",
        "name",
        "iss",
        "client_id",
        "client_type",
        "client_secret_env",
        "signing_alg",
        "scopes",
        "scope_syntax",
        "frame_ancestors",
        "writeback",
        "description",
    }
)


@dataclass(frozen=True)
class WritebackOptions:
    """How drafts are written to this EHR (DESIGN.md "What is written")."""

    mode: Literal["transaction", "sequential"] = "transaction"
    assessment_as: Literal["ClinicalImpression", "DocumentReference"] = "ClinicalImpression"


@dataclass(frozen=True)
class Registration:
    """The app's registration with one EHR."""

    id: str
    name: str
    iss: str
    client_id: str
    client_type: ClientType
    client_secret_env: str | None
    scopes: tuple[str, ...]
    scope_syntax: ScopeSyntax = "v2"
    frame_ancestors: tuple[str, ...] = ()
    writeback: WritebackOptions = field(default_factory=WritebackOptions)
    signing_alg: str = "RS384"
    source: Path | None = field(default=None, compare=False)

    @property
    def use_openid(self) -> bool:
        """True when ``openid`` is among the scopes: the id_token is then requested and validated."""
        return "openid" in self.scopes

    @property
    def scope(self) -> str:
        """The registered scopes as one space-delimited string."""
        return " ".join(self.scopes)

    def client_secret(self, environ: Mapping[str, str] | None = None) -> str:
        """The client secret, read from the environment now (never cached on the registration)."""
        if self.client_type != "confidential-symmetric" or not self.client_secret_env:
            raise RegistrationError(f"Registration {self.id!r} is not a confidential-symmetric client.")
        env = os.environ if environ is None else environ
        secret = env.get(self.client_secret_env)
        if not secret:
            raise RegistrationError(
                f"The client secret for EHR {self.name!r} is not set: define the environment variable "
                f"{self.client_secret_env}."
            )
        return secret


def normalise_iss(iss: str) -> str:
    """The comparison form of an issuer URL: surrounding space and trailing slashes removed."""
    return iss.strip().rstrip("/")


class RegistrationRegistry:
    """All registrations, looked up by ``iss`` or ``id``."""

    def __init__(self, registrations: Iterable[Registration] = ()) -> None:
        self._by_id: dict[str, Registration] = {}
        self._by_iss: dict[str, Registration] = {}
        for reg in registrations:
            self.add(reg)

    def add(self, reg: Registration) -> None:
        """Add one registration; ids and issuers must be unique."""
        where = f" ({reg.source})" if reg.source else ""
        if reg.id in self._by_id:
            other = self._by_id[reg.id].source
            raise RegistrationError(f"Duplicate registration id {reg.id!r}{where}; also in {other}.")
        key = normalise_iss(reg.iss)
        if key in self._by_iss:
            other = self._by_iss[key].source
            raise RegistrationError(f"Duplicate iss {reg.iss!r}{where}; also registered in {other}.")
        self._by_id[reg.id] = reg
        self._by_iss[key] = reg

    def by_iss(self, iss: str) -> Registration | None:
        """The registration whose ``iss`` equals ``iss`` exactly, ignoring a trailing slash."""
        return self._by_iss.get(normalise_iss(iss))

    def by_id(self, registration_id: str) -> Registration | None:
        return self._by_id.get(registration_id)

    def all(self) -> list[Registration]:
        """Every registration, sorted by name."""
        return sorted(self._by_id.values(), key=lambda r: (r.name.lower(), r.id))

    def frame_ancestors(self) -> list[str]:
        """Every origin allowed to frame the app, for the CSP ``frame-ancestors`` directive."""
        return sorted({origin for reg in self._by_id.values() for origin in reg.frame_ancestors})

    def __len__(self) -> int:
        return len(self._by_id)


def load_registrations(dirs: Sequence[Path | str]) -> RegistrationRegistry:
    """Load every ``*.json`` file in ``dirs`` (in order, files sorted by name).

    A directory that does not exist is an error, so a mistyped extra directory is noticed at start-up.
    """
    registry = RegistrationRegistry()
    for directory in dirs:
        path = Path(directory)
        if not path.is_dir():
            raise RegistrationError(f"Registrations directory {path} does not exist.")
        for file in sorted(path.glob("*.json")):
            data = read_registration_json(file)
            if data.get("kind") == CDS_CLIENT_KIND:  # a CDS Hooks client: smart_app.cds.clients reads it
                continue
            registry.add(parse_registration(data, source=file))
    return registry


def read_registration_json(path: Path) -> dict[str, Any]:
    """The JSON object of one registration file; errors name the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise RegistrationError(f"{path}: cannot be read ({exc.__class__.__name__}).") from exc
    except json.JSONDecodeError as exc:
        raise RegistrationError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}).") from exc
    if not isinstance(data, dict):
        raise RegistrationError(f"{path}: must contain a JSON object.")
    return data


def load_registration_file(path: Path) -> Registration:
    """Read and validate one registration file; errors name the file and the field."""
    return parse_registration(read_registration_json(path), source=path)


def parse_registration(data: Mapping[str, Any], *, source: Path | None = None) -> Registration:
    """Validate a registration mapping (the parsed JSON of one file)."""
    where = str(source) if source else "registration"

    def fail(message: str) -> RegistrationError:
        return RegistrationError(f"{where}: {message}")

    if "client_secret" in data:
        raise fail(
            "must not contain client_secret; put the secret in an environment variable and name it "
            "in client_secret_env"
        )
    unknown = sorted(k for k in data if k not in _FIELDS and not k.startswith("_"))
    if unknown:
        raise fail(f"unknown field(s) {', '.join(unknown)}")

    def text(key: str, *, required: bool = True) -> str | None:
        value = data.get(key)
        if value is None:
            if required:
                raise fail(f"missing required field {key!r}")
            return None
        if not isinstance(value, str) or not value.strip():
            raise fail(f"field {key!r} must be a non-empty string")
        return value.strip()

    reg_id = text("id", required=False) or (source.stem if source else None)
    if not reg_id:
        raise fail("missing required field 'id'")
    name = cast(str, text("name"))
    iss = cast(str, text("iss"))
    if not _is_http_url(iss):
        raise fail(f"field 'iss' must be an absolute http(s) URL, got {iss!r}")
    client_id = cast(str, text("client_id"))
    client_type = cast(str, text("client_type"))
    if client_type not in CLIENT_TYPES:
        raise fail(f"field 'client_type' must be one of {', '.join(CLIENT_TYPES)}, got {client_type!r}")

    secret_env = text("client_secret_env", required=False)
    if client_type == "confidential-symmetric" and not secret_env:
        raise fail("a confidential-symmetric client needs 'client_secret_env' (an environment variable name)")
    if client_type != "confidential-symmetric" and secret_env:
        raise fail(f"'client_secret_env' only applies to confidential-symmetric clients, not {client_type}")
    if secret_env and not secret_env.replace("_", "").isalnum():
        raise fail(f"field 'client_secret_env' must be an environment variable name, got {secret_env!r}")

    signing_alg = text("signing_alg", required=False) or "RS384"
    if signing_alg not in SIGNING_ALGORITHMS:
        raise fail(f"field 'signing_alg' must be one of {', '.join(SIGNING_ALGORITHMS)}, got {signing_alg!r}")
    if "signing_alg" in data and client_type != "confidential-asymmetric":
        raise fail("'signing_alg' only applies to confidential-asymmetric clients")

    syntax = text("scope_syntax", required=False) or "v2"
    if syntax not in ("v1", "v2"):
        raise fail(f"field 'scope_syntax' must be 'v2' or 'v1', got {syntax!r}")
    raw_scopes = data.get("scopes")
    if isinstance(raw_scopes, str):
        scopes = scope_words(raw_scopes)
    elif isinstance(raw_scopes, list) and all(isinstance(s, str) for s in raw_scopes):
        scopes = scope_words(raw_scopes)
    else:
        raise fail("field 'scopes' must be a space-separated string or a list of strings")
    if not scopes:
        raise fail("field 'scopes' is empty")
    for scope in scopes:
        problem = check_scope(scope, cast(ScopeSyntax, syntax))
        if problem:
            raise fail(f"field 'scopes': {problem}")
    if "fhirUser" in scopes and "openid" not in scopes:
        raise fail("field 'scopes': fhirUser needs openid as well")

    ancestors = data.get("frame_ancestors", [])
    if not isinstance(ancestors, list) or not all(isinstance(a, str) for a in ancestors):
        raise fail("field 'frame_ancestors' must be a list of origins")
    for origin in ancestors:
        if not _is_origin(origin):
            raise fail(f"field 'frame_ancestors': {origin!r} is not an origin like https://ehr.example.org")

    writeback_data = data.get("writeback", {})
    if not isinstance(writeback_data, dict):
        raise fail("field 'writeback' must be an object")
    extra = sorted(set(writeback_data) - {"mode", "assessment_as"})
    if extra:
        raise fail(f"unknown field(s) in 'writeback': {', '.join(extra)}")
    mode = writeback_data.get("mode", "transaction")
    if mode not in WRITEBACK_MODES:
        raise fail(f"field 'writeback.mode' must be one of {', '.join(WRITEBACK_MODES)}, got {mode!r}")
    assessment_as = writeback_data.get("assessment_as", "ClinicalImpression")
    if assessment_as not in ASSESSMENT_RESOURCES:
        raise fail(
            f"field 'writeback.assessment_as' must be one of {', '.join(ASSESSMENT_RESOURCES)}, "
            f"got {assessment_as!r}"
        )

    return Registration(
        id=reg_id,
        name=name,
        iss=normalise_iss(iss),
        client_id=client_id,
        client_type=cast(ClientType, client_type),
        client_secret_env=secret_env,
        scopes=scopes,
        scope_syntax=cast(ScopeSyntax, syntax),
        frame_ancestors=tuple(o.rstrip("/") for o in ancestors),
        writeback=WritebackOptions(mode=mode, assessment_as=assessment_as),
        signing_alg=signing_alg,
        source=source,
    )


def _is_http_url(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc) and not parts.query and not parts.fragment


def _is_origin(value: str) -> bool:
    parts = urlsplit(value.rstrip("/"))
    return (
        parts.scheme in ("http", "https")
        and bool(parts.netloc)
        and not parts.path
        and not parts.query
        and not parts.fragment
    )
