"""SMART scopes, v1 and v2 syntax (SMART App Launch 2.x, "Scopes and Launch Context").

v2 clinical scopes are ``<context>/<resource>.<cruds>[?<query>]`` with the permission letters in the
order ``c r u d s``; v1 scopes are ``<context>/<resource>.(read|write|*)``. v1 ``read`` maps to v2
``rs``, ``write`` to ``cud`` and ``*`` to ``cruds`` (section "Scopes for requesting clinical data").
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

CONTEXTS = ("patient", "user", "system")
V2_ORDER = "cruds"
_V1_PERMISSIONS = {"read": "rs", "write": "cud", "*": "cruds"}
_RESOURCE_TYPE = re.compile(r"^(?:\*|[A-Z][A-Za-z]+)$")
_SCOPE_TOKEN = re.compile(r"^[\x21\x23-\x5B\x5D-\x7E]+$")  # RFC 6749 section 3.3 scope-token

_VERBS = {
    "c": "create",
    "r": "read",
    "u": "update",
    "d": "delete",
    "s": "search",
}

ScopeSyntax = Literal["v1", "v2"]


@dataclass(frozen=True)
class ResourceScope:
    """One clinical-data scope, normalised to v2 permission letters."""

    text: str
    context: str
    resource_type: str
    permissions: frozenset[str]
    syntax: ScopeSyntax
    query: str | None = None

    def covers(self, context: str, resource_type: str, letter: str, *, allow_query: bool = True) -> bool:
        """True when this scope grants ``letter`` on ``resource_type`` for a ``context`` request.

        A ``patient/`` need is also met by ``user/`` or ``system/`` access to the same data.
        """
        if letter not in self.permissions:
            return False
        if self.resource_type not in ("*", resource_type):
            return False
        if self.query is not None and not allow_query:
            return False
        if context == "patient":
            return True
        return self.context == context or self.context == "system"


@functools.lru_cache(maxsize=1024)
def parse_resource_scope(text: str) -> ResourceScope | None:
    """Parse ``text`` as a v1 or v2 clinical scope; ``None`` when it is not one (e.g. ``openid``). Kept
    per process: a launch's scopes are read again on every request, and a scope's meaning never changes."""
    head, sep, rest = text.partition("/")
    if not sep or head not in CONTEXTS or "." not in rest:
        return None
    target, _, tail = rest.partition(".")
    if not _RESOURCE_TYPE.match(target):
        return None
    permission, qsep, query = tail.partition("?")
    if permission in _V1_PERMISSIONS and not qsep:
        return ResourceScope(text, head, target, frozenset(_V1_PERMISSIONS[permission]), "v1")
    if permission and _is_v2_permission(permission):
        return ResourceScope(text, head, target, frozenset(permission), "v2", query if qsep else None)
    return None


def _is_v2_permission(letters: str) -> bool:
    """Letters drawn from ``cruds``, each at most once, in that order."""
    positions = [V2_ORDER.find(ch) for ch in letters]
    return all(p >= 0 for p in positions) and positions == sorted(set(positions))


def check_scope(text: str, syntax: ScopeSyntax) -> str | None:
    """Return why ``text`` is not a valid requested scope in ``syntax``, or ``None`` when it is."""
    if not _SCOPE_TOKEN.match(text):
        return f"{text!r} is not a valid OAuth scope token"
    head, sep, rest = text.partition("/")
    if sep and head in CONTEXTS:
        parsed = parse_resource_scope(text)
        if parsed is None:
            return f"{text!r} is not a valid SMART {syntax} scope " + (
                "(permissions must be letters from 'cruds' in that order)"
                if syntax == "v2"
                else "(permission must be read, write or *)"
            )
        if parsed.syntax != syntax:
            return f"{text!r} uses SMART {parsed.syntax} syntax but the registration says {syntax}"
    return None


def scope_words(scope: str | Iterable[str] | None) -> tuple[str, ...]:
    """Split a space-delimited scope string (RFC 6749 section 3.3), keeping order, dropping repeats."""
    if scope is None:
        return ()
    items = scope.split() if isinstance(scope, str) else [w for s in scope for w in s.split()]
    return tuple(dict.fromkeys(items))


class ScopeSet:
    """Scopes granted (or requested) for one launch."""

    def __init__(self, scopes: Iterable[str] = ()) -> None:
        self.scopes: tuple[str, ...] = scope_words(list(scopes))
        self.resource_scopes: tuple[ResourceScope, ...] = tuple(
            parsed for parsed in map(parse_resource_scope, self.scopes) if parsed is not None
        )

    @classmethod
    def parse(cls, scope: str | None) -> ScopeSet:
        """Parse a space-delimited scope string; v1 and v2 may be mixed."""
        return cls(scope_words(scope))

    def __str__(self) -> str:
        return " ".join(self.scopes)

    def __repr__(self) -> str:
        return f"ScopeSet({str(self)!r})"

    def __contains__(self, scope: object) -> bool:
        return scope in self.scopes

    def __iter__(self) -> Iterator[str]:
        return iter(self.scopes)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ScopeSet) and set(self.scopes) == set(other.scopes)

    def __hash__(self) -> int:
        return hash(frozenset(self.scopes))

    def has(self, scope: str) -> bool:
        """True when the literal scope (e.g. ``openid``, ``offline_access``) is present."""
        return scope in self.scopes

    def permits(self, resource_type: str, letter: str, context: str = "patient") -> bool:
        """True when some scope grants permission ``letter`` (one of ``cruds``) on ``resource_type``."""
        return any(s.covers(context, resource_type, letter) for s in self.resource_scopes)

    def can_read(self, resource_type: str) -> bool:
        """Read by id (v2 ``r``; v1 ``read`` or ``*``)."""
        return self.permits(resource_type, "r")

    def can_search(self, resource_type: str) -> bool:
        """Search (v2 ``s``; v1 ``read`` or ``*``)."""
        return self.permits(resource_type, "s")

    def can_write(self, resource_type: str) -> bool:
        """Create (v2 ``c``; v1 ``write`` or ``*``): the only write the app performs."""
        return self.permits(resource_type, "c")

    def missing_for(self, wanted: Iterable[str]) -> list[str]:
        """The parts of ``wanted`` scopes that this set does not grant, as scope strings.

        A clinical scope granted only in part (``patient/Observation.rs`` for wanted
        ``patient/Observation.crs``) yields the missing letters (``patient/Observation.c``). Launch
        context requests (``launch``, ``launch/patient``) are not grants and are skipped.
        """
        missing: list[str] = []
        for text in scope_words(list(wanted)):
            if text == "launch" or text.startswith("launch/"):
                continue
            parsed = parse_resource_scope(text)
            if parsed is None:
                if text not in self.scopes:
                    missing.append(text)
                continue
            lacking = [
                ch
                for ch in V2_ORDER
                if ch in parsed.permissions
                and not any(
                    s.covers(parsed.context, parsed.resource_type, ch, allow_query=parsed.query is not None)
                    for s in self.resource_scopes
                )
            ]
            if not lacking:
                continue
            if len(lacking) == len(parsed.permissions):
                missing.append(text)
            elif parsed.syntax == "v1":
                missing.append(text)
            else:
                suffix = f"?{parsed.query}" if parsed.query else ""
                missing.append(f"{parsed.context}/{parsed.resource_type}.{''.join(lacking)}{suffix}")
        return missing

    def describe_missing(self, wanted: Iterable[str]) -> list[str]:
        """Plain-English sentences, one per scope in ``missing_for(wanted)``."""
        return [describe_scope_missing(text) for text in self.missing_for(wanted)]


def describe_scope_missing(text: str) -> str:
    """One sentence saying what the app cannot do without scope ``text``."""
    parsed = parse_resource_scope(text)
    if parsed is not None:
        verbs = [_VERBS[ch] for ch in V2_ORDER if ch in parsed.permissions]
        action = " or ".join(verbs) if len(verbs) <= 2 else ", ".join(verbs[:-1]) + " or " + verbs[-1]
        what = "any resource type" if parsed.resource_type == "*" else f"{parsed.resource_type} records"
        return f"The EHR did not allow the app to {action} {what} ({text})."
    if text == "openid" or text == "fhirUser":
        return f"The EHR did not share who the signed-in user is ({text})."
    if text in ("offline_access", "online_access"):
        return (
            f"The EHR did not allow the app to renew its access ({text}); "
            "launch again from the EHR when the session ends."
        )
    return f"The EHR did not grant the scope {text}."
