"""POST /generate: greedy generation with per-token and per-response risk signals."""

import json

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import StreamingResponse

from ..engine import EngineBusy, Finished, GenerationJob, StepRecord, bridge
from ..generation import InputError, encode_prompt, response_body, run_job
from ..schemas import GenerateRequest, GenerateResponse

router = APIRouter()


def unprocessable(field: str, message: str) -> HTTPException:
    """A 422 in FastAPI's own validation-error shape, naming the field."""
    return HTTPException(422, detail=[{"loc": ["body", field], "msg": message, "type": "value_error"}])


def _sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


async def _stream(events, job, params, params_reason):
    records = []
    try:
        while True:
            item = await events.get()
            if isinstance(item, StepRecord):
                records.append(item)
                yield _sse("token", item.as_dict())
            elif isinstance(item, Finished):
                if item.finish_reason == "cancelled":
                    yield _sse("error", {"error": "generation was cancelled"})
                else:
                    yield _sse("done", response_body(records, item, params, params_reason, False))
                return
            else:
                yield _sse("error", {"error": str(item)})
                return
    finally:
        job.cancelled.set()  # the client went away, or we are done: stop generating


@router.post("/generate", response_model=GenerateResponse, response_model_exclude_none=False,
             responses={422: {"description": "invalid field"}, 503: {"description": "engine queue full"}})
async def generate(req: GenerateRequest, request: Request):
    """Generate greedily; JSON body, or Server-Sent Events (`token`…, then `done`) with `stream`."""
    state = request.app.state
    settings = state.settings
    params, params_reason = state.params, state.params_reason  # fixed for this request
    max_tokens = req.max_tokens or settings.default_max_tokens
    if max_tokens > settings.max_tokens_limit:
        raise unprocessable("max_tokens", f"max_tokens must be at most {settings.max_tokens_limit}")
    try:
        ids = encode_prompt(state.engine.lm, req.prompt, req.chat(), req.chat_template, max_tokens)
    except InputError as e:
        raise unprocessable(e.field, str(e)) from None
    cutoff = (req.pfail_cutoff or settings.pfail_cutoff) if req.halt_on_pfail else None
    job = GenerationJob(ids, max_tokens, req.top_logprobs, cutoff)
    try:
        if req.stream:
            events = bridge(job)
            state.engine.submit(job)
            return StreamingResponse(_stream(events, job, params, params_reason), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        records, fin = await run_job(state.engine, job)
    except EngineBusy as e:
        raise HTTPException(503, str(e), headers={"Retry-After": "1"}) from None
    if fin.finish_reason == "cancelled":
        raise HTTPException(503, "generation was cancelled")
    return response_body(records, fin, params, params_reason, req.include_trace)
