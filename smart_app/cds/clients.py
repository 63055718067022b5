"""CDS client registrations: which EHRs may call the CDS services, and with which keys
(CDS Hooks 2.0 "Trusting CDS Clients"; docs/cds-hooks.md#registering-a-cds-client).

A CDS client is registered the way an EHR is, by one JSON file in a registrations directory, marked
``"kind": "cds-client"`` (the EHR loader, :func:`smart_app.smart.registrations.load_registrations`,
skips these files). Fields: ``id`` (default: the file name), ``name``, ``iss`` (the ``iss`` of its JWTs),
its public keys as ``jwks`` (an inline JWK Set, RFC 7517 §5) or ``jwks_url``, ``allowed_jku`` (further JWK
Set URLs its JWT's ``jku`` header may name; ``jwks_url`` is always allowed), ``fhir_servers`` (the FHIR
bases the service may read with the ``fhirAuthorization`` the client sends; none: prefetch only) and
``writeback.assessment_as`` (as for an EHR: ``ClinicalImpression`` or ``DocumentReference``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import urlsplit

from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from smart_app.smart.errors import RegistrationError
from smart_app.smart.registrations import (
    ASSESSMENT_RESOURCES,
    CDS_CLIENT_KIND,
    RegistrationFields,
    normalise_iss,
    read_registration_json,
)

_FIELDS = frozenset(
    {
        "kind",
        "id",
        "name",
        "iss",
        "jwks",
        "jwks_url",
        "allowed_jku",
        "fhir_servers",
        "writeback",
        "description",
    }
)
#: Key types that verify an asymmetric signature; CDS Hooks 2.0 "JWT Signing Algorithm" forbids shared keys.
_ASYMMETRIC_KTY = frozenset({"RSA", "EC", "OKP"})
#: JWK members that only a private key has (RFC 7518 §6.2.2, §6.3.2; RFC 8037 §2).
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


@dataclass(frozen=True)
class CdsClient:
    """One registered CDS client (an EHR that calls the CDS services)."""

    id: str
    name: str
    iss: str
    jwks: Mapping[str, Any] | None = None
    jwks_url: str | None = None
    allowed_jku: tuple[str, ...] = ()
    fhir_servers: tuple[str, ...] = ()
    assessment_as: Literal["ClinicalImpression", "DocumentReference"] = "ClinicalImpression"
    source: Path | None = field(default=None, compare=False)

    def jku_allowed(self, url: str) -> bool:
        """True when a JWT's ``jku`` header may name ``url``: the registered ``jwks_url`` or an
        ``allowed_jku`` entry, compared exactly."""
        return url == self.jwks_url or url in self.allowed_jku

    def may_read(self, fhir_server: str) -> bool:
        """True when ``fhir_server`` is one of the registered FHIR bases (a trailing slash ignored)."""
        return normalise_iss(fhir_server) in self.fhir_servers


class CdsClientRegistry:
    """The registered CDS clients, looked up by the ``iss`` of their JWTs."""

    def __init__(self, clients: Iterable[CdsClient] = ()) -> None:
        self._by_iss: dict[str, CdsClient] = {}
        self._ids: set[str] = set()
        for client in clients:
            self.add(client)

    def add(self, client: CdsClient) -> None:
        where = f" ({client.source})" if client.source else ""
        key = normalise_iss(client.iss)
        if key in self._by_iss:
            raise RegistrationError(f"Duplicate CDS client iss {client.iss!r}{where}.")
        if client.id in self._ids:
            raise RegistrationError(f"Duplicate CDS client id {client.id!r}{where}.")
        self._by_iss[key] = client
        self._ids.add(client.id)

    def by_iss(self, iss: str) -> CdsClient | None:
        return self._by_iss.get(normalise_iss(iss))

    def __len__(self) -> int:
        return len(self._by_iss)


def load_cds_clients(dirs: Sequence[Path | str]) -> CdsClientRegistry:
    """Every ``"kind": "cds-client"`` file among the ``*.json`` of ``dirs`` (missing directories are the
    EHR loader's error to report; they are passed over here)."""
    registry = CdsClientRegistry()
    for directory in dirs:
        path = Path(directory)
        if not path.is_dir():
            continue
        for file in sorted(path.glob("*.json")):
            data = read_registration_json(file)
            if data.get("kind") == CDS_CLIENT_KIND:
                registry.add(parse_cds_client(data, source=file))
    return registry


def parse_cds_client(data: Mapping[str, Any], *, source: Path | None = None) -> CdsClient:
    """Validate one CDS client registration; errors name the file and the field."""
    fields = RegistrationFields(data, source, unnamed="CDS client registration")
    fail, text = fields.fail, fields.text
    if data.get("kind") != CDS_CLIENT_KIND:
        raise fail(f"'kind' must be {CDS_CLIENT_KIND!r}")
    fields.reject_unknown(_FIELDS)
    client_id = fields.identifier()
    name = cast(str, text("name"))
    iss = cast(str, text("iss"))
    jwks_url = text("jwks_url", required=False)
    jwks = data.get("jwks")
    if (jwks is None) == (jwks_url is None):
        raise fail("give the client's public keys as exactly one of 'jwks' (a JWK Set) or 'jwks_url'")
    if jwks_url is not None and not _is_http_url(jwks_url):
        raise fail(f"field 'jwks_url' must be an absolute http(s) URL, got {jwks_url!r}")
    if jwks is not None:
        problem = jwks_problem(jwks)
        if problem:
            raise fail(f"field 'jwks': {problem}")

    allowed_jku = _url_list(data, "allowed_jku", fail)
    fhir_servers = tuple(normalise_iss(u) for u in _url_list(data, "fhir_servers", fail))

    writeback = data.get("writeback", {})
    if not isinstance(writeback, dict) or set(writeback) - {"assessment_as"}:
        raise fail("field 'writeback' must be an object with at most 'assessment_as'")
    assessment_as = writeback.get("assessment_as", "ClinicalImpression")
    if assessment_as not in ASSESSMENT_RESOURCES:
        raise fail(f"field 'writeback.assessment_as' must be one of {', '.join(ASSESSMENT_RESOURCES)}")

    return CdsClient(
        id=client_id,
        name=name,
        iss=iss,
        jwks=dict(jwks) if jwks is not None else None,
        jwks_url=jwks_url,
        allowed_jku=allowed_jku,
        fhir_servers=fhir_servers,
        assessment_as=assessment_as,
        source=source,
    )


def jwks_problem(jwks: Any) -> str | None:
    """Why ``jwks`` is not a usable JWK Set of public signing keys (``None`` when it is)."""
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list) or not jwks["keys"]:
        return "must be a JWK Set: an object with a non-empty 'keys' array"
    for index, key in enumerate(jwks["keys"]):
        if not isinstance(key, dict):
            return f"keys[{index}] is not an object"
        if key.get("kty") not in _ASYMMETRIC_KTY:
            return f"keys[{index}]: kty must be one of {', '.join(sorted(_ASYMMETRIC_KTY))}"
        if _PRIVATE_MEMBERS & set(key):
            return f"keys[{index}] holds private key material; register the public key only"
        if not isinstance(key.get("kid"), str) or not key["kid"]:
            return f"keys[{index}] has no kid (CDS Hooks 2.0: the JWT names its key by kid)"
    try:
        KeySet.import_key_set(jwks)  # type: ignore[arg-type]
    except (JoseError, ValueError, TypeError, KeyError):
        return "the keys cannot be read"
    return None


def _url_list(data: Mapping[str, Any], key: str, fail: Any) -> tuple[str, ...]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(u, str) and _is_http_url(u) for u in value):
        raise fail(f"field {key!r} must be a list of absolute http(s) URLs")
    return tuple(value)


def _is_http_url(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc) and not parts.fragment
