"""``back-mice-sandbox``: the sandbox EHR's command line.

  demo    the sandbox EHR on 127.0.0.1:8001 and the app on localhost:8000 (needs the app installed)
  serve   the sandbox EHR alone (as ``python -m launch.sandbox``)
  token   print a read access token from a running sandbox (client_credentials grant of the
          registered auditor client), e.g. ``export SMART_APP_FHIR_TOKEN=$(back-mice-sandbox token)``

Exit status: 0 success, 1 the sandbox refused or could not be reached, 2 usage.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import requests

DEFAULT_URL = "http://127.0.0.1:8001"
AUDITOR_CLIENT = "back-mice-sandbox-auditor"
AUDITOR_SECRET_ENV = "SANDBOX_AUDITOR_CLIENT_SECRET"
#: (connect, read) seconds for the token command's requests.
TIMEOUT = (3.05, 15.0)
#: Largest answer the token command reads (a token response is well under 1 KB).
MAX_ANSWER_BYTES = 64 * 1024


class CommandError(Exception):
    """What went wrong, for stderr (never a secret or a token)."""


def cmd_serve(args: argparse.Namespace) -> int:
    from werkzeug.serving import run_simple

    from launch.sandbox import create_app
    from launch.sandbox.server import PathOnlyRequestHandler

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides: dict[str, str] = {}
    if args.public_url:
        overrides["PUBLIC_URL"] = args.public_url
    elif "SANDBOX_PUBLIC_URL" not in os.environ:
        overrides["PUBLIC_URL"] = f"http://{args.host}:{args.port}"
    if args.app_launch_url:
        overrides["APP_LAUNCH_URL"] = args.app_launch_url
    app = create_app(overrides)
    gc.collect()
    gc.freeze()  # the loaded records live as long as the process: keep them out of collections
    print(
        f"Sandbox EHR: {app.config['PUBLIC_URL']}/ehr   FHIR base: {app.config['PUBLIC_URL']}/fhir",
        flush=True,
    )
    run_simple(args.host, args.port, app, threaded=True, request_handler=PathOnlyRequestHandler)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from launch.demo import run_demo

    run_demo(app_port=args.port, sandbox_port=args.sandbox_port)
    return 0


def auditor_secret(client_id: str) -> str:
    """``$SANDBOX_AUDITOR_CLIENT_SECRET``, else the sandbox-only secret registered in ``clients.json``."""
    if os.environ.get(AUDITOR_SECRET_ENV):
        return os.environ[AUDITOR_SECRET_ENV]
    from launch.sandbox.config import DEFAULTS
    from launch.sandbox.oauth import load_clients_file

    for client in load_clients_file(Path(DEFAULTS["CLIENTS_FILE"])):
        if client.get("client_id") == client_id and client.get("client_secret"):
            return str(client["client_secret"])
    raise CommandError(f"no secret for client {client_id}: set {AUDITOR_SECRET_ENV}")


def _json(response: requests.Response, what: str) -> dict[str, Any]:
    body = response.raw.read(MAX_ANSWER_BYTES + 1, decode_content=True)
    if len(body) > MAX_ANSWER_BYTES:
        raise CommandError(f"{what}: the answer is larger than {MAX_ANSWER_BYTES} bytes")
    try:
        data = json.loads(body)
    except ValueError:
        raise CommandError(f"{what}: HTTP {response.status_code}, not JSON") from None
    if not isinstance(data, dict):
        raise CommandError(f"{what}: HTTP {response.status_code}, not a JSON object")
    return data


def fetch_token(base_url: str, client_id: str, secret: str, scope: str) -> dict[str, Any]:
    """The client_credentials grant (RFC 6749 §4.4, client_secret_basic per §2.3.1) at the token
    endpoint the sandbox's SMART configuration names (SMART App Launch 2.x "Backend Services")."""
    fhir_base = base_url.rstrip("/")
    if not fhir_base.endswith("/fhir"):
        fhir_base += "/fhir"
    with requests.Session() as http:
        try:
            found = http.get(
                f"{fhir_base}/.well-known/smart-configuration",
                timeout=TIMEOUT,
                stream=True,
                headers={"Accept": "application/json"},
            )
            config = _json(found, "SMART configuration")
            endpoint = config.get("token_endpoint")
            if not isinstance(endpoint, str) or urlsplit(endpoint).scheme not in ("http", "https"):
                raise CommandError("SMART configuration: no usable token_endpoint")
            answer = http.post(
                endpoint,
                data={"grant_type": "client_credentials", "scope": scope},
                auth=(quote(client_id, safe=""), quote(secret, safe="")),
                timeout=TIMEOUT,
                stream=True,
                headers={"Accept": "application/json"},
            )
        except requests.RequestException as exc:
            raise CommandError(f"{fhir_base}: {exc.__class__.__name__}, is the sandbox running?") from None
        body = _json(answer, "token endpoint")
    if answer.status_code != 200 or not isinstance(body.get("access_token"), str):
        error = str(body.get("error", "no access_token"))[:100]
        description = str(body.get("error_description", ""))[:300]
        raise CommandError(f"token endpoint: HTTP {answer.status_code} {error}: {description}".rstrip(": "))
    return body


def cmd_token(args: argparse.Namespace) -> int:
    body = fetch_token(args.url, args.client_id, auditor_secret(args.client_id), args.scope)
    if args.json:
        print(json.dumps(body, indent=2))
    else:
        print(body["access_token"])
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="back-mice-sandbox", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run the sandbox EHR and the app together")
    demo.add_argument("--port", type=int, default=8000, help="the app's port (default 8000)")
    demo.add_argument("--sandbox-port", type=int, default=8001, help="the sandbox's port (default 8001)")
    demo.set_defaults(func=cmd_demo)
    serve = commands.add_parser("serve", help="run the sandbox EHR alone")
    add_serve_arguments(serve)
    token = commands.add_parser("token", help="print an access token from a running sandbox")
    token.add_argument("--url", default=DEFAULT_URL, help=f"sandbox origin or FHIR base ({DEFAULT_URL})")
    token.add_argument("--client-id", default=AUDITOR_CLIENT, help=f"service client ({AUDITOR_CLIENT})")
    token.add_argument("--scope", default="user/*.rs", help="scopes to ask for (user/*.rs)")
    token.add_argument("--json", action="store_true", help="print the whole token response")
    token.set_defaults(func=cmd_token)
    return parser


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--public-url", help="origin the sandbox is reached at (default http://HOST:PORT)")
    parser.add_argument(
        "--app-launch-url", help="the app's launch URL (default http://localhost:8000/launch)"
    )
    parser.set_defaults(func=cmd_serve)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except CommandError as exc:
        print(f"back-mice-sandbox {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
