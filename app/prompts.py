"""Prompts to token ids, for every caller (HTTP, CLI, calibration), with the context-length check."""


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
