"""The bearer token of one launch for the FHIR client, and one refresh and retry when the EHR answers a
read with 401 (RFC 6750 section 3.1, ``invalid_token``; SMART App Launch 2.x, "Refresh access token").

:class:`LaunchBearer` is the FHIR client's token callable (the current token, refreshed when due).
:class:`RetryOn401Session` is the client's HTTP session: a 401 to a request that carried the launch's
token makes the keeper replace that token (one refresh shared by every request that got the 401), and a
read (GET) is sent once more with the new token. Other methods are not re-sent: the caller sees the 401,
and its own retry uses the new token. A second 401 on the retried read ends the launch (relaunch).
"""

from __future__ import annotations

import logging
from typing import Any

import requests

from smart_app.smart.errors import RelaunchRequired
from smart_app.smart.launch import TokenKeeper

log = logging.getLogger("smart_app.smart")

_BEARER = "Bearer "


class LaunchBearer:
    """The access token of launch ``launch_id``; callable from the client's worker threads. A bearer
    serves one page request: it holds the token the keeper lent until its refresh falls due
    (:meth:`TokenKeeper.lease`), so the page's reads do not each read the launch from the store."""

    def __init__(self, keeper: TokenKeeper, launch_id: str) -> None:
        self.keeper = keeper
        self.launch_id = launch_id
        self._lease: tuple[str, float] = ("", 0.0)

    def __call__(self) -> str:
        token, until = self._lease
        if self.keeper.clock() < until:
            return token
        self._lease = lease = self.keeper.lease(self.launch_id)
        return lease[0]

    def after_401(self, rejected: str) -> str:
        """The token to use instead of ``rejected``; :class:`RelaunchRequired` when there is none."""
        self._lease = ("", 0.0)
        return self.keeper.replace_rejected(self.launch_id, rejected)

    def refused_again(self) -> RelaunchRequired:
        return self.keeper.end(self.launch_id, "the EHR refused a freshly refreshed access token")


class RetryOn401Session(requests.Session):
    """A ``requests.Session`` that replaces a refused bearer token once and re-sends a refused read."""

    def __init__(self, bearer: LaunchBearer) -> None:
        super().__init__()
        self.bearer = bearer

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        response = super().send(request, **kwargs)
        header = request.headers.get("Authorization", "")
        if response.status_code != 401 or not header.startswith(_BEARER):
            return response
        fresh = self.bearer.after_401(header[len(_BEARER) :])
        if request.method != "GET":
            log.info(
                "FHIR %s answered 401; the access token was replaced for the next attempt", request.method
            )
            return response
        response.close()
        retry = request.copy()
        retry.headers["Authorization"] = _BEARER + fresh
        again = super().send(retry, **kwargs)
        if again.status_code == 401:
            again.close()
            raise self.bearer.refused_again()
        log.info("FHIR read answered 401; retried once with a refreshed access token")
        return again
