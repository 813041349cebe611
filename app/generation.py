"""Shared by the HTTP routes and the CLI: prompt encoding, running a job, the response body."""

import asyncio
from typing import AsyncIterator, Awaitable, Callable

from signals.probe import sigmoid
from signals.response import response_scores

from .engine import Engine, Finished, GenerationJob, bridge
from .params import Params, quadrant_of


class InputError(ValueError):
    """A request field is unusable; `field` names it."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def encode_prompt(lm, prompt: str | None, messages: list | None, chat_template: bool,
                  max_tokens: int) -> list:
    """Token ids of the prompt (raw `tokenizer.encode`, or rendered with the chat template)."""
    tok = lm.tokenizer
    field = "prompt" if messages is None else "messages"
    if messages is None and not chat_template:
        ids = tok.encode(prompt)
    else:
        if tok.chat_template is None:
            raise InputError(field, f"model {lm.model_id} has no chat template")
        chat = messages if messages is not None else [{"role": "user", "content": prompt}]
        text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        ids = tok.encode(text, add_special_tokens=False)
    if not ids:
        raise InputError(field, "the prompt encodes to no tokens")
    ctx = lm.context_length
    if ctx and len(ids) + max_tokens > ctx:
        raise InputError(field, f"the prompt is {len(ids)} tokens; with max_tokens={max_tokens} it "
                                f"exceeds the model's context of {ctx} tokens")
    return ids


def response_body(records: list, fin: Finished, params: Params | None, params_reason: str | None,
                  include_trace: bool) -> dict:
    """The JSON body of a finished generation (also the SSE `done` event, without trace)."""
    scores = response_scores(records).as_dict()
    probe = params.probe if params else None
    logit = inside = None
    if probe is not None:  # the probe's position: the prompt's end (step 0) or the last step
        step = records[0 if probe.position == "prompt_end" else -1]
        logit = step.probe_logit
        if step.probe_distance is not None and probe.distance_limit is not None:
            inside = bool(step.probe_distance <= probe.distance_limit)
    scores["probe_risk"] = None if logit is None else float(sigmoid(logit))
    scores["probe_in_distribution"] = inside
    body = {
        "text": "".join(r.text for r in records) + fin.text_tail,
        "finish_reason": fin.finish_reason,
        "usage": {
            "prompt_tokens": fin.prompt_tokens,
            # the step that halted on P_fail was scored but its token was not appended
            "completion_tokens": len(records) - (fin.finish_reason == "pfail"),
        },
        "scores": scores,
        "quadrant": quadrant_of(scores["hbar_s"], scores["pri"], params) if params else None,
        "quadrant_reason": None if params else params_reason,
        "risk": params.risk(scores, records[0].verdict, logit, inside) if params else None,
        "timing": {"ttft_s": fin.ttft_s, "tokens_per_s": fin.tokens_per_s},
    }
    if include_trace:
        body["trace"] = [r.as_dict() for r in records]
    return body


async def job_events(events: asyncio.Queue, job, timeout_s: float | None = None) -> AsyncIterator:
    """Yield a job's StepRecords and then its Finished; re-raise an engine error; raise TimeoutError
    once `timeout_s` has passed. The job is cancelled when the iteration ends, however it ends."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout_s is None else loop.time() + timeout_s
    try:
        while True:
            wait = None if deadline is None else max(0.0, deadline - loop.time())
            item = await asyncio.wait_for(events.get(), wait)
            if isinstance(item, Exception):
                raise item
            yield item
            if isinstance(item, Finished):
                return
    finally:
        job.cancelled.set()


async def _cancel_when(disconnected: Callable[[], Awaitable[bool]], job) -> None:
    while not job.cancelled.is_set():
        if await disconnected():
            job.cancelled.set()
            return
        await asyncio.sleep(0.1)


async def run_job(engine: Engine, job: GenerationJob, timeout_s: float | None = None,
                  disconnected: Callable[[], Awaitable[bool]] | None = None) -> tuple:
    """Submit `job` and wait for it: (records, Finished). Cancels it if we are cancelled, on
    timeout (TimeoutError) and, with `disconnected` (e.g. `request.is_disconnected`), when the
    client goes away."""
    events = bridge(job)
    engine.submit(job)
    watcher = asyncio.create_task(_cancel_when(disconnected, job)) if disconnected else None
    try:
        items = [item async for item in job_events(events, job, timeout_s)]
    finally:
        if watcher:
            watcher.cancel()
    return items[:-1], items[-1]
