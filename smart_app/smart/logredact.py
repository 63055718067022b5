"""Redaction of OAuth secrets from log lines written by other libraries.

Access logs (werkzeug, gunicorn) and HTTP client debug logs (urllib3) print request URLs, and the
redirect back from the EHR carries ``code`` and ``state`` in its query (SMART App Launch 2.x, "Obtain
authorization code"). This filter replaces the values of such parameters before any handler sees the
record, so no code, state, token or client credential reaches a log (RFC 6749 section 10.3, 10.5).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

SENSITIVE_PARAMETERS = (
    "code",
    "state",
    "nonce",
    "code_verifier",
    "access_token",
    "refresh_token",
    "id_token",
    "client_secret",
    "client_assertion",
)
DEFAULT_LOGGERS = ("werkzeug", "gunicorn.access", "gunicorn.error", "urllib3.connectionpool")
_PATTERN = re.compile(
    r"(?P<key>(?<![A-Za-z0-9_])(?:" + "|".join(SENSITIVE_PARAMETERS) + r"))=(?P<value>[^&\s\"'#]+)"
)
REDACTED = "[redacted]"


def redact(text: str) -> str:
    """``text`` with the values of sensitive URL/form parameters replaced."""
    return _PATTERN.sub(lambda m: f"{m.group('key')}={REDACTED}", text)


class RedactSecrets(logging.Filter):
    """A logging filter that rewrites each record's message through ``redact``."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            return True
        cleaned = redact(message)
        if cleaned != message:
            record.msg = cleaned
            record.args = ()
        return True


def install_log_redaction(logger_names: Iterable[str] = DEFAULT_LOGGERS) -> None:
    """Attach ``RedactSecrets`` to each named logger once (filters on a logger see only its own records)."""
    for name in logger_names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactSecrets) for f in logger.filters):
            logger.addFilter(RedactSecrets())
