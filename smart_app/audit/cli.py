"""``smart-app audit list|verify`` (docs/auditors.md#commands). ``add_commands`` is wired into
``smart_app.cli``; the report types are imported when an audit command runs, so that the other
commands start without them.

Exit status: 0 clean / reproduced, 1 findings / not reproduced, 2 unusable input (bad arguments, an
unreadable export, an unreachable or refusing server, an unknown criteria version).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smart_app.audit.errors import AuditInputError

if TYPE_CHECKING:
    from smart_app.audit.model import AuditReport, VerifyReport
    from smart_app.audit.source import Source

EXIT_OK, EXIT_FINDINGS, EXIT_UNUSABLE = 0, 1, 2
TOKEN_ENV = "SMART_APP_FHIR_TOKEN"


def parse_since(value: str | None) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value[:10])
    except ValueError as exc:
        raise AuditInputError(f"--since is not a date (YYYY-MM-DD): {value!r}") from exc


def open_source(fhir_base: str | None, bundle: str | None) -> Source:
    """A live server (bearer token from ``$SMART_APP_FHIR_TOKEN`` when set) or an export file."""
    from smart_app.audit.source import BundleSource, FhirSource

    if bundle:
        try:
            data = Path(bundle).read_bytes()
        except OSError as exc:
            raise AuditInputError(f"cannot read {bundle}: {exc.strerror}") from exc
        return BundleSource.from_bytes(data)
    if not fhir_base:
        raise AuditInputError("give --fhir-base URL or --bundle PATH")
    from smart_app.fhir.client import FhirClient

    try:
        client = FhirClient(fhir_base, token=os.environ.get(TOKEN_ENV) or None)
    except ValueError as exc:
        raise AuditInputError(f"--fhir-base: {exc}") from exc
    return FhirSource(client)


def _unusable(message: str) -> tuple[dict[str, Any], int]:
    return {"error": message}, EXIT_UNUSABLE


def run_list(
    source: Source, *, patient: str | None = None, since: date | None = None
) -> tuple[dict[str, Any], int]:
    """``audit list`` as (JSON object, exit status)."""
    from smart_app.audit.listing import list_writes
    from smart_app.fhir.errors import FhirError

    try:
        report = list_writes(source, patient=patient, since=since)
    except AuditInputError as exc:
        return _unusable(str(exc))
    except FhirError as exc:
        return _unusable(f"FHIR server: {exc.message}")
    _log("list", findings=len(report.findings))
    return report.to_json(), EXIT_FINDINGS if report.findings else EXIT_OK


def run_verify(
    source: Source, assessment: str, *, criteria_dirs: Sequence[Path] = ()
) -> tuple[dict[str, Any], int]:
    """``audit verify`` as (JSON object, exit status)."""
    from smart_app.audit.verify import verify_assessment
    from smart_app.fhir.errors import FhirError

    try:
        report = verify_assessment(source, assessment, criteria_dirs=criteria_dirs)
    except AuditInputError as exc:
        return _unusable(str(exc))
    except FhirError as exc:
        return _unusable(f"FHIR server: {exc.message}")
    _log("verify", reproduced=report.reproduced, reference=report.assessment)
    return report.to_json(), EXIT_OK if report.reproduced else EXIT_FINDINGS


def _log(command: str, **fields: Any) -> None:
    from smart_app.auditlog import audit_event

    audit_event("audit", command=command, **fields)


# -- rendering for people --------------------------------------------------------------------------


def _table(rows: list[list[str]], header: list[str]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    return [
        line.format(*header).rstrip(),
        line.format(*("-" * w for w in widths)),
        *(line.format(*r).rstrip() for r in rows),
    ]


def render_list(report: AuditReport | dict[str, Any]) -> str:
    """A table of the writes, then the findings, for a terminal."""
    data = report if isinstance(report, dict) else report.to_json()
    writes = data.get("writes") or []
    lines = [f"{len(writes)} write(s) by the app"]
    if writes:
        rows = [
            [
                str(w.get("written_at") or "-"),
                str(w.get("kind") or "assessment"),
                str(w.get("patient") or "-"),
                str(w.get("assessment") or "-"),
                str(w.get("status")),
                f"{(w.get('criteria') or {}).get('version') or '-'}",
                str(w.get("author") or "-"),
                str(w.get("provenance") or "MISSING"),
                str(len(w.get("resources") or [])),
            ]
            for w in writes
        ]
        lines += _table(
            rows,
            ["written", "kind", "patient", "assessment", "status", "criteria", "author", "provenance", "res"],
        )
    findings = data.get("findings") or []
    lines += ["", f"{len(findings)} finding(s)" + (":" if findings else " - clean")]
    lines += [f"  {f['kind']:<26} {f['reference']}  {f['detail']}" for f in findings]
    return "\n".join(lines)


def render_verify(report: VerifyReport | dict[str, Any]) -> str:
    data = report if isinstance(report, dict) else report.to_json()
    if data.get("kind") == "exam":
        verdict = "AS ENTERED" if data.get("reproduced") else "CHANGED SINCE ENTERED"
    else:
        verdict = "REPRODUCED" if data.get("reproduced") else "NOT REPRODUCED"
    crit = data.get("criteria") or {}
    lines = [
        f"{data.get('assessment')}: {verdict}",
        f"  provenance: {data.get('provenance') or 'none'}   criteria: {crit.get('url') or '-'}|"
        f"{crit.get('version') or '-'}   evaluated at: {data.get('evaluated_at') or '-'}",
    ]
    for d in data.get("differences") or []:
        lines.append(
            f"  differs: {d['field']}: written {json.dumps(d['written'])} / "
            f"recomputed {json.dumps(d['recomputed'])}"
        )
    for s in data.get("sources") or []:
        lines.append(
            f"  source: {s['reference']}"
            + (f" v{s['version']}" if s.get("version") else "")
            + f" ({s['status']})"
        )
    lines += [f"  note: {n}" for n in data.get("notes") or []]
    return "\n".join(lines)


# -- argparse --------------------------------------------------------------------------------------


def _print(data: dict[str, Any], as_json: bool, text: str) -> None:
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    elif "error" in data:
        print(f"smart-app audit: {data['error']}", file=sys.stderr)
    else:
        print(text)


def cmd_list(args: argparse.Namespace) -> int:
    try:
        source = open_source(args.fhir_base, args.bundle)
        since = parse_since(args.since)
    except AuditInputError as exc:
        data, code = _unusable(str(exc))
    else:
        data, code = run_list(source, patient=args.patient, since=since)
    _print(data, args.json, "" if "error" in data else render_list(data))
    return code


def cmd_verify(args: argparse.Namespace) -> int:
    from smart_app.audit.verify import verify_bundle

    dirs = [Path(d) for d in args.criteria_dir or []]
    if args.bundle:
        try:
            reports = verify_bundle(Path(args.bundle).read_bytes(), args.assessment, criteria_dirs=dirs)
        except OSError as exc:
            data, code = _unusable(f"cannot read {args.bundle}: {exc.strerror}")
        except AuditInputError as exc:
            data, code = _unusable(str(exc))
        else:
            if len(reports) == 1:
                data = reports[0].to_json()
            else:
                data = {
                    "reproduced": all(r.reproduced for r in reports),
                    "reports": [r.to_json() for r in reports],
                }
                data["differences"] = [d for r in data["reports"] for d in r["differences"]]
            code = EXIT_OK if all(r.reproduced for r in reports) else EXIT_FINDINGS
        text = "" if "error" in data else "\n\n".join(render_verify(r) for r in data.get("reports", [data]))
        _print(data, args.json, text)
        return code
    if not args.assessment:
        data, code = _unusable("give --assessment ClinicalImpression/ID")
    else:
        try:
            source = open_source(args.fhir_base, None)
        except AuditInputError as exc:
            data, code = _unusable(str(exc))
        else:
            data, code = run_verify(source, args.assessment, criteria_dirs=dirs)
    _print(data, args.json, "" if "error" in data else render_verify(data))
    return code


def add_commands(audit: argparse.ArgumentParser) -> None:
    """Add ``list`` and ``verify`` to the CLI's ``audit`` command."""
    sub = audit.add_subparsers(dest="audit_command", required=True)

    lister = sub.add_parser("list", help="every write by the app, with status and findings")
    lister.add_argument("--fhir-base", help=f"FHIR base URL (bearer token from ${TOKEN_ENV})")
    lister.add_argument("--bundle", help="an export Bundle instead of a server")
    lister.add_argument("--patient", help="only this Patient id")
    lister.add_argument("--since", help="only writes on or after this date (YYYY-MM-DD)")
    lister.add_argument("--json", action="store_true", help="print one JSON object")
    lister.set_defaults(func=cmd_list)

    verify = sub.add_parser("verify", help="re-run the recorded criteria on the recorded sources")
    verify.add_argument("--fhir-base", help=f"FHIR base URL (bearer token from ${TOKEN_ENV})")
    verify.add_argument("--bundle", help="an export Bundle with the written resources and source versions")
    verify.add_argument(
        "--assessment",
        help="ClinicalImpression/ID, or an exam's Observation/ID or Provenance/ID "
        "(with --bundle: default every assessment)",
    )
    verify.add_argument(
        "--criteria-dir", action="append", help="extra directory of published criteria versions (repeatable)"
    )
    verify.add_argument("--json", action="store_true", help="print one JSON object")
    verify.set_defaults(func=cmd_verify)
