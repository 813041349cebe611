"""The one way callers follow a submitted job, from the event loop or from a plain thread."""

import asyncio
import queue

from .jobs import Finished, Job, StepRecord


class Cancelled(RuntimeError):
    """The job was cancelled before it finished (a disconnect, shutdown or `cancel()`)."""


class Handle:
    """What `Engine.submit` returns: the job's StepRecords as they come, then its `Finished`.

    Made on the caller's thread: inside a running event loop the engine's reports are handed to
    that loop (use `async for` / `await result()`); elsewhere they wait in a thread-safe queue
    (use `wait()`). An engine error is re-raised to the caller.
    """

    def __init__(self, job: Job):
        self.job = job
        try:
            self._loop = asyncio.get_running_loop()
            self._queue = asyncio.Queue()
        except RuntimeError:
            self._loop, self._queue = None, queue.SimpleQueue()

    def emit(self, item) -> None:
        """Called on the engine thread with a StepRecord, the Finished or an exception."""
        if self._loop is None:
            self._queue.put(item)
            return
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self.cancel()

    def cancel(self) -> None:
        """Ask the engine to stop this job; it stops within one step and reports Finished("cancelled")."""
        self.job.cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self.job.cancelled.is_set()

    async def events(self, timeout_s: float | None = None):
        """Yield StepRecords, then the Finished; raise TimeoutError once `timeout_s` has passed.
        The job is cancelled when the iteration ends, however it ends."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        try:
            while True:
                if deadline is not None and loop.time() >= deadline:
                    raise TimeoutError
                try:  # what already waits is taken without a timer (no task or timer per step)
                    item = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    async with asyncio.timeout_at(deadline):
                        item = await self._queue.get()
                item = _checked(item)
                yield item
                if isinstance(item, Finished):
                    return
        finally:
            self.cancel()

    def __aiter__(self):
        return self.events()

    async def result(self, timeout_s: float | None = None) -> tuple[list, Finished]:
        """All StepRecords and the Finished; raise Cancelled if the job was cancelled."""
        items = [item async for item in self.events(timeout_s)]
        return _done(items[:-1], items[-1])

    def wait(self) -> tuple[list, Finished]:
        """`result()` for a thread outside the event loop (the CLI, calibration)."""
        records = []
        while not isinstance(item := _checked(self._queue.get()), Finished):
            records.append(item)
        return _done(records, item)


def _checked(item):
    if isinstance(item, BaseException):
        raise item
    assert isinstance(item, (StepRecord, Finished)), item
    return item


def _done(records: list, fin: Finished) -> tuple[list, Finished]:
    if fin.finish_reason == "cancelled":
        raise Cancelled("the job was cancelled")
    return records, fin
