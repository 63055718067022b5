"""Search snapshots: the match list of a search, kept so its later pages are slices, not new searches.

FHIR R4 "Search" §3.1.1.3 (paging) leaves the form of ``next`` links to the server; like most servers
the sandbox holds the result set for a while and names it in its links (``_cursor``). A snapshot is
bound to the query that made it (type, filters, sort and the token's patient compartment), so a
cursor never shows a request anything its own query would not; an unknown or expired cursor, or one
used with another query, just means the search runs again.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from .outcome import JsonDict


@dataclass(frozen=True)
class Snapshot:
    key: Hashable
    matches: list[JsonDict]
    expires_at: float


class Snapshots:
    """At most ``max_entries`` snapshots, each for ``ttl`` seconds, least recently used dropped first."""

    def __init__(self, *, ttl: float, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._items: OrderedDict[str, Snapshot] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, key: Hashable, matches: list[JsonDict]) -> str:
        cursor = secrets.token_urlsafe(12)
        with self._lock:
            self._items[cursor] = Snapshot(key, matches, self._clock() + self.ttl)
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)
        return cursor

    def get(self, cursor: str, key: Hashable) -> list[JsonDict] | None:
        """The snapshot's matches, or ``None`` if the cursor is unknown, expired or for another query."""
        with self._lock:
            snapshot = self._items.get(cursor)
            if snapshot is None:
                return None
            if snapshot.expires_at < self._clock():
                del self._items[cursor]
                return None
            self._items.move_to_end(cursor)
        return snapshot.matches if snapshot.key == key else None

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
