"""API key check and bind-address warning.

When an API key is set (HALLUWATCH_API_KEY), every request needs `Authorization: Bearer <key>`,
except /health, the web page and its static files (the page asks for the key), and /metrics when
`metrics_public` is set.
"""

import hmac
import ipaddress
import logging

from fastapi.responses import JSONResponse
from starlette.datastructures import Headers

log = logging.getLogger("halluwatch.security")


def is_public(path: str, metrics_public: bool) -> bool:
    """Paths that never need the key."""
    return path in ("/health", "/") or path.startswith("/static/") or (metrics_public and path == "/metrics")


def key_matches(header: str | None, key: str) -> bool:
    """Constant-time check of an `Authorization: Bearer <key>` header."""
    scheme, _, given = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), key.encode())


class ApiKeyMiddleware:
    """Pure ASGI: answers 401 (JSON) without the right bearer key (disconnect detection keeps working)."""

    def __init__(self, app, key: str, metrics_public: bool):
        self.app, self.key, self.metrics_public = app, key, metrics_public

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and not is_public(scope["path"], self.metrics_public) and not key_matches(
                Headers(scope=scope).get("authorization"), self.key):
            response = JSONResponse({"detail": "missing or wrong API key: send 'Authorization: Bearer <key>'"},
                                    status_code=401, headers={"WWW-Authenticate": "Bearer"})
            return await response(scope, receive, send)
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Pure ASGI: 413 for a body over `limit` bytes, by Content-Length or, for a chunked body without
    one, after buffering at most `limit` bytes of it."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        size = Headers(scope=scope).get("content-length")
        if size is not None:
            if size.isdigit() and int(size) > self.limit:
                return await self._reject(scope, receive, send)
            return await self.app(scope, receive, send)
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                return await self._reject(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _reject(self, scope, receive, send):
        response = JSONResponse({"detail": f"request body is larger than max_body_bytes ({self.limit} bytes)"},
                                status_code=413)
        await response(scope, receive, send)


def warn_if_exposed(host: str, api_key: str | None) -> None:
    """Log a warning when binding beyond loopback without an API key."""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not api_key:
        log.warning("listening on %s without an API key: anyone who can reach this address can use the "
                    "model and start calibration jobs; set HALLUWATCH_API_KEY", host)
