"""POST /generate: greedy generation with per-token and per-response risk signals."""

import json

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import StreamingResponse

from ..engine import EngineBusy, GenerationJob, StepRecord, bridge
from ..generation import InputError, encode_prompt, job_events, response_body, run_job
from ..metrics import observe_events, observe_response
from ..schemas import GenerateRequest, GenerateResponse

router = APIRouter()


def unprocessable(field: str, message: str) -> HTTPException:
    """A 422 in FastAPI's own validation-error shape, naming the field."""
    return HTTPException(422, detail=[{"loc": ["body", field], "msg": message, "type": "value_error"}])


def _sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


async def _stream(events, job, state, params, params_reason):
    """SSE events of a job; a client that goes away cancels the job (job_events' cleanup)."""
    records = []
    state.streams += 1
    try:
        async for item in job_events(events, job, state.settings.request_timeout_s):
            if isinstance(item, StepRecord):
                records.append(item)
                yield _sse("token", item.as_dict())
            elif item.finish_reason == "cancelled":
                yield _sse("error", {"error": "generation was cancelled"})
            else:
                yield _sse("done", response_body(records, item, params, params_reason, False))
    except TimeoutError:
        yield _sse("error", {"error": f"generation ran past request_timeout_s={state.settings.request_timeout_s}"})
    except Exception as e:
        yield _sse("error", {"error": f"generation failed: {e}"})
    finally:
        state.streams -= 1


@router.post("/generate", response_model=GenerateResponse, response_model_exclude_none=False,
             responses={200: {"content": {"text/event-stream": {"schema": {}}}},
                        422: {"description": "invalid field"}, 429: {"description": "too many streams"},
                        503: {"description": "engine queue full"}, 504: {"description": "request timeout"}})
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
    job = GenerationJob(ids, max_tokens, req.top_logprobs, cutoff, probe=params.probe if params else None)
    if req.stream and state.streams >= settings.max_streams:
        raise HTTPException(429, f"too many concurrent streams (max_streams={settings.max_streams})",
                            headers={"Retry-After": "1"})
    try:
        if req.stream:
            events = bridge(job)
            events = observe_events(request.app, events, params, params_reason)
            state.engine.submit(job)
            return StreamingResponse(_stream(events, job, state, params, params_reason),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        records, fin = await run_job(state.engine, job, settings.request_timeout_s, request.is_disconnected)
    except EngineBusy as e:
        raise HTTPException(503, str(e), headers={"Retry-After": "1"}) from None
    except TimeoutError:
        raise HTTPException(504, f"generation ran past request_timeout_s={settings.request_timeout_s}") from None
    if fin.finish_reason == "cancelled":
        raise HTTPException(503, "generation was cancelled")
    return observe_response(request.app, response_body(records, fin, params, params_reason, req.include_trace))
