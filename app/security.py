"""API key check and bind-address warning.

When an API key is set (HALLUWATCH_API_KEY), every request needs `Authorization: Bearer <key>`,
except /health, the web page and its static files (the page asks for the key), and /metrics when
`metrics_public` is set.
"""

import hmac
import ipaddress
import logging

from fastapi import Request
from fastapi.responses import JSONResponse

log = logging.getLogger("halluwatch.security")


def is_public(path: str, metrics_public: bool) -> bool:
    """Paths that never need the key."""
    return path in ("/health", "/") or path.startswith("/static/") or (metrics_public and path == "/metrics")


def key_matches(header: str | None, key: str) -> bool:
    """Constant-time check of an `Authorization: Bearer <key>` header."""
    scheme, _, given = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), key.encode())


def require_key(key: str, metrics_public: bool):
    """An HTTP middleware that answers 401 (JSON) without the right bearer key."""

    async def middleware(request: Request, call_next):
        if not is_public(request.url.path, metrics_public) and not key_matches(
                request.headers.get("authorization"), key):
            return JSONResponse({"detail": "missing or wrong API key: send 'Authorization: Bearer <key>'"},
                                status_code=401, headers={"WWW-Authenticate": "Bearer"})
        return await call_next(request)

    return middleware


def warn_if_exposed(host: str, api_key: str | None) -> None:
    """Log a warning when binding beyond loopback without an API key."""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not api_key:
        log.warning("listening on %s without an API key: anyone who can reach this address can use the "
                    "model and start calibration jobs; set HALLUWATCH_API_KEY", host)
