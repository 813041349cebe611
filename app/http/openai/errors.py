"""Errors on /v1 in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`."""

import logging
import re

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException  # FastAPI's HTTPException and body-parsing errors

log = logging.getLogger("halluwatch.openai")


class OpenAIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


_KINDS = {429: "requests"}  # OpenAI's error type of a rate limit
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "null"}


def _param(loc) -> str | None:
    """`("body", "messages", 0, "role")` -> `messages[0].role`; pydantic's union tags are dropped."""
    out = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _NAME.match(part) and part not in _TYPE_TAGS:
            out += f".{part}" if out else part
    return out or None


def _validation_error(exc: RequestValidationError) -> OpenAIError:
    err = exc.errors()[0]
    if err.get("type") == "json_invalid":
        return OpenAIError(400, f"the request body is not valid JSON: {err.get('msg')}")
    param = _param(err.get("loc", ()))
    msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    if err.get("type") == "missing":
        msg = "required"
    return OpenAIError(400, f"{param}: {msg}" if param else msg, param=param)


class OpenAIRoute(APIRoute):
    """Routes of this router answer every error in OpenAI's shape (the rest of the app keeps FastAPI's)."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def route(request: Request):
            try:
                return await handler(request)
            except OpenAIError as e:
                return e.response()
            except RequestValidationError as e:
                return _validation_error(e).response()
            except HTTPException as e:  # our own engine outcomes (running.Refused) carry a code
                kind = _KINDS.get(e.status_code, "invalid_request_error" if e.status_code < 500 else "server_error")
                return OpenAIError(e.status_code, str(e.detail), kind, code=getattr(e, "code", None),
                                   headers=e.headers).response()
            except Exception:
                log.exception("request to %s failed", request.url.path)
                return OpenAIError(500, "internal server error", "server_error").response()

        return route
