"""A de-duplicating work queue of job keys, as controller-runtime's: events coalesce per job.

A job's pods and the job itself change in bursts (created, scheduled, running, our own status patch);
each change only marks the job dirty. A key is queued at most once; a key marked while a worker
reconciles it is queued again when that worker is done, so one job is never reconciled by two
workers at once and no change is missed. `add_after` delays a key (pod events: the ranks of a gang
start and finish within a moment of each other; one reconcile then sees them all and writes one
status patch instead of one per rank).
"""

import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class WorkQueue(Generic[K]):
    """FIFO of distinct keys with per-key mutual exclusion between workers."""

    def __init__(self) -> None:
        self._ready: deque[K] = deque()
        self._queued: set[K] = set()  # in _ready
        self._busy: set[K] = set()  # taken by a worker
        self._again: set[K] = set()  # marked while busy
        self._later: list[tuple[float, int, K]] = []  # (due, tie-breaker, key), a heap
        self._order = itertools.count()
        self._changed = threading.Condition()
        self._closed = False

    def add(self, key: K) -> None:
        """Mark a key dirty."""
        with self._changed:
            if key in self._busy:
                self._again.add(key)
            elif key not in self._queued:
                self._queued.add(key)
                self._ready.append(key)
                self._changed.notify()

    def add_after(self, key: K, delay: float) -> None:
        """Mark a key dirty in `delay` seconds (sooner if it is added meanwhile)."""
        with self._changed:
            heapq.heappush(self._later, (time.monotonic() + delay, next(self._order), key))
            self._changed.notify()

    def _promote(self) -> float | None:
        """Move due delayed keys to the ready queue; seconds until the next one is due (None: none left)."""
        now = time.monotonic()
        while self._later and self._later[0][0] <= now:
            self.add(heapq.heappop(self._later)[2])
        return self._later[0][0] - now if self._later else None

    def get(self, timeout: float | None = None) -> K | None:
        """The next key to work on (the caller must call `done`), or None when closed or timed out."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while not self._closed:
                next_due = self._promote()
                if self._ready:
                    break
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                waits = [value for value in (left, next_due) if value is not None]
                self._changed.wait(min(waits) if waits else None)
            if self._closed:
                return None
            key = self._ready.popleft()
            self._queued.discard(key)
            self._busy.add(key)
            return key

    def done(self, key: K) -> None:
        """A worker finished `key`; queue it again if it was marked meanwhile."""
        with self._changed:
            self._busy.discard(key)
            if key in self._again:
                self._again.discard(key)
                self.add(key)  # the condition's lock is re-entrant

    def close(self) -> None:
        """Wake every waiting worker and make `get` return None from now on."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def __len__(self) -> int:
        with self._changed:
            return len(self._ready)
