"""POST /score: the signals of a response produced elsewhere, in one teacher-forced forward pass."""

from fastapi import APIRouter, HTTPException, Request

from ..engine import EngineBusy, ScoreJob, bridge
from ..generation import InputError, encode_prompt, response_body
from ..schemas import ScoreRequest, ScoreResponse
from .generate import unprocessable

router = APIRouter()


@router.post("/score", response_model=ScoreResponse,
             responses={422: {"description": "invalid field"}, 503: {"description": "engine queue full"}})
async def score(req: ScoreRequest, request: Request):
    """Score `response` to the prompt: the same scores, quadrant and trace /generate gives for its output."""
    state = request.app.state
    params, params_reason = state.params, state.params_reason
    lm = state.engine.lm
    response_ids = lm.tokenizer.encode(req.response, add_special_tokens=False)
    if not response_ids:
        raise unprocessable("response", "the response encodes to no tokens")
    if req.end_with_eos:
        response_ids.append(lm.tokenizer.eos_token_id)
    try:
        ids = encode_prompt(lm, req.prompt, req.chat(), req.chat_template, len(response_ids))
    except InputError as e:
        raise unprocessable(e.field, str(e)) from None
    job = ScoreJob(ids, response_ids, req.top_logprobs, probe=params.probe if params else None)
    events = bridge(job)
    try:
        state.engine.submit(job)
    except EngineBusy as e:
        raise HTTPException(503, str(e), headers={"Retry-After": "1"}) from None
    try:
        item = await events.get()
    finally:
        job.cancelled.set()
    if isinstance(item, Exception):
        raise HTTPException(500, f"scoring failed: {item}")
    records, fin = item
    body = response_body(records, fin, params, params_reason, req.include_trace)
    body["usage"] = {"prompt_tokens": fin.prompt_tokens, "response_tokens": len(records)}
    for key in ("finish_reason", "timing"):
        del body[key]
    return body
