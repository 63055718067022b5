"""Time and size budgets for answers from outside the app.

- A **cut-off** is an instant after which a request still running is stopped: while a thread works
  inside :func:`cut_off_at`, every socket it reads an answer from is shut down when the instant passes.
  A server that drips its headers or body one byte at a time, which per-read timeouts never catch,
  is cut at the instant whatever it sends. Sessions from :func:`watched_session` (or with
  :class:`WatchedAdapter` mounted) report their sockets to the cut-off. One watchdog thread per process
  fires every cut-off when its instant comes (a timer thread per request cost ~0.2 ms of CPU each).
- :func:`read_body` streams a body and undoes its content coding itself (RFC 9110 section 8.4.1:
  ``gzip``, ``deflate``), asking zlib for at most the bytes still allowed, so a size cap is counted on
  the decompressed bytes and a compression bomb costs at most the cap in memory.
- :class:`ReadBudget` is the budget of one launch's reads of the record: one deadline for them all,
  and a cap per response.

Errors are :class:`CutShort` (``limit`` ``"time"`` or ``"size"``); callers report what was cut short as
not read.
"""

from __future__ import annotations

import heapq
import itertools
import os
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

Limit = Literal["time", "size"]

#: Read size of one streamed chunk (compressed or not).
CHUNK_BYTES = 64 * 1024
#: Defaults of the settings ``FHIR_READ_BUDGET_SECONDS`` and ``FHIR_MAX_RESPONSE_BYTES``.
DEFAULT_READ_SECONDS = 20.0
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024


class CutShort(Exception):
    """An answer was stopped before it was complete: it ran past its time (``"time"``) or grew past its
    size cap (``"size"``). ``reason`` is one line, safe to show and log (it never quotes the answer)."""

    def __init__(self, limit: Limit, reason: str) -> None:
        super().__init__(reason)
        self.limit: Limit = limit
        self.reason = reason


@dataclass(frozen=True)
class ReadBudget:
    """What one launch's reads of the record may take: ``seconds`` in all (paging, retries and
    ``Retry-After`` waits included) and ``max_response_bytes`` per answer, decompressed."""

    seconds: float = DEFAULT_READ_SECONDS
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES


def describe_bytes(count: int) -> str:
    """``64 MB``, ``64 KiB``-style size for messages (binary multiples, named plainly)."""
    if count >= 1024 * 1024 and count % (1024 * 1024) == 0:
        return f"{count // (1024 * 1024)} MB"
    if count >= 1024 and count % 1024 == 0:
        return f"{count // 1024} KB"
    return f"{count:,} bytes"


# -- the cut-off -------------------------------------------------------------------------------------

_local = threading.local()


class Cutoff:
    """The sockets of one request and the instant they are shut down at; and the answers read on them,
    closed if the request ends in an exception (whatever layer raised it, none keeps a connection)."""

    def __init__(self, instant: float) -> None:
        self.instant = instant
        self.fired = False
        self.ended = False
        self._sockets: list[socket.socket] = []
        self._answers: list[Any] = []
        self._lock = threading.Lock()

    def remaining(self) -> float:
        return max(0.0, self.instant - time.monotonic())

    @property
    def passed(self) -> bool:
        """Whether the instant has come: the sockets were shut, or a timeout set to what was left fired
        a moment before the timer did."""
        return self.fired or self.remaining() <= 0.1

    def attach(self, sock: socket.socket | None) -> None:
        if sock is None:
            return
        with self._lock:
            if not self.fired:
                self._sockets.append(sock)
                return
        _shut(sock)

    def track(self, answer: Any) -> None:
        with self._lock:
            self._answers.append(answer)

    def close_answers(self) -> None:
        with self._lock:
            answers, self._answers = self._answers, []
        for answer in answers:
            try:
                answer.close()
            except Exception:  # closing what is already broken must not mask the error
                pass

    def fire(self) -> None:
        with self._lock:
            if self.ended:
                return
            self.fired = True
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            _shut(sock)

    def end(self) -> None:
        """The request is over: nothing is shut from now on, and what it held is let go."""
        with self._lock:
            self.ended = True
            self._sockets = []
            self._answers = []


class _Watchdog:
    """The one thread of the process that fires each cut-off at its instant. Cut-offs wait in a heap; one
    that ended before its instant is dropped when it comes up. Started on first use in each process (a
    gunicorn worker forked from a master that had one starts its own)."""

    def __init__(self) -> None:
        self._wake = threading.Condition()
        self._heap: list[tuple[float, int, Cutoff]] = []
        self._order = itertools.count()
        self._pid = 0

    def watch(self, cutoff: Cutoff) -> None:
        with self._wake:
            if self._pid != os.getpid():
                self._heap = []
                self._pid = os.getpid()
                threading.Thread(target=self._run, name="fhir-cutoff", daemon=True).start()
            heapq.heappush(self._heap, (cutoff.instant, next(self._order), cutoff))
            if self._heap[0][2] is cutoff:
                self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                due: list[Cutoff] = []
                while not due:
                    now = time.monotonic()
                    while self._heap and (self._heap[0][0] <= now or self._heap[0][2].ended):
                        due.append(heapq.heappop(self._heap)[2])
                    due = [cutoff for cutoff in due if not cutoff.ended]
                    if not due:
                        self._wake.wait(self._heap[0][0] - now if self._heap else None)
            for cutoff in due:
                cutoff.fire()


_watchdog = _Watchdog()


def _shut(sock: socket.socket) -> None:
    """Shut the connection down in both directions: a read blocked in another thread returns at once.
    The plain socket method is used on TLS sockets too, so the TLS object stays for that thread."""
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


@contextmanager
def cut_off_at(instant: float) -> Iterator[Cutoff]:
    """Within this block, requests made by this thread through a watched session are stopped at
    ``instant`` (a ``time.monotonic()`` value)."""
    cutoff = Cutoff(instant)
    previous = getattr(_local, "cutoff", None)
    _local.cutoff = cutoff
    _watchdog.watch(cutoff)
    try:
        yield cutoff
    except BaseException:
        cutoff.close_answers()
        raise
    finally:
        cutoff.end()
        _local.cutoff = previous


def _current() -> Cutoff | None:
    cutoff: Cutoff | None = getattr(_local, "cutoff", None)
    return cutoff


def _watched_response(sock: socket.socket | None, getresponse: Callable[[], Any]) -> Any:
    """``getresponse()`` of a connection on ``sock`` under the thread's cut-off, when there is one: the
    cut-off holds the socket and the answer, so that it can close them when it fires."""
    cutoff = _current()
    if cutoff is None:
        return getresponse()
    cutoff.attach(sock)
    answer = getresponse()
    cutoff.track(answer)
    return answer


class _WatchedHTTPConnection(HTTPConnection):
    def getresponse(self) -> Any:
        return _watched_response(self.sock, super().getresponse)


class _WatchedHTTPSConnection(HTTPSConnection):
    def getresponse(self) -> Any:
        return _watched_response(self.sock, super().getresponse)


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class WatchedAdapter(HTTPAdapter):
    """A ``requests`` transport whose connections report the socket they read an answer from (status
    line and headers included) to the thread's :func:`cut_off_at` block."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


def watched_session() -> requests.Session:
    """A ``requests.Session`` whose every request can be cut off."""
    session = requests.Session()
    adapter = WatchedAdapter()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


# -- bodies ------------------------------------------------------------------------------------------


class UnsupportedCoding(ValueError):
    """A ``Content-Encoding`` the app did not ask for (it sends ``Accept-Encoding: gzip, deflate``)."""


class _Decoder:
    """One content coding undone incrementally, never producing more than asked for."""

    def __init__(self, coding: str) -> None:
        self.coding = coding.strip().lower()
        if self.coding in ("", "identity"):
            self._wbits: int | None = None
        elif self.coding in ("gzip", "x-gzip"):
            self._wbits = 16 + zlib.MAX_WBITS
        elif self.coding == "deflate":
            self._wbits = zlib.MAX_WBITS  # zlib-wrapped as RFC 9110 says; raw deflate tried on failure
        else:
            raise UnsupportedCoding(f"unsupported content coding {coding[:40]!r}")
        self._z = zlib.decompressobj(self._wbits) if self._wbits is not None else None
        self._started = False

    def decode(self, data: bytes, room: int) -> Iterator[bytes]:
        """Decoded pieces of ``data`` of at most :data:`CHUNK_BYTES` each, stopping once ``room`` (>= 1)
        bytes were produced: more pending input then means the caller is over its cap anyway. Small
        pieces keep a bomb from being unpacked in one call."""
        if self._z is None:
            yield data[:room]
            return
        produced = 0
        while data and produced < room:
            try:
                piece = self._z.decompress(data, min(CHUNK_BYTES, room - produced))
            except zlib.error:
                if self.coding != "deflate" or self._started:
                    raise
                self._wbits = -zlib.MAX_WBITS
                self._z = zlib.decompressobj(self._wbits)
                continue
            self._started = True
            produced += len(piece)
            yield piece
            if self._z.unconsumed_tail:
                data = self._z.unconsumed_tail
            elif self._z.eof and self._z.unused_data:  # another gzip member follows (RFC 1952 section 2.2)
                data = self._z.unused_data
                self._z = zlib.decompressobj(self._z_wbits())
            else:
                data = b""

    def _z_wbits(self) -> int:
        assert self._wbits is not None
        return self._wbits

    def finish(self) -> None:
        """Raise ``zlib.error`` when a compressed stream ended before its end marker."""
        if self._z is not None and self._started and not self._z.eof:
            raise zlib.error("compressed data ended early")


def read_body(response: requests.Response, max_bytes: int) -> bytearray:
    """The body of a ``stream=True`` response, decompressed, of at most ``max_bytes``.

    Raises :class:`CutShort` (``"size"``) as soon as more would be needed; ``UnsupportedCoding`` or
    ``zlib.error`` for a body that cannot be decoded; transport errors (urllib3, ``OSError``) as they
    come. The response is closed when the body could not be read whole.
    """
    headers = response.headers
    decoder = _Decoder(headers.get("Content-Encoding") or "")
    declared = headers.get("Content-Length")
    if decoder.coding in ("", "identity") and declared and declared.strip().isdigit():
        if int(declared) > max_bytes:
            response.close()
            raise CutShort("size", f"the answer is larger than the {describe_bytes(max_bytes)} limit")
    body = bytearray()
    complete = False
    try:
        for chunk in response.raw.stream(CHUNK_BYTES, decode_content=False):
            for piece in decoder.decode(chunk, max_bytes - len(body) + 1):
                body += piece
            if len(body) > max_bytes:
                raise CutShort(
                    "size",
                    f"the answer grew past the {describe_bytes(max_bytes)} limit (counted decompressed)",
                )
        decoder.finish()
        complete = True
    finally:
        if complete:
            response.raw.release_conn()
        else:
            response.close()
    return body
