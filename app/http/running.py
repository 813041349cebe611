"""Running engine jobs for HTTP requests: the one place that maps engine outcomes to HTTP.

Queue full → 503 + Retry-After; past `request_timeout_s` → 504; a job cancelled before it
finished (shutdown) → 503; too many streams → 429 + Retry-After. Every route, OpenAI's
included, goes through these, so no engine outcome becomes a 500.
"""

import asyncio
from contextlib import asynccontextmanager

from fastapi import HTTPException, Request

from ..engine import Cancelled, EngineBusy, Handle, Job


class Refused(HTTPException):
    """An HTTP error from an engine outcome; `code` is the machine-readable kind (OpenAI's `code`)."""

    def __init__(self, status: int, message: str, code: str, retry_after: bool = False):
        super().__init__(status, message, headers={"Retry-After": "1"} if retry_after else None)
        self.code = code


def timeout_s(request: Request) -> float:
    return request.app.state.settings.request_timeout_s


def timed_out(request: Request) -> Refused:
    return Refused(504, f"generation ran past request_timeout_s={timeout_s(request)}", "timeout")


def cancelled() -> Refused:
    return Refused(503, "generation was cancelled (the server is stopping)", "cancelled", retry_after=True)


def submit(request: Request, job: Job) -> Handle:
    """Queue `job` on the app's engine; 503 + Retry-After when its queue is full."""
    try:
        return request.app.state.engine.submit(job)
    except EngineBusy as e:
        raise Refused(503, str(e), "engine_overloaded", retry_after=True) from None


async def _cancel_on_disconnect(request: Request, handle: Handle) -> None:
    """Wait for the client's `http.disconnect` and cancel the job. (The body is already read, so
    the next ASGI message is the disconnect; `request.is_disconnected()` polls with a cancelled
    scope, which does not see it behind middleware.)"""
    while not handle.cancelled:
        if (await request.receive())["type"] == "http.disconnect":
            handle.cancel()
            return


@asynccontextmanager
async def disconnect_cancels(request: Request, handle: Handle):
    """While inside, a client that goes away cancels the job (non-streamed responses; a stream's
    generator is closed by the server instead, which cancels its job)."""
    watcher = asyncio.create_task(_cancel_on_disconnect(request, handle))
    try:
        yield
    finally:
        watcher.cancel()
        handle.cancel()


async def run(request: Request, job: Job) -> tuple:
    """Submit `job` and wait for it: (records, Finished), with the errors above."""
    handle = submit(request, job)
    async with disconnect_cancels(request, handle):
        try:
            return await handle.result(timeout_s(request))
        except TimeoutError:
            raise timed_out(request) from None
        except Cancelled:
            raise cancelled() from None


class StreamSlot:
    """Counts a streaming response in `app.state.streams` (shared by every streaming route);
    429 + Retry-After when `max_streams` are already streaming."""

    def __init__(self, request: Request):
        self.state = request.app.state
        limit = self.state.settings.max_streams
        if self.state.streams >= limit:
            raise Refused(429, f"too many concurrent streams (max_streams={limit})", "rate_limit_exceeded",
                          retry_after=True)

    def __enter__(self):
        self.state.streams += 1

    def __exit__(self, *exc):
        self.state.streams -= 1
