"""Discovery: ``/fhir/.well-known/smart-configuration`` (SMART App Launch 2.x "Conformance", the
well-known document) and the styling document named by ``smart_style_url`` ("Styling")."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from ..faults import fault_response
from ..scopes import NON_CLINICAL
from ..state import authorize_endpoint, fhir_base, get_state, public_url, token_endpoint

bp = Blueprint("wellknown", __name__)

CAPABILITIES = [
    "launch-ehr",
    "launch-standalone",
    "client-public",
    "client-confidential-symmetric",
    "client-confidential-asymmetric",
    "context-ehr-patient",
    "context-ehr-encounter",
    "context-standalone-patient",
    "context-banner",
    "context-style",
    "permission-v1",
    "permission-v2",
    "permission-patient",
    "permission-user",
    "permission-offline",
    "permission-online",
    "sso-openid-connect",
    "authorize-post",
]

SMART_STYLE = {
    "color_background": "#edeae3",
    "color_error": "#9e2d2d",
    "color_highlight": "#69b5ce",
    "color_modal_backdrop": "",
    "color_success": "#498e49",
    "color_text": "#303030",
    "dim_border_radius": "6px",
    "dim_font_size": "13px",
    "dim_spacing_size": "20px",
    "font_family_body": "Georgia, Times, 'Times New Roman', serif",
    "font_family_heading": "'HelveticaNeue-Light', Helvetica, Arial, 'Lucida Grande', sans-serif",
}


def smart_configuration() -> dict[str, object]:
    """The well-known document; comments mark the spec's REQUIRED / RECOMMENDED fields."""
    return {
        # REQUIRED when sso-openid-connect: the iss of id_tokens.
        "issuer": fhir_base(),
        # REQUIRED when sso-openid-connect.
        "jwks_uri": public_url() + "/auth/jwks.json",
        # REQUIRED for launch-ehr / launch-standalone.
        "authorization_endpoint": authorize_endpoint(),
        # REQUIRED.
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        # REQUIRED.
        "token_endpoint": token_endpoint(),
        # OPTIONAL.
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384", "RS256", "ES256"],
        # RECOMMENDED.
        "scopes_supported": sorted(NON_CLINICAL)
        + [
            "patient/*.cruds",
            "user/*.cruds",
            "patient/*.read",
            "patient/*.write",
            "user/*.read",
            "user/*.write",
            "system/*.rs",
        ],
        # RECOMMENDED.
        "response_types_supported": ["code"],
        # REQUIRED.
        "capabilities": CAPABILITIES,
        # REQUIRED; "plain" SHALL NOT be supported.
        "code_challenge_methods_supported": ["S256"],
        "id_token_signing_alg_values_supported": ["RS256"],
    }


@bp.get("/fhir/.well-known/smart-configuration")
@bp.get("/.well-known/smart-configuration")
def smart_config() -> Response:
    fault = get_state().faults.take(["smart-configuration"])
    if fault is not None:
        failed = fault_response(fault)
        if failed is not None:
            return failed
    response = jsonify(smart_configuration())
    response.headers["Access-Control-Allow-Origin"] = "*"
    return response


@bp.get("/smart-style.json")
def smart_style() -> Response:
    response = jsonify(SMART_STYLE)
    response.headers["Access-Control-Allow-Origin"] = "*"
    return response
