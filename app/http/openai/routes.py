"""OpenAI-compatible endpoints: GET /v1/models, POST /v1/chat/completions, POST /v1/completions.

Shapes follow OpenAI's API reference (chat.completion, chat.completion.chunk, text_completion,
error object). What is specific to halluwatch:

- greedy by default (`temperature` absent or 0), like /generate; `temperature` > 0 samples (with
  `top_p`, seeded by `seed`);
- `risk`: every streamed chunk carries `risk` {`hbar_s`, `pri`}: the per-token signals of the
  tokens in that chunk (aligned with its logprobs); the chunk with `finish_reason` (and the usage
  chunk), and a non-streamed response at top level, carry the response-level `risk`: /generate's
  `scores`, `quadrant` and `quadrant_reason` (the same `response_body`), `calibrated` (false when
  sampling was used or no params are loaded: thresholds were calibrated on greedy output) with
  `calibrated_reason`, and `finish_reason` (`eos` | `length` | `pfail` | `stop_sequence`: OpenAI's
  `finish_reason` is "stop" for all but `length`, so a P_fail halt shows here);
- content tokens: the EOS step and a step halted on P_fail are scored (in `risk.scores` and
  `usage.completion_tokens`, as on /generate) but have no text, so they are not in `logprobs`;
- stop strings: the text ends before the first stop string; tokens whose text starts inside or
  after it are not returned (no logprobs, no per-token risk), and steps generated after it (at
  most one, the engine stops within a token) are dropped; `usage` and `risk.scores` cover the
  steps up to the one that completed the stop string. A stream holds back text (at token
  boundaries) that could be the start of a stop string, so no part of one is ever sent.

Errors on /v1 use OpenAI's shape `{"error": {"message", "type", "param", "code"}}`: 400
invalid_request_error (request validation included, naming the param), 404 for an unknown model
id, 429 (`rate_limit_exceeded`, Retry-After) past `max_streams` concurrent streams, 503
server_error with Retry-After when the engine queue is full, 504 past `request_timeout_s`, 500
server_error. Mid-stream errors are sent as `data: {"error": …}` (the openai client raises them).
A client that goes away cancels its job (streamed or not).
"""

import time
import uuid
from pathlib import Path

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from ...assessment import job_probes
from ...engine import GenerationJob, StepRecord
from ...monitor.entry import Exchange, exchange_for
from ...prompts import InputError, encode_prompt
from .. import deps, running
from ..metrics import observe_response
from .errors import OpenAIError, OpenAIRoute, log
from .schemas import ChatCompletionRequest, CompletionRequest
from .stops import Piece, Run, TokenStrings

OWNED_BY = "halluwatch"

router = APIRouter(prefix="/v1", route_class=OpenAIRoute, tags=["openai"])
# With `stream: true` the answer is Server-Sent Events; documented so that the schema is honest.
SSE_RESPONSES = {200: {"content": {"text/event-stream": {"schema": {}}}},
                 400: {"description": "invalid request (OpenAI error shape)"},
                 503: {"description": "engine queue full"}}


def _token_strings(request: Request) -> TokenStrings:
    state = request.app.state
    lm = state.engine.lm
    cached = getattr(state, "openai_token_strings", None)
    if cached is None or cached.tok is not lm.tokenizer:
        cached = state.openai_token_strings = TokenStrings(lm.tokenizer)
    return cached


# ---------------------------------------------------------------------------------------------
# one generation: content tokens, stop strings, held-back text


async def _pieces(handle, run: Run, request: Request):
    """Released pieces of a running job, until it finishes; raises the engine's outcome as an error."""
    try:
        async for item in handle.events(running.timeout_s(request)):
            if isinstance(item, StepRecord):
                piece = run.add(item)
                if run.stopped:
                    handle.cancel()  # the engine stops within one token
                if piece is not None:
                    yield piece
            else:
                if item.finish_reason == "cancelled" and not run.stopped:
                    raise running.cancelled()
                if (piece := run.finish(item)) is not None:
                    yield piece
    except TimeoutError:
        raise running.timed_out(request) from None


async def _collect(request: Request, handle, run: Run) -> list:
    """All pieces of a non-streamed response; the job is cancelled if the client goes away."""
    async with running.disconnect_cancels(request, handle):
        return [p async for p in _pieces(handle, run, request)]


async def _finish(request: Request, response: Response, handle, run: Run, exchange: Exchange) -> tuple:
    """A non-streamed response: (its observed body, its pieces); the text is `exchange.response`."""
    pieces = await _collect(request, handle, run)
    exchange.response = "".join(p.text for p in pieces)
    response.headers[deps.RESPONSE_ID] = exchange.response_id
    return observe_response(request.app, run.body(), exchange), pieces


# ---------------------------------------------------------------------------------------------
# request preparation


def _start(request: Request, req, prompt: str | None, messages: list | None):
    """Validate limits, encode the prompt, submit the job: (handle, run)."""
    state = request.app.state
    settings = state.settings
    lm = state.engine.lm
    max_tokens = req.limit or settings.default_max_tokens
    if max_tokens > settings.max_tokens_limit:
        param = "max_completion_tokens" if getattr(req, "max_completion_tokens", None) else "max_tokens"
        raise OpenAIError(400, f"{param} must be at most {settings.max_tokens_limit}", param=param)
    try:
        ids = encode_prompt(lm, prompt, messages, False, max_tokens)
    except InputError as e:
        code = "context_length_exceeded" if "context" in str(e) else None
        raise OpenAIError(400, str(e), param=e.field, code=code) from None
    cutoff = (req.pfail_cutoff or settings.pfail_cutoff) if req.halt_on_pfail else None
    sampling = req.sampling
    try:  # fixed for this request
        chosen = state.served.choose(req.calibration)
    except KeyError as e:
        raise OpenAIError(400, e.args[0], param="calibration") from None
    job = GenerationJob(ids, max_tokens, req.n_top, cutoff,
                        temperature=req.temperature if sampling else 0.0,
                        top_p=req.top_p if sampling and req.top_p is not None else 1.0,
                        seed=req.seed if sampling else None, probes=job_probes(chosen))
    run = Run(job, lm.stop_ids, req.stop or [], chosen, state.served.reason, sampling)
    return running.submit(request, job), run


def _usage(body: dict) -> dict:
    u = body["usage"]
    return {"prompt_tokens": u["prompt_tokens"], "completion_tokens": u["completion_tokens"],
            "total_tokens": u["prompt_tokens"] + u["completion_tokens"],
            "prompt_tokens_details": {"cached_tokens": u["cached_tokens"]}}


def _token_risk(spans: list) -> dict:
    return {"hbar_s": [s.record.hbar_s for s in spans], "pri": [s.record.pri for s in spans]}


def _chat_logprobs(spans: list, strings: TokenStrings) -> dict:
    content = []
    for s in spans:
        r = s.record
        token, raw = strings.get(r.token_id)
        content.append({
            "token": token, "logprob": r.logprob, "bytes": raw,
            "top_logprobs": [{"token": t["token"], "logprob": t["logprob"], "bytes": strings.get(t["token_id"])[1]}
                             for t in r.top_logprobs],
        })
    return {"content": content, "refusal": None}


def _legacy_logprobs(spans: list, strings: TokenStrings) -> dict:
    """Completions' legacy format; each top dict also holds the sampled token (up to logprobs+1 entries)."""
    tokens, token_logprobs, tops, offsets = [], [], [], []
    for s in spans:
        r = s.record
        token = strings.get(r.token_id)[0]
        top: dict = {}
        for t in r.top_logprobs:  # best first; a string two ids decode to keeps the better one
            top.setdefault(t["token"], t["logprob"])
        top.setdefault(token, r.logprob)
        tokens.append(token)
        token_logprobs.append(r.logprob)
        tops.append(top)
        offsets.append(s.start)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": tops, "text_offset": offsets}


def _sse(data) -> str:
    return f"data: {orjson.dumps(data).decode()}\n\n"


def _stream_error(e: BaseException) -> str:
    if isinstance(e, running.Refused):
        e = OpenAIError(e.status_code, e.detail, "server_error", code=e.code)
    elif not isinstance(e, OpenAIError):
        log.error("streamed generation failed: %s", e)
        e = OpenAIError(500, f"generation failed: {e}", "server_error")
    return _sse(e.body())


# ---------------------------------------------------------------------------------------------
# endpoints


def _model_card(request: Request) -> dict:
    lm = request.app.state.engine.lm
    try:
        created = int(Path(lm.path).stat().st_mtime)
    except (OSError, TypeError):
        created = 0
    return {"id": lm.model_id, "object": "model", "created": created, "owned_by": OWNED_BY}


@router.get("/models")
async def list_models(request: Request) -> dict:
    """The loaded model (the only one)."""
    return {"object": "list", "data": [_model_card(request)]}


@router.get("/models/{model:path}", responses={404: {"description": "no such model"}})
async def get_model(model: str, request: Request) -> dict:
    card = _model_card(request)
    if model != card["id"]:
        raise OpenAIError(404, f"The model '{model}' does not exist", param="model", code="model_not_found")
    return card


def _streaming(request: Request, slot, handle, run: Run, exchange: Exchange, *, opening: list, piece_chunk,
               final_chunk, usage_chunk=None) -> StreamingResponse:
    """SSE `data:` lines: the opening chunks, one chunk per released piece, the finish chunk, the
    usage chunk (include_usage), then `[DONE]`; an error becomes a `data: {"error": …}` line."""
    app = request.app

    async def stream():
        with slot:
            try:
                for c in opening:
                    yield _sse(c)
                texts = []
                async for piece in _pieces(handle, run, request):
                    texts.append(piece.text)
                    yield _sse(piece_chunk(piece))
                exchange.response = "".join(texts)
                body = observe_response(app, run.body(), exchange)
                risk = run.risk(body)
                yield _sse(final_chunk({**_token_risk([]), **risk}))
                if usage_chunk is not None:
                    yield _sse(usage_chunk(body, risk))
                yield "data: [DONE]\n\n"
            except Exception as e:
                yield _stream_error(e)
            finally:
                handle.cancel()  # the client went away, or we are done: stop generating

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", deps.RESPONSE_ID: exchange.response_id})


@router.post("/chat/completions", responses=SSE_RESPONSES)
async def chat_completions(req: ChatCompletionRequest, request: Request, response: Response):
    """OpenAI chat completion (messages rendered with the chat template), with halluwatch's `risk`."""
    messages = [m.as_template_message() for m in req.messages]
    slot = running.StreamSlot(request) if req.stream else None
    handle, run = _start(request, req, None, messages)
    strings = _token_strings(request)
    head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()),
            "model": request.app.state.engine.lm.model_id}
    exchange = exchange_for("/v1/chat/completions", None, messages, response_id=head["id"])

    if req.stream:
        extra = {"usage": None} if req.include_usage else {}

        def chunk(delta: dict, spans: list, finish=None, risk=None) -> dict:
            choice = {"index": 0, "delta": delta,
                      "logprobs": _chat_logprobs(spans, strings) if req.logprobs and spans else None,
                      "finish_reason": finish}
            return {**head, "object": "chat.completion.chunk", "choices": [choice], **extra,
                    "risk": risk if risk is not None else _token_risk(spans)}

        return _streaming(
            request, slot, handle, run, exchange,
            opening=[chunk({"role": "assistant", "content": "", "refusal": None}, [])],
            piece_chunk=lambda p: chunk({"content": p.text}, p.spans),
            final_chunk=lambda risk: chunk({}, [], run.finish_reason, risk),
            usage_chunk=(lambda body, risk: {**head, "object": "chat.completion.chunk", "choices": [],
                                             "usage": _usage(body), "risk": risk}) if req.include_usage else None)

    body, pieces = await _finish(request, response, handle, run, exchange)
    spans = [s for p in pieces for s in p.spans]
    choice = {"index": 0,
              "message": {"role": "assistant", "content": exchange.response, "refusal": None},
              "logprobs": _chat_logprobs(spans, strings) if req.logprobs else None,
              "finish_reason": run.finish_reason}
    return {**head, "object": "chat.completion", "choices": [choice], "usage": _usage(body), "risk": run.risk(body)}


@router.post("/completions", responses=SSE_RESPONSES)
async def completions(req: CompletionRequest, request: Request, response: Response):
    """OpenAI (legacy) text completion of one raw prompt, with halluwatch's `risk`."""
    slot = running.StreamSlot(request) if req.stream else None
    handle, run = _start(request, req, req.prompt, None)
    strings = _token_strings(request)
    head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": request.app.state.engine.lm.model_id}
    exchange = exchange_for("/v1/completions", req.prompt, None, response_id=head["id"])
    want_logprobs = req.logprobs is not None

    if req.stream:
        extra = {"usage": None} if req.include_usage else {}

        def chunk(piece: Piece | None, finish=None, risk=None) -> dict:
            spans = piece.spans if piece else []
            choice = {"text": piece.text if piece else "", "index": 0,
                      "logprobs": _legacy_logprobs(spans, strings) if want_logprobs and spans else None,
                      "finish_reason": finish}
            return {**head, "choices": [choice], **extra, "risk": risk if risk is not None else _token_risk(spans)}

        return _streaming(
            request, slot, handle, run, exchange, opening=[], piece_chunk=chunk,
            final_chunk=lambda risk: chunk(None, run.finish_reason, risk),
            usage_chunk=(lambda body, risk: {**head, "choices": [], "usage": _usage(body), "risk": risk})
            if req.include_usage else None)

    body, pieces = await _finish(request, response, handle, run, exchange)
    spans = [s for p in pieces for s in p.spans]
    choice = {"text": exchange.response, "index": 0,
              "logprobs": _legacy_logprobs(spans, strings) if want_logprobs else None,
              "finish_reason": run.finish_reason}
    return {**head, "choices": [choice], "usage": _usage(body), "risk": run.risk(body)}
