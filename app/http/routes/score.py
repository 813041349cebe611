"""POST /score: the signals of a response produced elsewhere, in one teacher-forced forward pass."""

from fastapi import APIRouter, Request, Response

from ...assessment import job_probes, response_body
from ...engine import ScoreJob
from ...monitor.entry import exchange_for
from ...prompts import InputError, encode_prompt
from .. import deps, running
from ..metrics import observe_response
from ..schemas import ScoreRequest, ScoreResponse

router = APIRouter()


@router.post("/score", response_model=ScoreResponse,
             responses={422: {"description": "invalid field"},
                        503: {"description": "engine queue full, or the job was cancelled at shutdown"},
                        504: {"description": "request timeout"}})
async def score(req: ScoreRequest, request: Request, response: Response):
    """Score `response` to the prompt: the same scores, quadrant and trace /generate gives for its output."""
    state = request.app.state
    chosen = deps.calibrations(request, req.calibration)
    lm = state.engine.lm
    response_ids = lm.tokenizer.encode(req.response, add_special_tokens=False)
    if not response_ids:
        raise deps.unprocessable("response", "the response encodes to no tokens")
    if req.end_with_eos:
        response_ids.append(lm.tokenizer.eos_token_id)
    try:
        ids = encode_prompt(lm, req.prompt, req.chat(), req.chat_template, len(response_ids))
    except InputError as e:
        raise deps.unprocessable(e.field, str(e)) from None
    job = ScoreJob(ids, response_ids, req.top_logprobs, probes=job_probes(chosen))
    exchange = exchange_for("/score", req.prompt, req.chat(), req.chat_template)
    exchange.response = req.response
    records, fin = await running.run(request, job)
    body = response_body(records, fin, chosen, state.served.reason, req.include_trace)
    body["usage"] = {"prompt_tokens": fin.prompt_tokens, "response_tokens": len(records)}
    for key in ("finish_reason", "timing"):
        del body[key]
    body["response_id"] = response.headers[deps.RESPONSE_ID] = exchange.response_id
    return observe_response(request.app, body, exchange)
