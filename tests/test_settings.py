"""Settings: every one documented in the README's table, and the combinations that cannot work refused at
start-up with the fix (a plain-http public URL off localhost keeps no Secure cookie)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from smart_app import create_app
from smart_app.config import DEFAULTS, ConfigError

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
SECRET = "a-long-random-production-secret-for-this-test"


def settings_table() -> str:
    start = README.index("| variable | meaning | default |")
    return README[start : README.index("\n\n", start)]


@pytest.mark.parametrize("key", sorted(DEFAULTS))
def test_every_default_setting_is_in_the_readme_table(key):
    assert f"`SMART_APP_{key}`" in settings_table()


@pytest.mark.parametrize(
    "key",
    [
        "INSTANCE_PATH",
        "AUDIT_LOG_PATH",
        "AUDIT_PAGE_MAX_VERIFY",
        "SESSION_COOKIE_NAME_OVERRIDE",
        "FHIR_TOKEN",
    ],
)
def test_settings_read_outside_the_defaults_are_in_the_table_too(key):
    assert f"`SMART_APP_{key}`" in settings_table()


def test_the_table_names_no_setting_the_app_does_not_read():
    named = set(re.findall(r"`SMART_APP_([A-Z_]+)`", settings_table()))
    source = "\n".join(p.read_text() for p in Path("smart_app").rglob("*.py"))
    assert all(name in source or name == "REGISTRATIONS_DIR" for name in named), named


def app_with(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **env: str) -> object:
    for key in list(os.environ):
        if key.startswith("SMART_APP_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("SMART_APP_SECRET_KEY", SECRET)
    monkeypatch.setenv("SMART_APP_INSTANCE_PATH", str(tmp_path / "instance"))
    for key, value in env.items():
        monkeypatch.setenv(f"SMART_APP_{key}", value)
    return create_app()


def test_plain_http_off_localhost_with_a_secure_cookie_is_refused_with_the_fix(tmp_path, monkeypatch):
    with pytest.raises(ConfigError) as info:
        app_with(tmp_path, monkeypatch, PUBLIC_URL="http://10.0.0.5:8000", SESSION_COOKIE_SAMESITE="Lax")
    message = str(info.value)
    assert "SMART_APP_SESSION_COOKIE_SAMESITE=Lax" in message
    assert "SMART_APP_SESSION_COOKIE_SECURE=false" in message and "https" in message


def test_plain_http_off_localhost_works_with_lax_and_an_insecure_cookie(tmp_path, monkeypatch):
    app = app_with(
        tmp_path,
        monkeypatch,
        PUBLIC_URL="http://10.0.0.5:8000",
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE="false",
    )
    client = app.test_client()  # type: ignore[attr-defined]
    with client.session_transaction() as sess:
        sess["x"] = 1
    cookie = client.get("/launch").headers.get("Set-Cookie", "")
    assert cookie.startswith("back_mice_session=") and "Secure" not in cookie and "SameSite=Lax" in cookie


@pytest.mark.parametrize(
    "env",
    [
        {"PUBLIC_URL": "http://localhost:8000"},
        {"PUBLIC_URL": "http://127.0.0.1:8000"},
        {"PUBLIC_URL": "https://backmice.example.org"},
    ],
)
def test_https_and_localhost_keep_the_secure_cookie(tmp_path, monkeypatch, env):
    app = app_with(tmp_path, monkeypatch, **env)
    assert app.config["SESSION_COOKIE_SECURE"] is True  # type: ignore[attr-defined]


def test_an_unknown_foreign_endpoint_policy_is_refused(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="FOREIGN_AUTH_ENDPOINTS must be warn or refuse"):
        app_with(tmp_path, monkeypatch, FOREIGN_AUTH_ENDPOINTS="ignore")


def test_the_instance_path_setting_holds_sessions_and_the_audit_log(tmp_path, monkeypatch):
    app = app_with(tmp_path, monkeypatch)
    assert app.instance_path == str(tmp_path / "instance")  # type: ignore[attr-defined]
    assert (tmp_path / "instance" / "sessions").is_dir()
