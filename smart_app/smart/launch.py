"""One completed launch, typed: its tokens, its context and its registration (SMART App Launch 2.x,
"Launch context arrives with your access token"), and the policy that keeps its access token fresh.

A :class:`Launch` lives server-side in a :class:`LaunchStore` under its random ``id``; the browser's
session only names that id, so tokens never leave the server and a launch is shared by every process
and host that shares the store. :class:`TokenKeeper` refreshes the access token before it expires, one
refresh at a time per launch across all of them (the store's lock), and saves a rotated refresh token
before anyone else can read the old one (docs/architecture.md#launch-and-tokens).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

from smart_app.smart.errors import RelaunchRequired, SmartError
from smart_app.smart.scopes import ScopeSet
from smart_app.smart.token import TokenSet

log = logging.getLogger("smart_app.smart")


def new_launch_id() -> str:
    return secrets.token_urlsafe(24)


@dataclass(frozen=True)
class Launch:
    """A completed launch. Tokens are excluded from ``repr`` so they never reach a log by accident."""

    id: str
    registration_id: str
    ehr_name: str
    iss: str
    patient: str
    access_token: str = field(repr=False)
    token_endpoint: str
    scope: str = ""
    expires_at: float | None = None
    refresh_token: str | None = field(default=None, repr=False)
    encounter: str | None = None
    fhir_user: str | None = None
    need_patient_banner: bool = True
    smart_style_url: str | None = None
    fhir_context: tuple[Mapping[str, Any], ...] = ()
    ehr_launch: bool = True

    @property
    def fhir_base(self) -> str:
        """The FHIR base every request of this launch goes to: the issuer the token was issued for."""
        return self.iss

    @property
    def scopes(self) -> ScopeSet:
        return ScopeSet.parse(self.scope)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict for the store."""
        data = asdict(self)
        data["fhir_context"] = [dict(item) for item in self.fhir_context]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Launch | None:
        """Rebuild from :meth:`to_dict` output; ``None`` when it is not a usable launch."""
        names = cls.__dataclass_fields__.keys()
        values = {k: v for k, v in data.items() if k in names}
        values["fhir_context"] = tuple(i for i in values.get("fhir_context") or () if isinstance(i, dict))
        try:
            launch = cls(**values)
        except TypeError:
            return None
        if not (launch.id and launch.access_token and launch.iss and launch.patient):
            return None
        return launch

    def refreshed(self, tokens: TokenSet) -> Launch:
        """This launch with the tokens of a refresh. A server that does not rotate refresh tokens sends
        none, and the old one stays valid (SMART App Launch 2.x, "Refresh access token")."""
        return replace(
            self,
            access_token=tokens.access_token,
            expires_at=tokens.expires_at,
            refresh_token=tokens.refresh_token or self.refresh_token,
            scope=str(tokens.scope) if tokens.scope.scopes else self.scope,
        )


class LaunchStore(Protocol):
    """Where launches live: shared by every process (and host) that serves the same users."""

    def load(self, launch_id: str) -> Launch | None: ...

    def save(self, launch: Launch) -> None: ...

    def forget(self, launch_id: str) -> None: ...

    def lock(self, launch_id: str) -> AbstractContextManager[None]:
        """Exclusive, across every sharer of the store, for one launch's refresh."""
        ...


Refresher = Callable[[Launch], TokenSet]


class TokenKeeper:
    """The refresh policy of one launch (SMART App Launch 2.x, "Refresh access token").

    - A token is used until ``leeway`` seconds before it expires; then one sharer refreshes while the
      others wait on the store's lock and take the refreshed token from the store.
    - A failed refresh keeps the current token until it expires (then: relaunch).
    - No refresh token and an expired access token: relaunch.
    """

    def __init__(
        self,
        store: LaunchStore,
        refresher: Refresher,
        *,
        leeway: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.refresher = refresher
        self.leeway = leeway
        self.clock = clock

    def _due(self, launch: Launch, now: float) -> bool:
        return launch.expires_at is not None and now >= launch.expires_at - self.leeway

    @staticmethod
    def _expired(launch: Launch, now: float) -> bool:
        return launch.expires_at is not None and now >= launch.expires_at

    def access_token(self, launch_id: str) -> str:
        """A usable access token of the launch, refreshed first when it is due."""
        launch = self.store.load(launch_id)
        if launch is None:
            raise RelaunchRequired()
        if not self._due(launch, self.clock()):
            return launch.access_token
        with self.store.lock(launch_id):
            launch = self.store.load(launch_id)  # another sharer may have refreshed meanwhile
            if launch is None:
                raise RelaunchRequired()
            now = self.clock()
            if not self._due(launch, now):
                return launch.access_token
            if not launch.refresh_token:
                if not self._expired(launch, now):
                    return launch.access_token
                raise self._relaunch(launch, "the access token expired and there is no refresh token")
            try:
                tokens = self.refresher(launch)
            except SmartError as exc:
                if not self._expired(launch, now):
                    log.warning(
                        "Token refresh failed (%s); using the current token until it expires", exc.error
                    )
                    self.store.save(replace(launch, refresh_token=None))
                    return launch.access_token
                raise self._relaunch(launch, f"the token refresh failed ({exc.error})") from None
            refreshed = launch.refreshed(tokens)
            self.store.save(refreshed)
            return refreshed.access_token

    def _relaunch(self, launch: Launch, why: str) -> RelaunchRequired:
        log.warning("Relaunch required for %s: %s", launch.ehr_name or launch.iss, why)
        self.store.forget(launch.id)
        return RelaunchRequired(ehr_name=launch.ehr_name)
