"""A readers-writer lock for the store: searches and reads run side by side, writes run alone."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class ReadWriteLock:
    """Many readers or one writer, writers first (a waiting writer holds back new readers).

    ``with lock:`` takes the write side; it is re-entrant for the writing thread, which may also take
    the read side while it writes. A reader must not ask for the write side (no upgrades) and must not
    nest reads (a writer waiting in between would deadlock it).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer: int | None = None
        self._depth = 0
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        me = threading.get_ident()
        with self._cond:
            if self._writer == me:
                shared = False
            else:
                while self._writer is not None or self._writers_waiting:
                    self._cond.wait()
                self._readers += 1
                shared = True
        try:
            yield
        finally:
            if shared:
                with self._cond:
                    self._readers -= 1
                    if self._readers == 0:
                        self._cond.notify_all()

    def acquire(self) -> None:
        me = threading.get_ident()
        with self._cond:
            if self._writer == me:
                self._depth += 1
                return
            self._writers_waiting += 1
            try:
                while self._writer is not None or self._readers:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writer = me
            self._depth = 1

    def release(self) -> None:
        with self._cond:
            if self._writer != threading.get_ident():
                raise RuntimeError("the write lock is not held by this thread")
            self._depth -= 1
            if self._depth == 0:
                self._writer = None
                self._cond.notify_all()

    def __enter__(self) -> ReadWriteLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
