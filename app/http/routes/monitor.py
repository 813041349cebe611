"""GET /monitor/summary and GET /monitor/responses: the response log, summarised and paged."""

import time
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from ...monitor import summary as summaries
from ...monitor.drift import window_drift
from ...monitor.export import present
from ...monitor.store import BadCursor, Filters

router = APIRouter(prefix="/monitor", tags=["monitor"])
MAX_PAGE = 500


def response_log(request: Request):
    """The app's response log; 404 when it is off."""
    log = request.app.state.response_log
    if log is None:
        raise HTTPException(404, "the response log is off (HALLUWATCH_LOG=off)")
    return log


def query_error(field: str, message: str) -> HTTPException:
    return HTTPException(422, detail=[{"loc": ["query", field], "msg": message, "type": "value_error"}])


def _seconds(value: datetime | None) -> float | None:
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


class SummaryQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    window: str = Field("24h", description="how far back from now: 90s, 15m, 24h, 7d (at most 366d)")
    bucket: str = Field("1h", description="bucket width, same syntax; at most 1000 buckets per window")


class ResponsesQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    since: datetime | None = Field(None, description="ISO 8601 time (UTC unless it says); entries at or after it")
    until: datetime | None = Field(None, description="ISO 8601 time; entries before it")
    route: str | None = Field(None, description="e.g. /generate, /score, /v1/chat/completions")
    quadrant: Literal["Q1", "Q2", "Q3", "Q4", "none"] | None = None
    risk_above: float | None = Field(None, ge=0, le=1, description="risk probability strictly above this")
    flagged: bool | None = None
    labelled: bool | None = None
    cursor: str | None = Field(None, description="next_cursor of the previous page")
    limit: int = Field(50, ge=1, le=MAX_PAGE, description=f"entries per page (at most {MAX_PAGE})")


@router.get("/summary", responses={404: {"description": "the log is off"}, 422: {"description": "invalid field"}})
def monitor_summary(q: Annotated[SummaryQuery, Query()], request: Request) -> dict:
    """Counts, flagged share per quadrant, risk quantiles, in-distribution share and mean latency,
    over the window and per bucket; `drift`: per calibration in effect, KS and PSI of the window's risk
    probabilities and probe distance ratios against its training split (or why not), null without
    calibrations."""
    log = response_log(request)
    try:
        window = summaries.parse_duration(q.window)
    except ValueError as e:
        raise query_error("window", str(e)) from None
    try:
        bucket = summaries.parse_duration(q.bucket)
    except ValueError as e:
        raise query_error("bucket", str(e)) from None
    if window > summaries.MAX_WINDOW_S:
        raise query_error("window", "the window must be at most 366d")
    if bucket > window or window / bucket > summaries.MAX_BUCKETS:
        raise query_error("bucket", f"the bucket must fit the window, with at most {summaries.MAX_BUCKETS} "
                                    f"buckets in it")
    until = time.time()
    since = until - window
    counts = log.store.bucket_counts(since, until, bucket)
    sample = log.store.newest(Filters(since=since, until=until), summaries.SAMPLE_COLUMNS, summaries.SAMPLE)
    drift = window_drift(sample, request.app.state.served.calibrations, request.app.state.settings.drift_min_live)
    return {"window": q.window, "bucket": q.bucket,
            **summaries.summarize(counts, sample, since, until, bucket, drift or None)}


@router.get("/responses", responses={404: {"description": "the log is off"}, 422: {"description": "invalid field"}})
def monitor_responses(q: Annotated[ResponsesQuery, Query()], request: Request) -> dict:
    """Log entries newest first, filtered, a page at a time: {"responses": [...], "next_cursor": …}."""
    log = response_log(request)
    since, until = _seconds(q.since), _seconds(q.until)
    if since is not None and until is not None and until <= since:
        raise query_error("until", "until must be after since")
    filters = Filters(since=since, until=until, route=q.route, quadrant=q.quadrant, risk_above=q.risk_above,
                      flagged=q.flagged, labelled=q.labelled)
    try:
        rows, cursor = log.store.page(filters, q.limit, q.cursor)
    except BadCursor as e:
        raise query_error("cursor", str(e)) from None
    return {"responses": [present(r) for r in rows], "next_cursor": cursor}
