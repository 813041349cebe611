"""POST /feedback: the ground truth of a logged response (hallucinated or correct), for calibration."""

import time
from typing import Literal

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field

from .monitor import response_log

router = APIRouter(tags=["monitor"])
FLUSH_WAIT_S = 2.0  # an entry may still be in the writer's queue right after its response


class Feedback(BaseModel):
    model_config = ConfigDict(extra="forbid")
    response_id: str = Field(min_length=1, max_length=80, description="response_id / id / X-Response-Id")
    label: Literal["hallucinated", "correct"]
    note: str | None = Field(None, max_length=2000)


@router.post("/feedback", responses={404: {"description": "no such response in the log, or the log is off"},
                                     422: {"description": "invalid field"}})
def feedback(fb: Feedback, request: Request) -> dict:
    """Label a logged response; labelling it again overwrites (`relabelled` and `previous` say so)."""
    log = response_log(request)
    previous = log.store.label(fb.response_id, fb.label, fb.note, time.time())
    if previous is None and log.writer.flush(FLUSH_WAIT_S):
        previous = log.store.label(fb.response_id, fb.label, fb.note, time.time())
    if previous is None:
        raise HTTPException(404, f"no response {fb.response_id!r} in the log")
    relabelled = previous["label"] is not None
    return {"response_id": fb.response_id, "label": fb.label, "note": fb.note, "relabelled": relabelled,
            "previous": previous if relabelled else None}
