"""What routes take from the request and the app: a 422 naming a field, the calibrations that assess it."""

from fastapi import HTTPException, Request

RESPONSE_ID = "X-Response-Id"  # the header that names a scored response's log entry


def unprocessable(field: str, message: str) -> HTTPException:
    """A 422 in FastAPI's own validation-error shape, naming the field."""
    return HTTPException(422, detail=[{"loc": ["body", field], "msg": message, "type": "value_error"}])


def calibrations(request: Request, name: str | None) -> tuple:
    """The calibrations that may assess this request (fixed for it): every one the model carries,
    or the one it names (422 naming `calibration` when none is called so)."""
    try:
        return request.app.state.served.choose(name)
    except KeyError as e:
        raise unprocessable("calibration", e.args[0]) from None
