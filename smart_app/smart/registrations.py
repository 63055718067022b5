"""EHR registrations: one JSON file per EHR the app is registered with.

A registration records what the EHR's authorization server knows about the app (SMART App Launch
2.x, "Registering a SMART App with an EHR"): the FHIR base URL (``iss``), the ``client_id``, how the
client authenticates ("Client Authentication": public, confidential symmetric, confidential
asymmetric), the scopes to ask for, the EHR origins that may frame the app, write-back options, and
optionally the authorization server's endpoints or origins it trusts. Fields are documented in
``launch/registrations/README.md``. Client secrets are never stored in the file: ``client_secret_env``
names the environment variable read when the secret is used.

One EHR (one ``iss``) may have several registrations, e.g. a public, a symmetric and an asymmetric
client: each has its own ``id``, and a launch chooses one by its launch URL (``/launch/<id>``) or by
``client_id`` (:meth:`RegistrationRegistry.choose`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import urlsplit

from smart_app.smart.errors import RegistrationError, UnknownIssuer
from smart_app.smart.scopes import ScopeSyntax, check_scope, scope_words

ClientType = Literal["public", "confidential-symmetric", "confidential-asymmetric"]
CLIENT_TYPES: tuple[str, ...] = ("public", "confidential-symmetric", "confidential-asymmetric")
SIGNING_ALGORITHMS: tuple[str, ...] = ("RS384", "ES384")
WRITEBACK_MODES: tuple[str, ...] = ("transaction", "sequential")
ASSESSMENT_RESOURCES: tuple[str, ...] = ("ClinicalImpression", "DocumentReference")
#: A registration id is a path segment of its launch URL (``/launch/<id>``).
_REGISTRATION_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
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
        "authorization_endpoint",
        "token_endpoint",
        "auth_origins",
        "patient_facing",
    }
)


@dataclass(frozen=True)
class WritebackOptions:
    """How drafts are written to this EHR (docs/auditors.md#what-a-write-looks-like)."""

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
    #: Pinned endpoints: discovery must name exactly these, or the launch is refused.
    authorization_endpoint: str | None = None
    token_endpoint: str | None = None
    #: Origins besides the ``iss`` origin where the EHR's authorization server may be (e.g. a separate
    #: authorization host), as ``scheme://host[:port]``.
    auth_origins: tuple[str, ...] = ()
    #: A patient portal (or any launch by patients): the app is read-only, whoever the user is.
    patient_facing: bool = False
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
    """All registrations, looked up by ``id``, or by ``iss`` and ``client_id``."""

    def __init__(self, registrations: Iterable[Registration] = ()) -> None:
        self._by_id: dict[str, Registration] = {}
        self._by_iss: dict[str, list[Registration]] = {}
        for reg in registrations:
            self.add(reg)

    def add(self, reg: Registration) -> None:
        """Add one registration; ids are unique, and so is each (``iss``, ``client_id``) pair."""
        where = f" ({reg.source})" if reg.source else ""
        if reg.id in self._by_id:
            other = self._by_id[reg.id].source
            raise RegistrationError(f"Duplicate registration id {reg.id!r}{where}; also in {other}.")
        key = normalise_iss(reg.iss)
        for other_reg in self._by_iss.get(key, []):
            if other_reg.client_id == reg.client_id:
                raise RegistrationError(
                    f"Duplicate client_id {reg.client_id!r} for iss {reg.iss!r}{where}; also registered "
                    f"in {other_reg.source or other_reg.id}."
                )
        self._by_id[reg.id] = reg
        self._by_iss.setdefault(key, []).append(reg)

    def for_iss(self, iss: str) -> list[Registration]:
        """The registrations whose ``iss`` equals ``iss`` exactly, ignoring a trailing slash, by id."""
        return sorted(self._by_iss.get(normalise_iss(iss), []), key=lambda r: r.id)

    def by_iss(self, iss: str) -> Registration | None:
        """The one registration for ``iss``; ``None`` when there is none or there are several."""
        found = self.for_iss(iss)
        return found[0] if len(found) == 1 else None

    def by_id(self, registration_id: str) -> Registration | None:
        return self._by_id.get(registration_id)

    def choose(
        self, iss: str | None, *, registration_id: str | None = None, client_id: str | None = None
    ) -> Registration:
        """The registration a launch names: by ``registration_id`` (the launch URL ``/launch/<id>``; its
        ``iss`` must then equal the launch's ``iss`` when one is given), else by ``iss`` and, when several
        registrations share that ``iss``, by ``client_id``.

        Raises :class:`UnknownIssuer` when nothing matches and :class:`AmbiguousRegistration` when the
        launch does not say which of several registrations it is for.
        """
        if registration_id is not None:
            reg = self._by_id.get(registration_id)
            if reg is None:
                raise UnknownIssuer("This launch URL names no registration of the app, so it was refused.")
            if iss is not None and normalise_iss(iss) != reg.iss:
                raise UnknownIssuer(
                    f"This launch names registration {reg.id!r}, which is for another FHIR server than the "
                    "one the EHR sent (iss), so it was refused."
                )
            if client_id is not None and client_id != reg.client_id:
                raise UnknownIssuer(
                    f"This launch names registration {reg.id!r} but another client_id, so it was refused."
                )
            return reg
        if iss is None:
            raise UnknownIssuer("The launch does not name the EHR's FHIR server (iss).")
        candidates = self.for_iss(iss)
        if client_id is not None:
            candidates = [r for r in candidates if r.client_id == client_id]
        if not candidates:
            raise UnknownIssuer()
        if len(candidates) > 1:
            raise AmbiguousRegistration(candidates)
        return candidates[0]

    def all(self) -> list[Registration]:
        """Every registration, sorted by name."""
        return sorted(self._by_id.values(), key=lambda r: (r.name.lower(), r.id))

    def frame_ancestors(self) -> list[str]:
        """Every origin allowed to frame the app, for the CSP ``frame-ancestors`` directive."""
        return sorted({origin for reg in self._by_id.values() for origin in reg.frame_ancestors})

    def __len__(self) -> int:
        return len(self._by_id)


class AmbiguousRegistration(UnknownIssuer):
    """Several registrations share the launch's ``iss`` and the launch does not say which one."""

    error = "ambiguous_registration"

    def __init__(self, candidates: Sequence[Registration]) -> None:
        self.candidates = tuple(candidates)
        ids = ", ".join(r.id for r in self.candidates)
        super().__init__(
            f"The app has several registrations for this EHR ({ids}) and the launch does not say which "
            "one it is for. The EHR must open the app at /launch/<registration> (or send client_id).",
            ehr_name=self.candidates[0].name,
        )


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


class RegistrationFields:
    """The fields of one registration file (an EHR's or a CDS client's), read so that every error names
    the file and the field."""

    def __init__(self, data: Mapping[str, Any], source: Path | None, *, unnamed: str) -> None:
        self.data = data
        self.source = source
        self.where = str(source) if source else unnamed

    def fail(self, message: str) -> RegistrationError:
        return RegistrationError(f"{self.where}: {message}")

    def reject_unknown(self, known: frozenset[str]) -> None:
        """Every field is one of ``known``, or a comment (a name starting with ``_``)."""
        unknown = sorted(k for k in self.data if k not in known and not k.startswith("_"))
        if unknown:
            raise self.fail(f"unknown field(s) {', '.join(unknown)}")

    def text(self, key: str, *, required: bool = True) -> str | None:
        """The non-empty string ``key``, stripped; ``None`` when absent and not ``required``."""
        value = self.data.get(key)
        if value is None:
            if required:
                raise self.fail(f"missing required field {key!r}")
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.fail(f"field {key!r} must be a non-empty string")
        return value.strip()

    def identifier(self) -> str:
        """The ``id`` field, else the file's name without its extension."""
        value = self.text("id", required=False) or (self.source.stem if self.source else None)
        if not value:
            raise self.fail("missing required field 'id'")
        return value


def load_registration_file(path: Path) -> Registration:
    """Read and validate one registration file; errors name the file and the field."""
    return parse_registration(read_registration_json(path), source=path)


def parse_registration(data: Mapping[str, Any], *, source: Path | None = None) -> Registration:
    """Validate a registration mapping (the parsed JSON of one file)."""
    fields = RegistrationFields(data, source, unnamed="registration")
    fail, text = fields.fail, fields.text
    if "client_secret" in data:
        raise fail(
            "must not contain client_secret; put the secret in an environment variable and name it "
            "in client_secret_env"
        )
    fields.reject_unknown(_FIELDS)
    reg_id = fields.identifier()
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

    pins: dict[str, str | None] = {}
    for key in ("authorization_endpoint", "token_endpoint"):
        pinned = text(key, required=False)
        if pinned is not None:
            if not _is_http_url(pinned):
                raise fail(f"field {key!r} must be an absolute http(s) URL, got {pinned!r}")
            if urlsplit(iss).scheme == "https" and urlsplit(pinned).scheme != "https":
                raise fail(f"field {key!r} must use https, as the iss does")
        pins[key] = pinned
    auth_origins = data.get("auth_origins", [])
    if not isinstance(auth_origins, list) or not all(isinstance(a, str) for a in auth_origins):
        raise fail("field 'auth_origins' must be a list of origins")
    for origin in auth_origins:
        if not _is_origin(origin):
            raise fail(f"field 'auth_origins': {origin!r} is not an origin like https://auth.example.org")
    patient_facing = data.get("patient_facing", False)
    if not isinstance(patient_facing, bool):
        raise fail("field 'patient_facing' must be true or false")
    if not _REGISTRATION_ID.fullmatch(reg_id):
        raise fail(f"field 'id' must be letters, digits, '.', '_' or '-' (at most 64), got {reg_id!r}")

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
        authorization_endpoint=pins["authorization_endpoint"],
        token_endpoint=pins["token_endpoint"],
        auth_origins=tuple(o.rstrip("/") for o in auth_origins),
        patient_facing=patient_facing,
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
