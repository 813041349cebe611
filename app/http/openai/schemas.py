"""Request bodies of the OpenAI-compatible endpoints (/v1/chat/completions, /v1/completions).

Field names and meanings follow OpenAI's API reference. Policy for the fields we do not implement:

- accepted and ignored (they do not change what is generated): `model` (the loaded model answers
  whatever name is given), `user`, `metadata`, `store`, `service_tier`, `safety_identifier`,
  `prompt_cache_key`, `parallel_tool_calls`, `reasoning_effort`, `verbosity`,
  `stream_options.include_obfuscation`, and any other field this server does not know;
- accepted at their default (no-op) value only, a 400 naming the field otherwise:
  `n` (1), `frequency_penalty` / `presence_penalty` (0), `logit_bias` ({}), `tools` / `functions`
  ([]), `tool_choice` / `function_call` ("none"/"auto" without tools), `response_format`
  ({"type": "text"}), `modalities` (["text"]), `audio`, `prediction`, `web_search_options` (null),
  and for completions `best_of` (1), `echo` (false), `suffix` (null or "").

halluwatch extensions (send them with the client's `extra_body`): `halt_on_pfail` and
`pfail_cutoff`, as on /generate.
"""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_STOP = 4


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class OAChatMessage(BaseModel):
    """A chat message; `developer` is rendered as `system`; content parts must be text."""

    model_config = ConfigDict(extra="ignore")  # name, …
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def as_template_message(self) -> dict:
        content = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": content}


def _must_be(value, allowed: tuple, what: str):
    if value not in allowed:
        raise ValueError(f"{what} is not supported by this server")
    return value


class _Common(BaseModel):
    model_config = ConfigDict(extra="allow")  # unknown fields are accepted and ignored (see module doc)

    model: str | None = Field(None, description="ignored: the loaded model answers")
    max_tokens: int | None = Field(None, ge=1, description="default and upper limit are server settings")
    stop: str | list[str] | None = Field(None, description=f"up to {MAX_STOP} stop strings")
    seed: int | None = Field(None, description="seeds sampling (temperature > 0)")
    n: int | None = Field(None, description="only 1")
    temperature: float | None = Field(None, ge=0, le=2, description="0 or absent: greedy (the calibrated protocol)")
    top_p: float | None = Field(None, ge=0, le=1, description="nucleus sampling, used when temperature > 0")
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, Any] | None = None
    user: str | None = None
    # halluwatch extensions
    halt_on_pfail: bool = Field(False, description="stop before appending a token whose P_fail exceeds the cutoff")
    pfail_cutoff: float | None = Field(None, gt=0, lt=1, description="cutoff for halt_on_pfail (server default)")
    calibration: str | None = Field(None, description="assess with this calibration (its task or params file "
                                                       "name); default: the closest one")

    @field_validator("stop")
    @classmethod
    def _stop(cls, v):
        if v is None:
            return []
        stops = [v] if isinstance(v, str) else v
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop strings")
        if any(s == "" for s in stops):
            raise ValueError("stop strings must not be empty")
        return stops

    @field_validator("n")
    @classmethod
    def _n(cls, v):
        if v not in (None, 1):
            raise ValueError("only n=1 is supported")
        return v

    @field_validator("frequency_penalty", "presence_penalty")
    @classmethod
    def _penalty(cls, v, info):
        if v not in (None, 0):
            raise ValueError(f"{info.field_name} is not supported (only 0)")
        return v

    @field_validator("logit_bias", "echo", "suffix", check_fields=False)  # echo, suffix: /v1/completions
    @classmethod
    def _empty_only(cls, v, info):
        if v:
            raise ValueError(f"{info.field_name} is not supported")
        return v

    @property
    def sampling(self) -> bool:
        """Sample (temperature > 0) rather than decode greedily; top_p matters only then."""
        return (self.temperature or 0) > 0 and (self.top_p is None or self.top_p > 0)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_Common):
    """POST /v1/chat/completions."""

    messages: list[OAChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, description="wins over max_tokens")
    logprobs: bool | None = False
    top_logprobs: int | None = Field(None, ge=0, le=20, description="needs logprobs: true")
    tools: list | None = None
    functions: list | None = None
    tool_choice: Any = None
    function_call: Any = None
    response_format: dict | None = None
    modalities: list[str] | None = None
    audio: Any = None
    prediction: Any = None
    web_search_options: Any = None

    @field_validator("tools", "functions")
    @classmethod
    def _no_tools(cls, v, info):
        if v:
            raise ValueError(f"{info.field_name} (tool calling) is not supported")
        return v

    @field_validator("tool_choice", "function_call")
    @classmethod
    def _tool_choice(cls, v, info):
        return _must_be(v, (None, "none", "auto"), f"{info.field_name}={v!r}")

    @field_validator("response_format")
    @classmethod
    def _response_format(cls, v):
        if v is not None and v.get("type") != "text":
            raise ValueError(f"response_format {v.get('type')!r} is not supported (only 'text')")
        return v

    @field_validator("modalities")
    @classmethod
    def _modalities(cls, v):
        if v is not None and set(v) - {"text"}:
            raise ValueError("only the 'text' modality is supported")
        return v

    @field_validator("audio", "prediction", "web_search_options")
    @classmethod
    def _null_only(cls, v, info):
        if v is not None:
            raise ValueError(f"{info.field_name} is not supported")
        return v

    @field_validator("top_logprobs")
    @classmethod
    def _top_needs_logprobs(cls, v, info):
        if v and not info.data.get("logprobs"):
            raise ValueError("needs logprobs: true")
        return v

    @property
    def limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def n_top(self) -> int:
        return (self.top_logprobs or 0) if self.logprobs else 0


class CompletionRequest(_Common):
    """POST /v1/completions (legacy): one prompt, encoded raw (no chat template)."""

    prompt: str | list[str]
    logprobs: int | None = Field(None, ge=0, le=20, description="alternatives per token (OpenAI caps at 5; we "
                                                                  "allow up to 20 like chat)")
    echo: bool | None = False
    best_of: int | None = None
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v):
        if isinstance(v, list):
            if len(v) != 1:
                raise ValueError("exactly one prompt is supported (a string, or a list of one string)")
            v = v[0]
        if v == "":
            raise ValueError("the prompt is empty")
        return v

    @field_validator("best_of")
    @classmethod
    def _best_of(cls, v):
        return _must_be(v, (None, 1), f"best_of={v}")

    @property
    def limit(self) -> int | None:
        return self.max_tokens

    @property
    def n_top(self) -> int:
        return self.logprobs or 0
