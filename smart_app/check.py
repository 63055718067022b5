"""``smart-app check ISS``: an integrator's readiness report for one EHR before go-live.

It reads what the EHR publishes, without signing in: the SMART configuration (SMART App Launch 2.x,
"Conformance": ``{iss}/.well-known/smart-configuration``, with the CapabilityStatement ``oauth-uris``
fallback) and the FHIR CapabilityStatement (FHIR R4 capabilitystatement.html: ``GET {iss}/metadata``).
It checks what the app relies on (PKCE S256, the client authentication of each registration, the scopes
it asks for, FHIR R4, the searches its reads use, transactions and conditional creates for its drafts)
and says, for each gap, what degrades. No Flask: the command line loads it.

Each check is ``pass``, ``warn`` (the app works with less) or ``fail`` (a launch, the read or the
write-back cannot work). The report is ``ready``, ``degraded`` or ``not-ready``; exit status 0, 1 or 4.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import requests

from smart_app.drafts.written import WRITTEN
from smart_app.fhir.capability import offers_batch
from smart_app.fhir.record import SEARCH_TYPES
from smart_app.smart import wire
from smart_app.smart.discovery import (
    SmartConfiguration,
    check_endpoints,
    from_capability_statement,
    from_smart_configuration,
)
from smart_app.smart.errors import DiscoveryError
from smart_app.smart.registrations import Registration, normalise_iss
from smart_app.smart.scopes import ScopeSet, describe_scope_missing

Status = Literal["pass", "warn", "fail"]
EXIT_READY, EXIT_DEGRADED, EXIT_NOT_READY = 0, 1, 4
#: Searches the review cannot do without: the criteria read Observations and Conditions.
ESSENTIAL_SEARCHES = ("Observation", "Condition")
#: The search parameter every read uses (``fetch_patient_record``: ``?patient=<id>&_count=<n>``).
PATIENT_PARAMETER = "patient"
#: How each client type authenticates at the token endpoint ("Client Authentication").
AUTH_METHODS = {
    "confidential-symmetric": "client_secret_basic",
    "confidential-asymmetric": "private_key_jwt",
}
COMMAND_LINE_ONLY = (
    "The app cannot be launched from this EHR (no authorization or token endpoint). Only the command "
    "line works: smart-app assess, write and audit with --fhir-base and a bearer token in "
    "$SMART_APP_FHIR_TOKEN."
)


@dataclass(frozen=True)
class Check:
    """One check: ``status``, what was found (``summary``) and, when not met, what degrades."""

    id: str
    status: Status
    summary: str
    degrades: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "status": self.status, "summary": self.summary, "degrades": self.degrades}


@dataclass
class Report:
    iss: str
    registrations: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)

    @property
    def status(self) -> str:
        states = {c.status for c in self.checks}
        return "not-ready" if "fail" in states else "degraded" if "warn" in states else "ready"

    @property
    def exit_code(self) -> int:
        return {"ready": EXIT_READY, "degraded": EXIT_DEGRADED}.get(self.status, EXIT_NOT_READY)

    def add(self, check_id: str, status: Status, summary: str, degrades: str | None = None) -> None:
        self.checks.append(Check(check_id, status, summary, degrades if status != "pass" else None))

    def to_json(self) -> dict[str, Any]:
        return {
            "iss": self.iss,
            "status": self.status,
            "registrations": list(self.registrations),
            "checks": [c.to_json() for c in self.checks],
        }

    def to_text(self) -> str:
        counts = {s: sum(1 for c in self.checks if c.status == s) for s in ("fail", "warn")}
        lines = [
            f"smart-app check {self.iss}: {self.status.upper().replace('-', ' ')} "
            f"({counts['fail']} failing, {counts['warn']} degraded, {len(self.checks)} checks)",
            f"registrations checked: {', '.join(self.registrations) or 'none (see --registration)'}",
            "",
        ]
        for check in self.checks:
            lines.append(f"{check.status.upper():<5} {check.id:<34} {check.summary}")
            if check.degrades:
                lines.append(f"{'':<6}{'degrades:':<34} {check.degrades}")
        return "\n".join(lines)


def check_ehr(
    iss: str,
    registrations: Sequence[Registration] = (),
    *,
    http: requests.Session | None = None,
    timeout: float | tuple[float, float] = (3.05, 15.0),
) -> Report:
    """The readiness report for the EHR whose FHIR base is ``iss``, for each of ``registrations``."""
    iss = normalise_iss(iss)
    session = http or requests.Session()
    report = Report(iss=iss, registrations=[r.id for r in registrations])
    metadata, metadata_problem = wire.get_json(
        session, f"{iss}/metadata", max_bytes=wire.CAPABILITY_STATEMENT_MAX_BYTES, timeout=timeout
    )
    config = _discovery(report, session, iss, metadata, metadata_problem, timeout)
    if config is not None:
        _launch_capabilities(report, config, registrations)
        for reg in registrations:
            _registration(report, config, reg)
    elif registrations:
        report.add(
            "registrations",
            "fail",
            f"{len(registrations)} registration(s) cannot be checked against the EHR's authorization server",
            COMMAND_LINE_ONLY,
        )
    _fhir(report, iss, metadata, metadata_problem, registrations)
    return report


# --- SMART ----------------------------------------------------------------------------------------------


def _discovery(
    report: Report,
    http: requests.Session,
    iss: str,
    metadata: dict[str, Any] | None,
    metadata_problem: str | None,
    timeout: float | tuple[float, float],
) -> SmartConfiguration | None:
    well_known = f"{iss}/.well-known/smart-configuration"
    data, problem = wire.get_json(
        http, well_known, max_bytes=wire.SMART_CONFIGURATION_MAX_BYTES, timeout=timeout
    )
    if data is not None:
        try:
            config, problem = from_smart_configuration(iss, data)
        except DiscoveryError as exc:
            report.add("smart-configuration", "pass", f"{well_known} is published")
            report.add("pkce", "fail", exc.description, "Every launch is refused: the app always uses S256.")
            return None
        if config is not None:
            report.add("smart-configuration", "pass", f"{well_known} is published")
            return config
    fallback: SmartConfiguration | None = None
    if metadata is not None:
        fallback, metadata_problem = from_capability_statement(iss, metadata)
    if fallback is not None:
        report.add(
            "smart-configuration",
            "warn",
            f"{well_known} {problem}; the endpoints are taken from the CapabilityStatement (oauth-uris)",
            "Launches work through the older CapabilityStatement discovery; PKCE, client authentication "
            "methods, scopes and capabilities are not advertised, so they are only found out at launch.",
        )
        return fallback
    report.add(
        "smart-configuration",
        "fail",
        f"no SMART configuration: {well_known} {problem}; {iss}/metadata {metadata_problem}",
        COMMAND_LINE_ONLY,
    )
    return None


def _has(config: SmartConfiguration, capability: str) -> bool:
    return capability in config.capabilities


def _launch_capabilities(
    report: Report, config: SmartConfiguration, registrations: Sequence[Registration]
) -> None:
    if config.source != "smart-configuration":
        return
    methods = config.code_challenge_methods_supported
    if "S256" in methods:
        report.add("pkce", "pass", "PKCE S256 is supported")
    else:
        report.add(
            "pkce",
            "warn",
            "code_challenge_methods_supported is not published",
            "The app sends PKCE S256 anyway; an EHR that ignores it leaves the authorization code unbound.",
        )
    if not config.capabilities:
        report.add(
            "capabilities",
            "warn",
            "no capabilities are published",
            "EHR and standalone launch, launch context and refresh are only found out at launch.",
        )
        return
    wanted: list[tuple[str, Status, str]] = [
        ("launch-ehr", "warn", "The EHR cannot open the app from a chart: standalone launches only."),
        (
            "launch-standalone",
            "warn",
            "The app cannot be started on its own (from its chooser): EHR launches only.",
        ),
        ("context-ehr-patient", "fail", "An EHR launch would not say which patient: the app needs one."),
        (
            "context-ehr-encounter",
            "warn",
            "EHR launches carry no encounter: drafts are not linked to the visit.",
        ),
    ]
    if any(r.use_openid for r in registrations):
        wanted.append(
            (
                "sso-openid-connect",
                "warn",
                "No id_token: the drafts' author falls back to fhirUser or the app.",
            )
        )
    if any("offline_access" in r.scopes or "online_access" in r.scopes for r in registrations):
        wanted.append(
            (
                "permission-offline",
                "warn",
                "No refresh tokens: the clinician relaunches when the token expires.",
            )
        )
    missing = [(name, status, why) for name, status, why in wanted if not _has(config, name)]
    if not missing:
        report.add("capabilities", "pass", f"publishes {', '.join(name for name, _, _ in wanted)}")
    for name, status, why in missing:
        report.add(f"capability:{name}", status, f"capabilities do not include {name}", why)


def _registration(report: Report, config: SmartConfiguration, reg: Registration) -> None:
    try:
        foreign = check_endpoints(reg, config, refuse_foreign=False)
    except DiscoveryError as exc:
        report.add(
            f"endpoints:{reg.id}", "fail", exc.description, "Launches with this registration are refused."
        )
    else:
        if foreign:
            report.add(
                f"endpoints:{reg.id}",
                "warn",
                f"endpoints on another origin than the iss: {'; '.join(foreign)}",
                "Launches proceed with a warning in the log, and are refused with "
                "SMART_APP_FOREIGN_AUTH_ENDPOINTS=refuse; trust the origin with auth_origins or pin the "
                "endpoints.",
            )
        else:
            report.add(
                f"endpoints:{reg.id}", "pass", "authorization and token endpoints are on a trusted origin"
            )
    _auth_method(report, config, reg)
    _scopes(report, config, reg)


def _auth_method(report: Report, config: SmartConfiguration, reg: Registration) -> None:
    check_id = f"client-auth:{reg.id}"
    if config.source != "smart-configuration":
        report.add(
            check_id, "warn", "not published", "Client authentication is only found out at the first launch."
        )
        return
    if reg.client_type == "public":
        if _has(config, "client-public"):
            report.add(check_id, "pass", "public clients are supported (client-public)")
        else:
            report.add(
                check_id,
                "warn" if not config.capabilities else "fail",
                "capabilities do not include client-public",
                "The token request of this public registration may be refused.",
            )
        return
    method = AUTH_METHODS[reg.client_type]
    supported = config.token_endpoint_auth_methods_supported
    if method not in supported:
        found = "is not published" if not supported else f"lacks {method}"
        report.add(
            check_id,
            "warn" if not supported else "fail",
            f"token_endpoint_auth_methods_supported {found}",
            f"Token requests of this registration ({method}) may be refused.",
        )
        return
    algs = config.token_endpoint_auth_signing_alg_values_supported
    if reg.client_type == "confidential-asymmetric" and algs and reg.signing_alg not in algs:
        report.add(
            check_id,
            "fail",
            f"{method} is supported but not with {reg.signing_alg} (published: {', '.join(algs)})",
            "Token requests are refused: set signing_alg to one the EHR accepts (RS384 or ES384).",
        )
        return
    report.add(check_id, "pass", f"{method} is supported")


def _scopes(report: Report, config: SmartConfiguration, reg: Registration) -> None:
    check_id = f"scopes:{reg.id}"
    syntax = "permission-v2" if reg.scope_syntax == "v2" else "permission-v1"
    if config.capabilities and syntax not in config.capabilities:
        report.add(
            f"scope-syntax:{reg.id}",
            "warn",
            f"the registration uses SMART {reg.scope_syntax} scopes; capabilities do not include {syntax}",
            "The EHR may not understand the scopes asked for: set scope_syntax to the one it publishes.",
        )
    if not config.scopes_supported:
        report.add(
            check_id, "warn", "scopes_supported is not published", "The grant is only known at launch."
        )
        return
    missing = ScopeSet(config.scopes_supported).missing_for(reg.scopes)
    if not missing:
        report.add(check_id, "pass", f"all {len(reg.scopes)} scopes asked for are supported")
        return
    report.add(
        check_id,
        "warn",
        f"not in scopes_supported: {' '.join(missing)}",
        " ".join(describe_scope_missing(scope) for scope in missing),
    )


# --- FHIR ------------------------------------------------------------------------------------------------


def _fhir(
    report: Report,
    iss: str,
    metadata: dict[str, Any] | None,
    problem: str | None,
    registrations: Sequence[Registration],
) -> None:
    if metadata is None or metadata.get("resourceType") != "CapabilityStatement":
        why = problem or "is not a CapabilityStatement"
        report.add(
            "fhir-capabilities",
            "fail",
            f"{iss}/metadata {why}",
            "Nothing can be checked about reads and writes; the app reads and writes FHIR R4 as the EHR "
            "allows.",
        )
        return
    version = metadata.get("fhirVersion")
    if isinstance(version, str) and version.startswith("4.0"):
        report.add("fhir-version", "pass", f"FHIR {version}")
    else:
        report.add(
            "fhir-version",
            "fail",
            f"fhirVersion is {version!r}",
            "The app reads and writes FHIR R4 (4.0.1): other versions are not supported.",
        )
    if offers_batch(metadata):
        report.add("batch", "pass", "batch Bundles: a review's reads go as one request")
    else:
        report.add("batch", "pass", "no batch interaction: a review's reads go one request per type")
    server = _server_rest(metadata)
    resources = _resources(server)
    patient = resources.get("Patient")
    if patient is not None and "read" in patient.interactions:
        report.add("read:Patient", "pass", "Patient read")
    else:
        report.add(
            "read:Patient",
            "fail",
            "Patient read is not listed",
            "The review cannot start: it reads the Patient first.",
        )
    for rtype in SEARCH_TYPES:
        _search(report, rtype, resources.get(rtype))
    _writes(report, server, resources, registrations)


@dataclass(frozen=True)
class _Resource:
    interactions: frozenset[str]
    search_params: frozenset[str]
    conditional_create: bool


def _server_rest(metadata: Mapping[str, Any]) -> Mapping[str, Any]:
    for rest in metadata.get("rest") or []:
        if isinstance(rest, dict) and rest.get("mode", "server") == "server":
            return rest
    return {}


def _codes(items: Iterable[Any]) -> frozenset[str]:
    return frozenset(str(i.get("code")) for i in items if isinstance(i, dict) and i.get("code"))


def _resources(rest: Mapping[str, Any]) -> dict[str, _Resource]:
    out: dict[str, _Resource] = {}
    for res in rest.get("resource") or []:
        if not isinstance(res, dict) or not isinstance(res.get("type"), str):
            continue
        params = frozenset(
            str(p.get("name")) for p in res.get("searchParam") or [] if isinstance(p, dict) and p.get("name")
        )
        out[res["type"]] = _Resource(
            _codes(res.get("interaction") or []), params, res.get("conditionalCreate") is True
        )
    return out


def _search(report: Report, rtype: str, res: _Resource | None) -> None:
    status: Status = "fail" if rtype in ESSENTIAL_SEARCHES else "warn"
    degrades = (
        f"The criteria that need {rtype} resources are reported as unknown, never as absent."
        if status == "warn"
        else f"The assessment cannot be made: it reads the patient's {rtype} resources."
    )
    if res is None or "search-type" not in res.interactions:
        report.add(f"search:{rtype}", status, f"{rtype} search is not listed", degrades)
    elif res.search_params and PATIENT_PARAMETER not in res.search_params:
        report.add(
            f"search:{rtype}", status, f"{rtype} search lists no '{PATIENT_PARAMETER}' parameter", degrades
        )
    else:
        report.add(f"search:{rtype}", "pass", f"{rtype}?{PATIENT_PARAMETER}=")


def _writes(
    report: Report,
    rest: Mapping[str, Any],
    resources: Mapping[str, _Resource],
    registrations: Sequence[Registration],
) -> None:
    transaction = "transaction" in _codes(rest.get("interaction") or [])
    modes = {r.writeback.mode for r in registrations}
    if transaction:
        report.add("transaction", "pass", "transaction Bundles are supported")
    else:
        needs = "transaction" in modes
        report.add(
            "transaction",
            "fail" if needs else "warn",
            "the CapabilityStatement lists no transaction interaction",
            "Write-back must use writeback.mode sequential (one conditional create per draft; a failure "
            "midway leaves part of the draft written)"
            + (": a registration here uses transaction mode." if needs else "."),
        )
    wanted = {r.writeback.assessment_as for r in registrations} or {"ClinicalImpression", "DocumentReference"}
    for rtype, written in WRITTEN.items():
        if written.role == "assessment" and rtype not in wanted:
            continue
        _write(report, rtype, resources.get(rtype), optional=written.role == "assessment" and len(wanted) > 1)
    observation = resources.get("Observation")
    if observation is None or "create" not in observation.interactions:
        report.add(
            "write:Observation",
            "warn",
            "Observation create is not listed",
            "A focused exam is kept in the session only, not saved to the chart.",
        )
    else:
        report.add("write:Observation", "pass", "Observation create (the focused exam)")


def _write(report: Report, rtype: str, res: _Resource | None, *, optional: bool) -> None:
    check_id = f"write:{rtype}"
    if res is None or "create" not in res.interactions:
        report.add(
            check_id,
            "warn" if optional else "fail",
            f"{rtype} create is not listed",
            f"Drafts that include a {rtype} cannot be written"
            + ("; the other assessment form may be used (writeback.assessment_as)." if optional else "."),
        )
        return
    gaps = []
    if not res.conditional_create:
        gaps.append("conditionalCreate is not true")
    if rtype != "Provenance" and res.search_params and "identifier" not in res.search_params:
        gaps.append("no identifier search parameter")
    if gaps:
        report.add(
            check_id,
            "warn",
            f"{rtype} create, but {' and '.join(gaps)}",
            "A repeated write (a retry, a second tab) may not find the draft already written and could "
            "duplicate it; the audit still finds every copy by its identifier.",
        )
    else:
        report.add(check_id, "pass", f"{rtype} conditional create")
