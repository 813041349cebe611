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

import asyncio
import dataclasses
import json
import logging
import re
import time
import uuid
from pathlib import Path
from typing import NamedTuple

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException  # FastAPI's HTTPException and body-parsing errors

from ..engine import EngineBusy, Finished, GenerationJob, StepRecord, bridge
from ..generation import InputError, encode_prompt, response_body
from ..metrics import observe_response
from ..openai_schemas import ChatCompletionRequest, CompletionRequest

log = logging.getLogger("halluwatch.openai")

OWNED_BY = "halluwatch"
SAMPLED_REASON = "sampling (temperature > 0) was used; thresholds were calibrated on greedy output"


# ---------------------------------------------------------------------------------------------
# errors in OpenAI's shape


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
            except HTTPException as e:
                kind = "invalid_request_error" if e.status_code < 500 else "server_error"
                return OpenAIError(e.status_code, str(e.detail), kind, headers=e.headers).response()
            except Exception:
                log.exception("request to %s failed", request.url.path)
                return OpenAIError(500, "internal server error", "server_error").response()

        return route


router = APIRouter(prefix="/v1", route_class=OpenAIRoute, tags=["openai"])
# With `stream: true` the answer is Server-Sent Events; documented so that the schema is honest.
SSE_RESPONSES = {200: {"content": {"text/event-stream": {"schema": {}}}},
                 400: {"description": "invalid request (OpenAI error shape)"},
                 503: {"description": "engine queue full"}}


# ---------------------------------------------------------------------------------------------
# tokens: their strings and UTF-8 bytes


def _byte_decoder() -> dict:
    """GPT-2's byte-level alphabet, reversed: printable stand-in character -> byte."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


class TokenStrings:
    """`token` (decode of the single id, as in /generate's top_logprobs) and its real UTF-8 `bytes`.

    Byte-level BPE and SentencePiece byte-fallback tokens may hold part of a character: their
    `bytes` are the raw bytes from the vocabulary, so a client can join them; anything else falls
    back to the UTF-8 of the decoded string.
    """

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self._cache: dict = {}
        self._bytes = _byte_decoder()
        try:
            decoder = tokenizer.backend_tokenizer.decoder
            self.byte_level = "ByteLevel" in f"{type(decoder).__name__} {decoder}"
        except Exception:
            self.byte_level = False
        try:
            self.special = set(tokenizer.all_special_ids)
        except Exception:
            self.special = set()

    def get(self, token_id: int) -> tuple:
        if token_id not in self._cache:
            text = self.tok.decode([token_id])
            self._cache[token_id] = (text, self._raw_bytes(token_id, text))
        return self._cache[token_id]

    def _raw_bytes(self, token_id: int, text: str) -> list:
        try:
            if token_id not in self.special:
                piece = self.tok.convert_ids_to_tokens(token_id)
                if isinstance(piece, str) and piece:
                    if self.byte_level and all(c in self._bytes for c in piece):
                        return list(bytes(self._bytes[c] for c in piece))
                    if m := _BYTE_TOKEN.match(piece):
                        return [int(m.group(1), 16)]
                    if "\u2581" in piece and "\ufffd" in text:
                        return list(piece.replace("\u2581", " ").encode("utf-8"))
        except Exception:
            pass
        return list(text.encode("utf-8"))


def _token_strings(request: Request) -> TokenStrings:
    state = request.app.state
    lm = state.engine.lm
    cached = getattr(state, "openai_token_strings", None)
    if cached is None or cached.tok is not lm.tokenizer:
        cached = state.openai_token_strings = TokenStrings(lm.tokenizer)
    return cached


# ---------------------------------------------------------------------------------------------
# one generation: content tokens, stop strings, held-back text


class Span(NamedTuple):
    record: StepRecord
    start: int  # character offsets of its text in the completion
    end: int


class Piece(NamedTuple):
    text: str
    spans: list


class Run:
    """Turns a job's steps into released pieces of (text, content tokens), honouring stop strings."""

    def __init__(self, job: GenerationJob, stop_ids, stops: list, params, params_reason, sampling: bool):
        self.job, self.stop_ids, self.stops = job, stop_ids, stops
        self.params, self.params_reason, self.sampling = params, params_reason, sampling
        self.records: list = []  # every step of the response (scored), EOS / P_fail step included
        self.spans: list = []  # content tokens
        self.full = ""  # their text so far
        self.sent = 0  # characters released
        self.released = 0  # spans released
        self.stopped = False  # a stop string ended the text at self.sent
        self.fin: Finished | None = None

    def add(self, rec: StepRecord) -> Piece | None:
        if self.stopped:
            return None  # generated after the stop string: not part of the response
        self.records.append(rec)
        cutoff = self.job.halt_cutoff
        if rec.token_id in self.stop_ids or (cutoff is not None and rec.pfail > cutoff):
            return None  # the EOS step or the step halted on P_fail: scored, no content token
        start = len(self.full)
        self.full += rec.text
        self.spans.append(Span(rec, start, len(self.full)))
        return self._release(final=False)

    def finish(self, fin: Finished) -> Piece | None:
        self.fin = fin
        if self.stopped:
            return None
        if fin.text_tail:  # an incomplete character at the end: it belongs to the last tokens
            self.full += fin.text_tail
            if self.spans:
                self.spans[-1] = self.spans[-1]._replace(end=len(self.full))
        return self._release(final=True)

    def _release(self, final: bool) -> Piece | None:
        hits = [i for s in self.stops if (i := self.full.find(s, self.sent)) >= 0]
        if hits:
            cut = min(hits)
            self.stopped = True
            spans = [s for s in self.spans[self.released:] if s.start < cut]
            return self._take(spans, cut)
        limit = len(self.full) if final else len(self.full) - self._holdback()
        spans = []
        for s in self.spans[self.released:]:
            if s.end > limit:
                break
            spans.append(s)
        # text is released at token boundaries; at the end, a tail without tokens of its own goes too
        return self._take(spans, len(self.full) if final else spans[-1].end if spans else self.sent)

    def _take(self, spans: list, end: int) -> Piece | None:
        if not spans and end == self.sent:
            return None
        text = self.full[self.sent:end]
        self.sent = end
        self.released += len(spans)
        return Piece(text, spans)

    def _holdback(self) -> int:
        """Length of the longest unreleased suffix that is the start of a stop string."""
        room = len(self.full) - self.sent
        best = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, room), best, -1):
                if self.full.endswith(s[:k]):
                    best = k
                    break
        return best

    @property
    def finish_reason(self) -> str:
        """OpenAI's: stop (EOS, stop string, P_fail halt) or length."""
        return "length" if not self.stopped and self.fin.finish_reason == "length" else "stop"

    def body(self) -> dict:
        """The /generate-shaped body of the response (scores, quadrant, usage, timing)."""
        fin = self.fin
        if self.stopped:
            fin = dataclasses.replace(fin, finish_reason="stop")
        return response_body(self.records, fin, self.params, self.params_reason, False)

    def risk(self, body: dict) -> dict:
        calibrated = self.params is not None and not self.sampling
        reason = None if calibrated else (SAMPLED_REASON if self.sampling else self.params_reason)
        return {
            "scores": body["scores"],
            "quadrant": body["quadrant"],
            "quadrant_reason": body["quadrant_reason"],
            "risk": body["risk"],
            "calibrated": calibrated,
            "calibrated_reason": reason,
            "finish_reason": "stop_sequence" if self.stopped else self.fin.finish_reason,
        }


async def _pieces(events, run: Run, timeout_s: float | None):
    """Released pieces of a running job, until it finishes; raises OpenAIError / the engine's error."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout_s is None else loop.time() + timeout_s
    while True:
        try:
            item = await asyncio.wait_for(events.get(), None if deadline is None else max(0.0, deadline - loop.time()))
        except asyncio.TimeoutError:
            raise OpenAIError(504, f"generation ran past request_timeout_s={timeout_s}", "server_error",
                              code="timeout") from None
        if isinstance(item, StepRecord):
            piece = run.add(item)
            if run.stopped:
                run.job.cancelled.set()  # the engine stops within one token
            if piece is not None:
                yield piece
        elif isinstance(item, Finished):
            if item.finish_reason == "cancelled" and not run.stopped:
                raise OpenAIError(503, "generation was cancelled", "server_error")
            piece = run.finish(item)
            if piece is not None:
                yield piece
            return
        else:
            raise item


async def _cancel_on_disconnect(request: Request, job: GenerationJob) -> None:
    """Wait for the client's `http.disconnect` and cancel the job. (The body is already read, so
    the next ASGI message is the disconnect; `request.is_disconnected()` polls with a cancelled
    scope, which never sees it behind the app's BaseHTTPMiddleware.)"""
    while not job.cancelled.is_set():
        message = await request.receive()
        if message["type"] == "http.disconnect":
            job.cancelled.set()
            return
        await asyncio.sleep(0.05)


async def _collect(request: Request, events, run: Run) -> list:
    """All pieces of a non-streamed response; the job is cancelled if the client goes away."""
    watcher = asyncio.create_task(_cancel_on_disconnect(request, run.job))
    try:
        return [p async for p in _pieces(events, run, _timeout(request))]
    finally:
        watcher.cancel()
        run.job.cancelled.set()


def _timeout(request: Request) -> float | None:
    return getattr(request.app.state.settings, "request_timeout_s", None)


class _StreamSlot:
    """Counts the response in `app.state.streams` (shared with /generate) while it streams."""

    def __init__(self, request: Request):
        self.state = request.app.state
        limit = getattr(self.state.settings, "max_streams", None)
        current = getattr(self.state, "streams", None)
        self.counted = current is not None
        if self.counted and limit is not None and current >= limit:
            raise OpenAIError(429, f"too many concurrent streams (max_streams={limit})", "requests",
                              code="rate_limit_exceeded", headers={"Retry-After": "1"})

    def __enter__(self):
        if self.counted:
            self.state.streams += 1

    def __exit__(self, *exc):
        if self.counted:
            self.state.streams -= 1


# ---------------------------------------------------------------------------------------------
# request preparation


def _start(request: Request, req, prompt: str | None, messages: list | None):
    """Validate limits, encode the prompt, submit the job: (events, run)."""
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
    params = state.params  # fixed for this request
    job = GenerationJob(ids, max_tokens, req.n_top, cutoff,
                        temperature=req.temperature if sampling else 0.0,
                        top_p=req.top_p if sampling and req.top_p is not None else 1.0,
                        seed=req.seed if sampling else None, probe=params.probe if params else None)
    run = Run(job, lm.stop_ids, req.stop or [], params, state.params_reason, sampling)
    events = bridge(job)
    try:
        state.engine.submit(job)
    except EngineBusy as e:
        raise OpenAIError(503, str(e), "server_error", code="engine_overloaded", headers={"Retry-After": "1"}) from None
    return events, run


def _usage(body: dict) -> dict:
    u = body["usage"]
    return {"prompt_tokens": u["prompt_tokens"], "completion_tokens": u["completion_tokens"],
            "total_tokens": u["prompt_tokens"] + u["completion_tokens"]}


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
    return f"data: {json.dumps(data)}\n\n"


def _stream_error(e: BaseException) -> str:
    if not isinstance(e, OpenAIError):
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


def _streaming(request: Request, slot, events, run: Run, *, opening: list, piece_chunk, final_chunk,
               usage_chunk=None) -> StreamingResponse:
    """SSE `data:` lines: the opening chunks, one chunk per released piece, the finish chunk, the
    usage chunk (include_usage), then `[DONE]`; an error becomes a `data: {"error": …}` line."""
    app = request.app

    async def stream():
        with slot:
            try:
                for c in opening:
                    yield _sse(c)
                async for piece in _pieces(events, run, _timeout(request)):
                    yield _sse(piece_chunk(piece))
                body = observe_response(app, run.body())
                risk = run.risk(body)
                yield _sse(final_chunk({**_token_risk([]), **risk}))
                if usage_chunk is not None:
                    yield _sse(usage_chunk(body, risk))
                yield "data: [DONE]\n\n"
            except Exception as e:
                yield _stream_error(e)
            finally:
                run.job.cancelled.set()  # the client went away, or we are done: stop generating

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


@router.post("/chat/completions", responses=SSE_RESPONSES)
async def chat_completions(req: ChatCompletionRequest, request: Request):
    """OpenAI chat completion (messages rendered with the chat template), with halluwatch's `risk`."""
    messages = [m.as_template_message() for m in req.messages]
    slot = _StreamSlot(request) if req.stream else None
    events, run = _start(request, req, None, messages)
    strings = _token_strings(request)
    head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()),
            "model": request.app.state.engine.lm.model_id}

    if req.stream:
        extra = {"usage": None} if req.include_usage else {}

        def chunk(delta: dict, spans: list, finish=None, risk=None) -> dict:
            choice = {"index": 0, "delta": delta,
                      "logprobs": _chat_logprobs(spans, strings) if req.logprobs and spans else None,
                      "finish_reason": finish}
            return {**head, "object": "chat.completion.chunk", "choices": [choice], **extra,
                    "risk": risk if risk is not None else _token_risk(spans)}

        return _streaming(
            request, slot, events, run,
            opening=[chunk({"role": "assistant", "content": "", "refusal": None}, [])],
            piece_chunk=lambda p: chunk({"content": p.text}, p.spans),
            final_chunk=lambda risk: chunk({}, [], run.finish_reason, risk),
            usage_chunk=(lambda body, risk: {**head, "object": "chat.completion.chunk", "choices": [],
                                             "usage": _usage(body), "risk": risk}) if req.include_usage else None)

    pieces = await _collect(request, events, run)
    body = observe_response(request.app, run.body())
    spans = [s for p in pieces for s in p.spans]
    choice = {"index": 0,
              "message": {"role": "assistant", "content": "".join(p.text for p in pieces), "refusal": None},
              "logprobs": _chat_logprobs(spans, strings) if req.logprobs else None,
              "finish_reason": run.finish_reason}
    return {**head, "object": "chat.completion", "choices": [choice], "usage": _usage(body), "risk": run.risk(body)}


@router.post("/completions", responses=SSE_RESPONSES)
async def completions(req: CompletionRequest, request: Request):
    """OpenAI (legacy) text completion of one raw prompt, with halluwatch's `risk`."""
    slot = _StreamSlot(request) if req.stream else None
    events, run = _start(request, req, req.prompt, None)
    strings = _token_strings(request)
    head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": request.app.state.engine.lm.model_id}
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
            request, slot, events, run, opening=[], piece_chunk=chunk,
            final_chunk=lambda risk: chunk(None, run.finish_reason, risk),
            usage_chunk=(lambda body, risk: {**head, "choices": [], "usage": _usage(body), "risk": risk})
            if req.include_usage else None)

    pieces = await _collect(request, events, run)
    body = observe_response(request.app, run.body())
    spans = [s for p in pieces for s in p.spans]
    choice = {"text": "".join(p.text for p in pieces), "index": 0,
              "logprobs": _legacy_logprobs(spans, strings) if want_logprobs else None,
              "finish_reason": run.finish_reason}
    return {**head, "choices": [choice], "usage": _usage(body), "risk": run.risk(body)}
