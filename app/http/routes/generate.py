"""POST /generate: greedy generation with per-token and per-response risk signals."""

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from ...assessment import job_probes, response_body
from ...engine import Cancelled, GenerationJob, StepRecord
from ...monitor.entry import exchange_for
from ...prompts import InputError, encode_prompt
from .. import deps, running
from ..metrics import observe_response
from ..schemas import GenerateRequest, GenerateResponse

router = APIRouter()


def _sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {orjson.dumps(data).decode()}\n\n"


async def _stream(request: Request, handle, slot, calibrations, params_reason, exchange):
    """SSE events of a job; a client that goes away closes this generator, which cancels the job."""
    records = []
    with slot:
        try:
            async for item in handle.events(running.timeout_s(request)):
                if isinstance(item, StepRecord):
                    records.append(item)
                    yield _sse("token", item.as_dict())
                elif item.finish_reason == "cancelled":
                    raise Cancelled
                else:
                    body = response_body(records, item, calibrations, params_reason, False)
                    body["response_id"] = exchange.response_id
                    yield _sse("done", observe_response(request.app, body, exchange))
        except TimeoutError:
            yield _sse("error", {"error": running.timed_out(request).detail})
        except Cancelled:
            yield _sse("error", {"error": running.cancelled().detail})
        except Exception as e:
            yield _sse("error", {"error": f"generation failed: {e}"})


@router.post("/generate", response_model=GenerateResponse, response_model_exclude_none=False,
             responses={200: {"content": {"text/event-stream": {"schema": {}}}},
                        422: {"description": "invalid field"}, 429: {"description": "too many streams"},
                        503: {"description": "engine queue full, or the job was cancelled at shutdown"},
                        504: {"description": "request timeout"}})
async def generate(req: GenerateRequest, request: Request, response: Response):
    """Generate greedily; JSON body, or Server-Sent Events (`token`…, then `done`) with `stream`."""
    state = request.app.state
    settings = state.settings
    chosen, params_reason = deps.calibrations(request, req.calibration), state.served.reason  # fixed for this request
    max_tokens = req.max_tokens or settings.default_max_tokens
    if max_tokens > settings.max_tokens_limit:
        raise deps.unprocessable("max_tokens", f"max_tokens must be at most {settings.max_tokens_limit}")
    try:
        ids = encode_prompt(state.engine.lm, req.prompt, req.chat(), req.chat_template, max_tokens)
    except InputError as e:
        raise deps.unprocessable(e.field, str(e)) from None
    cutoff = (req.pfail_cutoff or settings.pfail_cutoff) if req.halt_on_pfail else None
    job = GenerationJob(ids, max_tokens, req.top_logprobs, cutoff, probes=job_probes(chosen))
    exchange = exchange_for("/generate", req.prompt, req.chat(), req.chat_template)
    if req.stream:
        slot = running.StreamSlot(request)
        handle = running.submit(request, job)
        return StreamingResponse(_stream(request, handle, slot, chosen, params_reason, exchange),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", deps.RESPONSE_ID: exchange.response_id})
    records, fin = await running.run(request, job)
    body = response_body(records, fin, chosen, params_reason, req.include_trace)
    body["response_id"] = response.headers[deps.RESPONSE_ID] = exchange.response_id
    return observe_response(request.app, body, exchange)
