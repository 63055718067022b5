"""Command line for integrators and auditors (README "Command line"). Imports no web framework: an
assessment starts in the time it takes to load the clinical core.

Exit status: 0 success; 1 audit findings / not reproduced / a draft the app's own profiles refuse /
``check``: the EHR works with less; 2 unusable input; 3 the server refused a write; 4 ``check``: the EHR
is not ready (a launch, the read or the write-back cannot work).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

TYPE_CHECKING = False  # true for type checkers only: see smart_app/__init__.py
if TYPE_CHECKING:
    from typing import Any

EXIT_OK, EXIT_FINDINGS, EXIT_UNUSABLE, EXIT_REFUSED = 0, 1, 2, 3  # ``check`` adds 4: not ready
#: Environment variable holding the bearer token for commands that read or write a FHIR server.
TOKEN_ENV = "SMART_APP_FHIR_TOKEN"
_AUTHOR = re.compile(r"^(Practitioner|PractitionerRole)/[A-Za-z0-9\-.]{1,64}$")


class UsageProblem(Exception):
    """Unusable input: reported on stderr in one line, exit status 2."""


def parse_as_of(value: str | None) -> datetime:
    if value is None:
        return datetime.now(UTC).replace(microsecond=0)
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise UsageProblem(f"--as-of is not an ISO-8601 date-time: {value!r}") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def fhir_client(base: str) -> Any:
    from smart_app.fhir.client import FhirClient

    return FhirClient(base, token=os.environ.get(TOKEN_ENV) or None)


def assessment_for(args: argparse.Namespace, as_of: datetime) -> dict[str, Any]:
    """The Assessment JSON for ``--bundle`` or for ``--fhir-base``/``--patient``."""
    from smart_app import pipeline
    from smart_app.clinical import CriteriaError, UnusableInput

    try:
        if args.bundle:
            return pipeline.assess_file(read_bundle_file(args.bundle), as_of, args.criteria)
        if not (args.fhir_base and args.patient):
            raise UsageProblem("give --bundle PATH, or --fhir-base URL and --patient ID")
        from smart_app.fhir.errors import FhirError

        try:
            assessment, fetched = pipeline.assess_server(
                fhir_client(args.fhir_base), args.patient, as_of, args.criteria
            )
        except FhirError as exc:
            raise UsageProblem(f"FHIR server: {exc.message}") from exc
    except (UnusableInput, CriteriaError) as exc:
        raise UsageProblem(str(exc)) from exc
    if assessment is None:
        raise UsageProblem(f"Patient/{args.patient} could not be read from {args.fhir_base}")
    for failure in fetched.failures:
        print(f"warning: {failure.resource_type} not read: {failure.message}", file=sys.stderr)
    return assessment


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def summary_text(assessment: dict[str, Any]) -> str:
    """A readable summary of the Assessment JSON for people at a terminal."""
    lines = [
        assessment.get("headline") or f"{assessment['classification']} → {assessment['next_step']}",
        f"Classification: {assessment['classification']}    Next step: {assessment['next_step']}",
        f"Criteria: {assessment['criteria']['url']}|{assessment['criteria']['version']}    "
        f"as of {assessment['as_of']}",
        "",
        "Findings:",
    ]
    for finding_id, finding in sorted(assessment["findings"].items()):
        evidence = ", ".join(finding.get("evidence", [])) or "no evidence"
        lines.append(f"  {finding_id:<17} {finding['status']:<8} {finding.get('reason', '')} [{evidence}]")
    if assessment["red_flags"]:
        lines += ["", "Red flags:"]
        for flag in assessment["red_flags"]:
            lines.append(f"  {flag['level'].upper():<5} {flag['id']} [{', '.join(flag['evidence'])}]")
    if assessment.get("missing"):
        lines += ["", "Missing:"]
        lines += [f"  {item.get('what', item)}" for item in assessment["missing"]]
    suggestion = assessment.get("procedure_suggestion")
    lines += ["", f"Procedure suggestion: {suggestion['text'] if suggestion else 'none'}"]
    if assessment.get("ignored"):
        lines += ["", f"Ignored resources: {len(assessment['ignored'])}"]
        lines += [f"  {item['reference']}: {item['reason']}" for item in assessment["ignored"]]
    return "\n".join(lines)


def cmd_assess(args: argparse.Namespace) -> int:
    assessment = assessment_for(args, parse_as_of(args.as_of))
    if args.json:
        print_json(assessment)
    else:
        print(summary_text(assessment))
    return EXIT_OK


def read_bundle_file(path: str | None) -> bytes:
    if not path:
        raise UsageProblem("give --bundle PATH (a FHIR R4 Bundle holding one patient's resources)")
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UsageProblem(f"cannot read {path}: {exc.strerror}") from exc


def drafts_for(args: argparse.Namespace) -> dict[str, Any]:
    """The transaction Bundle the write-back would send for ``--bundle`` (same input rules as ``assess``).

    With ``--as-of`` the draft is reproducible: Provenance.recorded is the evaluation time.
    """
    from smart_app import pipeline
    from smart_app.clinical import CriteriaError, UnusableInput
    from smart_app.drafts.build import DraftingError

    if args.author is not None and not _AUTHOR.match(args.author):
        raise UsageProblem(f"--author must look like {_AUTHOR.pattern.strip('^$')}")
    as_of = parse_as_of(args.as_of)
    try:
        return pipeline.draft_file(
            read_bundle_file(args.bundle),
            as_of=as_of,
            recorded=as_of if args.as_of else pipeline.now(),
            author=args.author,
            assessment_as=args.assessment_as,
            criteria_version=args.criteria,
        )
    except (UnusableInput, DraftingError, CriteriaError) as exc:
        raise UsageProblem(str(exc)) from exc


def cmd_draft(args: argparse.Namespace) -> int:
    from smart_app.writeback import validate_drafts

    bundle = drafts_for(args)
    problems = validate_drafts(bundle)
    if problems:
        print_json(
            {"error": "invalid-draft", "message": "draft fails the app's profiles", "issues": problems}
        )
        return EXIT_FINDINGS
    print_json(bundle)
    return EXIT_OK


def cmd_write(args: argparse.Namespace) -> int:
    from smart_app.writeback import InvalidDraft, write_drafts

    bundle = drafts_for(args)
    try:
        client = fhir_client(args.fhir_base)
    except ValueError as exc:
        raise UsageProblem(f"--fhir-base: {exc}") from exc
    try:
        outcome = write_drafts(
            client, bundle, args.mode, max_transaction_entries=args.max_transaction_entries
        )
    except InvalidDraft as exc:
        print_json(
            {"error": "invalid-draft", "message": "draft fails the app's profiles", "issues": exc.issues}
        )
        return EXIT_FINDINGS
    print_json(outcome.to_json())
    return EXIT_OK if outcome.ok else EXIT_REFUSED


def registrations_for_check(args: argparse.Namespace) -> list[Any]:
    """The registrations ``check`` holds the EHR to: ``--registration`` files or ids, else every registration
    for the iss in ``--registrations-dir`` (default ``$SMART_APP_REGISTRATIONS_DIR``)."""
    from smart_app.smart.errors import RegistrationError
    from smart_app.smart.registrations import load_registration_file, load_registrations, normalise_iss

    env_dir = os.environ.get("SMART_APP_REGISTRATIONS_DIR")
    dirs = args.registrations_dir or ([env_dir] if env_dir else [])
    try:
        registry = load_registrations(dirs)
        chosen = []
        for item in args.registration:
            if Path(item).is_file():
                chosen.append(load_registration_file(Path(item)))
                continue
            found = registry.by_id(item)
            if found is None:
                raise UsageProblem(
                    f"--registration {item}: no such file, nor a registration id in {dirs or 'none'}"
                )
            chosen.append(found)
    except RegistrationError as exc:
        raise UsageProblem(exc.description) from exc
    if not args.registration:
        chosen = registry.for_iss(args.iss)
    for reg in chosen:
        if normalise_iss(reg.iss) != normalise_iss(args.iss):
            raise UsageProblem(f"registration {reg.id} is for {reg.iss}, not {args.iss}")
    return chosen


def cmd_check(args: argparse.Namespace) -> int:
    from urllib.parse import urlsplit

    from smart_app.check import check_ehr

    parts = urlsplit(args.iss)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise UsageProblem(f"ISS must be the EHR's FHIR base, an absolute http(s) URL: {args.iss!r}")
    report = check_ehr(args.iss, registrations_for_check(args))
    if args.json:
        print_json(report.to_json())
    else:
        print(report.to_text())
    return report.exit_code


def cmd_serve(args: argparse.Namespace) -> int:
    from smart_app.serve import serve

    serve(host=args.host, port=args.port, workers=args.workers)
    return EXIT_OK


def add_record_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", help="a FHIR R4 Bundle (JSON) holding one patient's resources")
    parser.add_argument("--fhir-base", help=f"FHIR base URL (bearer token from ${TOKEN_ENV})")
    parser.add_argument("--patient", help="Patient id on --fhir-base")
    parser.add_argument("--as-of", help="evaluation time, ISO-8601 (default: now)")
    add_criteria_argument(parser)


def add_criteria_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--criteria", metavar="VERSION", help="criteria release to evaluate (default: the newest release)"
    )


def _assess_arguments(assess: argparse.ArgumentParser) -> None:
    add_record_arguments(assess)
    assess.add_argument("--json", action="store_true", help="print the assessment as one JSON object")
    assess.set_defaults(func=cmd_assess)


def _draft_arguments(sub: argparse.ArgumentParser, *, write: bool = False) -> None:
    sub.add_argument(
        "--bundle", required=True, help="a FHIR R4 Bundle (JSON) holding one patient's resources"
    )
    if write:
        sub.add_argument("--fhir-base", required=True, help=f"FHIR base URL (bearer token from ${TOKEN_ENV})")
    sub.add_argument("--as-of", help="evaluation time, ISO-8601 (default: now)")
    add_criteria_argument(sub)
    sub.add_argument("--author", help="the user, e.g. Practitioner/123 (Provenance author)")
    sub.add_argument(
        "--assessment-as",
        choices=["ClinicalImpression", "DocumentReference"],
        default="ClinicalImpression",
    )
    sub.add_argument("--json", action="store_true", help="JSON output (the default for this command)")
    if write:
        sub.add_argument("--mode", choices=["transaction", "sequential"], default="transaction")
        sub.add_argument(
            "--max-transaction-entries",
            type=int,
            help="write larger drafts as sequential conditional creates (e.g. 8 for servers that limit "
            "conditional transactions)",
        )
    sub.set_defaults(func=cmd_write if write else cmd_draft)


def _write_arguments(sub: argparse.ArgumentParser) -> None:
    _draft_arguments(sub, write=True)


def _check_arguments(check: argparse.ArgumentParser) -> None:
    check.add_argument("iss", help="the EHR's FHIR base URL (the iss it launches with)")
    check.add_argument(
        "--registration",
        action="append",
        default=[],
        metavar="FILE_OR_ID",
        help="a registration file, or the id of one in the registrations directories (repeatable; "
        "default: every registration for ISS)",
    )
    check.add_argument(
        "--registrations-dir",
        action="append",
        default=[],
        metavar="DIR",
        help="a directory of registrations (repeatable; default: $SMART_APP_REGISTRATIONS_DIR)",
    )
    check.add_argument("--json", action="store_true", help="print the report as one JSON object")
    check.set_defaults(func=cmd_check)


def _serve_arguments(serve: argparse.ArgumentParser) -> None:
    serve.add_argument("--host", default=os.environ.get("SMART_APP_HOST", "127.0.0.1"))
    serve.add_argument("--port", type=int, default=int(os.environ.get("SMART_APP_PORT", "8000")))
    serve.add_argument("--workers", type=int, default=int(os.environ.get("SMART_APP_WORKERS", "4")))
    serve.set_defaults(func=cmd_serve)


def _audit_arguments(audit: argparse.ArgumentParser) -> None:
    from smart_app.audit import cli as audit_cli

    audit_cli.add_commands(audit)


#: The commands: name, one line of help, and what adds its arguments.
COMMANDS: tuple[tuple[str, str, Callable[[argparse.ArgumentParser], None]], ...] = (
    ("assess", "assess one patient and print the assessment", _assess_arguments),
    ("draft", "print the transaction Bundle the write-back would send", _draft_arguments),
    ("write", "write the drafts to a FHIR server and print the outcome", _write_arguments),
    ("check", "readiness report for an EHR before go-live (SMART and FHIR)", _check_arguments),
    ("serve", "run the app with a production WSGI server (gunicorn)", _serve_arguments),
    ("audit", "find, trace and reproduce what the app wrote", _audit_arguments),
)


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's help layout at the width argparse would choose (``$COLUMNS``, else the terminal's, else
    80), found without ``shutil``: argparse makes a formatter for every argument added, and its own way
    to the width imports ``shutil`` and the compression modules behind it, ~3 ms of every command."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=_columns() - 2)


def _columns() -> int:
    try:
        return int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        pass
    stdout = sys.__stdout__
    try:
        return os.get_terminal_size(stdout.fileno()).columns if stdout else 80
    except (ValueError, OSError):
        return 80


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` with :class:`_HelpFormatter`; its subcommands' parsers are of this class too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command line: every command, or only ``command`` when it names one, so that a command starts
    without building the others (argparse's help text lookups cost milliseconds per parser)."""
    parser = _Parser(prog="smart-app", description="Back-mice SMART on FHIR decision support")
    commands = parser.add_subparsers(dest="command", required=True)
    chosen = [entry for entry in COMMANDS if entry[0] == command] or COMMANDS
    for name, helptext, add_arguments in chosen:
        add_arguments(commands.add_parser(name, help=helptext))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(words[0] if words else None).parse_args(words)
    try:
        return int(args.func(args))
    except UsageProblem as exc:
        print(f"smart-app: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
