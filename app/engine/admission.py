"""The engine's wait queue: work waits here until the running batch has room for it."""

import heapq
import itertools
import threading

from .jobs import EngineBusy

STOP = None  # the marker `Engine.stop` queues ahead of everything


class WaitQueue:
    """Queued work by priority (lower first), first come first served within one; at most
    `maxsize` waiting (EngineBusy beyond). The engine takes the head only when it fits."""

    def __init__(self, maxsize: int):
        self.maxsize = maxsize
        self._heap: list = []
        self._order = itertools.count()
        self._changed = threading.Condition()

    def __len__(self) -> int:
        return len(self._heap)

    def put(self, priority: int, work, *, always: bool = False) -> None:
        """Queue `work`; raise EngineBusy when `maxsize` are waiting (unless `always`)."""
        with self._changed:
            if not always and len(self._heap) >= self.maxsize:
                raise EngineBusy(f"engine queue is full ({self.maxsize} waiting)")
            heapq.heappush(self._heap, (priority, next(self._order), work))
            self._changed.notify()

    @property
    def stopping(self) -> bool:
        """The STOP marker heads the queue."""
        return bool(self._heap) and self._heap[0][2] is STOP

    def take(self, fits, wait: bool = False, timeout: float | None = None):
        """The head, when `fits(head)`; else None. With `wait`, first wait until something is queued
        (at most `timeout` seconds, if given). The STOP marker is never taken (see `stopping`)."""
        with self._changed:
            if wait:
                self._changed.wait_for(lambda: self._heap, timeout)
            if self._heap and self._heap[0][2] is not STOP and fits(self._heap[0][2]):
                return heapq.heappop(self._heap)[2]
            return None

    def drain(self) -> list:
        """Remove and return everything waiting (the STOP marker left out)."""
        with self._changed:
            work = [w for _, _, w in sorted(self._heap) if w is not STOP]
            self._heap.clear()
            return work
