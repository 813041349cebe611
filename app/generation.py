"""Shared by the HTTP routes and the CLI: prompt encoding, running a job, the response body."""

from signals.response import response_scores

from .engine import Engine, Finished, GenerationJob, StepRecord, bridge
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
    scores = response_scores([r.hbar_s for r in records], [r.pri for r in records],
                             [r.pfail for r in records])
    body = {
        "text": "".join(r.text for r in records) + fin.text_tail,
        "finish_reason": fin.finish_reason,
        "usage": {
            "prompt_tokens": fin.prompt_tokens,
            # the step that halted on P_fail was scored but its token was not appended
            "completion_tokens": len(records) - (fin.finish_reason == "pfail"),
        },
        "scores": scores.as_dict(),
        "quadrant": quadrant_of(scores.hbar_s, scores.pri, params) if params else None,
        "quadrant_reason": None if params else params_reason,
        "timing": {"ttft_s": fin.ttft_s, "tokens_per_s": fin.tokens_per_s},
    }
    if include_trace:
        body["trace"] = [r.as_dict() for r in records]
    return body


async def run_job(engine: Engine, job: GenerationJob) -> tuple:
    """Submit `job`, wait for it and return (records, Finished); cancels it if we are cancelled."""
    events = bridge(job)
    engine.submit(job)
    records = []
    try:
        while True:
            item = await events.get()
            if isinstance(item, StepRecord):
                records.append(item)
            elif isinstance(item, Finished):
                return records, item
            else:
                raise item
    finally:
        job.cancelled.set()
