"""Request and response bodies of the HTTP API."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: str


class PromptInput(BaseModel):
    """Exactly one of `prompt` and `messages`."""

    model_config = ConfigDict(extra="forbid")
    prompt: str | None = Field(None, min_length=1, description="raw prompt (no chat template unless chat_template)")
    messages: list[ChatMessage] | None = Field(None, min_length=1,
                                               description="chat, rendered with the model's template")
    chat_template: bool = Field(False, description="apply the chat template to `prompt` as one user message")
    include_trace: bool = Field(False, description="add the per-step trace to the JSON response")
    top_logprobs: int = Field(0, ge=0, le=20, description="alternatives per step in the trace")
    calibration: str | None = Field(None, description="assess with this calibration of the model (its task, e.g. "
                                                       "'answers' or 'qa', or its params file name); default: the "
                                                       "one whose training prompts this one lies closest to")

    @model_validator(mode="after")
    def _one_input(self):
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' and 'messages'")
        if self.messages is not None and self.chat_template:
            raise ValueError("'chat_template' applies to 'prompt' only; 'messages' always use the template")
        return self

    def chat(self) -> list | None:
        return [m.model_dump() for m in self.messages] if self.messages else None


class GenerateRequest(PromptInput):
    """POST /generate."""

    max_tokens: int | None = Field(None, ge=1, description="default and upper limit are server settings")
    halt_on_pfail: bool = Field(False, description="stop before appending a token whose P_fail exceeds the cutoff")
    pfail_cutoff: float | None = Field(None, gt=0, lt=1, description="cutoff for halt_on_pfail (server default 0.85)")
    stream: bool = Field(False, description="answer with Server-Sent Events")


class ScoreRequest(PromptInput):
    """POST /score: a response produced elsewhere, scored as if the model had generated it."""

    response: str = Field(min_length=1, description="the response text to score")
    end_with_eos: bool = Field(True, description="also score the model's EOS token after the response, as "
                                                  "/generate scores the step that ends a response")


class TopLogprob(BaseModel):
    token_id: int
    token: str
    logprob: float


class TraceStep(BaseModel):
    # The wire shape of app.engine.StepRecord.as_dict(), written out for the OpenAPI schema (a
    # deliberate twin across the HTTP boundary; tests/http/test_http.py checks that they agree).
    token_id: int
    text: str
    logprob: float
    top_logprobs: list[TopLogprob]
    delta_mu: float
    delta_sigma: float
    hbar_s: float
    surprise: float
    delta_h: float
    pri: float
    pfail: float
    entropy: float = Field(description="token entropy −Σ p ln p (nats)")
    prob: float = Field(description="probability of the chosen token")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = Field(0, description="prompt tokens not prefilled: the prompt cache held them "
                                              "(a prefix shared with an earlier prompt)")


class Scores(BaseModel):
    hbar_s: float = Field(description="mean of the top-5 per-step ℏₛ")
    pri: float = Field(description="mean of the top-5 per-step PRI")
    pfail_max: float
    surprise_mean: float = Field(description="mean per-step surprise (log-perplexity)")
    surprise_max: float
    entropy_mean: float
    entropy_max: float
    prob_min: float = Field(description="smallest chosen-token probability")
    probe_risk: float | None = Field(description="the calibrated linear probe's P(hallucinated), from the block "
                                                 "outputs of this same pass (null when the params have no probe)")
    probe_in_distribution: bool | None = Field(
        description="whether the probe's input lies within the range of its training states (RMS standardised "
                    "distance ≤ its 99th percentile there); false: probe_risk is an extrapolation")
    probe_distance_ratio: float | None = Field(
        description="that distance ÷ the 99th percentile: above 1 out of range (null without a probe "
                          "or its limit); its drift from the calibration's is monitored")


class Risk(BaseModel):
    probability: float = Field(description="P(hallucinated) from the detector that calibration selected, "
                                           "Platt-scaled on the training split")
    detector: str = Field(description="the selected detector (see the params' `ranking`)")
    task: str | None = Field(description="the traffic that calibrated it: 'answers' (the model's own chat answers "
                                         "to questions) or a HaluEval judgment task; the probability holds for "
                                         "prompts of that kind")
    in_distribution: bool | None = Field(description="whether the request lies within the range of the "
                                                     "calibration's training states (scores.probe_in_distribution "
                                                     "of its probe); null when it has no probe")
    calibration: str = Field(description="the params file of the calibration that assessed this response: the "
                                         "one named in the request, else the one whose probe found the prompt "
                                         "closest to its training prompts")


class Quadrant(BaseModel):
    name: Literal["Q1", "Q2", "Q3", "Q4"]
    label: str
    tau_hbar: float
    tau_pri: float
    params: str


class Timing(BaseModel):
    ttft_s: float | None = Field(description="from request to first token")
    tokens_per_s: float | None = Field(description="decode rate after the first token (null with one token)")
    queue_s: float | None = Field(None, description="time waiting for room in the engine's batch")


class GenerateResponse(BaseModel):
    text: str
    finish_reason: Literal["eos", "length", "pfail"]
    usage: Usage
    scores: Scores
    quadrant: Quadrant | None
    quadrant_reason: str | None = Field(description="why `quadrant` is null")
    risk: Risk | None = Field(description="null without calibrated params that select a detector")
    timing: Timing
    response_id: str = Field(description="the response's id in the log (also the X-Response-Id header)")
    trace: list[TraceStep] | None = None


class ScoreUsage(BaseModel):
    prompt_tokens: int
    response_tokens: int = Field(description="scored steps (the EOS step included with end_with_eos)")


class ScoreResponse(BaseModel):
    text: str
    usage: ScoreUsage
    scores: Scores
    quadrant: Quadrant | None
    quadrant_reason: str | None
    risk: Risk | None
    response_id: str = Field(description="the response's id in the log (also the X-Response-Id header)")
    trace: list[TraceStep] | None = None
