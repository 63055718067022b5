"""One completed launch, typed: its tokens, its context and its registration (SMART App Launch 2.x,
"Launch context arrives with your access token"), and the policy that keeps its access token fresh.

A :class:`Launch` lives server-side in a :class:`LaunchStore` under its random ``id``; the browser's
session only names that id, so tokens never leave the server and a launch is shared by every process
and host that shares the store. :class:`TokenKeeper` refreshes the access token before it expires, one
refresh at a time per launch across all of them (the store's lock), saves a rotated refresh token before
anyone else can read the old one, and replaces a token the EHR refused with a 401
(docs/architecture.md#launch-and-tokens).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

from smart_app import fhirjson as fj
from smart_app.smart.errors import RelaunchRequired, SmartError
from smart_app.smart.scopes import ScopeSet
from smart_app.smart.token import TokenSet

log = logging.getLogger("smart_app.smart")


#: Users who launch the app for themselves or a person they care for (FHIR R4 ``fhirUser`` types).
PATIENT_FACING_USERS = ("Patient", "RelatedPerson")


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
    #: When the current access token's request was sent: the start of its ``expires_in``.
    token_issued_at: float | None = None
    #: When the keeper refreshes the current access token (``TokenKeeper.refresh_due``).
    refresh_due_at: float | None = None
    #: Launched by a patient (a patient-facing registration): read-only, whoever the user is.
    patient_facing: bool = False

    @property
    def user_type(self) -> str | None:
        """The resource type of ``fhir_user`` (``Practitioner``, ``Patient``, ...), relative or absolute."""
        ref = fj.Ref.parse(self.fhir_user)
        return ref.type if ref is not None else None

    @property
    def read_only(self) -> bool:
        """Patient-facing launches write nothing: a patient or a related person is never the author of
        a clinical draft (a patient portal, a patient standalone launch, a patient-facing registration)."""
        return self.patient_facing or self.user_type in PATIENT_FACING_USERS

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

    def refreshed(self, tokens: TokenSet, refresh_due_at: float | None) -> Launch:
        """This launch with the tokens of a refresh. A server that does not rotate refresh tokens sends
        none, and the old one stays valid (SMART App Launch 2.x, "Refresh access token")."""
        return replace(
            self,
            access_token=tokens.access_token,
            expires_at=tokens.expires_at,
            refresh_token=tokens.refresh_token or self.refresh_token,
            scope=str(tokens.scope) if tokens.scope.scopes else self.scope,
            token_issued_at=tokens.issued_at,
            refresh_due_at=refresh_due_at,
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
#: Refreshes tried in a row when the EHR answers with a token already at its expiry (``expires_in`` 0).
EXPIRED_REFRESHES = 3


class TokenKeeper:
    """The refresh policy of one launch (SMART App Launch 2.x, "Refresh access token").

    - A token is refreshed ``leeway`` seconds before it expires, or halfway through its lifetime when
      that is shorter than twice the leeway (so a 20 s token is refreshed once, after 10 s, not on every
      request). One sharer refreshes while the others wait on the store's lock and then take the
      refreshed token from the store; a rotated refresh token is saved before the lock is released.
    - When a refresh returns the same access token again (some EHRs answer refreshes that arrive close
      together so), it is used until it expires and refreshed then.
    - A token is never used at or past its expiry: then a refresh must succeed, or the clinician
      relaunches. A failed refresh before the expiry keeps the current token until then.
    - A token the EHR refuses (HTTP 401) is replaced by one refresh (:meth:`replace_rejected`); without
      a refresh token, or if the refresh fails, the clinician relaunches.
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

    def refresh_due(self, tokens: TokenSet, *, same_token: bool = False) -> float | None:
        """When to refresh ``tokens``: ``None`` without an expiry; at the expiry for a token the EHR sent
        again; else ``min(leeway, lifetime / 2)`` before the expiry."""
        if tokens.expires_at is None:
            return None
        if same_token:
            return tokens.expires_at
        lifetime = tokens.expires_at - tokens.issued_at if tokens.issued_at is not None else None
        leeway = self.leeway if lifetime is None else min(self.leeway, max(0.0, lifetime) / 2)
        return tokens.expires_at - leeway

    def _due(self, launch: Launch, now: float) -> bool:
        return now >= self._due_at(launch)

    @staticmethod
    def _expired(launch: Launch, now: float) -> bool:
        return launch.expires_at is not None and now >= launch.expires_at

    def _load(self, launch_id: str) -> Launch:
        launch = self.store.load(launch_id)
        if launch is None:
            raise RelaunchRequired()
        return launch

    def access_token(self, launch_id: str) -> str:
        """A usable access token of the launch, refreshed first when it is due."""
        return self.lease(launch_id)[0]

    def lease(self, launch_id: str) -> tuple[str, float]:
        """:meth:`access_token`, and until when it may be used without asking again: the time its
        refresh falls due (``inf`` for a token without expiry; ``0`` right after a refresh, whose
        due time is read the next time)."""
        launch = self._load(launch_id)
        if not self._due(launch, self.clock()):
            return launch.access_token, self._due_at(launch)
        return self._refreshed_token(launch_id), 0.0

    def _due_at(self, launch: Launch) -> float:
        if launch.expires_at is None:
            return float("inf")
        due_at = (
            launch.refresh_due_at if launch.refresh_due_at is not None else launch.expires_at - self.leeway
        )
        return min(due_at, launch.expires_at)

    def _refreshed_token(self, launch_id: str) -> str:
        with self.store.lock(launch_id):
            launch = self._load(launch_id)  # another sharer may have refreshed meanwhile
            now = self.clock()
            if not self._due(launch, now):
                return launch.access_token
            if not launch.refresh_token:
                if not self._expired(launch, now):
                    return launch.access_token
                raise self._relaunch(launch, "the access token expired and there is no refresh token")
            for _ in range(EXPIRED_REFRESHES):
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
                token = self._keep(launch, tokens, "due")
                launch, now = self._load(launch_id), self.clock()
                if not self._expired(launch, now):
                    return token
            raise self._relaunch(launch, "the EHR's refreshed access token had already expired")

    def replace_rejected(self, launch_id: str, rejected: str) -> str:
        """A new access token for a launch whose token ``rejected`` the EHR refused (HTTP 401): the one
        another sharer already obtained, else one refresh now. Raises :class:`RelaunchRequired` when no
        refresh is possible or the refresh fails."""
        with self.store.lock(launch_id):
            launch = self._load(launch_id)
            if launch.access_token != rejected:
                return launch.access_token
            if not launch.refresh_token:
                raise self._relaunch(launch, "the EHR refused the access token and there is no refresh token")
            try:
                tokens = self.refresher(launch)
            except SmartError as exc:
                raise self._relaunch(
                    launch, f"the EHR refused the access token and the refresh failed ({exc.error})"
                ) from None
            if tokens.access_token == rejected:
                raise self._relaunch(
                    launch, "the EHR refused the access token and its refresh returned it again"
                )
            return self._keep(launch, tokens, "after the EHR refused the previous one")

    def end(self, launch_id: str, why: str) -> RelaunchRequired:
        """Forget the launch (the EHR no longer accepts its tokens); the error to raise."""
        launch = self.store.load(launch_id)
        if launch is None:
            return RelaunchRequired()
        return self._relaunch(launch, why)

    def _keep(self, launch: Launch, tokens: TokenSet, why: str) -> str:
        same = tokens.access_token == launch.access_token
        refreshed = launch.refreshed(tokens, self.refresh_due(tokens, same_token=same))
        self.store.save(refreshed)
        log.info(
            "Access token of a launch with %s refreshed (%s)%s",
            launch.ehr_name or launch.iss,
            why,
            "; the EHR sent the same token again, used until it expires" if same else "",
        )
        return refreshed.access_token

    def _relaunch(self, launch: Launch, why: str) -> RelaunchRequired:
        log.warning("Relaunch required for %s: %s", launch.ehr_name or launch.iss, why)
        self.store.forget(launch.id)
        return RelaunchRequired(ehr_name=launch.ehr_name)
